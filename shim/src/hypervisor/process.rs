//! Helper processes of a VM (the VMM, virtiofsd, vhost-device-vsock): spawn with output to a
//! log file, each leading its own process group, wait for their socket, stop them with all
//! they forked (SIGTERM, then SIGKILL), read their log's tail.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::HypervisorError;
use crate::host_cgroup::{join_in_child, write_in_child};

/// The descriptor number a passed descriptor has in the child.
pub const PASSED_FD: RawFd = 3;
/// How long a helper gets to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a helper gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// A helper process whose stdout and stderr go to `log`: spawned by this daemon, or adopted
/// from a previous run of it (after a restart the VMs keep running).
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    log: PathBuf,
    handle: Handle,
    /// The pid a spawned child had (also its process group's id, kept after it is reaped).
    spawned_pid: Option<u32>,
    exited: Option<Exited>,
}

/// How a helper ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exited {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It is gone, but it was not our child: its status is unknown.
    Unknown,
}

impl From<std::process::ExitStatus> for Exited {
    fn from(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => Self::Unknown,
        }
    }
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit status {code}"),
            Self::Signal(signal) => match Signal::try_from(*signal) {
                Ok(name) => write!(f, "killed by {name}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            Self::Unknown => write!(f, "exited (status unknown: not a child of this daemon)"),
        }
    }
}

#[derive(Debug)]
enum Handle {
    Child(Child),
    /// Not our child: identified by pid and kernel start time, so a recycled pid is never
    /// mistaken for it.
    Adopted {
        pid: i32,
        start_time: u64,
    },
}

/// What identifies a running helper across daemon restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

/// The start time (clock ticks since boot) of `pid`, from /proc/<pid>/stat (through procfs);
/// None if gone or a zombie.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .and_then(|p| p.stat())
        .ok()?;
    (stat.state != 'Z').then_some(stat.starttime)
}

impl ChildProcess {
    /// Spawns `program args…` with stdin closed and output appended to `log`; `pass_fd`, if
    /// given, is open in the child as descriptor [`PASSED_FD`] (the pod VM's tap); the child
    /// joins the cgroup whose `cgroup.procs` files `cgroup_procs` lists before it execs.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        pass_fd: Option<BorrowedFd<'_>>,
        cgroup_procs: &[CString],
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
        tracing::debug!(helper = name, program = %program.display(), ?args, passed_fd = ?pass_fd, "spawn");
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            // Its own process group, so stopping it reaches whatever it forks.
            .process_group(0);
        let passed = pass_fd.map(|fd| fd.as_raw_fd());
        let cgroup_procs = cgroup_procs.to_vec();
        // Joining the cgroup here, before exec, means none of the program's own instructions
        // runs outside it. The daemon may run protected from the OOM killer (the systemd
        // unit's OOMScoreAdjust): a pod VM must not be, so its processes start at the default
        // score (raising it needs no privilege; best effort). dup2 leaves the copy without
        // FD_CLOEXEC, so it survives exec; a source already at the target number only has
        // FD_CLOEXEC cleared.
        // Between fork and exec only async-signal-safe calls are allowed: dup2(2), fcntl(2)
        // and the open/write/close of `join_in_child` and `write_in_child` are single system
        // calls on descriptors the parent holds open until spawn returns and on C strings
        // built before the fork.
        // SAFETY: the closure is async-signal-safe (above) and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                join_in_child(&cgroup_procs)?;
                let _ = write_in_child(c"/proc/self/oom_score_adj", b"0");
                let Some(source) = passed else {
                    return Ok(());
                };
                let ok = if source == PASSED_FD {
                    libc::fcntl(PASSED_FD, libc::F_SETFD, 0) >= 0
                } else {
                    libc::dup2(source, PASSED_FD) >= 0
                };
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command.spawn().map_err(|source| HypervisorError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            log: log.to_owned(),
            spawned_pid: child.id(),
            handle: Handle::Child(child),
            exited: None,
        })
    }

    /// Takes over a helper started by an earlier run of the daemon; `None` if it is gone.
    pub fn adopt(name: &str, id: ProcessId, log: &Path) -> Option<Self> {
        let start_time = process_start_time(id.pid).filter(|t| *t == id.start_time)?;
        Some(Self {
            name: name.to_owned(),
            log: log.to_owned(),
            handle: Handle::Adopted {
                pid: i32::try_from(id.pid).ok()?,
                start_time,
            },
            spawned_pid: None,
            exited: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        if self.exited.is_some() {
            return None;
        }
        match &self.handle {
            Handle::Child(child) => child.id(),
            Handle::Adopted { pid, .. } => u32::try_from(*pid).ok(),
        }
    }

    /// Pid and start time, for the daemon's records.
    pub fn process_id(&self) -> Option<ProcessId> {
        let pid = self.pid()?;
        Some(ProcessId {
            pid,
            start_time: process_start_time(pid)?,
        })
    }

    /// `Some(how)` once the process exited.
    pub fn exit_status(&mut self) -> Option<Exited> {
        if self.exited.is_none() {
            match &mut self.handle {
                Handle::Child(child) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.exited = Some(status.into());
                    }
                }
                Handle::Adopted { pid, start_time } => {
                    let alive = u32::try_from(*pid)
                        .ok()
                        .and_then(process_start_time)
                        .is_some_and(|t| t == *start_time);
                    if !alive {
                        self.exited = Some(Exited::Unknown);
                    }
                }
            }
        }
        self.exited
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
    pub fn exited_error(&self, status: Exited) -> HypervisorError {
        HypervisorError::HelperExited {
            program: self.name.clone(),
            status: status.to_string(),
            log_tail: self.log_tail(20),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> bool {
        if self.exited.is_some() {
            return true;
        }
        match &mut self.handle {
            Handle::Child(child) => match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) => {
                    self.exited = Some(status.into());
                    true
                }
                Ok(Err(_)) => {
                    self.exited = Some(Exited::Unknown);
                    true
                }
                Err(_) => false,
            },
            Handle::Adopted { .. } => {
                let deadline = Instant::now() + timeout;
                while self.exit_status().is_none() {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                true
            }
        }
    }

    /// The process's group: each helper leads its own (see [`ChildProcess::spawn`]).
    fn group(&self) -> Option<Pid> {
        let pid = match &self.handle {
            Handle::Child(_) => self.spawned_pid?,
            Handle::Adopted { pid, .. } => u32::try_from(*pid).ok()?,
        };
        i32::try_from(pid).ok().map(Pid::from_raw)
    }

    /// Whether any process of the group is left. The kernel never hands out a pid while a
    /// group of that number has members, so the group cannot be someone else's.
    fn group_alive(&self) -> bool {
        self.group()
            .is_some_and(|g| nix::sys::signal::killpg(g, None).is_ok())
    }

    fn signal_group(&mut self, signal: Signal) {
        // The process itself too: one adopted from an older daemon may lead no group. A
        // child is unreaped until we wait for it, so its pid cannot be recycled yet.
        if self.exit_status().is_none() {
            if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
        if let Some(group) = self.group() {
            let _ = nix::sys::signal::killpg(group, signal);
        }
    }

    /// Waits up to `timeout` for the whole group to be gone.
    async fn wait_group(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // The leader first (reaped here if it is our child), then whatever it forked.
        if !self.wait_timeout(timeout).await {
            return false;
        }
        while self.group_alive() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// SIGTERM to the process and everything it forked (its process group), then SIGKILL
    /// after a grace period; reaps the process if it is our child. When this returns, none of
    /// them runs.
    pub async fn terminate(&mut self) {
        // An exited leader may have left forked children behind (virtiofsd's sandboxed
        // worker); the group says. An adopted pid was checked against its start time.
        if self.exit_status().is_some() && !self.group_alive() {
            return;
        }
        self.signal_group(Signal::SIGTERM);
        if !self.wait_group(TERM_GRACE).await {
            tracing::warn!(helper = %self.name, "did not exit on SIGTERM; sending SIGKILL");
            self.signal_group(Signal::SIGKILL);
            self.wait_group(TERM_GRACE).await;
        }
    }
}

/// How much of a log's end [`tail_file`] reads: the guest writes the console, so its size is
/// the guest's to choose and must not become the host's memory use.
const TAIL_WINDOW: u64 = 64 * 1024;

/// The last `lines` lines of a text file's last 64 KiB (empty if unreadable).
pub fn tail_file(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(TAIL_WINDOW).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adopted_process_is_watched_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        // A process that is not our child: started by a shell that exits at once.
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let start_time = process_start_time(pid).unwrap();
        let wrong = ProcessId {
            pid,
            start_time: start_time + 1,
        };
        assert!(ChildProcess::adopt("sleep", wrong, &log).is_none());
        let mut p = ChildProcess::adopt("sleep", ProcessId { pid, start_time }, &log).unwrap();
        assert_eq!(p.pid(), Some(pid));
        assert!(p.exit_status().is_none());
        p.terminate().await;
        assert!(p.exit_status().is_some());
    }

    #[test]
    fn tail_takes_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        std::fs::write(&f, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail_file(&f, 2), "c\nd");
        assert_eq!(tail_file(&f, 10), "a\nb\nc\nd");
        assert_eq!(tail_file(&dir.path().join("none"), 3), "");
        // A log larger than the window: only its end is read.
        let mut big = "x".repeat(4 * TAIL_WINDOW as usize);
        big.push_str("\nlast\n");
        std::fs::write(&f, big).unwrap();
        assert_eq!(tail_file(&f, 1), "last");
        assert!(tail_file(&f, 1000).len() <= TAIL_WINDOW as usize);
    }

    #[tokio::test]
    async fn a_passed_descriptor_is_open_in_the_child_at_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fd.log");
        let target = dir.path().join("tap-stand-in");
        let file = std::fs::File::create(&target).unwrap();
        let mut p = ChildProcess::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), format!("readlink /proc/self/fd/{PASSED_FD}")],
            &log,
            Some(std::os::fd::AsFd::as_fd(&file)),
            &[],
        )
        .unwrap();
        assert!(p.wait_timeout(Duration::from_secs(10)).await);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap().trim(),
            target.to_str().unwrap()
        );
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
            None,
            &[],
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
    async fn terminate_reaches_what_the_helper_forked() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild");
        // Like virtiofsd's sandbox: the helper forks a worker and waits for it.
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let mut p = ChildProcess::spawn(
            "forker",
            Path::new("/bin/sh"),
            &["-c".into(), script],
            &dir.path().join("f.log"),
            None,
            &[],
        )
        .unwrap();
        let grandchild: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        p.terminate().await;
        assert!(p.exit_status().is_some());
        assert_eq!(
            process_start_time(grandchild),
            None,
            "the forked worker is gone"
        );
    }

    #[tokio::test]
    async fn terminate_stops_a_running_helper() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = ChildProcess::spawn(
            "sleep",
            Path::new("/bin/sleep"),
            &["30".into()],
            &dir.path().join("s.log"),
            None,
            &[],
        )
        .unwrap();
        assert!(p.pid().is_some());
        let id = p.process_id().unwrap();
        assert_eq!(process_start_time(id.pid), Some(id.start_time));
        p.terminate().await;
        assert!(p.exit_status().is_some());
        assert!(p.pid().is_none());
    }
}
