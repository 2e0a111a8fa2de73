//! The network device. TX: each chain's readable descriptors (header and frame) are
//! gathered and written to the tap in one write; the chain is returned used with 0 bytes.
//! RX: one frame (with its header) is read from the tap, copied into the writable
//! descriptors of one chain with `num_buffers` set to 1, and the chain returned used with
//! the frame's length.
//!
//! Guest mistakes never stop the device. A tx chain with a write-only descriptor, a buffer
//! outside guest memory, a loop or a broken `next` link, less than a header or more than
//! [`MAX_FRAME_LEN`] bytes is dropped (used with 0). An rx chain with such faults, a readable
//! descriptor, or no room for a header is returned used with 0 and the frame goes to the
//! next chain. A frame bigger than the chain offered is dropped and the chain kept for the
//! next frame. While the guest offers no rx buffers the frame read last waits in the device
//! (see [`Net::rx_blocked`]); before activation frames read from the tap are dropped.
//! Every drop is counted in [`NetMetrics`].

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::EventFd;

use super::tap::Tap;
use super::{MAX_FRAME_LEN, TYPE_NET, VNET_HDR_LEN};
use crate::devices::virtio::queue::{ActiveQueue, QueueError};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INTERRUPT_USED_RING,
};
use crate::memory::GuestMemory;

/// The size of both queues.
pub(crate) const QUEUE_SIZE: u16 = 256;
/// Feature bits (virtio 1.2, 5.1.3).
pub(crate) const F_MAC: u64 = 1 << 5;
pub(crate) const F_STATUS: u64 = 1 << 16;
/// `status` in the configuration space: the link is up.
const S_LINK_UP: u16 = 1;
/// Where `num_buffers` sits in the header.
const NUM_BUFFERS_AT: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("read tap {tap}: {source}")]
    TapRead { tap: String, source: std::io::Error },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What the device has moved and dropped since it was created (frame bytes exclude the
/// virtio-net header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetMetrics {
    /// Frames given to the guest, and their bytes.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the tap that no guest buffer took: too big for the chain offered,
    /// shorter than a header, or read before the device was activated.
    pub rx_dropped: u64,
    /// Rx chains returned unused because they were malformed.
    pub rx_bad_chains: u64,
    /// Frames written to the tap, and their bytes.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Tx chains not sent: malformed, too short or too long, or refused by the tap.
    pub tx_dropped: u64,
}

impl NetMetrics {
    /// The counters as a JSON object, for the control socket's `metrics`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// The queues of an activated device.
struct Active {
    rx: ActiveQueue,
    tx: ActiveQueue,
    events: Vec<EventFd>,
}

/// A virtio-net device on a tap.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    acked: u64,
    active: Option<Active>,
    /// The frame read from the tap, with its header: `rx_frame[..rx_pending]`.
    rx_frame: Vec<u8>,
    /// The length of a frame waiting for an rx buffer, 0 when none waits.
    rx_pending: usize,
    tx_frame: Vec<u8>,
    metrics: NetMetrics,
}

impl Net {
    /// A device on `tap` whose guest interface has the address `mac`.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Self {
            tap,
            mac,
            acked: 0,
            active: None,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_pending: 0,
            tx_frame: Vec::with_capacity(MAX_FRAME_LEN),
            metrics: NetMetrics::default(),
        }
    }

    /// The tap's fd, for the event loop: watch it for EPOLLIN and call
    /// [`Net::process_rx`]. See [`Net::rx_blocked`] for level-triggered loops.
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The counters since the device was created.
    pub fn metrics(&self) -> NetMetrics {
        self.metrics
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// True while a frame waits for the guest to offer rx buffers: the tap may then stay
    /// readable with nothing the device can do until the rx queue is notified. A
    /// level-triggered loop should stop watching the tap while this holds and watch it again
    /// after the next [`Net::process_rx`] on an rx queue notification; an edge-triggered
    /// (EPOLLET) registration needs nothing, since `process_rx` reads the tap until it is
    /// empty unless this holds.
    pub fn rx_blocked(&self) -> bool {
        self.rx_pending > 0
    }

    /// Sends every frame the guest queued on tx to the tap; returns how many tx chains
    /// were returned (sent or dropped), raising the interrupt if the driver wants one.
    pub fn process_tx(&mut self) -> Result<usize, NetError> {
        let Self {
            tap,
            active,
            tx_frame,
            metrics,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return Ok(0);
        };
        if let Some(event) = active.events.get(1) {
            let _ = event.read(); // consume the notification, if any
        }
        active.tx.serve(|memory, chain| {
            match gather_tx(memory, chain, tx_frame) {
                Ok(()) => send(tap, tx_frame, metrics),
                Err(why) => {
                    metrics.tx_dropped += 1;
                    tracing::debug!(tap = %tap.name(), why, "virtio-net: dropped a tx chain");
                }
            }
            Ok::<_, NetError>(0)
        })
    }

    /// Moves frames from the tap into the guest's rx buffers until the tap is empty or the
    /// guest has no buffer left (the frame then waits, see [`Net::rx_blocked`]); returns
    /// how many frames were delivered, raising the interrupt if the driver wants one.
    /// Before activation it drains the tap, dropping the frames. An error is a failed tap
    /// read (not `WouldBlock`), after which the tap is probably gone.
    pub fn process_rx(&mut self) -> Result<usize, NetError> {
        let Some(active) = self.active.as_mut() else {
            self.drain_tap();
            return Ok(0);
        };
        if let Some(event) = active.events.first() {
            let _ = event.read(); // consume the notification, if any
        }
        let mut delivered = 0;
        let mut returned = 0;
        let result = self.fill_rx(&mut delivered, &mut returned);
        if returned > 0 {
            if let Some(active) = self.active.as_mut() {
                notify(&mut active.rx)?;
            }
        }
        result.map(|()| delivered)
    }

    /// The loop of [`Net::process_rx`]: counts frames `delivered` and chains `returned`.
    fn fill_rx(&mut self, delivered: &mut usize, returned: &mut usize) -> Result<(), NetError> {
        let Self {
            tap,
            active,
            rx_frame,
            rx_pending,
            metrics,
            ..
        } = self;
        let Some(Active { rx, .. }) = active.as_mut() else {
            return Ok(());
        };
        loop {
            if *rx_pending == 0 {
                match read_frame(tap, rx_frame, metrics)? {
                    Some(len) => *rx_pending = len,
                    None => return Ok(()),
                }
            }
            let memory = &rx.memory;
            let Some(chain) = rx.queue.iter(memory).map_err(QueueError::Queue)?.next() else {
                return Ok(()); // no buffers: the frame waits for the next notification
            };
            let head = chain.head_index();
            let frame = &mut rx_frame[..*rx_pending];
            let used = match deliver(memory, chain, frame) {
                Delivery::Done => {
                    metrics.rx_frames += 1;
                    metrics.rx_bytes += (frame.len() - VNET_HDR_LEN) as u64;
                    *delivered += 1;
                    *rx_pending = 0;
                    frame.len() as u32
                }
                Delivery::BadChain(why) => {
                    metrics.rx_bad_chains += 1;
                    tracing::debug!(tap = %tap.name(), why, "virtio-net: bad rx chain");
                    0
                }
                Delivery::TooBig(room) => {
                    rx.queue.go_to_previous_position(); // the chain takes the next frame
                    metrics.rx_dropped += 1;
                    tracing::debug!(
                        tap = %tap.name(), len = frame.len(), room,
                        "virtio-net: rx frame bigger than the guest's buffer, dropped"
                    );
                    *rx_pending = 0;
                    continue;
                }
            };
            rx.queue
                .add_used(memory, head, used)
                .map_err(QueueError::Queue)?;
            *returned += 1;
        }
    }

    /// Reads and drops every frame queued on the tap (no driver to take them).
    fn drain_tap(&mut self) {
        let Self {
            tap,
            rx_frame,
            metrics,
            ..
        } = self;
        while let Ok(Some(_)) = read_frame(tap, rx_frame, metrics) {
            metrics.rx_dropped += 1;
        }
    }
}

/// Reads one frame of at least a header from the tap into `buf`; frames shorter than that
/// are dropped. `None` when the tap has nothing (or reached its end).
fn read_frame(
    tap: &Tap,
    buf: &mut [u8],
    metrics: &mut NetMetrics,
) -> Result<Option<usize>, NetError> {
    loop {
        match tap.read_frame(buf) {
            Ok(0) => return Ok(None),
            Ok(len) if len < VNET_HDR_LEN => metrics.rx_dropped += 1,
            Ok(len) => return Ok(Some(len)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(NetError::TapRead {
                    tap: tap.name().to_owned(),
                    source,
                })
            }
        }
    }
}

/// Why a chain is malformed, or its descriptors: `(device-readable, device-writable)`.
/// A chain is well formed when its walk ends at a descriptor without NEXT: one cut short
/// by virtio-queue (a loop, an out-of-range `next`, an unreadable descriptor table) is not.
fn walk(chain: &DescriptorChain<&GuestMemory>) -> Result<(bool, bool), &'static str> {
    let (mut readable, mut writable, mut ended) = (false, false, false);
    for desc in chain.clone() {
        if desc.is_write_only() {
            writable = true;
        } else {
            readable = true;
        }
        ended = !desc.has_next();
    }
    if ended {
        Ok((readable, writable))
    } else {
        Err("descriptor chain loops or breaks off")
    }
}

/// Copies a tx chain's header and frame into `frame`.
fn gather_tx(
    memory: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    frame: &mut Vec<u8>,
) -> Result<(), &'static str> {
    if walk(&chain)?.1 {
        return Err("write-only descriptor in a tx chain");
    }
    let mut reader =
        Reader::<()>::new(memory, chain).map_err(|_| "tx buffer outside guest memory")?;
    let len = reader.available_bytes();
    if len < VNET_HDR_LEN {
        return Err("tx chain shorter than the virtio-net header");
    }
    if len > MAX_FRAME_LEN {
        return Err("tx frame too long");
    }
    frame.resize(len, 0);
    reader
        .read_exact(frame)
        .map_err(|_| "tx buffer outside guest memory")
}

/// Writes a gathered frame to the tap.
fn send(tap: &Tap, frame: &[u8], metrics: &mut NetMetrics) {
    match tap.write_frame(frame) {
        Ok(n) if n == frame.len() => {
            metrics.tx_frames += 1;
            metrics.tx_bytes += (n - VNET_HDR_LEN) as u64;
        }
        Ok(n) => {
            metrics.tx_dropped += 1;
            tracing::debug!(tap = %tap.name(), n, len = frame.len(), "virtio-net: short tap write");
        }
        Err(e) => {
            metrics.tx_dropped += 1;
            tracing::debug!(tap = %tap.name(), error = %e, "virtio-net: tap write failed, frame dropped");
        }
    }
}

enum Delivery {
    /// The frame is in the chain.
    Done,
    /// The chain cannot take any frame; it is returned unused.
    BadChain(&'static str),
    /// The frame does not fit the chain's this many bytes.
    TooBig(usize),
}

/// Copies `frame` (header first) into an rx chain, with `num_buffers` 1.
fn deliver(
    memory: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    frame: &mut [u8],
) -> Delivery {
    match walk(&chain) {
        Err(why) => return Delivery::BadChain(why),
        Ok((true, _)) => return Delivery::BadChain("readable descriptor in an rx chain"),
        Ok(_) => {}
    }
    let Ok(mut writer) = Writer::<()>::new(memory, chain) else {
        return Delivery::BadChain("rx buffer outside guest memory");
    };
    let room = writer.available_bytes();
    if room < VNET_HDR_LEN {
        return Delivery::BadChain("rx chain shorter than the virtio-net header");
    }
    if room < frame.len() {
        return Delivery::TooBig(room);
    }
    frame[NUM_BUFFERS_AT..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
    match writer.write_all(frame) {
        Ok(()) => Delivery::Done,
        Err(_) => Delivery::BadChain("rx buffer outside guest memory"),
    }
}

/// Raises the used-ring interrupt if the driver wants one for `queue`.
fn notify(queue: &mut ActiveQueue) -> Result<(), QueueError> {
    if queue
        .queue
        .needs_notification(&queue.memory)
        .map_err(QueueError::Queue)?
    {
        queue
            .interrupt
            .trigger(INTERRUPT_USED_RING)
            .map_err(QueueError::Interrupt)?;
    }
    Ok(())
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        F_MAC | F_STATUS
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    /// The configuration space: the MAC address, then the link status (always up).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&S_LINK_UP.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    /// The MAC address is read-only once VIRTIO_F_VERSION_1 is negotiated.
    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(
        &mut self,
        memory: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        mut queues: Vec<Queue>,
        events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 2 || events.len() != 2 {
            return Err(ActivateError::Device(
                "virtio-net needs its rx and tx queues".into(),
            ));
        }
        let (Some(tx), Some(rx)) = (queues.pop(), queues.pop()) else {
            return Err(ActivateError::Device("virtio-net queues".into()));
        };
        let queue = |queue| ActiveQueue {
            memory: memory.clone(),
            interrupt: interrupt.clone(),
            queue,
        };
        self.active = Some(Active {
            rx: queue(rx),
            tx: queue(tx),
            events,
        });
        tracing::debug!(tap = %self.tap.name(), "virtio-net activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        if self.rx_pending > 0 {
            self.metrics.rx_dropped += 1;
            self.rx_pending = 0;
        }
        true
    }
}
