//! RemoveImage: a tag untags, an id or digest removes the image; then garbage collection.
//! An unknown image is no error.

use std::sync::Arc;

use vessel_protocols::cri;

use super::reference;
use crate::runtime::{Runtime, RuntimeError};

pub async fn remove(
    rt: &Arc<Runtime>,
    req: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse, RuntimeError> {
    rt.remove_image(&reference(req.image)?).await?;
    Ok(cri::RemoveImageResponse {})
}
