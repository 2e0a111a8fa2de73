//! The virtio-fs device: its config space (the tag the guest mounts by and the request
//! queue count) and its two queues (high priority, requests), which it hands to the
//! vhost-user backend when the driver activates it.

use std::path::Path;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::TYPE_FS;
use crate::devices::virtio::vhost_user::{VhostUserError, VhostUserHandle};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INTERRUPT_USED_RING,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemory;

/// The longest tag the config space holds.
pub const TAG_LEN: usize = 36;
/// Queue 0 is the high-priority queue, queue 1 the one request queue.
const QUEUES: usize = 2;
const QUEUE_SIZE: u16 = 1024;
/// VIRTIO_RING_F_INDIRECT_DESC and VIRTIO_RING_F_EVENT_IDX: ring features the backend
/// implements; they pass to the guest if the backend offers them.
const RING_FEATURES: u64 = (1 << 28) | (1 << 29);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes")]
    Tag(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
}

/// The virtio-fs device, connected to its backend.
pub struct Fs {
    backend: VhostUserHandle,
    config: Vec<u8>,
    acked: u64,
    /// The backend signals these when it returned buffers; see [`Fs::call_events`].
    calls: Vec<EventFd>,
    interrupt: Option<Arc<VirtioInterrupt>>,
}

impl Fs {
    /// Connects to the vhost-user backend at `socket`, which serves the file system the guest
    /// mounts as `tag`.
    pub fn new(socket: &Path, tag: &str) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_owned()));
        }
        let mut config = vec![0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes()); // num_request_queues
        let calls = (0..QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(FsError::EventFd)?;
        Ok(Self {
            backend: VhostUserHandle::connect(socket, QUEUES)?,
            config,
            acked: 0,
            calls,
            interrupt: None,
        })
    }

    /// The eventfds the backend signals after using buffers, one per queue. The event loop
    /// waits on them and calls [`Fs::raise_interrupt`].
    pub fn call_events(&self) -> Result<Vec<EventFd>, FsError> {
        self.calls
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<_, _>>()
            .map_err(FsError::EventFd)
    }

    /// Relays a backend call to the guest as a used-ring interrupt (once active).
    pub fn raise_interrupt(&self) -> std::io::Result<()> {
        match &self.interrupt {
            Some(interrupt) => interrupt.trigger(INTERRUPT_USED_RING),
            None => Ok(()),
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn features(&self) -> u64 {
        self.backend.device_features() & (RING_FEATURES | VIRTIO_F_VERSION_1)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _: &[u8]) {
        tracing::warn!(offset, "virtio-fs config space is read-only");
    }

    fn activate(
        &mut self,
        memory: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        kicks: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        self.backend
            .start(self.acked, &memory, &queues, &kicks, &self.calls)
            .map_err(|e| ActivateError::Device(e.to_string()))?;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        match self.backend.stop(QUEUES) {
            Ok(()) => {
                self.interrupt = None;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "virtio-fs reset");
                false
            }
        }
    }
}
