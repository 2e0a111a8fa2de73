//! A pod's VM: its boot, adoption after a daemon restart and teardown ([`vm`]), the agent
//! client that drives its guest over hybrid vsock + ttrpc ([`agent_client`]) and the byte
//! streams beside it ([`agent_stream`]), what that agent
//! says it can do ([`guest`]), the console line that says when to first call it ([`console`]),
//! its NIC on the pod network ([`network`]), and vsock CIDs.

pub mod agent_client;
pub mod agent_stream;
pub mod cid;
pub mod console;
pub mod guest;
pub mod network;
pub mod vm;

pub use agent_client::{AgentClient, AgentError};
pub use agent_stream::{AgentStream, StreamError};
pub use guest::{GuestInfo, Unsupported};
pub use network::{VmNetwork, VmRoute};
pub use vm::{AdoptFailure, PodVm, PodVmRecord, PodVmSpec, VmError, VmRemains};
