//! What RunPodSandbox takes from a pod's CRI config: its checks (handler, metadata, hostname,
//! namespaces a VM cannot give, log directory), each refusal an InvalidArgument naming the
//! field; the hostname when none is given.

use vessel_protocols::cri;

use crate::handlers::HandlerKind;
use crate::oci::namespace_options;
use crate::runtime::RuntimeError;

pub(super) fn validate(
    config: &cri::PodSandboxConfig,
    kind: HandlerKind,
) -> Result<(), RuntimeError> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| RuntimeError::invalid("config.metadata", "missing"))?;
    for (field, value) in [
        ("config.metadata.name", &meta.name),
        ("config.metadata.namespace", &meta.namespace),
        ("config.metadata.uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(RuntimeError::invalid(field, "empty"));
        }
    }
    if !config.hostname.is_empty() {
        validate_hostname(&config.hostname)?;
    }
    validate_namespaces(config, kind)?;
    // Refused here, before anything of the pod exists, rather than when its agent sets them.
    crate::oci::pod_sysctls(config)?;
    if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
        return Err(RuntimeError::invalid(
            "config.log_directory",
            format!("{:?} is not an absolute path", config.log_directory),
        ));
    }
    Ok(())
}

/// The longest hostname the guest kernel takes (`HOST_NAME_MAX`).
const HOSTNAME_MAX: usize = 64;

/// A hostname the guest can set: at most 64 bytes of letters, digits, '-', '_' and '.', not
/// starting or ending with '-' or '.'. Refused here so the pod never reaches the guest with it.
fn validate_hostname(hostname: &str) -> Result<(), RuntimeError> {
    let problem = if hostname.len() > HOSTNAME_MAX {
        format!("is {} bytes; at most {HOSTNAME_MAX}", hostname.len())
    } else if let Some(c) = hostname
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        format!("has {c:?}; only letters, digits, '-', '_' and '.' are allowed")
    } else if hostname.starts_with(['-', '.']) || hostname.ends_with(['-', '.']) {
        "starts or ends with '-' or '.'".to_owned()
    } else {
        return Ok(());
    };
    Err(RuntimeError::invalid(
        "config.hostname",
        format!("{hostname:?} {problem}"),
    ))
}

/// A VM cannot share the node's network, pid or ipc namespace: a pod asking for one is refused
/// (kubelet's user then picks a RuntimeClass that can) rather than started with private ones.
/// A native pod can have any of them: its agent runs in the host's.
fn validate_namespaces(
    config: &cri::PodSandboxConfig,
    kind: HandlerKind,
) -> Result<(), RuntimeError> {
    let options = namespace_options(config);
    let node = cri::NamespaceMode::Node as i32;
    if kind == HandlerKind::Native {
        return Ok(());
    }
    for (field, mode) in [
        ("network", options.network),
        ("pid", options.pid),
        ("ipc", options.ipc),
    ] {
        if mode == node {
            return Err(RuntimeError::invalid(
                format!("config.linux.security_context.namespace_options.{field}"),
                format!(
                    "NODE (host {field}) cannot be given to a pod in a VM; \
                     run this pod with a runtime handler that shares the host's namespaces"
                ),
            ));
        }
    }
    Ok(())
}

/// The pod's hostname when the config gives none: the node's, as containerd does.
pub(super) fn node_hostname() -> Result<String, RuntimeError> {
    nix::unistd::gethostname()
        .map_err(|e| RuntimeError::Internal(format!("the node's hostname: {e}")))?
        .into_string()
        .map_err(|name| {
            RuntimeError::Internal(format!("the node's hostname {name:?} is not UTF-8"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::testing::with_namespaces;

    #[test]
    fn metadata_fields_are_named() {
        let mut config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                namespace: "ns".into(),
                uid: String::new(),
                attempt: 0,
            }),
            ..Default::default()
        };
        assert!(validate(&config, HandlerKind::Vm)
            .unwrap_err()
            .to_string()
            .contains("config.metadata.uid"));
        config.metadata.as_mut().unwrap().uid = "u".into();
        validate(&config, HandlerKind::Vm).unwrap();
    }

    fn named_pod() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                namespace: "ns".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn hostnames_the_guest_cannot_take_are_refused() {
        let mut config = named_pod();
        for good in ["web-0", "a", "node_1.example.com", &"x".repeat(64)] {
            config.hostname = good.into();
            validate(&config, HandlerKind::Vm).unwrap();
        }
        for bad in [
            &"x".repeat(65),
            "has space",
            "-lead",
            "trail.",
            "ünï",
            "a/b",
        ] {
            config.hostname = bad.into();
            let err = validate(&config, HandlerKind::Vm).unwrap_err();
            assert!(
                matches!(err, RuntimeError::InvalidArgument { .. })
                    && err.to_string().contains("config.hostname"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn host_namespaces_are_refused_by_name() {
        for field in ["network", "pid", "ipc"] {
            let mut options = cri::NamespaceOption::default();
            let node = cri::NamespaceMode::Node as i32;
            match field {
                "network" => options.network = node,
                "pid" => options.pid = node,
                _ => options.ipc = node,
            }
            let config = with_namespaces(named_pod(), options);
            let err = validate(&config, HandlerKind::Vm).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("namespace_options.{field}")),
                "{err}"
            );
        }
        let config = with_namespaces(
            named_pod(),
            cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            },
        );
        validate(&config, HandlerKind::Vm).unwrap();
    }

    #[test]
    fn native_pods_may_share_the_hosts_namespaces() {
        let node = cri::NamespaceMode::Node as i32;
        let options = cri::NamespaceOption {
            network: node,
            ipc: node,
            ..Default::default()
        };
        let config = with_namespaces(named_pod(), options);
        validate(&config, HandlerKind::Native).unwrap();
        assert!(crate::oci::host_network(&config) && crate::oci::host_ipc(&config));
        let config = with_namespaces(
            named_pod(),
            cri::NamespaceOption {
                pid: node,
                ..Default::default()
            },
        );
        validate(&config, HandlerKind::Native).unwrap();
        let err = validate(&config, HandlerKind::Vm).unwrap_err();
        assert!(err.to_string().contains("namespace_options.pid"), "{err}");
    }
}
