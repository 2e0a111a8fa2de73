//! Tasks that follow running things: the log pumps of a container (agent output → CRI log),
//! its exit watcher, and the monitor of a pod's VM.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;
use vessel_protocols::agent as api;

use super::{Container, ContainerState, Pod, PodState, Runtime};
use crate::hypervisor::{tail_file, VmExit};
use crate::logs::{LineSplitter, LogFile, Stream};
use crate::pod_vm::{AgentClient, PodVm};

/// How often a pod's VMM process is checked.
const VM_POLL: Duration = Duration::from_millis(250);
/// Console lines logged when a pod VM ends unasked.
const CONSOLE_TAIL_LINES: usize = 30;
/// How long an exit waits for the log pumps to drain the last output.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code recorded for containers whose VM died under them.
const VM_DIED_EXIT_CODE: i32 = 255;

/// Copies one output stream of a container's init process into its CRI log until EOF.
async fn pump(agent: AgentClient, container_id: String, stream: Stream, log: Option<Arc<LogFile>>) {
    let mut splitter = LineSplitter::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut req = api::ReadStreamRequest::new();
        req.container_id = container_id.clone();
        let chunk = match stream {
            Stream::Stdout => agent.read_stdout(req).await,
            Stream::Stderr => agent.read_stderr(req).await,
        };
        match chunk {
            Ok(chunk) if chunk.data.is_empty() => break,
            Ok(chunk) => splitter.push(&chunk.data, Utc::now(), &mut lines),
            Err(e) => {
                tracing::debug!(container_id, stream = stream.as_str(), error = %e, "log pump ends");
                break;
            }
        }
        write_log(&log, &container_id, &mut lines);
    }
    splitter.finish(Utc::now(), &mut lines);
    write_log(&log, &container_id, &mut lines);
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
    container: &Container,
    agent: &AgentClient,
) -> Vec<tokio::task::JoinHandle<()>> {
    [Stream::Stdout, Stream::Stderr]
        .into_iter()
        .map(|stream| {
            tokio::spawn(pump(
                agent.clone(),
                container.id.clone(),
                stream,
                container.log.clone(),
            ))
        })
        .collect()
}

/// Waits for the container's init process to exit, lets the pumps drain, records the exit.
pub(super) fn watch_exit(
    runtime: &Arc<Runtime>,
    container: &Arc<Container>,
    agent: AgentClient,
    pumps: Vec<tokio::task::JoinHandle<()>>,
) {
    let runtime = Arc::downgrade(runtime);
    let container = container.clone();
    tokio::spawn(async move {
        let mut req = api::WaitProcessRequest::new();
        req.container_id = container.id.clone();
        let waited = agent.wait_process(req).await;
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, futures_join(pumps)).await;
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        match waited {
            Ok(exit) => {
                let at = if exit.exited_at_ns > 0 {
                    exit.exited_at_ns
                } else {
                    super::now_ns()
                };
                let record = container.update(|r| {
                    if r.state == ContainerState::Running {
                        r.set_exited(exit.status, exit.oom_killed, String::new(), at);
                    }
                });
                if let Err(e) = runtime.persist_container(&record) {
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

/// Follows a pod's VM; when its VMM exits unasked, the pod turns NOTREADY with how the VM
/// ended as the reason, its containers EXITED, and what is left of the VM (helper processes,
/// sockets, mounts, its runtime dir) is removed, as StopPodSandbox would.
pub(super) fn monitor_vm(runtime: &Arc<Runtime>, pod: &Arc<Pod>) {
    let runtime: Weak<Runtime> = Arc::downgrade(runtime);
    let pod = pod.clone();
    tokio::spawn(async move {
        let exit = loop {
            tokio::time::sleep(VM_POLL).await;
            if !pod.is_ready() {
                return; // stopped on purpose
            }
            match pod.vm.lock().await.as_mut().map(PodVm::exit_status) {
                None => return,
                Some(None) => continue,
                Some(Some(exit)) => break exit,
            }
        };
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        vm_exited(&runtime, &pod, exit).await;
    });
}

/// Records a VM that ended unasked and removes what is left of it.
async fn vm_exited(runtime: &Runtime, pod: &Pod, exit: VmExit) {
    let console = match pod.vm.lock().await.as_ref() {
        Some(vm) => tail_file(&vm.console_log(), CONSOLE_TAIL_LINES),
        None => String::new(),
    };
    if exit.is_panic() {
        tracing::error!(pod_id = %pod.id, %exit, %console, "guest kernel panic: pod VM down");
    } else {
        tracing::warn!(pod_id = %pod.id, %exit, %console, "pod VM exited unexpectedly");
    }
    vm_died(runtime, pod, format!("pod VM exited unexpectedly: {exit}"));
    let _guard = pod.lifecycle.lock().await;
    // None: a StopPodSandbox came first and cleaned up.
    let Some(vm) = pod.vm.lock().await.take() else {
        return;
    };
    let record = match vm.tear_down().await {
        Ok(()) => pod.update(|r| r.vm = None),
        // The record keeps the VM, so StopPodSandbox tries again.
        Err(e) => pod.update(|r| r.reason = format!("{}; cleanup failed: {e}", r.reason)),
    };
    if let Err(e) = runtime.persist_pod(&record) {
        tracing::error!(pod_id = %pod.id, error = %e, "persist pod state");
    }
}

/// Records a pod whose VM is gone: NOTREADY with `reason`, containers EXITED.
pub(super) fn vm_died(runtime: &Runtime, pod: &Pod, reason: String) {
    let record = pod.update(|r| {
        if r.state == PodState::Ready {
            r.state = PodState::NotReady;
            r.reason = reason.clone();
        }
    });
    pod.set_agent(None);
    if let Err(e) = runtime.persist_pod(&record) {
        tracing::error!(pod_id = %pod.id, error = %e, "persist pod state");
    }
    mark_lost(runtime, &runtime.pod_containers(&pod.id), &reason);
}

/// Records containers that were running (or created) in a VM that is gone, in one store
/// transaction.
pub(super) fn mark_lost(runtime: &Runtime, containers: &[Arc<Container>], reason: &str) {
    let now = super::now_ns();
    let changed: Vec<_> = containers
        .iter()
        .filter_map(|c| {
            let mut changed = false;
            let record = c.update(|r| {
                if matches!(r.state, ContainerState::Running | ContainerState::Created) {
                    r.set_exited(VM_DIED_EXIT_CODE, false, reason.to_owned(), now);
                    changed = true;
                }
            });
            changed.then_some(record)
        })
        .collect();
    if let Err(e) = runtime.persist_containers(&changed) {
        tracing::error!(error = %e, "persist container states");
    }
    for c in containers {
        c.exited.send_replace(true);
    }
}
