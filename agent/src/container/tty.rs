//! Terminals (`process.terminal = true`): libcontainer's console-socket protocol. The agent
//! listens on a Unix socket, hands its path to libcontainer, and the container's init opens
//! a pty inside the container and sends the master back with SCM_RIGHTS. The master then
//! carries both directions: output is pumped into the stdout buffer (stderr is merged, as
//! with any terminal), stdin writes go to it, and TtyWinResize sets its window size.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::unix::pipe;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use super::stdio::{spawn_pump, ProcessIo, StdinWriter, StreamBuffer, STREAM_CAPACITY};

/// A terminal that could not be set up: the console-socket exchange with the container's
/// init, or the pty master's I/O. Answered as INTERNAL.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("terminal: {context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("terminal: the container never connected")]
    NeverConnected,
    #[error("terminal: no pty master received")]
    NoMaster,
    #[error("terminal: {0}")]
    Task(#[from] tokio::task::JoinError),
}

type Result<T, E = TerminalError> = std::result::Result<T, E>;

fn io_error(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> TerminalError {
    let context = context.to_string();
    move |source| TerminalError::Io { context, source }
}

/// How long the container may take to send its pty master.
const MASTER_TIMEOUT: Duration = Duration::from_secs(120);

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// A console socket waiting for one pty master.
pub struct ConsoleSocket {
    path: PathBuf,
    task: JoinHandle<Result<OwnedFd>>,
}

impl ConsoleSocket {
    /// Listens at `<consoles dir>/<n>.sock`, `n` unique in this agent: a name from the
    /// container and exec ids would pass the 108 bytes a socket path may have. Must run
    /// inside the tokio runtime.
    pub fn listen() -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = crate::paths::consoles();
        std::fs::create_dir_all(&dir).map_err(io_error(dir.display()))?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{n}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(io_error(format!("console socket {}", path.display())))?;
        let task = tokio::spawn(async move {
            let (stream, _) = tokio::time::timeout(MASTER_TIMEOUT, listener.accept())
                .await
                .map_err(|_| TerminalError::NeverConnected)?
                .map_err(io_error("accept"))?;
            let stream = stream.into_std().map_err(io_error("socket"))?;
            stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(MASTER_TIMEOUT)))
                .map_err(io_error("socket"))?;
            tokio::task::spawn_blocking(move || receive_master(stream.as_raw_fd())).await?
        });
        Ok(ConsoleSocket { path, task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master, once the container sent it.
    pub async fn master(self) -> Result<OwnedFd> {
        let result = self.task.await.map_err(TerminalError::from).and_then(|r| r);
        let _ = std::fs::remove_file(&self.path);
        result
    }

    /// Gives up (the create failed).
    pub fn abandon(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_master(sock: RawFd) -> Result<OwnedFd> {
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| io_error("receive pty master")(e.into()))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| io_error("receive pty master")(e.into()))?;
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: SCM_RIGHTS just installed these descriptors; we are their only owner.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if !owned.is_empty() {
                return Ok(owned.swap_remove(0));
            }
        }
    }
    Err(TerminalError::NoMaster)
}

/// I/O over a pty master: output pumped into stdout, stderr already at its end.
pub fn io_from_master(master: OwnedFd, with_stdin: bool) -> Result<ProcessIo> {
    let err = |e: std::io::Error| io_error("pty master")(e);
    let flags = fcntl(master.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| err(e.into()))?;
    let nonblocking = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(nonblocking)).map_err(|e| err(e.into()))?;
    let reader =
        pipe::Receiver::from_owned_fd_unchecked(master.try_clone().map_err(err)?).map_err(err)?;
    let stdout = StreamBuffer::new(STREAM_CAPACITY);
    spawn_pump(reader, std::sync::Arc::clone(&stdout));
    let stdin = if with_stdin {
        let writer =
            pipe::Sender::from_owned_fd_unchecked(master.try_clone().map_err(err)?).map_err(err)?;
        Some(Box::new(writer) as StdinWriter)
    } else {
        None
    };
    Ok(ProcessIo {
        stdin,
        stdout,
        stderr: StreamBuffer::ended(),
        tty: Some(master),
    })
}

/// TIOCSWINSZ on a terminal.
pub fn set_window_size(fd: RawFd, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` is a valid winsize that outlives the call; the kernel only reads it.
    unsafe { tiocswinsz(fd, &ws) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_a_real_pty() {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_window_size(pty.master.as_raw_fd(), 40, 120).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: `ws` is a valid, writable winsize for TIOCGWINSZ to fill.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (40, 120));
    }
}
