//! Version, Status, UpdateRuntimeConfig, RuntimeConfig.

use std::collections::HashMap;
use std::sync::Arc;

use vessel_protocols::cri;

use crate::hypervisor;
use crate::runtime::{Runtime, RuntimeError, HANDLERS};

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

fn condition(kind: &str, ok: bool, reason: &str, message: String) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: kind.into(),
        status: ok,
        reason: if ok { String::new() } else { reason.into() },
        message: if ok { String::new() } else { message },
    }
}

pub async fn status(
    rt: &Arc<Runtime>,
    req: cri::StatusRequest,
) -> Result<cri::StatusResponse, RuntimeError> {
    let missing = hypervisor::missing(rt.selection.backend, &rt.config.hypervisor);
    let runtime_ready = condition(
        "RuntimeReady",
        missing.is_empty(),
        "PodVmComponentsMissing",
        format!(
            "the {} backend cannot start pod VMs: {}",
            rt.selection.backend.vmm_name(),
            missing.join("; ")
        ),
    );
    // Pod networking (CNI) is not wired in yet: pods run without a network interface.
    let network_ready = condition(
        "NetworkReady",
        false,
        "NetworkPluginNotReady",
        "vessel does not configure pod networks (CNI) yet".into(),
    );
    let mut info = HashMap::new();
    if req.verbose {
        // Clients parse every value as a JSON document.
        let hypervisor = serde_json::json!({
            "backend": rt.selection.backend,
            "vmm": rt.selection.backend.vmm_name(),
            "reason": rt.selection.reason,
        });
        info.insert("hypervisor".to_string(), hypervisor.to_string());
        let config = serde_json::to_string(&rt.config)
            .map_err(|e| RuntimeError::Internal(format!("encode the config: {e}")))?;
        info.insert("config".to_string(), config);
    }
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime_ready, network_ready],
        }),
        info,
        runtime_handlers: HANDLERS
            .iter()
            .map(|name| cri::RuntimeHandler {
                name: (*name).into(),
                features: Some(cri::RuntimeHandlerFeatures::default()),
            })
            .collect(),
        features: Some(cri::RuntimeFeatures::default()),
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

pub async fn runtime_config(
    _: &Arc<Runtime>,
    _: cri::RuntimeConfigRequest,
) -> Result<cri::RuntimeConfigResponse, RuntimeError> {
    Ok(cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
        }),
    })
}
