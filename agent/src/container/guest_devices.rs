//! The guest's device nodes for a privileged container. The shim marks one by a device cgroup
//! rule that allows every device (what CRI `privileged` means); it cannot list the devices,
//! which are the guest's. Here every character and block device under `/dev` joins the spec's
//! `linux.devices`, as runc's host devices do for a privileged container on a host.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};

use super::error::{Result, SpecError};

/// Below /dev, what a container never gets from the guest: its own pts, shm and mqueue, the
/// guest's console.
const SKIPPED: [&str; 5] = ["pts", "shm", "mqueue", "fd", "console"];

/// Whether the spec's device cgroup allows every device (CRI privileged).
pub fn allows_every_device(linux: &Linux) -> bool {
    let rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().as_ref());
    rules.is_some_and(|rules| {
        rules.iter().any(|r| {
            r.allow()
                && matches!(r.typ(), None | Some(LinuxDeviceType::A))
                && r.major().is_none()
                && r.minor().is_none()
                && r.access().as_deref().is_none_or(|a| a.contains("rwm"))
        })
    })
}

/// Adds every device node below `dev` that the spec does not already list.
pub fn add_all(linux: &mut Linux, dev: &Path) -> Result<()> {
    let mut devices = linux.devices().clone().unwrap_or_default();
    let mut found = Vec::new();
    walk(dev, dev, &mut found, 0);
    for (path, node) in found {
        if devices.iter().any(|d| d.path() == &path) {
            continue;
        }
        devices.push(node.map_err(|source| SpecError::Build {
            what: format!("device {}", path.display()),
            source,
        })?);
    }
    linux.set_devices(Some(devices));
    Ok(())
}

type Found = Vec<(
    PathBuf,
    std::result::Result<LinuxDevice, oci_spec::OciSpecError>,
)>;

fn walk(root: &Path, dir: &Path, found: &mut Found, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if SKIPPED.iter().any(|s| rel == Path::new(s)) {
            continue;
        }
        let kind = meta.file_type();
        if kind.is_dir() && depth < 4 {
            walk(root, &path, found, depth + 1);
            continue;
        }
        let typ = if kind.is_char_device() {
            LinuxDeviceType::C
        } else if kind.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        let rdev = meta.rdev();
        let in_container = Path::new("/dev").join(rel);
        let node = LinuxDeviceBuilder::default()
            .path(in_container.clone())
            .typ(typ)
            .major(i64::from(nix::sys::stat::major(rdev) as u32))
            .minor(i64::from(nix::sys::stat::minor(rdev) as u32))
            .file_mode(meta.mode() & 0o7777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build();
        found.push((in_container, node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxDeviceCgroupBuilder, LinuxResourcesBuilder};

    fn linux_with_rule(allow: bool) -> Linux {
        let rule = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .access("rwm")
            .build()
            .unwrap();
        LinuxBuilder::default()
            .resources(
                LinuxResourcesBuilder::default()
                    .devices(vec![rule])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn only_an_allow_all_rule_means_privileged() {
        assert!(allows_every_device(&linux_with_rule(true)));
        assert!(!allows_every_device(&linux_with_rule(false)));
        assert!(!allows_every_device(
            &LinuxBuilder::default().build().unwrap()
        ));
    }

    #[test]
    fn the_hosts_dev_yields_its_nodes() {
        // /dev/null exists wherever the tests run.
        let mut linux = linux_with_rule(true);
        add_all(&mut linux, Path::new("/dev")).unwrap();
        let devices = linux.devices().clone().unwrap();
        let null = devices
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null");
        assert_eq!((null.major(), null.minor()), (1, 3));
        assert!(devices.iter().all(|d| !d.path().starts_with("/dev/pts")));
    }
}
