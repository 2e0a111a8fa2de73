//! Finding a container's executable before it is started, the way `execvp` inside the
//! container will: `PATH` from the process environment, symlinks followed relative to the
//! rootfs (an absolute target like `/bin/busybox` means `<rootfs>/bin/busybox`, and `..`
//! never climbs above it). A missing command then fails the RPC with a clear NOT_FOUND
//! instead of a container that dies at start.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::error::ContainerError;

/// Symlinks followed before giving up (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (a path inside the container, relative ones against `cwd`) to a host
/// path below `rootfs`, following every symlink inside the rootfs.
pub fn resolve_in_root(rootfs: &Path, cwd: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    if !path.is_absolute() {
        push_components(&mut pending, cwd);
    }
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    // `pending` is a stack: its last element is the next component.
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = rootfs.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_components(&mut pending, &target);
            }
            _ => resolved.push(part),
        }
    }
    let mut out = rootfs.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// Pushes the components of `path` so that its first component is popped first.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

/// Whether `path` is a regular file with an execute bit.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds `cmd` in the container: a command with a `/` is taken as a path (relative to
/// `cwd`), anything else is searched in `path_env` (`PATH` syntax; an empty entry is the
/// cwd). Returns the host path of the executable.
pub fn find_executable(
    rootfs: &Path,
    cwd: &Path,
    cmd: &str,
    path_env: &str,
) -> Result<PathBuf, ContainerError> {
    let not_found = || ContainerError::NoExecutable {
        cmd: cmd.to_string(),
        path_env: path_env.to_string(),
    };
    if cmd.is_empty() {
        return Err(not_found());
    }
    let candidates: Vec<PathBuf> = if cmd.contains('/') {
        vec![PathBuf::from(cmd)]
    } else {
        path_env
            .split(':')
            .map(|dir| {
                if dir.is_empty() {
                    PathBuf::from(cmd)
                } else {
                    Path::new(dir).join(cmd)
                }
            })
            .collect()
    };
    candidates
        .iter()
        .filter_map(|c| resolve_in_root(rootfs, cwd, c).ok())
        .find(|host| is_executable(host))
        .ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn exe(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"#!/bin/true\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        exe(&r.join("bin/busybox"));
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("work")).unwrap();
        symlink("/bin/busybox", r.join("bin/sh")).unwrap();
        symlink("../../bin/busybox", r.join("usr/bin/env")).unwrap();
        symlink("../../../../../../bin/busybox", r.join("usr/bin/deep")).unwrap();
        symlink("/", r.join("rootlink")).unwrap();
        std::fs::write(r.join("bin/data"), b"x").unwrap();
        std::fs::create_dir_all(r.join("bin/dir")).unwrap();
        symlink("loop2", r.join("bin/loop1")).unwrap();
        symlink("loop1", r.join("bin/loop2")).unwrap();
        symlink("/etc/passwd", r.join("bin/escape")).unwrap();
        exe(&r.join("work/run.sh"));
        dir
    }

    #[test]
    fn absolute_symlinks_stay_in_rootfs() {
        let r = rootfs();
        let root = r.path();
        let got = find_executable(root, Path::new("/"), "sh", "/usr/bin:/bin").unwrap();
        assert_eq!(got, root.join("bin/busybox"));
        let got = find_executable(root, Path::new("/"), "/rootlink/bin/sh", "").unwrap();
        assert_eq!(got, root.join("bin/busybox"));
    }

    #[test]
    fn relative_symlinks_and_dotdot_are_clamped() {
        let r = rootfs();
        let root = r.path();
        assert_eq!(
            find_executable(root, Path::new("/"), "env", "/usr/bin").unwrap(),
            root.join("bin/busybox")
        );
        assert_eq!(
            find_executable(root, Path::new("/"), "deep", "/usr/bin").unwrap(),
            root.join("bin/busybox")
        );
        let p = resolve_in_root(root, Path::new("/"), Path::new("/../../etc")).unwrap();
        assert_eq!(p, root.join("etc"));
    }

    #[test]
    fn path_handling() {
        let r = rootfs();
        let root = r.path();
        // Not in PATH.
        let e = find_executable(root, Path::new("/"), "sh", "/usr/bin").unwrap_err();
        assert_eq!(
            e.to_string(),
            "executable \"sh\" not found in container rootfs (PATH=/usr/bin)"
        );
        assert!(matches!(e, ContainerError::NoExecutable { .. }));
        // Relative command with a slash, against cwd; empty PATH entry means cwd.
        assert!(find_executable(root, Path::new("/work"), "./run.sh", "/bin").is_ok());
        assert!(find_executable(root, Path::new("/work"), "run.sh", "/bin:").is_ok());
        assert!(find_executable(root, Path::new("/"), "run.sh", "/bin").is_err());
        // Not executable, a directory, a loop, a target outside the image.
        for bad in ["data", "dir", "loop1", "escape", ""] {
            assert!(
                find_executable(root, Path::new("/"), bad, "/bin").is_err(),
                "{bad}"
            );
        }
    }
}
