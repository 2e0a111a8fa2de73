//! Legacy PC devices: the 8250 serial port.

pub mod serial;

pub use serial::{EventFdTrigger, SerialDevice, COM1_IRQ, COM1_PORT};
