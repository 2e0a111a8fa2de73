//! The VM: its KVM file descriptor, memory slots, the in-kernel interrupt controllers and
//! PIT, and the eventfds KVM signals (ioeventfd) or listens to (irqfd) without a VM exit.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// Where the TSS goes: three pages below the 4 GiB boundary's last 16 MiB, outside RAM, as
/// Firecracker and Cloud Hypervisor place it.
const TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    #[error("create VM: {0}")]
    Create(kvm_ioctls::Error),
    #[error("register guest memory slot {slot} at {addr:#x}: {source}")]
    MemorySlot {
        slot: u32,
        addr: u64,
        source: kvm_ioctls::Error,
    },
    #[error("set TSS address: {0}")]
    Tss(kvm_ioctls::Error),
    #[error("create in-kernel irqchip: {0}")]
    IrqChip(kvm_ioctls::Error),
    #[error("create PIT: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("register ioeventfd at {addr}: {source}")]
    IoEvent {
        addr: String,
        source: kvm_ioctls::Error,
    },
    #[error("register irqfd for GSI {gsi}: {source}")]
    IrqFd { gsi: u32, source: kvm_ioctls::Error },
}

/// One KVM VM.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        Ok(Self {
            fd: kvm.create_vm().map_err(VmError::Create)?,
        })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Makes every region of `memory` a KVM memory slot, in order. Do it before
    /// [`Vm::create_irqchip`]: with an in-kernel irqchip, each slot change costs KVM
    /// milliseconds instead of tens of microseconds.
    pub fn register_memory(&self, memory: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in memory.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::MemorySlot {
                    slot,
                    addr: region.start_addr().0,
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let mapping = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes owned by `memory`,
            // which the caller keeps alive for as long as the VM runs (the VMM holds both for
            // the VM's lifetime); KVM only reads and writes guest memory through it.
            unsafe { self.fd.set_user_memory_region(mapping) }.map_err(|source| {
                VmError::MemorySlot {
                    slot,
                    addr: region.start_addr().0,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Creates the in-kernel PIC, IOAPIC and local APICs, and the PIT (x86 needs the TSS
    /// address set first). A halting vCPU then waits in the kernel for its next interrupt.
    pub fn create_irqchip(&self) -> Result<(), VmError> {
        self.fd.set_tss_address(TSS_ADDRESS).map_err(VmError::Tss)?;
        self.fd.create_irq_chip().map_err(VmError::IrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::Pit)
    }

    /// Has KVM signal `fd` on a guest write to `addr` instead of exiting to the VMM.
    pub fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress) -> Result<(), VmError> {
        let name = format!("{addr:?}");
        self.fd
            .register_ioevent(fd, &addr, NoDatamatch)
            .map_err(|source| VmError::IoEvent { addr: name, source })
    }

    /// Has KVM signal `fd` on a 32-bit guest write of `queue` to a virtio-mmio QueueNotify
    /// register at `addr` (one eventfd per queue on the same register).
    pub fn register_queue_notify(
        &self,
        fd: &EventFd,
        addr: u64,
        queue: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), queue)
            .map_err(|source| VmError::IoEvent {
                addr: format!("MMIO {addr:#x} = {queue}"),
                source,
            })
    }

    /// Has KVM raise interrupt line `gsi` whenever `fd` is written.
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(|source| VmError::IrqFd { gsi, source })
    }
}
