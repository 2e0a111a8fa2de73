//! One tar entry of a layer, written below the layer's directory: path checks, OCI whiteouts
//! turned into overlayfs ones, and every entry kind with its mode, owner and xattrs.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use tar::EntryType;

use super::LayerError;

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
pub(super) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Unpacks one tar entry below `root`.
pub(super) fn unpack_entry<R: Read>(
    root: &Path,
    entry: &mut tar::Entry<R>,
) -> Result<(), LayerError> {
    let raw = entry.path().map_err(LayerError::Read)?.into_owned();
    let rejected = |reason: &str| LayerError::Rejected {
        entry: raw.clone(),
        reason: reason.to_owned(),
    };
    let failed = |source: io::Error| LayerError::Entry {
        entry: raw.clone(),
        source,
    };
    let rel = clean_path(&raw).map_err(rejected)?;
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        return Ok(());
    }
    let name = rel.file_name().unwrap_or_default();
    if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        let parent = ensure_parent(root, &rel).map_err(|e| e.into_layer_error(&raw))?;
        return whiteout(&parent, name, OsStr::from_bytes(hidden)).map_err(|e| match e {
            EntryFailure::Io(source) => failed(source),
            EntryFailure::Rejected(reason) => rejected(&reason),
        });
    }
    let xattrs = pax_xattrs(entry).map_err(failed)?;
    let full = if rel.as_os_str().is_empty() {
        root.to_owned()
    } else {
        ensure_parent(root, &rel)
            .map_err(|e| e.into_layer_error(&raw))?
            .join(name)
    };
    let header = entry.header();
    let uid = header.uid().map_err(failed)?;
    let gid = header.gid().map_err(failed)?;
    let mode = header.mode().map_err(failed)? & 0o7777;
    match kind {
        EntryType::Directory => make_dir(&full, uid, gid, mode).map_err(failed)?,
        EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(failed)?
                .ok_or_else(|| rejected("hard link without a target"))?;
            let target_rel = clean_path(&target).map_err(rejected)?;
            let source = ensure_existing(root, &target_rel)
                .ok_or_else(|| rejected("hard link target is not an earlier file of this layer"))?;
            remove_existing(&full).map_err(failed)?;
            fs::hard_link(&source, &full).map_err(failed)?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            make_node(&full, header, (uid, gid, mode)).map_err(failed)?
        }
        // Regular files, symlinks, and (as POSIX asks) any unknown type as a regular file.
        _ => {
            remove_existing(&full).map_err(failed)?;
            entry.unpack(&full).map_err(failed)?;
        }
    }
    set_xattrs(&full, &xattrs);
    Ok(())
}

/// A directory at `full` (replacing a non-directory there) with its owner and mode.
fn make_dir(full: &Path, uid: u64, gid: u64, mode: u32) -> io::Result<()> {
    match fs::symlink_metadata(full) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            fs::remove_file(full)?;
            fs::create_dir(full)?;
        }
        Err(_) => fs::create_dir(full)?,
    }
    set_owner_mode(full, uid, gid, mode)
}

/// A device node or FIFO at `full` as `header` describes it, with `(uid, gid, mode)`.
fn make_node(
    full: &Path,
    header: &tar::Header,
    (uid, gid, mode): (u64, u64, u32),
) -> io::Result<()> {
    remove_existing(full)?;
    let (flag, dev) = match header.entry_type() {
        EntryType::Char => (SFlag::S_IFCHR, device(header)?),
        EntryType::Block => (SFlag::S_IFBLK, device(header)?),
        _ => (SFlag::S_IFIFO, 0),
    };
    mknod(full, flag, Mode::from_bits_truncate(mode), dev)?;
    set_owner_mode(full, uid, gid, mode)
}

/// Applies an OCI whiteout entry `.wh.<hidden>` in directory `parent`.
fn whiteout(parent: &Path, name: &OsStr, hidden: &OsStr) -> Result<(), EntryFailure> {
    if name == WHITEOUT_OPAQUE {
        return xattr::set(parent, OPAQUE_XATTR, b"y").map_err(EntryFailure::Io);
    }
    if name.as_bytes().starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
        return Ok(()); // other AUFS metadata (.wh..wh.plnk etc.): not content
    }
    if hidden.is_empty() || hidden == "." || hidden == ".." {
        return Err(EntryFailure::Rejected("whiteout of no file".into()));
    }
    let target = parent.join(hidden);
    if target.symlink_metadata().is_ok() {
        // A file of this same layer wins over its whiteout (image-spec, "Whiteouts").
        return Ok(());
    }
    mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| EntryFailure::Io(e.into()))?;
    lchown(&target, Some(0), Some(0)).map_err(EntryFailure::Io)
}

enum EntryFailure {
    Io(io::Error),
    Rejected(String),
}

impl EntryFailure {
    fn into_layer_error(self, entry: &Path) -> LayerError {
        match self {
            Self::Io(source) => LayerError::Entry {
                entry: entry.to_owned(),
                source,
            },
            Self::Rejected(reason) => LayerError::Rejected {
                entry: entry.to_owned(),
                reason,
            },
        }
    }
}

/// A tar entry path made relative to the layer root, or why it would leave the layer.
pub(crate) fn clean_path(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
            Component::ParentDir => return Err("path with a '..' component"),
        }
    }
    Ok(out)
}

/// Creates the missing parent directories of `rel` below `root` (mode 0755) and returns the
/// parent's path, refusing to pass through a symlink or a non-directory.
fn ensure_parent(root: &Path, rel: &Path) -> Result<PathBuf, EntryFailure> {
    let mut dir = root.to_owned();
    let Some(parent) = rel.parent() else {
        return Ok(dir);
    };
    for part in parent.components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(EntryFailure::Rejected(format!(
                    "path goes through the symlink {}",
                    dir.strip_prefix(root).unwrap_or(&dir).display()
                )))
            }
            Ok(_) => {
                return Err(EntryFailure::Rejected(format!(
                    "{} is not a directory",
                    dir.strip_prefix(root).unwrap_or(&dir).display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
                .mode(0o755)
                .create(&dir)
                .map_err(EntryFailure::Io)?,
            Err(e) => return Err(EntryFailure::Io(e)),
        }
    }
    Ok(dir)
}

/// The path of an existing non-directory `rel` below `root`, reached without symlinks.
fn ensure_existing(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = root.to_owned();
    let parts: Vec<_> = rel.components().collect();
    let (last, dirs) = parts.split_last()?;
    for part in dirs {
        path.push(part);
        if !fs::symlink_metadata(&path).ok()?.is_dir() {
            return None;
        }
    }
    path.push(last);
    let meta = fs::symlink_metadata(&path).ok()?;
    (!meta.is_dir()).then_some(path)
}

/// Removes whatever is at `path` (a later tar entry replaces an earlier one).
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_owner_mode(path: &Path, uid: u64, gid: u64, mode: u32) -> io::Result<()> {
    let id = |v: u64| u32::try_from(v).map_err(|_| io::Error::other(format!("id {v} too big")));
    // Ownership first: chown clears set-id bits that chmod then restores.
    lchown(path, Some(id(uid)?), Some(id(gid)?))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn device(header: &tar::Header) -> io::Result<u64> {
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    Ok(makedev(major.into(), minor.into()))
}

fn pax_xattrs<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for ext in extensions {
            let ext = ext?;
            if let Ok(key) = ext.key() {
                if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    out.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

/// Sets xattrs on `path` (not following a symlink); a failure is logged, not fatal.
fn set_xattrs(path: &Path, xattrs: &[(String, Vec<u8>)]) {
    for (name, value) in xattrs {
        if let Err(e) = xattr::set(path, name, value) {
            tracing::warn!(path = %path.display(), xattr = %name, "cannot set xattr: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;
    use crate::image::test_layer::{tar_layer, TarEntry};
    use crate::image::{unpack_layer, Compression};

    fn unpack(entries: &[TarEntry], compression: Compression) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, tar_layer(entries, compression)).unwrap();
        let dest = dir.path().join("cache/layer");
        unpack_layer(&blob, compression, None, &dest).unwrap();
        (dir, dest)
    }

    #[test]
    fn clean_path_rejects_escapes() {
        assert_eq!(clean_path(Path::new("./a/b")).unwrap(), Path::new("a/b"));
        assert_eq!(clean_path(Path::new("a/./b/")).unwrap(), Path::new("a/b"));
        assert_eq!(clean_path(Path::new("./")).unwrap(), Path::new(""));
        assert!(clean_path(Path::new("/etc/passwd")).is_err());
        assert!(clean_path(Path::new("a/../../etc")).is_err());
        assert!(clean_path(Path::new("..")).is_err());
    }

    #[test]
    fn unpack_rejects_parent_dir_entry() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(
            &blob,
            tar_layer(
                &[TarEntry::file("../escape", b"x", 0o644)],
                Compression::None,
            ),
        )
        .unwrap();
        let dest = dir.path().join("cache/layer");
        let err = unpack_layer(&blob, Compression::None, None, &dest).unwrap_err();
        assert!(matches!(err, LayerError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains("../escape"), "{err}");
        assert!(!dir.path().join("escape").exists());
        assert!(!dest.exists());
        // The temporary directory is gone too.
        assert_eq!(fs::read_dir(dir.path().join("cache")).unwrap().count(), 0);
    }

    #[test]
    fn unpack_rejects_absolute_and_symlink_escapes() {
        for entries in [
            vec![TarEntry::file("/abs", b"x", 0o644)],
            vec![
                TarEntry::symlink("link", "/tmp"),
                TarEntry::file("link/escape", b"x", 0o644),
            ],
            vec![TarEntry::hardlink("h", "../outside")],
            vec![TarEntry::hardlink("h", "missing")],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let blob = dir.path().join("blob");
            fs::write(&blob, tar_layer(&entries, Compression::None)).unwrap();
            let err =
                unpack_layer(&blob, Compression::None, None, &dir.path().join("l")).unwrap_err();
            assert!(matches!(err, LayerError::Rejected { .. }), "{err}");
        }
    }

    #[test]
    fn unpack_keeps_modes_owners_links_and_devices() {
        if !crate::image::is_root("unpack_keeps_modes_owners_links_and_devices") {
            return;
        }
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let (_dir, layer) = unpack(
                &[
                    TarEntry::dir("tmp", 0o1777),
                    TarEntry::file("bin/prog", b"#!/bin/sh\n", 0o4755).owner(1000, 1000),
                    TarEntry::symlink("bin/sh", "prog"),
                    TarEntry::hardlink("bin/prog2", "bin/prog"),
                    TarEntry::char_device("dev/null", 1, 3),
                    TarEntry::file("etc/cap", b"", 0o644).xattr("user.test", b"v"),
                ],
                compression,
            );
            let tmp = fs::metadata(layer.join("tmp")).unwrap();
            assert_eq!(tmp.mode() & 0o7777, 0o1777);
            let prog = fs::metadata(layer.join("bin/prog")).unwrap();
            assert_eq!(prog.mode() & 0o7777, 0o4755);
            assert_eq!((prog.uid(), prog.gid()), (1000, 1000));
            assert_eq!(prog.nlink(), 2);
            assert_eq!(
                fs::read_link(layer.join("bin/sh")).unwrap(),
                Path::new("prog")
            );
            let null = fs::symlink_metadata(layer.join("dev/null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(null.rdev(), makedev(1, 3));
            // Best effort: tmpfs before 6.6 has no user xattrs.
            if let Ok(Some(v)) = xattr::get(layer.join("etc/cap"), "user.test") {
                assert_eq!(v, b"v");
            }
        }
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !crate::image::is_root("whiteouts_become_overlay_whiteouts") {
            return;
        }
        let (_dir, layer) = unpack(
            &[
                TarEntry::dir("etc", 0o755),
                TarEntry::file("etc/.wh.motd", b"", 0o644),
                TarEntry::dir("var/cache", 0o755),
                TarEntry::file("var/cache/.wh..wh..opq", b"", 0o644),
                TarEntry::file("kept", b"x", 0o644),
                TarEntry::file(".wh.kept", b"", 0o644),
            ],
            Compression::Gzip,
        );
        let motd = fs::symlink_metadata(layer.join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device());
        assert_eq!(motd.rdev(), 0);
        assert!(!layer.join("etc/.wh.motd").exists());
        assert_eq!(
            xattr::get(layer.join("var/cache"), OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert!(!layer.join("var/cache/.wh..wh..opq").exists());
        // A file of the same layer wins over its whiteout.
        assert_eq!(fs::read(layer.join("kept")).unwrap(), b"x");
    }
}
