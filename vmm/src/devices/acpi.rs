//! The ACPI hardware-reduced sleep control register (ACPI 6.4, 4.8.3.7): the FADT will point
//! the guest's power-off at this port. Writing SLP_EN with SLP_TYP = S5 raises the VM's
//! power-off event; other sleep states are not offered.

use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// The sleep control register's port.
pub const SLEEP_CONTROL_PORT: u64 = 0x600;
/// SLP_TYP (bits 2..=4) = 5 (S5, soft off) with SLP_EN (bit 5).
pub const S5_SLEEP: u8 = (5 << 2) | (1 << 5);

/// The sleep control register as a port-I/O bus device of length 1.
pub struct SleepControl {
    power_off: EventFd,
}

impl SleepControl {
    /// `power_off` is written when the guest enters S5.
    pub fn new(power_off: EventFd) -> Self {
        Self { power_off }
    }
}

impl BusDevice for SleepControl {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _: u64, data: &[u8]) {
        if data == [S5_SLEEP] {
            if let Err(e) = self.power_off.write(1) {
                tracing::warn!(error = %e, "signal the guest's power-off");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s5_with_slp_en_powers_off() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SleepControl::new(event.try_clone().unwrap());
        dev.write(0, &[5 << 2]); // S5 without SLP_EN
        dev.write(0, &[(3 << 2) | (1 << 5)]); // S3
        assert!(event.read().is_err());
        dev.write(0, &[S5_SLEEP]);
        assert_eq!(event.read().unwrap(), 1);
    }
}
