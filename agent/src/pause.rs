//! The pod's infra process, what kubelet's pause container is to runc pods: PID 1 of the pod's
//! shared pid namespace (CRI `NamespaceMode::POD`). Containers join its namespace, so they see
//! it as PID 1, orphans are reparented to it and reaped, and the namespace outlives any one
//! container. It is the agent binary started again with `argv[0]` = `/pause`: it leaves the
//! guest's filesystem for an empty directory, drops every capability and then only waits for
//! SIGCHLD (reap) or SIGTERM/SIGINT (exit).

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::init::reaper::Reaper;

/// The infra process's `argv[0]`, which containers see in `/proc/1/cmdline`.
pub const PAUSE_ARG0: &str = "/pause";

/// How long teardown waits for the infra process to be reaped after SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The pause process could not be started (answered as INTERNAL).
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("create the pause root: {0}")]
    Root(#[source] std::io::Error),
    #[error("start the pod's pause process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the pause spawner thread panicked")]
    Panicked,
    #[error("pause pid {0} out of range")]
    Pid(u32),
}

/// Whether this process was started as the infra process.
pub fn is_pause_invocation() -> bool {
    std::env::args_os().next().is_some_and(|a| a == PAUSE_ARG0)
}

/// The infra process's main. Reports nothing: it has no stdio.
pub fn main() -> ExitCode {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    if signals.thread_block().is_err() || confine().is_err() {
        return ExitCode::FAILURE;
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => return ExitCode::SUCCESS,
            Err(_) => return ExitCode::FAILURE,
        }
    }
}

/// An empty root, no capabilities, no new privileges: a container sharing the namespace
/// finds nothing of the guest through `/proc/1/root` and nothing to gain from the process.
fn confine() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // The agent starts it in its pause dir (`crate::paths::pause`), so that its command
    // line stays `/pause` and its environment empty.
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")?;
    nix::sys::prctl::set_no_new_privs()?;
    caps::clear(None, caps::CapSet::Bounding)?;
    caps::clear(None, caps::CapSet::Ambient)?;
    caps::clear(None, caps::CapSet::Inheritable)?;
    caps::clear(None, caps::CapSet::Effective)?;
    caps::clear(None, caps::CapSet::Permitted)?;
    Ok(())
}

/// Reaps every exited child (orphans of the pod's containers).
fn reap() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// A running infra process, seen from the agent.
pub struct PodInit {
    pub pid: i32,
    exited: tokio::sync::oneshot::Receiver<crate::init::reaper::Exit>,
}

impl PodInit {
    /// Starts the infra process in a new pid namespace.
    pub fn start(reaper: &Arc<Reaper>) -> Result<Self, PauseError> {
        let root = crate::paths::pause();
        std::fs::create_dir_all(&root).map_err(PauseError::Root)?;
        let _gate = reaper.spawn_gate();
        // unshare(CLONE_NEWPID) changes the namespace of the calling thread's later children:
        // a thread of its own, which ends after the spawn, keeps the agent's other spawns out.
        let spawned = std::thread::spawn(move || -> std::io::Result<u32> {
            nix::sched::unshare(CloneFlags::CLONE_NEWPID)?;
            let child = Command::new("/proc/self/exe")
                .arg0(PAUSE_ARG0)
                .current_dir(&root)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            // The reaper, not this handle, waits for it.
            Ok(child.id())
        })
        .join()
        .map_err(|_| PauseError::Panicked)?
        .map_err(PauseError::Spawn)?;
        let pid = i32::try_from(spawned).map_err(|_| PauseError::Pid(spawned))?;
        let exited = reaper.watch(pid);
        tracing::info!(pid, "pod pause process started");
        Ok(PodInit { pid, exited })
    }

    /// `/proc/<pid>/ns/pid`, for containers to join, while the process lives.
    pub fn pid_namespace(&mut self) -> Option<std::path::PathBuf> {
        match self.exited.try_recv() {
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                Some(format!("/proc/{}/ns/pid", self.pid).into())
            }
            _ => None,
        }
    }

    /// Kills the process (and with it whatever is left in its namespace) and waits for it.
    pub async fn stop(mut self) {
        if !matches!(
            self.exited.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ) {
            return; // already reaped: its pid may belong to another process now
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        if tokio::time::timeout(STOP_WAIT, self.exited).await.is_err() {
            tracing::warn!(pid = self.pid, "pod pause process not reaped after SIGKILL");
        }
    }
}
