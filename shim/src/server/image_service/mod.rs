//! CRI ImageService handlers, one file per RPC family; each is a thin adapter from CRI
//! messages to the runtime's image operations.

pub mod fs_info;
pub mod pull;
pub mod remove;
pub mod status;

use vessel_protocols::cri;

use crate::runtime::RuntimeError;

/// The image reference of a request's ImageSpec; empty is an error naming `image.image`.
fn reference(spec: Option<cri::ImageSpec>) -> Result<String, RuntimeError> {
    match spec.map(|s| s.image) {
        Some(image) if !image.is_empty() => Ok(image),
        _ => Err(RuntimeError::invalid("image.image", "empty")),
    }
}
