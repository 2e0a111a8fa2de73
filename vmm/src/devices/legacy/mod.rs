//! Legacy PC devices: the 8250 serial port, the i8042's reset line and the pvpanic port.

pub mod i8042;
pub mod pvpanic;
pub mod serial;

pub use i8042::{I8042Device, I8042_COMMAND_PORT};
pub use pvpanic::{PvPanic, PVPANIC_HID, PVPANIC_PORT};
pub use serial::{EventFdTrigger, SerialDevice, COM1_IRQ, COM1_PORT};
