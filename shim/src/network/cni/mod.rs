//! CNI (container network interface, spec 1.0): where the node's network configuration and
//! plugins are ([`CniConfig`], the `[cni]` config section), the configuration list the pod
//! network is made of ([`config`]), one plugin call ([`invoke`]), what plugins answer
//! ([`result`]), and a pod's attachment: ADD and DEL over the whole list, cached on disk
//! ([`attach`]).
//!
//! Written here rather than taken from a crate: the Rust CNI crates are plugin-side
//! (`cni-plugin`) or change the whole process's environment for each call (`rust-cni`), which a
//! daemon running pods concurrently cannot have.

pub mod attach;
pub mod config;
pub mod invoke;
pub mod result;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use config::{ConfError, NetworkConfigList, PluginConf};

/// `[cni]`: where the network configuration and the plugins are.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Pods get a network. Off only on nodes without one (some tests): pods then have
    /// loopback alone and Status says NetworkReady false.
    pub enabled: bool,
    /// The configuration directory: its lexically first `.conflist`, `.conf` or `.json` file
    /// is the pod network, as containerd picks it.
    pub conf_dir: PathBuf,
    /// Where plugin binaries are looked up, in order.
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

impl CniConfig {
    /// Paths must be absolute: plugins run with another working directory.
    pub fn validate(&self) -> Result<(), String> {
        if !self.conf_dir.is_absolute() {
            return Err(format!(
                "conf_dir {} is not absolute",
                self.conf_dir.display()
            ));
        }
        if self.bin_dirs.is_empty() {
            return Err("bin_dirs is empty".into());
        }
        match self.bin_dirs.iter().find(|d| !d.is_absolute()) {
            Some(dir) => Err(format!("bin_dirs entry {} is not absolute", dir.display())),
            None => Ok(()),
        }
    }

    /// The pod network: the conf dir's first configuration, with every plugin it names found.
    pub fn load(&self) -> Result<NetworkConfigList, ConfError> {
        config::load(&self.conf_dir, &self.bin_dirs)
    }
}
