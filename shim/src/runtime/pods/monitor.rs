//! The monitor of a pod's VM: when its VMM exits unasked, the pod turns NOTREADY with how the
//! VM ended as the reason (the runtime's hook records its containers), and what is left of
//! the VM is removed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Pod, Pods};
use crate::hypervisor::{tail_file, VmExit};
use crate::pod_vm::PodVm;
use crate::runtime::PodState;

/// How often a pod's VMM process is checked.
const VM_POLL: Duration = Duration::from_millis(250);
/// Console lines logged when a pod VM ends unasked.
const CONSOLE_TAIL_LINES: usize = 30;

/// Follows a pod's VM; when its VMM exits unasked, the pod turns NOTREADY with how the VM
/// ended as the reason, its containers EXITED, and what is left of the VM (helper processes,
/// sockets, mounts, its runtime dir) is removed, as StopPodSandbox would.
pub(super) fn monitor_vm(pods: &Arc<Pods>, pod: &Arc<Pod>) {
    let pods: Weak<Pods> = Arc::downgrade(pods);
    let pod = pod.clone();
    tokio::spawn(async move {
        let exit = loop {
            tokio::time::sleep(VM_POLL).await;
            if !pod.is_ready() {
                return; // stopped on purpose
            }
            match pod.vm.lock().await.as_mut().map(PodVm::exit_status) {
                None => return,
                Some(None) => continue,
                Some(Some(exit)) => break exit,
            }
        };
        let Some(pods) = pods.upgrade() else {
            return;
        };
        vm_exited(&pods, &pod, exit).await;
    });
}

/// Records a VM that ended unasked and removes what is left of it.
async fn vm_exited(pods: &Pods, pod: &Pod, exit: VmExit) {
    let console = match pod.vm.lock().await.as_ref() {
        Some(vm) => tail_file(&vm.console_log(), CONSOLE_TAIL_LINES),
        None => String::new(),
    };
    if exit.is_panic() {
        tracing::error!(pod_id = %pod.id, %exit, %console, "guest kernel panic: pod VM down");
    } else {
        tracing::warn!(pod_id = %pod.id, %exit, %console, "pod VM exited unexpectedly");
    }
    vm_died(pods, pod, format!("pod VM exited unexpectedly: {exit}"));
    let _guard = pod.lifecycle.lock().await;
    // None: a StopPodSandbox came first and cleaned up.
    let Some(vm) = pod.vm.lock().await.take() else {
        return;
    };
    let record = match vm.tear_down().await {
        Ok(()) => pod.update(|r| r.vm = None),
        // The record keeps the VM, so StopPodSandbox tries again.
        Err(e) => pod.update(|r| r.reason = format!("{}; cleanup failed: {e}", r.reason)),
    };
    if let Err(e) = pods.persist(&record) {
        tracing::error!(pod_id = %pod.id, error = %e, "persist pod state");
    }
}

/// Records a pod whose VM is gone: NOTREADY with `reason`, containers EXITED.
fn vm_died(pods: &Pods, pod: &Pod, reason: String) {
    let record = pod.update(|r| {
        if r.state == PodState::Ready {
            r.state = PodState::NotReady;
            r.reason = reason.clone();
        }
    });
    pod.set_agent(None);
    if let Err(e) = pods.persist(&record) {
        tracing::error!(pod_id = %pod.id, error = %e, "persist pod state");
    }
    pods.vm_gone(&pod.id, &reason);
}
