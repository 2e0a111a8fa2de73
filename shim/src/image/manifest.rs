//! The documents of an image as registries serve them: image indexes (OCI) and manifest lists
//! (Docker), image manifests (OCI and Docker schema 2) and the image config. Parsing, choosing
//! this machine's platform from an index, layer compression from media types, chain ids, and
//! the defaults a config gives containers.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::unpack::Compression;
use super::{ImageDefaults, ImageError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Every manifest media type a pull accepts. All are sent: a registry asked without the
/// index/list types may answer with a deprecated schema-1 manifest instead.
pub const ACCEPT: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Deepest chain of nested indexes followed.
pub const MAX_NESTING: usize = 4;

/// A manifest-endpoint document.
#[derive(Debug)]
pub enum Document {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

fn bad(what: &'static str, digest: &str, reason: impl Into<String>) -> ImageError {
    ImageError::Manifest {
        what,
        digest: digest.to_owned(),
        reason: reason.into(),
    }
}

/// Parses what a manifest endpoint returned, by its `mediaType` (or, where an OCI document
/// leaves it out, by whether it lists `manifests`).
pub fn parse_document(digest: &str, bytes: &[u8]) -> Result<Document, ImageError> {
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| bad("manifest", digest, format!("not JSON: {e}")))?;
    match probe.schema_version {
        Some(2) => {}
        Some(v) => {
            return Err(bad(
                "manifest",
                digest,
                format!("schema version {v} is not supported (only schema 2 and OCI)"),
            ))
        }
        None => return Err(bad("manifest", digest, "no schemaVersion")),
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        None => probe.manifests.is_some(),
        Some(other) => {
            return Err(bad(
                "manifest",
                digest,
                format!("media type {other} is no image manifest or index"),
            ))
        }
    };
    if is_index {
        let index: ImageIndex =
            serde_json::from_slice(bytes).map_err(|e| bad("image index", digest, e.to_string()))?;
        Ok(Document::Index(Box::new(index)))
    } else {
        let manifest: ImageManifest = serde_json::from_slice(bytes)
            .map_err(|e| bad("image manifest", digest, e.to_string()))?;
        check_config_type(digest, manifest.config())?;
        Ok(Document::Manifest(Box::new(manifest)))
    }
}

fn check_config_type(digest: &str, config: &Descriptor) -> Result<(), ImageError> {
    match config.media_type() {
        MediaType::ImageConfig => Ok(()),
        MediaType::Other(t) if t == DOCKER_CONFIG => Ok(()),
        other => Err(bad(
            "image manifest",
            digest,
            format!("config media type {other} is not an image config"),
        )),
    }
}

/// The one entry of an index for this machine's platform (linux/amd64 on x86_64).
pub fn for_platform<'i>(index: &'i ImageIndex, digest: &str) -> Result<&'i Descriptor, ImageError> {
    let arch = goarch();
    let mut seen = Vec::new();
    for desc in index.manifests() {
        match desc.platform() {
            Some(p) if p.os().to_string() == "linux" && p.architecture().to_string() == arch => {
                return Ok(desc)
            }
            Some(p) => seen.push(format!("{}/{}", p.os(), p.architecture())),
            None => seen.push("unspecified".into()),
        }
    }
    Err(bad(
        "image index",
        digest,
        format!(
            "no manifest for linux/{arch} (platforms: {})",
            if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            }
        ),
    ))
}

/// Parses and checks the image config against its manifest.
pub fn parse_config(
    digest: &str,
    bytes: &[u8],
    manifest: &ImageManifest,
) -> Result<ImageConfiguration, ImageError> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| bad("image config", digest, e.to_string()))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(
            "image config",
            digest,
            format!(
                "lists {} diff_ids, its manifest {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }
    Ok(config)
}

/// The compression of a layer descriptor, or an error naming its media type.
pub fn layer_compression(desc: &Descriptor) -> Result<Compression, ImageError> {
    Compression::from_media_type(desc.media_type()).ok_or_else(|| {
        bad(
            "layer",
            desc.digest().as_ref(),
            format!("media type {} is not a supported layer", desc.media_type()),
        )
    })
}

/// Chain ids (image-spec): the first is the first diff_id; each next one is
/// `sha256(previous + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(prev) => format!(
                "sha256:{:x}",
                Sha256::digest(format!("{prev} {diff_id}").as_bytes())
            ),
        };
        out.push(next);
    }
    out
}

/// The defaults an image config gives its containers.
pub fn defaults(config: &ImageConfiguration) -> ImageDefaults {
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

/// This machine's architecture as image platforms (GOARCH) name it.
pub fn goarch() -> &'static str {
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

    fn desc(media_type: &str, n: char, platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut d = json!({"mediaType": media_type, "digest": format!("sha256:{}", n.to_string().repeat(64)), "size": 10});
        if let Some((os, arch)) = platform {
            d["platform"] = json!({"os": os, "architecture": arch});
        }
        d
    }

    fn manifest(media_type: Option<&str>, config_type: &str) -> Vec<u8> {
        let mut m = json!({
            "schemaVersion": 2,
            "config": desc(config_type, 'c', None),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", 'e', None)],
        });
        if let Some(t) = media_type {
            m["mediaType"] = json!(t);
        }
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn parses_every_manifest_and_index_type() {
        for t in [Some(OCI_MANIFEST), Some(DOCKER_MANIFEST), None] {
            let doc = parse_document("d", &manifest(t, DOCKER_CONFIG)).unwrap();
            assert!(matches!(doc, Document::Manifest(_)), "{t:?}");
        }
        let err = parse_document(
            "sha256:m",
            &manifest(Some(OCI_MANIFEST), "application/octet-stream"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("sha256:m"), "{err}");
        assert!(err.to_string().contains("octet-stream"), "{err}");

        for t in [Some(OCI_INDEX), Some(DOCKER_LIST), None] {
            let mut index = json!({"schemaVersion": 2, "manifests": [
                desc(OCI_MANIFEST, 'a', Some(("linux", "arm64"))),
                desc(OCI_MANIFEST, 'b', Some(("linux", goarch()))),
            ]});
            if let Some(t) = t {
                index["mediaType"] = json!(t);
            }
            let Document::Index(index) =
                parse_document("i", &serde_json::to_vec(&index).unwrap()).unwrap()
            else {
                panic!("{t:?}: not an index");
            };
            let chosen = for_platform(&index, "i").unwrap();
            assert!(chosen.digest().as_ref().ends_with(&"b".repeat(64)));
        }
    }

    #[test]
    fn rejects_schema1_and_foreign_platforms() {
        let err = parse_document("s1", br#"{"schemaVersion":1,"name":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("schema version 1"), "{err}");
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            desc(OCI_MANIFEST, 'a', Some(("linux", "s390x"))),
            desc(OCI_MANIFEST, 'b', None),
        ]});
        let Document::Index(index) =
            parse_document("i", &serde_json::to_vec(&index).unwrap()).unwrap()
        else {
            panic!("not an index");
        };
        let err = for_platform(&index, "sha256:idx").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("linux/s390x, unspecified"), "{msg}");
        assert!(msg.contains("sha256:idx"), "{msg}");
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = format!("sha256:{:x}", Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(ids[1], want);
        assert!(chain_ids(&[]).is_empty());
    }
}
