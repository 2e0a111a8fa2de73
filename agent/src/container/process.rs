//! A process the agent started in a container (its init, exec_id "", or an exec): pid,
//! stdio, terminal and exit status.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Mutex};

use super::cgroup::Cgroup;
use super::error::{ContainerError, Result};
use super::signal::send_signal;
use super::stdio::{ProcessIo, StdinWriter, StreamBuffer};
use crate::init::reaper::Reaper;

/// How a process ended, as WaitProcess reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: i32,
    pub signal: i32,
    pub exited_at_ns: i64,
    pub oom_killed: bool,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The program a process runs: its executable's device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramId {
    dev: u64,
    ino: u64,
}

/// The program `pid` runs; `None` once it has exited (or never existed).
pub fn program(pid: i32) -> Option<ProgramId> {
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some(ProgramId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// How long a signal an init discarded waits for the process to install a handler.
const HANDLER_WAIT: Duration = Duration::from_secs(120);

/// Whether the kernel would discard `signal` sent to `pid` now: the process is the init of
/// its pid namespace and neither catches, blocks nor ignores the signal (an init's default
/// action is no action, decided when the signal is sent). Read through procfs; an
/// unreadable status counts as "not discarded".
fn init_discards(pid: i32, signal: i32) -> bool {
    let Ok(status) = procfs::process::Process::new(pid).and_then(|p| p.status()) else {
        return false;
    };
    let is_init = status.nspid.as_ref().and_then(|ns| ns.last()) == Some(&1);
    is_init && outside(status.sigcgt | status.sigblk | status.sigign, signal)
}

/// Whether `signal` is outside `taken` (a mask with bit n-1 for signal n); a signal number
/// out of range never is.
fn outside(taken: u64, signal: i32) -> bool {
    u32::try_from(signal - 1)
        .ok()
        .and_then(|b| 1u64.checked_shl(b))
        .is_some_and(|bit| taken & bit == 0)
}

/// A started process.
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    had_stdin: bool,
    stdin: Mutex<Option<StdinWriter>>,
    stdout: Arc<StreamBuffer>,
    stderr: Arc<StreamBuffer>,
    tty: Option<OwnedFd>,
    exit: watch::Receiver<Option<ExitInfo>>,
    waited: AtomicBool,
    stdout_ended: AtomicBool,
    stderr_ended: AtomicBool,
}

impl Process {
    /// Tracks `pid`: its exit is taken from the reaper and OOM kills are counted against the
    /// cgroup's count at this moment.
    pub fn track(
        exec_id: &str,
        pid: i32,
        io: ProcessIo,
        reaper: &Reaper,
        cgroup: &Cgroup,
    ) -> Arc<Self> {
        let (tx, rx) = watch::channel(None);
        let exited = reaper.watch(pid);
        let oom_before = cgroup.oom_kills();
        let cgroup = cgroup.clone();
        let id = exec_id.to_string();
        tokio::spawn(async move {
            let Ok(exit) = exited.await else { return };
            let oom_killed = cgroup.oom_kills() > oom_before;
            tracing::info!(exec_id = %id, pid, status = exit.status, oom_killed, "process exited");
            let _ = tx.send(Some(ExitInfo {
                status: exit.status,
                signal: exit.signal,
                exited_at_ns: exit.at_unix_nanos(),
                oom_killed,
            }));
        });
        Arc::new(Process {
            exec_id: exec_id.to_string(),
            pid,
            had_stdin: io.stdin.is_some(),
            stdin: Mutex::new(io.stdin),
            stdout: io.stdout,
            stderr: io.stderr,
            tty: io.tty,
            exit: rx,
            waited: AtomicBool::new(false),
            stdout_ended: AtomicBool::new(false),
            stderr_ended: AtomicBool::new(false),
        })
    }

    /// Waits until the process runs a program other than `before` (see [`program`]) or has
    /// exited, polling for at most `limit`.
    pub async fn wait_for_exec(&self, before: Option<ProgramId>, limit: Duration) {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        while self.exited().is_none() {
            let now = program(self.pid);
            if now.is_none() || now != before {
                tracing::debug!(pid = self.pid, waited = ?started.elapsed(), "exec seen");
                return;
            }
            if started.elapsed() >= limit {
                tracing::warn!(pid = self.pid, "process has not exec'd its command yet");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Sends `signal`. A process that is its pid namespace's init and neither catches,
    /// blocks nor ignores the signal has it discarded by the kernel; one that has just started
    /// may not have installed its handler yet. Such a signal is sent again once a handler
    /// appears (at most [`HANDLER_WAIT`] later), so a stop right after a start is not lost.
    pub fn signal_when_handled(self: &Arc<Self>, signal: i32) -> Result<()> {
        let discarded_before = init_discards(self.pid, signal);
        self.signal(signal)?;
        // Discarded both before and after the send: certainly lost. (A handler that appeared
        // in between may have taken it; then it is not sent twice.)
        if discarded_before && init_discards(self.pid, signal) {
            let process = Arc::clone(self);
            tokio::spawn(async move { process.signal_once_handled(signal).await });
        }
        Ok(())
    }

    async fn signal_once_handled(&self, signal: i32) {
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        while self.exited().is_none() && started.elapsed() < HANDLER_WAIT {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
            if !init_discards(self.pid, signal) {
                tracing::debug!(pid = self.pid, signal, waited = ?started.elapsed(), "signal sent again, now handled");
                let _ = self.signal(signal);
                return;
            }
        }
    }

    /// The exit, if the process has exited.
    pub fn exited(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Result<ExitInfo> {
        let mut rx = self.exit.clone();
        let lost = || ContainerError::ExitLost(self.pid);
        let info = rx.wait_for(Option::is_some).await.map_err(|_| lost())?;
        let info = info.ok_or_else(lost)?;
        self.waited.store(true, Ordering::SeqCst);
        Ok(info)
    }

    /// Sends a signal unless the process has already exited (its pid may be reused).
    pub fn signal(&self, signal: i32) -> Result<()> {
        if self.exited().is_some() {
            return Err(ContainerError::Exited {
                exec_id: self.exec_id.clone(),
                pid: self.pid,
            });
        }
        send_signal(self.pid, signal)
    }

    /// Writes to stdin; returns the bytes written.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize> {
        let mut guard = self.stdin.lock().await;
        let w = guard.as_mut().ok_or_else(|| self.stdin_unavailable())?;
        w.write_all(data)
            .await
            .map_err(|source| ContainerError::StdinWrite {
                exec_id: self.exec_id.clone(),
                source,
            })?;
        w.flush().await.ok();
        Ok(data.len())
    }

    /// Closes stdin (the process reads EOF). Closing twice is fine.
    pub async fn close_stdin(&self) -> Result<()> {
        if !self.had_stdin {
            return Err(self.stdin_unavailable());
        }
        let mut guard = self.stdin.lock().await;
        if let Some(mut w) = guard.take() {
            let _ = w.shutdown().await;
        }
        Ok(())
    }

    fn stdin_unavailable(&self) -> ContainerError {
        if self.had_stdin {
            ContainerError::StdinClosed(self.exec_id.clone())
        } else {
            ContainerError::NoStdin(self.exec_id.clone())
        }
    }

    /// Reads output; empty means end of stream.
    pub async fn read(&self, stream: Stream, max: usize) -> Vec<u8> {
        let (buf, ended) = match stream {
            Stream::Stdout => (&self.stdout, &self.stdout_ended),
            Stream::Stderr => (&self.stderr, &self.stderr_ended),
        };
        let data = buf.read(max).await;
        if data.is_empty() {
            ended.store(true, Ordering::SeqCst);
        }
        data
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let tty = self
            .tty
            .as_ref()
            .ok_or_else(|| ContainerError::NoTerminal(self.exec_id.clone()))?;
        super::tty::set_window_size(tty.as_raw_fd(), rows, cols)
            .map_err(|e| ContainerError::io("TIOCSWINSZ", e.into()))
    }

    /// Exited, waited for, and both streams read to their end: nothing left to deliver.
    pub fn is_finished(&self) -> bool {
        self.exited().is_some()
            && self.waited.load(Ordering::SeqCst)
            && self.stdout_ended.load(Ordering::SeqCst)
            && self.stderr_ended.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_signal_nobody_takes_is_discarded() {
        // SIGTERM (15) is bit 14: 0x4000.
        assert!(outside(0, 15));
        assert!(!outside(0x4000, 15));
        assert!(outside(0x4000, 9));
        // Signal numbers out of range never discard.
        assert!(!outside(0, 0));
        assert!(!outside(0, 99));
    }

    #[test]
    fn a_process_that_is_no_namespace_init_discards_nothing() {
        assert!(!init_discards(std::process::id() as i32, 15));
        assert!(!init_discards(i32::MAX, 15), "no such process");
    }
}
