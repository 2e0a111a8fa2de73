//! The pvpanic device (QEMU's `docs/specs/pvpanic.rst`): one I/O port through which the
//! guest kernel's pvpanic driver reports a panic from its panic notifier, before the kernel
//! reboots (`panic=-1`) or halts. Reading the port gives the events the device understands;
//! a write with the PANICKED bit raises the VM's panic event, so the VMM can tell a panic
//! from a plain reset. The DSDT describes it (`QEMU0001`), as the driver finds it by ACPI.

use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// The device's port (QEMU's ISA pvpanic default).
pub const PVPANIC_PORT: u64 = 0x505;
/// The ACPI hardware id the guest's driver binds to.
pub const PVPANIC_HID: &str = "QEMU0001";
/// Event bits: the guest panicked; a crash kernel is loaded (only reported, not acted on).
const PANICKED: u8 = 1 << 0;
const CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic port, as a port-I/O bus device of length 1.
pub struct PvPanic {
    panic: EventFd,
}

impl PvPanic {
    /// `panic` is written when the guest reports a panic.
    pub fn new(panic: EventFd) -> Self {
        Self { panic }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = PANICKED | CRASH_LOADED;
        }
    }

    fn write(&mut self, _: u64, data: &[u8]) {
        if data.first().is_some_and(|b| b & PANICKED != 0) {
            if let Err(e) = self.panic.write(1) {
                tracing::warn!(error = %e, "signal the guest's panic");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicked_write_raises_the_event_and_reads_show_the_features() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = PvPanic::new(event.try_clone().unwrap());
        let mut features = [0u8];
        dev.read(0, &mut features);
        assert_eq!(features, [PANICKED | CRASH_LOADED]);
        dev.write(0, &[CRASH_LOADED]);
        assert!(event.read().is_err(), "a loaded crash kernel is no panic");
        dev.write(0, &[PANICKED]);
        assert_eq!(event.read().unwrap(), 1);
    }
}
