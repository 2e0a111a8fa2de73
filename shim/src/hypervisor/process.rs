//! Helper processes of a VM (the VMM, virtiofsd, vhost-device-vsock): spawn with output to a
//! log file, wait for their socket, stop them (SIGTERM, then SIGKILL), read their log's tail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::HypervisorError;

/// How long a helper gets to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a helper gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// A spawned helper whose stdout and stderr go to `log`.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    log: PathBuf,
    child: Child,
    exited: Option<String>,
}

impl ChildProcess {
    /// Spawns `program args…` with stdin closed and output appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self, HypervisorError> {
        let io_err = |source| HypervisorError::Io {
            path: log.to_owned(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        tracing::debug!(helper = name, program = %program.display(), ?args, "spawn");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HypervisorError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
            exited: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        if self.exited.is_some() {
            None
        } else {
            self.child.id()
        }
    }

    /// `Some(status)` once the process exited.
    pub fn exit_status(&mut self) -> Option<String> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status.to_string());
            }
        }
        self.exited.clone()
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log, lines)
    }

    /// Waits until `socket` exists, failing early if the process exits.
    pub async fn wait_for_socket(&mut self, socket: &Path) -> Result<(), HypervisorError> {
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = self.exit_status() {
                return Err(self.exited_error(status));
            }
            if start.elapsed() > SOCKET_TIMEOUT {
                return Err(HypervisorError::SocketTimeout {
                    program: self.name.clone(),
                    path: socket.to_owned(),
                    secs: SOCKET_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The error for a helper that died while it was expected to run.
    pub fn exited_error(&self, status: String) -> HypervisorError {
        HypervisorError::HelperExited {
            program: self.name.clone(),
            status,
            log_tail: self.log_tail(20),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> bool {
        if self.exited.is_some() {
            return true;
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exited = Some(status.to_string());
                true
            }
            Ok(Err(_)) => {
                self.exited = Some("unknown".into());
                true
            }
            Err(_) => false,
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; reaps the process.
    pub async fn terminate(&mut self) {
        if self.exit_status().is_some() {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // The pid is our own unreaped child, so it cannot have been recycled.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if !self.wait_timeout(TERM_GRACE).await {
            tracing::warn!(helper = %self.name, "did not exit on SIGTERM; sending SIGKILL");
            let _ = self.child.start_kill();
            self.wait_timeout(TERM_GRACE).await;
        }
    }
}

/// The last `lines` lines of a text file (empty if unreadable).
pub fn tail_file(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        std::fs::write(&f, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail_file(&f, 2), "c\nd");
        assert_eq!(tail_file(&f, 10), "a\nb\nc\nd");
        assert_eq!(tail_file(&dir.path().join("none"), 3), "");
    }

    #[tokio::test]
    async fn helper_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("h.log");
        let mut p = ChildProcess::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), "echo boom >&2; exit 4".into()],
            &log,
        )
        .unwrap();
        let err = p
            .wait_for_socket(&dir.path().join("never.sock"))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains('4'), "{msg}");
    }

    #[tokio::test]
    async fn terminate_stops_a_running_helper() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = ChildProcess::spawn(
            "sleep",
            Path::new("/bin/sleep"),
            &["30".into()],
            &dir.path().join("s.log"),
        )
        .unwrap();
        assert!(p.pid().is_some());
        p.terminate().await;
        assert!(p.exit_status().is_some());
        assert!(p.pid().is_none());
    }
}
