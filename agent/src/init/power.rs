//! Powering the VM off: `sync()` then `reboot(RB_AUTOBOOT)`. The VMM runs the kernel with
//! `reboot=t` and itself with `-no-reboot`, so a reboot request makes it exit.

use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};

/// Flushes filesystems and powers the VM off. Outside PID 1 (dev runs) the process exits.
pub fn power_off(pid1: bool) -> ! {
    nix::unistd::sync();
    if !pid1 {
        tracing::info!("not PID 1: exiting instead of powering off");
        std::process::exit(0);
    }
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    eprintln!("vessel-agent: reboot: {e}");
    // PID 1 must never exit: that panics the kernel.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
