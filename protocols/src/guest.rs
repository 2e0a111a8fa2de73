//! The guest contract: facts the shim and the agent must agree on, kept here once. The shim
//! decides (ids, paths in the guest, the cgroup of each container); the agent applies what
//! it is sent and checks it with the same rules.

use std::fmt;

/// Where the pod's shared dir (virtio-fs) is mounted in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/vessel/shared";

/// The pod's shared pid namespace as a container spec names it (CRI NamespaceMode POD): the
/// agent joins the container to its pause process's pid namespace.
pub const POD_PID_NAMESPACE: &str = "/run/vessel/pod/ns/pid";

/// The line the agent writes to the guest console once its ttrpc server listens. The shim
/// sends its first vsock CONNECT only after it, since a vhost-user vsock backend may be harmed
/// by a connection that comes before the guest's vsock rings exist.
pub const AGENT_READY_LINE: &str = "vessel-agent: ready";

/// The cgroup (v2, relative to the guest's cgroup root) every container cgroup is under.
pub const CGROUP_PARENT: &str = "/vessel";

/// The cgroup of the container `id`.
pub fn container_cgroup(id: &str) -> String {
    format!("{CGROUP_PARENT}/{id}")
}

/// A part of the contract added after the first one, which an agent reports in
/// `GuestDetails.capabilities` once it implements it. A node upgrade leaves running pods on the
/// guest image they booted with: the shim asks each agent what it can do and refuses only the
/// requests that need what it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// The agent joins a container whose spec names [`POD_PID_NAMESPACE`] to the pid
    /// namespace of the pod's pause process (earlier agents chose pid namespaces themselves).
    PodPidNamespace,
    /// The agent configures the pod interface and routes (UpdateInterface, UpdateRoutes).
    PodNetwork,
    /// The agent serves byte streams (exec and attach I/O, port forwarding) on
    /// [`crate::stream::STREAM_VSOCK_PORT`].
    Streams,
    /// The agent sets the pod's sysctls of CreateSandbox (`sysctls`).
    PodSysctls,
}

impl Capability {
    /// Every capability this version of the contract defines.
    pub const ALL: [Capability; 4] = [
        Capability::PodPidNamespace,
        Capability::PodNetwork,
        Capability::Streams,
        Capability::PodSysctls,
    ];

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Capability::PodPidNamespace => "pod-pid-namespace",
            Capability::PodNetwork => "pod-network",
            Capability::Streams => "streams",
            Capability::PodSysctls => "pod-sysctls",
        }
    }

    /// The capability of a wire name; `None` for a name from a newer contract.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The sysctls the kernel keeps per IPC namespace (besides the `fs.mqueue.` ones): where a pod's
/// sysctls take effect depends on it, for the shim and the agent alike.
pub const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The longest sandbox, container or exec id.
pub const MAX_ID_LEN: usize = 128;

/// Why an id is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    Empty,
    TooLong(usize),
    Dots,
    Character(char),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "is empty"),
            Self::TooLong(len) => write!(f, "is {len} characters, longer than {MAX_ID_LEN}"),
            Self::Dots => write!(f, "is not a valid name"),
            Self::Character(c) => write!(f, "has {c:?}; use [A-Za-z0-9_.-]"),
        }
    }
}

impl std::error::Error for IdError {}

/// Checks an id that names files, cgroups and processes on both sides: 1 to
/// [`MAX_ID_LEN`] characters of `[A-Za-z0-9_.-]`, not `.` or `..`.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    if id == "." || id == ".." {
        return Err(IdError::Dots);
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(c) => Err(IdError::Character(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(Capability::from_name(c.name()), Some(c));
        }
        assert_eq!(Capability::from_name("from-a-newer-contract"), None);
    }

    #[test]
    fn ids_follow_one_rule() {
        for ok in ["c1", "a.b-c_d", &"a".repeat(MAX_ID_LEN)] {
            assert_eq!(check_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(".."), Err(IdError::Dots));
        assert_eq!(check_id("a/b"), Err(IdError::Character('/')));
        assert_eq!(check_id(&"a".repeat(129)), Err(IdError::TooLong(129)));
        assert_eq!(container_cgroup("c1"), "/vessel/c1");
    }
}
