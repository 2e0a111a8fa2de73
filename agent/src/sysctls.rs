//! The pod's sysctls that CreateSandbox carries, written under `/proc/sys` once for the pod.
//! In a pod VM the kernel is the pod's alone, so any sysctl may be set. A native pod's agent
//! shares the host's kernel: it sets only namespaced sysctls, and only in namespaces that are
//! the pod's own (IPC ones in its IPC namespace, `kernel.domainname` in its UTS namespace,
//! `net.*` in its network namespace); anything else would change the node and is refused.

use std::path::PathBuf;

use vessel_protocols::guest::IPC_SYSCTLS;

/// Why a sysctl was not set (answered as INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("sysctls[{0}]: not a sysctl name")]
    Name(String),
    #[error("sysctls[{key}]: {why}")]
    Host { key: String, why: &'static str },
    #[error("sysctls[{key}]: write {path}: {source}")]
    Write {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Which of the pod's namespaces this agent owns (all of them in a guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    pub ipc: bool,
    pub uts: bool,
    pub net: bool,
    /// The kernel itself is the pod's (a VM): any sysctl goes.
    pub kernel: bool,
}

/// Sets each sysctl, in name order, stopping at the first that fails.
pub fn apply(sysctls: &[(String, String)], owned: Owned) -> Result<(), SysctlError> {
    let mut sorted: Vec<&(String, String)> = sysctls.iter().collect();
    sorted.sort();
    for (key, value) in sorted {
        let path = path_of(key)?;
        allowed(key, owned)?;
        std::fs::write(&path, value).map_err(|source| SysctlError::Write {
            key: key.clone(),
            path,
            source,
        })?;
        tracing::info!(sysctl = %key, %value, "pod sysctl set");
    }
    Ok(())
}

/// `/proc/sys/<name>`: a `/`-separated name as it is, a `.`-separated one with dots as
/// separators. Every part must be a plain name.
fn path_of(key: &str) -> Result<PathBuf, SysctlError> {
    let sep = if key.contains('/') { '/' } else { '.' };
    let parts: Vec<&str> = key.split(sep).collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if parts.is_empty() || !parts.iter().all(plain) {
        return Err(SysctlError::Name(key.to_owned()));
    }
    Ok(parts
        .iter()
        .fold(PathBuf::from("/proc/sys"), |path, part| path.join(part)))
}

/// Refuses what would change the host (see the module doc).
fn allowed(key: &str, owned: Owned) -> Result<(), SysctlError> {
    if owned.kernel {
        return Ok(());
    }
    let name = key.replace('/', ".");
    let refuse = |why| {
        Err(SysctlError::Host {
            key: key.to_owned(),
            why,
        })
    };
    if IPC_SYSCTLS.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
        return if owned.ipc {
            Ok(())
        } else {
            refuse("an IPC sysctl in a pod on the host's IPC namespace (hostIPC) would change the node")
        };
    }
    if name == "kernel.domainname" {
        return if owned.uts {
            Ok(())
        } else {
            refuse("a UTS sysctl in a pod on the host's UTS namespace (hostNetwork) would change the node")
        };
    }
    if name.starts_with("net.") {
        return if owned.net {
            Ok(())
        } else {
            refuse("a network sysctl in a pod on the host's network (hostNetwork) would change the node")
        };
    }
    refuse("not a namespaced sysctl: on the host it would change the node")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_POD: Owned = Owned {
        ipc: true,
        uts: true,
        net: true,
        kernel: false,
    };

    #[test]
    fn names_become_proc_sys_paths() {
        assert_eq!(
            path_of("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path_of("net/ipv4/conf/eth0.1/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.1/rp_filter")
        );
        for bad in ["", "net..x", "net/../x", "a b", "net/./x"] {
            assert!(path_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn on_the_host_only_the_pods_own_namespaces_are_changed() {
        allowed("kernel.shm_rmid_forced", HOST_POD).unwrap();
        allowed("net.ipv4.ip_unprivileged_port_start", HOST_POD).unwrap();
        allowed("kernel.domainname", HOST_POD).unwrap();
        assert!(allowed("vm.swappiness", HOST_POD).is_err());
        let host_network = Owned {
            uts: false,
            net: false,
            ..HOST_POD
        };
        assert!(allowed("net.ipv4.ip_forward", host_network).is_err());
        assert!(allowed("kernel.domainname", host_network).is_err());
        allowed("kernel.sem", host_network).unwrap();
        let host_ipc = Owned {
            ipc: false,
            ..HOST_POD
        };
        assert!(allowed("fs.mqueue.msg_max", host_ipc).is_err());
        let vm = Owned {
            ipc: true,
            uts: true,
            net: true,
            kernel: true,
        };
        allowed("vm.swappiness", vm).unwrap();
    }
}
