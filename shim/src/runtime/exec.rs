//! Processes run in running containers: ExecSync runs a command and collects its output and
//! exit code, with an optional timeout after which the process is killed and
//! DeadlineExceeded returned.

use std::sync::Arc;
use std::time::Duration;

use vessel_protocols::agent as api;

use super::{new_id, ContainerState, Containers, RuntimeError};
use crate::pod_vm::{AgentClient, AgentError};

/// Output kept per stream; the rest is read and dropped (kubelet's gRPC message limit is
/// 16 MiB, so a larger answer would not reach it anyway).
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

async fn read_stream(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    stderr: bool,
) -> Result<Vec<u8>, AgentError> {
    let mut out = Vec::new();
    loop {
        let mut req = api::ReadStreamRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        let chunk = if stderr {
            agent.read_stderr(req).await?
        } else {
            agent.read_stdout(req).await?
        };
        if chunk.data.is_empty() {
            return Ok(out);
        }
        let room = MAX_EXEC_OUTPUT.saturating_sub(out.len());
        out.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
    }
}

/// Reads both streams of an exec to their end and waits for its exit.
async fn collect(agent: &AgentClient, id: &str, exec_id: &str) -> Result<ExecOutput, AgentError> {
    let mut wait = api::WaitProcessRequest::new();
    wait.container_id = id.to_owned();
    wait.exec_id = exec_id.to_owned();
    let (stdout, stderr, exit) = tokio::join!(
        read_stream(agent, id, exec_id, false),
        read_stream(agent, id, exec_id, true),
        agent.wait_process(wait),
    );
    Ok(ExecOutput {
        stdout: stdout?,
        stderr: stderr?,
        exit_code: exit?.status,
    })
}

/// Processes started in containers.
pub struct Exec {
    containers: Arc<Containers>,
}

impl Exec {
    pub(super) fn new(containers: Arc<Containers>) -> Self {
        Self { containers }
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecOutput, RuntimeError> {
        if cmd.is_empty() {
            return Err(RuntimeError::invalid("cmd", "empty"));
        }
        let container = self.containers.get(id)?;
        if container.state() != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let agent = self.containers.agent(&container)?;
        let mut process = container.record().process;
        process.set_args(Some(cmd));
        process.set_terminal(Some(false));
        let exec_id = new_id().map_err(|e| RuntimeError::Internal(format!("random id: {e}")))?;
        let mut req = api::ExecProcessRequest::new();
        req.container_id = id.to_owned();
        req.exec_id = exec_id.clone();
        req.process_json = serde_json::to_vec(&process)
            .map_err(|e| RuntimeError::Internal(format!("encode process: {e}")))?;
        agent.exec_process(req).await?;

        let run = collect(&agent, id, &exec_id);
        if timeout <= 0 {
            return Ok(run.await?);
        }
        let limit = Duration::from_secs(timeout.unsigned_abs());
        match tokio::time::timeout(limit, run).await {
            Ok(out) => Ok(out?),
            Err(_) => {
                let mut kill = api::SignalProcessRequest::new();
                kill.container_id = id.to_owned();
                kill.exec_id = exec_id.clone();
                kill.signal = 9;
                if let Err(e) = agent.signal_process(kill).await {
                    tracing::warn!(container_id = id, exec_id, error = %e, "kill timed-out exec");
                }
                // Collect the exit so the agent forgets the process.
                let _ = tokio::time::timeout(Duration::from_secs(5), collect(&agent, id, &exec_id))
                    .await;
                Err(RuntimeError::DeadlineExceeded(format!(
                    "command in container {id} timed out after {timeout} s"
                )))
            }
        }
    }
}
