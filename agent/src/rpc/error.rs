//! An RPC's failure and the one place where errors become ttrpc statuses. Each part of the
//! agent has its own error enum ([`ContainerError`], [`SandboxError`], [`StorageError`]; the
//! guest-wide RPCs' [`GuestError`] is here) that knows its status code; [`AgentError`]
//! gathers them for the handlers and [`AgentError::into_ttrpc`] answers the shim with that
//! code and the error's message.

use vessel_protocols::ttrpc::{self, Code};

use crate::container::ContainerError;
use crate::network::NetworkError;
use crate::sandbox::SandboxError;
use crate::storage::StorageError;

/// A guest-wide request that failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("time {sec}s {nsec}ns is not valid")]
    InvalidTime { sec: i64, nsec: i64 },
    #[error("clock_settime: {0}")]
    SetClock(#[source] nix::errno::Errno),
    #[error("read {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
}

impl GuestError {
    /// The ttrpc status code the shim sees.
    pub fn code(&self) -> Code {
        match self {
            GuestError::InvalidTime { .. } => Code::INVALID_ARGUMENT,
            GuestError::SetClock(_) | GuestError::Read { .. } => Code::INTERNAL,
        }
    }
}

/// A failed RPC.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Network(#[from] NetworkError),
}

/// Result of an RPC handler.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// The ttrpc status code of this error.
    pub fn code(&self) -> Code {
        match self {
            AgentError::Container(e) => e.code(),
            AgentError::Sandbox(e) => e.code(),
            AgentError::Storage(e) => e.code(),
            AgentError::Guest(e) => e.code(),
            AgentError::Network(e) => e.code(),
        }
    }

    /// The ttrpc error the shim receives.
    pub fn into_ttrpc(self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), self.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::SpecError;

    fn status(e: AgentError) -> (Code, String) {
        match e.into_ttrpc() {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn each_part_answers_with_its_own_code_and_message() {
        let cases = [
            (
                AgentError::from(ContainerError::NotFound("c1".into())),
                Code::NOT_FOUND,
                "container c1 not found",
            ),
            (
                ContainerError::Exists("c1".into()).into(),
                Code::ALREADY_EXISTS,
                "container c1 already exists",
            ),
            (
                ContainerError::from(SpecError::Missing("spec_json: root")).into(),
                Code::INVALID_ARGUMENT,
                "spec_json: root is missing",
            ),
            (
                ContainerError::StopTimeout {
                    id: "c1".into(),
                    secs: 3,
                }
                .into(),
                Code::DEADLINE_EXCEEDED,
                "container c1 did not stop within 3s of SIGKILL",
            ),
            (
                SandboxError::Exists("p1".into()).into(),
                Code::ALREADY_EXISTS,
                "sandbox p1 already exists",
            ),
            (
                StorageError::MissingBindSource("/x".into()).into(),
                Code::NOT_FOUND,
                "bind source /x does not exist",
            ),
            (
                GuestError::InvalidTime { sec: -1, nsec: 0 }.into(),
                Code::INVALID_ARGUMENT,
                "time -1s 0ns is not valid",
            ),
            (
                ContainerError::NoPid.into(),
                Code::INTERNAL,
                "libcontainer reported no pid",
            ),
        ];
        for (err, code, message) in cases {
            assert_eq!(status(err), (code, message.to_string()));
        }
    }
}
