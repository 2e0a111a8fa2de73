//! youki's libcontainer, driven from the agent: [`client`] is the agent's side (each
//! operation a request to a short-lived helper process, and why), [`helper`] is that process
//! (the agent binary re-executed with [`client::HELPER_ARG`]), and [`exec_filter`] gives the
//! processes it execs the container's seccomp filter (libcontainer 0.7 drops it for them).

pub mod client;
mod exec_filter;
pub mod helper;

pub use client::{Request, Runtime, RuntimeError};
