//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

use std::sync::Arc;

use vessel_protocols::cri;

use super::convert::{labels_match, pod_sandbox, pod_sandbox_status, pod_state};
use crate::runtime::{Runtime, RuntimeError};

pub async fn run(
    rt: &Arc<Runtime>,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, RuntimeError> {
    let config = req
        .config
        .ok_or_else(|| RuntimeError::invalid("config", "missing"))?;
    let pod_sandbox_id = rt.pods.run(config, &req.runtime_handler).await?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
}

pub async fn stop(
    rt: &Arc<Runtime>,
    req: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, RuntimeError> {
    rt.pods.stop(&req.pod_sandbox_id).await?;
    Ok(cri::StopPodSandboxResponse {})
}

pub async fn remove(
    rt: &Arc<Runtime>,
    req: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, RuntimeError> {
    rt.remove_pod_sandbox(&req.pod_sandbox_id).await?;
    Ok(cri::RemovePodSandboxResponse {})
}

pub async fn status(
    rt: &Arc<Runtime>,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
    let pod = rt.pods.get(&req.pod_sandbox_id)?;
    let record = pod.record();
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        // The guest agent of a ready pod: its version and contract capabilities.
        let guest = pod.ready().ok().map(|(_, guest)| {
            serde_json::json!({
                "agentVersion": guest.agent_version,
                "capabilities": guest.capabilities.iter().map(|c| c.name()).collect::<Vec<_>>(),
            })
        });
        // One JSON document, as containerd's `info`: clients parse it as such.
        let doc = serde_json::json!({
            "runtimeHandler": record.runtime_handler,
            "vmm": record.vm.as_ref().map(|vm| vm.vm.backend.vmm_name()),
            "pid": pod.vmm_pid().await,
            "reason": record.reason,
            "guest": guest,
            "vmSize": record.size.as_ref().map(|s| serde_json::json!({
                "memoryMiB": s.memory_mib,
                "vcpus": s.vcpus,
                "containersMemoryMiB": s.containers_memory_mib,
                "memoryFrom": s.memory_from,
                "vcpusFrom": s.vcpus_from,
            })),
            "cgroup": record.vm.as_ref().and_then(|vm| vm.vm.config.cgroup.as_ref()).map(|c| serde_json::json!({
                "path": c.path,
                "hierarchies": c.hierarchies.iter().map(|h| c.dir(h)).collect::<Vec<_>>(),
            })),
        });
        info.insert("info".to_string(), doc.to_string());
    }
    let containers_statuses = rt
        .containers
        .of_pod(&record.id)
        .iter()
        .map(|c| super::convert::container_status(&c.record()))
        .collect();
    Ok(cri::PodSandboxStatusResponse {
        status: Some(pod_sandbox_status(&record)),
        info,
        containers_statuses,
        timestamp: crate::runtime::now_ns(),
    })
}

pub async fn list(
    rt: &Arc<Runtime>,
    req: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, RuntimeError> {
    let filter = req.filter.unwrap_or_default();
    let items = rt
        .pods
        .list()
        .iter()
        .map(|p| p.record())
        .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
        .filter(|r| {
            filter
                .state
                .as_ref()
                .is_none_or(|s| pod_state(r.state) as i32 == s.state)
        })
        .filter(|r| labels_match(&filter.label_selector, &r.config.labels))
        .map(|r| pod_sandbox(&r))
        .collect();
    Ok(cri::ListPodSandboxResponse { items })
}
