//! The agent's error type and the one place where errors become ttrpc status codes.
//!
//! Modules keep their own error enums (storage, runtime, cgroup…); each converts into
//! [`AgentError`], whose variant is the status code the shim sees. [`AgentError::into_ttrpc`]
//! is the only mapping to `ttrpc::Code`.

use vessel_protocols::ttrpc;

/// An RPC failure, classified by the ttrpc status code it is answered with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

/// Result of agent operations.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// The ttrpc status code of this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            AgentError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            AgentError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            AgentError::DeadlineExceeded(_) => ttrpc::Code::DEADLINE_EXCEEDED,
            AgentError::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            AgentError::Internal(_) => ttrpc::Code::INTERNAL,
        }
    }

    /// The ttrpc error the shim receives.
    pub fn into_ttrpc(self) -> ttrpc::Error {
        let code = self.code();
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, self.to_string()))
    }

    /// An internal error with `context` prefixed to the cause.
    pub fn internal(context: impl std::fmt::Display, cause: impl std::fmt::Display) -> Self {
        AgentError::Internal(format!("{context}: {cause}"))
    }
}

/// Renders an error and all its sources as `outer: inner: root`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_one_to_one() {
        let cases = [
            (
                AgentError::InvalidArgument("x".into()),
                ttrpc::Code::INVALID_ARGUMENT,
            ),
            (AgentError::NotFound("x".into()), ttrpc::Code::NOT_FOUND),
            (
                AgentError::AlreadyExists("x".into()),
                ttrpc::Code::ALREADY_EXISTS,
            ),
            (
                AgentError::FailedPrecondition("x".into()),
                ttrpc::Code::FAILED_PRECONDITION,
            ),
            (
                AgentError::DeadlineExceeded("x".into()),
                ttrpc::Code::DEADLINE_EXCEEDED,
            ),
            (
                AgentError::Unimplemented("x".into()),
                ttrpc::Code::UNIMPLEMENTED,
            ),
            (AgentError::Internal("x".into()), ttrpc::Code::INTERNAL),
        ];
        for (err, code) in cases {
            match err.into_ttrpc() {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code);
                    assert_eq!(s.message(), "x");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn chain_joins_sources() {
        let io = std::io::Error::other("disk on fire");
        #[derive(Debug, thiserror::Error)]
        #[error("write config")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(chain(&Outer(io)), "write config: disk on fire");
    }
}
