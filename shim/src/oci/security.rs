//! The isolation of a container: privileged mode (allowed only in a privileged pod),
//! masked and read-only paths, sysctls (those of its own namespaces), the device cgroup
//! rule, and namespaces.
//!
//! Namespaces: pid (own, or the pod's shared one), mount, ipc, uts and cgroup; never network,
//! since containers share the guest's, which is the pod's.

use std::collections::HashMap;

use oci_spec::runtime::{
    Linux, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType,
};
use vessel_protocols::cri;

use super::{sysctls, SpecError};

/// containerd's default masked paths (`populateDefaultUnixSpec`).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The security settings of one container in its pod.
pub(super) struct Security<'a> {
    pub privileged: bool,
    pub context: Option<&'a cri::LinuxContainerSecurityContext>,
    pod: &'a cri::PodSandboxConfig,
}

impl<'a> Security<'a> {
    /// Checks that a privileged container is in a privileged pod.
    pub fn of(
        pod: &'a cri::PodSandboxConfig,
        container: &'a cri::ContainerConfig,
    ) -> Result<Self, SpecError> {
        let context = container
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref());
        let privileged = context.is_some_and(|c| c.privileged);
        let pod_privileged = pod
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|c| c.privileged);
        if privileged && !pod_privileged {
            return Err(SpecError::invalid(
                "linux.security_context.privileged",
                "the pod is not privileged (sandbox_config.linux.security_context.privileged)",
            ));
        }
        Ok(Self {
            privileged,
            context,
            pod,
        })
    }

    pub fn readonly_rootfs(&self) -> bool {
        self.context.is_some_and(|c| c.readonly_rootfs)
    }

    /// The `linux` section without resources, cgroups path and rootfs propagation: namespaces
    /// (`pid_ns`: the pod's pid namespace to join), masked and read-only paths, sysctls.
    pub fn linux(&self, pid_ns: Option<&str>) -> Result<Linux, SpecError> {
        let mut linux = Linux::default();
        linux.set_namespaces(Some(namespaces(pid_ns)?));
        let (masked, readonly) = self.proc_paths();
        linux.set_masked_paths(masked);
        linux.set_readonly_paths(readonly);
        linux.set_sysctl(self.sysctls()?);
        linux.set_resources(None);
        Ok(linux)
    }

    /// Masked and read-only paths: none when privileged, else the security context's when
    /// it gives them, else the defaults.
    fn proc_paths(&self) -> (Option<Vec<String>>, Option<Vec<String>>) {
        if self.privileged {
            return (None, None);
        }
        let or_default = |given: Option<&Vec<String>>, default: &[&str]| match given {
            Some(paths) if !paths.is_empty() => paths.clone(),
            _ => default.iter().map(|p| p.to_string()).collect(),
        };
        (
            Some(or_default(
                self.context.map(|c| &c.masked_paths),
                &DEFAULT_MASKED_PATHS,
            )),
            Some(or_default(
                self.context.map(|c| &c.readonly_paths),
                &DEFAULT_READONLY_PATHS,
            )),
        )
    }

    /// The pod's sysctls that apply in the container's own namespaces (see `sysctls.rs`).
    fn sysctls(&self) -> Result<Option<HashMap<String, String>>, SpecError> {
        let container = sysctls::pod_sysctls(self.pod)?.container;
        Ok((!container.is_empty()).then_some(container))
    }

    /// The device cgroup rule: everything allowed when privileged, else everything denied
    /// (the runtime adds the standard devices: null, zero, full, random, urandom, tty, ptmx).
    pub fn device_rules(&self) -> Result<Vec<LinuxDeviceCgroup>, SpecError> {
        Ok(vec![LinuxDeviceCgroupBuilder::default()
            .allow(self.privileged)
            .access("rwm")
            .build()?])
    }
}

/// The pod's namespace options (all POD when it gives none): the one place they are read.
pub fn namespace_options(pod: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    pod.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// Whether the pod asks for one pid namespace for all its containers (CRI NamespaceMode
/// POD): the agent then runs a pause process as its init.
pub fn shares_pid_namespace(pod: &cri::PodSandboxConfig) -> bool {
    pod.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.pid == cri::NamespaceMode::Pod as i32)
}

/// The pod runs in the host's network namespace (hostNetwork).
pub fn host_network(pod: &cri::PodSandboxConfig) -> bool {
    namespace_options(pod).network == cri::NamespaceMode::Node as i32
}

/// The pod shares the host's IPC namespace (hostIPC).
pub fn host_ipc(pod: &cri::PodSandboxConfig) -> bool {
    namespace_options(pod).ipc == cri::NamespaceMode::Node as i32
}

/// The pod shares the host's pid namespace (hostPID).
pub fn host_pid(pod: &cri::PodSandboxConfig) -> bool {
    namespace_options(pod).pid == cri::NamespaceMode::Node as i32
}

/// A container's namespaces, all its own but network (the pod's, which is the guest's); pid
/// is the pod's, by the contract's path, when `pid_ns` names it.
fn namespaces(pid_ns: Option<&str>) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut pid = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Pid);
    if let Some(path) = pid_ns {
        pid = pid.path(path);
    }
    let mut out = vec![pid.build()?];
    for typ in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ] {
        out.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{container, pod, privileged_pod, security_context, with_security};
    use super::*;
    use vessel_protocols::guest::POD_PID_NAMESPACE;

    fn privileged_ctr(privileged: bool) -> cri::ContainerConfig {
        with_security(
            container(&["x"]),
            cri::LinuxContainerSecurityContext {
                privileged,
                masked_paths: vec!["/custom".into()],
                ..security_context()
            },
        )
    }

    #[test]
    fn privileged_needs_a_privileged_pod() {
        // (pod privileged, container privileged, ok)
        for (pod_p, ctr_p, ok) in [
            (false, false, true),
            (true, false, true),
            (true, true, true),
            (false, true, false),
        ] {
            let pod = privileged_pod(pod_p);
            let ctr = privileged_ctr(ctr_p);
            match Security::of(&pod, &ctr) {
                Ok(s) => {
                    assert!(ok);
                    assert_eq!(s.privileged, ctr_p);
                }
                Err(e) => {
                    assert!(!ok);
                    assert!(
                        e.to_string()
                            .starts_with("invalid linux.security_context.privileged"),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn masked_and_readonly_paths() {
        let defaults = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let p = pod();
        let plain = container(&["x"]);
        let s = Security::of(&p, &plain).unwrap();
        let linux = s.linux(None).unwrap();
        assert_eq!(
            linux.masked_paths().clone(),
            defaults(&DEFAULT_MASKED_PATHS)
        );
        assert_eq!(
            linux.readonly_paths().clone(),
            defaults(&DEFAULT_READONLY_PATHS)
        );

        let given = privileged_ctr(false);
        let linux = Security::of(&p, &given).unwrap().linux(None).unwrap();
        assert_eq!(linux.masked_paths().clone(), defaults(&["/custom"]));
        assert_eq!(
            linux.readonly_paths().clone(),
            defaults(&DEFAULT_READONLY_PATHS)
        );

        let pp = privileged_pod(true);
        let privileged = privileged_ctr(true);
        let s = Security::of(&pp, &privileged).unwrap();
        let linux = s.linux(None).unwrap();
        assert!(linux.masked_paths().is_none() && linux.readonly_paths().is_none());
    }

    #[test]
    fn devices_are_restricted_unless_privileged() {
        let pp = privileged_pod(true);
        for privileged in [false, true] {
            let ctr = privileged_ctr(privileged);
            let rules = Security::of(&pp, &ctr).unwrap().device_rules().unwrap();
            assert_eq!(rules.len(), 1);
            assert_eq!(rules[0].allow(), privileged);
            assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        }
    }

    #[test]
    fn namespaces_are_own_or_the_pods_pid() {
        let p = pod();
        let c = container(&["x"]);
        let s = Security::of(&p, &c).unwrap();
        let types = |l: &Linux| {
            l.namespaces()
                .iter()
                .flatten()
                .map(|n| (n.typ(), n.path().clone()))
                .collect::<Vec<_>>()
        };
        let own = types(&s.linux(None).unwrap());
        assert_eq!(
            own,
            [
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Ipc, None),
                (LinuxNamespaceType::Uts, None),
                (LinuxNamespaceType::Cgroup, None),
            ]
        );
        let shared = types(&s.linux(Some(POD_PID_NAMESPACE)).unwrap());
        assert_eq!(
            shared[0],
            (LinuxNamespaceType::Pid, Some(POD_PID_NAMESPACE.into()))
        );
        assert!(shared
            .iter()
            .all(|(t, _)| *t != LinuxNamespaceType::Network));
    }

    #[test]
    fn container_sysctls_come_from_the_pod() {
        let mut p = pod();
        let c = container(&["x"]);
        let sysctl = |p: &cri::PodSandboxConfig| {
            let linux = Security::of(p, &c).unwrap().linux(None);
            linux.map(|l| l.sysctl().clone())
        };
        assert_eq!(sysctl(&p).unwrap(), None);
        p.linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: HashMap::from([
                ("net.core.somaxconn".to_string(), "1024".to_string()),
                ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            ]),
            ..Default::default()
        });
        let want = HashMap::from([("kernel.shm_rmid_forced".to_string(), "1".to_string())]);
        assert_eq!(sysctl(&p).unwrap(), Some(want));
        p.linux.as_mut().unwrap().sysctls = HashMap::from([("a b".to_string(), "1".to_string())]);
        assert!(sysctl(&p).is_err());
    }
}
