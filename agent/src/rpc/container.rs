//! CreateContainer, StartContainer, RemoveContainer, StatsContainer, UpdateContainer.

use std::time::{Duration, SystemTime};

use vessel_protocols::agent as api;

use super::error::Result;
use super::{convert, AgentService};
use crate::container::{CreateParams, DEFAULT_REMOVE_TIMEOUT};

pub async fn create(svc: &AgentService, req: api::CreateContainerRequest) -> Result<api::Empty> {
    let params = CreateParams {
        id: req.container_id,
        spec_json: req.spec_json,
        storages: convert::storages(&req.storages)?,
        stdin: req.stdin,
    };
    svc.containers.create(params).await?;
    Ok(api::Empty::new())
}

pub async fn start(svc: &AgentService, req: api::StartContainerRequest) -> Result<api::Empty> {
    svc.containers.start(&req.container_id).await?;
    Ok(api::Empty::new())
}

pub async fn remove(svc: &AgentService, req: api::RemoveContainerRequest) -> Result<api::Empty> {
    let timeout = match req.timeout_secs {
        0 => DEFAULT_REMOVE_TIMEOUT,
        s => Duration::from_secs(u64::from(s)),
    };
    svc.containers.remove(&req.container_id, timeout).await?;
    Ok(api::Empty::new())
}

pub async fn stats(
    svc: &AgentService,
    req: api::StatsContainerRequest,
) -> Result<api::ContainerStats> {
    let stats = svc.containers.stats(&req.container_id)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(convert::stats(stats, now))
}

pub async fn update(svc: &AgentService, req: api::UpdateContainerRequest) -> Result<api::Empty> {
    svc.containers
        .update(&req.container_id, &req.resources_json)?;
    Ok(api::Empty::new())
}
