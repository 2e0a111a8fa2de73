//! The entropy device: for each request it fills the chain's writable descriptors from
//! `/dev/urandom` and returns the chain with the byte count written. A request whose buffers
//! lie outside guest memory is returned with 0 bytes; read-only descriptors are skipped; a
//! looping or overlong chain ends where virtio-queue stops following it.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::TYPE_RNG;
use crate::devices::virtio::queue::{ActiveQueue, QueueError};
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemory;

/// The request queue's size.
const QUEUE_SIZE: u16 = 256;
/// Largest number of bytes served for one request.
const MAX_REQUEST: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("open /dev/urandom: {0}")]
    Open(std::io::Error),
    #[error("read /dev/urandom: {0}")]
    Entropy(std::io::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The virtio-rng device.
pub struct Rng {
    source: File,
    buf: Vec<u8>,
    acked: u64,
    active: Option<ActiveQueue>,
    event: Option<EventFd>,
}

impl Rng {
    pub fn new() -> Result<Self, RngError> {
        Ok(Self {
            source: File::open("/dev/urandom").map_err(RngError::Open)?,
            buf: Vec::new(),
            acked: 0,
            active: None,
            event: None,
        })
    }

    /// The request queue's notification eventfd, once active (for the event loop).
    pub fn queue_event(&self) -> Option<&EventFd> {
        self.event.as_ref()
    }

    /// Serves every available request; returns how many, raising the interrupt if the driver
    /// wants one.
    pub fn process_queue(&mut self) -> Result<usize, RngError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(0);
        };
        if let Some(event) = &self.event {
            let _ = event.read(); // consume the notification, if any
        }
        let (source, buf) = (&mut self.source, &mut self.buf);
        active.serve(|memory, chain| {
            let mut written = 0u32;
            for desc in chain.writable() {
                let len = desc.len().min(MAX_REQUEST - written);
                buf.resize(len as usize, 0);
                source.read_exact(buf).map_err(RngError::Entropy)?;
                if memory.write_slice(buf, desc.addr()).is_err() {
                    return Ok(0); // a buffer outside guest memory: the request gets nothing
                }
                written += len;
                if written == MAX_REQUEST {
                    break;
                }
            }
            Ok(written)
        })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0); // no configuration space
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(
        &mut self,
        memory: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        mut events: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let Some(event) = events.pop() else {
            return Err(ActivateError::Device(
                "virtio-rng needs its request queue".into(),
            ));
        };
        self.active = Some(ActiveQueue::activate(
            "virtio-rng",
            memory,
            interrupt,
            queues,
        )?);
        self.event = Some(event);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.event = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::test_utils::{desc, interrupt};
    use crate::devices::virtio::INTERRUPT_USED_RING;
    use crate::memory;

    /// An active device on a mock queue holding `descs` as one available chain.
    fn device_with<'a>(
        mem: &'a GuestMemory,
        descs: &[RawDescriptor],
    ) -> (Rng, Arc<VirtioInterrupt>, MockSplitQueue<'a, GuestMemory>) {
        let mock = MockSplitQueue::new(mem, QUEUE_SIZE);
        mock.add_desc_chains(descs, 0).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        let irq = interrupt();
        let mut rng = Rng::new().unwrap();
        rng.activate(
            mem.clone(),
            irq.clone(),
            vec![queue],
            vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        )
        .unwrap();
        (rng, irq, mock)
    }

    fn used_len(mock: &MockSplitQueue<'_, GuestMemory>, mem: &GuestMemory) -> u32 {
        // The first used element: id (u32) then len (u32), after flags and idx.
        mem.read_obj(GuestAddress(mock.used_addr().0 + 4 + 4))
            .unwrap()
    }

    #[test]
    fn fills_writable_buffers_and_signals() {
        let mem = memory::create(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let descs = [
            desc(0x10_0000, 16, VRING_DESC_F_NEXT, 1), // read-only: skipped
            desc(0x11_0000, 4096, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
            desc(0x12_0000, 100, VRING_DESC_F_WRITE, 0),
        ];
        let (mut rng, irq, mock) = device_with(&mem, &descs);
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert_eq!(used_len(&mock, &mem), 4196);
        let mut page = vec![0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(0x11_0000)).unwrap();
        assert!(
            page.iter().filter(|b| **b != 0).count() > 4000,
            "looks random"
        );
        let mut skipped = [0u8; 16];
        mem.read_slice(&mut skipped, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(skipped, [0; 16], "the read-only buffer was not written");
        assert_eq!(irq.status() & INTERRUPT_USED_RING, INTERRUPT_USED_RING);
        // Nothing more available: nothing served.
        assert_eq!(rng.process_queue().unwrap(), 0);
    }

    #[test]
    fn bad_buffers_get_nothing_and_loops_end() {
        let mem = memory::create(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        // A buffer beyond guest memory.
        let (mut rng, _, mock) = device_with(&mem, &[desc(0x30_0000, 64, VRING_DESC_F_WRITE, 0)]);
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert_eq!(used_len(&mock, &mem), 0);
        // A descriptor chain that loops back to itself: served once, bounded.
        let looped = [
            desc(0x10_0000, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
            desc(0x10_1000, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
        ];
        let (mut rng, _, mock) = device_with(&mem, &looped);
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert!(used_len(&mock, &mem) <= 8 * u32::from(QUEUE_SIZE));
        // A huge buffer is served up to the cap.
        let (mut rng, _, mock) =
            device_with(&mem, &[desc(0x10_0000, 0x10_0000, VRING_DESC_F_WRITE, 0)]);
        assert_eq!(rng.process_queue().unwrap(), 1);
        assert_eq!(used_len(&mock, &mem), MAX_REQUEST);
    }

    #[test]
    fn inactive_or_reset_devices_serve_nothing() {
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.process_queue().unwrap(), 0);
        assert_eq!(rng.device_type(), TYPE_RNG);
        assert!(rng.reset());
        assert!(rng.queue_event().is_none());
    }
}
