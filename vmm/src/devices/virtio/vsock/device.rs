//! The vsock device: queues rx (0), tx (1) and event (2); its configuration space is the
//! guest's CID (64-bit little endian). Its worker thread starts with the device (before
//! the VM runs, so it installs its own seccomp filter rather than inheriting a vCPU's);
//! once the driver activates the device it waits (poll) on the host sockets, the queue notifications and a stop eventfd; it hands TX packets to the
//! muxer and fills RX buffers with the muxer's packets, raising the interrupt when the
//! driver wants one.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{read_tx, write_rx, HEADER_SIZE};
use super::TYPE_VSOCK;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INTERRUPT_USED_RING,
};
use crate::vstate::memory::GuestMemory;

const QUEUE_SIZE: u16 = 256;
/// Longest wait between passes (host streams that became writable are noticed by then).
const POLL_MS: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("hybrid vsock socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("virtqueue: {0:?}")]
    Queue(virtio_queue::Error),
    #[error("raise the used-ring interrupt: {0}")]
    Interrupt(std::io::Error),
    #[error("start the vsock worker: {0}")]
    Worker(std::io::Error),
}

/// The virtio-vsock device with a hybrid Unix-socket host side.
pub struct Vsock {
    guest_cid: u64,
    muxer: Option<Muxer>,
    /// Hands the activated device to the worker thread; dropped to end a waiting worker.
    start: Option<mpsc::Sender<Worker>>,
    worker: Option<(JoinHandle<()>, EventFd)>,
}

impl Vsock {
    /// A device for a guest of `guest_cid`, listening on the hybrid socket `uds`.
    pub fn new(guest_cid: u64, uds: &Path) -> Result<Self, VsockError> {
        let muxer = Muxer::bind(uds, guest_cid).map_err(|source| VsockError::Bind {
            path: uds.display().to_string(),
            source,
        })?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::Worker)?;
        let (start, started) = mpsc::channel::<Worker>();
        let thread = std::thread::Builder::new()
            .name("vmm-vsock".into())
            .spawn(move || {
                crate::seccomp::apply_or_exit(crate::seccomp::Role::Vsock);
                if let Ok(mut worker) = started.recv() {
                    worker.run();
                }
            })
            .map_err(VsockError::Worker)?;
        Ok(Self {
            guest_cid,
            muxer: Some(muxer),
            start: Some(start),
            worker: Some((thread, stop)),
        })
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.start = None;
        if let Some((thread, stop)) = self.worker.take() {
            let _ = stop.write(1);
            let _ = thread.join();
        }
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
        mut events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let Some(muxer) = self.muxer.take() else {
            return Err(ActivateError::Device("vsock activated twice".into()));
        };
        if queues.len() != 3 || events.len() != 3 {
            return Err(ActivateError::Device(
                "vsock needs rx, tx and event queues".into(),
            ));
        }
        queues.truncate(2); // the event queue carries only transport resets, never sent
        events.truncate(2);
        let stop = match &self.worker {
            Some((_, stop)) => stop
                .try_clone()
                .map_err(|e| ActivateError::Device(e.to_string()))?,
            None => return Err(ActivateError::Device("vsock worker gone".into())),
        };
        let tx = queues.pop();
        let rx = queues.pop();
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::Device("vsock queues".into()));
        };
        let worker = Worker {
            memory,
            interrupt,
            rx,
            tx,
            events,
            muxer,
            stop,
        };
        let sent = self
            .start
            .take()
            .is_some_and(|start| start.send(worker).is_ok());
        if !sent {
            return Err(ActivateError::Device("the vsock worker has ended".into()));
        }
        Ok(())
    }
}

/// The activated device, on its own thread.
struct Worker {
    memory: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
    events: Vec<EventFd>,
    muxer: Muxer,
    stop: EventFd,
}

impl Worker {
    fn run(&mut self) {
        loop {
            let fds: Vec<RawFd> = [self.stop.as_raw_fd()]
                .into_iter()
                .chain(self.events.iter().map(AsRawFd::as_raw_fd))
                .chain(self.muxer.fds())
                .collect();
            let mut polled: Vec<libc::pollfd> = fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `polled` is a live, exclusively borrowed array of `polled.len()` pollfd
            // structures for the duration of the call; poll only writes their `revents`.
            let n =
                unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, POLL_MS) };
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                tracing::error!("vsock worker: poll failed");
                return;
            }
            if polled[0].revents != 0 {
                return; // stopped
            }
            for event in &self.events {
                let _ = event.read();
            }
            if let Err(e) = self.process() {
                tracing::warn!(error = %e, "vsock");
            }
        }
    }

    /// One pass: host sockets, then TX, then RX.
    fn process(&mut self) -> Result<(), VsockError> {
        self.muxer.poll_host();
        let mut used = self.process_tx()?;
        used |= self.process_rx()?;
        if used {
            for queue in [&mut self.rx, &mut self.tx] {
                if queue
                    .needs_notification(&self.memory)
                    .map_err(VsockError::Queue)?
                {
                    self.interrupt
                        .trigger(INTERRUPT_USED_RING)
                        .map_err(VsockError::Interrupt)?;
                    break;
                }
            }
        }
        Ok(())
    }

    fn process_tx(&mut self) -> Result<bool, VsockError> {
        let mut heads = Vec::new();
        for chain in self.tx.iter(&self.memory).map_err(VsockError::Queue)? {
            heads.push(chain.head_index());
            match read_tx(&self.memory, chain) {
                Ok(packet) => self.muxer.from_guest(&packet),
                Err(e) => tracing::warn!(error = %e, "vsock: dropped a TX packet"),
            }
        }
        for &head in &heads {
            self.tx
                .add_used(&self.memory, head, 0)
                .map_err(VsockError::Queue)?;
        }
        Ok(!heads.is_empty())
    }

    fn process_rx(&mut self) -> Result<bool, VsockError> {
        let mut used = false;
        while let Some(chain) = self
            .rx
            .iter(&self.memory)
            .map_err(VsockError::Queue)?
            .next()
        {
            let head = chain.head_index();
            let room = Writer::<()>::new(&self.memory, chain.clone())
                .map(|w| w.available_bytes())
                .unwrap_or(0);
            if room < HEADER_SIZE {
                self.rx
                    .add_used(&self.memory, head, 0)
                    .map_err(VsockError::Queue)?;
                used = true;
                continue;
            }
            let Some((header, data)) = self.muxer.to_guest(room - HEADER_SIZE) else {
                self.rx.go_to_previous_position(); // keep the buffer for the next packet
                break;
            };
            let written = write_rx(&self.memory, chain, header, &data).unwrap_or(0);
            self.rx
                .add_used(&self.memory, head, written)
                .map_err(VsockError::Queue)?;
            used = true;
        }
        Ok(used)
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

    use super::super::packet::{Header, OP_REQUEST, OP_RESPONSE, OP_RW, TYPE_STREAM};
    use super::super::HOST_CID;
    use super::*;
    use crate::devices::virtio::test_utils::{desc, interrupt};
    use crate::vstate::memory;

    const GUEST_CID: u64 = 3;
    const RX_BUFFERS: u64 = 0x10_0000;
    const TX_BUFFERS: u64 = 0x20_0000;

    fn guest_header(op: u16, host_port: u32, len: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
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

    /// Waits until the used ring at `used` has more than `seen` entries; returns the
    /// (descriptor id, length) of entry `seen`.
    fn wait_used(mem: &GuestMemory, used: GuestAddress, seen: u16) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while mem.read_obj::<u16>(GuestAddress(used.0 + 2)).unwrap() <= seen {
            assert!(Instant::now() < deadline, "the device returned no buffer");
            std::thread::sleep(Duration::from_millis(5));
        }
        let at = used.0 + 4 + 8 * u64::from(seen);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    #[test]
    fn a_host_connection_through_the_device_carries_data_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mem = memory::create(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let evq = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        let rx_descs: Vec<RawDescriptor> = (0..4)
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
        let tx_event = events[1].try_clone().unwrap();
        let irq = interrupt();
        let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
        let mut cid = [0u8; 8];
        dev.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
        dev.activate(mem.clone(), irq.clone(), queues, events)
            .unwrap();

        // The host asks for guest port 1024: a REQUEST arrives in the first RX buffer.
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        let (id, len) = wait_used(&mem, rxq.used_addr(), 0);
        assert_eq!((id, len), (0, HEADER_SIZE as u32));
        let request: Header = mem.read_obj(GuestAddress(RX_BUFFERS)).unwrap();
        assert_eq!(({ request.op }, { request.dst_port }), (OP_REQUEST, 1024));
        let host_port = request.src_port;
        assert_eq!(irq.status() & INTERRUPT_USED_RING, INTERRUPT_USED_RING);

        // The guest accepts; the host gets its OK line.
        mem.write_obj(
            guest_header(OP_RESPONSE, host_port, 0),
            GuestAddress(TX_BUFFERS),
        )
        .unwrap();
        txq.add_desc_chains(&[desc(TX_BUFFERS, HEADER_SIZE as u32, 0, 0)], 0)
            .unwrap();
        tx_event.write(1).unwrap();
        let mut ok = vec![0u8; format!("OK {host_port}\n").len()];
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.read_exact(&mut ok).unwrap();
        assert_eq!(ok, format!("OK {host_port}\n").as_bytes());

        // Host → guest data lands in the next RX buffer, after its header.
        host.write_all(b"hello").unwrap();
        let (id, len) = wait_used(&mem, rxq.used_addr(), 1);
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
        tx_event.write(1).unwrap();
        let mut world = [0u8; 5];
        host.read_exact(&mut world).unwrap();
        assert_eq!(&world, b"world");

        drop(dev);
        assert!(
            !uds.exists(),
            "the hybrid socket is removed with the device"
        );
    }
}
