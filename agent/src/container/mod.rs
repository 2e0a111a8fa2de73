//! Containers of the pod: the table of live containers, their lifecycle (create, start,
//! remove), their processes' I/O, signals and exits, and cgroup stats and updates.
//! libcontainer does the OS work (namespaces, cgroups, pivot_root, capabilities, rlimits,
//! user) in a helper process (see [`libcontainer`]).

mod cgroup;
mod create;
mod error;
mod guest_devices;
pub mod libcontainer;
mod on_host;
mod process;
mod resolve;
mod signal;
mod spec;
mod state;
mod stdio;
mod tty;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use cgroup::Stats;
pub use create::{CreateParams, ExecParams};
pub use error::{ContainerError, SpecError};
pub use process::{ExitInfo, Stream};
pub use spec::validate_id;

use self::error::Result;
use self::libcontainer::{Request, Runtime};
use self::state::{Container, State};
use crate::init::reaper::Reaper;
use crate::pause::PodInit;
use crate::storage;

/// How long RemoveContainer waits for a killed container when the request gives no timeout.
pub const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long StartContainer waits for the container's init to exec its command (slow only under
/// emulation; past it the start is answered anyway, with a warning).
const EXEC_WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Table {
    live: HashMap<String, Arc<Container>>,
    /// Ids being created.
    reserved: HashSet<String>,
    /// The pod's infra process, whose pid namespace containers share (CRI NamespaceMode POD).
    pod_init: Option<PodInit>,
}

/// The pod's containers.
pub struct Containers {
    runtime: Runtime,
    reaper: Arc<Reaper>,
    table: Mutex<Table>,
}

/// Releases an id reservation when creation ends, successfully or not.
struct Reservation<'a> {
    table: &'a Mutex<Table>,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.table.lock().reserved.remove(&self.id);
    }
}

impl Containers {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        Containers {
            runtime: Runtime::new(Arc::clone(&reaper)),
            reaper,
            table: Mutex::new(Table::default()),
        }
    }

    /// Starts the pod's infra process, whose pid namespace every container then joins (CRI
    /// NamespaceMode POD).
    pub fn share_pid_namespace(&self) -> Result<()> {
        let init = PodInit::start(&self.reaper)?;
        if let Some(old) = self.table.lock().pod_init.replace(init) {
            tokio::spawn(old.stop());
        }
        Ok(())
    }

    /// Stops the pod's infra process, if there is one (after its containers are gone).
    pub async fn stop_pod_init(&self) {
        let init = self.table.lock().pod_init.take();
        if let Some(init) = init {
            init.stop().await;
        }
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let mut t = self.table.lock();
        if t.live.contains_key(id) || t.reserved.contains(id) {
            return Err(ContainerError::Exists(id.to_string()));
        }
        t.reserved.insert(id.to_string());
        Ok(Reservation {
            table: &self.table,
            id: id.to_string(),
        })
    }

    fn insert(&self, container: Arc<Container>) {
        self.table
            .lock()
            .live
            .insert(container.id.clone(), container);
    }

    /// `/proc/<pid>/ns/pid` of the pod's infra process, which a container spec asks for by
    /// the contract's pod pid namespace path.
    fn pod_pid_namespace(&self) -> Result<PathBuf> {
        let mut t = self.table.lock();
        let Some(init) = t.pod_init.as_mut() else {
            return Err(ContainerError::NoPodPidNamespace);
        };
        let pid = init.pid;
        init.pid_namespace()
            .ok_or(ContainerError::PodPidNamespaceGone(pid))
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.table
            .lock()
            .live
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    /// Lets a created container's init exec its command.
    pub async fn start(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.lifecycle.lock().await;
        c.require(&[State::Created], "start")?;
        let before = process::program(c.init.pid);
        self.runtime
            .call(Request::Start { id: id.to_string() }, Vec::new())
            .await?;
        // Started means running the container's command: a signal sent before the exec would
        // reach libcontainer's init, not the program whose handlers the caller expects.
        c.init.wait_for_exec(before, EXEC_WAIT).await;
        c.mark_started();
        tracing::info!(container_id = %id, pid = c.init.pid, "container started");
        Ok(())
    }

    /// Kills (if needed) and deletes a container, unmounts its storages and forgets it.
    pub async fn remove(&self, id: &str, timeout: Duration) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.lifecycle.lock().await;
        if c.state() != State::Stopped {
            if let Err(e) = c.cgroup.signal_all(libc::SIGKILL) {
                tracing::warn!(container_id = %id, error = %e, "kill cgroup members");
            }
            let _ = c.init.signal(libc::SIGKILL);
            if tokio::time::timeout(timeout, c.init.wait()).await.is_err() {
                return Err(ContainerError::StopTimeout {
                    id: id.to_string(),
                    secs: timeout.as_secs(),
                });
            }
        }
        self.runtime
            .call(Request::Delete { id: id.to_string() }, Vec::new())
            .await?;
        storage::unmount_all(&c.storages);
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.table.lock().live.remove(id);
        tracing::info!(container_id = %id, "container removed");
        Ok(())
    }

    /// Removes every container (DestroySandbox); failures are logged.
    pub async fn remove_all(&self) {
        let ids: Vec<String> = self.table.lock().live.keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove(&id, DEFAULT_REMOVE_TIMEOUT).await {
                tracing::error!(container_id = %id, error = %e, "remove failed during teardown");
            }
        }
    }

    /// Signals one process, or with `all` every process of the container.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        let sig =
            i32::try_from(signal).map_err(|_| ContainerError::InvalidSignal(signal.into()))?;
        if all {
            c.cgroup.signal_all(sig)
        } else {
            p.signal_when_handled(sig)
        }
    }

    /// Whether the process exists (a stream to it can be opened).
    pub fn check_process(&self, id: &str, exec_id: &str) -> Result<()> {
        self.get(id)?.process(exec_id).map(drop)
    }

    /// Waits for a process to exit.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        let info = p.wait().await?;
        c.forget_exec_if_finished(&p);
        Ok(info)
    }

    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize> {
        let p = self.get(id)?.process(exec_id)?;
        p.write_stdin(data).await
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let p = self.get(id)?.process(exec_id)?;
        p.close_stdin().await
    }

    /// Reads output; empty is end of stream.
    pub async fn read(
        &self,
        id: &str,
        exec_id: &str,
        stream: Stream,
        len: usize,
    ) -> Result<Vec<u8>> {
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        let data = p.read(stream, len).await;
        c.forget_exec_if_finished(&p);
        Ok(data)
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<()> {
        let p = self.get(id)?.process(exec_id)?;
        let dim = |value: u32, what: &'static str| {
            u16::try_from(value).map_err(|_| ContainerError::TooLarge { what, value })
        };
        p.resize(dim(rows, "rows")?, dim(cols, "cols")?)
    }

    pub fn stats(&self, id: &str) -> Result<Stats> {
        Ok(self.get(id)?.cgroup.stats())
    }

    /// Applies new resource limits (OCI LinuxResources JSON).
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.get(id)?;
        let resources = cgroup::parse_resources(resources_json)?;
        c.require(&[State::Created, State::Running], "update resources")?;
        c.cgroup.update(&resources)
    }
}
