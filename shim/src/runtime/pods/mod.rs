//! The pods of this host: a table of [`Pod`]s by id with their name reservations, each
//! persisted as a [`SandboxRecord`]. RunPodSandbox and StopPodSandbox, and the adoption of a
//! pod's VM after a daemon restart, are in [`lifecycle`]; the checks of a pod's config in
//! [`config`]; the task that notices a VM ending unasked in [`monitor`]; each pod's
//! namespace and CNI attachment in [`network`]; the size of its VM in [`sizing`]; the
//! connections of PortForward in [`port_forward`].
//!
//! Pods know nothing of containers: when a pod's VM is gone (stopped, or ended unasked) they
//! call the hook the runtime set with [`Pods::on_vm_gone`], which records the containers.

mod config;
mod lifecycle;
mod monitor;
pub mod network;
mod pod;
mod port_forward;
pub mod sizing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

pub use network::{NetworkSettings, PodNetworkRecord};
pub use pod::Pod;
pub use sizing::VmSize;

use super::names::{pod_key, Names};
use super::{RuntimeError, SandboxRecord};
use crate::config::HypervisorConfig;
use crate::host_cgroup::CgroupDriver;
use crate::hypervisor::Backend;
use crate::metadata::{Kind, Store};

/// Called with a pod's id and why when its VM is gone.
pub type VmGone = Box<dyn Fn(&str, &str) + Send + Sync>;

/// How this host starts pod VMs.
pub struct VmSettings {
    /// Where each pod's VM dir goes.
    pub state_dir: PathBuf,
    pub hypervisor: HypervisorConfig,
    pub backend: Backend,
    /// How pod cgroups are named (the config's `cgroup_driver`, resolved).
    pub cgroup_driver: CgroupDriver,
    /// The runtime handlers served and the default one.
    pub handlers: std::collections::BTreeMap<String, crate::handlers::Handler>,
    pub default_handler: String,
    /// The host agent of native pods.
    pub native_agent: PathBuf,
}

pub struct Pods {
    table: RwLock<BTreeMap<String, Arc<Pod>>>,
    names: Mutex<Names>,
    store: Arc<Store>,
    vm: VmSettings,
    network: NetworkSettings,
    vm_gone: OnceLock<VmGone>,
}

impl Pods {
    pub(super) fn new(store: Arc<Store>, vm: VmSettings, network: NetworkSettings) -> Self {
        Self {
            table: RwLock::default(),
            names: Mutex::default(),
            store,
            vm,
            network,
            vm_gone: OnceLock::new(),
        }
    }

    /// Sets what happens when a pod's VM is gone (once; later calls are ignored).
    pub(super) fn on_vm_gone(&self, hook: VmGone) {
        let _ = self.vm_gone.set(hook);
    }

    fn vm_gone(&self, pod_id: &str, reason: &str) {
        if let Some(hook) = self.vm_gone.get() {
            hook(pod_id, reason);
        }
    }

    /// The pod with this id.
    pub fn get(&self, id: &str) -> Result<Arc<Pod>, RuntimeError> {
        if id.is_empty() {
            return Err(RuntimeError::invalid("pod_sandbox_id", "empty"));
        }
        self.table
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound {
                what: "pod sandbox",
                id: id.to_owned(),
            })
    }

    /// The pod with this id, or None if there is none (Stop and Remove of a missing pod
    /// succeed).
    pub(super) fn find(&self, id: &str) -> Result<Option<Arc<Pod>>, RuntimeError> {
        match self.get(id) {
            Ok(pod) => Ok(Some(pod)),
            Err(RuntimeError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The cgroup driver pods are placed with (RuntimeConfig reports it).
    pub fn cgroup_driver(&self) -> CgroupDriver {
        self.vm.cgroup_driver
    }

    pub fn list(&self) -> Vec<Arc<Pod>> {
        self.table.read().values().cloned().collect()
    }

    fn persist(&self, record: &SandboxRecord) -> Result<(), RuntimeError> {
        Ok(self.store.put(Kind::Sandbox, &record.id, record)?)
    }

    /// Every pod record in the store, for the restore at start.
    pub(super) fn stored(&self) -> Result<Vec<SandboxRecord>, RuntimeError> {
        Ok(self.store.all(Kind::Sandbox)?)
    }

    /// Removes a stopped pod's record, name and table entry (RemovePodSandbox, under the
    /// pod's lifecycle lock, after its containers were forgotten).
    pub(super) fn forget(&self, pod: &Pod) -> Result<(), RuntimeError> {
        self.store.delete(&[(Kind::Sandbox, &pod.id)])?;
        let meta = pod.record().config.metadata.unwrap_or_default();
        let key = pod_key(&meta.name, &meta.namespace, &meta.uid, meta.attempt);
        self.names.lock().release(&key);
        self.table.write().remove(&pod.id);
        Ok(())
    }
}
