//! CRI ImageService over the runtime's image store. ImageStatus of an unknown image answers
//! `image: null` without an error, as kubelet expects; RemoveImage of one succeeds.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use tonic::{Request, Response, Status};
use vessel_protocols::cri;
use vessel_protocols::cri::image_service_server::ImageService;

use super::instrument::call;
use crate::image::{Credentials, ImageRecord, PullAuth};
use crate::runtime::{Runtime, RuntimeError};

/// The ImageService over the runtime core.
#[derive(Clone)]
pub struct CriImageService {
    runtime: Arc<Runtime>,
}

impl CriImageService {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
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

fn reference(spec: Option<cri::ImageSpec>) -> Result<String, RuntimeError> {
    match spec.map(|s| s.image) {
        Some(image) if !image.is_empty() => Ok(image),
        _ => Err(RuntimeError::invalid("image.image", "empty")),
    }
}

/// The pull credentials a CRI AuthConfig carries: a registry token, a username and password,
/// or `auth` (base64 of `user:password`).
fn pull_auth(auth: Option<cri::AuthConfig>) -> Result<PullAuth, RuntimeError> {
    let Some(auth) = auth else {
        return Ok(PullAuth::default());
    };
    let credentials = if !auth.registry_token.is_empty() {
        Credentials::Bearer(auth.registry_token)
    } else if !auth.username.is_empty() {
        Credentials::Basic {
            username: auth.username,
            password: auth.password,
        }
    } else if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| RuntimeError::invalid("auth.auth", "not base64 of user:password"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| RuntimeError::invalid("auth.auth", "decodes to no user:password"))?;
        Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    } else if !auth.identity_token.is_empty() {
        return Err(RuntimeError::invalid(
            "auth.identity_token",
            "OAuth2 refresh tokens are not supported; pass registry_token or username and password",
        ));
    } else {
        Credentials::Anonymous
    };
    Ok(PullAuth {
        credentials,
        server: Some(auth.server_address).filter(|s| !s.is_empty()),
    })
}

#[tonic::async_trait]
impl ImageService for CriImageService {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        call("list_images", async {
            let filter = request
                .into_inner()
                .filter
                .and_then(|f| f.image)
                .map(|s| s.image);
            let images = self
                .runtime
                .list_images(filter.as_deref())
                .iter()
                .map(to_cri)
                .collect();
            Ok(cri::ListImagesResponse { images })
        })
        .await
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        call("image_status", async {
            let request = request.into_inner();
            let reference = reference(request.image)?;
            let Some(image) = self.runtime.image_status(&reference)? else {
                return Ok(cri::ImageStatusResponse::default());
            };
            let mut info = HashMap::new();
            if request.verbose {
                let verbose = serde_json::json!({
                    "chainID": image.chain_ids.last(),
                    "manifestDigest": image.manifest_digest,
                    "imageSpec": self.runtime.images.config_json(&image)?,
                });
                info.insert("info".to_owned(), verbose.to_string());
            }
            Ok(cri::ImageStatusResponse {
                image: Some(to_cri(&image)),
                info,
            })
        })
        .await
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        call("pull_image", async {
            let request = request.into_inner();
            let reference = reference(request.image)?;
            let auth = pull_auth(request.auth)?;
            let image = self.runtime.pull_image(&reference, auth).await?;
            Ok(cri::PullImageResponse {
                image_ref: image.id,
            })
        })
        .await
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        call("remove_image", async {
            let reference = reference(request.into_inner().image)?;
            self.runtime.remove_image(&reference).await?;
            Ok(cri::RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        call("image_fs_info", async {
            let root = self.runtime.images.root().to_owned();
            let (used, inodes) = tokio::task::spawn_blocking({
                let root = root.clone();
                move || crate::runtime::disk_usage(&root)
            })
            .await
            .map_err(|e| RuntimeError::Internal(format!("image fs usage: {e}")))?;
            let usage = cri::FilesystemUsage {
                timestamp: crate::runtime::now_ns(),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: root.display().to_string(),
                }),
                used_bytes: Some(cri::UInt64Value { value: used }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            };
            Ok(cri::ImageFsInfoResponse {
                image_filesystems: vec![usage],
                container_filesystems: Vec::new(),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_configs_become_credentials() {
        let auth = |f: fn(&mut cri::AuthConfig)| {
            let mut a = cri::AuthConfig::default();
            f(&mut a);
            pull_auth(Some(a))
        };
        assert_eq!(pull_auth(None).unwrap().credentials, Credentials::Anonymous);
        let basic = auth(|a| {
            a.username = "u".into();
            a.password = "p".into();
            a.server_address = "reg:5000".into();
        })
        .unwrap();
        assert_eq!(
            basic.credentials,
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(basic.server.as_deref(), Some("reg:5000"));
        let encoded = auth(|a| a.auth = "dTpwOnE=".into()).unwrap(); // u:p:q
        assert_eq!(
            encoded.credentials,
            Credentials::Basic {
                username: "u".into(),
                password: "p:q".into()
            }
        );
        let token = auth(|a| a.registry_token = "t".into()).unwrap();
        assert_eq!(token.credentials, Credentials::Bearer("t".into()));
        let err = auth(|a| a.auth = "!!".into()).unwrap_err();
        assert!(err.to_string().contains("auth.auth"), "{err}");
        let err = auth(|a| a.identity_token = "r".into()).unwrap_err();
        assert!(err.to_string().contains("auth.identity_token"), "{err}");
    }

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
