//! Booting a guest: the memory layout and e820 map, loading the kernel (ELF vmlinux or
//! bzImage), initramfs and command line, the PVH start info or the Linux zero page, the CPU
//! state of a 32-bit PVH or 64-bit entry (GDT, identity page tables), and the ACPI tables
//! (RSDP, XSDT, FADT, MADT, DSDT).

pub mod acpi;
pub mod gdt;
pub mod layout;
pub mod linux;
pub mod loader;
pub mod long_mode;
pub mod pvh;
