//! The VM's port I/O devices: the 8250 serial console on COM1, the i8042 reset line, the ACPI
//! sleep control register (power-off) and the pvpanic port. The last three end the VM, so
//! their eventfds are what the vCPU loop checks after a port write.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use vmm_sys_util::eventfd::EventFd;

use super::BuilderError;
use crate::devices::acpi::{SleepControl, SLEEP_CONTROL_PORT};
use crate::devices::legacy::{
    I8042Device, PvPanic, SerialDevice, COM1_IRQ, COM1_PORT, I8042_COMMAND_PORT, PVPANIC_PORT,
};
use crate::devices::Bus;
use crate::runner::Stops;
use crate::vstate::vm::Vm;

fn eventfd() -> Result<EventFd, BuilderError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(BuilderError::EventFd)
}

/// Where the serial console goes: appended to `path`, or stdout.
fn console(path: Option<&Path>) -> Result<Box<dyn Write + Send>, BuilderError> {
    let Some(path) = path else {
        return Ok(Box::new(std::io::stdout()));
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| BuilderError::Console {
            path: path.to_owned(),
            source,
        })?;
    Ok(Box::new(file))
}

/// The port I/O bus with every legacy device of `vm` on it (the console written to
/// `console_path`, or stdout), and the lines that end the VM.
pub fn port_devices(
    vm: &Vm,
    console_path: Option<&Path>,
) -> Result<(Arc<Bus>, Stops), BuilderError> {
    let pio = Arc::new(Bus::default());
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)?;
    let serial = SerialDevice::new(serial_irq, console(console_path)?);
    pio.insert(COM1_PORT, 8, Arc::new(Mutex::new(serial)))?;
    let stops = Stops {
        power_off: eventfd()?,
        reset: eventfd()?,
        panic: eventfd()?,
    };
    let clone = |fd: &EventFd| fd.try_clone().map_err(BuilderError::EventFd);
    let i8042 = I8042Device::new(clone(&stops.reset)?);
    pio.insert(I8042_COMMAND_PORT, 1, Arc::new(Mutex::new(i8042)))?;
    let sleep = SleepControl::new(clone(&stops.power_off)?);
    pio.insert(SLEEP_CONTROL_PORT, 1, Arc::new(Mutex::new(sleep)))?;
    let pvpanic = PvPanic::new(clone(&stops.panic)?);
    pio.insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(pvpanic)))?;
    Ok((pio, stops))
}
