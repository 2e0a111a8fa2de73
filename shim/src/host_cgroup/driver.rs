//! The cgroup driver (cgroupfs or systemd, as kubelet's `cgroupDriver`) and what a pod's
//! `cgroup_parent` means under each: a path below every hierarchy's root for cgroupfs, a
//! slice name that systemd expands into nested slices (`a-b.slice` → `/a.slice/a-b.slice`).

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// `cgroup_driver` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverSetting {
    /// systemd where it is PID 1 (`/run/systemd/system` exists, as `sd_booted` checks), else
    /// cgroupfs.
    Auto,
    Cgroupfs,
    Systemd,
}

/// How pod cgroups are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// The parent of pods that name none: a cgroup of vessel's own, left in place.
const DEFAULT_PARENT_CGROUPFS: &str = "/vessel";
const DEFAULT_PARENT_SYSTEMD: &str = "vessel.slice";

impl DriverSetting {
    /// The driver this setting means on this host.
    pub fn resolve(self) -> CgroupDriver {
        match self {
            Self::Cgroupfs => CgroupDriver::Cgroupfs,
            Self::Systemd => CgroupDriver::Systemd,
            Self::Auto if std::path::Path::new("/run/systemd/system").is_dir() => {
                CgroupDriver::Systemd
            }
            Self::Auto => CgroupDriver::Cgroupfs,
        }
    }
}

impl CgroupDriver {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cgroupfs => "cgroupfs",
            Self::Systemd => "systemd",
        }
    }

    /// The path, below each hierarchy's root, of the cgroup holding pod `id`'s VM processes,
    /// under the pod's `cgroup_parent` (CRI `linux.cgroup_parent`; empty: vessel's own).
    pub fn pod_cgroup(self, cgroup_parent: &str, id: &str) -> Result<String, CgroupError> {
        match self {
            Self::Cgroupfs => {
                let parent = if cgroup_parent.is_empty() {
                    DEFAULT_PARENT_CGROUPFS
                } else {
                    cgroup_parent
                };
                Ok(format!("{}/vessel-{id}", clean_path(parent)?))
            }
            Self::Systemd => {
                let parent = if cgroup_parent.is_empty() {
                    DEFAULT_PARENT_SYSTEMD
                } else {
                    cgroup_parent
                };
                Ok(format!("{}/vessel-{id}.scope", expand_slice(parent)?))
            }
        }
    }
}

/// A cgroupfs parent as an absolute path without `.`, `..` or empty components (it names host
/// directories, so it may not climb out of the hierarchy).
fn clean_path(parent: &str) -> Result<String, CgroupError> {
    let bad = |reason: &str| CgroupError::BadParent {
        parent: parent.to_owned(),
        reason: reason.to_owned(),
    };
    if parent.contains('\0') {
        return Err(bad("contains NUL"));
    }
    let mut out = String::new();
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(bad("has a . or .. component"));
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        return Err(bad("names the root cgroup"));
    }
    Ok(out)
}

/// systemd's slice expansion: `kubepods-burstable-pod1.slice` →
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`; the root slice
/// `-.slice` is refused, as cgroupfs's `/` is.
fn expand_slice(slice: &str) -> Result<String, CgroupError> {
    let bad = |reason: &str| CgroupError::BadParent {
        parent: slice.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(name) = slice.strip_suffix(".slice") else {
        return Err(bad(
            "is not a systemd slice (the systemd cgroup driver takes names like kubepods-pod1.slice)",
        ));
    };
    if name == "-" {
        return Err(bad("names the root slice"));
    }
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@\\".contains(&b))
    {
        return Err(bad("is not a valid slice name"));
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_parents_are_paths_below_the_root() {
        let d = CgroupDriver::Cgroupfs;
        assert_eq!(
            d.pod_cgroup("/kubepods/burstable/pod1", "abc").unwrap(),
            "/kubepods/burstable/pod1/vessel-abc"
        );
        assert_eq!(
            d.pod_cgroup("kubepods//pod1/", "abc").unwrap(),
            "/kubepods/pod1/vessel-abc"
        );
        assert_eq!(d.pod_cgroup("", "abc").unwrap(), "/vessel/vessel-abc");
        for bad in ["/kubepods/../../etc", "/a/./b", "/", "a\0b"] {
            let e = d.pod_cgroup(bad, "abc").unwrap_err().to_string();
            assert!(e.contains("cgroup_parent"), "{e}");
        }
    }

    #[test]
    fn systemd_parents_expand_like_systemd() {
        let d = CgroupDriver::Systemd;
        assert_eq!(
            d.pod_cgroup("kubepods-burstable-pod1_2.slice", "abc").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/vessel-abc.scope"
        );
        assert_eq!(
            d.pod_cgroup("", "abc").unwrap(),
            "/vessel.slice/vessel-abc.scope"
        );
        for bad in [
            "/kubepods/pod1",
            "a--b.slice",
            "-a.slice",
            "a/b.slice",
            "a b.slice",
        ] {
            assert!(d.pod_cgroup(bad, "abc").is_err(), "{bad}");
        }
    }

    #[test]
    fn explicit_settings_resolve_to_themselves() {
        assert_eq!(DriverSetting::Cgroupfs.resolve(), CgroupDriver::Cgroupfs);
        assert_eq!(DriverSetting::Systemd.resolve(), CgroupDriver::Systemd);
    }
}
