//! `bind`: a recursive bind mount of a guest path (usually below the shared dir). A file
//! source gets a file mount point. Read-only needs a second, remounting call, since the
//! kernel ignores `MS_RDONLY` on the first bind.

use std::fs::OpenOptions;
use std::path::Path;

use nix::mount::MsFlags;

use super::{do_mount, ensure_dir, parse_options, StorageError, StorageSpec};

pub fn mount(spec: &StorageSpec) -> Result<(), StorageError> {
    if spec.source.is_empty() {
        return Err(StorageError::MissingSource { driver: "bind" });
    }
    let source = Path::new(&spec.source);
    let meta = std::fs::metadata(source)
        .map_err(|_| StorageError::MissingBindSource(source.to_path_buf()))?;
    if meta.is_dir() {
        ensure_dir(&spec.mount_point)?;
    } else {
        if let Some(parent) = spec.mount_point.parent() {
            ensure_dir(parent)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.mount_point)
            .map_err(|source| StorageError::MountPoint {
                path: spec.mount_point.clone(),
                source,
            })?;
    }
    let opts = parse_options(&spec.options, spec.read_only);
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    do_mount(&spec.source, &spec.mount_point, None, bind, None)?;
    let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    if !extra.is_empty() {
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
        if let Err(e) = do_mount("none", &spec.mount_point, None, remount, None) {
            super::unmount(&super::Mounted {
                mount_point: spec.mount_point.clone(),
                pod_scoped: false,
            });
            return Err(e);
        }
    }
    Ok(())
}
