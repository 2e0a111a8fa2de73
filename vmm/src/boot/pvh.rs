//! The PVH boot protocol (xenbits.xen.org/docs/unstable/misc/pvh.html): the guest starts in
//! 32-bit protected mode with paging off at the ELF note's entry, `%ebx` pointing at an
//! `hvm_start_info` that gives the command line, the initramfs module and the memory map.

use kvm_bindings::kvm_sregs;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::gdt;
use super::layout::{self, HIMEM_START};
use crate::memory::GuestMemory;

/// Where the start info, its memory map and module list go.
pub const START_INFO_ADDR: u64 = 0x6000;
const MEMMAP_ADDR: u64 = 0x7000;
const MODLIST_ADDR: u64 = 0x6800;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    #[error("write the PVH start info: {0}")]
    StartInfo(linux_loader::configurator::Error),
    #[error("guest RAM of {0} bytes is below the 1 MiB a PVH guest needs")]
    TooSmall(u64),
    #[error(transparent)]
    Gdt(#[from] gdt::GdtError),
}

/// Writes the start info for a guest with `memory` as its RAM, the command line at
/// `cmdline`, the initramfs (`(address, size)`) if any, and the ACPI RSDP.
pub fn write_start_info(
    memory: &GuestMemory,
    cmdline: GuestAddress,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
) -> Result<(), PvhError> {
    let low = layout::low_ram_end(memory);
    if low <= HIMEM_START {
        return Err(PvhError::TooSmall(low));
    }
    let memmap: Vec<hvm_memmap_table_entry> = layout::e820(memory)
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: cmdline.0,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { MODLIST_ADDR } else { 0 },
        rsdp_paddr: rsdp.0,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(START_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(MEMMAP_ADDR));
    if let Some((addr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, memory)
        .map_err(PvhError::StartInfo)
}

/// 32-bit protected mode, paging off, flat segments from the boot GDT: the PVH entry state.
pub fn setup_sregs(memory: &GuestMemory, sregs: &mut kvm_sregs) -> Result<(), PvhError> {
    gdt::write(memory, &gdt::table(gdt::CODE32))?;
    gdt::load(sregs, gdt::CODE32);
    sregs.cr0 = (sregs.cr0 | 1) & !(1 << 31); // PE on, PG off
    sregs.cr4 = 0;
    sregs.efer = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::memory;

    #[test]
    fn start_info_describes_memory_cmdline_and_initrd() {
        let mem = memory::create(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let initrd = (GuestAddress(0x18_0000), 0x1000);
        let rsdp = GuestAddress(0xe_0000);
        write_start_info(&mem, GuestAddress(0x2_0000), Some(initrd), rsdp).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!((info.cmdline_paddr, info.nr_modules), (0x2_0000, 1));
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        let last: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(MEMMAP_ADDR + 2 * 24)).unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (HIMEM_START, 0x10_0000, layout::E820_RAM)
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_ADDR)).unwrap();
        assert_eq!((module.paddr, module.size), (0x18_0000, 0x1000));
        let small = memory::create(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(
            write_start_info(&small, GuestAddress(0), None, rsdp),
            Err(PvhError::TooSmall(_))
        ));
    }
}
