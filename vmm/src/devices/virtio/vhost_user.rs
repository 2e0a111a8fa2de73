//! The frontend side of a vhost-user device: the backend process (virtiofsd) serves the
//! virtqueues itself, straight from guest memory, which it maps from the memfd we pass. We
//! negotiate features, hand over the memory table and each ring's addresses, its kick
//! eventfd (the queue's ioeventfd, so guest notifications reach the backend without this
//! process) and its call eventfd (which the event loop relays to the virtio-mmio interrupt:
//! the guest's virtio-mmio driver must see `InterruptStatus` set before it looks at a ring).
//! The message framing is the vhost crate's.

use std::path::{Path, PathBuf};

use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend as _, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit among the virtio features, never
/// offered to the guest.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// What this frontend can use of the backend's protocol features.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("connect to the vhost-user backend at {path}: {source}")]
    Connect { path: PathBuf, source: vhost::Error },
    #[error("vhost-user {step}: {source}")]
    Backend {
        step: &'static str,
        source: vhost::Error,
    },
    #[error("guest memory region at {0:#x} is not backed by a file the backend can map")]
    Memory(u64),
    #[error("virtqueue {queue} {ring} ring at {addr:#x} is outside guest memory")]
    Ring {
        queue: usize,
        ring: &'static str,
        addr: u64,
    },
    #[error("the backend serves {backend} queues, the device needs {needed}")]
    QueueCount { backend: u64, needed: usize },
}

/// Maps a vhost error to ours, naming the step.
fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserError {
    move |source| VhostUserError::Backend { step, source }
}

/// One connection to a vhost-user backend.
pub struct VhostUserHandle {
    frontend: Frontend,
    /// The backend's virtio features (including [`PROTOCOL_FEATURES`]).
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
}

impl VhostUserHandle {
    /// Connects to the backend's socket, claims it (`SET_OWNER`) and reads its features;
    /// protocol features are agreed here, virtio features once the driver has chosen.
    pub fn connect(path: &Path, queues: usize) -> Result<Self, VhostUserError> {
        let mut frontend =
            Frontend::connect(path, queues as u64).map_err(|source| VhostUserError::Connect {
                path: path.to_owned(),
                source,
            })?;
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(step("GET_FEATURES"))?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if backend_features & PROTOCOL_FEATURES != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            protocol = offered & wanted_protocol_features();
            frontend
                .set_protocol_features(protocol)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let backend = frontend.get_queue_num().map_err(step("GET_QUEUE_NUM"))?;
                if backend < queues as u64 {
                    return Err(VhostUserError::QueueCount {
                        backend,
                        needed: queues,
                    });
                }
            }
        }
        Ok(Self {
            frontend,
            backend_features,
            protocol,
        })
    }

    /// The backend's virtio features that a guest may see.
    pub fn device_features(&self) -> u64 {
        self.backend_features & !PROTOCOL_FEATURES
    }

    /// Starts the backend on the driver's `acked` features and `queues`: the memory table,
    /// then each ring's size, base, addresses (in this process's mapping, which the backend
    /// translates through the memory table), kick and call eventfds, and enables it.
    pub fn start(
        &mut self,
        acked: u64,
        memory: &GuestMemory,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), VhostUserError> {
        let features = acked | (self.backend_features & PROTOCOL_FEATURES);
        let f = &mut self.frontend;
        f.set_features(features).map_err(step("SET_FEATURES"))?;
        let regions = memory
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region)
                    .map_err(|_| VhostUserError::Memory(region.start_addr().0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        f.set_mem_table(&regions).map_err(step("SET_MEM_TABLE"))?;
        for (index, ((queue, kick), call)) in queues.iter().zip(kicks).zip(calls).enumerate() {
            let host = |ring: &'static str, addr: u64| {
                memory
                    .get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|_| VhostUserError::Ring {
                        queue: index,
                        ring,
                        addr,
                    })
            };
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host("descriptor", queue.desc_table())?,
                used_ring_addr: host("used", queue.used_ring())?,
                avail_ring_addr: host("available", queue.avail_ring())?,
                log_addr: None,
            };
            f.set_vring_num(index, queue.size())
                .map_err(step("SET_VRING_NUM"))?;
            f.set_vring_base(index, queue.next_avail())
                .map_err(step("SET_VRING_BASE"))?;
            f.set_vring_addr(index, &config)
                .map_err(step("SET_VRING_ADDR"))?;
            f.set_vring_call(index, call)
                .map_err(step("SET_VRING_CALL"))?;
            f.set_vring_kick(index, kick)
                .map_err(step("SET_VRING_KICK"))?;
            if features & PROTOCOL_FEATURES != 0 {
                f.set_vring_enable(index, true)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        tracing::debug!(
            features,
            protocol = self.protocol.bits(),
            queues = queues.len(),
            "vhost-user backend started"
        );
        Ok(())
    }

    /// Stops the backend's rings (after a driver reset): `GET_VRING_BASE` stops each one.
    pub fn stop(&mut self, queues: usize) -> Result<(), VhostUserError> {
        for index in 0..queues {
            if self.backend_features & PROTOCOL_FEATURES != 0 {
                self.frontend
                    .set_vring_enable(index, false)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(index)
                .map_err(step("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}
