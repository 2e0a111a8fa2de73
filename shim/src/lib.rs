//! vessel-shim: the host daemon of vessel. It serves CRI to kubelet/crictl and runs one
//! microVM per pod, driving the guest agent over hybrid vsock + ttrpc.
//!
//! Layers: [`config`] (TOML with embedded defaults) → [`hypervisor`] (VMM backends behind one
//! trait) → [`sandbox`] (a pod VM with its agent client).

pub mod config;
pub mod hypervisor;
pub mod image;
pub mod logs;
pub mod mounts;
pub mod oci;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod store;
