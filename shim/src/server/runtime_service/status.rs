//! Status: whether the node can run pods (RuntimeReady: the backend's parts are there;
//! NetworkReady), the handlers served, and in verbose mode the config and the chosen
//! hypervisor with why, each a JSON document.

use std::collections::HashMap;
use std::sync::Arc;

use vessel_protocols::cri;

use crate::hypervisor;
use crate::runtime::{Runtime, RuntimeError};

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
    // The conf dir is read at every Status (and every RunPodSandbox): CNI agents (flannel,
    // calico…) write their config after the runtime started.
    let network_ready = if rt.config.cni.enabled {
        match rt.config.cni.load() {
            Ok(_) => condition("NetworkReady", true, "", String::new()),
            Err(e) => condition(
                "NetworkReady",
                false,
                "NetworkPluginNotReady",
                format!("cni: {e}"),
            ),
        }
    } else {
        condition(
            "NetworkReady",
            false,
            "NetworkDisabled",
            "pod networking is off in the config ([cni] enabled = false)".into(),
        )
    };
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
        // Every configured handler by name, and the default again as the empty name.
        runtime_handlers: rt
            .config
            .handlers
            .keys()
            .map(String::as_str)
            .chain([""])
            .map(|name| cri::RuntimeHandler {
                name: name.into(),
                features: Some(cri::RuntimeHandlerFeatures::default()),
            })
            .collect(),
        features: Some(cri::RuntimeFeatures::default()),
    })
}
