//! The pod itself: hostname, the shared filesystem and pod-level storages, DNS
//! configuration, and teardown of everything at DestroySandbox.

use std::path::Path;

use crate::container::{validate_id, Containers};
use crate::error::{AgentError, Result};
use crate::storage::{self, Mounted, StorageSpec};

/// The pod's resolv.conf, which the shim binds into containers through their spec mounts.
pub const RESOLV_CONF: &str = "/run/vessel/sandbox/resolv.conf";

/// What CreateSandbox asks for, in domain terms.
pub struct SandboxParams {
    pub id: String,
    pub hostname: String,
    pub shared_fs: Option<StorageSpec>,
    pub storages: Vec<StorageSpec>,
    pub dns: Vec<String>,
    pub share_pid_namespace: bool,
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
    pub async fn create(&self, p: SandboxParams, containers: &Containers) -> Result<()> {
        validate_id("sandbox_id", &p.id)?;
        let mut active = self.active.lock().await;
        if let Some(a) = active.as_ref() {
            return Err(AgentError::AlreadyExists(format!(
                "sandbox {} already exists",
                a.id
            )));
        }
        if !p.hostname.is_empty() {
            nix::unistd::sethostname(&p.hostname).map_err(|e| {
                AgentError::InvalidArgument(format!("hostname {:?}: {e}", p.hostname))
            })?;
        }
        let specs: Vec<StorageSpec> = p.shared_fs.into_iter().chain(p.storages).collect();
        let mounted = storage::mount_all(&specs)?;
        if let Err(e) = write_resolv_conf(Path::new(RESOLV_CONF), &p.dns) {
            storage::unmount_all(&mounted);
            return Err(e);
        }
        if p.share_pid_namespace {
            if let Err(e) = containers.share_pid_namespace() {
                storage::unmount_all(&mounted);
                return Err(e);
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

/// Writes resolv.conf lines (always a file, possibly empty, so a bind mount of it works).
fn write_resolv_conf(path: &Path, lines: &[String]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::internal(dir.display(), e))?;
    }
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| AgentError::internal(path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/resolv.conf");
        let lines = vec![
            "nameserver 10.0.0.10".to_string(),
            "search svc.local".to_string(),
        ];
        write_resolv_conf(&path, &lines).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "nameserver 10.0.0.10\nsearch svc.local\n"
        );
        write_resolv_conf(&path, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
