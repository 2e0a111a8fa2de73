//! The I/O of one process as a stream: the host's data frames go to its stdin, its EOF
//! frame closes stdin, resize frames set the terminal's size; with `output`, stdout and
//! stderr come back as frames; once the process has exited and its output is sent, an exit
//! frame ends the stream. A host that goes away first gets the process killed when it asked
//! for that (an exec whose client left), as containerd's CRI plugin does.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use protobuf::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vessel_protocols::agent as api;
use vessel_protocols::stream::{Frame, FrameError, MAX_CHUNK};

use super::{opened, refuse, Conn};
use crate::container::Stream;
use crate::rpc::{convert, AgentService};

/// After the exit, how long output may stand still before the stream ends without it (a
/// child the process left behind can hold its pipes open forever).
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// How far the output pumps got: bytes read, and pumps waiting for the host to take a frame
/// (a slow host is not idle output).
#[derive(Default)]
struct Progress {
    moved: AtomicU64,
    sending: AtomicUsize,
}

/// Which process, and what the host asked of the stream.
struct Target {
    svc: Arc<AgentService>,
    id: String,
    exec_id: String,
}

pub async fn serve<S>(svc: &Arc<AgentService>, req: api::ProcessStream, mut conn: Conn<S>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let target = Arc::new(Target {
        svc: Arc::clone(svc),
        id: req.container_id,
        exec_id: req.exec_id,
    });
    if let Err(e) = svc.containers.check_process(&target.id, &target.exec_id) {
        return refuse(&mut conn, e.to_string()).await;
    }
    if !opened(&mut conn, String::new()).await {
        return;
    }
    let (sink, mut source) = conn.split();
    let (tx, rx) = mpsc::channel(2);
    let writer = tokio::spawn(write_frames(sink, rx));
    let progress = Arc::new(Progress::default());
    let pumps: Vec<JoinHandle<()>> = if req.output {
        [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .map(|s| {
                let pump = pump(Arc::clone(&target), s, tx.clone(), Arc::clone(&progress));
                tokio::spawn(pump)
            })
            .collect()
    } else {
        Vec::new()
    };

    let exit = tokio::select! {
        exit = target.svc.containers.wait(&target.id, &target.exec_id) => exit,
        () = take_input(&target, &mut source) => {
            // The host went away while the process runs.
            if req.kill_on_close {
                tracing::info!(container_id = %target.id, exec_id = %target.exec_id, "stream closed: killing the process");
                let _ = target.svc.containers.signal(&target.id, &target.exec_id, libc::SIGKILL as u32, false);
            }
            // Its exit is still collected, so the agent forgets the process.
            let t = Arc::clone(&target);
            tokio::spawn(async move { let _ = t.svc.containers.wait(&t.id, &t.exec_id).await; });
            return;
        }
    };
    drain(pumps, &progress).await;
    match exit {
        Ok(info) => match convert::wait_response(info).write_to_bytes() {
            Ok(bytes) => {
                let _ = tx.send(Frame::Exit(bytes.into())).await;
            }
            Err(e) => tracing::error!(error = %e, "encode exit"),
        },
        Err(e) => {
            tracing::warn!(container_id = %target.id, exec_id = %target.exec_id, error = %e, "exit of a streamed process")
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Applies the host's frames until the connection ends.
async fn take_input<R>(target: &Target, source: &mut R)
where
    R: futures_util::Stream<Item = Result<Frame, FrameError>> + Unpin,
{
    let containers = &target.svc.containers;
    let (id, exec_id) = (target.id.as_str(), target.exec_id.as_str());
    while let Some(frame) = source.next().await {
        let result = match frame {
            Ok(Frame::Data(data)) => containers.write_stdin(id, exec_id, &data).await.map(drop),
            Ok(Frame::Eof) => containers.close_stdin(id, exec_id).await,
            Ok(Frame::Resize { width, height }) => {
                containers.resize(id, exec_id, height.into(), width.into())
            }
            Ok(other) => {
                tracing::warn!(?other, "unexpected frame from the host");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "stream connection ends");
                return;
            }
        };
        // Stdin the process closed or never had, a terminal it lacks: the bytes are
        // dropped, as a pipe without reader would, and the stream goes on.
        if let Err(e) = result {
            tracing::debug!(error = %e, "stream input not applied");
        }
    }
}

/// Sends one output stream as frames until its end. Once the host is gone the output is
/// still read to its end, so the process never blocks on a full pipe and its record goes.
async fn pump(
    target: Arc<Target>,
    stream: Stream,
    tx: mpsc::Sender<Frame>,
    progress: Arc<Progress>,
) {
    let mut host = Some(tx);
    loop {
        let data = match target
            .svc
            .containers
            .read(&target.id, &target.exec_id, stream, MAX_CHUNK)
            .await
        {
            Ok(data) if !data.is_empty() => data,
            _ => return,
        };
        progress
            .moved
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(tx) = &host {
            let data = Bytes::from(data);
            let frame = match stream {
                Stream::Stdout => Frame::Stdout(data),
                Stream::Stderr => Frame::Stderr(data),
            };
            progress.sending.fetch_add(1, Ordering::Relaxed);
            let sent = tx.send(frame).await;
            progress.sending.fetch_sub(1, Ordering::Relaxed);
            if sent.is_err() {
                host = None;
            }
        }
    }
}

/// Waits for the output pumps to end, or for their output to stand still: nothing read for
/// [`DRAIN_IDLE`] while no pump waits on the host.
async fn drain(pumps: Vec<JoinHandle<()>>, progress: &Progress) {
    let all = futures_util::future::join_all(pumps);
    tokio::pin!(all);
    let mut seen = progress.moved.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = &mut all => return,
            () = tokio::time::sleep(DRAIN_IDLE) => {
                let now = progress.moved.load(Ordering::Relaxed);
                if now == seen && progress.sending.load(Ordering::Relaxed) == 0 {
                    tracing::info!("a streamed process exited; its output is open but idle: stream ends");
                    return;
                }
                seen = now;
            }
        }
    }
}

/// Writes frames in order until the exit frame (or until every sender is gone), then closes.
async fn write_frames<W>(mut sink: W, mut rx: mpsc::Receiver<Frame>)
where
    W: Sink<Frame, Error = FrameError> + Unpin,
{
    while let Some(frame) = rx.recv().await {
        let last = matches!(frame, Frame::Exit(_));
        if let Err(e) = sink.send(frame).await {
            tracing::debug!(error = %e, "stream write failed: the host went away");
            return;
        }
        if last {
            break;
        }
    }
    let _ = sink.close().await;
}
