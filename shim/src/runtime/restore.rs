//! Daemon start: rebuild pods and containers from the store, adopt the VMs that still run,
//! and record what happened while the daemon was down (containers that exited, VMs that died).

use std::sync::Arc;

use super::names::{container_key, pod_key};
use super::watch::{mark_lost, monitor_vm, start_pumps, watch_exit};
use super::{
    Container, ContainerRecord, ContainerState, Pod, PodState, Runtime, RuntimeError, SandboxRecord,
};
use crate::logs::LogFile;
use crate::metadata::Kind;
use crate::pod_vm::PodVm;

pub(super) async fn restore(runtime: &Arc<Runtime>) -> Result<(), RuntimeError> {
    let pods: Vec<SandboxRecord> = runtime.store.all(Kind::Sandbox)?;
    let containers: Vec<ContainerRecord> = runtime.store.all(Kind::Container)?;
    for record in pods {
        let meta = record.config.metadata.clone().unwrap_or_default();
        let _ = runtime.names.lock().reserve(
            pod_key(&meta.name, &meta.namespace, &meta.uid, meta.attempt),
            &record.id,
        );
        let pod = Arc::new(Pod::new(record.clone()));
        runtime.pods.write().insert(pod.id.clone(), pod.clone());
        adopt_pod(runtime, &pod, &record).await;
    }
    for record in containers {
        restore_container(runtime, record);
    }
    tracing::info!(
        pods = runtime.pods().len(),
        containers = runtime.containers().len(),
        "state restored"
    );
    Ok(())
}

async fn adopt_pod(runtime: &Arc<Runtime>, pod: &Arc<Pod>, record: &SandboxRecord) {
    let (PodState::Ready, Some(vm_record)) = (record.state, record.vm.as_ref()) else {
        return;
    };
    match PodVm::adopt(vm_record, &runtime.config.hypervisor).await {
        Ok(vm) => {
            pod.set_agent(Some(vm.agent().clone()));
            *pod.vm.lock().await = Some(vm);
            monitor_vm(runtime, pod);
            tracing::info!(pod_id = %pod.id, "pod VM adopted");
        }
        Err(failure) => {
            let reason = format!("pod VM lost while vessel-shim was down: {}", failure.reason);
            tracing::warn!(pod_id = %pod.id, %reason);
            if let Err(e) = failure.remains.destroy().await {
                tracing::error!(pod_id = %pod.id, error = %e, "clean up lost pod VM");
            }
            let record = pod.update(|r| {
                r.state = PodState::NotReady;
                r.reason = reason;
                r.vm = None;
            });
            if let Err(e) = runtime.persist_pod(&record) {
                tracing::error!(pod_id = %pod.id, error = %e, "persist pod state");
            }
        }
    }
}

fn restore_container(runtime: &Arc<Runtime>, record: ContainerRecord) {
    let meta = record.config.metadata.clone().unwrap_or_default();
    let _ = runtime.names.lock().reserve(
        container_key(&record.sandbox_id, &meta.name, meta.attempt),
        &record.id,
    );
    let log = record
        .log_path
        .as_ref()
        .and_then(|p| match LogFile::open(p) {
            Ok(log) => Some(Arc::new(log)),
            Err(e) => {
                tracing::warn!(container_id = %record.id, error = %e, "reopen CRI log");
                None
            }
        });
    let state = record.state;
    let lease = runtime.images.lease(record.layers.clone());
    let container = Arc::new(Container::new(record, log, Some(lease)));
    runtime
        .containers
        .write()
        .insert(container.id.clone(), container.clone());
    if !matches!(state, ContainerState::Created | ContainerState::Running) {
        return;
    }
    match runtime.pod(&container.sandbox_id).and_then(|p| p.agent()) {
        Ok(agent) => {
            let pumps = start_pumps(&container, &agent);
            if state == ContainerState::Running {
                watch_exit(runtime, &container, agent, pumps);
            } else {
                container.set_pumps(pumps);
            }
        }
        Err(_) => mark_lost(
            runtime,
            std::slice::from_ref(&container),
            "pod VM lost while vessel-shim was down",
        ),
    }
}
