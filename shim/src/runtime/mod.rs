//! The runtime core: pods and containers, their persisted records, and the pod VMs that run
//! them. CRI handlers (`server::runtime_service`) are thin adapters over this; this module
//! knows domain types and the agent API, not gRPC.
//!
//! [`Runtime`] puts the parts together, one type per concept, each owning its state and
//! locks: [`Pods`] (RunPodSandbox, StopPodSandbox, the pod VMs), [`Containers`] (create,
//! start, stop, remove, their logs and exits), [`Exec`] (ExecSync), [`Stats`] (usage
//! figures), and the [`ImageStore`], which the image service uses directly. Only what spans
//! pods and containers (RemovePodSandbox, the restore at start) is done here.

mod containers;
mod error;
mod exec;
mod names;
mod pod_files;
mod pods;
mod records;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;

pub use containers::{Container, Containers};
pub use error::{Code, RuntimeError};
pub use exec::{Exec, ExecOutput};
pub use pods::network::status as pod_network_status;
pub use pods::{NetworkSettings, Pod, PodNetworkRecord, Pods, VmSettings};
pub use records::{new_id, now_ns, ContainerRecord, ContainerState, PodState, SandboxRecord};
pub use stats::{disk_usage, ContainerUsage, Stats};

use crate::config::Config;
use crate::hypervisor::Selection;
use crate::image::ImageStore;
use crate::metadata::Store;

/// Where the daemon keeps state.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Persistent: the metadata store and unpacked image layers.
    pub root: PathBuf,
    /// Runtime: pod VM dirs.
    pub state: PathBuf,
}

/// The pods, containers and images of this host.
pub struct Runtime {
    pub config: Config,
    pub dirs: Dirs,
    pub selection: Selection,
    pub pods: Arc<Pods>,
    pub containers: Arc<Containers>,
    pub exec: Exec,
    pub stats: Stats,
    /// Pulled images, their blobs and unpacked layers.
    pub images: Arc<ImageStore>,
}

impl Runtime {
    /// Opens the store, then adopts the pod VMs that survived a restart of the daemon.
    pub async fn start(
        config: Config,
        dirs: Dirs,
        selection: Selection,
    ) -> Result<Arc<Self>, RuntimeError> {
        for dir in [&dirs.root, &dirs.state] {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::Internal(format!("create {}: {e}", dir.display())))?;
        }
        let store = Arc::new(Store::open(&dirs.root.join("vessel.redb"))?);
        let images = Arc::new(ImageStore::open(
            &dirs.root.join("images"),
            store.clone(),
            config.registry.clone(),
        )?);
        let cgroup_driver = config.cgroup_driver.resolve();
        tracing::info!(
            cgroup_driver = cgroup_driver.name(),
            "pod VMs run in host cgroups under their pod's cgroup_parent"
        );
        let vm = VmSettings {
            state_dir: dirs.state.clone(),
            hypervisor: config.hypervisor.clone(),
            backend: selection.backend,
            cgroup_driver,
            handlers: config.handlers.clone(),
            default_handler: config.default_handler.clone(),
            native_agent: config.native.agent.clone(),
        };
        let network = NetworkSettings {
            cni: config.cni.clone(),
            netns_dir: dirs.state.join("netns"),
            cache_dir: dirs.root.join("cni").join("results"),
        };
        let pods = Arc::new(Pods::new(store.clone(), vm, network));
        let containers = Arc::new(Containers::new(
            store,
            images.clone(),
            pods.clone(),
            dirs.state.clone(),
        ));
        // A pod's VM gone (stopped, or ended unasked): its containers are recorded exited.
        let weak = Arc::downgrade(&containers);
        pods.on_vm_gone(Box::new(move |pod_id, reason| {
            if let Some(containers) = weak.upgrade() {
                containers.mark_pod_lost(pod_id, reason);
            }
        }));
        let runtime = Arc::new(Self {
            config,
            dirs,
            selection,
            exec: Exec::new(containers.clone()),
            stats: Stats::new(containers.clone()),
            pods,
            containers,
            images,
        });
        runtime.restore().await?;
        // Drops what an interrupted pull or removal left; layers of restored containers stay.
        if let Err(e) = runtime.images.collect_garbage().await {
            tracing::warn!(error = %e, "image garbage collection at start");
        }
        Ok(runtime)
    }

    /// Daemon start: rebuilds pods and containers from the store, adopts the VMs that still
    /// run, and records what happened while the daemon was down (containers that exited,
    /// VMs that died). Pods first: a container follows its pod's agent.
    async fn restore(&self) -> Result<(), RuntimeError> {
        let pods = self.pods.stored()?;
        let containers = self.containers.stored()?;
        for record in pods {
            self.pods.restore(record).await;
        }
        for record in containers {
            self.containers.restore(record);
        }
        tracing::info!(
            pods = self.pods.list().len(),
            containers = self.containers.list().len(),
            "state restored"
        );
        Ok(())
    }

    /// RemovePodSandbox: stops the pod if needed, then forgets its containers and the pod.
    /// Removing a missing pod succeeds.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(pod) = self.pods.find(id)? else {
            return Ok(());
        };
        self.pods.stop(id).await?;
        let _guard = pod.lifecycle.lock().await;
        self.pods.unpin_network(&pod)?;
        self.containers.forget_pod(id)?;
        self.pods.forget(&pod)?;
        tracing::info!(pod_id = id, "pod sandbox removed");
        Ok(())
    }
}
