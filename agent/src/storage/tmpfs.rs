//! `tmpfs`: a fresh tmpfs; the source is ignored, options such as `size=` and `mode=` pass
//! through as filesystem data.

use super::{do_mount, ensure_dir, parse_options, StorageError, StorageSpec};

pub fn mount(spec: &StorageSpec) -> Result<(), StorageError> {
    ensure_dir(&spec.mount_point)?;
    let opts = parse_options(&spec.options, spec.read_only);
    do_mount(
        "tmpfs",
        &spec.mount_point,
        Some("tmpfs"),
        opts.flags,
        opts.data_string().as_deref(),
    )
}
