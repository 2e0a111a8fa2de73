//! virtio-rng (device id 4): one request queue whose writable buffers the device fills with
//! bytes from the host's entropy source.

mod device;

pub use device::{Rng, RngError};

/// The virtio device id of an entropy device.
pub const TYPE_RNG: u32 = 4;
