//! The runtime's error type: every failure carries the gRPC code it maps to and a message
//! that names the field, object or id at fault. Mapped to `tonic::Status` in one place
//! (`server::instrument`).

use vessel_protocols::ttrpc;

use crate::image::ImageError;
use crate::metadata::StoreError;
use crate::pod_vm::{AgentError, VmError};
use crate::runtime::pods::network::PodNetworkError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Network(#[from] PodNetworkError),
    #[error("{0}")]
    Internal(String),
}

/// The gRPC status codes the runtime uses (tonic's, without depending on tonic here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    DeadlineExceeded,
    Unimplemented,
    Unavailable,
    ResourceExhausted,
    Unauthenticated,
    Internal,
}

/// A spec the CRI config could not make: the config's fault (naming the field) unless the
/// builder failed.
impl From<crate::oci::SpecError> for RuntimeError {
    fn from(e: crate::oci::SpecError) -> Self {
        use crate::oci::SpecError;
        match e {
            SpecError::Invalid { field, reason } => RuntimeError::InvalidArgument { field, reason },
            SpecError::ImageUser { user, reason } => RuntimeError::InvalidArgument {
                field: "user".into(),
                reason: format!("{user:?}: {reason}"),
            },
            other => RuntimeError::Internal(other.to_string()),
        }
    }
}

impl RuntimeError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Vm(VmError::InvalidId { .. }) => Code::InvalidArgument,
            Self::Vm(VmError::AlreadyExists(_)) => Code::AlreadyExists,
            Self::Vm(VmError::Unsupported { .. }) => Code::FailedPrecondition,
            Self::Vm(_) => Code::Internal,
            Self::Agent(e) => match e.code() {
                Some(ttrpc::Code::INVALID_ARGUMENT) => Code::InvalidArgument,
                Some(ttrpc::Code::NOT_FOUND) => Code::NotFound,
                Some(ttrpc::Code::ALREADY_EXISTS) => Code::AlreadyExists,
                Some(ttrpc::Code::FAILED_PRECONDITION) => Code::FailedPrecondition,
                Some(ttrpc::Code::DEADLINE_EXCEEDED) => Code::DeadlineExceeded,
                Some(ttrpc::Code::UNIMPLEMENTED) => Code::Unimplemented,
                Some(_) => Code::Internal,
                None => Code::Unavailable,
            },
            Self::Image(e) => match e {
                ImageError::Reference { .. } => Code::InvalidArgument,
                ImageError::Unauthorized { .. } => Code::Unauthenticated,
                ImageError::NotInRegistry { .. } => Code::NotFound,
                _ => Code::Internal,
            },
            Self::Network(PodNetworkError::NotReady(_)) => Code::FailedPrecondition,
            Self::Network(PodNetworkError::Bandwidth { .. }) => Code::InvalidArgument,
            Self::Network(_) | Self::Store(_) | Self::Internal(_) => Code::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_codes_follow() {
        let e = RuntimeError::invalid("runtime_handler", "unknown handler \"foo\"");
        assert_eq!(
            e.to_string(),
            "invalid runtime_handler: unknown handler \"foo\""
        );
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = RuntimeError::NotFound {
            what: "container",
            id: "abc".into(),
        };
        assert_eq!(e.to_string(), "container abc not found");
        assert_eq!(e.code(), Code::NotFound);
    }
}
