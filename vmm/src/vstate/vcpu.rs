//! A vCPU: its KVM fd, its CPUID, MSRs, FPU and LAPIC set-up, and the run loop that hands port
//! and MMIO exits to the buses.

use std::sync::Arc;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

use super::vm::Vm;
use crate::devices::Bus;
use crate::vstate::topology;

/// Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3, 11.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("create vCPU {id}: {source}")]
    Create { id: u64, source: kvm_ioctls::Error },
    #[error("vCPU {id}: {what}: {source}")]
    Registers {
        id: u64,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: CPUID topology: {reason}")]
    Cpuid { id: u64, reason: String },
    #[error("vCPU {id}: boot MSRs: {reason}")]
    Msrs { id: u64, reason: String },
    #[error("vCPU {id}: KVM_RUN: {source}")]
    Run { id: u64, source: kvm_ioctls::Error },
    #[error("vCPU {id}: VM entry failed (hardware reason {reason:#x})")]
    FailEntry { id: u64, reason: u64 },
    #[error("vCPU {id}: KVM internal error")]
    Internal { id: u64 },
    #[error("vCPU {id}: unexpected exit {exit}")]
    Unexpected { id: u64, exit: String },
}

/// What one `KVM_RUN` ended with, after the VMM handled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A port read or write, handed to the port I/O bus.
    Io,
    /// An MMIO read or write, handed to the MMIO bus.
    Mmio,
    /// The guest halted (only without an in-kernel irqchip: with one, KVM waits itself).
    Halt,
    /// Triple fault or reset request.
    Shutdown,
    /// A system event (power-off, reset, crash) of this kind.
    SystemEvent(u32),
    /// KVM_RUN was interrupted by a signal (a kick from the VMM).
    Interrupted,
}

/// One vCPU of a VM.
pub struct Vcpu {
    fd: VcpuFd,
    id: u64,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u64, pio: Arc<Bus>, mmio: Arc<Bus>) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(id)
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Self { fd, id, pio, mmio })
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    fn registers(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |source| VcpuError::Registers { id, what, source }
    }

    /// The special registers (segments, control registers, descriptor tables).
    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(self.registers("get sregs"))
    }

    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        self.fd
            .set_sregs(sregs)
            .map_err(self.registers("set sregs"))
    }

    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), VcpuError> {
        self.fd.set_regs(regs).map_err(self.registers("set regs"))
    }

    /// Sets the CPUID KVM supports, with this vCPU's APIC id and a topology of `count`
    /// single-threaded cores in one package, the boot MSRs, and the FPU's reset state.
    pub fn configure_cpu(&self, kvm: &Kvm, count: u8) -> Result<(), VcpuError> {
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(self.registers("get supported CPUID"))?;
        topology::apply_all(&mut cpuid, self.id as u32, u32::from(count)).map_err(|e| {
            VcpuError::Cpuid {
                id: self.id,
                reason: format!("{e:?}"),
            }
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.registers("set CPUID"))?;
        let msrs = super::msr::boot_msrs().map_err(|e| VcpuError::Msrs {
            id: self.id,
            reason: format!("{e:?}"),
        })?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.registers("set MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                id: self.id,
                reason: format!(
                    "KVM took {set} of {} boot MSRs (stopped at {:#x})",
                    msrs.as_slice().len(),
                    msrs.as_slice().get(set).map_or(0, |e| e.index)
                ),
            });
        }
        let fpu = kvm_bindings::kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(self.registers("set FPU"))
    }

    /// Local APIC LINT0 as ExtINT (the PIC's output reaches the CPU) and LINT1 as NMI, the
    /// virtual-wire setup PC firmware leaves; needs the in-kernel irqchip.
    pub fn set_lint(&self) -> Result<(), VcpuError> {
        let mut lapic = self.fd.get_lapic().map_err(self.registers("get LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes = lapic.regs[reg..reg + 4]
                .iter()
                .map(|b| *b as u8)
                .collect::<Vec<_>>();
            let value = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            // Delivery mode is bits 8..11; clearing the rest unmasks the line (bit 16).
            let value = (value & !0x0001_0700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(self.registers("set LAPIC"))
    }

    /// Runs the vCPU until its next exit to the VMM and handles it.
    pub fn run_once(&mut self) -> Result<Exit, VcpuError> {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.pio.write(port.into(), data) {
                    tracing::trace!(vcpu = id, port, "write to an unclaimed port");
                }
                Ok(Exit::Io)
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                self.pio.read(port.into(), data);
                Ok(Exit::Io)
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    tracing::trace!(vcpu = id, addr, "write to unclaimed MMIO");
                }
                Ok(Exit::Mmio)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                Ok(Exit::Mmio)
            }
            Ok(VcpuExit::Hlt) => Ok(Exit::Halt),
            Ok(VcpuExit::Shutdown) => Ok(Exit::Shutdown),
            Ok(VcpuExit::SystemEvent(kind, _)) => Ok(Exit::SystemEvent(kind)),
            Ok(VcpuExit::FailEntry(reason, _)) => Err(VcpuError::FailEntry { id, reason }),
            Ok(VcpuExit::InternalError) => Err(VcpuError::Internal { id }),
            Ok(VcpuExit::Intr) => Ok(Exit::Interrupted),
            Ok(other) => Err(VcpuError::Unexpected {
                id,
                exit: format!("{other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(Exit::Interrupted)
            }
            Err(source) => Err(VcpuError::Run { id, source }),
        }
    }

    /// Runs until the guest halts, shuts down or raises a system event; port and MMIO exits
    /// are handled on the way.
    pub fn run(&mut self) -> Result<Exit, VcpuError> {
        loop {
            match self.run_once()? {
                Exit::Io | Exit::Mmio | Exit::Interrupted => continue,
                stop => return Ok(stop),
            }
        }
    }
}
