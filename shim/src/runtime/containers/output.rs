//! The tasks that follow a running container: its log pumps (agent output → CRI log) and
//! its exit watcher, which records the exit once the pumps have drained the last output.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use vessel_protocols::agent as api;

use super::{Container, Containers};
use crate::logs::{LineSplitter, LogFile, Stream};
use crate::pod_vm::AgentClient;
use crate::runtime::{now_ns, ContainerState};

/// How long an exit waits for the log pumps to drain the last output.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies one output stream of a container's init process into its CRI log, and to the
/// attached clients, until EOF.
async fn pump(agent: AgentClient, container: Arc<Container>, stream: Stream) {
    let container_id = container.id.as_str();
    let log = &container.log;
    let mut splitter = LineSplitter::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut req = api::ReadStreamRequest::new();
        req.container_id = container_id.to_owned();
        let chunk = match stream {
            Stream::Stdout => agent.read_stdout(req).await,
            Stream::Stderr => agent.read_stderr(req).await,
        };
        match chunk {
            Ok(chunk) if chunk.data.is_empty() => break,
            Ok(chunk) => {
                splitter.push(&chunk.data, Utc::now(), &mut lines);
                write_log(log, container_id, &mut lines);
                container.fan_out(stream, &Bytes::from(chunk.data));
            }
            Err(e) => {
                tracing::debug!(container_id, stream = stream.as_str(), error = %e, "log pump ends");
                break;
            }
        }
    }
    splitter.finish(Utc::now(), &mut lines);
    write_log(log, container_id, &mut lines);
}

fn write_log(log: &Option<Arc<LogFile>>, container_id: &str, lines: &mut Vec<u8>) {
    if let Some(log) = log {
        if let Err(e) = log.write(lines) {
            tracing::warn!(container_id, path = %log.path().display(), error = %e, "write CRI log");
        }
    }
    lines.clear();
}

/// Starts the log pumps of a container; returns their handles.
pub(super) fn start_pumps(
    container: &Arc<Container>,
    agent: &AgentClient,
) -> Vec<tokio::task::JoinHandle<()>> {
    [Stream::Stdout, Stream::Stderr]
        .into_iter()
        .map(|stream| tokio::spawn(pump(agent.clone(), Arc::clone(container), stream)))
        .collect()
}

/// Waits for the container's init process to exit, lets the pumps drain, records the exit.
pub(super) fn watch_exit(
    containers: &Arc<Containers>,
    container: &Arc<Container>,
    agent: AgentClient,
    pumps: Vec<tokio::task::JoinHandle<()>>,
) {
    let containers = Arc::downgrade(containers);
    let container = container.clone();
    tokio::spawn(async move {
        let mut req = api::WaitProcessRequest::new();
        req.container_id = container.id.clone();
        let waited = agent.wait_process(req).await;
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, futures_join(pumps)).await;
        container.detach_all();
        let Some(containers) = containers.upgrade() else {
            return;
        };
        match waited {
            Ok(exit) => {
                let at = if exit.exited_at_ns > 0 {
                    exit.exited_at_ns
                } else {
                    now_ns()
                };
                let record = container.update(|r| {
                    if r.state == ContainerState::Running {
                        r.set_exited(exit.status, exit.oom_killed, String::new(), at);
                    }
                });
                if let Err(e) = containers.persist(&record) {
                    tracing::error!(container_id = %container.id, error = %e, "persist exit");
                }
                tracing::info!(container_id = %container.id, exit_code = exit.status, "container exited");
                container.exited.send_replace(true);
            }
            // The VM monitor records containers of a dead VM.
            Err(e) => tracing::debug!(container_id = %container.id, error = %e, "exit watch ends"),
        }
    });
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
