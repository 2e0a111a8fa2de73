//! The images this host has: one record per image (keyed by its id, the config digest) with
//! its repo tags and repo digests, kept in the daemon's database and in memory; lookup by id,
//! id prefix, tag or digest as containerd resolves them; removal; and garbage collection of
//! blobs and unpacked layers no image (and no container) uses any more.
//!
//! Layout under the image root: `content/` (the [`ContentStore`]) and `layers/<chain-id hex>/`
//! (one unpacked layer per chain id, an overlayfs lower dir).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::content::{sha256_hex, ContentStore};
use super::keyed::KeyedLocks;
use super::lease::{LayerLease, Leases};
use super::name::ImageName;
use super::registry::RegistryConfig;
use super::{ImageDefaults, ImageError};
use crate::metadata::{Kind, Store};

/// Shortest image id prefix accepted as a reference.
const MIN_ID_PREFIX: usize = 12;

/// One image, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest, `sha256:<hex>`.
    pub id: String,
    /// `registry/repository:tag`, normalised.
    pub repo_tags: Vec<String>,
    /// `registry/repository@digest` of what each pull resolved (the index or manifest).
    pub repo_digests: Vec<String>,
    /// The image manifest for this platform.
    pub manifest_digest: String,
    /// Every blob of the image: indexes, manifest, config, layers.
    pub blobs: Vec<String>,
    /// Chain ids of the layers, lowest first.
    pub chain_ids: Vec<String>,
    /// Bytes of content: manifest, config and (compressed) layers.
    pub size: u64,
    pub defaults: ImageDefaults,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub blobs: usize,
    pub layers: usize,
}

/// Every image of this host.
pub struct ImageStore {
    pub(super) content: ContentStore,
    pub(super) root: PathBuf,
    pub(super) registry: RegistryConfig,
    db: Arc<Store>,
    images: Mutex<BTreeMap<String, ImageRecord>>,
    /// Pulls hold it shared (their unpack tasks too, which outlive a cancelled pull), garbage
    /// collection exclusively, so a collection never deletes what a pull has fetched or is
    /// unpacking but not yet recorded.
    pub(super) gc: Arc<tokio::sync::RwLock<()>>,
    /// Per blob digest and per chain id, so concurrent pulls fetch and unpack each once.
    pub(super) inflight: KeyedLocks,
    /// Layer dirs under containers' rootfs.
    leases: Leases,
}

impl ImageStore {
    /// Opens the store under `root`, loading image records from `db`; clears unfinished
    /// downloads and unpacks.
    pub fn open(root: &Path, db: Arc<Store>, registry: RegistryConfig) -> Result<Self, ImageError> {
        let content = ContentStore::open(&root.join("content"))?;
        let layers = root.join("layers");
        fs::create_dir_all(&layers).map_err(ImageError::io(&layers))?;
        for entry in fs::read_dir(&layers).map_err(ImageError::io(&layers))? {
            let entry = entry.map_err(ImageError::io(&layers))?;
            if is_temporary(&entry.path()) {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(ImageError::io(&path))?;
            }
        }
        let images = db
            .all::<ImageRecord>(Kind::Image)?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        Ok(Self {
            content,
            root: root.to_owned(),
            registry,
            db,
            images: Mutex::new(images),
            gc: Arc::default(),
            inflight: KeyedLocks::default(),
            leases: Leases::default(),
        })
    }

    /// The directory holding blobs and layers (ImageFsInfo's mountpoint).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unpacked layer directory of a chain id.
    pub fn layer_dir(&self, chain_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("layers").join(sha256_hex(chain_id)?))
    }

    /// The overlayfs lower dirs of an image, lowest first.
    pub fn layer_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        image.chain_ids.iter().map(|c| self.layer_dir(c)).collect()
    }

    /// Every image.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.images.lock().values().cloned().collect()
    }

    /// The image a reference names: its id (`sha256:<hex>`, `<hex>`, or a unique id prefix of
    /// at least 12 hex digits), a repo digest, or a repo tag (names normalised).
    pub fn resolve(&self, reference: &str) -> Option<ImageRecord> {
        resolve_in(&self.images.lock(), reference).cloned()
    }

    /// The images a ListImages filter names: with a tag, a digest or an id, the one image
    /// [`ImageStore::resolve`] finds; a bare repository (`busybox`) matches each of its tags
    /// and digests, as crictl users expect.
    pub fn matching(&self, filter: &str) -> Vec<ImageRecord> {
        let images = self.images.lock();
        let last = filter.rsplit('/').next().unwrap_or(filter);
        let exact = || resolve_in(&images, filter).cloned().into_iter().collect();
        if filter.contains('@') || last.contains(':') {
            return exact();
        }
        let Ok(repo) = ImageName::parse(filter).map(|n| n.repo()) else {
            return exact();
        };
        let by_repo: Vec<ImageRecord> = images
            .values()
            .filter(|r| {
                r.repo_tags
                    .iter()
                    .chain(&r.repo_digests)
                    .any(|t| repo_of(t) == repo)
            })
            .cloned()
            .collect();
        if by_repo.is_empty() {
            exact() // an id or id prefix
        } else {
            by_repo
        }
    }

    /// Like [`ImageStore::resolve`], and leases the image's layer dirs in the same step, so
    /// no removal and collection can come between.
    pub fn resolve_and_lease(
        &self,
        reference: &str,
    ) -> Result<Option<(ImageRecord, LayerLease)>, ImageError> {
        let images = self.images.lock();
        let Some(image) = resolve_in(&images, reference) else {
            return Ok(None);
        };
        let lease = self.leases.take(self.layer_dirs(image)?);
        Ok(Some((image.clone(), lease)))
    }

    /// Leases layer dirs a restored container's rootfs uses.
    pub fn lease(&self, dirs: Vec<PathBuf>) -> LayerLease {
        self.leases.take(dirs)
    }

    /// Records a pulled image under `tag` and `repo_digest`: a tag moves here from any other
    /// image (an image left with no tag and no digest is dropped); records of one id merge.
    /// Every change is one transaction, and memory follows only once it committed.
    pub(super) fn record(
        &self,
        mut image: ImageRecord,
        tag: Option<String>,
        repo_digest: String,
    ) -> Result<ImageRecord, ImageError> {
        let mut images = self.images.lock();
        let mut changed = Vec::new();
        let mut dropped = Vec::new();
        if let Some(tag) = &tag {
            for other in images.values().filter(|r| r.id != image.id) {
                if let Some(i) = other.repo_tags.iter().position(|t| t == tag) {
                    let mut other = other.clone();
                    other.repo_tags.remove(i);
                    if other.repo_tags.is_empty() && other.repo_digests.is_empty() {
                        dropped.push(other.id);
                    } else {
                        changed.push(other);
                    }
                }
            }
        }
        if let Some(existing) = images.get(&image.id) {
            let mut tags = existing.repo_tags.clone();
            let mut digests = existing.repo_digests.clone();
            tags.extend(tag);
            digests.push(repo_digest);
            image.repo_tags = dedup(tags);
            image.repo_digests = dedup(digests);
            image.blobs = dedup(existing.blobs.iter().cloned().chain(image.blobs).collect());
        } else {
            image.repo_tags = tag.into_iter().collect();
            image.repo_digests = vec![repo_digest];
        }
        changed.push(image.clone());
        let puts: Vec<(&str, &ImageRecord)> = changed.iter().map(|r| (r.id.as_str(), r)).collect();
        let deletes: Vec<&str> = dropped.iter().map(String::as_str).collect();
        self.db.apply(Kind::Image, &puts, &deletes)?;
        for id in &dropped {
            images.remove(id);
        }
        for r in changed {
            images.insert(r.id.clone(), r);
        }
        Ok(image)
    }

    /// Removes what `reference` names: a tag is untagged (the image goes when its last tag
    /// does); an id or digest removes the whole image. Returns whether anything changed.
    pub fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        let mut images = self.images.lock();
        let Some(mut image) = resolve_in(&images, reference).cloned() else {
            return Ok(false);
        };
        let tag = ImageName::parse(reference)
            .ok()
            .filter(|n| n.digest().is_none())
            .map(|n| n.canonical())
            .filter(|t| image.repo_tags.contains(t));
        if let Some(tag) = tag {
            image.repo_tags.retain(|t| *t != tag);
            if !image.repo_tags.is_empty() {
                // The repository's digests go with its last tag; other repositories' stay.
                if !image.repo_tags.iter().any(|t| same_repo(t, &tag)) {
                    image.repo_digests.retain(|d| !digest_of_repo(d, &tag));
                }
                self.db.put(Kind::Image, &image.id, &image)?;
                images.insert(image.id.clone(), image);
                return Ok(true);
            }
        }
        self.db.delete(&[(Kind::Image, &image.id)])?;
        images.remove(&image.id);
        Ok(true)
    }

    /// Deletes blobs no image lists and layers no image needs and no container leases.
    /// Waits for running pulls (and their unpacks) to finish first.
    pub async fn collect_garbage(&self) -> Result<Collected, ImageError> {
        let exclusive = self.gc.clone().write_owned().await;
        let (blobs, mut layers) = {
            let images = self.images.lock();
            let blobs: HashSet<String> = images.values().flat_map(|r| r.blobs.clone()).collect();
            let mut layers = HashSet::new();
            for r in images.values() {
                layers.extend(self.layer_dirs(r)?);
            }
            (blobs, layers)
        };
        layers.extend(self.leases.leased());
        let garbage_blobs: Vec<PathBuf> = self
            .content
            .digests()?
            .into_iter()
            .filter(|d| !blobs.contains(d))
            .map(|d| self.content.path(&d))
            .collect::<Result<_, _>>()?;
        let dir = self.root.join("layers");
        let mut garbage_layers = Vec::new();
        for entry in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
            let path = entry.map_err(ImageError::io(&dir))?.path();
            if !layers.contains(&path) && !is_temporary(&path) {
                garbage_layers.push(path);
            }
        }
        let collected = Collected {
            blobs: garbage_blobs.len(),
            layers: garbage_layers.len(),
        };
        // Deleting a layer tree is many syscalls: off the async workers, still exclusive.
        tokio::task::spawn_blocking(move || {
            let _exclusive = exclusive;
            for blob in &garbage_blobs {
                fs::remove_file(blob).map_err(ImageError::io(blob))?;
            }
            for layer in &garbage_layers {
                fs::remove_dir_all(layer).map_err(ImageError::io(layer))?;
            }
            Ok::<_, ImageError>(())
        })
        .await
        .map_err(|e| ImageError::Task(format!("garbage collection: {e}")))??;
        if collected != Collected::default() {
            tracing::info!(
                blobs = collected.blobs,
                layers = collected.layers,
                "image garbage collected"
            );
        }
        Ok(collected)
    }

    /// The image config as stored (for verbose ImageStatus).
    pub fn config_json(&self, image: &ImageRecord) -> Result<serde_json::Value, ImageError> {
        let bytes = self.content.read(&image.id)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Blob {
            digest: image.id.clone(),
            reason: format!("config is not JSON: {e}"),
        })
    }
}

/// An unpack in progress (or one a crash interrupted): `layers/.tmp-*`.
fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
}

/// See [`ImageStore::resolve`].
fn resolve_in<'a>(
    images: &'a BTreeMap<String, ImageRecord>,
    reference: &str,
) -> Option<&'a ImageRecord> {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() >= MIN_ID_PREFIX && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut matches = images.values().filter(|r| {
            r.id.strip_prefix("sha256:")
                .is_some_and(|h| h.starts_with(hex))
        });
        if let (Some(one), None) = (matches.next(), matches.next()) {
            return Some(one);
        }
    }
    let canonical = ImageName::parse(reference).ok()?.canonical();
    images
        .values()
        .find(|r| r.repo_tags.contains(&canonical) || r.repo_digests.contains(&canonical))
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

/// The repository of a repo tag (`repo:tag`) or repo digest (`repo@digest`).
fn repo_of(reference: &str) -> &str {
    match reference.split_once('@') {
        Some((repo, _)) => repo,
        None => reference
            .rsplit_once(':')
            .map_or(reference, |(repo, _)| repo),
    }
}

/// Whether two repo tags name one repository.
fn same_repo(a: &str, b: &str) -> bool {
    repo_of(a) == repo_of(b)
}

/// Whether a repo digest belongs to the repository of a repo tag.
fn digest_of_repo(digest: &str, tag: &str) -> bool {
    digest.contains('@') && repo_of(digest) == repo_of(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: char, tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{}", id.to_string().repeat(64)),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest: String::new(),
            blobs: vec![format!("sha256:{}", id.to_string().repeat(64))],
            chain_ids: Vec::new(),
            size: 1,
            defaults: ImageDefaults::default(),
        }
        .with_tags(tags)
    }

    impl ImageRecord {
        fn with_tags(mut self, tags: &[&str]) -> Self {
            self.repo_tags = tags.iter().map(|t| t.to_string()).collect();
            self
        }
    }

    fn open(dir: &Path) -> ImageStore {
        let db = Arc::new(Store::open(&dir.join("db")).unwrap());
        ImageStore::open(&dir.join("images"), db, RegistryConfig::default()).unwrap()
    }

    #[test]
    fn tags_move_merge_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let busybox = "docker.io/library/busybox:latest".to_string();
        let digest_a = format!("docker.io/library/busybox@sha256:{}", "1".repeat(64));
        let a = store
            .record(record('a', &[]), Some(busybox.clone()), digest_a.clone())
            .unwrap();
        assert_eq!(a.repo_tags, std::slice::from_ref(&busybox));
        assert_eq!(store.resolve("busybox").unwrap().id, a.id);
        assert_eq!(store.resolve(&digest_a).unwrap().id, a.id);
        assert_eq!(store.resolve(&a.id).unwrap().id, a.id);
        assert_eq!(store.resolve(&"a".repeat(12)).unwrap().id, a.id);
        assert!(store.resolve(&"a".repeat(11)).is_none());

        // A second tag merges; the tag moving to b leaves a with its other tag.
        store
            .record(
                record('a', &[]),
                Some("docker.io/library/busybox:1".into()),
                digest_a.clone(),
            )
            .unwrap();
        let b = store
            .record(
                record('b', &[]),
                Some(busybox.clone()),
                "docker.io/library/busybox@sha256:2".into(),
            )
            .unwrap();
        assert_eq!(store.resolve("busybox:latest").unwrap().id, b.id);
        let a = store.resolve("busybox:1").unwrap();
        assert_eq!(a.repo_tags, ["docker.io/library/busybox:1"]);
        assert_eq!(a.repo_digests, std::slice::from_ref(&digest_a));

        // Records survive a reopen.
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.list().len(), 2);

        // Removing a tag keeps the image while another tag is left.
        store
            .record(
                record('b', &[]),
                Some("docker.io/library/other:x".into()),
                "docker.io/library/other@sha256:3".into(),
            )
            .unwrap();
        assert!(store.remove("busybox:latest").unwrap());
        let b = store.resolve(&b.id).unwrap();
        assert_eq!(b.repo_tags, ["docker.io/library/other:x"]);
        assert_eq!(b.repo_digests, ["docker.io/library/other@sha256:3"]);
        assert!(store.remove("other:x").unwrap());
        assert!(store.resolve(&b.id).is_none());
        // By digest: the whole image.
        assert!(store.remove(&digest_a).unwrap());
        assert!(store.list().is_empty());
        assert!(!store.remove("busybox:1").unwrap());
    }

    #[test]
    fn removing_a_tag_keeps_other_repositories_digests_and_filters_match_repos() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a1 = "docker.io/library/a:1".to_string();
        store
            .record(
                record('a', &[]),
                Some(a1.clone()),
                "docker.io/library/a@sha256:1".into(),
            )
            .unwrap();
        store
            .record(
                record('a', &[]),
                Some("docker.io/library/b:1".into()),
                "docker.io/library/b@sha256:1".into(),
            )
            .unwrap();
        store
            .record(
                record('a', &[]),
                None,
                "docker.io/library/c@sha256:1".into(),
            )
            .unwrap();
        store
            .record(
                record('b', &[]),
                Some("docker.io/library/a:2".into()),
                "docker.io/library/a@sha256:2".into(),
            )
            .unwrap();
        assert_eq!(store.matching("a").len(), 2);
        assert_eq!(store.matching("a:2").len(), 1);
        assert_eq!(store.matching("c").len(), 1);
        assert!(store.matching("a:3").is_empty());
        assert_eq!(store.matching(&"a".repeat(12)).len(), 1);
        assert!(store.remove("a:1").unwrap());
        let image = store.resolve("b:1").unwrap();
        assert_eq!(
            image.repo_digests,
            [
                "docker.io/library/b@sha256:1",
                "docker.io/library/c@sha256:1"
            ]
        );
    }

    #[tokio::test]
    async fn garbage_is_what_no_image_or_container_uses() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let kept = b"kept";
        let gone = b"gone";
        let kept_d = crate::image::content::digest_of(kept);
        let gone_d = crate::image::content::digest_of(gone);
        store.content.put(&kept_d, 4, kept).unwrap();
        store.content.put(&gone_d, 4, gone).unwrap();
        let mut image = record('a', &[]);
        image.blobs = vec![kept_d.clone()];
        image.chain_ids = vec![format!("sha256:{}", "c".repeat(64))];
        store
            .record(
                image.clone(),
                Some("docker.io/x/y:1".into()),
                "docker.io/x/y@sha256:1".into(),
            )
            .unwrap();
        let layer = store.layer_dir(&image.chain_ids[0]).unwrap();
        let pinned = store
            .layer_dir(&format!("sha256:{}", "d".repeat(64)))
            .unwrap();
        let orphan = store
            .layer_dir(&format!("sha256:{}", "e".repeat(64)))
            .unwrap();
        for d in [&layer, &pinned, &orphan] {
            fs::create_dir_all(d.join("etc")).unwrap();
        }
        let lease = store.lease(vec![pinned.clone()]);
        // An unpack in progress is not garbage either.
        let unpacking = store.root().join("layers/.tmp-x-1-1");
        fs::create_dir_all(&unpacking).unwrap();
        let collected = store.collect_garbage().await.unwrap();
        assert_eq!(
            collected,
            Collected {
                blobs: 1,
                layers: 1
            }
        );
        assert!(layer.exists() && pinned.exists() && !orphan.exists());
        assert!(store.content.contains(&kept_d, 4) && !store.content.contains(&gone_d, 4));

        assert!(unpacking.exists());
        // A stray file among the blobs is neither a blob nor a reason to fail.
        fs::write(store.content.dir().join("blobs/sha256/stray"), b"?").unwrap();
        store.remove("x/y:1").unwrap();
        drop(lease);
        let collected = store.collect_garbage().await.unwrap();
        assert_eq!(
            collected,
            Collected {
                blobs: 1,
                layers: 2
            }
        );
    }
}
