//! The host's cgroup hierarchies, from the daemon's mount table: the unified (v2) one, mounted
//! at `/sys/fs/cgroup` on a v2 host or at `/sys/fs/cgroup/unified` on a hybrid one, and each
//! v1 hierarchy with the controllers (or `name=`) it carries.

use std::path::PathBuf;

use super::CgroupError;

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hierarchy {
    /// `unified` for cgroup v2, else the v1 controllers as mounted (`cpu,cpuacct`,
    /// `name=systemd`).
    pub controllers: String,
    /// Where it is mounted.
    pub mount: PathBuf,
}

impl Hierarchy {
    pub fn is_unified(&self) -> bool {
        self.controllers == UNIFIED
    }

    /// Whether this hierarchy carries the v1 controller `name`.
    pub fn has(&self, name: &str) -> bool {
        self.controllers.split(',').any(|c| c == name)
    }
}

pub const UNIFIED: &str = "unified";

/// Controller options of a v1 cgroup mount that are not controllers.
const NOT_CONTROLLERS: [&str; 7] = [
    "rw",
    "ro",
    "noprefix",
    "clone_children",
    "xattr",
    "cpuset_v2_mode",
    "favordynmods",
];

/// Every cgroup hierarchy mounted in the daemon's mount namespace, each once (the first
/// mount of its root; a bind mount of a sub-cgroup is not a hierarchy's root).
pub fn mounted() -> Result<Vec<Hierarchy>, CgroupError> {
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| CgroupError::Hierarchies(e.to_string()))?;
    let mut found: Vec<Hierarchy> = Vec::new();
    for m in mounts.0 {
        if m.root != "/" {
            continue;
        }
        let controllers = match m.fs_type.as_str() {
            "cgroup2" => UNIFIED.to_owned(),
            "cgroup" => {
                let mut names: Vec<String> = m
                    .super_options
                    .iter()
                    .filter(|(k, _)| !NOT_CONTROLLERS.contains(&k.as_str()))
                    .filter(|(k, _)| k.as_str() != "release_agent")
                    .map(|(k, v)| match (k.as_str(), v) {
                        ("name", Some(v)) => format!("name={v}"),
                        _ => k.clone(),
                    })
                    .collect();
                names.sort();
                names.join(",")
            }
            _ => continue,
        };
        if controllers.is_empty() || found.iter().any(|h| h.controllers == controllers) {
            continue;
        }
        found.push(Hierarchy {
            controllers,
            mount: m.mount_point,
        });
    }
    if found.is_empty() {
        return Err(CgroupError::Hierarchies(
            "no cgroup or cgroup2 file system is mounted".into(),
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_hierarchies() {
        let all = mounted().unwrap();
        assert!(!all.is_empty());
        for h in &all {
            assert!(h.mount.join("cgroup.procs").exists(), "{h:?}");
        }
    }
}
