//! The QEMU backend: `qemu-system-x86_64 -M microvm`, with vhost-device-vsock providing the
//! hybrid-vsock socket and virtiofsd serving the pod's shared dir.

mod cmdline;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub use cmdline::{
    boot_args, kernel_params, machine_args, qemu_args, HelperSockets, BASE_KERNEL_PARAMS,
};

use super::virtiofsd::{self, VIRTIOFSD};
use super::{
    require_file, Backend, ChildProcess, Hypervisor, HypervisorError, ProcessId, VmConfig, VmRecord,
};
use crate::config::HypervisorConfig;

/// Programs the QEMU backend runs.
#[derive(Debug, Clone)]
pub struct QemuBinaries {
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_device_vsock: PathBuf,
}

impl From<&HypervisorConfig> for QemuBinaries {
    fn from(c: &HypervisorConfig) -> Self {
        Self {
            qemu: c.qemu.clone(),
            virtiofsd: c.virtiofsd.clone(),
            vhost_device_vsock: c.vhost_device_vsock.clone(),
        }
    }
}

/// One pod VM run by QEMU.
pub struct QemuVm {
    config: VmConfig,
    binaries: QemuBinaries,
    kvm: bool,
    vsock: Option<ChildProcess>,
    virtiofsd: Option<ChildProcess>,
    qemu: Option<ChildProcess>,
    adopted_dead: bool,
}

const QEMU: &str = "qemu";
const VHOST_VSOCK: &str = "vhost-device-vsock";

impl QemuVm {
    pub fn new(config: VmConfig, binaries: QemuBinaries, kvm: bool) -> Self {
        Self {
            config,
            binaries,
            kvm,
            vsock: None,
            virtiofsd: None,
            qemu: None,
            adopted_dead: false,
        }
    }

    /// Takes over the processes of a VM started by an earlier run of the daemon.
    pub fn adopt(
        config: VmConfig,
        binaries: QemuBinaries,
        kvm: bool,
        processes: &BTreeMap<String, ProcessId>,
    ) -> Self {
        let mut vm = Self::new(config, binaries, kvm);
        let adopt = |name: &str| {
            let log = vm.log(name);
            processes
                .get(name)
                .and_then(|id| ChildProcess::adopt(name, *id, &log))
        };
        let (qemu, virtiofsd, vsock) = (adopt(QEMU), adopt(VIRTIOFSD), adopt(VHOST_VSOCK));
        vm.qemu = qemu;
        vm.virtiofsd = virtiofsd;
        vm.vsock = vsock;
        // A VM whose QEMU is gone must read as exited, not as "never started".
        vm.adopted_dead = vm.qemu.is_none();
        vm
    }

    fn vhost_vsock_socket(&self) -> PathBuf {
        self.config.run_dir.join("vsock.sock")
    }

    fn virtiofs_socket(&self) -> PathBuf {
        virtiofsd::socket(&self.config)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.config.run_dir.join(format!("{name}.log"))
    }

    async fn spawn_helpers(&mut self) -> Result<(), HypervisorError> {
        let vhost_sock = self.vhost_vsock_socket();
        let mut vsock = ChildProcess::spawn(
            VHOST_VSOCK,
            &self.binaries.vhost_device_vsock,
            &[
                "--guest-cid".into(),
                self.config.cid.to_string(),
                "--socket".into(),
                vhost_sock.display().to_string(),
                "--uds-path".into(),
                self.config.agent_socket().display().to_string(),
            ],
            &self.log(VHOST_VSOCK),
        )?;
        let ready = vsock.wait_for_socket(&vhost_sock).await;
        self.vsock = Some(vsock);
        ready?;

        let fs_sock = self.virtiofs_socket();
        let mut virtiofsd =
            virtiofsd::spawn(&self.binaries.virtiofsd, &self.config, &self.log(VIRTIOFSD))?;
        let ready = virtiofsd.wait_for_socket(&fs_sock).await;
        self.virtiofsd = Some(virtiofsd);
        ready
    }
}

#[async_trait]
impl Hypervisor for QemuVm {
    async fn start(&mut self) -> Result<(), HypervisorError> {
        require_file("guest kernel (hypervisor.kernel)", &self.config.kernel)?;
        require_file("guest initramfs (hypervisor.initrd)", &self.config.initrd)?;
        self.spawn_helpers().await?;
        let sockets = HelperSockets {
            vsock: &self.vhost_vsock_socket(),
            virtiofs: &self.virtiofs_socket(),
        };
        let args = qemu_args(&self.config, self.kvm, &sockets);
        let qemu = ChildProcess::spawn(QEMU, &self.binaries.qemu, &args, &self.log(QEMU))?;
        tracing::info!(pod_id = %self.config.id, pid = ?qemu.pid(), kvm = self.kvm, "qemu started");
        self.qemu = Some(qemu);
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        // QEMU first: the vhost-user backends then see their frontend go away.
        for helper in [&mut self.qemu, &mut self.virtiofsd, &mut self.vsock]
            .into_iter()
            .flatten()
        {
            helper.terminate().await;
        }
        Ok(())
    }

    fn exit_status(&mut self) -> Option<String> {
        if self.adopted_dead {
            return Some("QEMU was gone when the daemon restarted".into());
        }
        self.qemu.as_mut().and_then(ChildProcess::exit_status)
    }

    fn agent_socket(&self) -> PathBuf {
        self.config.agent_socket()
    }

    fn console_log(&self) -> PathBuf {
        self.config.console_log()
    }

    fn vmm_log(&self) -> PathBuf {
        self.log(QEMU)
    }

    fn pid(&self) -> Option<u32> {
        self.qemu.as_ref().and_then(ChildProcess::pid)
    }

    async fn wait_exit(&mut self, timeout: Duration) -> bool {
        match self.qemu.as_mut() {
            Some(q) => q.wait_timeout(timeout).await,
            None => true,
        }
    }

    fn record(&self) -> VmRecord {
        let processes = [
            (QEMU, &self.qemu),
            (VIRTIOFSD, &self.virtiofsd),
            (VHOST_VSOCK, &self.vsock),
        ]
        .into_iter()
        .filter_map(|(name, p)| Some((name.to_string(), p.as_ref()?.process_id()?)))
        .collect();
        VmRecord {
            config: self.config.clone(),
            backend: Backend::Qemu { kvm: self.kvm },
            processes,
        }
    }
}
