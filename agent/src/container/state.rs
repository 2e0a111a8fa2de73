//! One container: its lifecycle state machine (Created → Running → Stopped), its init
//! process and execs, and what was set up for it (bundle, storages, cgroup).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::cgroup::Cgroup;
use super::error::{ContainerError, Result};
use super::process::Process;
use crate::storage::Mounted;

/// Lifecycle of a container (youki's and runc's, without pause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created; the init waits for StartContainer.
    Created,
    /// Started; the init runs the command.
    Running,
    /// The init has exited.
    Stopped,
}

impl State {
    /// The state's name, as errors show it.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Stopped => "stopped",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A container the agent created.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub cgroup: Cgroup,
    pub storages: Vec<Mounted>,
    pub init: Arc<Process>,
    started: AtomicBool,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Serialises lifecycle operations (start, exec, remove) on this container.
    pub lifecycle: tokio::sync::Mutex<()>,
}

impl Container {
    pub fn new(
        id: String,
        bundle: PathBuf,
        rootfs: PathBuf,
        cgroup: Cgroup,
        storages: Vec<Mounted>,
        init: Arc<Process>,
    ) -> Self {
        Container {
            id,
            bundle,
            rootfs,
            cgroup,
            storages,
            init,
            started: AtomicBool::new(false),
            execs: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    /// The current state; an exited init means Stopped whatever came before.
    pub fn state(&self) -> State {
        if self.init.exited().is_some() {
            State::Stopped
        } else if self.started.load(Ordering::SeqCst) {
            State::Running
        } else {
            State::Created
        }
    }

    /// Checks the state before `action`: FAILED_PRECONDITION naming the state otherwise.
    pub fn require(&self, allowed: &[State], action: &'static str) -> Result<State> {
        let state = self.state();
        if allowed.contains(&state) {
            Ok(state)
        } else {
            Err(ContainerError::WrongState {
                id: self.id.clone(),
                state: state.name(),
                action,
            })
        }
    }

    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// The init (`exec_id` "") or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        self.execs
            .lock()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ExecNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    pub fn has_exec(&self, exec_id: &str) -> bool {
        self.execs.lock().contains_key(exec_id)
    }

    pub fn add_exec(&self, process: Arc<Process>) {
        self.execs.lock().insert(process.exec_id.clone(), process);
    }

    /// Drops an exec whose exit was waited for and whose output was read to the end.
    pub fn forget_exec_if_finished(&self, process: &Process) {
        if process.exec_id.is_empty() || !process.is_finished() {
            return;
        }
        let mut execs = self.execs.lock();
        if execs
            .get(&process.exec_id)
            .is_some_and(|p| p.pid == process.pid)
        {
            execs.remove(&process.exec_id);
            tracing::debug!(container_id = %self.id, exec_id = %process.exec_id, "exec record dropped");
        }
    }
}
