//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ListContainers,
//! ContainerStatus, UpdateContainerResources, ReopenContainerLog.

use std::sync::Arc;

use vessel_protocols::cri;

use super::convert::{container, container_status, labels_match};
use crate::runtime::{Runtime, RuntimeError};

pub async fn create(
    rt: &Arc<Runtime>,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, RuntimeError> {
    let config = req
        .config
        .ok_or_else(|| RuntimeError::invalid("config", "missing"))?;
    let container_id = rt.containers.create(&req.pod_sandbox_id, config).await?;
    Ok(cri::CreateContainerResponse { container_id })
}

pub async fn start(
    rt: &Arc<Runtime>,
    req: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, RuntimeError> {
    rt.containers.start(&req.container_id).await?;
    Ok(cri::StartContainerResponse {})
}

pub async fn stop(
    rt: &Arc<Runtime>,
    req: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, RuntimeError> {
    rt.containers.stop(&req.container_id, req.timeout).await?;
    Ok(cri::StopContainerResponse {})
}

pub async fn remove(
    rt: &Arc<Runtime>,
    req: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, RuntimeError> {
    rt.containers.remove(&req.container_id).await?;
    Ok(cri::RemoveContainerResponse {})
}

pub async fn list(
    rt: &Arc<Runtime>,
    req: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, RuntimeError> {
    let filter = req.filter.unwrap_or_default();
    let containers = rt
        .containers
        .list()
        .iter()
        .map(|c| c.record())
        .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
        .filter(|r| {
            filter.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&filter.pod_sandbox_id)
        })
        .filter(|r| {
            filter
                .state
                .as_ref()
                .is_none_or(|s| r.state.to_cri() as i32 == s.state)
        })
        .filter(|r| labels_match(&filter.label_selector, &r.config.labels))
        .map(|r| container(&r))
        .collect();
    Ok(cri::ListContainersResponse { containers })
}

pub async fn status(
    rt: &Arc<Runtime>,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, RuntimeError> {
    let record = rt.containers.get(&req.container_id)?.record();
    Ok(cri::ContainerStatusResponse {
        status: Some(container_status(&record)),
        info: Default::default(),
    })
}

pub async fn update_resources(
    rt: &Arc<Runtime>,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, RuntimeError> {
    let linux = req
        .linux
        .ok_or_else(|| RuntimeError::invalid("linux", "missing"))?;
    rt.containers
        .update_resources(&req.container_id, &linux)
        .await?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

pub async fn reopen_log(
    rt: &Arc<Runtime>,
    req: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, RuntimeError> {
    rt.containers.reopen_log(&req.container_id)?;
    Ok(cri::ReopenContainerLogResponse {})
}
