//! The hypervisor layer: one small trait over the VMMs that can run a pod VM.
//!
//! Every backend gives the guest the same devices: a console (logged to a file), virtio-fs for
//! the pod's shared dir, and a hybrid-vsock Unix socket through which the agent is reached. The
//! rest of the shim never knows which VMM runs: the built-in `vessel-vmm` ([`builtin`]) or
//! QEMU ([`qemu`]).

pub mod builtin;
mod exit;
pub mod native;
mod probe;
mod process;
pub mod qemu;
mod requirements;
pub mod virtiofsd;
mod vm_processes;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

pub use exit::VmExit;
pub use probe::{probe_kvm, select, Backend, KvmSupport, Selection};
pub use process::{process_start_time, tail_file, ChildProcess, Exited, ProcessId, PASSED_FD};
pub use requirements::{missing, which};
pub use vm_processes::VmProcesses;

/// virtio-fs tag of the pod's shared directory.
pub const SHARED_FS_TAG: &str = "vessel-shared";

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("{what} not found at {path}")]
    MissingAsset { what: &'static str, path: PathBuf },
    #[error("spawn {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited before it was ready ({status}); its log ends with:\n{log_tail}")]
    HelperExited {
        program: String,
        status: String,
        log_tail: String,
    },
    #[error("{program} did not create {path} within {secs} s")]
    SocketTimeout {
        program: String,
        path: PathBuf,
        secs: u64,
    },
    #[error("prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cleanup(#[from] crate::host_mounts::MountError),
}

/// Everything a backend needs to start one pod VM.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    /// The pod (sandbox) id; names processes and logs.
    pub id: String,
    /// The pod's runtime dir: sockets, logs and the shared dir live here.
    pub run_dir: PathBuf,
    /// Host dir exported to the guest through virtio-fs with tag [`SHARED_FS_TAG`].
    pub shared_dir: PathBuf,
    /// Guest vsock context id; distinct per running VM.
    pub cid: u32,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra guest kernel parameters.
    pub kernel_params: String,
    /// The pod network's device; none for a VM without one.
    #[serde(default)]
    pub nic: Option<VmNic>,
    /// The host cgroup every process of the VM runs in; none: the daemon's own.
    #[serde(default)]
    pub cgroup: Option<crate::host_cgroup::HostCgroup>,
    /// A native pod's namespaces (see [`native`]); none for a VM.
    #[serde(default)]
    pub native: Option<native::NativeNamespaces>,
}

/// Where the shim reaches a pod's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// A VM's hybrid-vsock socket: `CONNECT <port>` picks the guest port.
    HybridVsock(PathBuf),
    /// A host agent's ttrpc socket; its streams are on `<path>.streams`.
    Unix(PathBuf),
}

/// A virtio-net device on a tap the shim opened in the pod's network namespace: the VMM
/// inherits the descriptor (as descriptor [`PASSED_FD`]) and needs no access to that namespace.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmNic {
    /// The tap's name in the pod's namespace (for logs and records).
    pub tap: String,
    /// The guest interface's MAC (`aa:bb:cc:dd:ee:ff`): the pod interface's, so the
    /// network's neighbours and bridges see one address.
    pub mac: String,
    /// The open tap, until the VMM has inherited it; never persisted (after a restart the
    /// VMM holds the only descriptor).
    #[serde(skip)]
    pub fd: Option<Arc<OwnedFd>>,
}

impl VmConfig {
    /// The hybrid-vsock socket the host connects to (`CONNECT <port>\n`).
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir.join("agent.vsock")
    }

    /// The guest's serial console, as a file.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }
}

/// What the daemon records of a running VM to adopt it after a restart.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmRecord {
    pub config: VmConfig,
    pub backend: Backend,
    /// Helper name → process.
    pub processes: std::collections::BTreeMap<String, ProcessId>,
}

impl VmRecord {
    /// The VMM's process, whichever backend runs the VM.
    pub fn vmm(&self) -> Option<ProcessId> {
        self.processes.get(self.backend.vmm_name()).copied()
    }
}

/// Console lines read to tell how a VM ended.
const EXIT_CONSOLE_LINES: usize = 60;

/// A backend's reading of its VMM's exit, refined with the guest console (see [`VmExit`]).
fn vm_exit(exit: VmExit, config: &VmConfig) -> VmExit {
    exit.with_console(&tail_file(&config.console_log(), EXIT_CONSOLE_LINES))
}

/// Builds the backend for a new VM.
pub fn new_vm(
    config: VmConfig,
    backend: Backend,
    hypervisor: &crate::config::HypervisorConfig,
    native_agent: &Path,
) -> Result<Box<dyn Hypervisor>, HypervisorError> {
    match backend {
        Backend::Native => Ok(Box::new(native::NativePod::new(
            config,
            native_agent.to_owned(),
        ))),
        Backend::Qemu { kvm } => Ok(Box::new(qemu::QemuVm::new(
            config,
            qemu::QemuBinaries::from(hypervisor),
            kvm,
        ))),
        Backend::Builtin => Ok(Box::new(builtin::BuiltinVm::new(
            config,
            builtin::BuiltinBinaries::from(hypervisor),
        ))),
    }
}

/// Takes over a VM started by an earlier run of the daemon. Helpers that are gone are simply
/// absent: [`Hypervisor::exit_status`] then reports the VM as exited.
pub fn adopt_vm(
    record: &VmRecord,
    hypervisor: &crate::config::HypervisorConfig,
    native_agent: &Path,
) -> Result<Box<dyn Hypervisor>, HypervisorError> {
    match record.backend {
        Backend::Native => Ok(Box::new(native::NativePod::adopt(
            record.config.clone(),
            native_agent.to_owned(),
            &record.processes,
        ))),
        Backend::Qemu { kvm } => Ok(Box::new(qemu::QemuVm::adopt(
            record.config.clone(),
            qemu::QemuBinaries::from(hypervisor),
            kvm,
            &record.processes,
        ))),
        Backend::Builtin => Ok(Box::new(builtin::BuiltinVm::adopt(
            record.config.clone(),
            builtin::BuiltinBinaries::from(hypervisor),
            &record.processes,
        ))),
    }
}

/// A running (or startable) pod VM. A backend says how it starts and what its VMM's exit
/// status means; the rest (the processes, their logs and records, the VM's sockets) is the
/// same for every backend and provided here over [`VmProcesses`].
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Spawns the VMM and its device helpers; returns once the VM is executing.
    async fn start(&mut self) -> Result<(), HypervisorError>;

    /// The VM's configuration.
    fn config(&self) -> &VmConfig;

    /// The VM's processes (the VMM and its helpers).
    fn processes(&self) -> &VmProcesses;

    fn processes_mut(&mut self) -> &mut VmProcesses;

    /// Which backend this is, as recorded for adoption.
    fn backend(&self) -> Backend;

    /// What the VMM's exit says of the guest.
    fn classify(&self, exited: Exited) -> VmExit;

    /// Stops the VM and every helper process; idempotent.
    async fn stop(&mut self) -> Result<(), HypervisorError> {
        self.processes_mut().stop().await;
        Ok(())
    }

    /// `None` while the VMM runs; how the VM ended once it exited.
    fn exit_status(&mut self) -> Option<VmExit> {
        let exited = self.processes_mut().vmm_exit()?;
        Some(vm_exit(self.classify(exited), self.config()))
    }

    /// Where the agent is reached: the guest's hybrid-vsock socket for a VM.
    fn agent_endpoint(&self) -> AgentEndpoint {
        AgentEndpoint::HybridVsock(self.config().agent_socket())
    }

    /// The guest console log.
    fn console_log(&self) -> PathBuf {
        self.config().console_log()
    }

    /// The VMM's own output (errors about devices, sockets, the command line).
    fn vmm_log(&self) -> PathBuf {
        self.processes().vmm_log()
    }

    /// The VMM's process id, while it runs.
    fn pid(&self) -> Option<u32> {
        self.processes().vmm_pid()
    }

    /// Waits up to `timeout` for the VMM to exit by itself (after the guest powered off).
    async fn wait_exit(&mut self, timeout: std::time::Duration) -> bool {
        self.processes_mut().wait_vmm_exit(timeout).await
    }

    /// What to persist to adopt this VM after a daemon restart.
    fn record(&self) -> VmRecord {
        VmRecord {
            config: self.config().clone(),
            backend: self.backend(),
            processes: self.processes().record(),
        }
    }
}

/// Fails with [`HypervisorError::MissingAsset`] unless the guest kernel and initramfs exist.
pub(crate) fn require_guest_image(config: &VmConfig) -> Result<(), HypervisorError> {
    require_file("guest kernel (hypervisor.kernel)", &config.kernel)?;
    require_file("guest initramfs (hypervisor.initrd)", &config.initrd)
}

/// Fails with [`HypervisorError::MissingAsset`] unless `path` exists.
fn require_file(what: &'static str, path: &Path) -> Result<(), HypervisorError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(HypervisorError::MissingAsset {
            what,
            path: path.to_owned(),
        })
    }
}
