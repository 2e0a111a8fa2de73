//! PID 1's filesystems: a root that containers can `pivot_root` away from, the API
//! filesystems (proc, sys, dev, pts, shm, run, tmp) and the cgroup v2 hierarchy with the
//! controllers containers need delegated.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};

/// Root of the cgroup v2 hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Controllers enabled for child cgroups, when the kernel has them.
pub const CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "memory", "pids", "io"];
/// Where the initramfs root is bind-mounted before it becomes `/` again.
const ROOT_BIND: &str = "/.vessel-root";
/// `RAMFS_MAGIC` (nix lacks it): the initramfs is ramfs when the kernel has no tmpfs.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// A filesystem of the early boot.
struct EarlyMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In mount order; `/proc` comes first on its own (see [`mount_proc`]).
const EARLY_MOUNTS: [EarlyMount; 7] = [
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    EarlyMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    EarlyMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    EarlyMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    EarlyMount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    EarlyMount {
        source: "cgroup2",
        target: CGROUP_ROOT,
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// `pivot_root(2)` refuses to move away from the initramfs (`rootfs` has no parent mount),
/// and every container's `pivot_root` starts from a copy of our root. So, like
/// `switch_root`, bind the initramfs onto a directory of itself, move that mount over `/`
/// and chroot into it: the new root is a mount with a parent. Roots that are not
/// ramfs/tmpfs (a real root device) are left alone.
pub fn make_root_pivotable() -> Result<(), Errno> {
    let fs = statfs("/")?;
    let kind = fs.filesystem_type();
    if kind != RAMFS_MAGIC && kind != TMPFS_MAGIC {
        return Ok(());
    }
    mkdir(ROOT_BIND)?;
    mount(
        Some("/"),
        ROOT_BIND,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    nix::unistd::chdir(ROOT_BIND)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")
}

/// Mounts `/proc` (needed before anything reads the command line).
pub fn mount_proc() -> Result<(), Errno> {
    mount_one("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None)
}

/// Mounts the rest of the API filesystems; returns the ones that failed.
/// `on_dev` runs right after `/dev` is mounted (to reopen the console).
pub fn mount_early(mut on_dev: impl FnMut()) -> Vec<(&'static str, Errno)> {
    let mut failed = Vec::new();
    for m in &EARLY_MOUNTS {
        if let Err(e) = mount_one(m.source, m.target, m.fstype, m.flags, m.data) {
            failed.push((m.target, e));
        }
        if m.target == "/dev" {
            on_dev();
        }
    }
    failed
}

fn mount_one(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Errno> {
    mkdir(target)?;
    match mount(Some(source), target, Some(fstype), flags, data) {
        // Already mounted (e.g. devtmpfs by the kernel).
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e),
    }
}

fn mkdir(path: &str) -> Result<(), Errno> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
    }
}

/// Enables [`CONTROLLERS`] for the children of the cgroup at `dir`, skipping those the
/// kernel lacks; returns the ones enabled.
pub fn enable_controllers(dir: &Path) -> Vec<&'static str> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let control = dir.join("cgroup.subtree_control");
    let mut enabled = Vec::new();
    for c in wanted_controllers(&available) {
        match std::fs::write(&control, format!("+{c}")) {
            Ok(()) => enabled.push(c),
            Err(e) => tracing::warn!(controller = c, error = %e, "cannot enable cgroup controller"),
        }
    }
    enabled
}

/// The controllers of [`CONTROLLERS`] that appear in a `cgroup.controllers` line.
pub fn wanted_controllers(available: &str) -> Vec<&'static str> {
    let have: Vec<&str> = available.split_whitespace().collect();
    CONTROLLERS
        .iter()
        .copied()
        .filter(|c| have.contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_present_controllers_are_enabled() {
        assert_eq!(
            wanted_controllers("cpuset cpu io memory hugetlb pids rdma misc\n"),
            vec!["cpu", "cpuset", "memory", "pids", "io"]
        );
        assert_eq!(wanted_controllers("memory pids"), vec!["memory", "pids"]);
        assert!(wanted_controllers("").is_empty());
    }
}
