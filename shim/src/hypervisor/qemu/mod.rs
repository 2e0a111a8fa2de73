//! The QEMU backend: `qemu-system-x86_64 -M microvm`, with vhost-device-vsock providing the
//! hybrid-vsock socket and virtiofsd serving the pod's shared dir.

mod cmdline;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;

use async_trait::async_trait;

pub use cmdline::{
    boot_args, kernel_params, machine_args, qemu_args, HelperSockets, BASE_KERNEL_PARAMS,
};

use super::virtiofsd::{self, VIRTIOFSD};
use super::{
    require_guest_image, Backend, Exited, Hypervisor, HypervisorError, ProcessId, VmConfig, VmExit,
    VmProcesses,
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
    processes: VmProcesses,
}

/// The VMM's name among the VM's processes (and its log's).
pub const QEMU: &str = "qemu";
const VHOST_VSOCK: &str = "vhost-device-vsock";

impl QemuVm {
    pub fn new(config: VmConfig, binaries: QemuBinaries, kvm: bool) -> Self {
        let processes = VmProcesses::new(&config.run_dir, QEMU).in_cgroup(config.cgroup.as_ref());
        Self {
            config,
            binaries,
            kvm,
            processes,
        }
    }

    /// Takes over the processes of a VM started by an earlier run of the daemon.
    pub fn adopt(
        config: VmConfig,
        binaries: QemuBinaries,
        kvm: bool,
        processes: &BTreeMap<String, ProcessId>,
    ) -> Self {
        let processes = VmProcesses::adopt(
            &config.run_dir,
            QEMU,
            &[VHOST_VSOCK, VIRTIOFSD, QEMU],
            processes,
        );
        Self {
            config,
            binaries,
            kvm,
            processes,
        }
    }

    fn vhost_vsock_socket(&self) -> PathBuf {
        self.config.run_dir.join("vsock.sock")
    }
}

/// What QEMU's exit says of the guest: with `-no-reboot` a power-off and a reset both end
/// it with 0; a guest panic (pvpanic, `-action panic=exit-failure`) with 1, the one failure
/// status QEMU has once the VM runs (its own start errors end the boot instead).
fn classify(exited: Exited) -> VmExit {
    match exited {
        Exited::Code(0) => VmExit::Stopped,
        Exited::Code(1) => VmExit::Panic(None),
        Exited::Code(code) => VmExit::Failed(code),
        Exited::Signal(_) => VmExit::Killed(exited),
        Exited::Unknown => VmExit::Unknown,
    }
}

#[async_trait]
impl Hypervisor for QemuVm {
    async fn start(&mut self) -> Result<(), HypervisorError> {
        require_guest_image(&self.config)?;
        let vsock_socket = self.vhost_vsock_socket();
        let vsock_args = [
            "--guest-cid".into(),
            self.config.cid.to_string(),
            "--socket".into(),
            vsock_socket.display().to_string(),
            "--uds-path".into(),
            self.config.agent_socket().display().to_string(),
        ];
        self.processes
            .spawn(
                VHOST_VSOCK,
                &self.binaries.vhost_device_vsock,
                &vsock_args,
                Some(&vsock_socket),
            )
            .await?;
        virtiofsd::start(&mut self.processes, &self.binaries.virtiofsd, &self.config).await?;
        let fs_socket = virtiofsd::socket(&self.config);
        let sockets = HelperSockets {
            vsock: &vsock_socket,
            virtiofs: &fs_socket,
        };
        let args = qemu_args(&self.config, self.kvm, &sockets);
        // The VMM holds the tap from here on; the shim's copy closes with the config's.
        let tap = self.config.nic.as_mut().and_then(|nic| nic.fd.take());
        self.processes
            .spawn_with_fd(
                QEMU,
                &self.binaries.qemu,
                &args,
                None,
                tap.as_ref().map(|fd| fd.as_fd()),
            )
            .await?;
        tracing::info!(pod_id = %self.config.id, pid = ?self.processes.vmm_pid(), kvm = self.kvm, "qemu started");
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
        Backend::Qemu { kvm: self.kvm }
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
        assert_eq!(classify(Exited::Code(0)), VmExit::Stopped);
        assert!(classify(Exited::Code(1)).is_panic());
        assert_eq!(classify(Exited::Code(255)), VmExit::Failed(255));
        assert_eq!(classify(Exited::Unknown), VmExit::Unknown);
    }
}
