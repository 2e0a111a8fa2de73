//! The built-in backend: `vessel-vmm` (this workspace's KVM microVM monitor) runs the pod VM
//! with its own hybrid-vsock device on the agent socket, and virtiofsd serves the pod's
//! shared dir through vhost-user. It needs a KVM that runs full guests.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;

use async_trait::async_trait;

use super::qemu::kernel_params;
use super::virtiofsd::{self, VIRTIOFSD};
use super::{
    require_guest_image, Backend, Exited, Hypervisor, HypervisorError, ProcessId, VmConfig, VmExit,
    VmProcesses, PASSED_FD, SHARED_FS_TAG,
};
use crate::config::HypervisorConfig;

/// The VMM's name among the VM's processes (and its log's).
pub const VMM: &str = "vessel-vmm";

/// vessel-vmm's exit statuses (see its `--help`).
const EXIT_RESET: i32 = 2;
const EXIT_PANIC: i32 = 3;

/// Programs the built-in backend runs.
#[derive(Debug, Clone)]
pub struct BuiltinBinaries {
    pub vmm: PathBuf,
    pub virtiofsd: PathBuf,
}

impl From<&HypervisorConfig> for BuiltinBinaries {
    fn from(c: &HypervisorConfig) -> Self {
        Self {
            vmm: c.vmm.clone(),
            virtiofsd: c.virtiofsd.clone(),
        }
    }
}

/// One pod VM run by vessel-vmm.
pub struct BuiltinVm {
    config: VmConfig,
    binaries: BuiltinBinaries,
    processes: VmProcesses,
}

impl BuiltinVm {
    pub fn new(config: VmConfig, binaries: BuiltinBinaries) -> Self {
        let processes = VmProcesses::new(&config.run_dir, VMM).in_cgroup(config.cgroup.as_ref());
        Self {
            config,
            binaries,
            processes,
        }
    }

    /// Takes over the processes of a VM started by an earlier run of the daemon.
    pub fn adopt(
        config: VmConfig,
        binaries: BuiltinBinaries,
        processes: &BTreeMap<String, ProcessId>,
    ) -> Self {
        let processes = VmProcesses::adopt(&config.run_dir, VMM, &[VIRTIOFSD, VMM], processes);
        Self {
            config,
            binaries,
            processes,
        }
    }

    /// The VMM's control socket (pause, resume, shutdown, info).
    pub fn api_socket(&self) -> PathBuf {
        self.config.run_dir.join("vmm-api.sock")
    }

    /// vessel-vmm's arguments for this VM.
    pub fn vmm_args(&self) -> Vec<String> {
        let c = &self.config;
        let path = |p: PathBuf| p.display().to_string();
        let mut args = vec![
            "--kernel".into(),
            path(c.kernel.clone()),
            "--initrd".into(),
            path(c.initrd.clone()),
            "--cmdline".into(),
            kernel_params(c, true),
            "--memory-mib".into(),
            c.memory_mib.to_string(),
            "--vcpus".into(),
            c.vcpus.to_string(),
            "--console".into(),
            path(c.console_log()),
            "--vsock-uds".into(),
            path(c.agent_socket()),
            "--guest-cid".into(),
            c.cid.to_string(),
            "--fs-socket".into(),
            path(virtiofsd::socket(c)),
            "--fs-tag".into(),
            SHARED_FS_TAG.into(),
            "--api-sock".into(),
            path(self.api_socket()),
        ];
        if let Some(nic) = &c.nic {
            args.extend([
                "--tap-fd".into(),
                PASSED_FD.to_string(),
                "--mac".into(),
                nic.mac.clone(),
            ]);
        }
        args
    }
}

/// What vessel-vmm's exit status says of the guest (see its `--help`).
fn classify(exited: Exited) -> VmExit {
    match exited {
        Exited::Code(0) => VmExit::PowerOff,
        Exited::Code(EXIT_RESET) => VmExit::Reset,
        Exited::Code(EXIT_PANIC) => VmExit::Panic(None),
        Exited::Code(code) => VmExit::Failed(code),
        Exited::Signal(_) => VmExit::Killed(exited),
        Exited::Unknown => VmExit::Unknown,
    }
}

#[async_trait]
impl Hypervisor for BuiltinVm {
    async fn start(&mut self) -> Result<(), HypervisorError> {
        require_guest_image(&self.config)?;
        virtiofsd::start(&mut self.processes, &self.binaries.virtiofsd, &self.config).await?;
        let args = self.vmm_args();
        // The VMM holds the tap from here on; the shim's copy closes with the config's.
        let tap = self.config.nic.as_mut().and_then(|nic| nic.fd.take());
        self.processes
            .spawn_with_fd(
                VMM,
                &self.binaries.vmm,
                &args,
                None,
                tap.as_ref().map(|fd| fd.as_fd()),
            )
            .await?;
        tracing::info!(pod_id = %self.config.id, pid = ?self.processes.vmm_pid(), "vessel-vmm started");
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        self.processes.stop().await;
        let _ = std::fs::remove_file(self.api_socket());
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
        Backend::Builtin
    }

    fn classify(&self, exited: Exited) -> VmExit {
        classify(exited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_say_how_the_guest_ended() {
        assert_eq!(classify(Exited::Code(0)), VmExit::PowerOff);
        assert_eq!(classify(Exited::Code(2)), VmExit::Reset);
        assert!(classify(Exited::Code(3)).is_panic());
        assert_eq!(classify(Exited::Code(1)), VmExit::Failed(1));
        assert_eq!(
            classify(Exited::Signal(9)),
            VmExit::Killed(Exited::Signal(9))
        );
    }

    #[test]
    fn the_vmm_gets_the_pods_paths_and_shape() {
        let config = VmConfig {
            id: "pod1".into(),
            run_dir: "/run/vessel/pods/pod1".into(),
            shared_dir: "/run/vessel/pods/pod1/shared".into(),
            cid: 7,
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initramfs.img".into(),
            kernel_params: "vessel.log=debug".into(),
            nic: None,
            cgroup: None,
            native: None,
        };
        let vm = BuiltinVm::new(
            config,
            BuiltinBinaries {
                vmm: "vessel-vmm".into(),
                virtiofsd: "virtiofsd".into(),
            },
        );
        let args = vm.vmm_args();
        let value = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(value("--kernel"), "/k/vmlinux");
        assert_eq!(value("--memory-mib"), "512");
        assert_eq!(value("--vcpus"), "2");
        assert_eq!(value("--guest-cid"), "7");
        assert_eq!(value("--vsock-uds"), "/run/vessel/pods/pod1/agent.vsock");
        assert_eq!(value("--fs-socket"), "/run/vessel/pods/pod1/fs.sock");
        assert_eq!(value("--fs-tag"), SHARED_FS_TAG);
        assert_eq!(value("--console"), "/run/vessel/pods/pod1/console.log");
        let cmdline = value("--cmdline");
        assert!(
            cmdline.starts_with("console=ttyS0") && cmdline.ends_with("vessel.log=debug"),
            "{cmdline}"
        );
        assert!(
            !cmdline.contains("tsc_early_khz"),
            "KVM needs no TCG timing"
        );
        assert!(!args.iter().any(|a| a == "--tap-fd"), "no network, no tap");
        let mut networked = vm.config.clone();
        networked.nic = Some(crate::hypervisor::VmNic {
            tap: "vtap0".into(),
            mac: "02:42:0a:58:00:07".into(),
            fd: None,
        });
        let vm = BuiltinVm::new(
            networked,
            BuiltinBinaries {
                vmm: "vessel-vmm".into(),
                virtiofsd: "virtiofsd".into(),
            },
        );
        let args = vm.vmm_args().join(" ");
        assert!(
            args.ends_with("--tap-fd 3 --mac 02:42:0a:58:00:07"),
            "{args}"
        );
    }
}
