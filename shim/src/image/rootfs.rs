//! A container's root filesystem: an overlayfs mount whose read-only lower layers are the
//! image's unpacked layers and whose upper and work directories are the container's own.
//!
//! mount(2) takes at most one page of options. When the absolute lowerdir list does not fit
//! and all layers share one parent directory (the layer cache), the mount is made from a
//! helper thread that has its own working directory (`unshare(CLONE_FS)`) in that parent,
//! with relative layer names: about 60 layers of 64-hex-digit names fit a 4 KiB page. More
//! than that is refused with an error.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, sysconf, SysconfVar};

use super::ImageError;

/// Mounts overlayfs at `target` (created if missing) over `layers` (lowest first), with
/// upper and work directories `scratch/upper` and `scratch/work` (created).
pub fn mount_rootfs(layers: &[PathBuf], scratch: &Path, target: &Path) -> Result<(), ImageError> {
    let options_error = |reason: String| ImageError::MountOptions {
        target: target.to_owned(),
        reason,
    };
    let (upper, work) = prepare(layers, scratch, target)?;
    let tail = format!(",upperdir={},workdir={}", upper.display(), work.display());
    let limit = page_size();

    // Topmost layer first: overlayfs stacks lowerdir left over right.
    let absolute = lowerdir(layers.iter().rev().map(|l| l.display().to_string()));
    let options = format!("lowerdir={absolute}{tail}");
    if options.len() < limit {
        return overlay(target, &options);
    }
    let parent = layers[0]
        .parent()
        .filter(|p| layers.iter().all(|l| l.parent() == Some(*p)));
    let Some(parent) = parent else {
        return Err(options_error(format!(
            "{} layers make {} bytes of options (limit {limit}) and they do not share a directory",
            layers.len(),
            options.len()
        )));
    };
    let names = lowerdir(layers.iter().rev().map(|l| {
        l.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }));
    let options = format!("lowerdir={names}{tail}");
    if options.len() >= limit {
        return Err(options_error(format!(
            "{} layers make {} bytes of options even as relative paths (limit {limit})",
            layers.len(),
            options.len()
        )));
    }
    overlay_from(parent, target, &options)
}

/// Checks that `layers` and the scratch dirs can be overlay options, and creates the upper
/// and work dirs and the mount point; returns the upper and work dirs.
fn prepare(
    layers: &[PathBuf],
    scratch: &Path,
    target: &Path,
) -> Result<(PathBuf, PathBuf), ImageError> {
    let options_error = |reason: String| ImageError::MountOptions {
        target: target.to_owned(),
        reason,
    };
    if layers.is_empty() {
        return Err(options_error("an image has at least one layer".into()));
    }
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    for (what, dir) in [
        ("create upper dir", &upper),
        ("create work dir", &work),
        ("create rootfs mount point", &target.to_owned()),
    ] {
        fs::create_dir_all(dir).map_err(|source| ImageError::MountIo {
            what,
            path: dir.clone(),
            source,
        })?;
    }
    for path in layers.iter().chain([&upper, &work]) {
        if let Some(bad) = path
            .to_str()
            .and_then(|p| p.chars().find(|c| ",:\\".contains(*c)))
        {
            return Err(options_error(format!(
                "{} has {bad:?}, which overlay options cannot hold",
                path.display()
            )));
        }
        if path.to_str().is_none() {
            return Err(options_error(format!("{} is not UTF-8", path.display())));
        }
    }
    Ok((upper, work))
}

/// Mounts overlayfs at `target` with `options` naming layers relative to `parent`: from a
/// thread whose working directory is `parent`.
fn overlay_from(parent: &Path, target: &Path, options: &str) -> Result<(), ImageError> {
    let (parent, target_owned) = (parent.to_owned(), target.to_owned());
    let result = std::thread::scope(|s| {
        s.spawn(move || {
            // Only this thread's working directory changes: it stops sharing it first.
            unshare(CloneFlags::CLONE_FS).map_err(|source| ImageError::Mount {
                target: target_owned.clone(),
                source,
            })?;
            chdir(&parent).map_err(|source| ImageError::Mount {
                target: target_owned.clone(),
                source,
            })?;
            overlay(&target_owned, options)
        })
        .join()
    });
    result.unwrap_or_else(|_| {
        Err(ImageError::MountOptions {
            target: target.to_owned(),
            reason: "the mount thread panicked".into(),
        })
    })
}

/// Detaches the rootfs mount at `target`; a target that is missing or not mounted is fine.
pub fn unmount_rootfs(target: &Path) -> Result<(), ImageError> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => Ok(()),
        Err(source) => Err(ImageError::Unmount {
            target: target.to_owned(),
            source,
        }),
    }
}

fn lowerdir(dirs: impl Iterator<Item = String>) -> String {
    dirs.collect::<Vec<_>>().join(":")
}

fn overlay(target: &Path, options: &str) -> Result<(), ImageError> {
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options),
    )
    .map_err(|source| ImageError::Mount {
        target: target.to_owned(),
        source,
    })
}

fn page_size() -> usize {
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) => size as usize,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;
    use crate::image::test_layer::{tar_layer, TarEntry};
    use crate::image::{is_root, unpack_layer, Compression};

    fn layer(cache: &Path, name: &str, entries: &[TarEntry]) -> PathBuf {
        let blob = cache.join(format!("{name}.tar"));
        fs::write(&blob, tar_layer(entries, Compression::None)).unwrap();
        let dest = cache.join(name);
        unpack_layer(&blob, Compression::None, None, &dest).unwrap();
        dest
    }

    /// Unmounts on drop, so a failed assertion leaves no mount behind.
    struct Mounted<'a>(&'a Path);

    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            unmount_rootfs(self.0).unwrap();
        }
    }

    #[test]
    fn mounts_layers_topmost_first_with_whiteouts() {
        if !is_root("mounts_layers_topmost_first_with_whiteouts") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("layers");
        fs::create_dir(&cache).unwrap();
        let lower = layer(
            &cache,
            "a",
            &[
                TarEntry::file("etc/motd", b"lower", 0o644),
                TarEntry::file("etc/issue", b"lower", 0o644),
                TarEntry::file("var/cache/old", b"", 0o644),
            ],
        );
        let upper = layer(
            &cache,
            "b",
            &[
                TarEntry::file("etc/issue", b"upper", 0o644),
                TarEntry::file("etc/.wh.motd", b"", 0o644),
                TarEntry::file("var/cache/.wh..wh..opq", b"", 0o644),
                TarEntry::file("var/cache/new", b"", 0o644),
            ],
        );
        let target = tmp.path().join("rootfs");
        mount_rootfs(&[lower, upper], &tmp.path().join("scratch"), &target).unwrap();
        let _mounted = Mounted(&target);

        assert_eq!(fs::read(target.join("etc/issue")).unwrap(), b"upper");
        assert!(!target.join("etc/motd").exists());
        assert!(!target.join("var/cache/old").exists());
        assert!(target.join("var/cache/new").exists());
        // Writes land in the container's upper dir, never in a layer.
        fs::write(target.join("etc/issue"), b"written").unwrap();
        fs::remove_file(target.join("var/cache/new")).unwrap();
        let scratch_upper = tmp.path().join("scratch/upper");
        assert_eq!(
            fs::read(scratch_upper.join("etc/issue")).unwrap(),
            b"written"
        );
        assert_eq!(fs::read(cache.join("b/etc/issue")).unwrap(), b"upper");
        let deleted = fs::symlink_metadata(scratch_upper.join("var/cache/new")).unwrap();
        assert!(deleted.file_type().is_char_device());
    }

    #[test]
    fn mounts_a_single_layer_writable() {
        if !is_root("mounts_a_single_layer_writable") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let only = layer(tmp.path(), "only", &[TarEntry::file("f", b"1", 0o644)]);
        let target = tmp.path().join("rootfs");
        mount_rootfs(&[only], &tmp.path().join("scratch"), &target).unwrap();
        let _mounted = Mounted(&target);
        fs::write(target.join("g"), b"2").unwrap();
        assert_eq!(fs::read(target.join("f")).unwrap(), b"1");
        assert!(tmp.path().join("scratch/upper/g").exists());
    }

    #[test]
    fn mounts_many_layers_by_relative_names() {
        if !is_root("mounts_many_layers_by_relative_names") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        // Long absolute names, as a real layer cache has: 50 × ~110 bytes overflow a page.
        let cache = tmp
            .path()
            .join("var-lib-vessel-layers-with-a-long-enough-name");
        fs::create_dir(&cache).unwrap();
        let layers: Vec<PathBuf> = (0..50)
            .map(|i| {
                let name = format!("{i:064x}");
                let entry = TarEntry::file(&format!("f{i}"), i.to_string().as_bytes(), 0o644);
                layer(
                    &cache,
                    &name,
                    &[entry, TarEntry::file("top", name.as_bytes(), 0o644)],
                )
            })
            .collect();
        let absolute: usize = layers.iter().map(|l| l.as_os_str().len() + 1).sum();
        assert!(absolute > page_size(), "the test must overflow a page");
        let cwd = std::env::current_dir().unwrap();
        let target = tmp.path().join("rootfs");
        mount_rootfs(&layers, &tmp.path().join("scratch"), &target).unwrap();
        let _mounted = Mounted(&target);
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        assert_eq!(fs::read(target.join("f0")).unwrap(), b"0");
        assert_eq!(fs::read(target.join("f49")).unwrap(), b"49");
        assert_eq!(
            fs::read(target.join("top")).unwrap(),
            format!("{:064x}", 49).as_bytes()
        );
    }

    #[test]
    fn refuses_what_overlay_options_cannot_say() {
        let tmp = tempfile::tempdir().unwrap();
        let err = mount_rootfs(&[], tmp.path(), &tmp.path().join("t")).unwrap_err();
        assert!(matches!(err, ImageError::MountOptions { .. }), "{err}");
        let err =
            mount_rootfs(&[tmp.path().join("a:b")], tmp.path(), &tmp.path().join("t")).unwrap_err();
        assert!(err.to_string().contains("a:b"), "{err}");
    }

    #[test]
    fn unmounting_what_is_not_mounted_is_fine() {
        let tmp = tempfile::tempdir().unwrap();
        unmount_rootfs(&tmp.path().join("missing")).unwrap();
        if is_root("unmounting_what_is_not_mounted_is_fine") {
            unmount_rootfs(tmp.path()).unwrap();
        }
    }
}
