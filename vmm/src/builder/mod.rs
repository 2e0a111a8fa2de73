//! Assembling a VM from its [`VmConfig`]: KVM, the VM and its memory (registered before the
//! in-kernel irqchip), the kernel, its boot information and ACPI tables, the virtio-mmio
//! devices ([`virtio`]) and port devices ([`legacy`]), and the vCPUs at their entry state.
//! [`VmBuilder::build`] returns a [`Machine`] ready to run.

pub mod legacy;
pub mod virtio;

use std::path::PathBuf;
use std::sync::Arc;

use kvm_ioctls::Kvm;

use crate::boot::entry::{self, EntryError};
use crate::boot::loader::{self, Entry, LoaderError};
use crate::boot::{acpi, layout, BootInfoError};
use crate::config::{ConfigError, TapSource, VmConfig};
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::fs::FsError;
use crate::devices::virtio::mmio::MmioError;
use crate::devices::virtio::net::{Tap, TapError};
use crate::devices::virtio::rng::RngError;
use crate::devices::virtio::vsock::VsockError;
use crate::devices::{Bus, BusError};
use crate::event_loop::EventLoopError;
use crate::machine::Machine;
use crate::memory::{self, GuestMemory, MemoryError};
use crate::seccomp::{self, SeccompError};
use crate::vstate::open_kvm;
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};
use virtio::{VirtioDevices, Wired};

#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("load the kernel: {0}")]
    Loader(#[from] LoaderError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("boot vCPU: {0}")]
    Entry(#[from] EntryError),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("open console {path}: {source}")]
    Console {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("virtio-rng: {0}")]
    Rng(#[from] RngError),
    #[error("virtio-vsock: {0}")]
    Vsock(#[from] VsockError),
    #[error("virtio-blk: {0}")]
    Block(#[from] BlockError),
    #[error("virtio-fs: {0}")]
    Fs(#[from] FsError),
    #[error("virtio-net: {0}")]
    Tap(#[from] TapError),
}

/// Builds one VM from its configuration.
pub struct VmBuilder {
    config: VmConfig,
}

/// What every later step works on: KVM, the VM, and its memory.
struct Base {
    kvm: Kvm,
    vm: Vm,
    memory: GuestMemory,
}

impl VmBuilder {
    /// A builder for `config`, once its limits hold.
    pub fn new(config: VmConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Creates the VM, loads the guest, wires its devices and vCPUs; nothing runs yet.
    pub fn build(mut self) -> Result<Machine, BuilderError> {
        if self.config.seccomp {
            // Every thread started from here on installs its own filter.
            seccomp::enable()?;
        }
        let base = Base::new(self.config.memory_mib)?;
        let config = &self.config;
        let loaded = loader::load(
            &base.memory,
            &config.kernel,
            config.initrd.as_deref(),
            &config.cmdline,
        )?;
        let mmio = Arc::new(Bus::default());
        let wired = base.wire_virtio(&mut self.config, mmio.clone())?;
        let config = &self.config;
        let rsdp = acpi::write_tables(&base.memory, config.vcpus, &wired.entries)?;
        crate::boot::write_boot_info(&base.memory, &loaded, rsdp)?;
        let (pio, stops) = legacy::port_devices(&base.vm, config.console.as_deref())?;
        let vcpus = base.create_vcpus(config.vcpus, &loaded.entry, pio, mmio)?;
        Ok(Machine {
            vcpus,
            stops,
            events: wired.events,
            metrics: wired.metrics,
            api_sock: self.config.api_sock,
            memory_mib: self.config.memory_mib,
            _vm: base.vm,
            _memory: base.memory,
        })
    }
}

impl Base {
    fn new(memory_mib: u64) -> Result<Self, BuilderError> {
        let kvm = open_kvm()?;
        let vm = Vm::new(&kvm)?;
        let memory = memory::create(&layout::ram_regions(memory_mib << 20))?;
        // Memory before the irqchip: once the in-kernel irqchip exists, every memory slot
        // change costs KVM milliseconds (measured: 5-8 ms a slot on this project's host,
        // against 0.05 ms before it).
        vm.register_memory(&memory)?;
        vm.create_irqchip()?;
        Ok(Self { kvm, vm, memory })
    }

    /// The virtio devices `config` asks for (an entropy device always), in slot order:
    /// rng, vsock, fs, net, blk. Takes the tap out of `config`.
    fn wire_virtio(&self, config: &mut VmConfig, mmio: Arc<Bus>) -> Result<Wired, BuilderError> {
        let mut devices = VirtioDevices::new(&self.vm, &self.memory, mmio)?;
        devices.add_rng()?;
        if let Some(vsock) = &config.vsock {
            devices.add_vsock(vsock.cid, &vsock.uds)?;
        }
        if let Some(fs) = &config.fs {
            devices.add_fs(&fs.socket, &fs.tag)?;
        }
        if let Some(net) = config.net.take() {
            let tap = match net.tap {
                TapSource::Name(name) => Tap::open(&name)?,
                TapSource::Fd(fd) => Tap::from_fd(fd)?,
            };
            devices.add_net(tap, net.mac)?;
        }
        if let Some(disk) = &config.disk {
            devices.add_blk(&disk.path, disk.read_only)?;
        }
        Ok(devices.finish())
    }

    /// `count` vCPUs with their CPUID, MSRs and LAPIC set; the first at the kernel's
    /// `entry`, the others waiting for the guest's INIT/SIPI in the in-kernel LAPIC.
    fn create_vcpus(
        &self,
        count: u8,
        entry: &Entry,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
    ) -> Result<Vec<Vcpu>, BuilderError> {
        (0..count)
            .map(|id| {
                let vcpu = Vcpu::new(&self.vm, u64::from(id), pio.clone(), mmio.clone())?;
                vcpu.configure_cpu(&self.kvm, count)?;
                if id == 0 {
                    entry::set_boot_entry(&vcpu, &self.memory, entry)?;
                }
                vcpu.set_lint()?;
                Ok(vcpu)
            })
            .collect()
    }
}
