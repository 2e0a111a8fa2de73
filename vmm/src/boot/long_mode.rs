//! 64-bit long mode for a guest's entry: a flat GDT, identity-mapping page tables and the
//! control registers, EFER and segment state that go with them (the layout Firecracker's
//! and Cloud Hypervisor's x86_64 boot code uses, low in guest RAM).

use kvm_bindings::kvm_sregs;
use vm_memory::{Bytes, GuestAddress};

use super::gdt;
use crate::memory::GuestMemory;

/// The boot stack's top for a 64-bit kernel entry, below the page tables.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Where the (empty) IDT and the page tables go in guest RAM.
pub const IDT_ADDR: u64 = 0x520;
pub const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xa000;
const PD_ADDR: u64 = 0xb000;
/// The 4 KiB page table (only with [`PageSize::Small`]).
const PT_ADDR: u64 = 0xc000;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_HUGE: u64 = 0x80;

/// How the identity map is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// 512 × 4 KiB: the first 2 MiB (for tiny guests on KVMs without large pages).
    Small,
    /// 512 × 2 MiB: the first 1 GiB (what a Linux entry expects).
    Large,
}

#[derive(Debug, thiserror::Error)]
pub enum LongModeError {
    #[error(transparent)]
    Gdt(#[from] gdt::GdtError),
    #[error("write {what} at {addr:#x} into guest memory: {source}")]
    Write {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

fn write(
    memory: &GuestMemory,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), LongModeError> {
    memory
        .write_slice(bytes, GuestAddress(addr))
        .map_err(|source| LongModeError::Write { what, addr, source })
}

/// Writes the GDT, an empty IDT and identity page tables into guest memory and switches
/// `sregs` to 64-bit long mode on them.
pub fn setup(
    memory: &GuestMemory,
    sregs: &mut kvm_sregs,
    pages: PageSize,
) -> Result<(), LongModeError> {
    gdt::write(memory, &gdt::table(gdt::CODE64))?;
    write(memory, "IDT", IDT_ADDR, &0u64.to_le_bytes())?;
    write(
        memory,
        "PML4",
        PML4_ADDR,
        &(PDPT_ADDR | PAGE_PRESENT_RW).to_le_bytes(),
    )?;
    write(
        memory,
        "PDPT",
        PDPT_ADDR,
        &(PD_ADDR | PAGE_PRESENT_RW).to_le_bytes(),
    )?;
    let entries: Vec<u8> = match pages {
        PageSize::Large => (0..512u64)
            .flat_map(|i| ((i << 21) | PAGE_HUGE | PAGE_PRESENT_RW).to_le_bytes())
            .collect(),
        PageSize::Small => {
            write(
                memory,
                "PD",
                PD_ADDR,
                &(PT_ADDR | PAGE_PRESENT_RW).to_le_bytes(),
            )?;
            (0..512u64)
                .flat_map(|i| ((i << 12) | PAGE_PRESENT_RW).to_le_bytes())
                .collect()
        }
    };
    let table = if pages == PageSize::Large {
        PD_ADDR
    } else {
        PT_ADDR
    };
    write(memory, "page table", table, &entries)?;

    gdt::load(sregs, gdt::CODE64);
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn identity_maps_and_enters_long_mode() {
        let mem = memory::create(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mut sregs = kvm_sregs::default();
        setup(&mem, &mut sregs, PageSize::Small).unwrap();
        assert_eq!(sregs.cr3, PML4_ADDR);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        let pte: u64 = mem.read_obj(GuestAddress(PT_ADDR + 8 * 5)).unwrap();
        assert_eq!(pte, 0x5000 | PAGE_PRESENT_RW);
        setup(&mem, &mut sregs, PageSize::Large).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PD_ADDR + 8)).unwrap();
        assert_eq!(pde, 0x20_0000 | PAGE_HUGE | PAGE_PRESENT_RW);
        // Too little memory for the tables is an error naming them.
        let small = memory::create(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = setup(&small, &mut sregs, PageSize::Small).unwrap_err();
        assert!(err.to_string().contains("guest memory"), "{err}");
    }
}
