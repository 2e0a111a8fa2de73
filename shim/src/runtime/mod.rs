//! The runtime core: pods and containers, their persisted records, and the pod VMs that run
//! them. CRI handlers (`server::runtime`) are thin adapters over this; this module knows
//! domain types and the agent API, not gRPC.

mod container;
mod container_create;
mod container_lifecycle;
mod error;
mod exec;
mod images;
mod names;
mod pod;
mod pod_files;
mod pod_lifecycle;
mod records;
mod restore;
mod stats;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

pub use container::Container;
pub use error::{Code, RuntimeError};
pub use exec::ExecOutput;
pub use pod::Pod;
pub use records::{new_id, now_ns, ContainerRecord, ContainerState, PodState, SandboxRecord};
pub use stats::{disk_usage, ContainerUsage};

use crate::config::Config;
use crate::hypervisor::Selection;
use crate::image::ImageStore;
use crate::metadata::{Kind, Store};
use names::Names;

/// Runtime handler names this runtime serves; the empty handler is the default (microVM).
pub const HANDLERS: &[&str] = &["kata", ""];

/// Where the daemon keeps state.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Persistent: the metadata store and unpacked image layers.
    pub root: PathBuf,
    /// Runtime: pod VM dirs.
    pub state: PathBuf,
}

/// The pods and containers of this host.
pub struct Runtime {
    pub config: Config,
    pub dirs: Dirs,
    pub selection: Selection,
    store: Arc<Store>,
    pods: RwLock<BTreeMap<String, Arc<Pod>>>,
    containers: RwLock<BTreeMap<String, Arc<Container>>>,
    names: Mutex<Names>,
    /// Pulled images, their blobs and unpacked layers.
    images: ImageStore,
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
        let images = ImageStore::open(
            &dirs.root.join("images"),
            store.clone(),
            config.registry.clone(),
        )?;
        let runtime = Arc::new(Self {
            config,
            dirs,
            selection,
            store,
            pods: RwLock::default(),
            containers: RwLock::default(),
            names: Mutex::default(),
            images,
        });
        restore::restore(&runtime).await?;
        // Drops what an interrupted pull or removal left; layers of restored containers stay.
        if let Err(e) = runtime.images.collect_garbage().await {
            tracing::warn!(error = %e, "image garbage collection at start");
        }
        Ok(runtime)
    }

    /// The pod with this id.
    pub fn pod(&self, id: &str) -> Result<Arc<Pod>, RuntimeError> {
        if id.is_empty() {
            return Err(RuntimeError::invalid("pod_sandbox_id", "empty"));
        }
        self.pods
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound {
                what: "pod sandbox",
                id: id.to_owned(),
            })
    }

    /// The container with this id.
    pub fn container(&self, id: &str) -> Result<Arc<Container>, RuntimeError> {
        if id.is_empty() {
            return Err(RuntimeError::invalid("container_id", "empty"));
        }
        self.containers
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                id: id.to_owned(),
            })
    }

    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.read().values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.containers.read().values().cloned().collect()
    }

    /// Containers of one pod.
    pub fn pod_containers(&self, pod_id: &str) -> Vec<Arc<Container>> {
        self.containers
            .read()
            .values()
            .filter(|c| c.sandbox_id == pod_id)
            .cloned()
            .collect()
    }

    fn persist_pod(&self, record: &SandboxRecord) -> Result<(), RuntimeError> {
        Ok(self.store.put(Kind::Sandbox, &record.id, record)?)
    }

    fn persist_container(&self, record: &ContainerRecord) -> Result<(), RuntimeError> {
        Ok(self.store.put(Kind::Container, &record.id, record)?)
    }

    /// Persists several container records in one transaction.
    fn persist_containers(&self, records: &[ContainerRecord]) -> Result<(), RuntimeError> {
        let items: Vec<(&str, &ContainerRecord)> =
            records.iter().map(|r| (r.id.as_str(), r)).collect();
        Ok(self.store.put_many(Kind::Container, &items)?)
    }
}
