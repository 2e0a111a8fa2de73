//! The guest's physical memory layout: RAM from 0 up to the 32-bit MMIO hole (virtio-mmio
//! windows, IOAPIC, LAPIC), the rest of RAM from 4 GiB up, and the e820 map both boot
//! protocols hand the kernel (conventional memory, the reserved EBDA/BIOS area, high memory).

use vm_memory::{GuestAddress, GuestMemoryBackend as _, GuestMemoryRegion};

use crate::memory::GuestMemory;

/// Where the 32-bit MMIO hole starts and ends: RAM is never mapped there.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// The top of conventional memory and the start of high memory.
pub const EBDA_START: u64 = 0x9_fc00;
pub const HIMEM_START: u64 = 0x10_0000;
/// E820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The RAM regions for `ram` bytes: below the MMIO hole, then the rest above 4 GiB.
pub fn ram_regions(ram: u64) -> Vec<(GuestAddress, usize)> {
    let low = ram.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if ram > low {
        regions.push((GuestAddress(MMIO_HOLE_END), (ram - low) as usize));
    }
    regions
}

/// The end of the RAM below the MMIO hole (where the initramfs goes, below it).
pub fn low_ram_end(memory: &GuestMemory) -> u64 {
    memory
        .iter()
        .find(|r| r.start_addr().0 == 0)
        .map_or(0, |r| r.len())
}

/// The e820 map of `memory`: the first MiB split around the EBDA and BIOS area, then each
/// RAM region.
pub fn e820(memory: &GuestMemory) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for region in memory.iter() {
        let (start, end) = (region.start_addr().0, region.start_addr().0 + region.len());
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn ram_above_the_hole_starts_at_4_gib() {
        assert_eq!(ram_regions(256 << 20), [(GuestAddress(0), 256 << 20)]);
        let big = ram_regions(5 << 30);
        assert_eq!(
            big,
            [
                (GuestAddress(0), MMIO_HOLE_START as usize),
                (
                    GuestAddress(MMIO_HOLE_END),
                    (5 << 30) - MMIO_HOLE_START as usize
                ),
            ]
        );
    }

    #[test]
    fn the_map_reserves_the_bios_area_and_lists_each_region() {
        let mem = memory::create(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x1000_0000), 0x1000),
        ])
        .unwrap();
        let map = e820(&mem);
        assert_eq!(map.len(), 4);
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!((map[2].addr, map[2].size), (HIMEM_START, 0x10_0000));
        assert_eq!((map[3].addr, map[3].size), (0x1000_0000, 0x1000));
        assert_eq!(low_ram_end(&mem), 0x20_0000);
    }
}
