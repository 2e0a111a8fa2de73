//! Devices of the microVM and the buses the vCPUs dispatch their port and MMIO exits to.

pub mod acpi;
pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
