//! OCI runtime specs for containers in a pod VM, in guest terms (paths as the agent sees them),
//! derived from the CRI config the way containerd's CRI plugin derives them
//! (`internal/cri/server/container_create_linux.go`, `internal/cri/opts/spec_opts.go`).
//!
//! [`build_container_spec`] is the entry point; each part of the spec has its own module:
//! `process` (args, env, cwd, rlimits), `user` (uid/gid, names resolved by `etc_files`),
//! `capabilities`, `mounts`, `resources` (both directions, for UpdateContainerResources
//! too), `security` (privileged, masked paths, namespaces), `sysctls` (container or guest)
//! and `annotations`.
//! Every validation error is [`SpecError::Invalid`] naming the CRI field at fault, so the
//! gRPC status can name it.

mod annotations;
mod capabilities;
mod devices;
mod etc_files;
mod mounts;
mod process;
mod resources;
mod seccomp;
mod security;
mod sysctls;
mod user;

#[cfg(test)]
pub(crate) mod testing;

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, RootBuilder, Spec};
use vessel_protocols::cri;

pub use resources::{cri_to_oci_resources, oci_to_cri_resources};
pub use security::{host_ipc, host_network, host_pid, namespace_options, shares_pid_namespace};
pub use sysctls::{pod_sysctls, PodSysctls};

/// Where the agent mounts the pod's shared dir (virtio-fs) in the guest.
pub use vessel_protocols::guest::GUEST_SHARED_DIR;
use vessel_protocols::guest::{container_cgroup, POD_PID_NAMESPACE};

/// The default `PATH` of a container process.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a spec could not be built. [`SpecError::Invalid`] is the caller's fault (a CRI field);
/// the rest are the image's or ours.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A CRI field is invalid; `field` is its path in the request (`linux.resources.cpu_period`,
    /// `mounts[2].container_path`, `sandbox_config.linux.sysctls[kernel.x]`, …).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The image's `User` does not resolve in the container's rootfs.
    #[error("image user {user:?}: {reason}")]
    ImageUser { user: String, reason: String },
    /// A file of the rootfs (/etc/passwd, /etc/group) could not be read.
    #[error("read {}: {source}", path.display())]
    Rootfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("build OCI spec: {0}")]
    Build(#[from] oci_spec::OciSpecError),
    #[error("encode OCI spec: {0}")]
    Encode(#[from] serde_json::Error),
}

impl SpecError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Puts `prefix.` in front of the field of an [`SpecError::Invalid`].
    pub(crate) fn within(self, prefix: &str) -> Self {
        match self {
            Self::Invalid { field, reason } => Self::Invalid {
                field: format!("{prefix}.{field}"),
                reason,
            },
            other => other,
        }
    }
}

/// What the image says about running it (from the OCI image config's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// A CRI mount after the runtime made the host path visible in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    pub container_path: String,
    pub guest_source: String,
    pub readonly: bool,
    /// A `cri::MountPropagation`.
    pub propagation: i32,
}

/// Everything a container's spec is derived from.
#[derive(Debug, Clone)]
pub struct ContainerSpecInput<'a> {
    pub container_id: &'a str,
    pub pod: &'a cri::PodSandboxConfig,
    pub container: &'a cri::ContainerConfig,
    pub image: &'a ImageDefaults,
    /// Host path of the container rootfs, to resolve user and group names from its
    /// /etc/passwd and /etc/group. Empty: no rootfs to consult (names then fail to resolve,
    /// numeric ids are taken as they are).
    pub rootfs_host: &'a Path,
    /// Guest path of the rootfs (usually [`guest_rootfs`]`(container_id)`).
    pub rootfs_guest: String,
    /// The guest view of `container.mounts`, in the same order.
    pub mounts: Vec<GuestMount>,
    /// Set for a native pod's container, which runs on the host; none: in a pod VM.
    pub host: Option<HostPlacement>,
    /// Guest paths of the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname, bind-mounted
    /// unless the container mounts its own there.
    pub etc_hosts: Option<String>,
    pub resolv_conf: Option<String>,
    pub hostname_file: Option<String>,
}

/// A native pod's container on the host: it joins the IPC and UTS namespaces of the pod's
/// agent (the pod's, or the host's for hostIPC/hostNetwork) instead of taking its own, and
/// runs in a host cgroup beside the agent's.
#[derive(Debug, Clone)]
pub struct HostPlacement {
    /// Its cgroup, under kubelet's pod cgroup.
    pub cgroup: String,
    /// The pod shares the host's pid namespace (hostPID): the container takes none of its
    /// own and sees the host's processes, as the agent does.
    pub host_pid: bool,
}

/// Guest path of a container's rootfs, below the shared dir.
pub fn guest_rootfs(container_id: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{container_id}/rootfs")
}

/// The hostname of a pod's containers: the pod's (RunPodSandbox records the node's when the
/// config gives none), else its name (pods recorded before that).
pub fn pod_hostname(pod: &cri::PodSandboxConfig) -> String {
    if !pod.hostname.is_empty() {
        return pod.hostname.clone();
    }
    pod.metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

/// Derives the OCI spec of a container from its CRI config, the pod's, and its image.
pub fn build_container_spec(input: &ContainerSpecInput<'_>) -> Result<Spec, SpecError> {
    let security = security::Security::of(input.pod, input.container)?;
    let hostname = pod_hostname(input.pod);
    let user = user::resolve(input.rootfs_host, input.container, input.image)?;
    let caps = capabilities::for_container(security.privileged, security.context)?;
    let seccomp = seccomp::profile(
        input.pod,
        security.context,
        security.privileged,
        &caps.bounding().clone().unwrap_or_default(),
    )?;
    let resources = input
        .container
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref());
    let process = process::build(&process::ProcessInput {
        container: input.container,
        image: input.image,
        hostname: &hostname,
        user,
        capabilities: caps,
        no_new_privileges: security.context.is_some_and(|c| c.no_new_privs),
        oom_score_adj: resources.map(|r| r.oom_score_adj),
    })?;
    let (mounts, rootfs_propagation) = mounts::build(&mounts::MountInput {
        cri_mounts: &input.mounts,
        privileged: security.privileged,
        readonly_rootfs: security.readonly_rootfs(),
        etc_hosts: input.etc_hosts.as_deref(),
        resolv_conf: input.resolv_conf.as_deref(),
        hostname_file: input.hostname_file.as_deref(),
        on_host: input.host.is_some(),
    })?;
    // The pod's pid namespace, by the contract's path, when the pod shares one.
    let pid_ns = shares_pid_namespace(input.pod).then_some(POD_PID_NAMESPACE);
    let mut linux = security.linux(pid_ns)?;
    let cgroup = match &input.host {
        Some(host) => {
            let mut shared_with_pod = vec![LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts];
            if host.host_pid {
                shared_with_pod.push(LinuxNamespaceType::Pid);
            }
            let own = linux.namespaces().clone().unwrap_or_default();
            linux.set_namespaces(Some(
                own.into_iter()
                    .filter(|ns| !shared_with_pod.contains(&ns.typ()))
                    .collect(),
            ));
            // The pod's sysctls are the agent's to set, in the namespaces the container
            // shares with it (`pod_vm` sends them with CreateSandbox).
            linux.set_sysctl(None);
            host.cgroup.clone()
        }
        None => container_cgroup(input.container_id),
    };
    linux.set_cgroups_path(Some(PathBuf::from(cgroup)));
    linux.set_rootfs_propagation(rootfs_propagation);
    linux.set_seccomp(seccomp);
    let mut oci_resources = match resources {
        Some(r) => resources::convert(r).map_err(|e| e.within("linux.resources"))?,
        None => Default::default(),
    };
    let (device_nodes, mut device_rules) = devices::build(&input.container.devices)?;
    device_rules.splice(0..0, security.device_rules()?);
    oci_resources.set_devices(Some(device_rules));
    linux.set_devices((!device_nodes.is_empty()).then_some(device_nodes));
    linux.set_resources(Some(oci_resources));

    let mut spec = Spec::default();
    // A native pod's container has the agent's UTS namespace, whose name is the pod's.
    let own_uts = input.host.is_none();
    spec.set_hostname((own_uts && !hostname.is_empty()).then_some(hostname));
    spec.set_root(Some(
        RootBuilder::default()
            .path(&input.rootfs_guest)
            .readonly(security.readonly_rootfs())
            .build()?,
    ));
    spec.set_mounts(Some(mounts));
    spec.set_process(Some(process));
    spec.set_linux(Some(linux));
    spec.set_annotations(Some(annotations::build(input.pod, input.container)));
    Ok(spec)
}

/// The spec as the agent API carries it.
pub fn to_json(spec: &Spec) -> Result<Vec<u8>, SpecError> {
    Ok(serde_json::to_vec(spec)?)
}

#[cfg(test)]
mod tests {
    use super::testing::{container, input, pod, with_namespaces, Rootfs};
    use super::*;

    #[test]
    fn a_bare_spec_has_own_namespaces_but_not_network() {
        let (pod, ctr, image) = (
            pod(),
            container(&["sh", "-c", "true"]),
            ImageDefaults::default(),
        );
        let spec = build_container_spec(&input("c1", &pod, &ctr, &image, Path::new(""))).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let types: Vec<_> = linux
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
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), None, "set only when asked");
        assert_eq!(process.args().as_ref().unwrap()[0], "sh");
        let json = String::from_utf8(to_json(&spec).unwrap()).unwrap();
        assert!(json.contains("\"cgroupsPath\":\"/vessel/c1\""), "{json}");
    }

    #[test]
    fn a_pod_sharing_its_pid_namespace_names_it_by_the_contract_path() {
        let ctr = container(&["true"]);
        let image = ImageDefaults::default();
        let pid_path = |pod: &cri::PodSandboxConfig| {
            let spec =
                build_container_spec(&input("c1", pod, &ctr, &image, Path::new(""))).unwrap();
            let linux = spec.linux().clone().unwrap();
            let namespaces = linux.namespaces().clone().unwrap();
            let pid = namespaces
                .iter()
                .find(|n| n.typ() == LinuxNamespaceType::Pid)
                .cloned();
            pid.unwrap().path().clone()
        };
        assert_eq!(pid_path(&pod()), None);
        let shared = with_namespaces(
            pod(),
            cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            },
        );
        assert!(shares_pid_namespace(&shared));
        assert_eq!(pid_path(&shared), Some(POD_PID_NAMESPACE.into()));
    }

    #[test]
    fn the_spec_keeps_given_env() {
        let pod = pod();
        let mut ctr = container(&["true"]);
        ctr.envs = [("A", "1"), ("B", "x=y")]
            .map(|(key, value)| cri::KeyValue {
                key: key.into(),
                value: value.into(),
            })
            .into();
        let image = ImageDefaults::default();
        let spec = build_container_spec(&input("c1", &pod, &ctr, &image, Path::new(""))).unwrap();
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&DEFAULT_PATH.to_string()), "{env:?}");
        assert!(env.contains(&"A=1".to_string()), "{env:?}");
        assert!(env.contains(&"B=x=y".to_string()), "{env:?}");
    }

    #[test]
    fn builds_a_complete_spec() {
        let rootfs = Rootfs::new();
        let pod = pod();
        let mut ctr = container(&["/bin/app"]);
        ctr.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: 100,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                readonly_rootfs: true,
                run_as_username: "app".into(),
                ..Default::default()
            }),
        });
        let image = ImageDefaults::default();
        let spec = build_container_spec(&input("c9", &pod, &ctr, &image, rootfs.path())).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(root.path(), Path::new(&guest_rootfs("c9")));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.oom_score_adj(), Some(100));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/vessel/c9"))
        );
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.cpu().as_ref().unwrap().shares(), Some(512));
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert!(res.devices().as_ref().is_some_and(|d| !d.is_empty()));
        let annotations = spec.annotations().as_ref().unwrap();
        assert_eq!(annotations["io.kubernetes.cri.container-name"], "app");
        // The whole spec goes through the agent's JSON and back unchanged.
        let back: Spec = serde_json::from_slice(&to_json(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn resource_errors_name_the_container_field() {
        let pod = pod();
        let mut ctr = container(&["/bin/app"]);
        ctr.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: -1,
                ..Default::default()
            }),
            security_context: None,
        });
        let image = ImageDefaults::default();
        let e = build_container_spec(&input("c1", &pod, &ctr, &image, Path::new(""))).unwrap_err();
        assert!(
            matches!(&e, SpecError::Invalid { field, .. } if field == "linux.resources.cpu_period"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("invalid linux.resources.cpu_period: "),
            "{e}"
        );
    }

    #[test]
    fn hostname_falls_back_to_the_pod_name() {
        let mut p = pod();
        p.hostname.clear();
        assert_eq!(pod_hostname(&p), "web-0-pod");
        assert_eq!(pod_hostname(&cri::PodSandboxConfig::default()), "");
        let ctr = container(&["x"]);
        let image = ImageDefaults::default();
        let spec = build_container_spec(&input("c1", &p, &ctr, &image, Path::new(""))).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("web-0-pod"));
    }
}
