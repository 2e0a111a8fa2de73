//! The pod's sysctls (CRI `sandbox_config.linux.sysctls`), split by where they take effect.
//!
//! A container has its own IPC and UTS namespaces but shares the guest's network namespace,
//! which is the pod's. libcontainer accepts in a container spec only the sysctls of the
//! namespaces the container owns (IPC: `kernel.msg*`, `kernel.sem`, `kernel.shm*`,
//! `fs.mqueue.*`; UTS: `kernel.domainname`) and refuses `net.*` for a container without a
//! network namespace of its own. Those go to the guest instead: its kernel is the pod's
//! alone, so the pod's network sysctls (and any other) are set there once, for the pod, by
//! the agent at CreateSandbox. A native pod's containers share its agent's IPC and UTS
//! namespaces, so there every sysctl is the agent's to set ([`PodSysctls::for_agent`]).

use std::collections::HashMap;

use vessel_protocols::cri;

use super::SpecError;

use vessel_protocols::guest::IPC_SYSCTLS;

/// A pod's sysctls by where they take effect; keys as the pod gave them (`.` or `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSysctls {
    /// In every container's spec (its own IPC and UTS namespaces).
    pub container: HashMap<String, String>,
    /// In the guest, once per pod (network and the rest), before its containers start.
    pub guest: HashMap<String, String>,
}

impl PodSysctls {
    /// What CreateSandbox carries: the guest's share in a VM, all of them for a native pod.
    pub fn for_agent(self, native: bool) -> HashMap<String, String> {
        if native {
            self.container.into_iter().chain(self.guest).collect()
        } else {
            self.guest
        }
    }
}

/// Checks the pod's sysctls and splits them. Errors name
/// `sandbox_config.linux.sysctls[<key>]`.
pub fn pod_sysctls(pod: &cri::PodSandboxConfig) -> Result<PodSysctls, SpecError> {
    let mut out = PodSysctls::default();
    let Some(linux) = &pod.linux else {
        return Ok(out);
    };
    for (key, value) in &linux.sysctls {
        let field = || format!("sandbox_config.linux.sysctls[{key}]");
        let chars_ok = key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
        let parts_ok = key.split(['.', '/']).all(|p| !p.is_empty());
        if !chars_ok || !parts_ok {
            return Err(SpecError::invalid(field(), "not a sysctl name"));
        }
        if value.contains('\0') {
            return Err(SpecError::invalid(field(), "value holds a NUL byte"));
        }
        let name = key.replace('/', ".");
        if name == "kernel.hostname" {
            return Err(SpecError::invalid(
                field(),
                "the hostname comes from sandbox_config.hostname",
            ));
        }
        let in_container = IPC_SYSCTLS.contains(&name.as_str())
            || name.starts_with("fs.mqueue.")
            || name == "kernel.domainname";
        let target = if in_container {
            &mut out.container
        } else {
            &mut out.guest
        };
        target.insert(key.clone(), value.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(sysctls: &[(&str, &str)]) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                sysctls: sysctls
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn split_by_namespace() {
        let got = pod_sysctls(&pod_with(&[
            ("net.core.somaxconn", "1024"),
            ("net/ipv4/ip_forward", "1"),
            ("kernel.shm_rmid_forced", "1"),
            ("kernel/msgmax", "8192"),
            ("fs.mqueue.msg_max", "20"),
            ("kernel.domainname", "example"),
            ("vm.overcommit_memory", "1"),
        ]))
        .unwrap();
        assert_eq!(
            got.container,
            map(&[
                ("kernel.shm_rmid_forced", "1"),
                ("kernel/msgmax", "8192"),
                ("fs.mqueue.msg_max", "20"),
                ("kernel.domainname", "example"),
            ])
        );
        assert_eq!(
            got.guest,
            map(&[
                ("net.core.somaxconn", "1024"),
                ("net/ipv4/ip_forward", "1"),
                ("vm.overcommit_memory", "1"),
            ])
        );
        assert_eq!(
            pod_sysctls(&cri::PodSandboxConfig::default()).unwrap(),
            PodSysctls::default()
        );
    }

    #[test]
    fn bad_names_are_errors_naming_the_key() {
        for bad in [
            "",
            "net..core",
            "../../etc",
            "a b",
            "net.core.",
            "/net",
            "kernel.hostname",
        ] {
            let e = pod_sysctls(&pod_with(&[(bad, "1")])).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid sandbox_config.linux.sysctls[{bad}]")),
                "{e}"
            );
        }
        let e = pod_sysctls(&pod_with(&[("kernel.sem", "1\0")])).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
    }
}
