//! The built-in backend: `vessel-vmm` (this workspace's KVM microVM monitor) runs the pod VM
//! with its own hybrid-vsock device on the agent socket, and virtiofsd serves the pod's
//! shared dir through vhost-user. It needs a KVM that runs full guests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::qemu::kernel_params;
use super::virtiofsd::{self, VIRTIOFSD};
use super::{
    require_file, Backend, ChildProcess, Hypervisor, HypervisorError, ProcessId, VmConfig,
    VmRecord, SHARED_FS_TAG,
};
use crate::config::HypervisorConfig;

const VMM: &str = "vessel-vmm";

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
    virtiofsd: Option<ChildProcess>,
    vmm: Option<ChildProcess>,
    adopted_dead: bool,
}

impl BuiltinVm {
    pub fn new(config: VmConfig, binaries: BuiltinBinaries) -> Self {
        Self {
            config,
            binaries,
            virtiofsd: None,
            vmm: None,
            adopted_dead: false,
        }
    }

    /// Takes over the processes of a VM started by an earlier run of the daemon.
    pub fn adopt(
        config: VmConfig,
        binaries: BuiltinBinaries,
        processes: &BTreeMap<String, ProcessId>,
    ) -> Self {
        let mut vm = Self::new(config, binaries);
        let adopt = |name: &str| {
            let log = vm.log(name);
            processes
                .get(name)
                .and_then(|id| ChildProcess::adopt(name, *id, &log))
        };
        let (vmm, virtiofsd) = (adopt(VMM), adopt(VIRTIOFSD));
        vm.vmm = vmm;
        vm.virtiofsd = virtiofsd;
        vm.adopted_dead = vm.vmm.is_none();
        vm
    }

    fn log(&self, name: &str) -> PathBuf {
        self.config.run_dir.join(format!("{name}.log"))
    }

    /// The VMM's control socket (pause, resume, shutdown, info).
    pub fn api_socket(&self) -> PathBuf {
        self.config.run_dir.join("vmm-api.sock")
    }

    /// vessel-vmm's arguments for this VM.
    pub fn vmm_args(&self) -> Vec<String> {
        let c = &self.config;
        let path = |p: PathBuf| p.display().to_string();
        vec![
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
        ]
    }
}

#[async_trait]
impl Hypervisor for BuiltinVm {
    async fn start(&mut self) -> Result<(), HypervisorError> {
        require_file("guest kernel (hypervisor.kernel)", &self.config.kernel)?;
        require_file("guest initramfs (hypervisor.initrd)", &self.config.initrd)?;
        let mut fs =
            virtiofsd::spawn(&self.binaries.virtiofsd, &self.config, &self.log(VIRTIOFSD))?;
        let ready = fs.wait_for_socket(&virtiofsd::socket(&self.config)).await;
        self.virtiofsd = Some(fs);
        ready?;
        let vmm = ChildProcess::spawn(VMM, &self.binaries.vmm, &self.vmm_args(), &self.log(VMM))?;
        tracing::info!(pod_id = %self.config.id, pid = ?vmm.pid(), "vessel-vmm started");
        self.vmm = Some(vmm);
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        // The VMM first: virtiofsd then sees its frontend go away and exits.
        for helper in [&mut self.vmm, &mut self.virtiofsd].into_iter().flatten() {
            helper.terminate().await;
        }
        let _ = std::fs::remove_file(self.api_socket());
        Ok(())
    }

    fn exit_status(&mut self) -> Option<String> {
        if self.adopted_dead {
            return Some("vessel-vmm was gone when the daemon restarted".into());
        }
        self.vmm.as_mut().and_then(ChildProcess::exit_status)
    }

    fn agent_socket(&self) -> PathBuf {
        self.config.agent_socket()
    }

    fn console_log(&self) -> PathBuf {
        self.config.console_log()
    }

    fn vmm_log(&self) -> PathBuf {
        self.log(VMM)
    }

    fn pid(&self) -> Option<u32> {
        self.vmm.as_ref().and_then(ChildProcess::pid)
    }

    async fn wait_exit(&mut self, timeout: Duration) -> bool {
        match self.vmm.as_mut() {
            Some(vmm) => vmm.wait_timeout(timeout).await,
            None => true,
        }
    }

    fn record(&self) -> VmRecord {
        let processes = [(VMM, &self.vmm), (VIRTIOFSD, &self.virtiofsd)]
            .into_iter()
            .filter_map(|(name, p)| Some((name.to_string(), p.as_ref()?.process_id()?)))
            .collect();
        VmRecord {
            config: self.config.clone(),
            backend: Backend::Builtin,
            processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
