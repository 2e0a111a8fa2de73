//! Booting a guest: the memory layout and e820 map, loading the kernel (ELF vmlinux or
//! bzImage), initramfs and command line, the PVH start info or the Linux zero page, the CPU
//! state of a 32-bit PVH or 64-bit entry (GDT, identity page tables), and the ACPI tables
//! (RSDP, XSDT, FADT, MADT, DSDT). `boot` uses `vstate` (memory, vCPU registers), never the
//! other way round.

pub mod acpi;
pub mod entry;
pub mod gdt;
pub mod layout;
pub mod linux;
pub mod loader;
pub mod long_mode;
pub mod pvh;

use vm_memory::GuestAddress;

use crate::memory::GuestMemory;
use loader::{Entry, Loaded, CMDLINE_ADDR};

#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    #[error("PVH start info: {0}")]
    Pvh(#[from] pvh::PvhError),
    #[error("Linux zero page: {0}")]
    Linux(#[from] linux::LinuxBootError),
}

/// Writes what the entry convention of `loaded` hands the kernel: the PVH start info or the
/// Linux zero page, each pointing at the command line, the initramfs and the ACPI RSDP.
pub fn write_boot_info(
    memory: &GuestMemory,
    loaded: &Loaded,
    rsdp: GuestAddress,
) -> Result<(), BootInfoError> {
    let cmdline = GuestAddress(CMDLINE_ADDR);
    match loaded.entry {
        Entry::Pvh(_) => pvh::write_start_info(memory, cmdline, loaded.initrd, rsdp)?,
        Entry::Linux64 { header, .. } => linux::write_boot_params(
            memory,
            &linux::BootInfo {
                header,
                cmdline,
                cmdline_len: loaded.cmdline_len,
                initrd: loaded.initrd,
                rsdp,
            },
        )?,
    }
    Ok(())
}
