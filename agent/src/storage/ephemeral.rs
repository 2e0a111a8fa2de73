//! `ephemeral`: a pod's memory-backed emptyDir. kubelet backs an emptyDir of medium Memory
//! with a tmpfs on the node; for a pod in a VM the tmpfs belongs in the guest, shared by every
//! container of the pod that mounts the volume. The first container's storage mounts it below
//! [`crate::paths::ephemeral`]; later ones find it mounted. It lives until the pod is torn down
//! ([`unmount_all_ephemeral`]), not with any one container.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{tmpfs, StorageError, StorageSpec};

/// Mounts the volume unless an earlier container of the pod did.
pub fn mount(spec: &StorageSpec) -> Result<(), StorageError> {
    let inside_root = spec.mount_point.parent() == Some(crate::paths::ephemeral().as_path())
        && spec.mount_point.file_name().is_some();
    if !inside_root {
        return Err(StorageError::OutsideEphemeralRoot(spec.mount_point.clone()));
    }
    if is_mount_point(&spec.mount_point) {
        tracing::debug!(mount_point = %spec.mount_point.display(), "already mounted for the pod");
        return Ok(());
    }
    tmpfs::mount(spec)
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(here), Some(Ok(parent))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    here.dev() != parent.dev()
}

/// Unmounts every memory-backed volume of the pod (teardown).
pub fn unmount_all_ephemeral() {
    let Ok(entries) = std::fs::read_dir(crate::paths::ephemeral()) else {
        return;
    };
    for entry in entries.flatten() {
        super::unmount(&super::Mounted {
            mount_point: entry.path(),
            pod_scoped: false,
        });
        let _ = std::fs::remove_dir(entry.path());
    }
}
