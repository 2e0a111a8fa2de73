//! Daemon configuration: a TOML file whose every key has an embedded default.
//!
//! Unknown keys are rejected and values are validated at load, with errors naming the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the project's build tree keeps guest assets and helper tools by default, so a fresh
/// checkout runs without installing anything system-wide.
pub fn build_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("build")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The handler of a pod that names none (CRI's empty `runtime_handler`).
    pub default_handler: String,
    /// `[handlers.<name>]`: the runtime handlers served, each `kind = "vm"` or `"native"`.
    pub handlers: std::collections::BTreeMap<String, crate::handlers::Handler>,
    /// `[native]`: what runs the pods of native handlers.
    pub native: NativeConfig,
    /// How pod cgroups are named (kubelet's `cgroupDriver` must match).
    pub cgroup_driver: crate::host_cgroup::DriverSetting,
    pub hypervisor: HypervisorConfig,
    /// `[registry]`: mirrors and plain-http hosts (see `image::registry`).
    pub registry: crate::image::RegistryConfig,
    /// `[cni]`: the pod network's configuration and plugins (see `network::cni`).
    pub cni: crate::network::CniConfig,
    pub streaming: StreamingConfig,
}

/// `[streaming]`: the server that Exec, Attach and PortForward hand their clients to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// `host:port` to listen on; port 0 takes a free one. kubelet reaches it on the node (and
    /// proxies it for the API server), so loopback is the default.
    pub address: String,
    /// A connection on which nothing moved for this long is closed (kubelet's default too).
    pub idle_timeout_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:0".into(),
            idle_timeout_secs: 4 * 3600,
        }
    }
}

/// `[native]`: the host agent each native pod gets (the same program as the guest's).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NativeConfig {
    /// The `vessel-agent` binary run on the host.
    pub agent: PathBuf,
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            agent: sibling_binary("vessel-agent"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_handler: crate::handlers::DEFAULT_HANDLER.into(),
            handlers: crate::handlers::defaults(),
            native: NativeConfig::default(),
            cgroup_driver: crate::host_cgroup::DriverSetting::Auto,
            hypervisor: HypervisorConfig::default(),
            registry: Default::default(),
            cni: Default::default(),
            streaming: Default::default(),
        }
    }
}

/// Which VMM runs pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// The built-in VMM where KVM runs full guests, else QEMU.
    Auto,
    Builtin,
    Qemu,
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelKind {
    /// KVM where it runs full guests, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// `[hypervisor]`: the pod VM's shape and the binaries and assets that make it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    pub kind: HypervisorKind,
    pub accel: AccelKind,
    /// vCPUs of a pod whose `linux.resources` set no CPU quota.
    pub vcpus: u32,
    /// Guest RAM of a pod whose `linux.resources` set no memory limit.
    pub memory_mib: u32,
    /// The most vCPUs a pod may ask for (more is InvalidArgument).
    pub max_vcpus: u32,
    /// The most guest RAM a pod may ask for, its limit plus `guest_base_mib` (more is
    /// InvalidArgument).
    pub max_memory_mib: u32,
    /// Guest RAM added to a pod's memory limit for the guest's own kernel and agent.
    pub guest_base_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to the guest kernel command line.
    pub kernel_params: String,
    pub qemu: PathBuf,
    /// The built-in VMM binary.
    pub vmm: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_device_vsock: PathBuf,
    /// How long a pod VM may take from spawn until its agent answers.
    pub agent_ready_timeout_secs: u64,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        let build = build_tree();
        let tools = build.join("tools").join("bin");
        Self {
            kind: HypervisorKind::Auto,
            accel: AccelKind::Auto,
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 64,
            max_memory_mib: 65536,
            guest_base_mib: 128,
            kernel: build.join("guest").join("vmlinux"),
            initrd: build.join("guest").join("initramfs.img"),
            kernel_params: String::new(),
            qemu: PathBuf::from("qemu-system-x86_64"),
            vmm: sibling_binary("vessel-vmm"),
            virtiofsd: tool_path(&tools, "virtiofsd"),
            vhost_device_vsock: tool_path(&tools, "vhost-device-vsock"),
            agent_ready_timeout_secs: 60,
        }
    }
}

/// `name` beside the running daemon's binary (cargo builds both into one dir) when present,
/// else `name` for a `PATH` lookup.
fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The build tree's copy of a helper tool when present, else its name for a `PATH` lookup.
fn tool_path(tools: &Path, name: &str) -> PathBuf {
    let built = tools.join(name);
    if built.exists() {
        built
    } else {
        PathBuf::from(name)
    }
}

impl Config {
    /// Loads `path`, or the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no validation).
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks value ranges; paths are checked when a VM starts, where the error can say more.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::handlers::validate(&self.handlers, &self.default_handler).map_err(|reason| {
            ConfigError::Invalid {
                key: "handlers",
                reason,
            }
        })?;
        let h = &self.hypervisor;
        if !(1..=64).contains(&h.vcpus) {
            return Err(ConfigError::Invalid {
                key: "hypervisor.vcpus",
                reason: format!("{} is outside 1..=64", h.vcpus),
            });
        }
        if !(64..=65536).contains(&h.memory_mib) {
            return Err(ConfigError::Invalid {
                key: "hypervisor.memory_mib",
                reason: format!("{} is outside 64..=65536", h.memory_mib),
            });
        }
        if !(1..=255).contains(&h.max_vcpus) {
            return Err(ConfigError::Invalid {
                key: "hypervisor.max_vcpus",
                reason: format!("{} is outside 1..=255", h.max_vcpus),
            });
        }
        if h.vcpus > h.max_vcpus {
            return Err(ConfigError::Invalid {
                key: "hypervisor.vcpus",
                reason: format!("{} is above hypervisor.max_vcpus {}", h.vcpus, h.max_vcpus),
            });
        }
        if !(64..=4 << 20).contains(&h.max_memory_mib) {
            return Err(ConfigError::Invalid {
                key: "hypervisor.max_memory_mib",
                reason: format!("{} is outside 64..=4194304", h.max_memory_mib),
            });
        }
        if h.memory_mib > h.max_memory_mib {
            return Err(ConfigError::Invalid {
                key: "hypervisor.memory_mib",
                reason: format!(
                    "{} is above hypervisor.max_memory_mib {}",
                    h.memory_mib, h.max_memory_mib
                ),
            });
        }
        if h.guest_base_mib < 64 || h.guest_base_mib >= h.max_memory_mib {
            return Err(ConfigError::Invalid {
                key: "hypervisor.guest_base_mib",
                reason: format!(
                    "{} must be at least 64 and below hypervisor.max_memory_mib {}",
                    h.guest_base_mib, h.max_memory_mib
                ),
            });
        }
        if h.agent_ready_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "hypervisor.agent_ready_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        self.registry
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                key: "registry",
                reason,
            })?;
        self.cni
            .validate()
            .map_err(|reason| ConfigError::Invalid { key: "cni", reason })?;
        self.streaming
            .address
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                key: "streaming.address",
                reason: format!(
                    "{:?} is not an IP address and port: {e}",
                    self.streaming.address
                ),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.hypervisor.kind, HypervisorKind::Auto);
        assert_eq!(c.hypervisor.memory_mib, 256);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Config::parse("[hypervisor]\nmemory_mb = 3\n").unwrap_err();
        assert!(err.to_string().contains("memory_mb"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let c = Config::parse("[hypervisor]\nvcpus = 0\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("hypervisor.vcpus"), "{err}");
    }

    #[test]
    fn registry_mirrors_parse_and_validate() {
        let c = Config::parse(
            "[registry]\ninsecure = [\"reg.lan:5000\"]\n[registry.mirrors.\"docker.io\"]\nendpoint = [\"http://127.0.0.1:5000\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.registry.endpoints("docker.io").len(), 2);
        let c =
            Config::parse("[registry.mirrors.\"docker.io\"]\nendpoint = [\"ftp://x\"]\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("registry.mirrors.\"docker.io\".endpoint[0]"),
            "{err}"
        );
        assert!(Config::parse("[registry]\nmirror = []\n").is_err());
    }

    #[test]
    fn sizes_are_checked_against_their_maxima() {
        let c = Config::parse("[hypervisor]\nmemory_mib = 2048\nmax_memory_mib = 1024\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("hypervisor.memory_mib") && err.contains("1024"),
            "{err}"
        );
        let c = Config::parse("[hypervisor]\nguest_base_mib = 32\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("hypervisor.guest_base_mib"), "{err}");
        let c =
            Config::parse("cgroup_driver = \"systemd\"\n[hypervisor]\nmax_vcpus = 4\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.cgroup_driver, crate::host_cgroup::DriverSetting::Systemd);
        assert!(Config::parse("cgroup_driver = \"cgroupv2\"\n").is_err());
    }

    #[test]
    fn the_shipped_node_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.toml");
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(
            c.hypervisor.guest_base_mib,
            HypervisorConfig::default().guest_base_mib
        );
        assert_eq!(c.cgroup_driver, crate::host_cgroup::DriverSetting::Auto);
    }

    #[test]
    fn kinds_parse() {
        let c = Config::parse("[hypervisor]\nkind = \"qemu\"\naccel = \"tcg\"\n").unwrap();
        assert_eq!(c.hypervisor.kind, HypervisorKind::Qemu);
        assert_eq!(c.hypervisor.accel, AccelKind::Tcg);
    }
}
