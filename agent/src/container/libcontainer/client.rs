//! The agent's side of libcontainer: every libcontainer operation (create, exec, start,
//! delete) runs in a short-lived helper process, `/proc/self/exe __vessel-libcontainer`
//! (see [`super::helper`]), that gets one request and the container's stdio descriptors
//! over a Unix seqpacket socket, answers, and exits.
//!
//! Why a process and not a thread: libcontainer is written for youki's single-threaded CLI.
//! It `clone()`s without the libc fork handlers (unsafe in a multi-threaded tokio process:
//! a lock held by another thread stays locked in the child), `waitpid()`s its intermediate
//! child (which would race our reaper), and changes process-wide state of the caller
//! (`/proc/self/oom_score_adj` from the spec, `PR_SET_DUMPABLE`, the cwd while it sets up a
//! console socket). In the helper all of that is harmless. Container processes still end up
//! ours: the intermediate exits and its children are reparented to PID 1 (or to us as
//! subreaper), where the reaper collects them.

use std::io::{BufRead, BufReader, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::init::reaper::Reaper;

/// The argument that turns the agent binary into the helper.
pub const HELPER_ARG: &str = "__vessel-libcontainer";
/// Largest request or reply.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// How long a helper may take to answer (container creation under TCG is slow).
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// One libcontainer operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a container from `bundle/config.json`; its init waits for `Start`.
    /// Without a console socket three descriptors (stdin, stdout, stderr) come along.
    CreateInit {
        id: String,
        bundle: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Run the OCI process in `process` (a JSON file) inside running container `id`.
    CreateTenant {
        id: String,
        process: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Let the init of container `id` exec its command.
    Start { id: String },
    /// Kill what is left and remove the container's cgroup and state.
    Delete { id: String },
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok { pid: Option<i32> },
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("libcontainer helper: {0}")]
    Helper(String),
    #[error("libcontainer: {0}")]
    Libcontainer(String),
}

/// Runs libcontainer operations through helper processes.
pub struct Runtime {
    reaper: Arc<Reaper>,
    exe: PathBuf,
}

impl Runtime {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        Runtime {
            reaper,
            exe: PathBuf::from("/proc/self/exe"),
        }
    }

    /// Runs `req` in a helper, handing it `fds`; returns the pid libcontainer reported.
    pub async fn call(&self, req: Request, fds: Vec<OwnedFd>) -> Result<Option<i32>, RuntimeError> {
        let reaper = Arc::clone(&self.reaper);
        let exe = self.exe.clone();
        tokio::task::spawn_blocking(move || call_blocking(&reaper, &exe, &req, fds))
            .await
            .map_err(|e| RuntimeError::Helper(format!("task failed: {e}")))?
    }
}

fn call_blocking(
    reaper: &Reaper,
    exe: &PathBuf,
    req: &Request,
    fds: Vec<OwnedFd>,
) -> Result<Option<i32>, RuntimeError> {
    let helper =
        |what: &str, e: &dyn std::fmt::Display| RuntimeError::Helper(format!("{what}: {e}"));
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| helper("socketpair", &e))?;
    let mut cmd = Command::new(exe);
    cmd.arg(HELPER_ARG)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let mut child = {
        let _gate = reaper.spawn_gate();
        cmd.spawn().map_err(|e| helper("spawn", &e))?
    };
    let log = child.stderr.take().map(LogForwarder::start);
    // Closes our copy of the helper's end, so a dead helper reads as EOF.
    drop(cmd);
    // Nobody needs the helper's status: the reply says everything.
    drop(reaper.watch(child.id() as i32));

    let payload = serde_json::to_vec(req).map_err(|e| helper("encode request", &e))?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        ours.as_raw_fd(),
        &[IoSlice::new(&payload)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| helper("send request", &e))?;
    drop(fds);

    let reply = receive_reply(&ours, &mut child)?;
    match serde_json::from_slice::<Reply>(&reply).map_err(|e| helper("decode reply", &e))? {
        Reply::Ok { pid } => Ok(pid),
        Reply::Error { message } => {
            // libcontainer's top-level error is vague ("failed syscall"); the container
            // process logged the cause.
            let causes = log.map(|l| l.errors(LOG_GRACE)).unwrap_or_default();
            if causes.is_empty() {
                Err(RuntimeError::Libcontainer(message))
            } else {
                Err(RuntimeError::Libcontainer(format!(
                    "{message} ({})",
                    causes.join("; ")
                )))
            }
        }
    }
}

/// Waits (at most [`HELPER_TIMEOUT`]) for the helper's reply; a helper that does not
/// answer in time is killed.
fn receive_reply(sock: &OwnedFd, child: &mut Child) -> Result<Vec<u8>, RuntimeError> {
    let failed = |what: &str, e: Errno| RuntimeError::Helper(format!("{what}: {e}"));
    let timeout = TimeVal::new(HELPER_TIMEOUT.as_secs() as _, 0);
    setsockopt(sock, sockopt::ReceiveTimeout, &timeout).map_err(|e| failed("SO_RCVTIMEO", e))?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = loop {
        match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                let _ = child.kill();
                return Err(RuntimeError::Helper(format!(
                    "no reply within {}s; killed",
                    HELPER_TIMEOUT.as_secs()
                )));
            }
            other => break other.map_err(|e| failed("receive reply", e))?,
        }
    };
    if n == 0 {
        return Err(RuntimeError::Helper(
            "exited without a reply (see the guest console)".into(),
        ));
    }
    buf.truncate(n);
    Ok(buf)
}

/// How long a failed call waits for the helper's last log lines.
const LOG_GRACE: Duration = Duration::from_secs(1);
/// Error lines kept per call.
const MAX_ERROR_LINES: usize = 6;

/// Copies the helper's log lines (and those of the container processes it forks, until
/// they exec) to our stderr, the console, keeping the ERROR lines for the reply.
struct LogForwarder {
    errors: Arc<Mutex<Vec<String>>>,
    done: mpsc::Receiver<()>,
}

impl LogForwarder {
    fn start(stderr: ChildStderr) -> Self {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let kept = Arc::clone(&errors);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if let Some(cause) = error_cause(&line) {
                    let mut kept = kept.lock();
                    if kept.len() < MAX_ERROR_LINES {
                        kept.push(cause);
                    }
                }
            }
            let _ = tx.send(());
        });
        LogForwarder { errors, done }
    }

    /// The error lines seen, once the log ended or `grace` passed.
    fn errors(self, grace: Duration) -> Vec<String> {
        let _ = self.done.recv_timeout(grace);
        self.errors.lock().clone()
    }
}

/// The message of an ERROR log line, without timestamp, span and target, skipping the
/// lines that only repeat the error the reply carries.
fn error_cause(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(" ERROR ")?;
    let msg = rest.split_once("}: ").map_or(rest, |(_, m)| m);
    let msg = match msg.split_once(": ") {
        Some((target, m)) if target.contains("::") => m,
        _ => msg,
    };
    let repeats = [
        "failed to wait for init ready",
        "failed to run container process",
    ];
    (!repeats.iter().any(|r| msg.starts_with(r))).then(|| msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_causes_from_log_lines() {
        let line = r#"[    1.62] ERROR libcontainer{op=CreateInit { id: "p1", console_socket: None }}: libcontainer::process::init::process: failed to drop capabilities err=SetCaps"#;
        assert_eq!(
            error_cause(line).as_deref(),
            Some("failed to drop capabilities err=SetCaps")
        );
        let line = "[    1.63] ERROR libcontainer{op=Start}: libcontainer::process::container_main_process: failed to wait for init ready: x";
        assert_eq!(error_cause(line), None);
        assert_eq!(error_cause("[ 1.0]  WARN seccomp not available"), None);
    }

    #[test]
    fn request_wire_format() {
        let req = Request::Start { id: "c1".into() };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"op":"start","id":"c1"}"#);
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
        let reply: Reply = serde_json::from_str(r#"{"ok":{"pid":12}}"#).unwrap();
        assert_eq!(reply, Reply::Ok { pid: Some(12) });
    }
}
