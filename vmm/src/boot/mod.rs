//! Booting a guest: loading the kernel, initramfs and command line (PVH ELF), the PVH start
//! info, and the CPU state of a 32-bit PVH or 64-bit entry (GDT, identity page tables).
//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT).

pub mod acpi;
pub mod gdt;
pub mod loader;
pub mod long_mode;
pub mod pvh;
