//! Legacy PC devices: the 8250 serial port and the i8042's reset line.

pub mod i8042;
pub mod serial;

pub use i8042::{I8042Device, I8042_COMMAND_PORT};
pub use serial::{EventFdTrigger, SerialDevice, COM1_IRQ, COM1_PORT};
