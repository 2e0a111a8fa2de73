//! Pulling an image: resolve the name at its registry endpoints (following an index to this
//! platform), fetch and verify the manifest, config and layers into the content store (each
//! blob once, even when pulls run concurrently), unpack each layer once per chain id, and
//! only then record the image. An interrupted pull leaves nothing visible; a retry reuses
//! every blob and layer it had finished.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, ImageManifest};
use tokio::sync::OwnedRwLockReadGuard;

use super::content::MAX_JSON;
use super::manifest::{self, chain_ids, for_platform, parse_document, Document, MAX_NESTING};
use super::name::ImageName;
use super::registry::{Fetcher, PullAuth};
use super::store::{ImageRecord, ImageStore};
use super::unpack::unpack_layer;
use super::ImageError;

/// Layers fetched and unpacked at once.
const PARALLEL_LAYERS: usize = 3;

impl ImageStore {
    /// Pulls `reference` (normalised: `busybox` is `docker.io/library/busybox:latest`) and
    /// records it; returns the image.
    pub async fn pull(&self, reference: &str, auth: PullAuth) -> Result<ImageRecord, ImageError> {
        let name = ImageName::parse(reference)?;
        // Shared with every unpack task, which may outlive this future if the pull is
        // cancelled: collection waits for them all.
        let shared = Arc::new(self.gc.clone().read_owned().await);
        let fetcher = Fetcher::new(&self.registry, &name, auth);

        let (bytes, top_digest) = fetcher.manifest(None).await?;
        if let Some(want) = name.digest() {
            if top_digest != want {
                return Err(ImageError::Digest {
                    digest: want.to_owned(),
                    actual: top_digest,
                });
            }
        }
        self.content.put(&top_digest, bytes.len() as u64, &bytes)?;
        let mut blobs = vec![top_digest.clone()];
        let (manifest_digest, manifest, manifest_size) = self
            .resolve_platform(&fetcher, &top_digest, bytes, &mut blobs)
            .await?;

        let config_desc = manifest.config();
        let config_digest = config_desc.digest().to_string();
        check_json_size("image config", &config_digest, config_desc.size())?;
        self.fetch_blob(&fetcher, &config_digest, config_desc.size())
            .await?;
        let config_bytes = self.content.read(&config_digest)?;
        let config = manifest::parse_config(&config_digest, &config_bytes, &manifest)?;
        blobs.push(config_digest.clone());

        let diff_ids = config.rootfs().diff_ids();
        let chains = chain_ids(diff_ids);
        let layers = manifest.layers();
        let jobs: Vec<(Descriptor, String, String)> = layers
            .iter()
            .zip(diff_ids)
            .zip(&chains)
            .map(|((desc, diff_id), chain_id)| (desc.clone(), diff_id.clone(), chain_id.clone()))
            .collect();
        let fetcher = &fetcher;
        futures_util::stream::iter(jobs.into_iter().map(|(desc, diff_id, chain_id)| {
            let shared = shared.clone();
            async move {
                self.layer(fetcher, &desc, &diff_id, &chain_id, shared)
                    .await
            }
        }))
        .buffer_unordered(PARALLEL_LAYERS)
        .try_collect::<Vec<()>>()
        .await?;
        blobs.extend(layers.iter().map(|d| d.digest().to_string()));

        let size =
            manifest_size + config_desc.size() + layers.iter().map(|d| d.size()).sum::<u64>();
        let image = ImageRecord {
            id: config_digest,
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest,
            blobs,
            chain_ids: chains,
            size,
            defaults: manifest::defaults(&config),
        };
        let image = self.record(
            image,
            name.repo_tag(),
            format!("{}@{top_digest}", name.repo()),
        )?;
        tracing::info!(image = %name, id = %image.id, "image pulled");
        Ok(image)
    }

    /// Follows indexes from the document `digest` to this platform's image manifest; returns
    /// its digest, the manifest and its size. Every document is stored and listed in `blobs`.
    async fn resolve_platform(
        &self,
        fetcher: &Fetcher,
        digest: &str,
        bytes: Vec<u8>,
        blobs: &mut Vec<String>,
    ) -> Result<(String, ImageManifest, u64), ImageError> {
        let (mut digest, mut bytes) = (digest.to_owned(), bytes);
        for _ in 0..=MAX_NESTING {
            let index = match parse_document(&digest, &bytes)? {
                Document::Manifest(m) => return Ok((digest, *m, bytes.len() as u64)),
                Document::Index(index) => index,
            };
            let desc = for_platform(&index, &digest)?;
            let child = desc.digest().to_string();
            check_json_size("image manifest", &child, desc.size())?;
            let (child_bytes, _) = fetcher.manifest(Some(&child)).await?;
            self.content.put(&child, desc.size(), &child_bytes)?;
            blobs.push(child.clone());
            (digest, bytes) = (child, child_bytes);
        }
        Err(ImageError::Manifest {
            what: "image index",
            digest,
            reason: format!("indexes nested deeper than {MAX_NESTING}"),
        })
    }

    /// Fetches one layer blob and unpacks it under its chain id, unless already there.
    async fn layer(
        &self,
        fetcher: &Fetcher,
        desc: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        shared: Arc<OwnedRwLockReadGuard<()>>,
    ) -> Result<(), ImageError> {
        let digest = desc.digest().to_string();
        let compression = manifest::layer_compression(desc)?;
        let started = Instant::now();
        let blob = self.fetch_blob(fetcher, &digest, desc.size()).await?;
        let fetched = started.elapsed();
        let dest = self.layer_dir(chain_id)?;
        let unpacking = self.inflight.lock(chain_id).await;
        if dest.is_dir() {
            return Ok(());
        }
        let started = Instant::now();
        let (diff_id, layer) = (diff_id.to_owned(), digest.clone());
        tokio::task::spawn_blocking(move || {
            let _held = (shared, unpacking);
            unpack_layer(&blob, compression, Some(&diff_id), &dest)
        })
        .await
        .map_err(|e| ImageError::Task(format!("unpack layer {layer}: {e}")))?
        .map_err(|source| ImageError::Layer {
            digest: layer,
            source,
        })?;
        tracing::debug!(
            layer = %digest, bytes = desc.size(), fetch_ms = fetched.as_millis() as u64,
            unpack_ms = started.elapsed().as_millis() as u64, "layer ready"
        );
        Ok(())
    }

    /// The blob's path in the content store, downloading it first if it is not there.
    async fn fetch_blob(
        &self,
        fetcher: &Fetcher,
        digest: &str,
        size: u64,
    ) -> Result<PathBuf, ImageError> {
        let _fetching = self.inflight.lock(digest).await;
        if self.content.contains(digest, size) {
            return self.content.path(digest);
        }
        fetcher.blob(&self.content, digest, size).await
    }
}

/// A JSON document (manifest, config) larger than [`MAX_JSON`] is refused before it is
/// fetched.
fn check_json_size(what: &'static str, digest: &str, size: u64) -> Result<(), ImageError> {
    if size > MAX_JSON {
        return Err(ImageError::Manifest {
            what,
            digest: digest.to_owned(),
            reason: format!("{size} bytes, more than the {MAX_JSON} allowed"),
        });
    }
    Ok(())
}
