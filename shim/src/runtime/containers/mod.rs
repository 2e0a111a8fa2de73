//! The containers of this host: a table of [`Container`]s by id with their name reservations,
//! each persisted as a [`ContainerRecord`]. CreateContainer is in [`create`]; Start, Stop,
//! Remove, UpdateContainerResources and ReopenContainerLog in [`lifecycle`]; the log pumps
//! and exit watcher of a running container in [`output`]; Attach in [`attach`].
//!
//! A container reaches its guest through its pod ([`Pods`]); pods never reach back.

mod attach;
mod container;
mod create;
mod lifecycle;
mod output;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

pub use container::Container;

use super::names::{container_key, Names};
use super::pods::{Pod, Pods};
use super::{now_ns, ContainerRecord, ContainerState, RuntimeError};
use crate::host_mounts;
use crate::image::{self, ImageStore};
use crate::logs::LogFile;
use crate::metadata::{Kind, Store};
use crate::pod_vm::AgentClient;
use output::{start_pumps, watch_exit};

/// Exit code recorded for containers whose VM died under them.
const VM_DIED_EXIT_CODE: i32 = 255;

pub struct Containers {
    table: RwLock<BTreeMap<String, Arc<Container>>>,
    names: Mutex<Names>,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    pods: Arc<Pods>,
    /// The runtime state root: a container's files live in its pod's dir below it.
    state_dir: PathBuf,
}

impl Containers {
    pub(super) fn new(
        store: Arc<Store>,
        images: Arc<ImageStore>,
        pods: Arc<Pods>,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            table: RwLock::default(),
            names: Mutex::default(),
            store,
            images,
            pods,
            state_dir,
        }
    }

    /// The container with this id.
    pub fn get(&self, id: &str) -> Result<Arc<Container>, RuntimeError> {
        if id.is_empty() {
            return Err(RuntimeError::invalid("container_id", "empty"));
        }
        self.table
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                id: id.to_owned(),
            })
    }

    /// The container with this id, or None if there is none (Stop and Remove of a missing
    /// container succeed).
    fn find(&self, id: &str) -> Result<Option<Arc<Container>>, RuntimeError> {
        match self.get(id) {
            Ok(c) => Ok(Some(c)),
            Err(RuntimeError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn list(&self) -> Vec<Arc<Container>> {
        self.table.read().values().cloned().collect()
    }

    /// Containers of one pod.
    pub fn of_pod(&self, pod_id: &str) -> Vec<Arc<Container>> {
        self.table
            .read()
            .values()
            .filter(|c| c.sandbox_id == pod_id)
            .cloned()
            .collect()
    }

    /// The agent of the container's pod, while the pod is ready.
    pub(super) fn agent(&self, container: &Container) -> Result<AgentClient, RuntimeError> {
        self.pod_of(container)?.agent()
    }

    /// The container's pod.
    pub(super) fn pod_of(&self, container: &Container) -> Result<Arc<Pod>, RuntimeError> {
        self.pods.get(&container.sandbox_id)
    }

    fn persist(&self, record: &ContainerRecord) -> Result<(), RuntimeError> {
        Ok(self.store.put(Kind::Container, &record.id, record)?)
    }

    /// Every container record in the store, for the restore at start.
    pub(super) fn stored(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        Ok(self.store.all(Kind::Container)?)
    }

    /// Records the containers of a pod whose VM is gone.
    pub(super) fn mark_pod_lost(&self, pod_id: &str, reason: &str) {
        self.mark_lost(&self.of_pod(pod_id), reason);
    }

    /// Records containers that were running (or created) in a VM that is gone, in one store
    /// transaction.
    fn mark_lost(&self, containers: &[Arc<Container>], reason: &str) {
        let now = now_ns();
        let changed: Vec<_> = containers
            .iter()
            .filter_map(|c| {
                let mut changed = false;
                let record = c.update(|r| {
                    if matches!(r.state, ContainerState::Running | ContainerState::Created) {
                        r.set_exited(VM_DIED_EXIT_CODE, false, reason.to_owned(), now);
                        changed = true;
                    }
                });
                changed.then_some(record)
            })
            .collect();
        let items: Vec<(&str, &ContainerRecord)> =
            changed.iter().map(|r| (r.id.as_str(), r)).collect();
        if let Err(e) = self.store.put_many(Kind::Container, &items) {
            tracing::error!(error = %e, "persist container states");
        }
        for c in containers {
            c.detach_all();
            c.exited.send_replace(true);
        }
    }

    /// Unmounts and deletes a container's host files (rootfs, scratch, CRI mount points).
    fn release_files(&self, record: &ContainerRecord) {
        let _ = image::unmount_rootfs(&record.rootfs);
        for dir in [&record.mount_dir, &record.scratch] {
            if let Err(e) = host_mounts::remove_dir_unmounted(dir) {
                tracing::warn!(container_id = %record.id, error = %e, "remove container files");
            }
        }
    }

    /// Forgets every container of a stopped pod: files, records (one transaction), names.
    pub(super) fn forget_pod(&self, pod_id: &str) -> Result<(), RuntimeError> {
        let containers = self.of_pod(pod_id);
        for c in &containers {
            self.release_files(&c.record());
        }
        let ids: Vec<(Kind, &str)> = containers
            .iter()
            .map(|c| (Kind::Container, c.id.as_str()))
            .collect();
        self.store.delete(&ids)?;
        let mut names = self.names.lock();
        let mut table = self.table.write();
        for c in &containers {
            let meta = c.record().config.metadata.unwrap_or_default();
            names.release(&container_key(pod_id, &meta.name, meta.attempt));
            table.remove(&c.id);
        }
        Ok(())
    }

    /// Lists a container from its record at daemon start (after the pods) and follows it
    /// again: its log pumps, and its exit if it runs; one whose pod VM is gone is recorded
    /// as exited.
    pub(super) fn restore(self: &Arc<Self>, record: ContainerRecord) {
        let meta = record.config.metadata.clone().unwrap_or_default();
        let key = container_key(&record.sandbox_id, &meta.name, meta.attempt);
        let _ = self.names.lock().reserve(key, &record.id);
        let log = record
            .log_path
            .as_ref()
            .and_then(|p| match LogFile::open(p) {
                Ok(log) => Some(Arc::new(log)),
                Err(e) => {
                    tracing::warn!(container_id = %record.id, error = %e, "reopen CRI log");
                    None
                }
            });
        let state = record.state;
        let lease = self.images.lease(record.layers.clone());
        let container = Arc::new(Container::new(record, log, Some(lease)));
        self.table
            .write()
            .insert(container.id.clone(), container.clone());
        if !matches!(state, ContainerState::Created | ContainerState::Running) {
            return;
        }
        match self.agent(&container) {
            Ok(agent) => {
                let pumps = start_pumps(&container, &agent);
                if state == ContainerState::Running {
                    watch_exit(self, &container, agent, pumps);
                } else {
                    container.set_pumps(pumps);
                }
            }
            Err(_) => self.mark_lost(
                std::slice::from_ref(&container),
                "pod VM lost while vessel-shim was down",
            ),
        }
    }
}
