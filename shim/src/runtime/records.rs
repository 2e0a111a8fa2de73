//! What the runtime persists of pods and containers: the CRI config as given (fixed) and the
//! status (updated in place, one store transaction per change).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vessel_protocols::cri;

use crate::pod_vm::PodVmRecord;
use crate::runtime::pods::{PodNetworkRecord, VmSize};

/// Nanoseconds since the Unix epoch, as CRI timestamps are.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new random 64-hex-digit id, the form kubelet and crictl expect.
pub fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at_ns: i64,
    pub state: PodState,
    /// Why the pod is not ready (stopped, its VM died, cleanup failed).
    pub reason: String,
    /// The running VM, to adopt after a restart; None once stopped.
    pub vm: Option<PodVmRecord>,
    /// The pod's namespace and CNI attachment; None for a pod without a network.
    #[serde(default)]
    pub network: Option<PodNetworkRecord>,
    /// The VM's size and how it was derived; None for a pod recorded before sizes were.
    #[serde(default)]
    pub size: Option<VmSize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerState {
    pub fn to_cri(self) -> cri::ContainerState {
        match self {
            ContainerState::Created => cri::ContainerState::ContainerCreated,
            ContainerState::Running => cri::ContainerState::ContainerRunning,
            ContainerState::Exited => cri::ContainerState::ContainerExited,
            ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// The image as named, and the id it resolved to.
    pub image: String,
    pub image_ref: String,
    /// The image's first repo digest (`repo@sha256:…`), what CRI reports as `image_ref`.
    #[serde(default)]
    pub repo_digest: Option<String>,
    /// Absolute host path of the CRI log, if kubelet asked for one.
    pub log_path: Option<PathBuf>,
    /// The OCI process of the container, the base of its execs.
    pub process: oci_spec::runtime::Process,
    /// Host paths to unmount and delete on removal.
    pub rootfs: PathBuf,
    pub scratch: PathBuf,
    pub mount_dir: PathBuf,
    /// The image layer dirs under the rootfs (kept from garbage collection while it exists).
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub state: ContainerState,
}

impl ContainerRecord {
    /// Marks the container exited with a CRI reason derived from how it ended.
    pub fn set_exited(&mut self, exit_code: i32, oom_killed: bool, message: String, at_ns: i64) {
        self.state = ContainerState::Exited;
        self.exit_code = exit_code;
        // Guest and host clocks may differ slightly; an exit never precedes the start.
        self.finished_at_ns = at_ns.max(self.started_at_ns);
        self.reason = if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .into();
        self.message = message;
    }
}
