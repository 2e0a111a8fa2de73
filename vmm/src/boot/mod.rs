//! Booting a guest: the CPU state a 64-bit entry needs (GDT, identity page tables, long-mode
//! control registers). The Linux loader, boot params, e820 map and ACPI tables come next.

pub mod long_mode;
