//! The libcontainer helper process (`vessel-agent __vessel-libcontainer`): reads one
//! [`Request`] and its descriptors from stdin (a seqpacket socket), performs it with
//! libcontainer, writes one [`Reply`] and exits. See [`super::client`] for why this is a
//! separate process.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
// tracing-subscriber writes through std's Mutex (it implements MakeWriter).
use std::sync::Mutex;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::socket::{recvmsg, send, ControlMessageOwned, MsgFlags};

use super::client::{Reply, Request, HELPER_ARG, MAX_MESSAGE};
use super::exec_filter::FilteredExec;
use crate::error::chain;
use crate::init::{console, LOG_ENV};

/// The request socket: the helper's stdin.
const SOCKET: RawFd = 0;

/// Whether this process was started as the helper.
pub fn is_helper_invocation() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == HELPER_ARG)
}

/// The helper's main.
pub fn main() -> ExitCode {
    init_logging();
    let (req, fds) = match receive() {
        Ok(r) => r,
        Err(message) => {
            tracing::error!(%message, "libcontainer helper: bad request");
            let _ = reply(&Reply::Error { message });
            return ExitCode::FAILURE;
        }
    };
    let span = tracing::info_span!("libcontainer", op = ?req);
    let _e = span.enter();
    let answer = match run(req, fds) {
        Ok(pid) => Reply::Ok { pid },
        Err(e) => Reply::Error { message: chain(&e) },
    };
    match reply(&answer) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "libcontainer helper: cannot reply");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to a close-on-exec copy of stderr (a pipe the agent forwards to the console):
/// libcontainer's container processes log through the same subscriber after they have put
/// the container's stdio on fd 0-2, and their messages must not end up in the container's
/// output. The copy closes when the container execs its command.
fn init_logging() {
    let filter = std::env::var(LOG_ENV).unwrap_or_else(|_| console::DEFAULT_LOG_FILTER.into());
    match fcntl(2, FcntlArg::F_DUPFD_CLOEXEC(3)) {
        Ok(fd) => {
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            console::init_logging_to(&filter, Mutex::new(file));
        }
        Err(_) => console::init_logging(&filter),
    }
}

fn receive() -> Result<(Request, Vec<OwnedFd>), String> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let msg = recvmsg::<()>(
        SOCKET,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("recvmsg: {e}"))?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(|e| format!("cmsgs: {e}"))? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: SCM_RIGHTS just installed `fd` in this process; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let n = msg.bytes;
    let req = serde_json::from_slice(&buf[..n]).map_err(|e| format!("decode: {e}"))?;
    Ok((req, fds))
}

fn reply(answer: &Reply) -> Result<(), String> {
    let bytes = serde_json::to_vec(answer).map_err(|e| e.to_string())?;
    send(SOCKET, &bytes, MsgFlags::empty()).map_err(|e| e.to_string())?;
    Ok(())
}

fn run(req: Request, fds: Vec<OwnedFd>) -> Result<Option<i32>, LibcontainerError> {
    std::fs::create_dir_all(crate::paths::libcontainer()).map_err(LibcontainerError::OtherIO)?;
    match req {
        Request::CreateInit {
            id,
            bundle,
            console_socket,
        } => {
            let container = builder(id, fds, console_socket)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            Ok(container.pid().map(|p| p.as_raw()))
        }
        Request::CreateTenant {
            id,
            process,
            console_socket,
        } => {
            let filter = FilteredExec::for_bundle(load(&id)?.bundle());
            let pid = builder(id, fds, console_socket)?
                .with_executor(filter)
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()?;
            Ok(Some(pid.as_raw()))
        }
        Request::Start { id } => {
            load(&id)?.start()?;
            Ok(None)
        }
        Request::Delete { id } => {
            if state_dir(&id).exists() {
                load(&id)?.delete(true)?;
            }
            Ok(None)
        }
    }
}

fn builder(
    id: String,
    fds: Vec<OwnedFd>,
    console_socket: Option<PathBuf>,
) -> Result<ContainerBuilder, LibcontainerError> {
    let mut b = ContainerBuilder::new(id, SyscallType::default())
        .with_root_path(crate::paths::libcontainer())?;
    if console_socket.is_some() {
        b = b.with_console_socket(console_socket);
    } else {
        let [stdin, stdout, stderr]: [OwnedFd; 3] = fds.try_into().map_err(|v: Vec<OwnedFd>| {
            LibcontainerError::InvalidInput(format!(
                "expected 3 stdio descriptors, got {}",
                v.len()
            ))
        })?;
        b = b.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr);
    }
    Ok(b)
}

fn state_dir(id: &str) -> PathBuf {
    crate::paths::libcontainer().join(id)
}

fn load(id: &str) -> Result<Container, LibcontainerError> {
    Container::load(state_dir(id))
}
