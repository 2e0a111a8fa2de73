//! virtio-blk (device id 2) on a host file: read, write, flush and get-id requests, the
//! file's size as the capacity, optionally read-only.

mod device;

pub use device::{Block, BlockError};

/// The virtio device id of a block device.
pub const TYPE_BLOCK: u32 = 2;
