//! RunPodSandbox and StopPodSandbox, and the adoption of a running pod VM after a daemon
//! restart.
//!
//! Run is idempotent on (name, namespace, uid, attempt) and all-or-nothing: a failed start
//! leaves no VM, dir, namespace, CNI attachment, record or name behind. Stop of a missing pod
//! succeeds; stop detaches the pod from the pod network, removal unpins its namespace.

use std::sync::Arc;

use vessel_protocols::cri;

use super::config::{node_hostname, validate};
use super::monitor::monitor_vm;
use super::network;
use super::sizing;
use super::{Pod, Pods};
use crate::handlers::HandlerKind;
use crate::host_cgroup::CgroupError;
use crate::hypervisor::Backend;
use crate::metadata::Kind;
use crate::oci::{host_ipc, host_network, pod_hostname, shares_pid_namespace};
use crate::pod_vm::{PodVm, PodVmSpec, VmNetwork};
use crate::runtime::names::pod_key;
use crate::runtime::{new_id, now_ns, pod_files, PodState, RuntimeError, SandboxRecord};

impl Pods {
    /// Starts a pod VM for `config`; returns the pod id (the existing one for a repeat).
    pub async fn run(
        self: &Arc<Self>,
        mut config: cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, RuntimeError> {
        let (handler, kind) =
            crate::handlers::resolve(&self.vm.handlers, &self.vm.default_handler, handler)
                .map_err(|reason| RuntimeError::invalid("runtime_handler", reason))?;
        validate(&config, kind)?;
        // A native pod has no VM to size: kubelet's cgroup limits are all it gets.
        let size = match kind {
            HandlerKind::Vm => Some(sizing::vm_size(
                &config,
                &self.vm.hypervisor,
                sizing::host_cpus(),
            )?),
            HandlerKind::Native => None,
        };
        if config.hostname.is_empty() {
            // Recorded with the pod, so its containers keep the name it started with.
            config.hostname = node_hostname()?;
        }
        let meta = config.metadata.clone().unwrap_or_default();
        let key = pod_key(&meta.name, &meta.namespace, &meta.uid, meta.attempt);
        let id = new_id().map_err(|e| RuntimeError::Internal(format!("random id: {e}")))?;
        let cgroup_parent = config
            .linux
            .as_ref()
            .map_or("", |l| l.cgroup_parent.as_str());
        let cgroup = self
            .vm
            .cgroup_driver
            .pod_cgroup(cgroup_parent, &id)
            .map_err(|e| match e {
                CgroupError::BadParent { parent, reason } => {
                    RuntimeError::invalid("linux.cgroup_parent", format!("{parent:?} {reason}"))
                }
                other => RuntimeError::Internal(other.to_string()),
            })?;
        let reserved = self.names.lock().reserve(key.clone(), &id);
        if let Err(existing) = reserved {
            // A repeat: once any creation in flight has finished, answer with the same pod.
            if let Ok(pod) = self.get(&existing) {
                let _ = pod.lifecycle.lock().await;
            }
            return match self.get(&existing) {
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
            network: None,
            size,
            config,
        };
        let pod = Arc::new(Pod::new(record));
        let guard = pod.lifecycle.lock().await;
        self.table.write().insert(id.clone(), pod.clone());
        let result = self.boot(&pod, kind, cgroup).await;
        drop(guard);
        if let Err(e) = result {
            self.table.write().remove(&id);
            self.names.lock().release(&key);
            let _ = self.store.delete(&[(Kind::Sandbox, &id)]);
            return Err(e);
        }
        Ok(id)
    }

    /// The pod's network (unless networking is off), then its VM; a failure undoes both.
    async fn boot(
        self: &Arc<Self>,
        pod: &Arc<Pod>,
        kind: HandlerKind,
        cgroup: String,
    ) -> Result<(), RuntimeError> {
        // A hostNetwork pod (native handlers only) uses the host's network: no CNI.
        let network = if self.network.cni.enabled && !host_network(&pod.record().config) {
            let config = pod.record().config;
            let (net_record, vm_network) = network::attach(&self.network, &pod.id, &config).await?;
            let record = pod.update(|r| r.network = Some(net_record));
            if let Err(e) = self.persist(&record) {
                self.release_network(pod).await;
                return Err(e);
            }
            Some(vm_network)
        } else {
            None
        };
        let started = self.start_vm(pod, kind, network, cgroup).await;
        if started.is_err() {
            self.release_network(pod).await;
        }
        started
    }

    /// Undoes the network of a pod whose start failed; what cannot be undone is logged.
    async fn release_network(&self, pod: &Pod) {
        let Some(net) = pod.record().network else {
            return;
        };
        if let Err(e) = network::detach(&self.network, &pod.id, &net).await {
            tracing::error!(pod_id = %pod.id, error = %e, "CNI DEL of a pod that failed to start");
        }
        if let Err(e) = network::unpin(&net) {
            tracing::error!(pod_id = %pod.id, error = %e, "unpin the namespace of a pod that failed to start");
        }
        pod.update(|r| r.network = None);
    }

    async fn start_vm(
        self: &Arc<Self>,
        pod: &Arc<Pod>,
        kind: HandlerKind,
        network: Option<VmNetwork>,
        cgroup: String,
    ) -> Result<(), RuntimeError> {
        let record = pod.record();
        let backend = match kind {
            HandlerKind::Vm => self.vm.backend,
            HandlerKind::Native => Backend::Native,
        };
        if kind == HandlerKind::Vm && record.size.is_none() {
            return Err(RuntimeError::Internal(
                "pod recorded without a VM size".into(),
            ));
        }
        let (memory_mib, vcpus) = record
            .size
            .as_ref()
            .map_or((0, 0), |s| (s.memory_mib, s.vcpus));
        let sysctls =
            crate::oci::pod_sysctls(&record.config)?.for_agent(kind == HandlerKind::Native);
        let meta = record.config.metadata.clone().unwrap_or_default();
        let spec = PodVmSpec {
            id: pod.id.clone(),
            state_dir: self.vm.state_dir.clone(),
            hypervisor: self.vm.hypervisor.clone(),
            backend,
            // A pod on the host's network has the host's UTS namespace too: never rename it.
            hostname: if host_network(&record.config) {
                String::new()
            } else {
                pod_hostname(&record.config)
            },
            share_pid_namespace: shares_pid_namespace(&record.config),
            network,
            memory_mib,
            vcpus,
            cgroup: Some(cgroup.clone()),
            native_agent: self.vm.native_agent.clone(),
            host_network: host_network(&record.config),
            host_ipc: host_ipc(&record.config),
            sysctls,
        };
        tracing::info!(
            pod_id = %pod.id,
            pod = %format!("{}/{}", meta.namespace, meta.name),
            memory_mib,
            vcpus,
            ?backend,
            %cgroup,
            "starting pod VM"
        );
        let vm = PodVm::start(spec).await?;
        let ips = network::host_entries(record.network.as_ref());
        if let Err(e) = pod_files::write(vm.shared_dir(), &record.config, &ips) {
            let _ = vm.destroy().await;
            return Err(e);
        }
        let vm_record = vm.record();
        let record = pod.update(|r| {
            r.state = PodState::Ready;
            r.reason.clear();
            r.vm = Some(vm_record);
        });
        pod.set_agent(Some(&vm));
        *pod.vm.lock().await = Some(vm);
        if let Err(e) = self.persist(&record) {
            // Not recorded means not started: undo the VM.
            if let Some(vm) = pod.vm.lock().await.take() {
                let _ = vm.destroy().await;
            }
            return Err(e);
        }
        monitor_vm(self, pod);
        Ok(())
    }

    /// Stops the pod's VM (its containers are recorded as exited); the pod stays listed as
    /// NOTREADY.
    pub async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(pod) = self.find(id)? else {
            return Ok(());
        };
        let _guard = pod.lifecycle.lock().await;
        let record = pod.update(|r| {
            if r.state == PodState::Ready {
                r.state = PodState::NotReady;
                r.reason = "stopped".into();
            }
        });
        pod.set_agent(None);
        self.persist(&record)?;
        self.vm_gone(id, "pod sandbox stopped");
        let vm = pod.vm.lock().await.take();
        if let Some(vm) = vm {
            if let Err(e) = vm.destroy().await {
                let record = pod.update(|r| r.reason = format!("cleanup failed: {e}"));
                self.persist(&record)?;
                return Err(e.into());
            }
        } else if let Some(vm_record) = record.vm.as_ref() {
            // Adopted VM that could not be reconnected, or a failed earlier stop.
            match PodVm::adopt(vm_record, &self.vm.hypervisor, &self.vm.native_agent).await {
                Ok(vm) => vm.destroy().await?,
                Err(failure) => failure.remains.destroy().await?,
            }
        }
        let record = pod.update(|r| r.vm = None);
        self.persist(&record)?;
        if let Some(net) = record.network.as_ref().filter(|n| n.attachment.is_some()) {
            if let Err(e) = network::detach(&self.network, id, net).await {
                let record = pod.update(|r| r.reason = format!("network cleanup failed: {e}"));
                self.persist(&record)?;
                return Err(e.into());
            }
            let record = pod.update(|r| {
                if let Some(net) = r.network.as_mut() {
                    net.attachment = None;
                }
            });
            self.persist(&record)?;
        }
        Ok(())
    }

    /// Unpins a stopped pod's namespace (RemovePodSandbox, under the pod's lifecycle lock).
    pub(in crate::runtime) fn unpin_network(&self, pod: &Pod) -> Result<(), RuntimeError> {
        if let Some(net) = pod.record().network {
            network::unpin(&net)?;
            let record = pod.update(|r| r.network = None);
            self.persist(&record)?;
        }
        Ok(())
    }

    /// Lists a pod from its record at daemon start and adopts its VM if it was running; a
    /// VM that died meanwhile leaves the pod NOTREADY with the reason.
    pub(in crate::runtime) async fn restore(self: &Arc<Self>, record: SandboxRecord) {
        let meta = record.config.metadata.clone().unwrap_or_default();
        let key = pod_key(&meta.name, &meta.namespace, &meta.uid, meta.attempt);
        let _ = self.names.lock().reserve(key, &record.id);
        let pod = Arc::new(Pod::new(record.clone()));
        self.table.write().insert(pod.id.clone(), pod.clone());
        let (PodState::Ready, Some(vm_record)) = (record.state, record.vm.as_ref()) else {
            return;
        };
        match PodVm::adopt(vm_record, &self.vm.hypervisor, &self.vm.native_agent).await {
            Ok(vm) => {
                pod.set_agent(Some(&vm));
                *pod.vm.lock().await = Some(vm);
                monitor_vm(self, &pod);
                tracing::info!(pod_id = %pod.id, "pod VM adopted");
                if let Some(net) = record.network.as_ref() {
                    network::check(&self.network, &pod.id, net).await;
                }
            }
            Err(failure) => {
                let reason = format!("pod VM lost while vessel-shim was down: {}", failure.reason);
                tracing::warn!(pod_id = %pod.id, %reason);
                // A failed cleanup keeps the VM in the record, so StopPodSandbox tries again.
                let cleaned = failure.remains.destroy().await;
                if let Err(e) = &cleaned {
                    tracing::error!(pod_id = %pod.id, error = %e, "clean up lost pod VM");
                }
                let record = pod.update(|r| {
                    r.state = PodState::NotReady;
                    match &cleaned {
                        Ok(()) => {
                            r.reason = reason;
                            r.vm = None;
                        }
                        Err(e) => r.reason = format!("{reason}; cleanup failed: {e}"),
                    }
                });
                if let Err(e) = self.persist(&record) {
                    tracing::error!(pod_id = %pod.id, error = %e, "persist pod state");
                }
            }
        }
    }
}
