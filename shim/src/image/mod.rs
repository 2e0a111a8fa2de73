//! Container images from a local OCI image layout (the image-spec's directory form). Until
//! registry pulls land, a CRI image reference names such a layout: `/abs/path/to/layout` or
//! `/abs/path/to/layout:tag`.
//!
//! [`open_layout`] reads and verifies one image and unpacks its layers, once each, into a
//! content-addressed layer cache; [`mount_rootfs`] stacks those layers under a per-container
//! overlayfs. Every blob read is checked against its descriptor's sha256 digest and size.

mod blob;
mod entry;
mod layout;
mod reference;
mod rootfs;
mod unpack;

#[cfg(test)]
mod test_layout;

use std::path::PathBuf;

pub use layout::{open_layout, LocalImage};
pub use reference::{parse_reference, LayoutRef};
pub use rootfs::{mount_rootfs, unmount_rootfs};
pub use unpack::{unpack_layer, Compression, LayerError};

/// The defaults an image gives its containers (from the image config's `config` object).
pub use crate::oci::ImageDefaults;

/// Why an image could not be opened or its rootfs mounted. Messages name the image reference
/// and the file or digest at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("image {reference}: {path}: {source}")]
    Io {
        reference: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {reference}: parse {path}: {source}")]
    Json {
        reference: String,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("image {reference}: {path}: {reason}")]
    Layout {
        reference: String,
        path: PathBuf,
        reason: String,
    },
    #[error("image {reference}: blob {path} does not match its digest {expected} (it hashes to sha256:{actual})")]
    Digest {
        reference: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("image {reference}: blob {path} ({digest}) is {actual} bytes, its descriptor says {expected}")]
    Size {
        reference: String,
        path: PathBuf,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("image {reference}: layer {digest}: {source}")]
    Layer {
        reference: String,
        digest: String,
        source: LayerError,
    },
    #[error("mount overlay rootfs at {target}: {reason}")]
    MountOptions { target: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    MountIo {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mount overlay rootfs at {target}: {source}")]
    Mount { target: PathBuf, source: nix::Error },
    #[error("unmount rootfs {target}: {source}")]
    Unmount { target: PathBuf, source: nix::Error },
}

/// Whether this process may mount, mknod and set trusted xattrs (for tests that need root).
#[cfg(test)]
pub(crate) fn is_root(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        println!("SKIPPED {test}: needs root");
    }
    root
}
