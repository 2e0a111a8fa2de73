//! Tests of the network device on mock split queues, with one end of a SOCK_SEQPACKET
//! socketpair as its tap (one message = one frame with its header, like a tap) and the other
//! end playing the host network.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use virtio_bindings::bindings::virtio_net;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::device::{F_MAC, F_STATUS, QUEUE_SIZE};
use super::*;
use crate::devices::virtio::test_utils::{desc, interrupt};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt, INTERRUPT_USED_RING};
use crate::memory::{self, GuestMemory};

const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x53, 0x01];
const MEM_SIZE: u64 = 0x40_0000;
const BUFFERS: u64 = 0x10_0000;
const WRITE: u32 = VRING_DESC_F_WRITE;
const NEXT: u32 = VRING_DESC_F_NEXT;

/// Guest memory with room for the queues (below 1 MiB) and buffers.
fn guest_memory() -> GuestMemory {
    memory::create(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A device on a socketpair, activated on two mock queues, and the guest's view of it.
struct Guest<'a> {
    mem: &'a GuestMemory,
    rxq: MockSplitQueue<'a, GuestMemory>,
    txq: MockSplitQueue<'a, GuestMemory>,
    /// The next free descriptor of each queue.
    rx_next: u16,
    tx_next: u16,
    net: Net,
    irq: std::sync::Arc<VirtioInterrupt>,
    /// The host network's end of the "tap".
    host: File,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let mut net = Net::new(Tap::from_fd(ours).unwrap(), MAC);
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QUEUE_SIZE);
        let irq = interrupt();
        let events = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let queues = vec![
            rxq.create_queue::<Queue>().unwrap(),
            txq.create_queue::<Queue>().unwrap(),
        ];
        net.activate(mem.clone(), irq.clone(), queues, events)
            .unwrap();
        Self {
            mem,
            rxq,
            txq,
            rx_next: 0,
            tx_next: 0,
            net,
            irq,
            host: File::from(theirs),
        }
    }

    /// Offers one chain on the rx queue: `(addr, len, flags)`, linked in order (NEXT set on
    /// all but the last); returns its head.
    fn offer_rx(&mut self, descs: &[(u64, u32, u32)]) -> u16 {
        let head = self.rx_next;
        self.rx_next += descs.len() as u16;
        self.rxq.add_desc_chains(&chain(head, descs), head).unwrap();
        head
    }

    /// Offers one chain on the tx queue, like [`Guest::offer_rx`].
    fn offer_tx(&mut self, descs: &[(u64, u32, u32)]) -> u16 {
        let head = self.tx_next;
        self.tx_next += descs.len() as u16;
        self.txq.add_desc_chains(&chain(head, descs), head).unwrap();
        head
    }

    /// Offers raw descriptors (their `next` as given) on the tx or rx queue.
    fn offer_raw(&mut self, rx: bool, descs: &[RawDescriptor]) -> u16 {
        let (mock, next) = if rx {
            (&self.rxq, &mut self.rx_next)
        } else {
            (&self.txq, &mut self.tx_next)
        };
        let head = *next;
        *next += descs.len() as u16;
        mock.add_desc_chains(descs, head).unwrap();
        head
    }

    /// Sends a frame from the guest: header + frame written at `at`, one descriptor.
    fn send_good_frame(&mut self, at: u64, frame: &[u8]) {
        self.mem.write_slice(frame, GuestAddress(at)).unwrap();
        let head = self.offer_tx(&[(at, frame.len() as u32, 0)]);
        assert_eq!(self.net.process_tx().unwrap(), 1);
        assert_eq!(self.tx_used_last(), (u32::from(head), 0));
        assert_eq!(self.host_recv().as_deref(), Some(frame));
    }

    /// The number of used entries and the last one, of the mock queue at `used`.
    fn used(&self, used: GuestAddress) -> (u16, (u32, u32)) {
        let idx: u16 = self.mem.read_obj(GuestAddress(used.0 + 2)).unwrap();
        let at = used.0 + 4 + 8 * u64::from(idx.wrapping_sub(1) % QUEUE_SIZE);
        let elem = (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        );
        (idx, elem)
    }

    fn rx_used_count(&self) -> u16 {
        self.used(self.rxq.used_addr()).0
    }

    fn rx_used_last(&self) -> (u32, u32) {
        self.used(self.rxq.used_addr()).1
    }

    fn tx_used_count(&self) -> u16 {
        self.used(self.txq.used_addr()).0
    }

    fn tx_used_last(&self) -> (u32, u32) {
        self.used(self.txq.used_addr()).1
    }

    /// One message from the device to the host network, if any.
    fn host_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2 * MAX_FRAME_LEN];
        match (&self.host).read(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => panic!("host end: {e}"),
        }
    }

    /// Sends a frame from the host network to the device.
    fn host_send(&self, frame: &[u8]) {
        (&self.host).write_all(frame).unwrap();
    }

    fn read_guest(&self, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
        buf
    }
}

/// Descriptors linked in order starting at index `head`.
fn chain(head: u16, descs: &[(u64, u32, u32)]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | NEXT };
            let next = if last { 0 } else { head + i as u16 + 1 };
            desc(addr, len, flags, next)
        })
        .collect()
}

/// A frame of `len` bytes after a zeroed virtio-net header, its bytes from `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// `frame` as the guest should see it: `num_buffers` 1.
fn with_num_buffers(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[10..12].copy_from_slice(&1u16.to_le_bytes());
    f
}

#[test]
fn config_space_features_and_queues() {
    let (ours, _theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let mut net = Net::new(Tap::from_fd(ours).unwrap(), MAC);
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    // MAC and link status only: no offloads, no mergeable rx buffers, no control queue.
    assert_eq!(net.features(), F_MAC | F_STATUS);
    assert_eq!(F_MAC, 1 << virtio_net::VIRTIO_NET_F_MAC);
    assert_eq!(F_STATUS, 1 << virtio_net::VIRTIO_NET_F_STATUS);
    assert_eq!(TYPE_NET, virtio_bindings::virtio_ids::VIRTIO_ID_NET);
    assert_eq!(
        VNET_HDR_LEN,
        std::mem::size_of::<virtio_net::virtio_net_hdr_v1>()
    );
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut status = [0u8; 2];
    net.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), 1, "link up");
    let mut tail = [0xffu8; 4];
    net.read_config(3, &mut tail);
    assert_eq!(tail, [MAC[3], MAC[4], MAC[5], 1]);
    let mut beyond = [0xffu8; 4];
    net.read_config(8, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    net.write_config(0, &[0xaa; 6]);
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC, "the MAC is read-only");
    net.ack_features(F_MAC);
    assert_eq!(net.acked_features(), F_MAC);
    assert_eq!(net.mac(), MAC);

    // Activation needs exactly the two queues with their events.
    let mem = guest_memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let err = net.activate(
        mem.clone(),
        interrupt(),
        vec![rxq.create_queue::<Queue>().unwrap()],
        vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
    );
    assert!(err.is_err());
    // Inactive: nothing to serve.
    assert_eq!(net.process_tx().unwrap(), 0);
    assert_eq!(net.process_rx().unwrap(), 0);
    assert!(net.reset());
}

#[test]
fn tx_frame_split_over_three_descriptors_arrives_byte_identical() {
    let mem = guest_memory();
    let mut g = Guest::new(&mem);
    let sent = frame(1500, 7);
    let (hdr, a, b) = (BUFFERS, BUFFERS + 0x1000, BUFFERS + 0x3000);
    mem.write_slice(&sent[..VNET_HDR_LEN], GuestAddress(hdr))
        .unwrap();
    mem.write_slice(&sent[VNET_HDR_LEN..VNET_HDR_LEN + 600], GuestAddress(a))
        .unwrap();
    mem.write_slice(&sent[VNET_HDR_LEN + 600..], GuestAddress(b))
        .unwrap();
    let head = g.offer_tx(&[(hdr, VNET_HDR_LEN as u32, 0), (a, 600, 0), (b, 900, 0)]);
    assert_eq!(g.net.process_tx().unwrap(), 1);
    assert_eq!(g.host_recv().unwrap(), sent);
    assert_eq!(g.host_recv(), None, "one frame, one message");
    assert_eq!(
        (g.tx_used_count(), g.tx_used_last()),
        (1, (u32::from(head), 0))
    );
    assert_eq!(g.irq.status() & INTERRUPT_USED_RING, INTERRUPT_USED_RING);
    let m = g.net.metrics();
    assert_eq!((m.tx_frames, m.tx_bytes, m.tx_dropped), (1, 1500, 0));
    // Nothing more queued: nothing served.
    assert_eq!(g.net.process_tx().unwrap(), 0);
}

#[test]
fn rx_frame_lands_in_guest_buffers_with_one_buffer() {
    let mem = guest_memory();
    let mut g = Guest::new(&mem);
    let mut sent = frame(1000, 3);
    sent[10..12].copy_from_slice(&0xbeefu16.to_le_bytes()); // whatever the tap left there
    g.host_send(&sent);
    // Header and the start of the frame in a small buffer, the rest in a larger one.
    let (a, b) = (BUFFERS, BUFFERS + 0x2000);
    let head = g.offer_rx(&[(a, 64, WRITE), (b, 4096, WRITE)]);
    assert_eq!(g.net.process_rx().unwrap(), 1);
    assert_eq!(
        (g.rx_used_count(), g.rx_used_last()),
        (1, (u32::from(head), sent.len() as u32))
    );
    let mut got = g.read_guest(a, 64);
    got.extend(g.read_guest(b, sent.len() - 64));
    assert_eq!(got, with_num_buffers(&sent));
    assert_eq!(g.irq.status() & INTERRUPT_USED_RING, INTERRUPT_USED_RING);
    let m = g.net.metrics();
    assert_eq!((m.rx_frames, m.rx_bytes, m.rx_dropped), (1, 1000, 0));
    assert!(!g.net.rx_blocked());
    // The tap is empty: the next buffer stays available.
    g.offer_rx(&[(a, 4096, WRITE)]);
    assert_eq!(g.net.process_rx().unwrap(), 0);
    assert_eq!(g.rx_used_count(), 1);
}

#[test]
fn rx_frames_wait_for_buffers_in_order() {
    let mem = guest_memory();
    let mut g = Guest::new(&mem);
    let (first, second) = (frame(100, 1), frame(200, 2));
    g.host_send(&first);
    g.host_send(&second);
    assert_eq!(g.net.process_rx().unwrap(), 0);
    assert!(g.net.rx_blocked(), "the first frame waits in the device");
    assert_eq!(g.rx_used_count(), 0);
    assert_eq!(g.irq.status(), 0);
    // Called again (the tap is still readable): nothing is lost.
    assert_eq!(g.net.process_rx().unwrap(), 0);

    g.offer_rx(&[(BUFFERS, 2048, WRITE)]);
    assert_eq!(g.net.process_rx().unwrap(), 1);
    assert_eq!(g.rx_used_last(), (0, first.len() as u32));
    assert_eq!(g.read_guest(BUFFERS, first.len()), with_num_buffers(&first));
    assert!(g.net.rx_blocked(), "the second frame waits now");

    g.offer_rx(&[(BUFFERS + 0x1000, 2048, WRITE)]);
    assert_eq!(g.net.process_rx().unwrap(), 1);
    assert_eq!(g.rx_used_last(), (1, second.len() as u32));
    assert_eq!(
        g.read_guest(BUFFERS + 0x1000, second.len()),
        with_num_buffers(&second)
    );
    assert!(!g.net.rx_blocked());
    let m = g.net.metrics();
    assert_eq!((m.rx_frames, m.rx_dropped), (2, 0));
}

#[test]
fn rx_frame_bigger_than_the_chain_is_dropped_and_the_chain_kept() {
    let mem = guest_memory();
    let mut g = Guest::new(&mem);
    let (big, small) = (frame(1000, 5), frame(50, 6));
    g.host_send(&big);
    g.host_send(&small);
    let head = g.offer_rx(&[(BUFFERS, 40, WRITE), (BUFFERS + 0x100, 40, WRITE)]);
    assert_eq!(g.net.process_rx().unwrap(), 1);
    assert_eq!(g.rx_used_count(), 1, "one chain used, by the small frame");
    assert_eq!(g.rx_used_last(), (u32::from(head), small.len() as u32));
    let mut got = g.read_guest(BUFFERS, 40);
    got.extend(g.read_guest(BUFFERS + 0x100, small.len() - 40));
    assert_eq!(got, with_num_buffers(&small));
    let m = g.net.metrics();
    assert_eq!((m.rx_frames, m.rx_dropped, m.rx_bad_chains), (1, 1, 0));
    // The largest frame allowed fits a large enough chain.
    let largest = frame(MAX_FRAME_LEN - VNET_HDR_LEN, 8);
    g.host_send(&largest);
    g.offer_rx(&[(BUFFERS, MAX_FRAME_LEN as u32, WRITE)]);
    assert_eq!(g.net.process_rx().unwrap(), 1);
    assert_eq!(g.rx_used_last().1, MAX_FRAME_LEN as u32);
    assert_eq!(
        g.read_guest(BUFFERS, MAX_FRAME_LEN),
        with_num_buffers(&largest)
    );
}

#[test]
fn bad_tx_chains_are_dropped_and_the_next_frame_goes_out() {
    let mem = guest_memory();
    let mut g = Guest::new(&mem);
    let good = frame(64, 9);
    mem.write_slice(&good, GuestAddress(BUFFERS)).unwrap();
    let bad_chains: Vec<Vec<(u64, u32, u32)>> = vec![
        // A frame descriptor past the end of guest memory.
        vec![(BUFFERS, 12, 0), (MEM_SIZE + 0x1000, 64, 0)],
        // One that starts inside guest memory and runs past its end.
        vec![(BUFFERS, 12, 0), (MEM_SIZE - 16, 64, 0)],
        // An address that overflows.
        vec![(u64::MAX - 8, 64, 0)],
        // A write-only descriptor in a tx chain.
        vec![(BUFFERS, 12, 0), (BUFFERS + 0x100, 64, WRITE)],
        // Less than a header.
        vec![(BUFFERS, 8, 0)],
        // More than the largest frame.
        vec![(BUFFERS, MAX_FRAME_LEN as u32 + 1, 0)],
    ];
    for (i, descs) in bad_chains.iter().enumerate() {
        let head = g.offer_tx(descs);
        assert_eq!(g.net.process_tx().unwrap(), 1, "chain {i}");
        assert_eq!(g.tx_used_last(), (u32::from(head), 0), "chain {i}");
        assert_eq!(g.host_recv(), None, "chain {i} sent nothing");
        assert_eq!(g.net.metrics().tx_dropped, i as u64 + 1);
        g.send_good_frame(BUFFERS, &good);
    }
    // A chain that loops back on itself, and one whose `next` leaves the table.
    let at = g.tx_next;
    g.offer_raw(
        false,
        &[
            desc(BUFFERS, 12, NEXT, at + 1),
            desc(BUFFERS + 0x100, 16, NEXT, at),
        ],
    );
    assert_eq!(g.net.process_tx().unwrap(), 1);
    assert_eq!(g.tx_used_last(), (u32::from(at), 0));
    let at = g.tx_next;
    g.offer_raw(false, &[desc(BUFFERS, 12, NEXT, QUEUE_SIZE + 7)]);
    assert_eq!(g.net.process_tx().unwrap(), 1);
    assert_eq!(g.tx_used_last(), (u32::from(at), 0));
    assert_eq!(g.host_recv(), None);
    assert_eq!(g.net.metrics().tx_dropped, bad_chains.len() as u64 + 2);
    g.send_good_frame(BUFFERS, &good);
    assert_eq!(g.net.metrics().tx_frames, bad_chains.len() as u64 + 1);
}

#[test]
fn bad_rx_chains_are_returned_empty_and_the_frame_goes_to_the_next() {
    let mem = guest_memory();
    let mut g = Guest::new(&mem);
    let sent = frame(100, 4);
    g.host_send(&sent);
    let outside = g.offer_rx(&[(MEM_SIZE + 0x1000, 4096, WRITE)]);
    let straddling = g.offer_rx(&[(BUFFERS, 12, WRITE), (MEM_SIZE - 16, 4096, WRITE)]);
    let readable = g.offer_rx(&[(BUFFERS, 12, 0), (BUFFERS + 0x100, 4096, WRITE)]);
    let tiny = g.offer_rx(&[(BUFFERS, 8, WRITE)]);
    let looped = g.rx_next;
    g.offer_raw(
        true,
        &[
            desc(BUFFERS, 64, WRITE | NEXT, looped + 1),
            desc(BUFFERS + 0x100, 64, WRITE | NEXT, looped),
        ],
    );
    let good = g.offer_rx(&[(BUFFERS + 0x2000, 4096, WRITE)]);
    assert_eq!(g.net.process_rx().unwrap(), 1);
    assert_eq!(g.rx_used_count(), 6);
    let used = |i: u64| {
        let at = g.rxq.used_addr().0 + 4 + 8 * i;
        (
            mem.read_obj::<u32>(GuestAddress(at)).unwrap(),
            mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap(),
        )
    };
    for (i, head) in [outside, straddling, readable, tiny, looped]
        .into_iter()
        .enumerate()
    {
        assert_eq!(used(i as u64), (u32::from(head), 0), "bad chain {i}");
    }
    assert_eq!(used(5), (u32::from(good), sent.len() as u32));
    assert_eq!(
        g.read_guest(BUFFERS + 0x2000, sent.len()),
        with_num_buffers(&sent)
    );
    let m = g.net.metrics();
    assert_eq!((m.rx_frames, m.rx_bad_chains, m.rx_dropped), (1, 5, 0));
    // The device goes on: a second frame into a good buffer.
    let next = frame(300, 8);
    g.host_send(&next);
    g.offer_rx(&[(BUFFERS, 4096, WRITE)]);
    assert_eq!(g.net.process_rx().unwrap(), 1);
    assert_eq!(g.read_guest(BUFFERS, next.len()), with_num_buffers(&next));
}

#[test]
fn runt_frames_a_frame_waiting_at_reset_and_frames_before_activation() {
    let mem = guest_memory();
    let mut g = Guest::new(&mem);
    // Shorter than a header: dropped, even with no buffer offered.
    g.host_send(&[1, 2, 3]);
    assert_eq!(g.net.process_rx().unwrap(), 0);
    assert_eq!(g.net.metrics().rx_dropped, 1);
    assert!(!g.net.rx_blocked());

    // A frame waiting for buffers at reset is dropped with the queues; afterwards nothing
    // is served and frames from the tap are drained, not left to keep it readable.
    g.host_send(&frame(10, 1));
    assert_eq!(g.net.process_rx().unwrap(), 0);
    assert!(g.net.rx_blocked());
    g.host_send(&frame(10, 2));
    assert!(g.net.reset());
    assert!(!g.net.rx_blocked());
    assert_eq!(g.net.metrics().rx_dropped, 2);
    g.offer_rx(&[(BUFFERS, 4096, WRITE)]);
    g.offer_tx(&[(BUFFERS, 64, 0)]);
    assert_eq!(g.net.process_rx().unwrap(), 0);
    assert_eq!(g.net.process_tx().unwrap(), 0);
    assert_eq!((g.rx_used_count(), g.tx_used_count()), (0, 0));
    assert_eq!(g.host_recv(), None);
    let mut probe = [0u8; 16];
    assert_eq!(
        g.net.tap().read_frame(&mut probe).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    assert_eq!(g.net.metrics().rx_dropped, 3);
    assert_eq!(g.net.tap_fd(), std::os::fd::AsRawFd::as_raw_fd(g.net.tap()));
}
