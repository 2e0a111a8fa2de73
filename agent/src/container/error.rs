//! What can go wrong with a container or one of its processes, and the status code each
//! failure is answered with: [`SpecError`] for what the shim sent, [`ContainerError`] for the
//! rest. Errors of the parts a container is made of (storages, terminal, the libcontainer
//! helper, the pod's pause process) are wrapped with their own codes.

use std::path::PathBuf;

use vessel_protocols::guest::IdError;
use vessel_protocols::ttrpc::Code;

use super::libcontainer::RuntimeError;
use super::tty::TerminalError;
use crate::pause::PauseError;
use crate::storage::StorageError;

/// What the shim sent that the contract refuses; each names the request field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field} {id:?} {reason}")]
    Id {
        field: &'static str,
        id: String,
        reason: IdError,
    },
    #[error("{field}: {source}")]
    Json {
        field: &'static str,
        source: serde_json::Error,
    },
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("process_json: cwd {} is not absolute", .0.display())]
    RelativeCwd(PathBuf),
    #[error("spec_json: linux.namespaces: {0}")]
    Namespaces(String),
    /// A spec part the agent builds itself (a default section, a device entry).
    #[error("build {what}: {source}")]
    Build {
        what: String,
        source: oci_spec::OciSpecError,
    },
}

impl SpecError {
    /// INVALID_ARGUMENT: the request was wrong (INTERNAL for the parts the agent builds).
    pub fn code(&self) -> Code {
        match self {
            SpecError::Build { .. } => Code::INTERNAL,
            _ => Code::INVALID_ARGUMENT,
        }
    }
}

/// A container operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Pause(#[from] PauseError),

    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("exec {exec_id:?} already exists in container {container_id}")]
    ExecExists {
        container_id: String,
        exec_id: String,
    },
    #[error("exec {exec_id:?} not found in container {container_id}")]
    ExecNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("container {id} is {state}: cannot {action}")]
    WrongState {
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("container {id} did not stop within {secs}s of SIGKILL")]
    StopTimeout { id: String, secs: u64 },
    #[error("the container asks for the pod's pid namespace, but the pod does not share one")]
    NoPodPidNamespace,
    #[error("the pod's pause process (pid {0}) has exited: its shared pid namespace is gone")]
    PodPidNamespaceGone(i32),
    #[error("rootfs {} does not exist", .0.display())]
    NoRootfs(PathBuf),
    #[error("executable {cmd:?} not found in container rootfs (PATH={path_env})")]
    NoExecutable { cmd: String, path_env: String },

    #[error("signal {0} is not valid")]
    InvalidSignal(i64),
    #[error("{what} {value} is too large")]
    TooLarge { what: &'static str, value: u32 },
    #[error("process {exec_id:?} (pid {pid}) has already exited")]
    Exited { exec_id: String, pid: i32 },
    #[error("process {0:?} was created without stdin")]
    NoStdin(String),
    #[error("stdin of process {0:?} is closed")]
    StdinClosed(String),
    #[error("stdin of process {exec_id:?}: {source}")]
    StdinWrite {
        exec_id: String,
        source: std::io::Error,
    },
    #[error("process {0:?} has no terminal")]
    NoTerminal(String),

    #[error("process {0} lost its exit status")]
    ExitLost(i32),
    #[error("refusing to signal pid {0}")]
    UnsafePid(i32),
    #[error("kill({pid}, {signal}): {source}")]
    Kill {
        pid: i32,
        signal: i32,
        source: std::io::Error,
    },
    #[error("libcontainer reported no pid")]
    NoPid,
    #[error("update cgroup {path}: {cause}")]
    CgroupUpdate { path: String, cause: String },
    #[error("encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Result of container operations.
pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

impl ContainerError {
    /// An I/O failure with what was being done (often a path).
    pub fn io(context: impl std::fmt::Display, source: std::io::Error) -> Self {
        ContainerError::Io {
            context: context.to_string(),
            source,
        }
    }

    /// The ttrpc status code the shim sees.
    pub fn code(&self) -> Code {
        use ContainerError as E;
        match self {
            E::Spec(e) => e.code(),
            E::Storage(e) => e.code(),
            E::Terminal(_) | E::Runtime(_) | E::Pause(_) => Code::INTERNAL,
            E::Exists(_) | E::ExecExists { .. } => Code::ALREADY_EXISTS,
            E::NotFound(_) | E::ExecNotFound { .. } | E::NoRootfs(_) | E::NoExecutable { .. } => {
                Code::NOT_FOUND
            }
            E::WrongState { .. }
            | E::NoPodPidNamespace
            | E::PodPidNamespaceGone(_)
            | E::Exited { .. }
            | E::NoStdin(_)
            | E::StdinClosed(_)
            | E::StdinWrite { .. }
            | E::NoTerminal(_) => Code::FAILED_PRECONDITION,
            E::StopTimeout { .. } => Code::DEADLINE_EXCEEDED,
            E::InvalidSignal(_) | E::TooLarge { .. } => Code::INVALID_ARGUMENT,
            E::ExitLost(_)
            | E::UnsafePid(_)
            | E::Kill { .. }
            | E::NoPid
            | E::CgroupUpdate { .. }
            | E::Encode { .. }
            | E::Io { .. } => Code::INTERNAL,
        }
    }
}
