//! Kernel modules: the initramfs lists the ones the guest needs (virtio, vsock, virtiofs,
//! overlay, virtio_net…) in `/etc/vessel/modules.load`, in load order, and carries the files
//! under `/lib/modules/`. Each is loaded with `finit_module`; one that is already loaded is
//! fine, and a failure is logged without stopping the rest.

use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// The load list.
pub const MODULES_LIST: &str = "/etc/vessel/modules.load";
/// Where the module files live.
pub const MODULES_DIR: &str = "/lib/modules";

/// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses the module itself (Linux ≥ 5.17).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;
/// File name endings of module files, compressed or not.
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Loads every module of [`MODULES_LIST`]; returns how many failed.
pub fn load_listed() -> usize {
    let list = match std::fs::read_to_string(MODULES_LIST) {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(path = MODULES_LIST, error = %e, "no module list; loading none");
            return 0;
        }
    };
    let mut failed = 0;
    for entry in parse_list(&list) {
        let Some(path) = resolve(Path::new(MODULES_DIR), entry) else {
            tracing::error!(module = entry, "module file not found under {MODULES_DIR}");
            failed += 1;
            continue;
        };
        match load(&path) {
            Ok(()) => tracing::debug!(module = %path.display(), "module loaded"),
            Err(Errno::EEXIST) => tracing::debug!(module = %path.display(), "already loaded"),
            Err(e) => {
                tracing::error!(module = %path.display(), error = %e, "finit_module failed");
                failed += 1;
            }
        }
    }
    failed
}

/// Entries of the list: one per line; blank lines and `#` comments are skipped.
pub fn parse_list(list: &str) -> Vec<&str> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The file of a list entry: an absolute path, a path relative to `dir`, or a bare module
/// name (`virtio_net`, `-` and `_` alike) searched for below `dir`.
pub fn resolve(dir: &Path, entry: &str) -> Option<PathBuf> {
    let direct = if entry.starts_with('/') {
        PathBuf::from(entry)
    } else {
        dir.join(entry)
    };
    if direct.is_file() {
        return Some(direct);
    }
    if entry.contains('/') {
        return None;
    }
    let wanted = normalize(strip_suffix(entry));
    find(dir, &wanted, 0)
}

fn find(dir: &Path, wanted: &str, depth: usize) -> Option<PathBuf> {
    if depth > 8 {
        return None;
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let mut subdirs = Vec::new();
    for e in entries {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            subdirs.push(path);
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if MODULE_SUFFIXES.iter().any(|s| name.ends_with(s))
                && normalize(strip_suffix(name)) == wanted
            {
                return Some(path);
            }
        }
    }
    subdirs.iter().find_map(|d| find(d, wanted, depth + 1))
}

fn strip_suffix(name: &str) -> &str {
    MODULE_SUFFIXES
        .iter()
        .rev()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Loads one module file with finit_module (compressed ones decompressed by the kernel).
pub(super) fn load(path: &Path) -> Result<(), Errno> {
    let file = File::open(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let name = path.to_string_lossy();
    let flags = if name.ends_with(".ko") {
        ModuleInitFlags::empty()
    } else {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    };
    let no_params = CString::default();
    finit_module(&file, &no_params, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_skips_comments_and_blanks() {
        let list = "# virtio first\nvirtio.ko\n\n  vsock.ko.xz \n#x\n";
        assert_eq!(parse_list(list), vec!["virtio.ko", "vsock.ko.xz"]);
    }

    #[test]
    fn resolves_relative_absolute_and_bare_names() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("6.1.0/kernel/drivers/net");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("virtio_net.ko.xz"), b"").unwrap();
        std::fs::write(dir.path().join("fuse.ko"), b"").unwrap();

        assert_eq!(
            resolve(dir.path(), "fuse.ko"),
            Some(dir.path().join("fuse.ko"))
        );
        let abs = sub.join("virtio_net.ko.xz");
        assert_eq!(
            resolve(dir.path(), abs.to_str().unwrap()),
            Some(abs.clone())
        );
        assert_eq!(resolve(dir.path(), "virtio-net"), Some(abs.clone()));
        assert_eq!(resolve(dir.path(), "virtio_net"), Some(abs));
        assert_eq!(
            resolve(dir.path(), "fuse"),
            Some(dir.path().join("fuse.ko"))
        );
        assert_eq!(resolve(dir.path(), "overlay"), None);
        assert_eq!(resolve(dir.path(), "kernel/overlay.ko"), None);
    }
}
