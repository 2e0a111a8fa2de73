//! The host cgroup of a pod's VM: the VMM, virtiofsd and the vsock helper run in one cgroup
//! under the pod's `cgroup_parent` (as Kata's `sandbox_cgroup_only`), so the pod cgroup that
//! kubelet sizes (the containers' limits plus the RuntimeClass overhead) accounts, limits and
//! evicts the whole VM.
//!
//! The cgroup exists in every mounted hierarchy (each v1 controller and the unified one, so
//! v2, v1 and hybrid hosts alike); a helper joins it in the forked child before it execs
//! ([`HostCgroup::procs_files`]), so no instruction of the VMM runs outside it. It is removed
//! with the pod and re-found from the pod's record after a daemon restart. [`driver`] says what
//! the parent's name means (cgroupfs path or systemd slice); [`hierarchy`] finds the mounts.
//!
//! With the systemd driver the cgroup is created in the slice's directory directly, as with
//! cgroupfs (no transient scope through D-Bus: kubelet created the pod's slice already).

pub mod driver;
pub mod hierarchy;
mod usage;

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use driver::{CgroupDriver, DriverSetting};
pub use hierarchy::Hierarchy;
pub use usage::CgroupUsage;

/// How long removal waits for the killed processes to leave the cgroup.
const REMOVE_WAIT: Duration = Duration::from_secs(5);
/// The v2 controllers a pod's VM cgroup gets, where its parent has them.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroup_parent {parent:?} {reason}")]
    BadParent { parent: String, reason: String },
    #[error("find the host's cgroup hierarchies: {0}")]
    Hierarchies(String),
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path} still has processes after {secs} s")]
    Busy { path: PathBuf, secs: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One pod VM's cgroup, as persisted with the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroup {
    /// The path below each hierarchy's root (`/kubepods/pod1/vessel-<id>`).
    pub path: String,
    /// The hierarchies it was created in.
    pub hierarchies: Vec<Hierarchy>,
    /// A child cgroup the processes join instead (`<path>/<leaf>`): a native pod's agent sits
    /// beside its containers' cgroups, since v2 keeps processes out of a cgroup whose children
    /// have controllers. None: they join `path` itself (a VM's processes).
    #[serde(default)]
    pub leaf: Option<String>,
}

impl HostCgroup {
    /// Creates the cgroup `path` (and any missing parent) in every mounted hierarchy; a
    /// failure removes what was created.
    pub fn create(path: &str, leaf: Option<&str>) -> Result<Self, CgroupError> {
        let hierarchies = hierarchy::mounted()?;
        let this = Self {
            path: path.to_owned(),
            hierarchies,
            leaf: leaf.map(str::to_owned),
        };
        for h in &this.hierarchies {
            if let Err(e) = make(h, &this.member_path()) {
                let _ = this.remove_now();
                return Err(e);
            }
        }
        Ok(this)
    }

    /// The path of the cgroup the processes join (the leaf, if any).
    fn member_path(&self) -> String {
        match &self.leaf {
            Some(leaf) => format!("{}/{leaf}", self.path.trim_end_matches('/')),
            None => self.path.clone(),
        }
    }

    /// The cgroup's directory in `h`.
    pub fn dir(&self, h: &Hierarchy) -> PathBuf {
        h.mount.join(self.path.trim_start_matches('/'))
    }

    /// Each hierarchy's `cgroup.procs` of this cgroup, for a child to write `0` to (which
    /// moves the writer) before it execs.
    pub fn procs_files(&self) -> Vec<CString> {
        self.hierarchies
            .iter()
            .filter_map(|h| {
                let dir = h.mount.join(self.member_path().trim_start_matches('/'));
                CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()
            })
            .collect()
    }

    /// Whether `pid` is where this cgroup's processes go (its leaf, if any) in every hierarchy
    /// (from `/proc/<pid>/cgroup`).
    pub fn contains(&self, pid: u32) -> bool {
        let member = self.member_path();
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        self.hierarchies.iter().all(|h| {
            text.lines().any(|line| {
                let mut parts = line.splitn(3, ':');
                let (Some(_), Some(controllers), Some(path)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return false;
                };
                let same = if h.is_unified() {
                    controllers.is_empty()
                } else {
                    let mut listed: Vec<&str> = controllers.split(',').collect();
                    listed.sort_unstable();
                    listed.join(",") == h.controllers
                };
                same && path == member
            })
        })
    }

    /// Whether every hierarchy still has the cgroup's directory.
    pub fn exists(&self) -> bool {
        self.hierarchies.iter().all(|h| self.dir(h).is_dir())
    }

    /// How often the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.hierarchies
            .iter()
            .filter_map(|h| usage::oom_kills(h, &self.dir(h)))
            .max()
            .unwrap_or(0)
    }

    /// CPU, memory and process figures of the cgroup (what its processes cost the host).
    pub fn usage(&self) -> CgroupUsage {
        usage::read(self)
    }

    /// Removes the cgroup from every hierarchy; a cgroup already gone is fine. Whatever still
    /// runs in it (a helper the VM's stop did not reach: it was not adopted, or it forked) is
    /// SIGKILLed first, then removal waits for the processes to leave. Parents stay: they are
    /// kubelet's (or vessel's default).
    pub async fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_WAIT;
        self.kill_all();
        loop {
            match self.remove_now() {
                Err(CgroupError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(CgroupError::Io { path, source })
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    return Err(CgroupError::Busy {
                        path,
                        secs: REMOVE_WAIT.as_secs(),
                    })
                }
                other => return other,
            }
        }
    }

    /// SIGKILLs every process in the cgroup and the cgroups below it, in any hierarchy.
    fn kill_all(&self) {
        for h in &self.hierarchies {
            for dir in subtree(&self.dir(h)) {
                let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                    continue;
                };
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    tracing::warn!(cgroup = %dir.display(), pid, "killing a process left in a pod's cgroup");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    /// Removes the cgroup and every cgroup below it (deepest first) from each hierarchy.
    fn remove_now(&self) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            for dir in subtree(&self.dir(h)).into_iter().rev() {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&dir)(e)),
                }
            }
        }
        Ok(())
    }
}

/// `dir` and every cgroup directory below it, parents before children.
pub(super) fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = std::fs::read_dir(&all[i]) {
            let mut children: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            children.sort();
            all.extend(children);
        }
        i += 1;
    }
    all
}

/// Creates `path` in `h`, parents first. In v2, the levels vessel creates and the leaf's
/// parent (kubelet's pod cgroup) hand down the controllers the VM's figures need; levels above
/// belong to kubelet or systemd and are left as they are. A v1 cpuset cgroup with no CPUs or
/// memory nodes (a new one, or one a concurrent creator has not filled yet) could take no
/// process: every level on the way gets the nearest filled ancestor's.
fn make(h: &Hierarchy, path: &str) -> Result<(), CgroupError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut dir = h.mount.clone();
    let mut cpuset = if h.has("cpuset") {
        Some(read_cpuset(&dir)?)
    } else {
        None
    };
    for (i, part) in parts.iter().enumerate() {
        let parent = dir.clone();
        dir.push(part);
        let leaf = i + 1 == parts.len();
        let exists = dir.is_dir();
        if h.is_unified() && (!exists || leaf) {
            enable_v2_controllers(&parent);
        }
        if !exists {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        if let Some(inherited) = cpuset.as_mut() {
            let own = read_cpuset(&dir)?;
            for (file, value, inherit) in [
                ("cpuset.cpus", &own.0, &inherited.0),
                ("cpuset.mems", &own.1, &inherited.1),
            ] {
                if value.is_empty() {
                    let target = dir.join(file);
                    std::fs::write(&target, inherit).map_err(io_err(&target))?;
                }
            }
            if !own.0.is_empty() && !own.1.is_empty() {
                *inherited = own;
            }
        }
    }
    Ok(())
}

/// A v1 cpuset cgroup's CPUs and memory nodes (empty: none yet).
fn read_cpuset(dir: &Path) -> Result<(String, String), CgroupError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path)
            .map(|v| v.trim().to_owned())
            .map_err(io_err(&path))
    };
    Ok((read("cpuset.cpus")?, read("cpuset.mems")?))
}

/// Best effort: a parent with processes of its own cannot hand controllers down (v2's rule
/// of no internal processes); the limits above still apply, only the VM's own figures are
/// then read from the nearest parent that has them.
fn enable_v2_controllers(parent: &Path) {
    let Ok(available) = std::fs::read_to_string(parent.join("cgroup.controllers")) else {
        return;
    };
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    for c in V2_CONTROLLERS {
        let has = |text: &str| text.split_whitespace().any(|x| x == c);
        if has(&available) && !has(&enabled) {
            if let Err(e) = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{c}")) {
                tracing::debug!(cgroup = %parent.display(), controller = c, error = %e, "enable controller");
            }
        }
    }
}

/// Moves the calling (forked, not yet exec'd) process into the cgroup whose `cgroup.procs`
/// files are `files`; only async-signal-safe system calls. (Called elsewhere, it would move
/// the daemon itself.)
pub(crate) fn join_in_child(files: &[CString]) -> std::io::Result<()> {
    files.iter().try_for_each(|file| write_in_child(file, b"0"))
}

/// Writes `value` to the file `path` with open, write and close only (async-signal-safe, for
/// a forked child before exec).
pub(crate) fn write_in_child(path: &CStr, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string and `value` a live slice; open, write
    // and close are plain system calls on a descriptor this function owns.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, value.as_ptr().cast(), value.len());
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if usize::try_from(written).ok() == Some(value.len()) {
            Ok(())
        } else {
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[tokio::test]
    async fn a_process_joins_before_exec_and_the_cgroup_goes_with_it() {
        if !root() {
            eprintln!("SKIPPED a_process_joins_before_exec: needs root to create cgroups");
            return;
        }
        let top = format!("vessel-unit-{}", std::process::id());
        // The parent exists already, as a concurrent creator left it: a v1 cpuset without
        // CPUs or nodes yet, which the new cgroup must not inherit.
        for h in hierarchy::mounted().unwrap() {
            std::fs::create_dir(h.mount.join(&top)).unwrap();
        }
        let path = format!("/{top}/vessel-test");
        let cg = HostCgroup::create(&path, None).unwrap();
        assert!(cg.exists());
        let files = cg.procs_files();
        let mut cmd = std::process::Command::new("/bin/sleep");
        cmd.arg("30");
        // SAFETY: the closure only makes open/write/close system calls on C strings built
        // before the fork; nothing allocates.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || join_in_child(&files));
        }
        let mut child = cmd.spawn().unwrap();
        assert!(cg.contains(child.id()), "{cg:?}");
        assert!(cg.usage().processes >= 1);
        // Removal kills what is still inside.
        cg.remove().await.unwrap();
        assert!(!cg.exists());
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        for h in &cg.hierarchies {
            std::fs::remove_dir(h.mount.join(&top)).unwrap();
        }
    }

    #[tokio::test]
    async fn a_leaf_holds_the_processes_and_removal_takes_the_whole_tree() {
        if !root() {
            eprintln!("SKIPPED a_leaf_holds_the_processes: needs root to create cgroups");
            return;
        }
        let path = format!("/vessel-unit-leaf-{}/pod", std::process::id());
        let cg = HostCgroup::create(&path, Some("agent")).unwrap();
        let files = cg.procs_files();
        let spawn = |files: Vec<CString>| {
            let mut cmd = std::process::Command::new("/bin/sleep");
            cmd.arg("30");
            // SAFETY: the closure only makes open/write/close system calls on C strings
            // built before the fork; nothing allocates.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || join_in_child(&files));
            }
            cmd.spawn().unwrap()
        };
        let mut agent = spawn(files);
        assert!(cg.contains(agent.id()), "{cg:?}");
        // A container's cgroup below the pod's, as libcontainer makes it for a native pod.
        let h = cg
            .hierarchies
            .iter()
            .find(|h| h.has("pids") || h.is_unified())
            .unwrap();
        let ctr_dir = cg.dir(h).join("ctr");
        std::fs::create_dir(&ctr_dir).unwrap();
        let ctr_procs = CString::new(ctr_dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        let mut ctr = spawn(vec![ctr_procs]);
        assert_eq!(
            std::fs::read_to_string(ctr_dir.join("cgroup.procs"))
                .unwrap()
                .trim(),
            ctr.id().to_string()
        );
        assert!(cg.usage().processes >= 2, "the subtree's processes count");
        cg.remove().await.unwrap();
        assert!(!cg.exists() && !ctr_dir.exists());
        for child in [&mut agent, &mut ctr] {
            let status = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9)
            );
        }
        for h in &cg.hierarchies {
            let top = h
                .mount
                .join(path.trim_start_matches('/'))
                .parent()
                .unwrap()
                .to_owned();
            std::fs::remove_dir(top).unwrap();
        }
    }
}
