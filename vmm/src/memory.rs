//! Guest memory: every region is a window of one memfd mapped shared, so vhost-user backends
//! (virtiofsd, vhost-device-vsock) can map the same pages from the fd.

use std::fs::File;
use std::sync::Arc;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// The guest's memory.
pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create: {0}")]
    Memfd(nix::Error),
    #[error("size the memfd to {size} bytes: {source}")]
    Resize { size: u64, source: std::io::Error },
    #[error("guest memory region at {addr:#x} ({size} bytes) overflows")]
    Overflow { addr: u64, size: usize },
    #[error("map guest memory: {0}")]
    Map(vm_memory::mmap::FromRangesError),
}

/// Creates guest memory of the given `(start, size)` regions, sorted by start, all backed by
/// one memfd (region after region).
pub fn create(regions: &[(GuestAddress, usize)]) -> Result<GuestMemory, MemoryError> {
    let fd = memfd_create(c"vessel-guest-ram", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(MemoryError::Memfd)?;
    let file = Arc::new(File::from(fd));
    let total: u64 = regions.iter().map(|(_, size)| *size as u64).sum();
    file.set_len(total).map_err(|source| MemoryError::Resize {
        size: total,
        source,
    })?;
    let mut offset = 0u64;
    let mut ranges = Vec::with_capacity(regions.len());
    for &(addr, size) in regions {
        if addr.0.checked_add(size as u64).is_none() {
            return Err(MemoryError::Overflow { addr: addr.0, size });
        }
        ranges.push((addr, size, Some(FileOffset::from_arc(file.clone(), offset))));
        offset += size as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend as _, GuestMemoryRegion};

    use super::*;

    #[test]
    fn regions_share_one_memfd() {
        let mem = create(&[(GuestAddress(0), 0x1000), (GuestAddress(0x10000), 0x2000)]).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xabu8, GuestAddress(0x10010)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10010)).unwrap(), 0xab);
        assert!(mem.read_obj::<u8>(GuestAddress(0x5000)).is_err());
        let offsets: Vec<u64> = mem
            .iter()
            .map(|r| r.file_offset().map(|f| f.start()).unwrap())
            .collect();
        assert_eq!(offsets, [0, 0x1000]);
        assert!(create(&[(GuestAddress(u64::MAX - 1), 0x1000)]).is_err());
    }
}
