//! The CRI server: gRPC services on the CRI Unix socket.

pub mod authority;
