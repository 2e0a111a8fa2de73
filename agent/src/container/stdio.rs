//! Process I/O: pipes between the agent and a container process, and the bounded buffers
//! that hold its output until the shim reads it.
//!
//! A pump task moves a pipe's bytes into a [`StreamBuffer`] of at most
//! [`STREAM_CAPACITY`] bytes. While the buffer is full the pump stops reading, so the
//! process blocks on write (back-pressure) instead of the agent growing without bound.
//! Buffered bytes outlive the process until they are read; end of stream is reported once
//! the pipe has closed and the buffer is drained.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::fcntl::OFlag;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

/// Most bytes buffered per stream.
pub const STREAM_CAPACITY: usize = 1 << 20;
/// Bytes returned by a read that asks for 0 (the default).
pub const DEFAULT_READ_LEN: usize = 64 * 1024;
/// Size of one read from the pipe.
const CHUNK: usize = 128 * 1024;
/// The capacity asked for output pipes (the kernel's default is 64 KiB): a process writing
/// fast output wakes the agent less often, which counts under emulation.
const OUTPUT_PIPE_SIZE: libc::c_int = 1 << 20;

#[derive(Default)]
struct BufState {
    data: VecDeque<u8>,
    closed: bool,
}

/// A bounded byte queue with an end-of-stream mark.
pub struct StreamBuffer {
    state: Mutex<BufState>,
    readable: Notify,
    writable: Notify,
    capacity: usize,
}

impl StreamBuffer {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(StreamBuffer {
            state: Mutex::new(BufState::default()),
            readable: Notify::new(),
            writable: Notify::new(),
            capacity,
        })
    }

    /// A stream that is already at its end (a terminal's stderr).
    pub fn ended() -> Arc<Self> {
        let b = StreamBuffer::new(0);
        b.close();
        b
    }

    /// Waits until at least one byte fits; returns how many do.
    pub async fn wait_space(&self) -> usize {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let free = self.capacity.saturating_sub(self.state.lock().data.len());
            if free > 0 {
                return free;
            }
            notified.await;
        }
    }

    /// Appends bytes (the pump first waits for space, so the bound holds).
    pub fn push(&self, bytes: &[u8]) {
        self.state.lock().data.extend(bytes);
        self.readable.notify_waiters();
    }

    /// Marks the end of the stream.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.readable.notify_waiters();
    }

    /// Bytes buffered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state.lock().data.len()
    }

    /// Waits for data and returns up to `max` bytes (0 means [`DEFAULT_READ_LEN`]); an
    /// empty result is the end of the stream.
    pub async fn read(&self, max: usize) -> Vec<u8> {
        let max = if max == 0 { DEFAULT_READ_LEN } else { max };
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if !st.data.is_empty() {
                    let n = max.min(st.data.len());
                    // Two slice copies, not a byte-by-byte drain: this is the data path.
                    let (front, back) = st.data.as_slices();
                    let mut out = Vec::with_capacity(n);
                    out.extend_from_slice(&front[..n.min(front.len())]);
                    out.extend_from_slice(&back[..n - n.min(front.len())]);
                    st.data.drain(..n);
                    drop(st);
                    self.writable.notify_waiters();
                    return out;
                }
                if st.closed {
                    return Vec::new();
                }
            }
            notified.await;
        }
    }
}

/// Copies `reader` into `buf` until end of file or error (a terminal whose other side
/// closed reads EIO), then closes `buf`.
pub fn spawn_pump<R>(mut reader: R, buf: Arc<StreamBuffer>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let room = buf.wait_space().await.min(CHUNK);
            match reader.read(&mut chunk[..room]).await {
                Ok(0) => break,
                Ok(n) => buf.push(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::EIO) {
                        tracing::debug!(error = %e, "output stream read failed");
                    }
                    break;
                }
            }
        }
        buf.close();
    });
}

/// The container's ends of its stdio.
pub struct ContainerStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl ContainerStdio {
    /// In the order the libcontainer helper expects.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        vec![self.stdin, self.stdout, self.stderr]
    }
}

/// The agent's ends.
pub struct AgentStdio {
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Creates the pipes of a process (stdin from `/dev/null` unless `with_stdin`). Must run
/// inside the tokio runtime.
pub fn pipes(with_stdin: bool) -> io::Result<(ContainerStdio, AgentStdio)> {
    let (out_r, out_w) = pipe2()?;
    let (err_r, err_w) = pipe2()?;
    for pipe in [&out_r, &err_r] {
        enlarge(pipe);
    }
    let (stdin, agent_stdin) = if with_stdin {
        let (in_r, in_w) = pipe2()?;
        (in_r, Some(pipe::Sender::from_owned_fd(in_w)?))
    } else {
        (OwnedFd::from(File::open("/dev/null")?), None)
    };
    Ok((
        ContainerStdio {
            stdin,
            stdout: out_w,
            stderr: err_w,
        },
        AgentStdio {
            stdin: agent_stdin,
            stdout: pipe::Receiver::from_owned_fd(out_r)?,
            stderr: pipe::Receiver::from_owned_fd(err_r)?,
        },
    ))
}

/// Asks for [`OUTPUT_PIPE_SIZE`]; a smaller pipe (the limit of an unprivileged agent in a dev
/// run) still works.
fn enlarge(pipe: &OwnedFd) {
    use std::os::fd::AsRawFd;
    if let Err(e) = nix::fcntl::fcntl(
        pipe.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE),
    ) {
        tracing::debug!(error = %e, "output pipe keeps its default size");
    }
}

fn pipe2() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Where the process's stdin goes.
pub type StdinWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// The agent's ends of a process's I/O.
pub struct ProcessIo {
    /// `None` when the process was created without stdin.
    pub stdin: Option<StdinWriter>,
    pub stdout: Arc<StreamBuffer>,
    pub stderr: Arc<StreamBuffer>,
    /// The terminal's master side, for window resizes.
    pub tty: Option<OwnedFd>,
}

impl ProcessIo {
    /// I/O over pipes (non-terminal processes); starts the output pumps.
    pub fn from_pipes(agent: AgentStdio) -> Self {
        let stdout = StreamBuffer::new(STREAM_CAPACITY);
        let stderr = StreamBuffer::new(STREAM_CAPACITY);
        spawn_pump(agent.stdout, Arc::clone(&stdout));
        spawn_pump(agent.stderr, Arc::clone(&stderr));
        ProcessIo {
            stdin: agent.stdin.map(|s| Box::new(s) as StdinWriter),
            stdout,
            stderr,
            tty: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn data_then_eof_after_close() {
        let (container, agent) = pipes(true).unwrap();
        let buf = StreamBuffer::new(STREAM_CAPACITY);
        spawn_pump(agent.stdout, Arc::clone(&buf));
        let mut w = pipe::Sender::from_owned_fd(container.stdout).unwrap();
        w.write_all(b"hello ").await.unwrap();
        w.write_all(b"world").await.unwrap();
        drop(w);
        let mut got = Vec::new();
        loop {
            let chunk = buf.read(0).await;
            if chunk.is_empty() {
                break;
            }
            got.extend(chunk);
        }
        assert_eq!(got, b"hello world");
        // EOF is sticky.
        assert!(buf.read(10).await.is_empty());
    }

    #[tokio::test]
    async fn read_respects_len_and_keeps_rest() {
        let buf = StreamBuffer::new(16);
        buf.push(b"abcdef");
        buf.close();
        assert_eq!(buf.read(4).await, b"abcd");
        assert_eq!(buf.read(4).await, b"ef");
        assert!(buf.read(4).await.is_empty());
    }

    #[tokio::test]
    async fn read_blocks_until_data() {
        let buf = StreamBuffer::new(16);
        let reader = {
            let buf = Arc::clone(&buf);
            tokio::spawn(async move { buf.read(0).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished());
        buf.push(b"x");
        assert_eq!(reader.await.unwrap(), b"x");
    }

    #[tokio::test]
    async fn full_buffer_applies_back_pressure() {
        let (container, agent) = pipes(false).unwrap();
        let buf = StreamBuffer::new(4096);
        spawn_pump(agent.stdout, Arc::clone(&buf));
        let mut w = pipe::Sender::from_owned_fd(container.stdout).unwrap();
        // Far more than buffer + pipe capacity: the writer must stall.
        let writer = tokio::spawn(async move {
            // Beyond the buffer and the enlarged pipe.
            let data = vec![7u8; 4 << 20];
            w.write_all(&data).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!writer.is_finished(), "writer should be blocked");
        assert_eq!(buf.len(), 4096, "buffer stays at its bound");
        // Draining lets it finish; everything arrives.
        let mut total = 0;
        loop {
            let chunk = buf.read(0).await;
            if chunk.is_empty() {
                break;
            }
            total += chunk.len();
        }
        writer.await.unwrap();
        assert_eq!(total, 4 << 20);
    }

    #[tokio::test]
    async fn ended_stream_is_eof() {
        assert!(StreamBuffer::ended().read(0).await.is_empty());
    }
}
