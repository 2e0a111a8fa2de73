//! Pod networking: CNI, as kubelet nodes deploy it ([`cni`]: the configuration that says
//! whether the node's network is ready, plugin calls, ADD/DEL of a pod), and each pod's pinned
//! network namespace ([`netns`]); next, the tap that joins the pod VM to the CNI interface.

pub mod cni;
pub mod netns;

pub use cni::{CniConfig, NetworkConfigList};
