//! ImageStatus and ListImages. ImageStatus of an unknown image answers `image: null` without
//! an error, as kubelet expects.

use std::collections::HashMap;
use std::sync::Arc;

use vessel_protocols::cri;

use super::reference;
use crate::image::ImageRecord;
use crate::runtime::{Runtime, RuntimeError};

pub async fn status(
    rt: &Arc<Runtime>,
    req: cri::ImageStatusRequest,
) -> Result<cri::ImageStatusResponse, RuntimeError> {
    let reference = reference(req.image)?;
    let Some(image) = rt.images.resolve(&reference) else {
        return Ok(cri::ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "chainID": image.chain_ids.last(),
            "manifestDigest": image.manifest_digest,
            "imageSpec": rt.images.config_json(&image)?,
        });
        info.insert("info".to_owned(), verbose.to_string());
    }
    Ok(cri::ImageStatusResponse {
        image: Some(to_cri(&image)),
        info,
    })
}

pub async fn list(
    rt: &Arc<Runtime>,
    req: cri::ListImagesRequest,
) -> Result<cri::ListImagesResponse, RuntimeError> {
    let filter = req.filter.and_then(|f| f.image).map(|s| s.image);
    let images = match filter.as_deref() {
        Some(reference) if !reference.is_empty() => rt.images.matching(reference),
        _ => rt.images.list(),
    };
    let images = images.iter().map(to_cri).collect();
    Ok(cri::ListImagesResponse { images })
}

/// The CRI view of an image. The config's user becomes `uid` when it starts with a number
/// (`1000`, `1000:1000`), else `username` (containerd's rule).
fn to_cri(image: &ImageRecord) -> cri::Image {
    let user = image.defaults.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_owned()),
    };
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_split_into_uid_or_name() {
        let mut image = ImageRecord {
            id: "sha256:x".into(),
            repo_tags: vec![],
            repo_digests: vec![],
            manifest_digest: String::new(),
            blobs: vec![],
            chain_ids: vec![],
            size: 0,
            defaults: Default::default(),
        };
        for (user, uid, name) in [
            ("1000:1000", Some(1000), ""),
            ("0", Some(0), ""),
            ("app:app", None, "app"),
            ("", None, ""),
        ] {
            image.defaults.user = user.into();
            let c = to_cri(&image);
            assert_eq!(c.uid.map(|u| u.value), uid, "{user}");
            assert_eq!(c.username, name, "{user}");
        }
    }
}
