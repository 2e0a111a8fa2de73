//! `virtiofs`: `mount -t virtiofs <tag> <mount_point>`; the source is the device's tag.

use super::{do_mount, ensure_dir, parse_options, StorageError, StorageSpec};

pub fn mount(spec: &StorageSpec) -> Result<(), StorageError> {
    if spec.source.is_empty() {
        return Err(StorageError::MissingSource { driver: "virtiofs" });
    }
    ensure_dir(&spec.mount_point)?;
    let opts = parse_options(&spec.options, spec.read_only);
    do_mount(
        &spec.source,
        &spec.mount_point,
        Some("virtiofs"),
        opts.flags,
        opts.data_string().as_deref(),
    )
}
