//! What a backend needs on the host before it can start a pod VM: its programs (the VMM and
//! the vhost-user helpers) and the guest image. Status reports the missing ones, so a node
//! whose runtime cannot start pods says why before kubelet schedules any.

use std::path::{Path, PathBuf};

use super::Backend;
use crate::config::HypervisorConfig;

/// The programs and files `backend` uses, each with the config key that names it.
fn requirements(backend: Backend, config: &HypervisorConfig) -> Vec<(&'static str, &Path)> {
    let mut needs = match backend {
        // A native pod needs only its agent (`native.agent`), checked when it starts.
        Backend::Native => return Vec::new(),
        Backend::Builtin => vec![("hypervisor.vmm", config.vmm.as_path())],
        Backend::Qemu { .. } => vec![
            ("hypervisor.qemu", config.qemu.as_path()),
            ("hypervisor.vhost_device_vsock", &config.vhost_device_vsock),
        ],
    };
    needs.extend([
        ("hypervisor.virtiofsd", config.virtiofsd.as_path()),
        ("hypervisor.kernel", &config.kernel),
        ("hypervisor.initrd", &config.initrd),
    ]);
    needs
}

/// One line for each thing `backend` needs that this host lacks; empty when it can run pods.
pub fn missing(backend: Backend, config: &HypervisorConfig) -> Vec<String> {
    requirements(backend, config)
        .into_iter()
        .filter(|(_, path)| which(path).is_none())
        .map(|(key, path)| format!("{key} {} not found", path.display()))
        .collect()
}

/// Resolves a program as a shell would: a path with a `/` as it is, a bare name on `PATH`.
/// Only regular files count.
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_part_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present");
        std::fs::write(&present, "").unwrap();
        let config = HypervisorConfig {
            vmm: dir.path().join("no-vmm"),
            qemu: "sh".into(),
            virtiofsd: present.clone(),
            vhost_device_vsock: present.clone(),
            kernel: present.clone(),
            initrd: dir.path().join("no-initrd"),
            ..Default::default()
        };
        let builtin = missing(Backend::Builtin, &config);
        assert_eq!(builtin.len(), 2, "{builtin:?}");
        assert!(builtin[0].starts_with("hypervisor.vmm ") && builtin[0].contains("no-vmm"));
        assert!(builtin[1].starts_with("hypervisor.initrd "));
        // QEMU is found on PATH; the VMM binary does not matter to it.
        let qemu = missing(Backend::Qemu { kvm: false }, &config);
        assert_eq!(qemu, [builtin[1].clone()]);
    }

    #[test]
    fn bare_names_are_looked_up_on_path() {
        assert!(which(Path::new("sh")).is_some());
        assert!(which(Path::new("no-such-program-here")).is_none());
        assert!(which(Path::new("/bin/sh")).is_some());
    }
}
