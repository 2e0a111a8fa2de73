//! CRI RuntimeService handlers, one file per RPC family; each is a thin adapter from CRI
//! messages to the runtime core.

pub mod container;
pub mod convert;
pub mod exec;
pub mod pod_sandbox;
pub mod stats;
pub mod status;
pub mod version;
