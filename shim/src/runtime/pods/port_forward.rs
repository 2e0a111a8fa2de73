//! CRI PortForward's connections: each forwarded connection is a stream to the pod's agent,
//! which connects to the port on the guest's loopback, the pod's network namespace.

use std::sync::Arc;

use vessel_protocols::guest::Capability;

use super::{Pod, Pods};
use crate::pod_vm::{AgentStream, StreamError};
use crate::runtime::RuntimeError;

impl Pods {
    /// Checks a PortForward request before a token is handed out: the pod is ready and its
    /// agent serves streams.
    pub fn check_port_forward(&self, pod_id: &str) -> Result<Arc<Pod>, RuntimeError> {
        let pod = self.get(pod_id)?;
        let (_, guest) = pod.ready()?;
        guest
            .require(Capability::Streams, "PortForward")
            .map_err(|e| RuntimeError::FailedPrecondition(e.to_string()))?;
        Ok(pod)
    }

    /// A new connection to `port` in the pod. A port nobody listens on is FailedPrecondition
    /// with the guest's connect error.
    pub async fn connect_port(&self, pod_id: &str, port: u16) -> Result<AgentStream, RuntimeError> {
        let pod = self.check_port_forward(pod_id)?;
        let agent = pod.agent()?;
        agent.port_stream(port.into()).await.map_err(|e| match e {
            StreamError::Refused(why) => RuntimeError::FailedPrecondition(why),
            other => RuntimeError::Internal(format!("port {port} of pod {pod_id}: {other}")),
        })
    }
}
