//! CreateSandbox, DestroySandbox.

use std::time::Duration;

use vessel_protocols::agent as api;

use super::error::Result;
use super::{convert, AgentService};
use crate::init::power::power_off;
use crate::sandbox::SandboxParams;

/// Delay between the DestroySandbox reply and power-off, so the reply gets out.
const POWER_OFF_DELAY: Duration = Duration::from_millis(50);

pub async fn create(svc: &AgentService, req: api::CreateSandboxRequest) -> Result<api::Empty> {
    let shared_fs = match req.shared_fs.as_ref() {
        Some(s) if !s.driver.is_empty() || !s.mount_point.is_empty() => Some(convert::storage(s)?),
        _ => None,
    };
    let params = SandboxParams {
        id: req.sandbox_id,
        hostname: req.hostname,
        shared_fs,
        storages: convert::storages(&req.storages)?,
        share_pid_namespace: req.share_pid_namespace,
        sysctls: req.sysctls.into_iter().collect(),
    };
    svc.sandbox.create(params, &svc.containers).await?;
    Ok(api::Empty::new())
}

pub async fn destroy(svc: &AgentService, req: api::DestroySandboxRequest) -> Result<api::Empty> {
    svc.sandbox.destroy(&svc.containers).await;
    if req.power_off {
        let pid1 = svc.pid1;
        tracing::info!("powering off after the reply");
        tokio::spawn(async move {
            tokio::time::sleep(POWER_OFF_DELAY).await;
            power_off(pid1);
        });
    }
    Ok(api::Empty::new())
}
