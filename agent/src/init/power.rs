//! Powering the VM off: `sync()` then `reboot(RB_POWER_OFF)`, which the kernel carries out
//! through ACPI (the sleep control register of a hardware-reduced FADT on both VMMs). A
//! power-off is the clean end a VMM reports as such (vessel-vmm exits 0); a reset (what a
//! `panic=-1` kernel does) is not.

use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};

/// Flushes filesystems and powers the VM off. Outside PID 1 (dev runs) the process exits.
pub fn power_off(pid1: bool) -> ! {
    if !pid1 {
        // A dev run or a native pod's agent on the host: the host's filesystems are not
        // ours to flush.
        tracing::info!("not PID 1: exiting instead of powering off");
        std::process::exit(0);
    }
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    eprintln!("vessel-agent: power off: {e}");
    // PID 1 must never exit: that panics the kernel.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
