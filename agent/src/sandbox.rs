//! The pod itself: hostname, the shared filesystem and pod-level storages, the shared pid
//! namespace, and teardown of everything at DestroySandbox. (The pod's /etc files,
//! resolv.conf included, are the shim's: it writes them into the shared dir and binds them
//! into each container.)

use vessel_protocols::ttrpc::Code;

use crate::container::{validate_id, ContainerError, Containers, SpecError};
use crate::storage::{self, Mounted, StorageError, StorageSpec};

/// Why a pod could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Sysctl(#[from] crate::sysctls::SysctlError),
    #[error("sandbox {0} already exists")]
    Exists(String),
    #[error("hostname {0:?}: a pod on the host's UTS namespace cannot rename the host")]
    HostHostname(String),
    #[error("hostname {hostname:?}: {errno}")]
    Hostname {
        hostname: String,
        errno: nix::errno::Errno,
    },
}

impl SandboxError {
    /// The ttrpc status code the shim sees.
    pub fn code(&self) -> Code {
        match self {
            SandboxError::Spec(e) => e.code(),
            SandboxError::Storage(e) => e.code(),
            SandboxError::Container(e) => e.code(),
            SandboxError::Exists(_) => Code::ALREADY_EXISTS,
            SandboxError::Sysctl(_) => Code::INVALID_ARGUMENT,
            SandboxError::Hostname { .. } | SandboxError::HostHostname(_) => Code::INVALID_ARGUMENT,
        }
    }
}

/// What CreateSandbox asks for, in domain terms.
pub struct SandboxParams {
    pub id: String,
    pub hostname: String,
    pub shared_fs: Option<StorageSpec>,
    pub storages: Vec<StorageSpec>,
    pub share_pid_namespace: bool,
    /// The pod's sysctls to set once, for the pod.
    pub sysctls: Vec<(String, String)>,
}

struct Active {
    id: String,
    /// Shared fs first, then the storages, in mount order.
    mounted: Vec<Mounted>,
}

/// The pod: at most one per VM.
#[derive(Default)]
pub struct Sandbox {
    active: tokio::sync::Mutex<Option<Active>>,
}

impl Sandbox {
    /// Sets the pod up; a second call fails with ALREADY_EXISTS. On failure nothing stays
    /// mounted.
    pub async fn create(
        &self,
        p: SandboxParams,
        containers: &Containers,
    ) -> Result<(), SandboxError> {
        validate_id("sandbox_id", &p.id)?;
        let mut active = self.active.lock().await;
        if let Some(a) = active.as_ref() {
            return Err(SandboxError::Exists(a.id.clone()));
        }
        if !p.hostname.is_empty() {
            if !crate::init::host::may_set_hostname() {
                return Err(SandboxError::HostHostname(p.hostname));
            }
            nix::unistd::sethostname(&p.hostname).map_err(|errno| SandboxError::Hostname {
                hostname: p.hostname.clone(),
                errno,
            })?;
        }
        crate::sysctls::apply(&p.sysctls, crate::init::host::owned_namespaces())?;
        let specs: Vec<StorageSpec> = p.shared_fs.into_iter().chain(p.storages).collect();
        let mounted = storage::mount_all(&specs)?;
        if p.share_pid_namespace {
            if let Err(e) = containers.share_pid_namespace() {
                storage::unmount_all(&mounted);
                return Err(e.into());
            }
        }
        tracing::info!(sandbox_id = %p.id, hostname = %p.hostname, "sandbox created");
        *active = Some(Active { id: p.id, mounted });
        Ok(())
    }

    /// Removes every container, then unmounts the pod's storages and shared fs.
    pub async fn destroy(&self, containers: &Containers) {
        containers.remove_all().await;
        containers.stop_pod_init().await;
        storage::unmount_all_ephemeral();
        if let Some(a) = self.active.lock().await.take() {
            storage::unmount_all(&a.mounted);
            tracing::info!(sandbox_id = %a.id, "sandbox destroyed");
        }
    }
}
