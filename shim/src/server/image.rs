//! CRI ImageService over the runtime's images (local OCI layouts until registry pulls land).
//! ImageStatus of an unknown image answers `image: null` without an error, as kubelet expects.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vessel_protocols::cri;
use vessel_protocols::cri::image_service_server::ImageService;

use super::instrument::call;
use crate::image::LocalImage;
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

fn to_cri(reference: &str, img: &LocalImage) -> cri::Image {
    cri::Image {
        id: img.id.clone(),
        repo_tags: vec![reference.to_owned()],
        repo_digests: vec![format!("{}@{}", reference, img.manifest_digest)],
        size: img.size,
        username: img.defaults.user.clone(),
        spec: Some(cri::ImageSpec {
            image: reference.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn reference(spec: Option<cri::ImageSpec>) -> Result<String, RuntimeError> {
    match spec.map(|s| s.image) {
        Some(image) if !image.is_empty() => Ok(image),
        _ => Err(RuntimeError::invalid("image.image", "empty")),
    }
}

#[tonic::async_trait]
impl ImageService for CriImageService {
    async fn list_images(
        &self,
        _: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        call("list_images", async {
            let images = self
                .runtime
                .list_images()
                .iter()
                .map(|img| to_cri(&img.reference, img))
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
            let reference = reference(request.into_inner().image)?;
            Ok(cri::ImageStatusResponse {
                image: self
                    .runtime
                    .image_status(&reference)
                    .map(|img| to_cri(&reference, &img)),
                info: Default::default(),
            })
        })
        .await
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        call("pull_image", async {
            let reference = reference(request.into_inner().image)?;
            let runtime = self.runtime.clone();
            let img = tokio::task::spawn_blocking(move || runtime.pull_image(&reference))
                .await
                .map_err(|e| RuntimeError::Internal(format!("pull task: {e}")))??;
            Ok(cri::PullImageResponse { image_ref: img.id })
        })
        .await
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        call("remove_image", async {
            let reference = reference(request.into_inner().image)?;
            self.runtime.remove_image(&reference);
            Ok(cri::RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        call("image_fs_info", async {
            let layers = self.runtime.dirs.root.join("layers");
            let (used, inodes) = crate::runtime::disk_usage(&layers);
            let usage = cri::FilesystemUsage {
                timestamp: crate::runtime::now_ns(),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: layers.display().to_string(),
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
