//! The native backend: no VM. The pod's "machine" is one host process, `vessel-agent host`,
//! the same agent a guest runs, serving ttrpc (and its byte streams) on a Unix socket in the
//! pod's runtime dir. It is the pod's infra process: it joins the pod's network namespace
//! (a descriptor passed as [`PASSED_FD`]) and takes UTS and IPC namespaces of its own unless
//! the pod shares the host's, and the containers it creates with libcontainer inherit them.
//! Everything above this layer (the agent client, adoption after a restart, the monitor,
//! stop) is the same as for a VM; only the transport and the paths differ.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{
    Backend, Exited, Hypervisor, HypervisorError, ProcessId, VmConfig, VmExit, VmProcesses,
    PASSED_FD,
};

/// The agent's name among the pod's processes (and its log's).
pub const AGENT: &str = "vessel-agent";

/// The agent's OOM score: kubelet's for the pause container.
const AGENT_OOM_SCORE_ADJ: &str = "-998";

/// How much of the pod id names the agent's dir: 64 bits of a random id, and a clash is
/// refused at start (the dir exists), never shared.
const AGENT_DIR_ID_CHARS: usize = 16;

/// The namespaces a native pod's agent takes or joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NativeNamespaces {
    /// The pinned network namespace to join; none: the host's (hostNetwork).
    pub netns: Option<PathBuf>,
    /// A network namespace of its own, loopback only (a pod without CNI); ignored with
    /// `netns`.
    #[serde(default)]
    pub own_net: bool,
    /// A UTS namespace of its own (the pod's hostname); off with the host's network.
    pub own_uts: bool,
    /// An IPC namespace of its own; off for hostIPC.
    pub own_ipc: bool,
}

/// One native pod's agent.
pub struct NativePod {
    config: VmConfig,
    agent: PathBuf,
    processes: VmProcesses,
    /// The agent's dir is this pod's (created by this start, or adopted with the pod), so
    /// stopping removes it; a start that found it taken leaves it to its owner.
    owns_root: bool,
}

impl NativePod {
    pub fn new(config: VmConfig, agent: PathBuf) -> Self {
        let processes = VmProcesses::new(&config.run_dir, AGENT).in_cgroup(config.cgroup.as_ref());
        Self {
            config,
            agent,
            processes,
            owns_root: false,
        }
    }

    /// Takes over the agent of a pod started by an earlier run of the daemon.
    pub fn adopt(
        config: VmConfig,
        agent: PathBuf,
        processes: &BTreeMap<String, ProcessId>,
    ) -> Self {
        let processes = VmProcesses::adopt(&config.run_dir, AGENT, &[AGENT], processes);
        Self {
            config,
            agent,
            processes,
            owns_root: true,
        }
    }

    /// The agent's own dir: `<state>/agents/<first 16 characters of the pod id>`. Its
    /// sockets (ttrpc, streams, terminals) live there, and a socket path must fit in 108
    /// bytes, which the pod's run dir with its 64-character id leaves no room for.
    pub fn agent_root(config: &VmConfig) -> PathBuf {
        let state = config
            .run_dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(&config.run_dir);
        let short: String = config.id.chars().take(AGENT_DIR_ID_CHARS).collect();
        state.join("agents").join(short)
    }

    /// The agent's ttrpc socket; its byte streams are served on `<socket>.streams`.
    pub fn socket(config: &VmConfig) -> PathBuf {
        Self::agent_root(config).join("agent.sock")
    }

    /// The agent's arguments for this pod.
    pub fn agent_args(&self) -> Vec<String> {
        let c = &self.config;
        let ns = c.native.clone().unwrap_or_default();
        let mut args = vec![
            "host".to_owned(),
            "--root".into(),
            Self::agent_root(c).display().to_string(),
            "--shared".into(),
            c.shared_dir.display().to_string(),
            "--listen".into(),
            format!("unix://{}", Self::socket(c).display()),
        ];
        if ns.netns.is_some() {
            args.extend(["--netns-fd".into(), PASSED_FD.to_string()]);
        }
        let own_net = ns.own_net && ns.netns.is_none();
        let own: Vec<&str> = [(own_net, "net"), (ns.own_uts, "uts"), (ns.own_ipc, "ipc")]
            .into_iter()
            .filter_map(|(own, name)| own.then_some(name))
            .collect();
        if !own.is_empty() {
            args.extend(["--unshare".into(), own.join(",")]);
        }
        args
    }
}

/// What the agent's exit says: it ends only when stopped or when it fails.
fn classify(exited: Exited) -> VmExit {
    match exited {
        Exited::Code(0) => VmExit::PowerOff,
        Exited::Code(code) => VmExit::Failed(code),
        Exited::Signal(_) => VmExit::Killed(exited),
        Exited::Unknown => VmExit::Unknown,
    }
}

#[async_trait]
impl Hypervisor for NativePod {
    async fn start(&mut self) -> Result<(), HypervisorError> {
        if super::which(&self.agent).is_none() {
            return Err(HypervisorError::MissingAsset {
                what: "host agent (native.agent)",
                path: self.agent.clone(),
            });
        }
        let netns = match self.config.native.as_ref().and_then(|n| n.netns.as_ref()) {
            Some(path) => Some(OwnedFd::from(std::fs::File::open(path).map_err(
                |source| HypervisorError::Io {
                    path: path.clone(),
                    source,
                },
            )?)),
            None => None,
        };
        let root = Self::agent_root(&self.config);
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent).map_err(|source| HypervisorError::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
        // Exclusively: an existing dir is another pod's (or a clash of id prefixes). Only
        // root may reach the agent's sockets: whoever can talk to it starts host processes.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(|source| HypervisorError::Io {
                path: root.clone(),
                source,
            })?;
        self.owns_root = true;
        let args = self.agent_args();
        let socket = Self::socket(&self.config);
        let agent = self.agent.clone();
        self.processes
            .spawn_with_fd(
                AGENT,
                &agent,
                &args,
                Some(&socket),
                netns.as_ref().map(|fd| fd.as_fd()),
            )
            .await?;
        if let Some(pid) = self.processes.vmm_pid() {
            // The pod's infra process goes last to the OOM killer, as kubelet's pause
            // container does: losing it ends the pod. Lowering the score needs
            // CAP_SYS_RESOURCE, so it is best effort. (Its containers get their own score.)
            let path = format!("/proc/{pid}/oom_score_adj");
            if let Err(e) = std::fs::write(&path, AGENT_OOM_SCORE_ADJ) {
                tracing::warn!(pod_id = %self.config.id, error = %e, "cannot protect the host agent from the OOM killer");
            }
        }
        tracing::info!(pod_id = %self.config.id, pid = ?self.processes.vmm_pid(), "host agent started");
        Ok(())
    }

    /// Stops the agent (and whatever it started that is still in its process group), then
    /// removes its dir, unmounting what it left mounted there (memory-backed volumes).
    async fn stop(&mut self) -> Result<(), HypervisorError> {
        self.processes.stop().await;
        if self.owns_root {
            crate::host_mounts::remove_dir_unmounted(&Self::agent_root(&self.config))?;
        }
        Ok(())
    }

    fn config(&self) -> &VmConfig {
        &self.config
    }

    fn processes(&self) -> &VmProcesses {
        &self.processes
    }

    fn processes_mut(&mut self) -> &mut VmProcesses {
        &mut self.processes
    }

    fn backend(&self) -> Backend {
        Backend::Native
    }

    fn classify(&self, exited: Exited) -> VmExit {
        classify(exited)
    }

    fn agent_endpoint(&self) -> super::AgentEndpoint {
        super::AgentEndpoint::Unix(Self::socket(&self.config))
    }

    /// The agent's own log stands in for a console: it prints the ready line there.
    fn console_log(&self) -> PathBuf {
        self.processes.log(AGENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(native: Option<NativeNamespaces>) -> VmConfig {
        VmConfig {
            id: "p1".into(),
            run_dir: "/run/vessel/pods/p1".into(),
            shared_dir: "/run/vessel/pods/p1/shared".into(),
            cid: 3,
            vcpus: 1,
            memory_mib: 256,
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            kernel_params: String::new(),
            nic: None,
            cgroup: None,
            native,
        }
    }

    #[test]
    fn the_agent_joins_the_pods_namespaces() {
        let pod = NativePod::new(
            config(Some(NativeNamespaces {
                netns: Some("/run/vessel/netns/p1".into()),
                own_net: true,
                own_uts: true,
                own_ipc: true,
            })),
            "vessel-agent".into(),
        );
        assert_eq!(
            pod.agent_args().join(" "),
            "host --root /run/vessel/agents/p1 --shared /run/vessel/pods/p1/shared \
             --listen unix:///run/vessel/agents/p1/agent.sock --netns-fd 3 --unshare uts,ipc"
        );
    }

    #[test]
    fn a_host_network_pod_keeps_the_hosts_namespaces() {
        let pod = NativePod::new(
            config(Some(NativeNamespaces {
                netns: None,
                own_net: false,
                own_uts: false,
                own_ipc: false,
            })),
            "vessel-agent".into(),
        );
        assert_eq!(
            pod.agent_args().join(" "),
            "host --root /run/vessel/agents/p1 --shared /run/vessel/pods/p1/shared \
             --listen unix:///run/vessel/agents/p1/agent.sock"
        );
        let no_cni = NativePod::new(
            config(Some(NativeNamespaces {
                netns: None,
                own_net: true,
                own_uts: true,
                own_ipc: true,
            })),
            "vessel-agent".into(),
        );
        assert!(no_cni
            .agent_args()
            .join(" ")
            .ends_with("--unshare net,uts,ipc"));
    }

    #[test]
    fn the_agent_dir_is_short_enough_for_its_sockets() {
        let mut c = config(None);
        c.id = "a".repeat(64);
        c.run_dir = PathBuf::from("/tmp/vs-abcdef/state/pods").join(&c.id);
        let streams = format!("{}.streams", NativePod::socket(&c).display());
        assert_eq!(
            streams,
            "/tmp/vs-abcdef/state/agents/aaaaaaaaaaaaaaaa/agent.sock.streams"
        );
        assert!(streams.len() < 108);
    }

    #[test]
    fn exits_read_as_failures_unless_clean() {
        assert_eq!(classify(Exited::Code(0)), VmExit::PowerOff);
        assert_eq!(classify(Exited::Code(1)), VmExit::Failed(1));
    }
}
