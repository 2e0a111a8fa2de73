//! Vsock packets on the virtqueues (virtio 1.2, 5.10.6): a 44-byte little-endian header and,
//! for RW packets, data. TX packets are read from the driver's readable descriptors, RX
//! packets written into its writable ones, both through virtio-queue's bounds-checked
//! `Reader`/`Writer`; a chain too short for its header or data, a payload over
//! [`MAX_PAYLOAD`], or a socket type other than stream is an error the device drops.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::ByteValued;

use crate::memory::GuestMemory;

/// Operations (`op`).
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// The only socket type: stream.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload accepted in one packet (what Linux's driver sends at most).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// The header's size on the queue.
pub const HEADER_SIZE: usize = std::mem::size_of::<Header>();

/// `struct virtio_vsock_hdr`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: `Header` is `repr(C, packed)` plain old data: integers only, no padding, and every
// bit pattern is a valid value, which is what `ByteValued` requires.
unsafe impl ByteValued for Header {}

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain: {0:?}")]
    Chain(virtio_queue::Error),
    #[error("chain of {0} bytes is too short for a vsock header")]
    ShortHeader(usize),
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD} allowed")]
    Oversized(u32),
    #[error("payload of {len} bytes, but the chain holds {available}")]
    ShortData { len: u32, available: usize },
    #[error("socket type {0} is not stream")]
    UnsupportedType(u16),
    #[error("RX buffer of {available} bytes cannot hold {needed}")]
    RxTooSmall { available: usize, needed: usize },
    #[error("guest memory: {0}")]
    Memory(std::io::Error),
}

/// A packet the driver sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    pub header: Header,
    pub data: Vec<u8>,
}

/// Reads a TX packet from the readable descriptors of `chain`.
pub fn read_tx<T>(memory: &GuestMemory, chain: DescriptorChain<T>) -> Result<TxPacket, PacketError>
where
    T: std::ops::Deref,
    T::Target: vm_memory::GuestMemory + Sized,
{
    let mut reader: Reader<'_> = Reader::new(memory, chain).map_err(PacketError::Chain)?;
    let available = reader.available_bytes();
    if available < HEADER_SIZE {
        return Err(PacketError::ShortHeader(available));
    }
    let header: Header = reader.read_obj().map_err(PacketError::Memory)?;
    let (len, type_) = (header.len, header.type_);
    if type_ != TYPE_STREAM {
        return Err(PacketError::UnsupportedType(type_));
    }
    if len > MAX_PAYLOAD {
        return Err(PacketError::Oversized(len));
    }
    let available = reader.available_bytes();
    if available < len as usize {
        return Err(PacketError::ShortData { len, available });
    }
    let mut data = vec![0u8; len as usize];
    reader.read_exact(&mut data).map_err(PacketError::Memory)?;
    Ok(TxPacket { header, data })
}

/// Writes an RX packet (`header`, its `len` set from `data`) into the writable descriptors
/// of `chain`; returns the bytes written.
pub fn write_rx<T>(
    memory: &GuestMemory,
    chain: DescriptorChain<T>,
    mut header: Header,
    data: &[u8],
) -> Result<u32, PacketError>
where
    T: std::ops::Deref,
    T::Target: vm_memory::GuestMemory + Sized,
{
    let mut writer: Writer<'_> = Writer::new(memory, chain).map_err(PacketError::Chain)?;
    let needed = HEADER_SIZE + data.len();
    let available = writer.available_bytes();
    if available < needed {
        return Err(PacketError::RxTooSmall { available, needed });
    }
    header.len = data.len() as u32;
    writer.write_obj(header).map_err(PacketError::Memory)?;
    writer.write_all(data).map_err(PacketError::Memory)?;
    Ok(writer.bytes_written() as u32)
}

/// A stream packet header from guest CID 3, port 1024, to host port `host_port`, with a
/// 64 KiB receive buffer (the tests' guest).
#[cfg(test)]
pub(crate) fn guest_header(op: u16, host_port: u32, len: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: super::HOST_CID,
        src_port: 1024,
        dst_port: host_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::desc;
    use crate::memory;

    fn header(op: u16, len: u32) -> Header {
        guest_header(op, 5000, len)
    }

    fn mem() -> GuestMemory {
        memory::create(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    #[test]
    fn header_is_44_bytes() {
        assert_eq!(HEADER_SIZE, 44);
    }

    #[test]
    fn tx_packets_split_across_descriptors_are_read_whole() {
        let mem = mem();
        let hdr = header(OP_RW, 10);
        mem.write_obj(hdr, GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(b"0123456789", GuestAddress(0x11_0000))
            .unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let chain = mock
            .build_desc_chain(&[
                desc(0x10_0000, HEADER_SIZE as u32, VRING_DESC_F_NEXT, 0),
                desc(0x11_0000, 4, VRING_DESC_F_NEXT, 0),
                desc(0x11_0004, 6, 0, 0),
            ])
            .unwrap();
        let packet = read_tx(&mem, chain).unwrap();
        assert_eq!(packet.header, hdr);
        assert_eq!(packet.data, b"0123456789");
    }

    #[test]
    fn malformed_tx_packets_are_refused() {
        let mem = mem();
        let mock = MockSplitQueue::new(&mem, 16);
        // Too short for the header.
        let chain = mock.build_desc_chain(&[desc(0x10_0000, 20, 0, 0)]).unwrap();
        assert!(matches!(
            read_tx(&mem, chain),
            Err(PacketError::ShortHeader(20))
        ));
        // Oversized payload.
        mem.write_obj(header(OP_RW, MAX_PAYLOAD + 1), GuestAddress(0x10_0000))
            .unwrap();
        let chain = mock.build_desc_chain(&[desc(0x10_0000, 44, 0, 0)]).unwrap();
        assert!(matches!(
            read_tx(&mem, chain),
            Err(PacketError::Oversized(_))
        ));
        // Data shorter than the header says.
        mem.write_obj(header(OP_RW, 100), GuestAddress(0x10_0000))
            .unwrap();
        let chain = mock.build_desc_chain(&[desc(0x10_0000, 64, 0, 0)]).unwrap();
        assert!(matches!(
            read_tx(&mem, chain),
            Err(PacketError::ShortData { len: 100, .. })
        ));
        // A datagram socket type.
        let mut dgram = header(OP_RW, 0);
        dgram.type_ = 2;
        mem.write_obj(dgram, GuestAddress(0x10_0000)).unwrap();
        let chain = mock.build_desc_chain(&[desc(0x10_0000, 44, 0, 0)]).unwrap();
        assert!(matches!(
            read_tx(&mem, chain),
            Err(PacketError::UnsupportedType(2))
        ));
        // A descriptor outside guest memory.
        let chain = mock.build_desc_chain(&[desc(0x30_0000, 44, 0, 0)]).unwrap();
        assert!(matches!(read_tx(&mem, chain), Err(PacketError::Chain(_))));
    }

    #[test]
    fn a_looping_tx_chain_ends_and_reads_nothing_outside_it() {
        use virtio_queue::QueueOwnedT;

        let mem = mem();
        // Header then payload, the payload's descriptor pointing back at the header's: a
        // loop. The packet claims more data than the bounded walk (16 descriptors) can
        // hold, so it is refused; nothing hangs and nothing is read elsewhere.
        mem.write_obj(header(OP_RW, 4000), GuestAddress(0x10_0000))
            .unwrap();
        let looped = [
            desc(0x10_0000, HEADER_SIZE as u32, VRING_DESC_F_NEXT, 1),
            desc(0x11_0000, 100, VRING_DESC_F_NEXT, 0),
        ];
        let mock = MockSplitQueue::new(&mem, 16);
        mock.add_desc_chains(&looped, 0).unwrap();
        let mut queue: virtio_queue::Queue = mock.create_queue().unwrap();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        assert!(matches!(
            read_tx(&mem, chain),
            Err(PacketError::ShortData { len: 4000, .. })
        ));
    }

    #[test]
    fn rx_packets_fill_writable_buffers_or_are_refused() {
        let mem = mem();
        let mock = MockSplitQueue::new(&mem, 16);
        let chain = mock
            .build_desc_chain(&[desc(0x10_0000, 4096, VRING_DESC_F_WRITE, 0)])
            .unwrap();
        let written = write_rx(&mem, chain, header(OP_RW, 0), b"hello").unwrap();
        assert_eq!(written, 49);
        let back: Header = mem.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!({ back.len }, 5);
        let mut data = [0u8; 5];
        mem.read_slice(&mut data, GuestAddress(0x10_0000 + 44))
            .unwrap();
        assert_eq!(&data, b"hello");
        let chain = mock
            .build_desc_chain(&[desc(0x10_0000, 40, VRING_DESC_F_WRITE, 0)])
            .unwrap();
        assert!(matches!(
            write_rx(&mem, chain, header(OP_RESPONSE, 0), &[]),
            Err(PacketError::RxTooSmall {
                available: 40,
                needed: 44
            })
        ));
    }
}
