//! Pod networking: CNI, as kubelet nodes deploy it ([`cni`]: the configuration that says
//! whether the node's network is ready, plugin calls, ADD/DEL of a pod), and each pod's pinned
//! network namespace ([`netns`]), and the tap that joins the pod VM to the CNI interface
//! ([`tap`]).

pub mod cni;
pub mod netns;
pub mod tap;

pub use cni::{CniConfig, NetworkConfigList};
