//! ImageFsInfo: bytes and inodes used by the image store (blobs and unpacked layers).

use std::sync::Arc;

use vessel_protocols::cri;

use crate::runtime::{disk_usage, now_ns, Runtime, RuntimeError};

pub async fn fs_info(
    rt: &Arc<Runtime>,
    _: cri::ImageFsInfoRequest,
) -> Result<cri::ImageFsInfoResponse, RuntimeError> {
    let root = rt.images.root().to_owned();
    let (used, inodes) = tokio::task::spawn_blocking({
        let root = root.clone();
        move || disk_usage(&root)
    })
    .await
    .map_err(|e| RuntimeError::Internal(format!("image fs usage: {e}")))?;
    let usage = cri::FilesystemUsage {
        timestamp: now_ns(),
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
}
