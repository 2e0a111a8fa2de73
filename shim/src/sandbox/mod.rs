//! Pod sandboxes: the microVM of a pod and the agent client that drives its guest.

pub mod agent_client;
pub mod cid;
pub mod vm;

pub use agent_client::{AgentClient, AgentError};
pub use vm::{AdoptFailure, PodVm, PodVmRecord, PodVmSpec, VmError, VmRemains};
