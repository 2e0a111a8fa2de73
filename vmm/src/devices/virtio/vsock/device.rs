//! The vsock device: queues rx (0), tx (1) and event (2); its configuration space is the
//! guest's CID (64-bit little endian). It is served by the VMM's device event loop: the loop
//! waits on the rx and tx queue notifications and on the device's own epoll set of host
//! sockets (the hybrid listener, clients mid-handshake, connections; the set changes as
//! connections come and go, so it is an epoll of its own, nested in the loop's). Each pass
//! accepts host clients, hands TX packets to the muxer, fills RX buffers with the muxer's
//! packets, raises the interrupt when the driver wants one, and then updates which sockets
//! it waits on: a connection is read only while the guest has credit and RX buffers for
//! its data, and watched for writability only while guest data waits for the host.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{read_tx, write_rx, HEADER_SIZE};
use super::TYPE_VSOCK;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INTERRUPT_USED_RING,
};
use crate::memory::GuestMemory;

const QUEUE_SIZE: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("hybrid vsock socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("the vsock device's epoll set: {0}")]
    Epoll(std::io::Error),
    #[error("virtqueue: {0:?}")]
    Queue(virtio_queue::Error),
    #[error("raise the used-ring interrupt: {0}")]
    Interrupt(std::io::Error),
}

/// The virtio-vsock device with a hybrid Unix-socket host side.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    /// The host sockets the device waits on (see [`Vsock::poll_fd`]).
    epoll: Epoll,
    active: Option<Active>,
    /// The last pass used up the RX buffers: host data waits until the driver adds some.
    rx_starved: bool,
    /// Signalled on activation so the event loop makes a first pass.
    activated: EventFd,
}

/// The queues of an activated device.
struct Active {
    memory: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
}

impl Vsock {
    /// A device for a guest of `guest_cid`, listening on the hybrid socket `uds`.
    pub fn new(guest_cid: u64, uds: &Path) -> Result<Self, VsockError> {
        let muxer = Muxer::bind(uds, guest_cid).map_err(|source| VsockError::Bind {
            path: uds.display().to_string(),
            source,
        })?;
        let mut device = Self {
            guest_cid,
            muxer,
            epoll: Epoll::new().map_err(VsockError::Epoll)?,
            active: None,
            rx_starved: false,
            activated: EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::Epoll)?,
        };
        device.watch()?;
        Ok(device)
    }

    /// The device's epoll set of host sockets: readable when one of them needs a pass. The
    /// event loop waits on it (level-triggered) and calls [`Vsock::process`].
    pub fn poll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Signalled when the driver activates the device; the event loop makes a pass.
    pub fn activation_event(&self) -> std::io::Result<EventFd> {
        self.activated.try_clone()
    }

    /// One pass: host sockets, then (once active) TX, then RX; then the sockets to wait on.
    pub fn process(&mut self) -> Result<(), VsockError> {
        // The nested set's ready list is only cleared by waiting on it.
        let mut ready = [EpollEvent::default(); 32];
        let _ = self.epoll.wait(0, &mut ready);
        self.muxer.poll_host();
        if let Some(active) = &mut self.active {
            let mut used = process_tx(active, &mut self.muxer)?;
            let (rx_used, starved) = process_rx(active, &mut self.muxer)?;
            self.rx_starved = starved;
            used |= rx_used;
            if used {
                for queue in [&mut active.rx, &mut active.tx] {
                    if queue
                        .needs_notification(&active.memory)
                        .map_err(VsockError::Queue)?
                    {
                        active
                            .interrupt
                            .trigger(INTERRUPT_USED_RING)
                            .map_err(VsockError::Interrupt)?;
                        break;
                    }
                }
            }
        }
        self.watch()
    }

    /// Brings the epoll set in line with what the muxer can make progress on now.
    fn watch(&mut self) -> Result<(), VsockError> {
        // Until the driver is ready, and while it has no RX buffers, host data waits in
        // the sockets.
        let deliver = self.active.is_some() && !self.rx_starved;
        self.muxer
            .sync_interest(&self.epoll, deliver)
            .map_err(VsockError::Epoll)
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(
        &mut self,
        memory: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        mut queues: Vec<Queue>,
        _: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError::Device(
                "vsock needs rx, tx and event queues".into(),
            ));
        }
        queues.truncate(2); // the event queue carries only transport resets, never sent
        let tx = queues.pop();
        let rx = queues.pop();
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::Device("vsock queues".into()));
        };
        self.active = Some(Active {
            memory,
            interrupt,
            rx,
            tx,
        });
        self.rx_starved = false;
        // Host data that waited for the driver flows from the next pass, which the event
        // loop makes now (this runs on a vCPU thread, whose filter keeps it off sockets).
        self.activated
            .write(1)
            .map_err(|e| ActivateError::Device(e.to_string()))
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.activated.write(1).is_ok()
    }
}

/// Hands every TX packet to the muxer; returns whether a buffer was used.
fn process_tx(active: &mut Active, muxer: &mut Muxer) -> Result<bool, VsockError> {
    let mut heads = Vec::new();
    for chain in active.tx.iter(&active.memory).map_err(VsockError::Queue)? {
        heads.push(chain.head_index());
        match read_tx(&active.memory, chain) {
            Ok(packet) => muxer.from_guest(&packet),
            Err(e) => tracing::warn!(error = %e, "vsock: dropped a TX packet"),
        }
    }
    for &head in &heads {
        active
            .tx
            .add_used(&active.memory, head, 0)
            .map_err(VsockError::Queue)?;
    }
    Ok(!heads.is_empty())
}

/// Fills RX buffers with the muxer's packets; returns whether a buffer was used, and
/// whether the buffers ran out.
fn process_rx(active: &mut Active, muxer: &mut Muxer) -> Result<(bool, bool), VsockError> {
    let mut used = false;
    loop {
        let Some(chain) = active
            .rx
            .iter(&active.memory)
            .map_err(VsockError::Queue)?
            .next()
        else {
            return Ok((used, true));
        };
        let head = chain.head_index();
        let room = Writer::<()>::new(&active.memory, chain.clone())
            .map(|w| w.available_bytes())
            .unwrap_or(0);
        if room < HEADER_SIZE {
            active
                .rx
                .add_used(&active.memory, head, 0)
                .map_err(VsockError::Queue)?;
            used = true;
            continue;
        }
        let Some((header, data)) = muxer.to_guest(room - HEADER_SIZE) else {
            active.rx.go_to_previous_position(); // keep the buffer for the next packet
            return Ok((used, false));
        };
        let written = write_rx(&active.memory, chain, header, &data).unwrap_or(0);
        active
            .rx
            .add_used(&active.memory, head, written)
            .map_err(VsockError::Queue)?;
        used = true;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::super::packet::{guest_header, Header, OP_REQUEST, OP_RESPONSE, OP_RW};
    use super::*;
    use crate::devices::virtio::test_utils::{desc, interrupt};
    use crate::memory;

    const GUEST_CID: u64 = 3;
    const RX_BUFFERS: u64 = 0x10_0000;
    const TX_BUFFERS: u64 = 0x20_0000;

    /// Makes passes (as the event loop would) until the used ring at `used` has more than
    /// `seen` entries; returns the (descriptor id, length) of entry `seen`.
    fn pump(dev: &mut Vsock, mem: &GuestMemory, used: GuestAddress, seen: u16) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            dev.process().unwrap();
            if mem.read_obj::<u16>(GuestAddress(used.0 + 2)).unwrap() > seen {
                break;
            }
            assert!(Instant::now() < deadline, "the device returned no buffer");
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = used.0 + 4 + 8 * u64::from(seen);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// A device on `uds`, activated on mock rx, tx and event queues, with `rx_buffers`
    /// 4 KiB buffers offered on rx; returns it, its rx and tx queues and its interrupt.
    fn activated<'a>(
        mem: &'a GuestMemory,
        uds: &std::path::Path,
        rx_buffers: u64,
    ) -> (
        Vsock,
        MockSplitQueue<'a, GuestMemory>,
        MockSplitQueue<'a, GuestMemory>,
        Arc<VirtioInterrupt>,
    ) {
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
        let rx_descs: Vec<RawDescriptor> = (0..rx_buffers)
            .map(|i| desc(RX_BUFFERS + i * 0x1000, 0x1000, VRING_DESC_F_WRITE, 0))
            .collect();
        rxq.add_desc_chains(&rx_descs, 0).unwrap();
        let queues = vec![
            rxq.create_queue::<Queue>().unwrap(),
            txq.create_queue::<Queue>().unwrap(),
            evq.create_queue::<Queue>().unwrap(),
        ];
        let events: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let irq = interrupt();
        let mut dev = Vsock::new(GUEST_CID, uds).unwrap();
        let mut cid = [0u8; 8];
        dev.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
        dev.activate(mem.clone(), irq.clone(), queues, events)
            .unwrap();
        (dev, rxq, txq, irq)
    }

    /// A host client connects to guest port 1024 through the hybrid socket: the REQUEST
    /// fills the first RX buffer, the guest answers RESPONSE on the first TX buffer, and the
    /// client reads its `OK` line. Returns the client and its host-side port.
    fn connect_host(
        dev: &mut Vsock,
        mem: &GuestMemory,
        uds: &std::path::Path,
        rxq: &MockSplitQueue<'_, GuestMemory>,
        txq: &MockSplitQueue<'_, GuestMemory>,
    ) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(uds).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        let (id, len) = pump(dev, mem, rxq.used_addr(), 0);
        assert_eq!((id, len), (0, HEADER_SIZE as u32));
        let request: Header = mem.read_obj(GuestAddress(RX_BUFFERS)).unwrap();
        assert_eq!(({ request.op }, { request.dst_port }), (OP_REQUEST, 1024));
        let host_port = request.src_port;
        mem.write_obj(
            guest_header(OP_RESPONSE, host_port, 0),
            GuestAddress(TX_BUFFERS),
        )
        .unwrap();
        txq.add_desc_chains(&[desc(TX_BUFFERS, HEADER_SIZE as u32, 0, 0)], 0)
            .unwrap();
        pump(dev, mem, txq.used_addr(), 0);
        let mut ok = vec![0u8; format!("OK {host_port}\n").len()];
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.read_exact(&mut ok).unwrap();
        assert_eq!(ok, format!("OK {host_port}\n").as_bytes());
        (host, host_port)
    }

    #[test]
    fn a_host_connection_through_the_device_carries_data_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mem = memory::create(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let (mut dev, rxq, txq, irq) = activated(&mem, &uds, 4);

        // The host asks for guest port 1024 (a REQUEST in the first RX buffer, which
        // raises the interrupt); the guest accepts and the host gets its OK line.
        let (mut host, host_port) = connect_host(&mut dev, &mem, &uds, &rxq, &txq);
        assert_eq!(irq.status() & INTERRUPT_USED_RING, INTERRUPT_USED_RING);

        // Host → guest data lands in the next RX buffer, after its header.
        host.write_all(b"hello").unwrap();
        let (id, len) = pump(&mut dev, &mem, rxq.used_addr(), 1);
        assert_eq!((id, len), (1, HEADER_SIZE as u32 + 5));
        let rw: Header = mem.read_obj(GuestAddress(RX_BUFFERS + 0x1000)).unwrap();
        assert_eq!(({ rw.op }, { rw.len }), (OP_RW, 5));
        let mut data = [0u8; 5];
        mem.read_slice(
            &mut data,
            GuestAddress(RX_BUFFERS + 0x1000 + HEADER_SIZE as u64),
        )
        .unwrap();
        assert_eq!(&data, b"hello");

        // Guest → host data split over two descriptors arrives whole.
        mem.write_obj(
            guest_header(OP_RW, host_port, 5),
            GuestAddress(TX_BUFFERS + 0x1000),
        )
        .unwrap();
        mem.write_slice(b"world", GuestAddress(TX_BUFFERS + 0x2000))
            .unwrap();
        txq.add_desc_chains(
            &[
                desc(
                    TX_BUFFERS + 0x1000,
                    HEADER_SIZE as u32,
                    VRING_DESC_F_NEXT,
                    2,
                ),
                desc(TX_BUFFERS + 0x2000, 5, 0, 0),
            ],
            1,
        )
        .unwrap();
        pump(&mut dev, &mem, txq.used_addr(), 1);
        let mut world = [0u8; 5];
        host.read_exact(&mut world).unwrap();
        assert_eq!(&world, b"world");

        drop(dev);
        assert!(
            !uds.exists(),
            "the hybrid socket is removed with the device"
        );
    }

    /// Whether the device's epoll set would wake the event loop now.
    fn wakes_the_loop(dev: &Vsock) -> bool {
        use vmm_sys_util::epoll::{ControlOperation, EventSet};
        let outer = Epoll::new().unwrap();
        outer
            .ctl(
                ControlOperation::Add,
                dev.poll_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        let mut ready = [EpollEvent::default(); 1];
        outer.wait(0, &mut ready).unwrap() > 0
    }

    #[test]
    fn host_data_waits_without_waking_the_loop_while_the_guest_has_no_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mem = memory::create(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        // One RX buffer: the REQUEST takes it.
        let (mut dev, rxq, txq, _) = activated(&mem, &uds, 1);
        let (mut host, _) = connect_host(&mut dev, &mem, &uds, &rxq, &txq);

        // Host data with no RX buffer left: it stays in the socket, and the device's set
        // does not wake the loop for it (a level-triggered loop would spin).
        host.write_all(b"data").unwrap();
        dev.process().unwrap();
        assert!(
            !wakes_the_loop(&dev),
            "woke the loop with nowhere to put the data"
        );

        // The guest adds a buffer (and notifies): the data arrives.
        rxq.add_desc_chains(
            &[desc(RX_BUFFERS + 0x1000, 0x1000, VRING_DESC_F_WRITE, 0)],
            1,
        )
        .unwrap();
        let (_, len) = pump(&mut dev, &mem, rxq.used_addr(), 1);
        assert_eq!(len, HEADER_SIZE as u32 + 4);
        let rw: Header = mem.read_obj(GuestAddress(RX_BUFFERS + 0x1000)).unwrap();
        assert_eq!(({ rw.op }, { rw.len }), (OP_RW, 4));
    }
}
