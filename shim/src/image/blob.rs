//! Reading content from an OCI image layout directory: blob paths by digest, JSON documents
//! with a size cap, and every blob checked against its descriptor's size and sha256 digest.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, DigestAlgorithm};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::ImageError;

/// Largest JSON document (index, manifest, config) read into memory.
const MAX_JSON: u64 = 16 << 20;

/// The layout being read, for paths and error context.
pub(super) struct Layout<'a> {
    pub(super) reference: &'a str,
    pub(super) dir: &'a Path,
}

impl Layout<'_> {
    pub(super) fn error(&self, path: &Path, reason: String) -> ImageError {
        ImageError::Layout {
            reference: self.reference.to_owned(),
            path: path.to_owned(),
            reason,
        }
    }

    pub(super) fn io_error(&self, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
        let (reference, path) = (self.reference.to_owned(), path.to_owned());
        move |source| ImageError::Io {
            reference,
            path,
            source,
        }
    }

    /// The path of a blob, for sha256 digests only (so a digest can never name a path
    /// outside `blobs/sha256`).
    pub(super) fn blob_path(&self, desc: &Descriptor) -> Result<PathBuf, ImageError> {
        let digest = desc.digest();
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(self.error(
                self.dir,
                format!("digest {digest}: only sha256 is supported"),
            ));
        }
        // oci-spec checked: 64 lowercase hex digits.
        Ok(self.dir.join("blobs/sha256").join(digest.digest()))
    }

    /// Reads a JSON document; a blob (`desc` given) is checked against its size and digest.
    pub(super) fn read_json<T: DeserializeOwned>(
        &self,
        path: &Path,
        desc: Option<&Descriptor>,
    ) -> Result<T, ImageError> {
        let file = File::open(path).map_err(self.io_error(path))?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(self.io_error(path))?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(self.error(path, format!("larger than {MAX_JSON} bytes")));
        }
        if let Some(desc) = desc {
            self.check_size(desc, path, bytes.len() as u64)?;
            self.check_digest(desc, path, &format!("{:x}", Sha256::digest(&bytes)))?;
        }
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            reference: self.reference.to_owned(),
            path: path.to_owned(),
            source,
        })
    }

    pub(super) fn check_size(
        &self,
        desc: &Descriptor,
        path: &Path,
        actual: u64,
    ) -> Result<(), ImageError> {
        if actual == desc.size() {
            return Ok(());
        }
        Err(ImageError::Size {
            reference: self.reference.to_owned(),
            path: path.to_owned(),
            digest: desc.digest().to_string(),
            expected: desc.size(),
            actual,
        })
    }

    pub(super) fn check_digest(
        &self,
        desc: &Descriptor,
        path: &Path,
        actual: &str,
    ) -> Result<(), ImageError> {
        if actual == desc.digest().digest() {
            return Ok(());
        }
        Err(ImageError::Digest {
            reference: self.reference.to_owned(),
            path: path.to_owned(),
            expected: desc.digest().to_string(),
            actual: actual.to_owned(),
        })
    }

    /// Checks a blob file against its descriptor's size and digest (streaming it once).
    pub(super) fn verify_file(&self, desc: &Descriptor, path: &Path) -> Result<(), ImageError> {
        let mut file = File::open(path).map_err(self.io_error(path))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut file, &mut hasher).map_err(self.io_error(path))?;
        self.check_size(desc, path, size)?;
        self.check_digest(desc, path, &format!("{:x}", hasher.finalize()))
    }
}
