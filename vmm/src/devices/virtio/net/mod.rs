//! virtio-net (device id 1) on a host tap: queues rx (0) and tx (1), the MAC address and
//! link status in the configuration space, no offloads and no mergeable rx buffers. Every
//! frame on the queues begins with the 12-byte `virtio_net_hdr_v1`, which is also the vnet
//! header the tap is set up with, so frames pass between guest buffers and the tap
//! unchanged (only `num_buffers` is set on rx).
//!
//! - [`tap`]: opening a tap (or taking one's fd) with that header, non-blocking.
//! - [`Net`]: the device; the event loop calls [`Net::process_tx`] when the tx queue is
//!   notified and [`Net::process_rx`] when the rx queue is notified or the tap is readable.

mod device;
pub mod tap;

pub use device::{Net, NetError, NetMetrics};
pub use tap::{Tap, TapError};

/// The virtio device id of a network device.
pub const TYPE_NET: u32 = 1;
/// The size of `virtio_net_hdr_v1` (with `num_buffers`), in front of every frame.
pub const VNET_HDR_LEN: usize = 12;
/// The longest frame taken from or given to the guest, header included (65550 bytes of
/// frame, as Firecracker allows).
pub const MAX_FRAME_LEN: usize = 65562;

#[cfg(test)]
mod netns_test;
#[cfg(test)]
mod tests;
