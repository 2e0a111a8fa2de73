//! Images known to this runtime. Until registry pulls land, an image is a local OCI image
//! layout named by path (`/path/to/layout[:tag]`); "pulling" one verifies it and unpacks its
//! layers into the layer cache, after which ImageStatus and ListImages report it.

use super::{lock, Runtime, RuntimeError};
use crate::image::{self, LocalImage};

impl Runtime {
    /// Opens (verifies, unpacks) the image and remembers it as present.
    pub fn pull_image(&self, reference: &str) -> Result<LocalImage, RuntimeError> {
        if reference.is_empty() {
            return Err(RuntimeError::invalid("image.image", "empty"));
        }
        let img = image::open_layout(reference, &self.dirs.root.join("layers")).map_err(|e| {
            RuntimeError::NotFound {
                what: "image",
                id: format!("{reference} ({e})"),
            }
        })?;
        lock(&self.images).insert(reference.to_owned());
        Ok(img)
    }

    /// The image if it was pulled (or used by a container); `None` otherwise.
    pub fn image_status(&self, reference: &str) -> Option<LocalImage> {
        if !lock(&self.images).contains(reference) {
            return None;
        }
        image::open_layout(reference, &self.dirs.root.join("layers")).ok()
    }

    /// Every present image.
    pub fn list_images(&self) -> Vec<LocalImage> {
        let refs: Vec<String> = lock(&self.images).iter().cloned().collect();
        refs.iter().filter_map(|r| self.image_status(r)).collect()
    }

    /// Forgets an image; a missing one is fine. Unpacked layers stay cached.
    pub fn remove_image(&self, reference: &str) {
        lock(&self.images).remove(reference);
    }
}
