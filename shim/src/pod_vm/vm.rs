//! A pod's microVM: its runtime dir, the hypervisor running it and the connected agent.
//!
//! Start is all-or-nothing: a VM whose agent does not answer within the deadline is torn down
//! (processes, sockets, dir) and the error carries the tail of the guest console.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vessel_protocols::agent as api;
use vessel_protocols::guest::{check_id, Capability, IdError, GUEST_SHARED_DIR};

use super::agent_client::{AgentClient, AgentError, WaitError};
use super::cid::{CidAllocator, CidLease};
use super::console::{self, ConsoleWaitError};
use super::guest::{GuestInfo, Unsupported};
use super::network::{self, NetworkError, VmNetwork};
use crate::config::HypervisorConfig;
use crate::host_cgroup::{CgroupError, HostCgroup};
use crate::host_mounts::{self, MountError};
use crate::hypervisor::native::NativeNamespaces;
use crate::hypervisor::{
    adopt_vm, new_vm, tail_file, Backend, Exited, Hypervisor, HypervisorError, VmConfig, VmExit,
    VmRecord, SHARED_FS_TAG,
};
use crate::network::tap::PodInterface;

/// Console lines quoted in a start failure.
const CONSOLE_TAIL_LINES: usize = 25;
/// How long a powered-off guest's VMM gets to exit before it is stopped.
const POWER_OFF_GRACE: Duration = Duration::from_secs(3);
/// Health check of an adopted VM's agent.
const ADOPT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("sandbox id {id:?} {reason}")]
    InvalidId { id: String, reason: IdError },
    #[error("pod VM {0} already exists")]
    AlreadyExists(String),
    #[error("create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(
        "agent of pod {id} did not come up within {secs} s: {cause}\nconsole tail:\n{console}\nVMM log tail:\n{vmm_log}"
    )]
    AgentNotReady {
        id: String,
        secs: u64,
        cause: WaitError,
        console: String,
        vmm_log: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("pod {id}: {source}")]
    Unsupported { id: String, source: Unsupported },
    #[error(transparent)]
    Cleanup(#[from] MountError),
    #[error("pod {id} network: {source}")]
    Network { id: String, source: NetworkError },
    #[error("pod {id} host cgroup: {source}")]
    Cgroup { id: String, source: CgroupError },
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct PodVmSpec {
    pub id: String,
    /// Runtime state root (`--state`, default /run/vessel); the VM lives in `<state>/pods/<id>`.
    pub state_dir: PathBuf,
    pub hypervisor: HypervisorConfig,
    pub backend: Backend,
    /// The guest's hostname (the pod's).
    pub hostname: String,
    /// Containers of the pod share one pid namespace (CRI NamespaceMode POD).
    pub share_pid_namespace: bool,
    /// The pod network the VM joins; `None` for a VM without a NIC.
    pub network: Option<VmNetwork>,
    /// Guest RAM and vCPUs (the pod's size).
    pub memory_mib: u32,
    pub vcpus: u32,
    /// The host cgroup (path below each hierarchy's root) the VM's processes run in; `None`:
    /// the daemon's own.
    pub cgroup: Option<String>,
    /// The host agent of a native pod ([`Backend::Native`]).
    pub native_agent: PathBuf,
    /// A native pod shares the host's network (and UTS) namespace: hostNetwork.
    pub host_network: bool,
    /// A native pod shares the host's IPC namespace: hostIPC.
    pub host_ipc: bool,
    /// The pod's sysctls the agent sets once, for the pod (see `oci::PodSysctls::for_agent`).
    pub sysctls: std::collections::HashMap<String, String>,
}

/// A running pod VM with a healthy agent.
pub struct PodVm {
    id: String,
    run_dir: PathBuf,
    shared_dir: PathBuf,
    hypervisor: Box<dyn Hypervisor>,
    agent: AgentClient,
    /// Shared with the pod's handle (`runtime::pods::Pod`), which reads it without the VM's lock.
    guest: Arc<GuestInfo>,
    boot_time: Duration,
    _cid: CidLease,
}

/// Checks a sandbox id before it names files and processes (the guest contract's rule).
pub fn validate_id(id: &str) -> Result<(), VmError> {
    check_id(id).map_err(|reason| VmError::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

impl PodVm {
    /// Boots the VM in its host cgroup and waits until its agent is healthy; a failure
    /// leaves no process, dir or cgroup.
    pub async fn start(spec: PodVmSpec) -> Result<Self, VmError> {
        validate_id(&spec.id)?;
        let run_dir = spec.state_dir.join("pods").join(&spec.id);
        if run_dir.exists() {
            return Err(VmError::AlreadyExists(spec.id));
        }
        // A native pod's agent joins a leaf, beside its containers' cgroups.
        let leaf = (spec.backend == Backend::Native).then_some("agent");
        let cgroup = match spec
            .cgroup
            .as_deref()
            .map(|path| HostCgroup::create(path, leaf))
            .transpose()
        {
            Ok(cgroup) => cgroup,
            Err(source) => {
                return Err(VmError::Cgroup {
                    id: spec.id,
                    source,
                })
            }
        };
        let id = spec.id.clone();
        let started = Self::start_in(spec, run_dir, cgroup.clone()).await;
        if let (Err(_), Some(cgroup)) = (&started, cgroup) {
            if let Err(e) = cgroup.remove().await {
                tracing::error!(pod_id = %id, error = %e, "rollback left the VM's cgroup behind");
            }
        }
        started
    }

    async fn start_in(
        spec: PodVmSpec,
        run_dir: PathBuf,
        cgroup: Option<HostCgroup>,
    ) -> Result<Self, VmError> {
        let shared_dir = run_dir.join("shared");
        std::fs::create_dir_all(&shared_dir).map_err(|source| VmError::Dir {
            path: shared_dir.clone(),
            source,
        })?;
        if let Err(e) = host_mounts::make_shared_mountpoint(&shared_dir) {
            let _ = host_mounts::remove_dir_unmounted(&run_dir);
            return Err(e.into());
        }
        let native = spec.backend == Backend::Native;
        let (nic, pod_interface) = match &spec.network {
            // A native pod's agent joins the namespace itself: no tap, no NIC.
            Some(_) if native => (None, None),
            Some(net) => match network::prepare(net).await {
                Ok((nic, pod)) => (Some(nic), Some(pod)),
                Err(source) => {
                    let _ = host_mounts::remove_dir_unmounted(&run_dir);
                    return Err(VmError::Network {
                        id: spec.id,
                        source,
                    });
                }
            },
            None => (None, None),
        };
        let cid = CidAllocator::global().allocate();
        let config = VmConfig {
            id: spec.id.clone(),
            run_dir: run_dir.clone(),
            shared_dir: shared_dir.clone(),
            cid: cid.cid(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: spec.hypervisor.kernel.clone(),
            initrd: spec.hypervisor.initrd.clone(),
            kernel_params: spec.hypervisor.kernel_params.clone(),
            nic,
            cgroup,
            native: native.then(|| NativeNamespaces {
                netns: spec.network.as_ref().map(|n| n.netns.clone()),
                own_net: !spec.host_network,
                own_uts: !spec.host_network,
                own_ipc: !spec.host_ipc,
            }),
        };
        let mut hypervisor =
            match new_vm(config, spec.backend, &spec.hypervisor, &spec.native_agent) {
                Ok(h) => h,
                Err(e) => {
                    let _ = host_mounts::remove_dir_unmounted(&run_dir);
                    return Err(e.into());
                }
            };
        let timeout = Duration::from_secs(spec.hypervisor.agent_ready_timeout_secs);
        let started = Instant::now();
        let booted = match boot(hypervisor.as_mut(), &spec.id, timeout).await {
            Ok(agent) => setup_sandbox(&agent, &spec, pod_interface.as_ref())
                .await
                .map(|guest| (agent, guest)),
            Err(e) => Err(e),
        };
        match booted {
            Ok((agent, guest)) => {
                let boot_time = started.elapsed();
                tracing::info!(pod_id = %spec.id, cid = cid.cid(), ?boot_time, "pod VM ready");
                Ok(Self {
                    id: spec.id,
                    run_dir,
                    shared_dir,
                    hypervisor,
                    agent,
                    guest: Arc::new(guest),
                    boot_time,
                    _cid: cid,
                })
            }
            Err(err) => {
                tracing::warn!(pod_id = %spec.id, error = %err, "pod VM start failed; rolling back");
                let _ = hypervisor.stop().await;
                if let Err(e) = host_mounts::remove_dir_unmounted(&run_dir) {
                    tracing::error!(pod_id = %spec.id, error = %e, "rollback left files behind");
                }
                Err(err)
            }
        }
    }

    /// Takes over a VM started by an earlier run of the daemon and reconnects to its agent.
    pub async fn adopt(
        record: &PodVmRecord,
        hypervisor: &HypervisorConfig,
        native_agent: &Path,
    ) -> Result<Self, AdoptFailure> {
        let remains = |hv, reason: String| AdoptFailure {
            reason,
            remains: VmRemains {
                id: record.vm.config.id.clone(),
                run_dir: record.vm.config.run_dir.clone(),
                hypervisor: hv,
                cgroup: record.vm.config.cgroup.clone(),
            },
        };
        let mut hv = match adopt_vm(&record.vm, hypervisor, native_agent) {
            Ok(hv) => hv,
            Err(e) => {
                return Err(AdoptFailure {
                    reason: e.to_string(),
                    remains: VmRemains {
                        id: record.vm.config.id.clone(),
                        run_dir: record.vm.config.run_dir.clone(),
                        hypervisor: None,
                        cgroup: record.vm.config.cgroup.clone(),
                    },
                })
            }
        };
        if let Some(exit) = hv.exit_status() {
            let exit = host_oom(exit, hv.config());
            return Err(remains(Some(hv), exit.to_string()));
        }
        let agent = match AgentClient::connect(&hv.agent_endpoint()).await {
            Ok(agent) => agent,
            Err(e) => return Err(remains(Some(hv), format!("agent unreachable: {e}"))),
        };
        if let Err(e) = agent.check_with(ADOPT_CHECK_TIMEOUT).await {
            return Err(remains(Some(hv), format!("agent unhealthy: {e}")));
        }
        let guest = match GuestInfo::query(&agent).await {
            Ok(guest) => guest,
            Err(e) => return Err(remains(Some(hv), format!("agent details: {e}"))),
        };
        let missing = guest.missing();
        if !missing.is_empty() {
            // A VM booted before the node's guest image was upgraded: kept, with what its
            // agent cannot do refused per request.
            tracing::warn!(
                pod_id = %record.vm.config.id,
                agent_version = %guest.agent_version,
                missing = ?missing.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "adopted pod VM runs an older guest agent"
            );
        }
        let config = &record.vm.config;
        if let Some(cgroup) = &config.cgroup {
            match hv.pid() {
                Some(pid) if cgroup.contains(pid) => {
                    tracing::info!(pod_id = %config.id, cgroup = %cgroup.path, "pod VM's host cgroup re-found")
                }
                pid => {
                    tracing::warn!(pod_id = %config.id, cgroup = %cgroup.path, ?pid, "the adopted VMM is not in its host cgroup")
                }
            }
        }
        Ok(Self {
            id: config.id.clone(),
            run_dir: config.run_dir.clone(),
            shared_dir: config.shared_dir.clone(),
            hypervisor: hv,
            agent,
            guest: Arc::new(guest),
            boot_time: Duration::from_millis(record.boot_time_ms),
            _cid: CidAllocator::global().claim(config.cid),
        })
    }

    /// What the daemon persists to adopt this VM after a restart.
    pub fn record(&self) -> PodVmRecord {
        PodVmRecord {
            vm: self.hypervisor.record(),
            boot_time_ms: u64::try_from(self.boot_time.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// `None` while the VMM runs; how the VM ended once it exited. A VMM killed while its
    /// cgroup counts OOM kills was killed by the host's OOM killer (the pod cgroup's limit).
    pub fn exit_status(&mut self) -> Option<VmExit> {
        let exit = self.hypervisor.exit_status()?;
        Some(host_oom(exit, self.hypervisor.config()))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// What the guest's agent said it is and can do.
    pub fn guest(&self) -> &Arc<GuestInfo> {
        &self.guest
    }

    /// Host side of the guest's shared dir (mounted at the agent's shared_fs mount point).
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn console_log(&self) -> PathBuf {
        self.hypervisor.console_log()
    }

    /// The VMM's pid while it runs.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.hypervisor.pid()
    }

    /// Spawn → agent healthy.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Asks the agent to clean up and power off, then stops every process and deletes the
    /// pod's runtime dir. Nothing of the VM remains afterwards, even if the agent is gone.
    pub async fn destroy(mut self) -> Result<(), VmError> {
        let mut req = api::DestroySandboxRequest::new();
        req.power_off = true;
        match self.agent.destroy_sandbox(req).await {
            Ok(_) => {
                if !self.hypervisor.wait_exit(POWER_OFF_GRACE).await {
                    tracing::warn!(pod_id = %self.id, "VM did not power off; stopping it");
                }
            }
            Err(e) => tracing::warn!(pod_id = %self.id, error = %e, "agent DestroySandbox failed"),
        }
        self.tear_down().await
    }

    /// Stops what is left of a VM whose guest is gone (no agent to ask) and deletes the pod's
    /// runtime dir.
    pub async fn tear_down(self) -> Result<(), VmError> {
        VmRemains {
            id: self.id,
            run_dir: self.run_dir,
            cgroup: self.hypervisor.config().cgroup.clone(),
            hypervisor: Some(self.hypervisor),
        }
        .destroy()
        .await
    }
}

/// A VMM that SIGKILL ended (or that is gone, adopted, with no status) while its cgroup
/// counts OOM kills was killed by the host's OOM killer: the pod cgroup's limit.
fn host_oom(exit: VmExit, config: &VmConfig) -> VmExit {
    let sigkill = VmExit::Killed(Exited::Signal(nix::sys::signal::Signal::SIGKILL as i32));
    match config.cgroup.as_ref() {
        Some(cgroup) if (exit == sigkill || exit == VmExit::Unknown) && cgroup.oom_kills() > 0 => {
            VmExit::OutOfMemory {
                cgroup: cgroup.path.clone(),
            }
        }
        _ => exit,
    }
}

/// A persisted pod VM, for [`PodVm::adopt`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PodVmRecord {
    pub vm: VmRecord,
    pub boot_time_ms: u64,
}

/// Why a VM could not be adopted, and what of it is left to clean up.
pub struct AdoptFailure {
    pub reason: String,
    pub remains: VmRemains,
}

/// What is left of a pod VM that no longer runs (or is being torn down): helper processes,
/// mounts, its runtime dir and its host cgroup.
pub struct VmRemains {
    id: String,
    run_dir: PathBuf,
    hypervisor: Option<Box<dyn Hypervisor>>,
    cgroup: Option<HostCgroup>,
}

impl VmRemains {
    /// Stops every process of the VM, deletes its runtime dir and removes its cgroup.
    /// Each step is tried even when an earlier one failed; the first failure is returned.
    pub async fn destroy(self) -> Result<(), VmError> {
        let stopped = match self.hypervisor {
            Some(mut hv) => hv.stop().await.map_err(VmError::from),
            None => Ok(()),
        };
        // Whatever the stop missed is killed with the cgroup.
        let removed = match &self.cgroup {
            Some(cgroup) => cgroup.remove().await.map_err(|source| VmError::Cgroup {
                id: self.id.clone(),
                source,
            }),
            None => Ok(()),
        };
        let deleted = host_mounts::remove_dir_unmounted(&self.run_dir).map_err(VmError::from);
        stopped.and(removed).and(deleted)?;
        tracing::info!(pod_id = %self.id, "pod VM destroyed");
        Ok(())
    }
}

/// Asks the agent what it can do, refuses a pod it cannot run, then mounts the shared dir in
/// the guest, sets the pod's identity and configures its network.
async fn setup_sandbox(
    agent: &AgentClient,
    spec: &PodVmSpec,
    pod_interface: Option<&PodInterface>,
) -> Result<GuestInfo, VmError> {
    let guest = GuestInfo::query(agent).await?;
    if spec.share_pid_namespace {
        guest
            .require(
                Capability::PodPidNamespace,
                "a pod that shares its pid namespace",
            )
            .map_err(|source| VmError::Unsupported {
                id: spec.id.clone(),
                source,
            })?;
    }
    if !spec.sysctls.is_empty() {
        guest
            .require(Capability::PodSysctls, "a pod with sysctls")
            .map_err(|source| VmError::Unsupported {
                id: spec.id.clone(),
                source,
            })?;
    }
    let native = spec.backend == Backend::Native;
    let mut req = api::CreateSandboxRequest::new();
    req.sysctls = spec.sysctls.clone();
    req.sandbox_id = spec.id.clone();
    req.hostname = spec.hostname.clone();
    req.share_pid_namespace = spec.share_pid_namespace;
    if native {
        // On the host: the clock is the host's and the shared dir is already in place.
        agent.create_sandbox(req).await?;
        return Ok(guest);
    }
    // The guest booted with the RTC's whole seconds: give it the host's time, so times the
    // agent reports (process exits) compare with the host's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut time = api::SetGuestDateTimeRequest::new();
    time.sec = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    time.nsec = i64::from(now.subsec_nanos());
    agent.set_guest_date_time(time).await?;
    let mut shared = api::Storage::new();
    shared.driver = "virtiofs".into();
    shared.source = SHARED_FS_TAG.into();
    shared.mount_point = GUEST_SHARED_DIR.into();
    req.shared_fs = protobuf::MessageField::some(shared);
    agent.create_sandbox(req).await?;
    if let (Some(net), Some(pod)) = (&spec.network, pod_interface) {
        let device = network::configure_guest(agent, &guest, net, pod)
            .await
            .map_err(|source| VmError::Network {
                id: spec.id.clone(),
                source,
            })?;
        tracing::info!(pod_id = %spec.id, device, addresses = ?net.addresses, "pod network configured in the guest");
    }
    Ok(guest)
}

/// Starts the hypervisor and waits for the agent, failing early if the VMM exits.
async fn boot(
    hypervisor: &mut dyn Hypervisor,
    id: &str,
    timeout: Duration,
) -> Result<AgentClient, VmError> {
    let deadline = Instant::now() + timeout;
    hypervisor.start().await?;
    let socket = hypervisor.agent_endpoint();
    let console = hypervisor.console_log();
    let secs = timeout.as_secs();
    let vmm_log = hypervisor.vmm_log();
    let mut alive = || {
        hypervisor
            .exit_status()
            .map(|s| format!("VMM exited ({s})"))
    };
    let waited = match console::wait_agent_ready_line(&console, deadline, &mut alive).await {
        Ok(()) => AgentClient::wait_ready(&socket, deadline, &mut alive).await,
        Err(ConsoleWaitError::VmExited(reason)) => Err(WaitError::VmExited(reason)),
        Err(deadline @ ConsoleWaitError::Deadline) => {
            Err(WaitError::Deadline(deadline.to_string()))
        }
    };
    waited.map_err(|cause| VmError::AgentNotReady {
        id: id.to_owned(),
        secs,
        cause,
        console: tail_file(&console, CONSOLE_TAIL_LINES),
        vmm_log: tail_file(&vmm_log, CONSOLE_TAIL_LINES),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "pod-1", "x.y_z", &"a".repeat(128)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", &"a".repeat(129), "é"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
