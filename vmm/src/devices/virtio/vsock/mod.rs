//! virtio-vsock (device id 19) with a hybrid-vsock host side, the Firecracker convention the
//! shim's agent client speaks (see DESIGN.md): the host connects to a Unix socket and writes
//! `CONNECT <port>\n`, the device answers `OK <host port>\n` once the guest accepted; guest
//! connections to host port P go to the Unix socket `<uds>_P`.
//!
//! The parts: the packet format on the queues ([`packet`]), the host handshake ([`hybrid`]),
//! one connection's state machine and credit accounting ([`connection`]), the connection
//! table with the host's Unix sockets and the epoll interest each needs ([`muxer`]), and the
//! device ([`Vsock`]) that the device event loop drives between the queues and the muxer.

pub mod connection;
mod device;
pub mod hybrid;
pub mod muxer;
pub mod packet;

pub use device::{Vsock, VsockError};

/// The virtio device id of a socket device.
pub const TYPE_VSOCK: u32 = 19;
/// The host's CID.
pub const HOST_CID: u64 = 2;
