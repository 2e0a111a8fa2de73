//! The part of the i8042 keyboard controller a guest uses to reset the machine: command
//! 0xfe (pulse the reset line) on port 0x64 raises the VM's reset event. Status reads say
//! "no data, ready for input" so a driver does not wait.

use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// The controller's data and command/status ports.
pub const I8042_DATA_PORT: u64 = 0x60;
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// The reset command.
const CMD_RESET: u8 = 0xfe;

/// The i8042 command port, as a port-I/O bus device of length 1.
pub struct I8042Device {
    reset: EventFd,
}

impl I8042Device {
    /// `reset` is written when the guest asks for a reset.
    pub fn new(reset: EventFd) -> Self {
        Self { reset }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _: u64, data: &[u8]) {
        if data == [CMD_RESET] {
            if let Err(e) = self.reset.write(1) {
                tracing::warn!(error = %e, "signal the guest's reset request");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_raises_the_event() {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042Device::new(reset.try_clone().unwrap());
        dev.write(0, &[0xd1]);
        assert!(reset.read().is_err(), "no event yet");
        let mut status = [0xffu8];
        dev.read(0, &mut status);
        assert_eq!(status, [0]);
        dev.write(0, &[CMD_RESET]);
        assert_eq!(reset.read().unwrap(), 1);
    }
}
