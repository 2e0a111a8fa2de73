//! vessel-shim: the host daemon of vessel. It serves CRI to kubelet/crictl and runs one
//! microVM per pod, driving the guest agent over hybrid vsock + ttrpc.
//!
//! Layers: [`config`] (TOML with embedded defaults) → [`hypervisor`] (VMM backends behind one
//! trait) → [`sandbox`] (a pod VM with its agent client).

pub mod config;
pub mod host_mounts;
pub mod hypervisor;
pub mod image;
pub mod logs;
pub mod metadata;
pub mod oci;
pub mod pod_vm;
pub mod runtime;
pub mod server;
