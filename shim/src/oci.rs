//! OCI runtime specs for containers in a pod VM, in guest terms (paths as the agent sees them).

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
};

/// Where the agent mounts the pod's shared dir (virtio-fs) in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/vessel/shared";

/// The default `PATH` of a container process.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("build OCI spec: {0}")]
    Build(#[from] oci_spec::OciSpecError),
    #[error("encode OCI spec: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Guest path of a container's rootfs, below the shared dir.
pub fn guest_rootfs(container_id: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{container_id}/rootfs")
}

/// A spec with the OCI defaults (mounts, masked paths, capabilities, rlimits), the given
/// command, and the pid, mount, ipc and uts namespaces of its own. Containers share the guest's
/// network namespace, which is the pod's.
pub fn container_spec(
    container_id: &str,
    args: &[String],
    env: &[String],
) -> Result<Spec, SpecError> {
    let defaults = Spec::default();
    let mut env_all = vec![DEFAULT_PATH.to_string()];
    env_all.extend(env.iter().cloned());
    let default_process = defaults.process().clone().unwrap_or_default();
    let process = ProcessBuilder::default()
        .args(args.to_vec())
        .env(env_all)
        .cwd("/")
        .terminal(false)
        .no_new_privileges(true)
        .user(default_process.user().clone())
        .capabilities(default_process.capabilities().clone().unwrap_or_default())
        .rlimits(default_process.rlimits().clone().unwrap_or_default())
        .build()?;
    let linux_defaults = defaults.linux().clone().unwrap_or_default();
    let namespaces = linux_defaults
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| {
            matches!(
                ns.typ(),
                LinuxNamespaceType::Pid
                    | LinuxNamespaceType::Mount
                    | LinuxNamespaceType::Ipc
                    | LinuxNamespaceType::Uts
            )
        })
        .collect::<Vec<_>>();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(linux_defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(linux_defaults.readonly_paths().clone().unwrap_or_default())
        .cgroups_path(format!("/vessel/{container_id}"))
        .build()?;
    let spec = SpecBuilder::default()
        .version(defaults.version().clone())
        .hostname(container_id.chars().take(63).collect::<String>())
        .root(
            RootBuilder::default()
                .path(guest_rootfs(container_id))
                .readonly(false)
                .build()?,
        )
        .mounts(defaults.mounts().clone().unwrap_or_default())
        .process(process)
        .linux(linux)
        .build()?;
    Ok(spec)
}

/// The spec as the agent API carries it.
pub fn to_json(spec: &Spec) -> Result<Vec<u8>, SpecError> {
    Ok(serde_json::to_vec(spec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_has_own_namespaces_but_not_network() {
        let spec = container_spec("c1", &["sh".into(), "-c".into(), "true".into()], &[]).unwrap();
        let types: Vec<_> = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(types.contains(&LinuxNamespaceType::Pid));
        assert!(types.contains(&LinuxNamespaceType::Mount));
        assert!(!types.contains(&LinuxNamespaceType::Network));
        assert_eq!(
            spec.root().as_ref().unwrap().path().to_str(),
            Some("/run/vessel/shared/c1/rootfs")
        );
        let json = String::from_utf8(to_json(&spec).unwrap()).unwrap();
        assert!(json.contains("\"cgroupsPath\":\"/vessel/c1\""), "{json}");
    }
}
