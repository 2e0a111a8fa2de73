//! A pod's VM: its boot, adoption after a daemon restart and teardown ([`vm`]), the agent
//! client that drives its guest over hybrid vsock + ttrpc ([`agent_client`]), and vsock CIDs.

pub mod agent_client;
pub mod cid;
pub mod vm;

pub use agent_client::{AgentClient, AgentError};
pub use vm::{AdoptFailure, PodVm, PodVmRecord, PodVmSpec, VmError, VmRemains};
