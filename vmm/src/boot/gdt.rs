//! The boot GDT: flat code, data and TSS descriptors, written into guest memory, and the
//! KVM segment-register view of each entry.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// Where the GDT goes in guest RAM (below the real-mode IVT's end is free after boot).
pub const GDT_ADDR: u64 = 0x500;

/// 64-bit code segment (long mode).
pub const CODE64: u64 = 0x00af_9b00_0000_ffff;
/// 32-bit flat code segment (protected mode, PVH entry).
pub const CODE32: u64 = 0x00cf_9b00_0000_ffff;
/// Flat data segment.
pub const DATA: u64 = 0x00cf_9300_0000_ffff;
/// Busy-able 32-bit TSS.
pub const TSS: u64 = 0x008f_8b00_0000_ffff;

/// The boot GDT: null, `code`, data, TSS (selectors 0x08, 0x10, 0x18).
pub fn table(code: u64) -> [u64; 4] {
    [0, code, DATA, TSS]
}

#[derive(Debug, thiserror::Error)]
#[error("write the GDT at {GDT_ADDR:#x} into guest memory: {0}")]
pub struct GdtError(pub vm_memory::GuestMemoryError);

/// Writes `gdt` at [`GDT_ADDR`].
pub fn write(memory: &GuestMemory, gdt: &[u64]) -> Result<(), GdtError> {
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    memory
        .write_slice(&bytes, GuestAddress(GDT_ADDR))
        .map_err(GdtError)
}

/// The KVM view of `entry` at `index` of the GDT (the hidden part of a segment register).
pub fn segment(entry: u64, index: usize) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let flag = |bit: u32| ((entry >> bit) & 1) as u8;
    let granular = flag(55);
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages.
        limit: if granular == 1 {
            ((limit as u32) << 12) | 0xfff
        } else {
            limit as u32
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present: flag(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: flag(54),
        s: flag(44),
        l: flag(53),
        g: granular,
        avl: flag(52),
        unusable: if flag(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Loads the segment registers and GDTR for a boot GDT of [`table`]`(code)`.
pub fn load(sregs: &mut kvm_bindings::kvm_sregs, code: u64) {
    let gdt = table(code);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.cs = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(gdt[3], 3);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_the_entries() {
        let code = segment(CODE64, 1);
        assert_eq!(
            (code.selector, code.l, code.db, code.present),
            (0x08, 1, 0, 1)
        );
        assert_eq!(
            (code.type_, code.s, code.g, code.limit),
            (0xb, 1, 1, 0xffff_ffff)
        );
        let code32 = segment(CODE32, 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment(DATA, 2);
        assert_eq!(
            (data.selector, data.type_, data.db, data.l),
            (0x10, 0x3, 1, 0)
        );
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
