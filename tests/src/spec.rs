//! OCI specs for containers the tests create through the agent directly, without CreateContainer.

use std::path::Path;

use oci_spec::runtime::Spec;
use vessel_protocols::cri;
use vessel_shim::oci;

/// A spec for `args` with the runtime defaults and no CRI config: what tests use to run a
/// command in a bare container. `env` (`KEY=value`) is added to the default `PATH`; the
/// hostname is the container id (cut to 63 characters); no_new_privileges is set.
pub fn bare_spec(
    container_id: &str,
    args: &[String],
    env: &[String],
) -> Result<Spec, oci::SpecError> {
    let pod = cri::PodSandboxConfig {
        hostname: container_id.chars().take(63).collect(),
        ..Default::default()
    };
    let container = cri::ContainerConfig {
        command: args.to_vec(),
        envs: env
            .iter()
            .map(|e| {
                let (key, value) = e.split_once('=').unwrap_or((e, ""));
                cri::KeyValue {
                    key: key.to_owned(),
                    value: value.to_owned(),
                }
            })
            .collect(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                no_new_privs: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    oci::build_container_spec(&oci::ContainerSpecInput {
        container_id,
        pod: &pod,
        container: &container,
        image: &oci::ImageDefaults::default(),
        rootfs_host: Path::new(""),
        rootfs_guest: oci::guest_rootfs(container_id),
        mounts: Vec::new(),
        etc_hosts: None,
        resolv_conf: None,
        hostname_file: None,
        host: None,
    })
}
