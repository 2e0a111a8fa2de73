//! The /etc/passwd and /etc/group of a container's rootfs, read to resolve user and group
//! names.
//!
//! The rootfs comes from an image, so its files are untrusted: symlinks are resolved inside
//! the rootfs (never on the host), only regular files are read, at most [`MAX_ETC_FILE`]
//! bytes of them, and malformed lines are skipped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use super::SpecError;

/// The largest /etc/passwd or /etc/group read.
pub const MAX_ETC_FILE: u64 = 4 << 20;
/// The most symlinks followed while resolving a path in the rootfs (Linux's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// One /etc/passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One /etc/group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The /etc files of a rootfs, read once each when first needed.
pub(super) struct EtcFiles<'a> {
    rootfs: &'a Path,
    passwd: Option<Vec<PasswdEntry>>,
    group: Option<Vec<GroupEntry>>,
}

impl<'a> EtcFiles<'a> {
    pub(super) fn new(rootfs: &'a Path) -> Self {
        Self {
            rootfs,
            passwd: None,
            group: None,
        }
    }

    pub(super) fn passwd(&mut self) -> Result<&[PasswdEntry], SpecError> {
        if self.passwd.is_none() {
            let text = read_etc_file(self.rootfs, "etc/passwd")?;
            self.passwd = Some(text.map(|t| parse_passwd(&t)).unwrap_or_default());
        }
        Ok(self.passwd.as_deref().unwrap_or_default())
    }

    pub(super) fn group(&mut self) -> Result<&[GroupEntry], SpecError> {
        if self.group.is_none() {
            let text = read_etc_file(self.rootfs, "etc/group")?;
            self.group = Some(text.map(|t| parse_group(&t)).unwrap_or_default());
        }
        Ok(self.group.as_deref().unwrap_or_default())
    }

    pub(super) fn user_by_name(&mut self, name: &str) -> Result<Option<PasswdEntry>, SpecError> {
        Ok(self.passwd()?.iter().find(|u| u.name == name).cloned())
    }

    pub(super) fn user_by_uid(&mut self, uid: u32) -> Result<Option<PasswdEntry>, SpecError> {
        Ok(self.passwd()?.iter().find(|u| u.uid == uid).cloned())
    }
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    etc_lines(text)
        .filter_map(|fields| {
            Some(PasswdEntry {
                name: fields.first()?.to_string(),
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    etc_lines(text)
        .filter_map(|fields| {
            let members = fields.get(3).copied().unwrap_or_default();
            Some(GroupEntry {
                name: fields.first()?.to_string(),
                gid: fields.get(2)?.parse().ok()?,
                members: members
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// The `:`-separated fields of each entry, comments and blank lines left out.
fn etc_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

/// Reads `rel` (e.g. `etc/passwd`) of the rootfs: `None` when there is no rootfs (empty path)
/// or no such file.
fn read_etc_file(rootfs: &Path, rel: &str) -> Result<Option<String>, SpecError> {
    if rootfs.as_os_str().is_empty() {
        return Ok(None);
    }
    let path = scoped_path(rootfs, Path::new(rel)).map_err(|source| SpecError::Rootfs {
        path: rootfs.join(rel),
        source,
    })?;
    let io = |source| SpecError::Rootfs {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !file.metadata().map_err(io)?.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ETC_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_ETC_FILE {
        return Err(io(std::io::Error::other(format!(
            "larger than {MAX_ETC_FILE} bytes"
        ))));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `root/rel` with every symlink resolved as if `root` were `/` (like `chroot` + `realpath`):
/// the result never leaves `root`. A missing component ends the resolution; the rest is
/// joined as it is.
fn scoped_path(root: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = normal_components(rel).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                resolved.push(part);
                resolved.extend(pending.drain(..));
                break;
            }
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(std::io::Error::other("too many levels of symbolic links"));
        }
        let target = std::fs::read_link(&candidate)?;
        if target.is_absolute() {
            resolved.clear();
        }
        for c in normal_components(&target)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            pending.push_front(c);
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// The components of a path as names, `..` kept, `/` and `.` dropped.
fn normal_components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(root: &Path) -> Result<Vec<String>, SpecError> {
        let mut etc = EtcFiles::new(root);
        Ok(etc.passwd()?.iter().map(|u| u.name.clone()).collect())
    }

    #[test]
    fn symlinks_stay_inside_the_rootfs() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::create_dir_all(root.path().join("lib")).unwrap();
        std::fs::write(root.path().join("lib/passwd"), "inside:x:9:9::/:/bin/sh\n").unwrap();
        // An absolute link to a host file resolves in the rootfs, where it does not exist.
        let target = host.path().join("passwd");
        std::os::unix::fs::symlink(&target, root.path().join("etc/passwd")).unwrap();
        assert_eq!(users(root.path()).unwrap(), Vec::<String>::new());
        // A relative link climbing out stops at the rootfs' /.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../lib/passwd", root.path().join("etc/passwd"))
            .unwrap();
        assert_eq!(users(root.path()).unwrap(), ["inside"]);
        // A loop is an error, not a hang.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("passwd", root.path().join("etc/passwd")).unwrap();
        let e = users(root.path()).unwrap_err();
        assert!(matches!(e, SpecError::Rootfs { .. }), "{e}");
    }

    #[test]
    fn a_passwd_that_is_not_a_file_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/passwd")).unwrap();
        let e = users(root.path()).unwrap_err();
        assert!(matches!(e, SpecError::Rootfs { .. }), "{e}");
    }

    #[test]
    fn no_rootfs_or_no_file_is_empty() {
        assert!(users(Path::new("")).unwrap().is_empty());
        let empty = tempfile::tempdir().unwrap();
        assert!(users(empty.path()).unwrap().is_empty());
        let mut etc = EtcFiles::new(empty.path());
        assert!(etc.group().unwrap().is_empty());
    }

    #[test]
    fn a_huge_passwd_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        let f = std::fs::File::create(root.path().join("etc/passwd")).unwrap();
        f.set_len(MAX_ETC_FILE + 1).unwrap();
        let e = users(root.path()).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn parsers_skip_malformed_lines() {
        let users = parse_passwd(super::super::testing::PASSWD);
        assert_eq!(users.len(), 4);
        assert_eq!(
            users[2],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1001
            }
        );
        let groups = parse_group("a:x:1:u1, u2\nbad:x:nope:\nb:x:2\n");
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].members, ["u1", "u2"]);
        assert!(groups[1].members.is_empty());
    }
}
