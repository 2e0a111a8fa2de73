//! Unpacking one layer blob (tar, tar+gzip or tar+zstd) into the layer cache, in the form
//! overlayfs reads as a lower layer.
//!
//! A layer is unpacked into a temporary sibling directory and renamed into place, so a crash
//! never leaves a half layer under its final name (a stale `.tmp-*` sibling may remain). OCI
//! whiteouts become overlayfs whiteouts: `.wh.<name>` a 0/0 character device `<name>`,
//! `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory. Entries that would
//! land outside the layer (absolute paths, `..`, a path through a symlink, a hard link to
//! something not in this layer) are rejected. Permissions, numeric ownership, mtimes,
//! symlinks, hard links and device nodes are kept; xattrs are set best effort.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::MediaType;
use sha2::{Digest as _, Sha256};

use super::entry::unpack_entry;
use super::LayerError;

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type (OCI or Docker schema 2); `None` when the media
    /// type is not a layer this module can unpack.
    pub fn from_media_type(media_type: &MediaType) -> Option<Self> {
        match media_type {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Self::None),
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Some(Self::Gzip)
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                Some(Self::Zstd)
            }
            MediaType::Other(t) => match t.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
                "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Unpacks the layer `blob` into `dest` unless `dest` already exists; returns whether it
/// unpacked. `diff_id` (`sha256:<hex>`, from the image config), when given, is checked
/// against the uncompressed stream before the layer is renamed into place. The blob's own
/// digest is the caller's to verify.
pub fn unpack_layer(
    blob: &Path,
    compression: Compression,
    diff_id: Option<&str>,
    dest: &Path,
) -> Result<bool, LayerError> {
    if dest.exists() {
        return Ok(false);
    }
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LayerError::Io { path, source }
    };
    let tmp = TempDir::create(dest).map_err(io_err(dest))?;
    let file = File::open(blob).map_err(io_err(blob))?;
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(BufReader::new(file)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(io_err(blob))?)
        }
    };
    let mut archive = tar::Archive::new(HashingReader::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false); // set by `set_xattrs`, best effort and on every kind
    archive.set_mask(0);
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        unpack_entry(&tmp.path, &mut entry)?;
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(LayerError::Read)?;
    if let Some(expected) = diff_id {
        let actual = rest.hex_digest();
        if expected.strip_prefix("sha256:") != Some(actual.as_str()) {
            return Err(LayerError::DiffId {
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    tmp.commit(dest).map(|_| true).map_err(io_err(dest))
}

/// A reader that hashes (sha256) what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn hex_digest(self) -> String {
        format!("{:x}", self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A sibling of a layer's final directory, removed on drop unless committed.
struct TempDir {
    path: PathBuf,
    committed: bool,
}

impl TempDir {
    fn create(dest: &Path) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let parent = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent)?;
        let name = format!(
            ".tmp-{}-{}-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent.join(name);
        fs::DirBuilder::new().mode(0o755).create(&path)?;
        Ok(Self {
            path,
            committed: false,
        })
    }

    /// Renames the directory to `dest`; if another unpack got there first, keeps theirs.
    fn commit(mut self, dest: &Path) -> io::Result<()> {
        match fs::rename(&self.path, dest) {
            Ok(()) => {
                self.committed = true;
                Ok(())
            }
            Err(_) if dest.is_dir() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_layer::{tar_layer, TarEntry};

    #[test]
    fn diff_id_mismatch_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(
            &blob,
            tar_layer(&[TarEntry::file("a", b"x", 0o644)], Compression::Gzip),
        )
        .unwrap();
        let dest = dir.path().join("layer");
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = unpack_layer(&blob, Compression::Gzip, Some(&wrong), &dest).unwrap_err();
        assert!(matches!(err, LayerError::DiffId { .. }), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn unpack_is_skipped_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let unpacked =
            unpack_layer(&dir.path().join("no-blob"), Compression::None, None, &dest).unwrap();
        assert!(!unpacked);
    }
}
