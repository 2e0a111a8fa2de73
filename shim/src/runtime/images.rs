//! The runtime's image operations: pulls into the image store, lookups, and removal followed
//! by garbage collection that keeps every layer a container still has mounted.

use super::{Runtime, RuntimeError};
use crate::image::{ImageRecord, PullAuth};

impl Runtime {
    /// Pulls an image from its registry (or a mirror) and records it.
    pub async fn pull_image(
        &self,
        reference: &str,
        auth: PullAuth,
    ) -> Result<ImageRecord, RuntimeError> {
        if reference.is_empty() {
            return Err(RuntimeError::invalid("image.image", "empty"));
        }
        Ok(self.images.pull(reference, auth).await?)
    }

    /// The image a reference (id, tag or digest) names, if this host has it.
    pub fn image_status(&self, reference: &str) -> Result<Option<ImageRecord>, RuntimeError> {
        if reference.is_empty() {
            return Err(RuntimeError::invalid("image.image", "empty"));
        }
        Ok(self.images.resolve(reference))
    }

    /// Every image, or only the one `filter` names.
    pub fn list_images(&self, filter: Option<&str>) -> Vec<ImageRecord> {
        match filter {
            Some(reference) if !reference.is_empty() => self.images.matching(reference),
            _ => self.images.list(),
        }
    }

    /// Removes what `reference` names (a tag untags; an id or digest removes the image), then
    /// collects what no image or container uses any more. An unknown image is fine; a failed
    /// collection is logged (the next one retries), the removal stands.
    pub async fn remove_image(&self, reference: &str) -> Result<(), RuntimeError> {
        if reference.is_empty() {
            return Err(RuntimeError::invalid("image.image", "empty"));
        }
        if self.images.remove(reference)? {
            if let Err(e) = self.images.collect_garbage().await {
                tracing::warn!(image = reference, error = %e, "image garbage collection");
            }
        }
        Ok(())
    }

    /// The image config as stored, for verbose ImageStatus.
    pub fn image_config(&self, image: &ImageRecord) -> Result<serde_json::Value, RuntimeError> {
        Ok(self.images.config_json(image)?)
    }

    /// Where images live (ImageFsInfo's mountpoint).
    pub fn image_root(&self) -> &std::path::Path {
        self.images.root()
    }
}
