//! virtio-fs (device id 26) as a vhost-user frontend: virtiofsd serves the FUSE requests of
//! the high-priority queue and the request queue itself; this device only describes the
//! file system (tag, queue count) and connects the rings to the backend.

mod device;

pub use device::{Fs, FsError};

/// The virtio device id of a file system device.
pub const TYPE_FS: u32 = 26;
