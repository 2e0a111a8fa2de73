//! Opening one image of a local OCI image layout: `oci-layout`, `index.json` (following a nested image index to this machine's platform), the manifest and
//! the config, each blob checked against its descriptor's sha256 digest and size; then the
//! layers, unpacked into the layer cache.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, OciLayout,
};

use super::blob::Layout;
use super::reference::parse_reference;
use super::unpack::{unpack_layer, Compression};
use super::{ImageDefaults, ImageError};

/// The annotation that tags a manifest in `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Deepest chain of nested image indexes followed.
const MAX_NESTING: usize = 4;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// An image opened from a local layout, its layers unpacked.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The reference it was opened by.
    pub reference: String,
    /// The config digest, `sha256:<hex>` (the image id CRI reports).
    pub id: String,
    pub manifest_digest: String,
    pub defaults: ImageDefaults,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    /// Bytes of content: manifest, config and (compressed) layer blobs.
    pub size: u64,
}

/// Opens the image `reference` names, verifies its blobs, and unpacks its layers into
/// `layer_cache/<digest-hex>/` (skipping layers already there; a cached layer's blob is not
/// hashed again, only its size checked).
pub fn open_layout(reference: &str, layer_cache: &Path) -> Result<LocalImage, ImageError> {
    let parsed = parse_reference(reference)?;
    let layout = Layout {
        reference,
        dir: &parsed.dir,
    };
    layout.check_version()?;
    let index_path = parsed.dir.join("index.json");
    let index: ImageIndex = layout.read_json(&index_path, None)?;
    let chosen = layout.choose(&index, parsed.tag.as_deref(), &index_path)?;
    let (manifest_desc, manifest) = layout.resolve_manifest(chosen)?;

    let config_desc = manifest.config();
    let config_path = layout.blob_path(config_desc)?;
    match config_desc.media_type() {
        MediaType::ImageConfig => {}
        MediaType::Other(t) if t == DOCKER_CONFIG => {}
        other => {
            return Err(layout.error(&config_path, format!("config media type {other} unknown")))
        }
    }
    let config: ImageConfiguration = layout.read_json(&config_path, Some(config_desc))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(layout.error(
            &config_path,
            format!(
                "config lists {} diff_ids, the manifest {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }

    let mut layers = Vec::new();
    let mut size = manifest_desc.size() + config_desc.size();
    for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
        layers.push(layout.unpack(desc, diff_id, layer_cache)?);
        size += desc.size();
    }
    Ok(LocalImage {
        reference: reference.to_owned(),
        id: config_desc.digest().to_string(),
        manifest_digest: manifest_desc.digest().to_string(),
        defaults: defaults(&config),
        layers,
        size,
    })
}

fn defaults(config: &ImageConfiguration) -> ImageDefaults {
    let Some(c) = config.config() else {
        return ImageDefaults::default();
    };
    ImageDefaults {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
    }
}

impl Layout<'_> {
    fn check_version(&self) -> Result<(), ImageError> {
        let path = self.dir.join("oci-layout");
        let header: OciLayout = self.read_json(&path, None)?;
        let version = header.image_layout_version();
        if !version.starts_with("1.") {
            return Err(self.error(&path, format!("imageLayoutVersion {version} unsupported")));
        }
        Ok(())
    }

    /// The descriptor of index.json that the tag (or, without one, the only entry) names.
    fn choose<'i>(
        &self,
        index: &'i ImageIndex,
        tag: Option<&str>,
        index_path: &Path,
    ) -> Result<&'i Descriptor, ImageError> {
        let entries = index.manifests();
        let Some(tag) = tag else {
            return match entries.as_slice() {
                [only] => Ok(only),
                _ => Err(self.error(
                    index_path,
                    format!(
                        "holds {} manifests, so the reference needs a :tag (tags: {})",
                        entries.len(),
                        tags(entries).join(", ")
                    ),
                )),
            };
        };
        let tagged: Vec<&Descriptor> = entries
            .iter()
            .filter(|d| ref_name(d) == Some(tag))
            .collect();
        match tagged.as_slice() {
            [] => Err(self.error(
                index_path,
                format!(
                    "no manifest tagged {tag:?} (tags: {})",
                    tags(entries).join(", ")
                ),
            )),
            [only] => Ok(only),
            several => self.for_platform(several.iter().copied(), index_path),
        }
    }

    /// Follows image indexes from `desc` to an image manifest; returns it and its descriptor.
    fn resolve_manifest(
        &self,
        desc: &Descriptor,
    ) -> Result<(Descriptor, ImageManifest), ImageError> {
        let mut desc = desc.clone();
        for _ in 0..=MAX_NESTING {
            let path = self.blob_path(&desc)?;
            let is_index = match desc.media_type() {
                MediaType::ImageManifest => false,
                MediaType::Other(t) if t == DOCKER_MANIFEST => false,
                MediaType::ImageIndex => true,
                MediaType::Other(t) if t == DOCKER_MANIFEST_LIST => true,
                other => {
                    return Err(
                        self.error(&path, format!("media type {other} is no image manifest"))
                    )
                }
            };
            if !is_index {
                let manifest: ImageManifest = self.read_json(&path, Some(&desc))?;
                return Ok((desc, manifest));
            }
            let nested: ImageIndex = self.read_json(&path, Some(&desc))?;
            desc = self.for_platform(nested.manifests().iter(), &path)?.clone();
        }
        Err(self.error(
            self.dir,
            format!("image indexes nested deeper than {MAX_NESTING}"),
        ))
    }

    /// The one descriptor whose platform is this machine's (linux/amd64 on x86_64).
    fn for_platform<'i>(
        &self,
        candidates: impl Iterator<Item = &'i Descriptor>,
        path: &Path,
    ) -> Result<&'i Descriptor, ImageError> {
        let arch = goarch();
        let mut seen = Vec::new();
        for desc in candidates {
            match desc.platform() {
                Some(p)
                    if p.os().to_string() == "linux" && p.architecture().to_string() == arch =>
                {
                    return Ok(desc)
                }
                Some(p) => seen.push(format!("{}/{}", p.os(), p.architecture())),
                None => seen.push("unspecified".into()),
            }
        }
        Err(self.error(
            path,
            format!(
                "no manifest for linux/{arch} (platforms: {})",
                seen.join(", ")
            ),
        ))
    }

    /// Unpacks one layer into the cache (verifying its blob first) unless it is there.
    fn unpack(
        &self,
        desc: &Descriptor,
        diff_id: &str,
        layer_cache: &Path,
    ) -> Result<PathBuf, ImageError> {
        let path = self.blob_path(desc)?;
        let Some(compression) = Compression::from_media_type(desc.media_type()) else {
            return Err(self.error(
                &path,
                format!("layer media type {} unsupported", desc.media_type()),
            ));
        };
        let meta = fs::metadata(&path).map_err(self.io_error(&path))?;
        self.check_size(desc, &path, meta.len())?;
        let dest = layer_cache.join(desc.digest().digest());
        if dest.is_dir() {
            return Ok(dest);
        }
        self.verify_file(desc, &path)?;
        unpack_layer(&path, compression, Some(diff_id), &dest).map_err(|source| {
            ImageError::Layer {
                reference: self.reference.to_owned(),
                digest: desc.digest().to_string(),
                source,
            }
        })?;
        Ok(dest)
    }
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()
        .and_then(|a: &HashMap<String, String>| a.get(REF_NAME_ANNOTATION))
        .map(String::as_str)
}

fn tags(entries: &[Descriptor]) -> Vec<&str> {
    let tags: Vec<&str> = entries.iter().filter_map(ref_name).collect();
    if tags.is_empty() {
        vec!["none"]
    } else {
        tags
    }
}

/// This machine's architecture as image platforms (GOARCH) name it.
pub(super) fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::image::test_layout::{
        add_to_index, nest_in_image_index, write_image, TarEntry, Written,
    };

    fn busybox_like() -> Vec<(Vec<TarEntry>, Compression)> {
        vec![
            (
                vec![
                    TarEntry::dir("bin", 0o755),
                    TarEntry::file("bin/busybox", b"\x7fELF", 0o755),
                    TarEntry::symlink("bin/sh", "busybox"),
                    TarEntry::file("etc/motd", b"hello", 0o644),
                    TarEntry::dir("tmp", 0o1777),
                ],
                Compression::Gzip,
            ),
            (
                vec![
                    TarEntry::file("etc/.wh.motd", b"", 0o644),
                    TarEntry::file("etc/hostname", b"box", 0o644),
                ],
                Compression::Zstd,
            ),
            (
                vec![TarEntry::file("data", b"plain", 0o600)],
                Compression::None,
            ),
        ]
    }

    fn reference(dir: &Path, tag: &str) -> String {
        format!("{}:{tag}", dir.display())
    }

    #[test]
    fn opens_a_layout_and_unpacks_its_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let cache = tmp.path().join("layers");
        let written = write_image(&layout, &busybox_like(), Some("v1"));
        let image = open_layout(&reference(&layout, "v1"), &cache).unwrap();

        assert_eq!(image.reference, reference(&layout, "v1"));
        assert_eq!(image.id, written.config_digest);
        assert_eq!(image.manifest_digest, written.manifest["digest"]);
        assert_eq!(image.defaults.cmd, ["sh"]);
        assert!(image.defaults.entrypoint.is_empty());
        assert_eq!(image.defaults.env, ["PATH=/bin"]);
        assert_eq!(image.defaults.working_dir, "/");
        assert_eq!(image.defaults.user, "1000:1000");
        let expected: Vec<PathBuf> = written
            .layer_digests
            .iter()
            .map(|d| cache.join(d.strip_prefix("sha256:").unwrap()))
            .collect();
        assert_eq!(image.layers, expected);
        assert_eq!(
            fs::read(image.layers[0].join("bin/busybox")).unwrap(),
            b"\x7fELF"
        );
        assert_eq!(
            fs::read(image.layers[1].join("etc/hostname")).unwrap(),
            b"box"
        );
        assert_eq!(fs::read(image.layers[2].join("data")).unwrap(), b"plain");
        let blobs: u64 = fs::read_dir(layout.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(image.size, blobs);

        // Opening again reuses the cache, and no temporary directories are left.
        let again = open_layout(&reference(&layout, "v1"), &cache).unwrap();
        assert_eq!(again.layers, image.layers);
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 3);
    }

    #[test]
    fn without_a_tag_the_index_must_hold_one_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let cache = tmp.path().join("layers");
        write_image(&layout, &busybox_like()[2..], None);
        let plain = layout.display().to_string();
        open_layout(&plain, &cache).unwrap();

        write_image(&layout, &busybox_like()[..1], Some("two"));
        let err = open_layout(&plain, &cache).unwrap_err();
        assert!(err.to_string().contains("holds 2 manifests"), "{err}");
        assert!(err.to_string().contains("index.json"), "{err}");
        let err = open_layout(&reference(&layout, "three"), &cache).unwrap_err();
        assert!(
            err.to_string().contains("no manifest tagged \"three\""),
            "{err}"
        );
        assert!(err.to_string().contains("tags: two"), "{err}");
        open_layout(&reference(&layout, "two"), &cache).unwrap();
    }

    #[test]
    fn follows_a_nested_index_to_this_platform() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let Written { manifest, .. } = write_image(&layout, &busybox_like(), None);
        nest_in_image_index(&layout, &manifest, "multi");
        let image = open_layout(&reference(&layout, "multi"), &tmp.path().join("c")).unwrap();
        assert_eq!(image.manifest_digest, manifest["digest"]);
        assert_eq!(image.layers.len(), 3);
    }

    #[test]
    fn digest_mismatch_names_the_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let written = write_image(&layout, &busybox_like(), Some("v1"));
        // Same size, different bytes: the digest check, not the size check, catches it.
        let hex = written.layer_digests[1].strip_prefix("sha256:").unwrap();
        let blob = layout.join("blobs/sha256").join(hex);
        let mut bytes = fs::read(&blob).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        fs::write(&blob, bytes).unwrap();

        let cache = tmp.path().join("layers");
        let err = open_layout(&reference(&layout, "v1"), &cache).unwrap_err();
        let ImageError::Digest {
            reference: r,
            path,
            expected,
            ..
        } = &err
        else {
            panic!("expected a digest error, got {err}");
        };
        assert_eq!(r, &reference(&layout, "v1"));
        assert_eq!(path, &blob);
        assert_eq!(expected, &written.layer_digests[1]);
        assert!(err.to_string().contains(hex), "{err}");
        assert!(!cache.join(hex).exists());

        // A truncated config fails its size check.
        let config = layout
            .join("blobs/sha256")
            .join(written.config_digest.strip_prefix("sha256:").unwrap());
        fs::write(&config, b"{}").unwrap();
        let err = open_layout(&reference(&layout, "v1"), &cache).unwrap_err();
        assert!(matches!(err, ImageError::Size { .. }), "{err}");
    }

    #[test]
    fn rejects_bad_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("layers");
        let err = open_layout(&reference(&tmp.path().join("none"), "x"), &cache).unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }), "{err}");
        assert!(err.to_string().contains("oci-layout"), "{err}");

        let layout = tmp.path().join("layout");
        write_image(&layout, &busybox_like(), Some("v1"));
        add_to_index(
            &layout,
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha512:{}", "0".repeat(128)),
                "size": 1,
                "annotations": {REF_NAME_ANNOTATION: "sha512"},
            }),
        );
        let err = open_layout(&reference(&layout, "sha512"), &cache).unwrap_err();
        assert!(err.to_string().contains("only sha256"), "{err}");

        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        let err = open_layout(&reference(&layout, "v1"), &cache).unwrap_err();
        assert!(err.to_string().contains("2.0.0"), "{err}");
    }
}
