//! Container images: pulled from OCI distribution registries, kept in a content store and an
//! image index, unpacked once per layer chain, and stacked under each container as an
//! overlayfs rootfs.
//!
//! - [`name`]: normalising image names (`busybox` → `docker.io/library/busybox:latest`).
//! - [`registry`]: endpoints (mirrors, plain http), credentials and fetching.
//! - [`content`]: blobs by digest, verified before they get their final name.
//! - [`manifest`]: indexes, manifests and configs; platform choice; chain ids.
//! - [`store`] and [`pull`]: the images this host has, pulling, removing, collecting garbage.
//! - [`unpack`] (with `entry`): layer tarballs into overlayfs lower dirs, hostile entries refused.
//! - [`rootfs`]: the per-container overlayfs mount.

pub mod content;
mod entry;
mod keyed;
mod lease;
pub mod manifest;
pub mod name;
mod pull;
pub mod registry;
mod rootfs;
pub mod store;
mod unpack;

#[cfg(test)]
mod test_layer;

use std::path::PathBuf;

pub use lease::LayerLease;
pub use name::ImageName;
pub use registry::{Credentials, PullAuth, RegistryConfig};
pub use rootfs::{mount_rootfs, unmount_rootfs};
pub use store::{ImageRecord, ImageStore};
pub use unpack::{unpack_layer, Compression};

/// The defaults an image gives its containers (from the image config's `config` object).
pub use crate::oci::ImageDefaults;

/// Why a layer could not be unpacked. Messages name the tar entry or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read tar stream: {0}")]
    Read(std::io::Error),
    #[error("entry {entry:?}: {reason}")]
    Rejected { entry: PathBuf, reason: String },
    #[error("entry {entry:?}: {source}")]
    Entry {
        entry: PathBuf,
        source: std::io::Error,
    },
    #[error("uncompressed content hashes to sha256:{actual}, the config's diff_id is {expected}")]
    DiffId { expected: String, actual: String },
}

/// Why an image could not be pulled, found, removed or mounted. Messages name the image, the
/// digest, the registry endpoint or the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob {digest}: {reason}")]
    Blob { digest: String, reason: String },
    #[error("blob {digest} does not match its digest: its content hashes to {actual}")]
    Digest { digest: String, actual: String },
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    Size {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} {digest}: {reason}")]
    Manifest {
        what: &'static str,
        digest: String,
        reason: String,
    },
    #[error("layer {digest}: {source}")]
    Layer { digest: String, source: LayerError },
    #[error("pull {reference}: not authorized ({detail})")]
    Unauthorized { reference: String, detail: String },
    #[error("pull {reference}: {what} not found in any registry endpoint ({detail})")]
    NotInRegistry {
        reference: String,
        what: String,
        detail: String,
    },
    #[error("pull {reference}: {what}: every registry endpoint failed ({detail})")]
    Registry {
        reference: String,
        what: String,
        detail: String,
    },
    #[error("image store: {0}")]
    Store(#[from] crate::metadata::StoreError),
    #[error("{0}")]
    Task(String),
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

impl ImageError {
    /// An I/O error on `path`, for `map_err`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Whether this process may mount, mknod and set trusted xattrs (for tests that need root).
#[cfg(test)]
pub(crate) fn is_root(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        use std::io::Write as _;
        // On the real stderr: the harness hides println! of passing tests.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs root");
    }
    root
}
