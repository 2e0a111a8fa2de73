//! Cgroups of a test's own, as kubelet makes them: a pod's parent cgroup in every mounted
//! hierarchy (v1 controllers and the unified one), with v1 cpusets filled and v2 controllers
//! handed down; removed, with whatever a failed test left in it, when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vessel_shim::host_cgroup::hierarchy::{mounted, Hierarchy};

/// A cgroup parent of the test's own, like kubelet's pod cgroup, in every hierarchy;
/// removed (with anything left below it) when dropped.
pub struct ParentCgroup {
    /// The path below each hierarchy's root, as a pod's `cgroup_parent`.
    pub path: String,
}

impl ParentCgroup {
    /// `/vessel-test-<test pid>/<name>` in every hierarchy.
    pub fn new(name: &str) -> Self {
        let path = format!("/vessel-test-{}/{name}", std::process::id());
        for h in mounted().expect("cgroup hierarchies") {
            let dir = h.mount.join(path.trim_start_matches('/'));
            if h.is_unified() {
                // As kubelet does for its pod cgroups: the levels above hand the controllers
                // down (best effort: a root with processes of its own cannot).
                for level in [h.mount.clone(), dir.parent().unwrap().to_owned()] {
                    let _ = std::fs::create_dir_all(&level);
                    for c in ["+cpu", "+memory", "+pids"] {
                        let _ = std::fs::write(level.join("cgroup.subtree_control"), c);
                    }
                }
            }
            std::fs::create_dir_all(&dir).expect("create the parent cgroup");
            if h.has("cpuset") {
                // A v1 cpuset cgroup needs CPUs and nodes before anything can join below it.
                for level in [dir.parent().unwrap().to_owned(), dir.clone()] {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let parent = level.parent().unwrap().join(file);
                        let value = std::fs::read_to_string(parent).unwrap();
                        std::fs::write(level.join(file), value.trim()).unwrap();
                    }
                }
            }
        }
        Self { path }
    }

    /// [`crate::cri::pod_config`] of a pod whose `cgroup_parent` is this cgroup.
    pub fn pod_config(&self, name: &str, logs: &Path) -> vessel_protocols::cri::PodSandboxConfig {
        let mut config = crate::cri::pod_config(name, logs);
        config.linux = Some(vessel_protocols::cri::LinuxPodSandboxConfig {
            cgroup_parent: self.path.clone(),
            ..Default::default()
        });
        config
    }

    /// Each hierarchy with the parent's directory in it.
    pub fn dirs(&self) -> Vec<(Hierarchy, PathBuf)> {
        mounted()
            .expect("cgroup hierarchies")
            .into_iter()
            .map(|h| {
                let dir = h.mount.join(self.path.trim_start_matches('/'));
                (h, dir)
            })
            .collect()
    }
}

impl Drop for ParentCgroup {
    /// After a failed test the daemon may not have removed its pods' cgroups: what runs
    /// there (a VM, or a native pod's agent and containers, in cgroups below the pod's) is
    /// killed and the cgroups removed with the parent.
    fn drop(&mut self) {
        for (_, dir) in self.dirs() {
            kill_and_remove_tree(&dir);
            if let Some(top) = dir.parent() {
                let _ = std::fs::remove_dir(top);
            }
        }
    }
}

/// SIGKILLs every process in the cgroup `dir` and below, then removes the cgroups, deepest
/// first, waiting up to 5 s for the killed to leave.
pub fn kill_and_remove_tree(dir: &Path) {
    let mut tree = vec![dir.to_owned()];
    let mut i = 0;
    while i < tree.len() {
        if let Ok(entries) = std::fs::read_dir(&tree[i]) {
            tree.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    for cgroup in &tree {
        for pid in procs(cgroup) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for cgroup in tree.iter().rev() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while cgroup.exists() && std::fs::remove_dir(cgroup).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The pids in the cgroup `dir` (of one hierarchy).
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
