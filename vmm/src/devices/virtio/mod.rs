//! Virtio devices and their MMIO transport. A device model implements [`VirtioDevice`]; the
//! [`mmio::MmioTransport`] around it speaks the virtio-mmio (version 2) register protocol
//! to the guest driver, negotiates features, sets up the virtqueues and activates the device
//! once the driver is ready.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vhost_user;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// VIRTIO_F_VERSION_1: every device here is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits (virtio-mmio `InterruptStatus`).
pub const INTERRUPT_USED_RING: u32 = 0x1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("virtqueue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    #[error("{0}")]
    Device(String),
}

/// The device's interrupt: a status word the driver reads and acknowledges through the
/// transport, and the irqfd that raises the line.
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Marks `bits` pending and raises the interrupt.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Answers a read of a device's configuration space, `config`, at `offset`: bytes past
/// its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o + i))
            .copied()
            .unwrap_or(0);
    }
}

/// A virtio device model behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (1 net, 2 block, 4 rng, 19 vsock, 26 fs, ...).
    fn device_type(&self) -> u32;
    /// The largest size of each virtqueue; their count is the device's queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// The features the driver accepted, before activation.
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving `queues`; `events` are signalled when the driver notifies each queue.
    fn activate(
        &mut self,
        memory: GuestMemory,
        interrupt: std::sync::Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        events: Vec<EventFd>,
    ) -> Result<(), ActivateError>;
    /// Stops serving after a driver reset; false when the device cannot (then it stays
    /// activated and the transport reports a failure).
    fn reset(&mut self) -> bool {
        false
    }
}
