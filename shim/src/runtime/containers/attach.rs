//! CRI Attach: a client joins a running container's init process. Its output keeps going to
//! the CRI log and comes to the client as well (from the log pumps); its stdin, when the
//! container was created with one, and terminal resizes go to the agent over a stream.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use vessel_protocols::guest::Capability;

use super::{Container, Containers};
use crate::logs::Stream;
use crate::pod_vm::AgentStream;
use crate::runtime::{ContainerState, RuntimeError};

/// A client attached to a container.
pub struct Attachment {
    /// The init's output from the moment of attaching; closes when the container's output
    /// has ended.
    pub output: mpsc::Receiver<(Stream, Bytes)>,
    /// Where stdin and resizes go (a stream to the init, which sends no output on it).
    pub input: Option<AgentStream>,
    /// True once the container is recorded as exited.
    pub exited: watch::Receiver<bool>,
    /// The container's config asks for stdin to close after the first attach closes it.
    pub stdin_once: bool,
}

impl Containers {
    /// Checks an Attach request before a token is handed out: the container runs, and
    /// stdin and tty agree with its config.
    pub fn check_attach(
        &self,
        id: &str,
        stdin: bool,
        tty: bool,
    ) -> Result<Arc<Container>, RuntimeError> {
        let container = self.get(id)?;
        if container.state() != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let config = container.record().config;
        if stdin && !config.stdin {
            return Err(RuntimeError::invalid(
                "stdin",
                format!("container {id} was created without stdin"),
            ));
        }
        if tty && !config.tty {
            return Err(RuntimeError::invalid(
                "tty",
                format!("container {id} was created without a terminal"),
            ));
        }
        Ok(container)
    }

    /// Closes the stdin of the container's init (StdinOnce after an attach).
    pub async fn close_stdin(&self, id: &str) -> Result<(), RuntimeError> {
        let container = self.get(id)?;
        let mut req = vessel_protocols::agent::CloseStdinRequest::new();
        req.container_id = id.to_owned();
        self.agent(&container)?.close_stdin(req).await?;
        Ok(())
    }

    /// Attaches to the container: its output from now on, and an input stream when the
    /// client sends stdin or has a terminal to resize.
    pub async fn attach(
        &self,
        id: &str,
        stdin: bool,
        tty: bool,
    ) -> Result<Attachment, RuntimeError> {
        let container = self.check_attach(id, stdin, tty)?;
        let stdin_once = container.record().config.stdin_once;
        let input = if stdin || tty {
            let pod = self.pod_of(&container)?;
            let (agent, guest) = pod.ready()?;
            guest
                .require(Capability::Streams, "Attach with stdin or a terminal")
                .map_err(|e| RuntimeError::FailedPrecondition(e.to_string()))?;
            let stream = agent
                .process_stream(id, "", false, false)
                .await
                .map_err(|e| RuntimeError::Internal(format!("attach stream: {e}")))?;
            Some(stream)
        } else {
            None
        };
        Ok(Attachment {
            output: container.subscribe(),
            input,
            exited: container.exited.subscribe(),
            stdin_once,
        })
    }
}
