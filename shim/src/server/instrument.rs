//! Every CRI call goes through here: one log line per call (debug on success, warn on
//! failure, with the call's name and duration) and the one mapping of runtime errors to gRPC
//! statuses.

use std::future::Future;
use std::time::Instant;

use tonic::{Code as GrpcCode, Status};

use crate::runtime::{Code, RuntimeError};

/// The gRPC status of a runtime error; the message names what was wrong.
pub fn status(e: &RuntimeError) -> Status {
    let code = match e.code() {
        Code::InvalidArgument => GrpcCode::InvalidArgument,
        Code::NotFound => GrpcCode::NotFound,
        Code::AlreadyExists => GrpcCode::AlreadyExists,
        Code::FailedPrecondition => GrpcCode::FailedPrecondition,
        Code::DeadlineExceeded => GrpcCode::DeadlineExceeded,
        Code::Unimplemented => GrpcCode::Unimplemented,
        Code::Unavailable => GrpcCode::Unavailable,
        Code::ResourceExhausted => GrpcCode::ResourceExhausted,
        Code::Unauthenticated => GrpcCode::Unauthenticated,
        Code::Internal => GrpcCode::Internal,
    };
    Status::new(code, e.to_string())
}

/// Runs one RPC handler with logging and error mapping.
pub async fn call<T>(
    rpc: &'static str,
    handler: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<tonic::Response<T>, Status> {
    let start = Instant::now();
    match handler.await {
        Ok(resp) => {
            tracing::debug!(rpc, elapsed = ?start.elapsed(), "CRI call");
            Ok(tonic::Response::new(resp))
        }
        Err(e) => {
            let status = status(&e);
            tracing::warn!(rpc, elapsed = ?start.elapsed(), code = ?status.code(), error = %e, "CRI call failed");
            Err(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_carry_over() {
        let s = status(&RuntimeError::invalid("runtime_handler", "unknown \"x\""));
        assert_eq!(s.code(), GrpcCode::InvalidArgument);
        assert_eq!(s.message(), "invalid runtime_handler: unknown \"x\"");
        let s = status(&RuntimeError::NotFound {
            what: "container",
            id: "c".into(),
        });
        assert_eq!(s.code(), GrpcCode::NotFound);
    }
}
