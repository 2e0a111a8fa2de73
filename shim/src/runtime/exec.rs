//! Processes run in running containers: ExecSync runs a command and collects its output and
//! exit code, with an optional timeout after which the process is killed and
//! DeadlineExceeded returned; a streamed exec (CRI Exec, through the streaming server) starts
//! the process with a byte stream to it, which carries its I/O and then its exit.

use std::sync::Arc;
use std::time::Duration;

use vessel_protocols::agent as api;

use vessel_protocols::guest::Capability;

use super::{new_id, Container, ContainerState, Containers, RuntimeError};
use crate::pod_vm::{AgentClient, AgentError, AgentStream};

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

/// SIGKILLs an exec and collects its output and exit (for at most 5 s), so the agent
/// forgets the process.
async fn kill_and_reap(agent: &AgentClient, id: &str, exec_id: &str) {
    let mut kill = api::SignalProcessRequest::new();
    kill.container_id = id.to_owned();
    kill.exec_id = exec_id.to_owned();
    kill.signal = 9;
    if let Err(e) = agent.signal_process(kill).await {
        tracing::warn!(container_id = id, exec_id, error = %e, "kill an exec");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), collect(agent, id, exec_id)).await;
}

/// Processes started in containers.
pub struct Exec {
    containers: Arc<Containers>,
}

impl Exec {
    pub(super) fn new(containers: Arc<Containers>) -> Self {
        Self { containers }
    }

    /// The running container a command may be run in.
    pub fn running(&self, id: &str) -> Result<Arc<Container>, RuntimeError> {
        let container = self.containers.get(id)?;
        if container.state() != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(container)
    }

    /// Starts `cmd` in the container (with the container's user, env, cwd and security
    /// settings); returns the agent and the exec's id.
    async fn start(
        &self,
        container: &Container,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<(AgentClient, String), RuntimeError> {
        if cmd.is_empty() {
            return Err(RuntimeError::invalid("cmd", "empty"));
        }
        let agent = self.containers.agent(container)?;
        let mut process = container.record().process;
        process.set_args(Some(cmd));
        process.set_terminal(Some(tty));
        let exec_id = new_id().map_err(|e| RuntimeError::Internal(format!("random id: {e}")))?;
        let mut req = api::ExecProcessRequest::new();
        req.container_id = container.id.clone();
        req.exec_id = exec_id.clone();
        req.stdin = stdin;
        req.process_json = serde_json::to_vec(&process)
            .map_err(|e| RuntimeError::Internal(format!("encode process: {e}")))?;
        agent.exec_process(req).await?;
        Ok((agent, exec_id))
    }

    /// Checks a CRI Exec request before a token is handed out: the container runs, in a pod
    /// whose agent serves streams.
    pub fn check_streamed(&self, id: &str) -> Result<Arc<Container>, RuntimeError> {
        let container = self.running(id)?;
        let (_, guest) = self.containers.pod_of(&container)?.ready()?;
        guest
            .require(Capability::Streams, "Exec")
            .map_err(|e| RuntimeError::FailedPrecondition(e.to_string()))?;
        Ok(container)
    }

    /// CRI Exec's process: started, with a stream that carries its output (and takes its
    /// stdin and terminal resizes) until its exit frame. Closing the stream before the exit
    /// kills the process.
    pub async fn start_streamed(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<AgentStream, RuntimeError> {
        let container = self.check_streamed(id)?;
        let (agent, exec_id) = self.start(&container, cmd, tty, stdin).await?;
        match agent.process_stream(id, &exec_id, true, true).await {
            Ok(stream) => Ok(stream),
            Err(e) => {
                // The process runs without anyone to read it: stop it.
                kill_and_reap(&agent, id, &exec_id).await;
                Err(RuntimeError::Internal(format!("exec stream: {e}")))
            }
        }
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
        let container = self.running(id)?;
        let (agent, exec_id) = self.start(&container, cmd, false, false).await?;

        let run = collect(&agent, id, &exec_id);
        if timeout <= 0 {
            return Ok(run.await?);
        }
        let limit = Duration::from_secs(timeout.unsigned_abs());
        match tokio::time::timeout(limit, run).await {
            Ok(out) => Ok(out?),
            Err(_) => {
                kill_and_reap(&agent, id, &exec_id).await;
                Err(RuntimeError::DeadlineExceeded(format!(
                    "command in container {id} timed out after {timeout} s"
                )))
            }
        }
    }
}
