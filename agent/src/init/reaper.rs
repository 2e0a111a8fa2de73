//! Child reaping. As PID 1 every orphan of the guest becomes our child (outside PID 1 the
//! agent makes itself a child subreaper), so one reaper collects every exit with
//! `waitpid(-1, WNOHANG)`, driven by SIGCHLD and a periodic sweep, and hands each status to
//! whoever [`Reaper::watch`]es that pid.
//!
//! Only the reaper waits for children. libcontainer, which `waitpid()`s its intermediate
//! process during create, runs in a short-lived helper process (see
//! `container::libcontainer`), so its waits are on the helper's children, never ours. The one
//! other waiter in this process would be `std::process::Command::spawn`, which reaps a
//! child whose `exec` failed: [`Reaper::spawn_gate`] is held around every spawn and by every
//! sweep, so the two never race.
//!
//! A status that arrives before anyone watches its pid (a container that dies before its
//! creator registered it) is kept for [`UNCLAIMED_TTL`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use parking_lot::{Mutex, MutexGuard};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How long the status of a pid nobody watches is kept.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(60);
/// Sweep period, in case a SIGCHLD was coalesced or missed.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Shell convention: the exit code, or 128 + signal.
    pub status: i32,
    /// The terminating signal, 0 for a normal exit.
    pub signal: i32,
    /// When the reaper collected it.
    pub at: SystemTime,
}

impl Exit {
    /// Encodes a wait status; `None` for stop/continue events.
    pub fn from_wait_status(ws: WaitStatus, at: SystemTime) -> Option<(i32, Exit)> {
        match ws {
            WaitStatus::Exited(pid, code) => Some((
                pid.as_raw(),
                Exit {
                    status: code,
                    signal: 0,
                    at,
                },
            )),
            WaitStatus::Signaled(pid, sig, _) => Some((
                pid.as_raw(),
                Exit {
                    status: 128 + sig as i32,
                    signal: sig as i32,
                    at,
                },
            )),
            _ => None,
        }
    }

    /// Unix time of the exit in nanoseconds.
    pub fn at_unix_nanos(&self) -> i64 {
        self.at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

/// The agent's only `waitpid` caller.
#[derive(Default)]
pub struct Reaper {
    table: Mutex<Table>,
    gate: Mutex<()>,
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Reaper::default())
    }

    /// The exit of `pid`, delivered once it is reaped (at once if it already was).
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut table = self.table.lock();
        if let Some((exit, _)) = table.unclaimed.remove(&pid) {
            let _ = tx.send(exit);
        } else {
            table.waiters.insert(pid, tx);
        }
        rx
    }

    /// Hold while spawning a child: no sweep runs meanwhile.
    pub fn spawn_gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock()
    }

    /// Reaps every child that has exited; never blocks.
    pub fn sweep(&self) {
        let _gate = self.gate.lock();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(ws) => {
                    if let Some((pid, exit)) = Exit::from_wait_status(ws, SystemTime::now()) {
                        self.deliver(pid, exit);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
            }
        }
        let mut table = self.table.lock();
        table
            .unclaimed
            .retain(|_, (_, since)| since.elapsed() < UNCLAIMED_TTL);
    }

    fn deliver(&self, pid: i32, exit: Exit) {
        let mut table = self.table.lock();
        match table.waiters.remove(&pid) {
            Some(tx) => {
                tracing::debug!(pid, status = exit.status, "child exited");
                let _ = tx.send(exit);
            }
            None => {
                tracing::debug!(pid, status = exit.status, "unwatched child exited");
                table.unclaimed.insert(pid, (exit, Instant::now()));
            }
        }
    }

    /// Starts the reaping task (SIGCHLD plus a periodic sweep). Needs a tokio runtime.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_PERIOD);
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                let r = Arc::clone(&reaper);
                // waitpid(WNOHANG) is quick, but the gate may be held by a spawn.
                let _ = tokio::task::spawn_blocking(move || r.sweep()).await;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn encodes_exit_and_signal() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2);
        let (pid, e) = Exit::from_wait_status(WaitStatus::Exited(Pid::from_raw(7), 3), at).unwrap();
        assert_eq!((pid, e.status, e.signal), (7, 3, 0));
        assert_eq!(e.at_unix_nanos(), 2_000_000_000);
        let ws = WaitStatus::Signaled(Pid::from_raw(8), Signal::SIGKILL, false);
        let (_, e) = Exit::from_wait_status(ws, at).unwrap();
        assert_eq!((e.status, e.signal), (137, 9));
        let ws = WaitStatus::Continued(Pid::from_raw(9));
        assert!(Exit::from_wait_status(ws, at).is_none());
    }

    #[tokio::test]
    async fn status_before_watch_is_kept() {
        let reaper = Reaper::new();
        let exit = Exit {
            status: 1,
            signal: 0,
            at: SystemTime::now(),
        };
        reaper.deliver(42, exit);
        assert_eq!(reaper.watch(42).await.unwrap(), exit);
        let rx = reaper.watch(43);
        reaper.deliver(43, exit);
        assert_eq!(rx.await.unwrap(), exit);
    }

    #[tokio::test]
    async fn reaps_a_real_child() {
        let reaper = Reaper::new();
        let child = {
            let _g = reaper.spawn_gate();
            std::process::Command::new("/bin/sh")
                .args(["-c", "exit 5"])
                .spawn()
                .unwrap()
        };
        let rx = reaper.watch(child.id() as i32);
        reaper.start().unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.status, 5);
    }
}
