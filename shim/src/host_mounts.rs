//! Host mount bookkeeping: find and detach every mount below a directory before it is deleted,
//! so removing a pod's dir can never reach into a bind-mounted source.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use procfs::process::{MountInfo, MountInfos, Process};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("read /proc/self/mountinfo: {0}")]
    MountInfo(procfs::ProcError),
    #[error("create mount point {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mount {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("unmount {path}: {source}")]
    Unmount { path: PathBuf, source: nix::Error },
    #[error("remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// This process's mounts, parsed by procfs.
fn mountinfo() -> Result<MountInfos, MountError> {
    Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(MountError::MountInfo)
}

/// A mount's mount point, with mountinfo's octal escapes undone (procfs keeps them).
fn mount_point(mount: &MountInfo) -> PathBuf {
    PathBuf::from(unescape(&mount.mount_point.to_string_lossy()))
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    Ok(select_mounts_under(&mountinfo()?, dir))
}

fn select_mounts_under(mounts: &MountInfos, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .iter()
        .map(mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// The peer group of a shared mount; `None` for one that is not shared.
fn peer_group(mount: &MountInfo) -> Option<u32> {
    mount.opt_fields.iter().find_map(|f| match f {
        procfs::process::MountOptFields::Shared(id) => Some(*id),
        _ => None,
    })
}

/// Mount points at or below `dir` (shallowest first) in a peer group that also has a mount
/// outside `dir`: binds that share mounts with the host (a Bidirectional volume's).
fn select_peers_of_outside(mounts: &MountInfos, dir: &Path) -> Vec<PathBuf> {
    let outside: std::collections::HashSet<u32> = mounts
        .iter()
        .filter(|m| !mount_point(m).starts_with(dir))
        .filter_map(peer_group)
        .collect();
    let mut found: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| mount_point(m).starts_with(dir))
        .filter(|m| peer_group(m).is_some_and(|id| outside.contains(&id)))
        .map(mount_point)
        .collect();
    found.sort_by_key(|p| p.components().count());
    found.dedup();
    found
}

/// Whether the mount `path` lies on is shared (in a peer group): what a Bidirectional mount of
/// it needs for a container's mounts to reach the host, as containerd checks too. Returns
/// the mount point when it is not.
pub fn shared_mount_of(path: &Path) -> Result<Result<(), PathBuf>, MountError> {
    Ok(select_shared_mount_of(&mountinfo()?, path))
}

fn select_shared_mount_of(mounts: &MountInfos, path: &Path) -> Result<(), PathBuf> {
    // The deepest mount point above the path; the last one there is the one in view.
    let Some(mount) = mounts
        .iter()
        .filter(|m| path.starts_with(mount_point(m)))
        .max_by_key(|m| mount_point(m).components().count())
        .and_then(|deepest| {
            let at = mount_point(deepest);
            mounts.iter().rfind(|m| mount_point(m) == at)
        })
    else {
        return Err(PathBuf::from("/"));
    };
    if peer_group(mount).is_some() {
        Ok(())
    } else {
        Err(mount_point(mount))
    }
}

/// A tmpfs mount point's options that matter to a copy of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    /// The `size=` option, as mounted.
    pub size: Option<String>,
}

/// `Some` when `path` is the mount point of a tmpfs.
pub fn tmpfs_at(path: &Path) -> Result<Option<Tmpfs>, MountError> {
    Ok(select_tmpfs_at(&mountinfo()?, path))
}

fn select_tmpfs_at(mounts: &MountInfos, path: &Path) -> Option<Tmpfs> {
    // The last mount at a path is the one in view.
    let mount = mounts.iter().rfind(|m| mount_point(m) == path)?;
    (mount.fs_type == "tmpfs").then(|| Tmpfs {
        size: mount
            .super_options
            .get("size")
            .map(|size| format!("size={}", size.as_deref().unwrap_or_default())),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir`, deepest first.
pub fn unmount_all_under(dir: &Path) -> Result<(), MountError> {
    let mounts = mountinfo()?;
    // A Bidirectional volume's bind is a peer of the host's mount (and so is everything
    // mounted below it): unmounting it, or the host's submounts that show up below it, would
    // unmount them on the host too. Made private first, the copies here go alone.
    for mount in select_peers_of_outside(&mounts, dir) {
        let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
        if let Err(source) =
            nix::mount::mount(None::<&str>, &mount, None::<&str>, private, None::<&str>)
        {
            return Err(MountError::Unmount {
                path: mount,
                source,
            });
        }
    }
    for mount in select_mounts_under(&mounts, dir) {
        match umount2(&mount, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(MountError::Unmount {
                    path: mount,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// How mounts made on the host below a bind's source later reach the bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation<'a> {
    /// They do (CRI HostToContainer, `rslave`); nothing flows back to the host.
    FromHost,
    /// They do not (CRI Private, `rprivate`). The source is first bound at this staging path,
    /// outside any shared mount, and made private there: a bind of a shared source would
    /// otherwise join its peer group, and so would the copies virtiofsd's namespace gets.
    Private { staging: &'a Path },
    /// Both ways (CRI Bidirectional, `rshared`; native pods only): the bind joins the
    /// source's peer group, so a container's mounts below it reach the host's path.
    Shared,
}

/// Bind-mounts `source` (recursively) at `target`, creating the target (a file for a file
/// source), read-only when asked, with `propagation`.
pub fn bind(
    source: &Path,
    target: &Path,
    is_file: bool,
    readonly: bool,
    propagation: Propagation<'_>,
) -> Result<(), MountError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| MountError::Mount { path, source }
    };
    let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
    create_mount_point(target, is_file)?;
    match propagation {
        Propagation::FromHost => {
            mount(Some(source), target, None::<&str>, rbind, None::<&str>)
                .map_err(failed(target))?;
            let slave = MsFlags::MS_REC | MsFlags::MS_SLAVE;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, slave, None::<&str>) {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(failed(target)(e));
            }
        }
        Propagation::Shared => {
            mount(Some(source), target, None::<&str>, rbind, None::<&str>)
                .map_err(failed(target))?;
            let shared = MsFlags::MS_REC | MsFlags::MS_SHARED;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, shared, None::<&str>) {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(failed(target)(e));
            }
        }
        Propagation::Private { staging } => {
            create_mount_point(staging, is_file)?;
            mount(Some(source), staging, None::<&str>, rbind, None::<&str>)
                .map_err(failed(staging))?;
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            let bound = mount(None::<&str>, staging, None::<&str>, private, None::<&str>)
                .and_then(|()| mount(Some(staging), target, None::<&str>, rbind, None::<&str>));
            // The staging bind has done its part: the target holds the tree now.
            let _ = umount2(staging, MntFlags::MNT_DETACH);
            bound.map_err(failed(target))?;
        }
    }
    if readonly {
        let ro = rbind | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(failed(target)(e));
        }
    }
    Ok(())
}

/// Creates `path` as a mount point: an empty file for a file source, else a directory.
fn create_mount_point(path: &Path, is_file: bool) -> Result<(), MountError> {
    let io = |e: std::io::Error| MountError::Create {
        path: path.to_owned(),
        source: e,
    };
    if is_file {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io)?;
        Ok(())
    } else {
        std::fs::create_dir_all(path).map_err(io)
    }
}

/// Makes `dir` a mount point of its own with shared propagation, so mounts made below it
/// later (container rootfs overlays, CRI volumes) also appear in mount namespaces copied from
/// it before they were made, such as virtiofsd's sandbox.
pub fn make_shared_mountpoint(dir: &Path) -> Result<(), MountError> {
    let err = |source| MountError::Mount {
        path: dir.to_owned(),
        source,
    };
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err)?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(err)
}

/// Unmounts everything below `dir`, then deletes it; a missing `dir` is fine.
pub fn remove_dir_unmounted(dir: &Path) -> Result<(), MountError> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MountError::Remove {
            path: dir.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> MountInfos {
        procfs::FromBufRead::from_buf_read(text.as_bytes()).unwrap()
    }

    const INFO: &str = "\
22 1 8:1 / / rw shared:1 - ext4 /dev/vda rw
30 22 0:5 / /run/vessel/pods/a/shared/c1/rootfs rw - overlay overlay rw
31 30 0:6 / /run/vessel/pods/a/shared/c1/rootfs/proc rw - proc proc rw
32 22 0:7 / /run/vessel/pods/ab rw - tmpfs tmpfs rw
33 22 0:8 / /run/vessel/pods/a/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn only_binds_sharing_a_peer_group_with_the_host_are_made_private() {
        let mounts = parse(
            "22 1 8:1 / / rw - ext4 /dev/vda rw
40 22 0:9 / /var/lib/kubelet/vol rw shared:7 - tmpfs tmpfs rw
41 22 0:10 / /run/vessel/pods/a/shared rw shared:8 - tmpfs tmpfs rw
42 41 0:9 / /run/vessel/pods/a/shared/c1/mounts/0 rw shared:7 - tmpfs tmpfs rw
43 41 0:5 / /run/vessel/pods/a/shared/c1/rootfs rw shared:9 - overlay overlay rw
44 41 0:9 / /run/vessel/pods/a/shared/c1/mounts/1 rw master:7 - tmpfs tmpfs rw
",
        );
        assert_eq!(
            select_peers_of_outside(&mounts, Path::new("/run/vessel/pods/a")),
            [PathBuf::from("/run/vessel/pods/a/shared/c1/mounts/0")]
        );
    }

    #[test]
    fn a_path_is_on_a_shared_mount_only_where_its_deepest_mount_is() {
        let mounts = parse(INFO);
        assert_eq!(
            select_shared_mount_of(&mounts, Path::new("/var/lib/kubelet/x")),
            Ok(())
        );
        assert_eq!(
            select_shared_mount_of(&mounts, Path::new("/run/vessel/pods/ab/vol")),
            Err(PathBuf::from("/run/vessel/pods/ab"))
        );
    }

    #[test]
    fn finds_nested_mounts_deepest_first_and_not_siblings() {
        let found = select_mounts_under(&parse(INFO), Path::new("/run/vessel/pods/a"));
        assert_eq!(
            found,
            vec![
                PathBuf::from("/run/vessel/pods/a/shared/c1/rootfs/proc"),
                PathBuf::from("/run/vessel/pods/a/shared/c1/rootfs"),
                PathBuf::from("/run/vessel/pods/a/with space"),
            ]
        );
    }

    #[test]
    fn tmpfs_mount_points_and_their_size() {
        assert_eq!(
            select_tmpfs_at(&parse(INFO), Path::new("/run/vessel/pods/ab")),
            Some(Tmpfs { size: None })
        );
        let sized = "40 22 0:9 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache rw - tmpfs tmpfs rw,size=16384k\n";
        assert_eq!(
            select_tmpfs_at(
                &parse(sized),
                Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache")
            ),
            Some(Tmpfs {
                size: Some("size=16384k".into())
            })
        );
        assert_eq!(
            select_tmpfs_at(
                &parse(INFO),
                Path::new("/run/vessel/pods/a/shared/c1/rootfs")
            ),
            None
        );
        assert_eq!(select_tmpfs_at(&parse(INFO), Path::new("/nowhere")), None);
    }

    #[test]
    fn removing_a_missing_dir_is_ok() {
        remove_dir_unmounted(Path::new("/nonexistent/vessel/x")).unwrap();
    }
}
