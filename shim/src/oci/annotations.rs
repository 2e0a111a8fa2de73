//! The annotations of a container's spec: the CRI annotations, then the
//! `io.kubernetes.cri.*` keys containerd sets (which a CRI annotation cannot override).

use std::collections::HashMap;

use vessel_protocols::cri;

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// The value of [`CONTAINER_TYPE`] for an application container.
pub const TYPE_CONTAINER: &str = "container";

pub(super) fn build(
    pod: &cri::PodSandboxConfig,
    container: &cri::ContainerConfig,
) -> HashMap<String, String> {
    let mut out = container.annotations.clone();
    let pod_meta = pod.metadata.clone().unwrap_or_default();
    let name = container
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let image = container
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    out.insert(CONTAINER_TYPE.into(), TYPE_CONTAINER.into());
    out.insert(CONTAINER_NAME.into(), name);
    out.insert(SANDBOX_NAME.into(), pod_meta.name);
    out.insert(SANDBOX_NAMESPACE.into(), pod_meta.namespace);
    out.insert(SANDBOX_UID.into(), pod_meta.uid);
    if !image.is_empty() {
        out.insert(IMAGE_NAME.into(), image);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{container, pod};
    use super::*;

    #[test]
    fn cri_annotations_plus_containerd_keys() {
        let mut c = container(&["x"]);
        c.annotations = HashMap::from([
            ("team".to_string(), "web".to_string()),
            (CONTAINER_TYPE.to_string(), "sandbox".to_string()),
        ]);
        c.image = Some(cri::ImageSpec {
            image: "busybox:1".into(),
            ..Default::default()
        });
        let got = build(&pod(), &c);
        let want = [
            ("team", "web"),
            (CONTAINER_TYPE, "container"),
            (CONTAINER_NAME, "app"),
            (IMAGE_NAME, "busybox:1"),
            (SANDBOX_NAME, "web-0-pod"),
            (SANDBOX_NAMESPACE, "default"),
            (SANDBOX_UID, "uid-1"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (k, v) in want {
            assert_eq!(got.get(k).map(String::as_str), Some(v), "{k}");
        }
    }

    #[test]
    fn without_image_no_image_name() {
        let got = build(&pod(), &container(&["x"]));
        assert!(!got.contains_key(IMAGE_NAME));
    }
}
