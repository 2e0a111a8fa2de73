//! RunPodSandbox, StopPodSandbox, RemovePodSandbox.
//!
//! Run is idempotent on (name, namespace, uid, attempt) and all-or-nothing: a failed start
//! leaves no VM, dir, record or name behind. Stop and Remove of a missing pod succeed.

use std::sync::Arc;

use vessel_protocols::cri;

use super::names::{container_key, pod_key};
use super::pod_files;
use super::watch::{mark_lost, monitor_vm};
use super::{new_id, now_ns, Pod, PodState, Runtime, RuntimeError, SandboxRecord, HANDLERS};
use crate::metadata::Kind;
use crate::oci::pod_hostname;
use crate::pod_vm::{PodVm, PodVmSpec};

/// Whether the pod asks for one pid namespace for all its containers.
fn shares_pid_namespace(config: &cri::PodSandboxConfig) -> bool {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.pid == cri::NamespaceMode::Pod as i32)
}

fn validate(config: &cri::PodSandboxConfig, handler: &str) -> Result<(), RuntimeError> {
    if !HANDLERS.contains(&handler) {
        return Err(RuntimeError::invalid(
            "runtime_handler",
            format!("unknown runtime handler {handler:?} (this runtime serves \"kata\")"),
        ));
    }
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
    validate_namespaces(config)?;
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
fn validate_namespaces(config: &cri::PodSandboxConfig) -> Result<(), RuntimeError> {
    let Some(options) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
    else {
        return Ok(());
    };
    let node = cri::NamespaceMode::Node as i32;
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
fn node_hostname() -> Result<String, RuntimeError> {
    nix::unistd::gethostname()
        .map_err(|e| RuntimeError::Internal(format!("the node's hostname: {e}")))?
        .into_string()
        .map_err(|name| {
            RuntimeError::Internal(format!("the node's hostname {name:?} is not UTF-8"))
        })
}

impl Runtime {
    /// Starts a pod VM for `config`; returns the pod id (the existing one for a repeat).
    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        mut config: cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, RuntimeError> {
        validate(&config, handler)?;
        if config.hostname.is_empty() {
            // Recorded with the pod, so its containers keep the name it started with.
            config.hostname = node_hostname()?;
        }
        let meta = config.metadata.clone().unwrap_or_default();
        let key = pod_key(&meta.name, &meta.namespace, &meta.uid, meta.attempt);
        let id = new_id().map_err(|e| RuntimeError::Internal(format!("random id: {e}")))?;
        let reserved = self.names.lock().reserve(key.clone(), &id);
        if let Err(existing) = reserved {
            // A repeat: once any creation in flight has finished, answer with the same pod.
            if let Ok(pod) = self.pod(&existing) {
                let _ = pod.lifecycle.lock().await;
            }
            return match self.pod(&existing) {
                Ok(_) => Ok(existing),
                Err(_) => Err(RuntimeError::FailedPrecondition(format!(
                    "pod {}/{} attempt {} failed to start; retry",
                    meta.namespace, meta.name, meta.attempt
                ))),
            };
        }
        let record = SandboxRecord {
            id: id.clone(),
            runtime_handler: handler.to_owned(),
            created_at_ns: now_ns(),
            state: PodState::NotReady,
            reason: "starting".into(),
            vm: None,
            config,
        };
        let pod = Arc::new(Pod::new(record));
        let guard = pod.lifecycle.lock().await;
        self.pods.write().insert(id.clone(), pod.clone());
        let result = self.boot_pod(&pod).await;
        drop(guard);
        if let Err(e) = result {
            self.pods.write().remove(&id);
            self.names.lock().release(&key);
            let _ = self.store.delete(&[(Kind::Sandbox, &id)]);
            return Err(e);
        }
        Ok(id)
    }

    async fn boot_pod(self: &Arc<Self>, pod: &Arc<Pod>) -> Result<(), RuntimeError> {
        let record = pod.record();
        let meta = record.config.metadata.clone().unwrap_or_default();
        let spec = PodVmSpec {
            id: pod.id.clone(),
            state_dir: self.dirs.state.clone(),
            hypervisor: self.config.hypervisor.clone(),
            backend: self.selection.backend,
            hostname: pod_hostname(&record.config),
            dns: pod_files::dns_lines(&record.config),
            share_pid_namespace: shares_pid_namespace(&record.config),
        };
        tracing::info!(pod_id = %pod.id, pod = %format!("{}/{}", meta.namespace, meta.name), "starting pod VM");
        let vm = PodVm::start(spec).await?;
        if let Err(e) = pod_files::write(vm.shared_dir(), &record.config) {
            let _ = vm.destroy().await;
            return Err(e);
        }
        let vm_record = vm.record();
        let record = pod.update(|r| {
            r.state = PodState::Ready;
            r.reason.clear();
            r.vm = Some(vm_record);
        });
        pod.set_agent(Some(vm.agent().clone()));
        *pod.vm.lock().await = Some(vm);
        if let Err(e) = self.persist_pod(&record) {
            // Not recorded means not started: undo the VM.
            if let Some(vm) = pod.vm.lock().await.take() {
                let _ = vm.destroy().await;
            }
            return Err(e);
        }
        monitor_vm(self, pod);
        Ok(())
    }

    /// Stops the pod's containers and its VM; the pod stays listed as NOTREADY.
    pub async fn stop_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<(), RuntimeError> {
        let pod = match self.pod(id) {
            Ok(pod) => pod,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _guard = pod.lifecycle.lock().await;
        let record = pod.update(|r| {
            if r.state == PodState::Ready {
                r.state = PodState::NotReady;
                r.reason = "stopped".into();
            }
        });
        pod.set_agent(None);
        self.persist_pod(&record)?;
        mark_lost(self, &self.pod_containers(id), "pod sandbox stopped");
        let vm = pod.vm.lock().await.take();
        if let Some(vm) = vm {
            if let Err(e) = vm.destroy().await {
                let record = pod.update(|r| r.reason = format!("cleanup failed: {e}"));
                self.persist_pod(&record)?;
                return Err(e.into());
            }
        } else if let Some(vm_record) = record.vm.as_ref() {
            // Adopted VM that could not be reconnected, or a failed earlier stop.
            match PodVm::adopt(vm_record, &self.config.hypervisor).await {
                Ok(vm) => vm.destroy().await?,
                Err(failure) => failure.remains.destroy().await?,
            }
        }
        let record = pod.update(|r| r.vm = None);
        self.persist_pod(&record)?;
        Ok(())
    }

    /// Stops the pod if needed and forgets it and its containers.
    pub async fn remove_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<(), RuntimeError> {
        let pod = match self.pod(id) {
            Ok(pod) => pod,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_pod_sandbox(id).await?;
        let _guard = pod.lifecycle.lock().await;
        let containers = self.pod_containers(id);
        for c in &containers {
            self.release_container_files(&c.record());
        }
        let mut ids: Vec<(Kind, &str)> = vec![(Kind::Sandbox, id)];
        ids.extend(containers.iter().map(|c| (Kind::Container, c.id.as_str())));
        self.store.delete(&ids)?;
        {
            let mut names = self.names.lock();
            for c in &containers {
                let r = c.record();
                let meta = r.config.metadata.unwrap_or_default();
                names.release(&container_key(id, &meta.name, meta.attempt));
            }
            let meta = pod.record().config.metadata.unwrap_or_default();
            names.release(&pod_key(
                &meta.name,
                &meta.namespace,
                &meta.uid,
                meta.attempt,
            ));
        }
        let mut map = self.containers.write();
        for c in &containers {
            map.remove(&c.id);
        }
        drop(map);
        self.pods.write().remove(id);
        tracing::info!(pod_id = id, "pod sandbox removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_handler_is_named() {
        let config = cri::PodSandboxConfig::default();
        let err = validate(&config, "runc").unwrap_err();
        assert!(err.to_string().contains("runtime_handler") && err.to_string().contains("runc"));
    }

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
        assert!(validate(&config, "kata")
            .unwrap_err()
            .to_string()
            .contains("config.metadata.uid"));
        config.metadata.as_mut().unwrap().uid = "u".into();
        validate(&config, "").unwrap();
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
            validate(&config, "kata").unwrap();
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
            let err = validate(&config, "kata").unwrap_err();
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
            let mut config = named_pod();
            config.linux = Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(options),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let err = validate(&config, "kata").unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("namespace_options.{field}")),
                "{err}"
            );
        }
        let mut config = named_pod();
        config.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        validate(&config, "kata").unwrap();
    }
}
