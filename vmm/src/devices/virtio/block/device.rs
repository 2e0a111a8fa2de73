//! The block device: each request is a readable header (type, sector), data descriptors
//! (writable for reads, readable for writes) and a final writable status byte. Requests
//! beyond the capacity, of a length that is not whole sectors, or writes to a read-only
//! disk get VIRTIO_BLK_S_IOERR; unknown types VIRTIO_BLK_S_UNSUPP; a chain with no room for
//! the status is returned unanswered. Data is copied in bounded chunks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, Reader, Writer};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use super::TYPE_BLOCK;
use crate::devices::virtio::queue::{ActiveQueue, QueueError};
use crate::devices::virtio::{read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemory;

const QUEUE_SIZE: u16 = 256;
const SECTOR: u64 = 512;
/// Bytes copied between the file and guest memory at a time.
const CHUNK: usize = 64 * 1024;

/// Request types and statuses (virtio 1.2, 5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Feature bits.
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
/// The length of a device id.
const ID_LEN: usize = 20;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RequestHeader {
    type_: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: `RequestHeader` is `repr(C)` with only integer fields and no padding (4 + 4 + 8
// bytes), so every bit pattern is a valid value, as `ByteValued` requires.
unsafe impl ByteValued for RequestHeader {}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("open disk {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A virtio-blk device backed by a file.
pub struct Block {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_LEN],
    active: Option<ActiveQueue>,
}

impl Block {
    /// Opens `path` (read-only when asked); its size, rounded down to whole sectors, is the
    /// capacity; its file name is the device id.
    pub fn new(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_error = |source| BlockError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_error)?;
        let capacity = file.metadata().map_err(open_error)?.len() / SECTOR * SECTOR;
        let mut id = [0u8; ID_LEN];
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        let n = name.len().min(ID_LEN);
        id[..n].copy_from_slice(&name[..n]);
        Ok(Self {
            file,
            capacity,
            read_only,
            id,
            active: None,
        })
    }

    /// Serves every available request; returns how many.
    pub fn process_queue(&mut self) -> Result<usize, BlockError> {
        let Some(mut active) = self.active.take() else {
            return Ok(0);
        };
        let served = active.serve(|memory, chain| Ok::<_, BlockError>(self.execute(memory, chain)));
        self.active = Some(active);
        served
    }

    /// Executes one request; returns the bytes written into the guest's buffers (data and
    /// status), 0 for a chain that could not even take a status.
    fn execute(&mut self, memory: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (
            Reader::<()>::new(memory, chain.clone()),
            Writer::<()>::new(memory, chain),
        ) else {
            return 0;
        };
        let Some(status_at) = writer.available_bytes().checked_sub(1) else {
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(status_at) else {
            return 0;
        };
        let status = match reader.read_obj::<RequestHeader>() {
            Ok(header) => self.request(header, &mut reader, &mut writer),
            Err(_) => S_IOERR,
        };
        if status_writer.write_all(&[status]).is_err() {
            return 0;
        }
        (writer.bytes_written() + 1) as u32
    }

    /// The byte offset of `sector` if `len` bytes from there fit the disk in whole sectors.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.capacity && (len as u64).is_multiple_of(SECTOR)).then_some(offset)
    }

    fn request(
        &mut self,
        header: RequestHeader,
        reader: &mut Reader<'_>,
        writer: &mut Writer<'_>,
    ) -> u8 {
        match header.type_ {
            T_IN => match self.range(header.sector, writer.available_bytes()) {
                Some(offset) => status(self.read_disk(offset, writer)),
                None => S_IOERR,
            },
            T_OUT if self.read_only => S_IOERR,
            T_OUT => match self.range(header.sector, reader.available_bytes()) {
                Some(offset) => status(self.write_disk(offset, reader)),
                None => S_IOERR,
            },
            T_FLUSH => status(self.file.sync_all()),
            T_GET_ID => {
                let n = writer.available_bytes().min(ID_LEN);
                status(writer.write_all(&self.id[..n]))
            }
            _ => S_UNSUPP,
        }
    }

    fn read_disk(&self, mut offset: u64, writer: &mut Writer<'_>) -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        while writer.available_bytes() > 0 {
            let n = writer.available_bytes().min(CHUNK);
            self.file.read_exact_at(&mut buf[..n], offset)?;
            writer.write_all(&buf[..n])?;
            offset += n as u64;
        }
        Ok(())
    }

    fn write_disk(&self, mut offset: u64, reader: &mut Reader<'_>) -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        while reader.available_bytes() > 0 {
            let n = reader.available_bytes().min(CHUNK);
            reader.read_exact(&mut buf[..n])?;
            self.file.write_all_at(&buf[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

fn status(result: std::io::Result<()>) -> u8 {
    if result.is_ok() {
        S_OK
    } else {
        S_IOERR
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn ack_features(&mut self, _: u64) {}

    /// The configuration space starts with the capacity in sectors.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&(self.capacity / SECTOR).to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(
        &mut self,
        memory: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        _: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueue::activate(
            "virtio-blk",
            memory,
            interrupt,
            queues,
        )?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::{desc, interrupt};
    use crate::memory;

    const HEADER: u64 = 0x10_0000;
    const DATA: u64 = 0x11_0000;
    const STATUS: u64 = 0x12_0000;

    struct Disk {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    fn disk(sectors: u64) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; (sectors * SECTOR) as usize]).unwrap();
        Disk { _dir: dir, path }
    }

    /// Runs one request (header, optional data descriptor, status) on a fresh queue;
    /// returns the status byte and the used length.
    fn run(
        block: &mut Block,
        mem: &GuestMemory,
        type_: u32,
        sector: u64,
        data: Option<(u32, bool)>,
    ) -> (u8, u32) {
        let header = RequestHeader {
            type_,
            reserved: 0,
            sector,
        };
        mem.write_obj(header, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut descs = vec![desc(HEADER, 16, VRING_DESC_F_NEXT, 1)];
        if let Some((len, device_writes)) = data {
            let flags = VRING_DESC_F_NEXT | if device_writes { VRING_DESC_F_WRITE } else { 0 };
            descs.push(desc(DATA, len, flags, 2));
        }
        let last = descs.len() as u16;
        descs.push(desc(STATUS, 1, VRING_DESC_F_WRITE, last));
        let used_len = submit(block, mem, &descs);
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), used_len)
    }

    /// Offers one chain of `descs` on a fresh queue and serves it; returns the used length.
    fn submit(block: &mut Block, mem: &GuestMemory, descs: &[RawDescriptor]) -> u32 {
        let mock = MockSplitQueue::new(mem, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let irq = interrupt();
        block
            .activate(
                mem.clone(),
                irq,
                vec![mock.create_queue().unwrap()],
                Vec::new(),
            )
            .unwrap();
        assert_eq!(block.process_queue().unwrap(), 1);
        mem.read_obj(GuestAddress(mock.used_addr().0 + 8)).unwrap()
    }

    #[test]
    fn writes_read_back_flush_and_get_id() {
        let d = disk(16);
        let mem = memory::create(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mut block = Block::new(&d.path, false).unwrap();
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 16);
        assert_eq!(block.features() & F_RO, 0);

        let pattern: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        assert_eq!(
            run(&mut block, &mem, T_OUT, 3, Some((1024, false))),
            (S_OK, 1)
        );
        let on_disk = std::fs::read(&d.path).unwrap();
        assert_eq!(&on_disk[3 * 512..3 * 512 + 1024], pattern.as_slice());

        mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        assert_eq!(
            run(&mut block, &mem, T_IN, 3, Some((1024, true))),
            (S_OK, 1025)
        );
        let mut back = vec![0u8; 1024];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, pattern);

        assert_eq!(run(&mut block, &mem, T_FLUSH, 0, None), (S_OK, 1));
        assert_eq!(
            run(&mut block, &mem, T_GET_ID, 0, Some((20, true))),
            (S_OK, 21)
        );
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..8], b"disk.img");
    }

    #[test]
    fn bad_requests_get_errors_and_change_nothing() {
        let d = disk(4);
        let mem = memory::create(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mut block = Block::new(&d.path, false).unwrap();
        // Past the end, straddling the end, a sector overflowing u64, a partial sector.
        assert_eq!(run(&mut block, &mem, T_IN, 4, Some((512, true))).0, S_IOERR);
        assert_eq!(
            run(&mut block, &mem, T_OUT, 3, Some((1024, false))).0,
            S_IOERR
        );
        assert_eq!(
            run(&mut block, &mem, T_IN, u64::MAX, Some((512, true))).0,
            S_IOERR
        );
        assert_eq!(
            run(&mut block, &mem, T_OUT, 0, Some((100, false))).0,
            S_IOERR
        );
        // An unknown request type.
        assert_eq!(run(&mut block, &mem, 99, 0, None).0, S_UNSUPP);
        assert_eq!(std::fs::read(&d.path).unwrap(), vec![0u8; 2048]);
        // Read-only: writes refused, the feature offered.
        let mut ro = Block::new(&d.path, true).unwrap();
        assert_ne!(ro.features() & F_RO, 0);
        mem.write_slice(&[7u8; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(run(&mut ro, &mem, T_OUT, 0, Some((512, false))).0, S_IOERR);
        assert_eq!(std::fs::read(&d.path).unwrap(), vec![0u8; 2048]);
        // A data buffer outside guest memory: the chain cannot be served at all.
        let outside = [
            desc(HEADER, 16, VRING_DESC_F_NEXT, 1),
            desc(0x40_0000, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
            desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
        ];
        assert_eq!(submit(&mut block, &mem, &outside), 0);
        assert!(Block::new(Path::new("/nonexistent/disk"), true)
            .err()
            .unwrap()
            .to_string()
            .contains("/nonexistent/disk"));
    }
}
