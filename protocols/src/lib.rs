//! vessel's wire contracts, in one crate so the rest of the workspace names one dependency.
//!
//! - [`cri`]: Kubernetes CRI `runtime.v1` (messages + tonic client/server), from the `k8s-cri`
//!   crate, which compiles k8s.io/cri-api's `api.proto` unchanged.
//! - [`agent`]: the host ↔ guest agent API (`proto/agent.proto`), served over ttrpc.
//! - [`guest`]: the rest of the guest contract: id rules, guest paths both sides use, and the
//!   capabilities an agent reports.
//! - [`stream`]: the framing of the byte streams (exec and attach I/O, port forwarding) that
//!   travel beside the ttrpc connection.

/// Kubernetes CRI `runtime.v1`.
pub use k8s_cri::v1 as cri;

#[allow(clippy::all, unused_qualifications, missing_docs)]
mod generated {
    pub mod agent;
    pub mod agent_ttrpc;
}

/// The agent API: messages ([`agent::CheckRequest`], …), and the ttrpc service
/// ([`agent::AgentClient`], [`agent::Agent`], [`agent::create_agent`]).
pub mod agent {
    pub use crate::generated::agent::*;
    pub use crate::generated::agent_ttrpc::*;
}

pub mod guest;
pub mod stream;

/// The vsock port the agent's ttrpc server listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

pub use ttrpc;
