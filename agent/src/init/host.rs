//! The agent as a native pod's infra process on the host (`vessel-agent host …`), started by
//! the shim for a pod of a `native` runtime handler. There is no guest to boot: before any
//! thread starts, it enters the pod's network namespace (a descriptor the shim passes), takes
//! new UTS and IPC namespaces unless the pod shares the host's, and keeps its files in the
//! dir the shim gives it ([`crate::paths`]). The containers it then creates with
//! libcontainer inherit those namespaces, as runc containers inherit a pause container's.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;

/// The subcommand that selects this mode.
pub const HOST_ARG: &str = "host";

/// What the shim asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct HostPod {
    /// The agent's root: its sockets, bundles and state.
    pub root: PathBuf,
    /// The pod's shared dir (rootfs, volumes, /etc files), the guest's `/run/vessel/shared`.
    pub shared: PathBuf,
    /// The ttrpc address to serve (`unix://…`).
    pub listen: String,
    /// An inherited descriptor of the pod's network namespace; none: the host's.
    pub netns_fd: Option<RawFd>,
    /// Namespaces of its own to take: `uts`, `ipc`, `net` (loopback only: a pod without CNI).
    pub unshare: CloneFlags,
}

/// Whether the agent was started as `vessel-agent host …`.
pub fn is_host_invocation() -> bool {
    std::env::args().nth(1).as_deref() == Some(HOST_ARG)
}

/// Parses `host --root DIR --shared DIR --listen ADDR [--netns-fd N] [--unshare net,uts,ipc]`.
pub fn parse(args: &[String]) -> Result<HostPod, String> {
    let mut pod = HostPod {
        root: PathBuf::new(),
        shared: PathBuf::new(),
        listen: String::new(),
        netns_fd: None,
        unshare: CloneFlags::empty(),
    };
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some(HOST_ARG) {
        return Err(format!("expected {HOST_ARG:?} first"));
    }
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        match flag.as_str() {
            "--root" => pod.root = PathBuf::from(value),
            "--shared" => pod.shared = PathBuf::from(value),
            "--listen" => pod.listen = value.to_owned(),
            "--netns-fd" => {
                // Past stdin, stdout and stderr: a descriptor the shim passed.
                let fd: RawFd = value.parse().map_err(|_| format!("--netns-fd {value:?}"))?;
                if fd < 3 {
                    return Err(format!("--netns-fd {fd}: not a passed descriptor"));
                }
                pod.netns_fd = Some(fd);
            }
            "--unshare" => {
                for ns in value.split(',').filter(|s| !s.is_empty()) {
                    pod.unshare |= match ns {
                        "uts" => CloneFlags::CLONE_NEWUTS,
                        "net" => CloneFlags::CLONE_NEWNET,
                        "ipc" => CloneFlags::CLONE_NEWIPC,
                        other => return Err(format!("--unshare: unknown namespace {other:?}")),
                    };
                }
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    if !pod.root.is_absolute() {
        return Err("--root must be an absolute path".into());
    }
    if !pod.shared.is_absolute() {
        return Err("--shared must be an absolute path".into());
    }
    if !pod.listen.starts_with("unix://") {
        return Err("--listen must be a unix:// address".into());
    }
    Ok(pod)
}

/// The namespaces this agent took or joined for its pod; unset in a guest.
static OWNED: std::sync::OnceLock<crate::sysctls::Owned> = std::sync::OnceLock::new();

/// Which of the pod's namespaces are this agent's own: all of them, and the kernel, in a
/// guest.
pub fn owned_namespaces() -> crate::sysctls::Owned {
    OWNED.get().copied().unwrap_or(crate::sysctls::Owned {
        ipc: true,
        uts: true,
        net: true,
        kernel: true,
    })
}

/// Whether the pod's hostname may be set here: always in a guest; on the host only in a UTS
/// namespace of the agent's own (never the host's name).
pub fn may_set_hostname() -> bool {
    owned_namespaces().uts
}

/// Whether the agent left the host's network namespace for the pod's (and so brings its
/// loopback up).
pub fn in_pod_network() -> bool {
    OWNED.get().is_some_and(|owned| owned.net)
}

/// Enters the pod's namespaces and sets the agent's root and listen address. Must run
/// before any other thread exists: setns and unshare change the calling thread only.
pub fn enter(pod: &HostPod) -> Result<(), String> {
    if let Some(fd) = pod.netns_fd {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
            .map_err(|e| format!("--netns-fd {fd}: {e}"))?;
        // SAFETY: the shim passes the descriptor open for exactly this use, and nothing else
        // in this process refers to it; the OwnedFd closes it once it is joined.
        let netns = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join the pod's network namespace: {e}"))?;
    }
    if !pod.unshare.is_empty() {
        nix::sched::unshare(pod.unshare).map_err(|e| format!("unshare {:?}: {e}", pod.unshare))?;
    }
    let _ = OWNED.set(crate::sysctls::Owned {
        ipc: pod.unshare.contains(CloneFlags::CLONE_NEWIPC),
        uts: pod.unshare.contains(CloneFlags::CLONE_NEWUTS),
        net: pod.netns_fd.is_some() || pod.unshare.contains(CloneFlags::CLONE_NEWNET),
        kernel: false,
    });
    std::fs::create_dir_all(&pod.root)
        .map_err(|e| format!("create {}: {e}", pod.root.display()))?;
    // Single-threaded still (above), so changing the environment races with nothing.
    std::env::set_var(crate::paths::ROOT_ENV, &pod.root);
    std::env::set_var(crate::paths::SHARED_ENV, &pod.shared);
    std::env::set_var(crate::LISTEN_ENV, &pod.listen);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_parse() {
        let pod = parse(&args(
            "host --root /r --shared /s --listen unix:///r/agent.sock --netns-fd 3 --unshare uts,ipc",
        ))
        .unwrap();
        assert_eq!(pod.root, PathBuf::from("/r"));
        assert_eq!(pod.listen, "unix:///r/agent.sock");
        assert_eq!(pod.netns_fd, Some(3));
        assert_eq!(
            pod.unshare,
            CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC
        );
        let host_network = parse(&args("host --root /r --shared /s --listen unix:///s")).unwrap();
        assert_eq!(
            (host_network.netns_fd, host_network.unshare),
            (None, CloneFlags::empty())
        );
    }

    #[test]
    fn bad_flags_are_named() {
        for (line, want) in [
            ("host --root r --shared /s --listen unix:///s", "--root"),
            ("host --root /r --listen unix:///s", "--shared"),
            (
                "host --root /r --shared /s --listen vsock://-1:1",
                "--listen",
            ),
            (
                "host --root /r --shared /s --listen unix:///s --unshare pid",
                "pid",
            ),
            (
                "host --root /r --shared /s --listen unix:///s --netns-fd x",
                "--netns-fd",
            ),
            ("host --root", "--root needs a value"),
            ("host --bogus 1", "--bogus"),
        ] {
            let e = parse(&args(line)).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
