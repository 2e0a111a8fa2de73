//! Guest filesystems the shim asks for (`Storage` messages): one handler per driver
//! (`virtiofs`, `bind`, `tmpfs`, `ephemeral`), plus the mount-option parsing and unmounting they share.
//! A mounted storage is a [`Mounted`], which the owner (sandbox or container) unmounts when
//! it goes away.

mod bind;
mod ephemeral;
mod tmpfs;
mod virtiofs;

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};

use vessel_protocols::ttrpc::Code;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage driver {0:?} is not supported (virtiofs, bind, tmpfs, ephemeral)")]
    UnknownDriver(String),
    #[error("ephemeral storage mount_point {0:?} must be directly below {root}", root = crate::paths::ephemeral().display())]
    OutsideEphemeralRoot(PathBuf),
    #[error("storage mount_point {0:?} must be an absolute path")]
    RelativeMountPoint(String),
    #[error("storage {driver} needs a source")]
    MissingSource { driver: &'static str },
    #[error("bind source {0} does not exist")]
    MissingBindSource(PathBuf),
    #[error("create mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mount {fstype} {source_name} on {target}: {errno}")]
    Mount {
        fstype: String,
        source_name: String,
        target: PathBuf,
        errno: Errno,
    },
}

impl StorageError {
    /// The ttrpc status code the shim sees: a bad Storage message is INVALID_ARGUMENT.
    pub fn code(&self) -> Code {
        match self {
            StorageError::UnknownDriver(_)
            | StorageError::RelativeMountPoint(_)
            | StorageError::MissingSource { .. }
            | StorageError::OutsideEphemeralRoot(_) => Code::INVALID_ARGUMENT,
            StorageError::MissingBindSource(_) => Code::NOT_FOUND,
            StorageError::MountPoint { .. } | StorageError::Mount { .. } => Code::INTERNAL,
        }
    }
}

/// The filesystem kinds the agent mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Virtiofs,
    Bind,
    Tmpfs,
    /// A tmpfs shared by the pod's containers (a memory-backed emptyDir).
    Ephemeral,
}

impl Driver {
    pub fn parse(name: &str) -> Result<Self, StorageError> {
        match name {
            "virtiofs" => Ok(Driver::Virtiofs),
            "bind" => Ok(Driver::Bind),
            "tmpfs" => Ok(Driver::Tmpfs),
            "ephemeral" => Ok(Driver::Ephemeral),
            other => Err(StorageError::UnknownDriver(other.to_string())),
        }
    }
}

/// A storage request, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSpec {
    pub driver: Driver,
    pub source: String,
    pub mount_point: PathBuf,
    pub options: Vec<String>,
    pub read_only: bool,
}

impl StorageSpec {
    /// Validates the wire fields.
    pub fn new(
        driver: &str,
        source: &str,
        mount_point: &str,
        options: Vec<String>,
        read_only: bool,
    ) -> Result<Self, StorageError> {
        let driver = Driver::parse(driver)?;
        if !mount_point.starts_with('/') {
            return Err(StorageError::RelativeMountPoint(mount_point.to_string()));
        }
        Ok(StorageSpec {
            driver,
            source: source.to_string(),
            mount_point: PathBuf::from(mount_point),
            options,
            read_only,
        })
    }
}

/// A storage that is mounted; [`unmount`] undoes it, unless it is the pod's (an ephemeral
/// volume, unmounted with the pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub mount_point: PathBuf,
    pub pod_scoped: bool,
}

pub use ephemeral::unmount_all_ephemeral;

/// Mounts one storage.
pub fn mount(spec: &StorageSpec) -> Result<Mounted, StorageError> {
    let span = tracing::debug_span!("storage", driver = ?spec.driver, mount_point = %spec.mount_point.display());
    let _e = span.enter();
    match spec.driver {
        Driver::Virtiofs => virtiofs::mount(spec)?,
        Driver::Bind => bind::mount(spec)?,
        Driver::Tmpfs => tmpfs::mount(spec)?,
        Driver::Ephemeral => ephemeral::mount(spec)?,
    }
    tracing::info!(source = %spec.source, "storage mounted");
    Ok(Mounted {
        mount_point: spec.mount_point.clone(),
        pod_scoped: spec.driver == Driver::Ephemeral,
    })
}

/// Mounts `specs` in order; on failure unmounts what this call mounted.
pub fn mount_all(specs: &[StorageSpec]) -> Result<Vec<Mounted>, StorageError> {
    let mut done = Vec::with_capacity(specs.len());
    for spec in specs {
        match mount(spec) {
            Ok(m) => done.push(m),
            Err(e) => {
                unmount_all(&done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Unmounts a storage; a busy one is detached lazily. Errors are logged, not returned:
/// teardown goes on.
pub fn unmount(m: &Mounted) {
    if m.pod_scoped {
        return;
    }
    let target = &m.mount_point;
    match umount2(target, MntFlags::empty()) {
        Ok(()) => tracing::debug!(target = %target.display(), "unmounted"),
        Err(Errno::EBUSY) => match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => tracing::info!(target = %target.display(), "busy; detached lazily"),
            Err(e) => tracing::warn!(target = %target.display(), error = %e, "unmount failed"),
        },
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => {
            tracing::debug!(target = %target.display(), "not mounted")
        }
        Err(e) => tracing::warn!(target = %target.display(), error = %e, "unmount failed"),
    }
}

/// Unmounts in reverse order.
pub fn unmount_all(mounted: &[Mounted]) {
    for m in mounted.iter().rev() {
        unmount(m);
    }
}

/// Mount options split into flags and filesystem data (`mode=0755,size=…`).
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub flags: MsFlags,
    pub data: Vec<String>,
}

/// Splits mount(8)-style options; `read_only` adds `MS_RDONLY`.
pub fn parse_options(options: &[String], read_only: bool) -> Options {
    let mut out = Options {
        flags: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let opt = opt.trim();
        let (set, clear) = match opt {
            "" | "defaults" => continue,
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => continue,
            data => {
                out.data.push(data.to_string());
                continue;
            }
        };
        out.flags.insert(set);
        out.flags.remove(clear);
    }
    if read_only {
        out.flags.insert(MsFlags::MS_RDONLY);
    }
    out
}

impl Options {
    /// The data string for mount(2), `None` when empty.
    pub fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// Creates a directory mount point (and its parents).
pub fn ensure_dir(path: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(path).map_err(|source| StorageError::MountPoint {
        path: path.to_path_buf(),
        source,
    })
}

/// mount(2) with the error naming what was mounted where.
pub fn do_mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StorageError> {
    nix::mount::mount(Some(source), target, fstype, flags, data).map_err(|errno| {
        StorageError::Mount {
            fstype: fstype.unwrap_or("bind").to_string(),
            source_name: source.to_string(),
            target: target.to_path_buf(),
            errno,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o = parse_options(
            &strings(&["nosuid,nodev", "mode=0755", "size=64m", "ro"]),
            false,
        );
        assert!(o
            .flags
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY));
        assert_eq!(o.data_string().as_deref(), Some("mode=0755,size=64m"));
        let o = parse_options(&strings(&["ro", "rw"]), false);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        let o = parse_options(&[], true);
        assert_eq!(o.flags, MsFlags::MS_RDONLY);
        assert_eq!(o.data_string(), None);
    }

    #[test]
    fn spec_validation() {
        assert!(matches!(
            StorageSpec::new("nfs", "x", "/a", vec![], false),
            Err(StorageError::UnknownDriver(_))
        ));
        assert!(matches!(
            StorageSpec::new("tmpfs", "", "rel/a", vec![], false),
            Err(StorageError::RelativeMountPoint(_))
        ));
        let s = StorageSpec::new("bind", "/src", "/dst", vec![], true).unwrap();
        assert_eq!(s.driver, Driver::Bind);
        let e = StorageError::UnknownDriver("nfs".into());
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("\"nfs\""), "{e}");
    }
}
