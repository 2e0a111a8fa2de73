//! Exec and attach sessions, whatever protocol carries them (SPDY or WebSocket): the
//! protocol hands over a [`ClientIo`] (the client's stdin and resize events as channels, its
//! stdout, stderr and error streams as [`Output`]s) and this module runs the command through
//! the agent's stream and ends with the status on the error stream.
//!
//! Every byte moves when the other side takes it: output is read from the agent only as fast
//! as the client accepts it, stdin only as fast as the process reads it.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use protobuf::Message;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vessel_protocols::agent as api;
use vessel_protocols::cri;
use vessel_protocols::stream::{Frame, FrameError, MAX_CHUNK};
use vessel_protocols::ttrpc;

use super::status::{Outcome, StatusFormat};
use crate::logs::Stream;
use crate::pod_vm::AgentError;
use crate::runtime::{Runtime, RuntimeError};

/// One of the client's output streams.
#[async_trait]
pub trait Output: Send {
    /// Sends bytes; an error means the client is gone.
    async fn write(&mut self, data: Bytes) -> io::Result<()>;
    /// Ends the stream: the client reads EOF.
    async fn close(&mut self);
}

/// The client's side of a session.
pub struct ClientIo {
    /// Its stdin, when it sends one; the channel closes at its EOF.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Its terminal size events (JSON objects, possibly split across chunks).
    pub resize: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<Box<dyn Output>>,
    pub stderr: Option<Box<dyn Output>>,
    pub error: Option<Box<dyn Output>>,
    pub format: StatusFormat,
    /// Cancelled when the client's connection is gone.
    pub gone: CancellationToken,
}

impl ClientIo {
    /// Ends the session: output streams end, then the status goes on the error stream.
    async fn finish(
        stdout: &mut Option<Box<dyn Output>>,
        stderr: &mut Option<Box<dyn Output>>,
        error: &mut Option<Box<dyn Output>>,
        format: StatusFormat,
        outcome: Outcome,
    ) {
        for out in [stdout, stderr].into_iter().flatten() {
            out.close().await;
        }
        if let Some(error) = error {
            let status = outcome.encode(format);
            if !status.is_empty() {
                let _ = error.write(status.into()).await;
            }
            error.close().await;
        }
    }
}

/// A terminal size as client-go encodes it (`remotecommand.TerminalSize`).
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct TerminalSize {
    #[serde(rename = "Width", alias = "width")]
    width: u16,
    #[serde(rename = "Height", alias = "height")]
    height: u16,
}

/// Turns the resize stream's bytes into sizes: a sequence of JSON objects that chunks may
/// split anywhere.
#[derive(Default)]
struct ResizeDecoder {
    pending: Vec<u8>,
}

impl ResizeDecoder {
    /// The complete sizes in `chunk` and before; `Err` for bytes that are no size.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<TerminalSize>, serde_json::Error> {
        /// A client that never closes its object cannot make the shim hold more than this.
        const MAX_PENDING: usize = 4096;
        self.pending.extend_from_slice(chunk);
        let mut sizes = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.pending).into_iter();
        loop {
            match stream.next() {
                Some(Ok(size)) => sizes.push(size),
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        let used = stream.byte_offset();
        self.pending.drain(..used);
        if self.pending.len() > MAX_PENDING {
            return Err(serde::de::Error::custom("resize event too long"));
        }
        Ok(sizes)
    }
}

/// Sends the client's stdin and resizes to the agent until both end (then waits, so the
/// agent stream stays open for the output). At the client's stdin EOF the process's stdin
/// is closed when `close_stdin`.
async fn forward_input<S>(
    mut stdin: Option<mpsc::Receiver<Bytes>>,
    mut resize: Option<mpsc::Receiver<Bytes>>,
    mut agent: S,
    close_stdin: bool,
) where
    S: Sink<Frame, Error = FrameError> + Unpin,
{
    let mut decoder = ResizeDecoder::default();
    loop {
        tokio::select! {
            data = recv(&mut stdin) => match data {
                Some(data) => {
                    for chunk in data.chunks(MAX_CHUNK) {
                        if agent.send(Frame::Data(data.slice_ref(chunk))).await.is_err() {
                            return;
                        }
                    }
                }
                None => {
                    stdin = None;
                    if close_stdin && agent.send(Frame::Eof).await.is_err() {
                        return;
                    }
                }
            },
            chunk = recv(&mut resize) => match chunk.map(|c| decoder.push(&c)) {
                Some(Ok(sizes)) => {
                    for size in sizes.into_iter().filter(|s| s.width > 0 && s.height > 0) {
                        let frame = Frame::Resize { width: size.width, height: size.height };
                        if agent.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "resize stream is not terminal sizes: ignored from now on");
                    resize = None;
                }
                None => resize = None,
            },
        }
    }
}

/// The next item of an optional channel; never resolves for `None` (that branch is off).
async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs CRI Exec's command for a connected client.
pub async fn exec(runtime: Arc<Runtime>, req: cri::ExecRequest, io: ClientIo) {
    let ClientIo {
        stdin,
        resize,
        mut stdout,
        mut stderr,
        mut error,
        format,
        gone,
    } = io;
    let id = req.container_id.as_str();
    let started = tokio::select! {
        started = runtime.exec.start_streamed(id, req.cmd.clone(), req.tty, req.stdin) => started,
        () = gone.cancelled() => return,
    };
    let agent = match started {
        Ok(agent) => agent,
        Err(e) => {
            tracing::info!(container_id = id, cmd = ?req.cmd, error = %e, "exec did not start");
            let outcome = start_failure(&req.cmd, e);
            return ClientIo::finish(&mut stdout, &mut stderr, &mut error, format, outcome).await;
        }
    };
    tracing::info!(container_id = id, cmd = ?req.cmd, tty = req.tty, "exec stream started");
    let (sink, mut source) = agent.split();
    // The process's stdin closes at the client's EOF (an exec's stdin is always once).
    let input = tokio::spawn(forward_input(stdin, resize, sink, true));
    let outcome = tokio::select! {
        outcome = relay(&mut source, &mut stdout, &mut stderr, &req.cmd) => outcome,
        () = gone.cancelled() => None,
    };
    input.abort();
    match outcome {
        Some(outcome) => {
            tracing::info!(container_id = id, ?outcome, "exec ended");
            ClientIo::finish(&mut stdout, &mut stderr, &mut error, format, outcome).await;
        }
        // Dropping the agent stream before the exit frame makes the agent kill the process.
        None => tracing::info!(container_id = id, "exec client gone: process killed"),
    }
}

/// Why an exec did not start, as the client sees it: a command that is not in the image is
/// exit code 127 (as a shell, and runc through containerd, report it); the rest is internal.
fn start_failure(cmd: &[String], e: RuntimeError) -> Outcome {
    if let RuntimeError::Agent(AgentError::Rpc { code, message, .. }) = &e {
        // The agent's NoExecutable error (agent/src/container/error.rs).
        if *code == ttrpc::Code::NOT_FOUND && message.starts_with("executable ") {
            return Outcome::ExitCode {
                code: 127,
                message: format!("error executing command {cmd:?}: {message}"),
            };
        }
    }
    Outcome::Internal(format!("error executing command in container: {e}"))
}

/// Copies the agent's output frames to the client until the exit frame. `None` when the
/// client went away.
async fn relay<S>(
    source: &mut S,
    stdout: &mut Option<Box<dyn Output>>,
    stderr: &mut Option<Box<dyn Output>>,
    cmd: &[String],
) -> Option<Outcome>
where
    S: futures_util::Stream<Item = Result<Frame, FrameError>> + Unpin,
{
    loop {
        let (out, data) = match source.next().await {
            Some(Ok(Frame::Stdout(data))) => (&mut *stdout, data),
            Some(Ok(Frame::Stderr(data))) => (&mut *stderr, data),
            Some(Ok(Frame::Exit(exit))) => {
                return Some(match api::WaitProcessResponse::parse_from_bytes(&exit) {
                    Ok(exit) => Outcome::from_exit(cmd, exit.status),
                    Err(e) => Outcome::Internal(format!("bad exit frame from the agent: {e}")),
                })
            }
            Some(Ok(other)) => {
                return Some(Outcome::Internal(format!(
                    "unexpected {} from the agent",
                    other.describe()
                )))
            }
            Some(Err(e)) => return Some(Outcome::Internal(format!("agent stream: {e}"))),
            None => {
                return Some(Outcome::Internal(
                    "the agent stream ended before the process's exit (the pod VM stopped?)".into(),
                ))
            }
        };
        // Output the client did not ask for is dropped.
        if let Some(out) = out {
            out.write(data).await.ok()?;
        }
    }
}

/// Runs CRI Attach for a connected client: the container's output until it ends, the
/// client's stdin and resizes to the container's init.
pub async fn attach(runtime: Arc<Runtime>, req: cri::AttachRequest, io: ClientIo) {
    let ClientIo {
        stdin,
        resize,
        mut stdout,
        mut stderr,
        mut error,
        format,
        gone,
    } = io;
    let id = req.container_id.as_str();
    let attaching = tokio::select! {
        a = runtime.containers.attach(id, req.stdin, req.tty) => a,
        () = gone.cancelled() => return,
    };
    let attachment = match attaching {
        Ok(a) => a,
        Err(e) => {
            let outcome = Outcome::Internal(format!("error attaching to container: {e}"));
            return ClientIo::finish(&mut stdout, &mut stderr, &mut error, format, outcome).await;
        }
    };
    tracing::info!(
        container_id = id,
        stdin = req.stdin,
        tty = req.tty,
        "attached"
    );
    // StdinOnce (without a terminal, as containerd has it): the container's stdin closes when
    // this attach's does, or when the attach ends.
    let close_stdin_after = attachment.stdin_once && req.stdin && !req.tty;
    let mut output = attachment.output;
    let mut exited = attachment.exited;
    let input = attachment.input.map(|agent| {
        let (sink, source) = agent.split();
        // The agent's side carries only the exit frame of the init; the output comes from the
        // log pumps. Keep reading it so the connection's buffers never fill.
        let drain = source.for_each(|_| async {});
        let forward = forward_input(stdin, resize, sink, close_stdin_after);
        tokio::spawn(async move {
            tokio::join!(forward, drain);
        })
    });
    let ended = async {
        while let Some((stream, data)) = output.recv().await {
            let out = match stream {
                Stream::Stdout => &mut stdout,
                Stream::Stderr => &mut stderr,
            };
            if let Some(out) = out {
                if out.write(data).await.is_err() {
                    return false;
                }
            }
        }
        true
    };
    let output_ended = tokio::select! {
        ended = ended => ended,
        () = gone.cancelled() => false,
    };
    if let Some(input) = input {
        input.abort();
    }
    if close_stdin_after {
        if let Err(e) = runtime.containers.close_stdin(id).await {
            tracing::debug!(container_id = id, error = %e, "close stdin after attach");
        }
    }
    if !output_ended {
        tracing::info!(container_id = id, "attach client gone");
        return;
    }
    // The output ends when the container's does, just before its exit is recorded; a client
    // detached for falling behind sees the container still running.
    let recorded = tokio::time::timeout(EXIT_RECORDED, exited.wait_for(|done| *done))
        .await
        .is_ok_and(|r| r.is_ok());
    let outcome = if recorded {
        tracing::info!(container_id = id, "attached container's output ended");
        Outcome::Success
    } else {
        Outcome::Internal("the client fell too far behind the container's output".into())
    };
    ClientIo::finish(&mut stdout, &mut stderr, &mut error, format, outcome).await;
}

/// How long after its output ends a container's exit may take to be recorded.
const EXIT_RECORDED: std::time::Duration = std::time::Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_events_split_anywhere() {
        let mut d = ResizeDecoder::default();
        let all = b"{\"Width\":120,\"Height\":40}\n{\"width\":80,";
        let sizes = d.push(all).unwrap();
        assert_eq!(
            sizes,
            vec![TerminalSize {
                width: 120,
                height: 40
            }]
        );
        let sizes = d.push(b"\"height\":24}").unwrap();
        assert_eq!(
            sizes,
            vec![TerminalSize {
                width: 80,
                height: 24
            }]
        );
        assert!(d.push(b"\"wide\"").is_err(), "not a size");
    }

    #[test]
    fn a_missing_command_is_exit_code_127() {
        let cmd = vec!["nope".to_string()];
        let e = RuntimeError::Agent(AgentError::Rpc {
            rpc: "exec_process",
            code: ttrpc::Code::NOT_FOUND,
            message: "executable \"nope\" not found in container rootfs (PATH=/bin)".into(),
        });
        assert!(matches!(
            start_failure(&cmd, e),
            Outcome::ExitCode { code: 127, .. }
        ));
        let e = RuntimeError::FailedPrecondition("container c is not running".into());
        assert!(matches!(start_failure(&cmd, e), Outcome::Internal(_)));
    }
}
