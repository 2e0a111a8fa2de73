//! The 8250 UART at COM1: vm-superio's register model, its output into a writer (the
//! per-pod console log), its interrupt raised through an irqfd.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// COM1's I/O ports, `0x3f8..0x400`.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;
/// The UART's register window.
pub const SERIAL_PORT_LEN: u64 = 8;

/// Raises an interrupt by writing an eventfd registered as an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port as a port-I/O bus device.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    /// An output error was logged: the guest writes byte by byte, so a console that fails
    /// (a closed pipe, a full disk) would otherwise log once per byte it sends.
    error_logged: bool,
}

impl SerialDevice {
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(EventFdTrigger(interrupt), out),
            error_logged: false,
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, u8::try_from(offset)) {
            ([byte], Ok(offset)) => *byte = self.serial.read(offset),
            (data, _) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [byte]) = (u8::try_from(offset), data) else {
            return; // the UART's registers are bytes
        };
        if let Err(e) = self.serial.write(offset, *byte) {
            if !self.error_logged {
                self.error_logged = true;
                tracing::warn!(error = ?e, "serial output failed; further failures are not logged");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use std::sync::Arc;

    use super::*;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_the_data_register_reach_the_writer() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        // Enable the "transmitter empty" interrupt (IER bit 1), then send.
        dev.write(1, &[0x02]);
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().as_slice(), b"ok\n");
        assert!(irq.read().unwrap() >= 1);
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Wider accesses are not UART accesses.
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        dev.write(0, &[1, 2]);
        assert_eq!(out.0.lock().len(), 3);
    }
}
