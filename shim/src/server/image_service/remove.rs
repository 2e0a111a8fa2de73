//! RemoveImage: a tag untags, an id or digest removes the image; then garbage collection of
//! what no image or container uses any more. An unknown image is no error.

use std::sync::Arc;

use vessel_protocols::cri;

use super::reference;
use crate::runtime::{Runtime, RuntimeError};

pub async fn remove(
    rt: &Arc<Runtime>,
    req: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse, RuntimeError> {
    let reference = reference(req.image)?;
    // A failed collection is logged (the next one retries); the removal stands.
    if rt.images.remove(&reference)? {
        if let Err(e) = rt.images.collect_garbage().await {
            tracing::warn!(image = %reference, error = %e, "image garbage collection");
        }
    }
    Ok(cri::RemoveImageResponse {})
}
