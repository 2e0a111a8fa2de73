//! A pod in the runtime: its record, its VM and a lock that serializes its lifecycle
//! operations (operations on different pods run concurrently).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::pod_vm::{AgentClient, GuestInfo, PodVm};

use crate::runtime::{PodState, RuntimeError, SandboxRecord};

pub struct Pod {
    pub id: String,
    /// Held by RunPodSandbox, StopPodSandbox and RemovePodSandbox of this pod.
    pub lifecycle: tokio::sync::Mutex<()>,
    record: Mutex<SandboxRecord>,
    /// The VM while it runs; taken by StopPodSandbox.
    pub(super) vm: tokio::sync::Mutex<Option<PodVm>>,
    /// A clone of the VM's agent client and what its guest can do, for calls that must not
    /// wait on `vm`'s lock.
    agent: Mutex<Option<(AgentClient, Arc<GuestInfo>)>>,
}

impl Pod {
    pub(super) fn new(record: SandboxRecord) -> Self {
        Self {
            id: record.id.clone(),
            lifecycle: tokio::sync::Mutex::new(()),
            record: Mutex::new(record),
            vm: tokio::sync::Mutex::new(None),
            agent: Mutex::new(None),
        }
    }

    /// A snapshot of the record.
    pub fn record(&self) -> SandboxRecord {
        self.record.lock().clone()
    }

    /// Applies `f` to the record and returns the new value (the caller persists it).
    pub(super) fn update(&self, f: impl FnOnce(&mut SandboxRecord)) -> SandboxRecord {
        let mut record = self.record.lock();
        f(&mut record);
        record.clone()
    }

    /// Takes the agent of a VM that runs now, or forgets it (`None`).
    pub(super) fn set_agent(&self, vm: Option<&PodVm>) {
        *self.agent.lock() = vm.map(|vm| (vm.agent().clone(), Arc::clone(vm.guest())));
    }

    /// The agent of a ready pod.
    pub fn agent(&self) -> Result<AgentClient, RuntimeError> {
        self.ready().map(|(agent, _)| agent)
    }

    /// The agent of a ready pod and what its guest can do.
    pub fn ready(&self) -> Result<(AgentClient, Arc<GuestInfo>), RuntimeError> {
        let state = self.record.lock().state;
        match (state, self.agent.lock().clone()) {
            (PodState::Ready, Some(ready)) => Ok(ready),
            _ => Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                self.id
            ))),
        }
    }

    /// The pid of the pod VM's VMM while it runs.
    pub async fn vmm_pid(&self) -> Option<u32> {
        self.vm.lock().await.as_ref().and_then(PodVm::vmm_pid)
    }

    pub fn is_ready(&self) -> bool {
        self.record.lock().state == PodState::Ready
    }
}
