//! CreateContainer: image → overlay rootfs in the pod's shared dir, CRI mounts bound there,
//! the OCI spec derived from the CRI config, the container created by the agent. Any failure
//! undoes what was done.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sha2::Digest as _;
use vessel_protocols::agent as api;
use vessel_protocols::cri;
use vessel_protocols::guest::Capability;

use super::output::start_pumps;
use super::{Container, Containers};
use crate::host_mounts;
use crate::image;
use crate::logs::LogFile;
use crate::oci::{self, ContainerSpecInput, GuestMount, GUEST_SHARED_DIR};
use crate::pod_vm::VmError;
use crate::runtime::names::container_key;
use crate::runtime::{new_id, now_ns, pod_files, ContainerRecord, ContainerState, RuntimeError};

/// The absolute CRI log path: `log_directory/log_path`, which must not escape the directory.
pub(super) fn log_path(
    pod: &cri::PodSandboxConfig,
    container: &cri::ContainerConfig,
) -> Result<Option<PathBuf>, RuntimeError> {
    if container.log_path.is_empty() {
        return Ok(None);
    }
    if pod.log_directory.is_empty() {
        return Err(RuntimeError::invalid(
            "log_path",
            "set but the pod has no log_directory",
        ));
    }
    let rel = Path::new(&container.log_path);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(RuntimeError::invalid(
            "log_path",
            format!("{:?} escapes the pod's log directory", container.log_path),
        ));
    }
    Ok(Some(Path::new(&pod.log_directory).join(rel)))
}

/// One CreateContainer in progress: the new container's id, its pod (id, recorded config and
/// agent), its CRI config and the image it names.
struct NewContainer<'a> {
    id: &'a str,
    pod_id: &'a str,
    pod_config: &'a cri::PodSandboxConfig,
    config: &'a cri::ContainerConfig,
    image_name: &'a str,
    agent: &'a crate::pod_vm::AgentClient,
    /// Where a native pod's container runs on the host; none in a VM.
    host: Option<oci::HostPlacement>,
}

/// A native pod's container runs in `<pod's host cgroup>/<id>`, beside the agent's leaf and
/// under kubelet's pod cgroup (`linux.cgroup_parent`), as runc's containers run beside the
/// pause container; removing the pod's cgroup takes whatever is left of them. None for a pod
/// VM's container (the guest has its own cgroups).
fn host_placement(pod: &crate::runtime::SandboxRecord, id: &str) -> Option<oci::HostPlacement> {
    let vm = pod.vm.as_ref()?;
    if vm.vm.backend != crate::hypervisor::Backend::Native {
        return None;
    }
    let pod_cgroup = vm.vm.config.cgroup.as_ref()?;
    Some(oci::HostPlacement {
        cgroup: format!("{}/{id}", pod_cgroup.path.trim_end_matches('/')),
        host_pid: oci::host_pid(&pod.config),
    })
}

/// Host-side files of a container being created, removed again if creation fails.
struct Staged {
    dir: PathBuf,
    rootfs: PathBuf,
    scratch: PathBuf,
    mount_dir: PathBuf,
}

impl Staged {
    fn undo(&self) {
        let _ = image::unmount_rootfs(&self.rootfs);
        let _ = host_mounts::remove_dir_unmounted(&self.dir);
        let _ = host_mounts::remove_dir_unmounted(&self.scratch);
    }
}

impl Containers {
    /// Creates a container in a ready pod; returns its id.
    pub async fn create(
        self: &Arc<Self>,
        pod_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let pod = self.pods.get(pod_id)?;
        let (agent, guest) = pod.ready()?;
        // The pod's config as RunPodSandbox recorded it (with the hostname it filled in), not
        // the copy the request carries: the pod's VM was built from this one.
        let pod_config = pod.record().config;
        if oci::shares_pid_namespace(&pod_config) {
            // A pod adopted from before a guest image upgrade may run an agent that cannot
            // join the pod's pid namespace by the contract's path.
            guest
                .require(
                    Capability::PodPidNamespace,
                    "a container in a pod that shares its pid namespace",
                )
                .map_err(|source| VmError::Unsupported {
                    id: pod_id.to_owned(),
                    source,
                })?;
        }
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| RuntimeError::invalid("config.metadata", "missing"))?;
        if meta.name.is_empty() {
            return Err(RuntimeError::invalid("config.metadata.name", "empty"));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(RuntimeError::invalid("config.image.image", "empty"));
        }
        let log_path = log_path(&pod_config, &config)?;
        let id = new_id().map_err(|e| RuntimeError::Internal(format!("random id: {e}")))?;
        let key = container_key(pod_id, &meta.name, meta.attempt);
        let reserved = self.names.lock().reserve(key.clone(), &id);
        if let Err(existing) = reserved {
            return Err(RuntimeError::AlreadyExists(format!(
                "container name {:?} (attempt {}) is already used by {existing} in pod {pod_id}",
                meta.name, meta.attempt
            )));
        }
        let new = NewContainer {
            id: &id,
            pod_id,
            pod_config: &pod_config,
            config: &config,
            image_name: &image_name,
            agent: &agent,
            host: host_placement(&pod.record(), &id),
        };
        let created = self.create_in_pod(&new, log_path).await;
        match created {
            Ok(container) => {
                let container = Arc::new(container);
                container.set_pumps(start_pumps(&container, &agent));
                self.table.write().insert(id.clone(), container);
                Ok(id)
            }
            Err(e) => {
                self.names.lock().release(&key);
                Err(e)
            }
        }
    }

    async fn create_in_pod(
        &self,
        new: &NewContainer<'_>,
        log_path: Option<PathBuf>,
    ) -> Result<Container, RuntimeError> {
        let NewContainer {
            id,
            pod_id,
            config,
            image_name,
            ..
        } = *new;
        let (image, lease) =
            self.images
                .resolve_and_lease(image_name)?
                .ok_or_else(|| RuntimeError::NotFound {
                    what: "image",
                    id: format!("{image_name} (config.image.image; pull it first)"),
                })?;
        let layers = lease.dirs().to_vec();
        let pod_dir = self.state_dir.join("pods").join(pod_id);
        let shared = pod_dir.join("shared");
        let dir = shared.join(id);
        let staged = Staged {
            rootfs: dir.join("rootfs"),
            mount_dir: dir.join("mounts"),
            scratch: pod_dir.join("scratch").join(id),
            dir,
        };
        let result = self
            .stage_and_create(new, &image.defaults, &layers, &staged)
            .await;
        match result {
            Ok(process) => {
                let log = match &log_path {
                    Some(path) => Some(Arc::new(LogFile::open(path).map_err(|e| {
                        RuntimeError::Internal(format!("open log {}: {e}", path.display()))
                    })?)),
                    None => None,
                };
                let record = ContainerRecord {
                    id: id.to_owned(),
                    sandbox_id: pod_id.to_owned(),
                    config: config.clone(),
                    image: image_name.to_owned(),
                    image_ref: image.id.clone(),
                    repo_digest: image.repo_digests.first().cloned(),
                    log_path,
                    process,
                    rootfs: staged.rootfs.clone(),
                    scratch: staged.scratch.clone(),
                    mount_dir: staged.dir.clone(),
                    layers,
                    created_at_ns: now_ns(),
                    started_at_ns: 0,
                    finished_at_ns: 0,
                    exit_code: 0,
                    reason: String::new(),
                    message: String::new(),
                    state: ContainerState::Created,
                };
                self.persist(&record)?;
                Ok(Container::new(record, log, Some(lease)))
            }
            Err(e) => {
                staged.undo();
                Err(e)
            }
        }
    }

    async fn stage_and_create(
        &self,
        new: &NewContainer<'_>,
        image: &image::ImageDefaults,
        layers: &[PathBuf],
        staged: &Staged,
    ) -> Result<oci_spec::runtime::Process, RuntimeError> {
        let NewContainer {
            id,
            pod_config,
            config,
            agent,
            ref host,
            ..
        } = *new;
        let internal =
            |what: &str, e: &dyn std::fmt::Display| RuntimeError::Internal(format!("{what}: {e}"));
        std::fs::create_dir_all(&staged.rootfs).map_err(|e| internal("create rootfs dir", &e))?;
        image::mount_rootfs(layers, &staged.scratch, &staged.rootfs)
            .map_err(|e| internal("mount rootfs", &e))?;
        let (guest_mounts, storages) = bind_cri_mounts(
            id,
            config,
            &staged.mount_dir,
            &staged.scratch.join("mounts"),
            host.is_some(),
        )?;
        let pod_files = pod_files::guest_paths();
        let spec = oci::build_container_spec(&ContainerSpecInput {
            container_id: id,
            pod: pod_config,
            container: config,
            image,
            rootfs_host: &staged.rootfs,
            rootfs_guest: oci::guest_rootfs(id),
            mounts: guest_mounts,
            etc_hosts: Some(pod_files.hosts),
            resolv_conf: Some(pod_files.resolv_conf),
            hostname_file: Some(pod_files.hostname),
            host: host.clone(),
        })
        .map_err(RuntimeError::from)?;
        let mut req = api::CreateContainerRequest::new();
        req.container_id = id.to_owned();
        req.spec_json = oci::to_json(&spec).map_err(RuntimeError::from)?;
        req.stdin = config.stdin;
        req.storages = storages;
        agent.create_container(req).await?;
        Ok(spec.process().clone().unwrap_or_default())
    }
}

/// Where kubelet puts a pod's emptyDir volumes; one of medium Memory is a tmpfs mounted there.
const EMPTY_DIR: &str = "/volumes/kubernetes.io~empty-dir/";

/// Where the guest mounts a pod's memory-backed volumes (the agent's `ephemeral` storages).
const GUEST_EPHEMERAL_ROOT: &str = "/run/vessel/ephemeral";

/// Bind-mounts each CRI mount's host path into the container's mount dir (inside the shared
/// dir), read-only where asked, private ones by way of `staging_dir` (outside it); returns the guest view of each, and the guest storages to
/// mount: an emptyDir of medium Memory becomes a tmpfs of the guest, shared by the pod's
/// containers, instead of the node's tmpfs reached through virtio-fs.
fn bind_cri_mounts(
    id: &str,
    config: &cri::ContainerConfig,
    mount_dir: &Path,
    staging_dir: &Path,
    on_host: bool,
) -> Result<(Vec<GuestMount>, Vec<api::Storage>), RuntimeError> {
    let mut out = Vec::new();
    let mut storages = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        let field = format!("mounts[{i}].host_path");
        if !m.host_path.starts_with('/') {
            return Err(RuntimeError::invalid(
                field,
                format!("{:?} is not absolute", m.host_path),
            ));
        }
        if !m.container_path.starts_with('/') {
            return Err(RuntimeError::invalid(
                format!("mounts[{i}].container_path"),
                format!("{:?} is not absolute", m.container_path),
            ));
        }
        let source = Path::new(&m.host_path);
        // On the host (a native pod) kubelet's own tmpfs is bound as it is, so kubelet's
        // accounting, size limit and eviction see what the pod writes, as with runc.
        let memory_volume = if on_host {
            None
        } else {
            memory_empty_dir(source)?
        };
        if let Some(storage) = memory_volume {
            out.push(GuestMount {
                container_path: m.container_path.clone(),
                guest_source: storage.mount_point.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
            });
            storages.push(storage);
            continue;
        }
        let is_file = source.metadata().map(|md| !md.is_dir()).unwrap_or(false);
        if !source.exists() {
            std::fs::create_dir_all(source).map_err(|e| {
                RuntimeError::invalid(field.clone(), format!("create {}: {e}", m.host_path))
            })?;
        }
        let target = mount_dir.join(i.to_string());
        let staging = staging_dir.join(i.to_string());
        let bidirectional = m.propagation == cri::MountPropagation::PropagationBidirectional as i32;
        let propagation = if m.propagation == cri::MountPropagation::PropagationPrivate as i32 {
            host_mounts::Propagation::Private { staging: &staging }
        } else if bidirectional && on_host {
            // As containerd: the container's mounts reach the host only through a shared
            // mount, so one that is not is refused rather than silently one-way.
            let resolved = source.canonicalize().unwrap_or_else(|_| source.to_owned());
            match host_mounts::shared_mount_of(&resolved) {
                Ok(Ok(())) => host_mounts::Propagation::Shared,
                Ok(Err(mount_point)) => {
                    return Err(RuntimeError::invalid(
                        format!("mounts[{i}].propagation"),
                        format!(
                            "BIDIRECTIONAL needs {} on a shared mount; its mount {} is not \
                             (mount --make-rshared it)",
                            m.host_path,
                            mount_point.display()
                        ),
                    ))
                }
                Err(e) => return Err(RuntimeError::Internal(e.to_string())),
            }
        } else {
            // HostToContainer; in a VM Bidirectional is refused with the spec.
            host_mounts::Propagation::FromHost
        };
        host_mounts::bind(source, &target, is_file, m.readonly, propagation)
            .map_err(|e| RuntimeError::invalid(field, e.to_string()))?;
        out.push(GuestMount {
            container_path: m.container_path.clone(),
            guest_source: format!("{GUEST_SHARED_DIR}/{id}/mounts/{i}"),
            readonly: m.readonly,
            propagation: m.propagation,
        });
    }
    Ok((out, storages))
}

/// The guest storage for `source` when it is an emptyDir of medium Memory (a tmpfs mount point
/// below kubelet's emptyDir dir), with the node tmpfs's size limit.
fn memory_empty_dir(source: &Path) -> Result<Option<api::Storage>, RuntimeError> {
    if !source.to_string_lossy().contains(EMPTY_DIR) {
        return Ok(None);
    }
    let Some(tmpfs) =
        host_mounts::tmpfs_at(source).map_err(|e| RuntimeError::Internal(e.to_string()))?
    else {
        return Ok(None);
    };
    // One guest dir per volume: named by the host path, which is unique per pod and volume.
    let digest = sha2::Sha256::digest(source.as_os_str().as_encoded_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut storage = api::Storage::new();
    storage.driver = "ephemeral".into();
    storage.source = "tmpfs".into();
    storage.mount_point = format!("{GUEST_EPHEMERAL_ROOT}/{name}");
    storage.options = ["nosuid", "nodev", "mode=1777"]
        .into_iter()
        .map(String::from)
        .chain(tmpfs.size)
        .collect();
    Ok(Some(storage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(dir: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            log_directory: dir.into(),
            ..Default::default()
        }
    }

    fn ctr(path: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            log_path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn log_path_stays_in_the_log_directory() {
        assert_eq!(
            log_path(&pod("/var/log/pods/x"), &ctr("c/0.log")).unwrap(),
            Some(PathBuf::from("/var/log/pods/x/c/0.log"))
        );
        assert_eq!(log_path(&pod("/l"), &ctr("")).unwrap(), None);
        for bad in ["../x.log", "/etc/passwd", "c/../../x"] {
            let err = log_path(&pod("/l"), &ctr(bad)).unwrap_err();
            assert!(err.to_string().contains("log_path"), "{err}");
        }
        assert!(log_path(&pod(""), &ctr("c.log")).is_err());
    }
}
