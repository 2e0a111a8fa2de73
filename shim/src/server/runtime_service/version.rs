//! Version, UpdateRuntimeConfig, RuntimeConfig: what the runtime is and how kubelet configures it.

use std::sync::Arc;

use vessel_protocols::cri;

use crate::host_cgroup::CgroupDriver;
use crate::runtime::{Runtime, RuntimeError};

/// The CRI version this runtime implements.
const CRI_API_VERSION: &str = "v1";

pub async fn version(
    _: &Arc<Runtime>,
    _: cri::VersionRequest,
) -> Result<cri::VersionResponse, RuntimeError> {
    Ok(cri::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "vessel".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: CRI_API_VERSION.into(),
    })
}

pub async fn update_runtime_config(
    _: &Arc<Runtime>,
    req: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse, RuntimeError> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    tracing::info!(pod_cidr = %cidr, "runtime config updated");
    Ok(cri::UpdateRuntimeConfigResponse {})
}

/// The cgroup driver in use (the config's `cgroup_driver`, `auto` resolved at start):
/// kubelet 1.28+ asks, to match its own.
pub async fn runtime_config(
    rt: &Arc<Runtime>,
    _: cri::RuntimeConfigRequest,
) -> Result<cri::RuntimeConfigResponse, RuntimeError> {
    let driver = match rt.pods.cgroup_driver() {
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
    };
    Ok(cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}
