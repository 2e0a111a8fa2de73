//! The content store: blobs by digest under `<dir>/blobs/sha256/<hex>`. A download is written
//! to `<dir>/ingest/` while it is hashed and is renamed into place only once its size and
//! sha256 digest match its descriptor, so a blob under its final name is always whole and
//! verified. An interrupted download leaves at most an ingest file, cleared at the next open.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::ImageError;

/// Largest JSON document (index, manifest, config) read into memory.
pub const MAX_JSON: u64 = 16 << 20;

/// The blobs of every pulled image.
#[derive(Debug)]
pub struct ContentStore {
    dir: PathBuf,
}

/// The hex part of a `sha256:<64 lowercase hex>` digest; any other form is an error (so a
/// digest can never name a path outside the store).
pub fn sha256_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ImageError::Blob {
            digest: digest.to_owned(),
            reason: "only sha256 digests are supported".into(),
        })?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ImageError::Blob {
            digest: digest.to_owned(),
            reason: "not a sha256 digest (64 lowercase hex digits)".into(),
        });
    }
    Ok(hex)
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

impl ContentStore {
    /// Opens (creating) the store at `dir` and clears unfinished downloads.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(ImageError::io(&blobs))?;
        let ingest = dir.join("ingest");
        if ingest.exists() {
            fs::remove_dir_all(&ingest).map_err(ImageError::io(&ingest))?;
        }
        fs::create_dir_all(&ingest).map_err(ImageError::io(&ingest))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob of `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("blobs/sha256").join(sha256_hex(digest)?))
    }

    /// Whether the blob is present with the expected size.
    pub fn contains(&self, digest: &str, size: u64) -> bool {
        self.path(digest)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Stores `bytes` as the blob `digest` after checking both.
    pub fn put(&self, digest: &str, size: u64, bytes: &[u8]) -> Result<PathBuf, ImageError> {
        verify(digest, size, bytes.len() as u64, &digest_of(bytes))?;
        let dest = self.path(digest)?;
        let tmp = self.ingest_path(digest)?;
        fs::write(&tmp, bytes).map_err(ImageError::io(&tmp))?;
        fs::rename(&tmp, &dest).map_err(ImageError::io(&dest))?;
        Ok(dest)
    }

    /// Reads a stored JSON document (at most [`MAX_JSON`] bytes).
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest)?;
        let len = fs::metadata(&path).map_err(ImageError::io(&path))?.len();
        if len > MAX_JSON {
            return Err(ImageError::Blob {
                digest: digest.to_owned(),
                reason: format!("{len} bytes, larger than the {MAX_JSON} allowed for JSON"),
            });
        }
        fs::read(&path).map_err(ImageError::io(&path))
    }

    /// Starts writing the blob `digest` of `size` bytes.
    pub fn writer(&self, digest: &str, size: u64) -> Result<BlobWriter, ImageError> {
        let dest = self.path(digest)?;
        let tmp = self.ingest_path(digest)?;
        // Created synchronously (one quick syscall): an async create could finish after a
        // cancelled pull dropped this future, leaving a file nobody owns.
        let file = std::fs::File::create(&tmp).map_err(ImageError::io(&tmp))?;
        let file = tokio::fs::File::from_std(file);
        Ok(BlobWriter {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            written: 0,
            digest: digest.to_owned(),
            size,
            tmp: Some(tmp),
            dest,
        })
    }

    /// Digests of every stored blob.
    pub fn digests(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.dir.join("blobs/sha256");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
            let entry = entry.map_err(ImageError::io(&dir))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            // Anything else there is not ours to judge or delete.
            if sha256_hex(&digest).is_ok() {
                out.push(digest);
            }
        }
        Ok(out)
    }

    /// Deletes a blob; a missing one is fine.
    pub fn remove(&self, digest: &str) -> Result<(), ImageError> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::io(&path)(e)),
            _ => Ok(()),
        }
    }

    fn ingest_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{}",
            sha256_hex(digest)?,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Ok(self.dir.join("ingest").join(name))
    }
}

fn verify(digest: &str, size: u64, actual_size: u64, actual: &str) -> Result<(), ImageError> {
    if actual_size != size {
        return Err(ImageError::Size {
            digest: digest.to_owned(),
            expected: size,
            actual: actual_size,
        });
    }
    if actual != digest {
        return Err(ImageError::Digest {
            digest: digest.to_owned(),
            actual: actual.to_owned(),
        });
    }
    Ok(())
}

/// A blob being downloaded: hashed as it is written, committed under its digest only if it
/// matches. Dropped unfinished, it deletes its ingest file.
pub struct BlobWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
    digest: String,
    size: u64,
    tmp: Option<PathBuf>,
    dest: PathBuf,
}

impl BlobWriter {
    /// Appends a chunk; more bytes than the descriptor's size is an error at once.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(ImageError::Size {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        let tmp = self.tmp.as_deref().unwrap_or(&self.dest);
        self.file
            .write_all(chunk)
            .await
            .map_err(ImageError::io(tmp))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies size and digest, then renames the blob into place; returns its path.
    pub async fn commit(mut self) -> Result<PathBuf, ImageError> {
        let tmp = self.tmp.clone().unwrap_or_default();
        self.file.flush().await.map_err(ImageError::io(&tmp))?;
        let actual = format!("sha256:{:x}", self.hasher.clone().finalize());
        verify(&self.digest, self.size, self.written, &actual)?;
        tokio::fs::rename(&tmp, &self.dest)
            .await
            .map_err(ImageError::io(&self.dest))?;
        self.tmp = None;
        Ok(self.dest.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_matching_blobs_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data = b"hello blob";
        let digest = digest_of(data);

        // Right bytes: committed.
        let mut w = store.writer(&digest, data.len() as u64).unwrap();
        w.write(&data[..4]).await.unwrap();
        w.write(&data[4..]).await.unwrap();
        let path = w.commit().await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(store.contains(&digest, data.len() as u64));
        assert!(!store.contains(&digest, 3));

        // Same size, other bytes: a digest error naming both hashes; nothing left behind.
        let other = digest_of(b"another!!!");
        let mut w = store.writer(&other, data.len() as u64).unwrap();
        w.write(data).await.unwrap();
        let err = w.commit().await.unwrap_err();
        assert!(matches!(err, ImageError::Digest { .. }), "{err}");
        assert!(err.to_string().contains(&other) && err.to_string().contains(&digest));
        assert!(!store.path(&other).unwrap().exists());

        // Too many bytes fail at the write; too few at the commit.
        let mut w = store.writer(&digest, 3).unwrap();
        assert!(matches!(
            w.write(data).await.unwrap_err(),
            ImageError::Size { .. }
        ));
        drop(w);
        let w = store.writer(&digest, 99).unwrap();
        assert!(matches!(
            w.commit().await.unwrap_err(),
            ImageError::Size { .. }
        ));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);

        assert_eq!(store.digests().unwrap(), vec![digest.clone()]);
        store.remove(&digest).unwrap();
        store.remove(&digest).unwrap();
        assert!(store.digests().unwrap().is_empty());
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        for bad in [
            "sha512:00",
            "sha256:../../etc/passwd",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
        ] {
            assert!(store.path(bad).is_err(), "{bad}");
        }
        let d = digest_of(b"x");
        assert!(store.put(&d, 2, b"x").is_err());
        store.put(&d, 1, b"x").unwrap();
        assert_eq!(store.read(&d).unwrap(), b"x");
    }
}
