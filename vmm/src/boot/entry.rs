//! The CPU state a guest starts in: real mode (tiny guests), 64-bit long mode with identity
//! page tables, the Linux 64-bit boot entry, or the 32-bit PVH entry. Only the boot vCPU
//! gets one; the others wait for the guest's INIT/SIPI.

use kvm_bindings::{kvm_regs, kvm_sregs};

use super::linux::ZERO_PAGE_ADDR;
use super::loader::Entry;
use super::long_mode::{self, LongModeError, PageSize};
use super::pvh::{self, PvhError, START_INFO_ADDR};
use crate::memory::GuestMemory;
use crate::vstate::vcpu::{Vcpu, VcpuError};

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("PVH entry: {0}")]
    Pvh(#[from] PvhError),
    #[error("long mode entry: {0}")]
    LongMode(#[from] LongModeError),
}

/// General registers at an entry point: `rip`, and RFLAGS with only its always-set bit 1.
fn entry_regs(rip: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Applies `setup` to `vcpu`'s special registers, then loads `regs`.
fn enter(
    vcpu: &Vcpu,
    setup: impl FnOnce(&mut kvm_sregs) -> Result<(), EntryError>,
    regs: kvm_regs,
) -> Result<(), EntryError> {
    let mut sregs = vcpu.sregs()?;
    setup(&mut sregs)?;
    vcpu.set_sregs(&sregs)?;
    Ok(vcpu.set_regs(&regs)?)
}

/// Sets the boot vCPU up for what the loader found: the PVH start info or the Linux zero
/// page (both written by then) is where the entry convention says.
pub fn set_boot_entry(vcpu: &Vcpu, memory: &GuestMemory, entry: &Entry) -> Result<(), EntryError> {
    match *entry {
        Entry::Pvh(addr) => pvh_entry(vcpu, memory, addr.0, START_INFO_ADDR),
        Entry::Linux64 { addr, .. } => linux64_entry(vcpu, memory, addr.0, ZERO_PAGE_ADDR),
    }
}

/// Real mode, code segment at 0, execution from `ip` (for tiny guests and tests).
pub fn real_mode(vcpu: &Vcpu, ip: u64) -> Result<(), EntryError> {
    let setup = |sregs: &mut kvm_sregs| {
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        Ok(())
    };
    enter(vcpu, setup, entry_regs(ip))
}

/// 64-bit long mode with the boot GDT and identity page tables written into `memory`,
/// execution from `entry` with the stack at `stack`.
pub fn long_mode(
    vcpu: &Vcpu,
    memory: &GuestMemory,
    entry: u64,
    stack: u64,
    pages: PageSize,
) -> Result<(), EntryError> {
    let setup = |sregs: &mut kvm_sregs| Ok(long_mode::setup(memory, sregs, pages)?);
    let regs = kvm_regs {
        rsp: stack,
        rbp: stack,
        ..entry_regs(entry)
    };
    enter(vcpu, setup, regs)
}

/// The Linux 64-bit entry state: long mode with the first GiB identity-mapped (2 MiB
/// pages), `%rsi` = the zero page, a boot stack below the page tables.
pub fn linux64_entry(
    vcpu: &Vcpu,
    memory: &GuestMemory,
    entry: u64,
    zero_page: u64,
) -> Result<(), EntryError> {
    let setup = |sregs: &mut kvm_sregs| Ok(long_mode::setup(memory, sregs, PageSize::Large)?);
    let regs = kvm_regs {
        rsi: zero_page,
        rsp: long_mode::BOOT_STACK,
        rbp: long_mode::BOOT_STACK,
        ..entry_regs(entry)
    };
    enter(vcpu, setup, regs)
}

/// The PVH entry state: 32-bit protected mode, paging off, `%ebx` = the start info.
pub fn pvh_entry(
    vcpu: &Vcpu,
    memory: &GuestMemory,
    entry: u64,
    start_info: u64,
) -> Result<(), EntryError> {
    let setup = |sregs: &mut kvm_sregs| Ok(pvh::setup_sregs(memory, sregs)?);
    let regs = kvm_regs {
        rbx: start_info,
        ..entry_regs(entry)
    };
    enter(vcpu, setup, regs)
}
