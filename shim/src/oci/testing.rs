//! Test fixtures of the spec builder: a pod and container config, a temporary rootfs with
//! /etc/passwd and /etc/group, and a [`ContainerSpecInput`] over them.

use std::path::Path;

use vessel_protocols::cri;

use super::{guest_rootfs, ContainerSpecInput, ImageDefaults};

/// The /etc/passwd of [`Rootfs`].
pub const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment, then a malformed line
broken
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1001:App:/home/app:/bin/sh
nogroup-user:x:2000:2000::/:/bin/sh
";

/// The /etc/group of [`Rootfs`].
pub const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
app:x:1001:
video:x:44:app
audio:x:63:daemon
";

/// A temporary rootfs with /etc/passwd and /etc/group.
pub struct Rootfs(tempfile::TempDir);

impl Rootfs {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir etc");
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).expect("write passwd");
        std::fs::write(dir.path().join("etc/group"), GROUP).expect("write group");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A pod `web-0-pod` in namespace `default` with hostname `web-0`.
pub fn pod() -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web-0-pod".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web-0".into(),
        ..Default::default()
    }
}

/// A container `app` running `command`.
pub fn container(command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A security context with nothing set.
pub fn security_context() -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext::default()
}

/// `container` with `ctx` as its security context.
pub fn with_security(
    mut c: cri::ContainerConfig,
    ctx: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context = Some(ctx);
    c
}

/// `pod` with `options` as its namespace options.
pub fn with_namespaces(
    mut pod: cri::PodSandboxConfig,
    options: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    pod.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(options);
    pod
}

/// `pod` with its privileged flag set to `privileged`.
pub fn privileged_pod(privileged: bool) -> cri::PodSandboxConfig {
    let mut p = pod();
    p.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged,
            ..Default::default()
        }),
        ..Default::default()
    });
    p
}

/// An input without mounts or /etc files.
pub fn input<'a>(
    id: &'a str,
    pod: &'a cri::PodSandboxConfig,
    container: &'a cri::ContainerConfig,
    image: &'a ImageDefaults,
    rootfs: &'a Path,
) -> ContainerSpecInput<'a> {
    ContainerSpecInput {
        container_id: id,
        pod,
        container,
        image,
        rootfs_host: rootfs,
        rootfs_guest: guest_rootfs(id),
        host: None,
        mounts: Vec::new(),
        etc_hosts: None,
        resolv_conf: None,
        hostname_file: None,
    }
}
