//! The runtime's image operations: pulls into the image store, lookups, and removal followed
//! by garbage collection that keeps every layer a container still has mounted.

use std::collections::HashSet;
use std::path::PathBuf;

use super::{Runtime, RuntimeError};
use crate::image::store::Collected;
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
            Some(reference) if !reference.is_empty() => {
                self.images.resolve(reference).into_iter().collect()
            }
            _ => self.images.list(),
        }
    }

    /// Removes what `reference` names (a tag untags; an id or digest removes the image) and
    /// collects what no image or container uses any more. An unknown image is fine.
    pub async fn remove_image(&self, reference: &str) -> Result<(), RuntimeError> {
        if reference.is_empty() {
            return Err(RuntimeError::invalid("image.image", "empty"));
        }
        if self.images.remove(reference)? {
            self.collect_image_garbage().await?;
        }
        Ok(())
    }

    /// Deletes unreferenced blobs and layers, keeping those under containers' rootfs.
    pub(super) async fn collect_image_garbage(&self) -> Result<Collected, RuntimeError> {
        let pinned: HashSet<PathBuf> = self
            .containers()
            .iter()
            .flat_map(|c| c.record().layers)
            .collect();
        Ok(self.images.collect_garbage(&pinned).await?)
    }
}
