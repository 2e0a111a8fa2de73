//! StartContainer, StopContainer (SIGTERM, then SIGKILL after the timeout), RemoveContainer
//! (also of a running container), UpdateContainerResources, ReopenContainerLog.

use std::sync::Arc;
use std::time::Duration;

use vessel_protocols::agent as api;
use vessel_protocols::cri;

use super::output::watch_exit;
use super::Containers;
use crate::metadata::Kind;
use crate::oci;
use crate::runtime::names::container_key;
use crate::runtime::{now_ns, ContainerState, RuntimeError};

const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;
/// How long a SIGKILLed container gets to be seen exiting.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Containers {
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<(), RuntimeError> {
        let container = self.get(id)?;
        let _guard = container.lifecycle.lock().await;
        let state = container.state();
        if state != ContainerState::Created {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is {state:?}, not Created"
            )));
        }
        let agent = self.agent(&container)?;
        let mut req = api::StartContainerRequest::new();
        req.container_id = id.to_owned();
        if let Err(e) = agent.start_container(req).await {
            let record = container.update(|r| r.set_exited(128, false, e.to_string(), now_ns()));
            self.persist(&record)?;
            container.exited.send_replace(true);
            return Err(e.into());
        }
        let record = container.update(|r| {
            r.state = ContainerState::Running;
            r.started_at_ns = now_ns();
        });
        self.persist(&record)?;
        let pumps = container.take_pumps();
        watch_exit(self, &container, agent, pumps);
        Ok(())
    }

    /// SIGTERM, then SIGKILL once `timeout` passes; returns when the container has exited.
    pub async fn stop(self: &Arc<Self>, id: &str, timeout: i64) -> Result<(), RuntimeError> {
        let Some(container) = self.find(id)? else {
            return Ok(());
        };
        let _guard = container.lifecycle.lock().await;
        if container.state() != ContainerState::Running {
            return Ok(());
        }
        let Ok(agent) = self.agent(&container) else {
            return Ok(()); // the pod's VM is gone; the monitor records the exit
        };
        let grace = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
        if grace > Duration::ZERO {
            signal(&agent, id, SIGTERM, false).await?;
            if container.wait_exited(grace).await {
                return Ok(());
            }
            tracing::info!(
                container_id = id,
                ?grace,
                "container ignored SIGTERM; sending SIGKILL"
            );
        }
        signal(&agent, id, SIGKILL, true).await?;
        if container.wait_exited(KILL_WAIT).await {
            Ok(())
        } else {
            Err(RuntimeError::DeadlineExceeded(format!(
                "container {id} did not exit {} s after SIGKILL",
                KILL_WAIT.as_secs()
            )))
        }
    }

    /// Stops the container if running, then forgets it.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<(), RuntimeError> {
        let Some(container) = self.find(id)? else {
            return Ok(());
        };
        if container.state() == ContainerState::Running {
            self.stop(id, 0).await?;
        }
        let _guard = container.lifecycle.lock().await;
        if let Ok(agent) = self.agent(&container) {
            let mut req = api::RemoveContainerRequest::new();
            req.container_id = id.to_owned();
            match agent.remove_container(req).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(vessel_protocols::ttrpc::Code::NOT_FOUND) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let record = container.record();
        self.release_files(&record);
        self.store.delete(&[(Kind::Container, id)])?;
        let meta = record.config.metadata.unwrap_or_default();
        self.names
            .lock()
            .release(&container_key(&record.sandbox_id, &meta.name, meta.attempt));
        self.table.write().remove(id);
        tracing::info!(container_id = id, "container removed");
        Ok(())
    }

    pub async fn update_resources(
        self: &Arc<Self>,
        id: &str,
        resources: &cri::LinuxContainerResources,
    ) -> Result<(), RuntimeError> {
        let container = self.get(id)?;
        let oci = oci::cri_to_oci_resources(resources).map_err(|e| match e {
            oci::SpecError::Invalid { field, reason } => RuntimeError::InvalidArgument {
                field: format!("linux.{field}"),
                reason,
            },
            other => RuntimeError::Internal(other.to_string()),
        })?;
        if !matches!(
            container.state(),
            ContainerState::Created | ContainerState::Running
        ) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is {:?}",
                container.state()
            )));
        }
        let pod = self.pods.get(&container.record().sandbox_id)?.record();
        if let Some(size) = &pod.size {
            size.check_fits(resources)?;
        }
        let agent = self.agent(&container)?;
        let mut req = api::UpdateContainerRequest::new();
        req.container_id = id.to_owned();
        req.resources_json = serde_json::to_vec(&oci)
            .map_err(|e| RuntimeError::Internal(format!("encode resources: {e}")))?;
        agent.update_container(req).await?;
        let record = container.update(|r| {
            r.config
                .linux
                .get_or_insert_with(Default::default)
                .resources = Some(resources.clone());
        });
        self.persist(&record)
    }

    /// Reopens the CRI log (kubelet rotated it); the new file exists when this returns.
    pub fn reopen_log(&self, id: &str) -> Result<(), RuntimeError> {
        let container = self.get(id)?;
        if container.state() != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        match &container.log {
            Some(log) => log.reopen().map_err(|e| {
                RuntimeError::Internal(format!("reopen {}: {e}", log.path().display()))
            }),
            None => Ok(()),
        }
    }
}

async fn signal(
    agent: &crate::pod_vm::AgentClient,
    id: &str,
    signal: u32,
    all: bool,
) -> Result<(), RuntimeError> {
    let mut req = api::SignalProcessRequest::new();
    req.container_id = id.to_owned();
    req.signal = signal;
    req.all = all;
    match agent.signal_process(req).await {
        Ok(_) => Ok(()),
        // Already exited: the exit watcher records it.
        Err(e) if e.code() == Some(vessel_protocols::ttrpc::Code::FAILED_PRECONDITION) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
