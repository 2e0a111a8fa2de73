//! A pod's network namespace, pinned by a bind mount of its namespace file at
//! `<state>/netns/<pod id>`: it outlives the thread that made it and a daemon restart, and the
//! path is what the CNI plugins, the tap set-up and the VMM open. Made and entered on threads of
//! their own, since unshare(2) and setns(2) change only the calling thread.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netns {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("netns {path}: {what}: {errno}")]
    Sys {
        path: PathBuf,
        what: &'static str,
        errno: Errno,
    },
    #[error("netns {0}: already exists")]
    Exists(PathBuf),
    #[error("netns {0}: the thread working in it panicked")]
    Panicked(PathBuf),
}

/// A pinned network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Makes a new namespace pinned at `path` (its parent dir is created).
    pub fn create(path: &Path) -> Result<Self, NetnsError> {
        let io = |source| NetnsError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => NetnsError::Exists(path.to_owned()),
                _ => io(e),
            })?;
        let target = path.to_owned();
        let pinned = std::thread::spawn(move || -> Result<(), (&'static str, Errno)> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind mount", e))
        })
        .join();
        let ns = NetNs {
            path: path.to_owned(),
        };
        match pinned {
            Ok(Ok(())) => Ok(ns),
            Ok(Err((what, errno))) => {
                let _ = std::fs::remove_file(path);
                Err(NetnsError::Sys {
                    path: path.to_owned(),
                    what,
                    errno,
                })
            }
            Err(_) => {
                let _ = ns.remove();
                Err(NetnsError::Panicked(path.to_owned()))
            }
        }
    }

    /// A namespace pinned earlier (by this or an earlier run of the daemon).
    pub fn at(path: &Path) -> Self {
        NetNs {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still pins a namespace.
    pub fn exists(&self) -> bool {
        nix::sys::statfs::statfs(&self.path)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    }

    /// Runs `f` on a thread that has entered the namespace; the daemon's threads stay where
    /// they are.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let file = std::fs::File::open(&self.path).map_err(|source| NetnsError::Io {
            path: self.path.clone(),
            source,
        })?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
                    Ok(f())
                })
                .join()
        })
        .map_err(|_| NetnsError::Panicked(self.path.clone()))?
        .map_err(|errno| NetnsError::Sys {
            path: self.path.clone(),
            what: "setns",
            errno,
        })
    }

    /// A netlink (rtnetlink) handle that works in this namespace: the socket is made on a
    /// thread inside it, and a socket stays in the namespace it was made in. Call within the
    /// tokio runtime, which drives the connection until the last handle is dropped.
    pub fn netlink(&self) -> Result<rtnetlink::Handle, NetnsError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = self
            .run(|| {
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|source| NetnsError::Io {
                path: self.path.clone(),
                source,
            })?;
        tokio::spawn(connection);
        Ok(handle)
    }

    /// Unpins the namespace (it ends once nothing else holds it) and deletes the file. Done
    /// already is fine.
    pub fn remove(&self) -> Result<(), NetnsError> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(errno) => {
                return Err(NetnsError::Sys {
                    path: self.path.clone(),
                    what: "unmount",
                    errno,
                })
            }
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetnsError::Io {
                path: self.path.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn a_pinned_namespace_is_its_own_and_goes_away() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED a_pinned_namespace_is_its_own_and_goes_away: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns").join("pod1");
        let ns = NetNs::create(&path).unwrap();
        assert!(ns.exists());
        assert!(matches!(NetNs::create(&path), Err(NetnsError::Exists(_))));
        let host = inode("/proc/thread-self/ns/net");
        let inside = ns.run(|| inode("/proc/thread-self/ns/net")).unwrap();
        assert_ne!(host, inside, "run() enters the pod's namespace");
        assert_eq!(inode("/proc/thread-self/ns/net"), host, "this thread stays");
        // /proc/thread-self/net follows the reading thread's namespace (sysfs would not).
        let links = ns
            .run(|| {
                let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
                dev.lines().skip(2).count()
            })
            .unwrap();
        assert_eq!(links, 1, "a new namespace has only lo");
        ns.remove().unwrap();
        assert!(!path.exists());
        ns.remove().unwrap();
        assert!(!NetNs::at(&path).exists());
    }
}
