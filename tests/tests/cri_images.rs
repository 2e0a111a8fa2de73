//! CRI ImageService end to end against a real registry (Debian's docker-registry on
//! 127.0.0.1): every manifest format, short names through mirrors with fallback, image
//! status/list/remove semantics, garbage collection, image fs info, persistence across a
//! daemon restart, basic auth and token (bearer) auth.

use std::collections::HashSet;

use serde_json::json;
use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cri::{can_pull, image_status, pull, Daemon};
use vessel_tests::images::{
    build, busybox_layer, push, push_index, BuiltImage, Compression, Entry, ImageSpec, Layer,
};
use vessel_tests::registry::Registry;

/// A second layer with content of its own, `compression`-compressed.
fn extra_layer(file: &str, compression: Compression) -> Layer {
    Layer {
        entries: vec![
            Entry::dir("opt", 0o755),
            Entry::file(file, file.as_bytes(), 0o644),
        ],
        compression,
    }
}

fn image(layers: Vec<Layer>, config: serde_json::Value, docker: bool) -> BuiltImage {
    build(&ImageSpec {
        layers,
        config,
        docker_media_types: docker,
        ..ImageSpec::busybox()
    })
}

fn layer_dirs(daemon: &Daemon) -> usize {
    std::fs::read_dir(daemon.root().join("images/layers"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_every_format_through_mirrors_and_manages_images() {
    let test = "pulls_every_format_through_mirrors_and_manages_images";
    if !can_pull(test) {
        return;
    }
    let reg = Registry::start();
    let empty = Registry::start(); // a mirror that has nothing: 404s, then fallback
    let host = reg.host();

    let busybox = build(&ImageSpec::busybox());
    push(&host, "library/busybox", "latest", &busybox, None)
        .await
        .unwrap();
    // OCI, three layers: gzip, zstd, uncompressed.
    let oci = image(
        vec![
            busybox_layer(),
            extra_layer("opt/zstd", Compression::Zstd),
            extra_layer("opt/plain", Compression::None),
        ],
        json!({"Cmd": ["sh"], "User": "app"}),
        false,
    );
    let oci_digest = push(&host, "formats/oci", "v1", &oci, None).await.unwrap();
    // Docker schema 2, and a Docker manifest list holding it.
    let docker = image(
        vec![
            busybox_layer(),
            extra_layer("opt/docker", Compression::Gzip),
        ],
        json!({"Cmd": ["sh"], "User": "1000:1000"}),
        true,
    );
    push(&host, "formats/docker", "v1", &docker, None)
        .await
        .unwrap();
    let docker_arm = image(
        vec![busybox_layer(), extra_layer("opt/arm", Compression::Gzip)],
        json!({"Cmd": ["sh"]}),
        true,
    );
    push_index(
        &host,
        "formats/dockerlist",
        "v1",
        &[(&docker_arm, "arm64"), (&docker, "amd64")],
        true,
        None,
    )
    .await
    .unwrap();
    // An OCI index with two platforms: only linux/amd64 is pulled.
    let amd64 = image(vec![busybox_layer()], json!({"Env": ["ARCH=amd64"]}), false);
    let arm64 = build(&ImageSpec {
        architecture: "arm64".into(),
        ..ImageSpec {
            config: json!({"Env": ["ARCH=arm64"]}),
            ..ImageSpec::busybox()
        }
    });
    let index_digest = push_index(
        &host,
        "formats/index",
        "v1",
        &[(&arm64, "arm64"), (&amd64, "amd64")],
        false,
        None,
    )
    .await
    .unwrap();
    // One image under two tags.
    push(&host, "two", "a", &busybox, None).await.unwrap();
    push(&host, "two", "b", &busybox, None).await.unwrap();

    let config = format!(
        "[registry.mirrors.\"docker.io\"]\nendpoint = [\"http://127.0.0.1:1\", \"http://{}\", \"http://{host}\"]\n",
        empty.host()
    );
    let mut daemon = Daemon::start_with_config(Some(&config)).await;
    let mut images = daemon.image_client().await;

    // A short name normalises to docker.io/library/busybox:latest and comes from the third
    // mirror, after a refused connection and a 404.
    let id = pull(&mut images, "busybox", None)
        .await
        .expect("pull busybox via mirrors");
    assert_eq!(id, busybox.config_digest);
    let status = image_status(&mut images, "docker.io/library/busybox:latest")
        .await
        .expect("status");
    assert_eq!(status.repo_tags, ["docker.io/library/busybox:latest"]);
    assert_eq!(
        status.repo_digests,
        [format!("docker.io/library/busybox@{}", busybox.digest)]
    );
    let blob_bytes: usize =
        busybox.manifest.len() + busybox.blobs().iter().map(|(_, b)| b.len()).sum::<usize>();
    assert_eq!(status.size, blob_bytes as u64);
    assert_eq!(
        empty.blob_gets("library/busybox", &busybox.layers[0].digest),
        0
    );
    assert_eq!(
        reg.blob_gets("library/busybox", &busybox.layers[0].digest),
        1
    );

    // Every format, by tag and by digest.
    let oci_ref = format!("{host}/formats/oci:v1");
    assert_eq!(
        pull(&mut images, &oci_ref, None).await.unwrap(),
        oci.config_digest
    );
    let by_digest = format!("{host}/formats/oci@{oci_digest}");
    assert_eq!(
        pull(&mut images, &by_digest, None).await.unwrap(),
        oci.config_digest
    );
    let docker_ref = format!("{host}/formats/docker:v1");
    assert_eq!(
        pull(&mut images, &docker_ref, None).await.unwrap(),
        docker.config_digest
    );
    let list_ref = format!("{host}/formats/dockerlist:v1");
    assert_eq!(
        pull(&mut images, &list_ref, None).await.unwrap(),
        docker.config_digest
    );
    let index_ref = format!("{host}/formats/index:v1");
    assert_eq!(
        pull(&mut images, &index_ref, None).await.unwrap(),
        amd64.config_digest
    );
    let status = image_status(&mut images, &index_ref).await.unwrap();
    assert!(status
        .repo_digests
        .contains(&format!("{host}/formats/index@{index_digest}")));
    assert_eq!(reg.blob_gets("formats/index", &arm64.config_digest), 0);

    // ImageStatus: uid or username from the config's User; verbose info holds the config.
    let oci_status = image_status(&mut images, &oci_ref).await.unwrap();
    assert_eq!(
        (oci_status.uid, oci_status.username.as_str()),
        (None, "app")
    );
    assert!(oci_status
        .repo_digests
        .contains(&format!("{host}/formats/oci@{oci_digest}")));
    let docker_status = image_status(&mut images, &docker_ref).await.unwrap();
    assert_eq!(docker_status.uid.map(|u| u.value), Some(1000));
    assert_eq!(docker_status.repo_tags.len(), 2, "{docker_status:?}");
    let verbose = images
        .image_status(cri::ImageStatusRequest {
            image: Some(spec(&oci.config_digest)),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["User"], "app");
    assert_eq!(
        info["imageSpec"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // By id prefix, and unknown names are null without error.
    let prefix = &oci.config_digest["sha256:".len().."sha256:".len() + 12];
    assert_eq!(
        image_status(&mut images, prefix).await.unwrap().id,
        oci.config_digest
    );
    assert!(image_status(&mut images, "nothing/here:v9").await.is_none());

    // Failures: unknown image → NotFound naming it; bad name → InvalidArgument.
    let err = pull(&mut images, &format!("{host}/formats/missing:v1"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("formats/missing:v1"), "{err:?}");
    let err = pull(&mut images, "Bad Name", None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Bad Name"), "{err:?}");

    // ListImages, with and without a filter.
    let all = list(&mut images, None).await;
    let ids: HashSet<String> = all.iter().map(|i| i.id.clone()).collect();
    let want: HashSet<String> = [&busybox, &oci, &docker, &amd64]
        .iter()
        .map(|i| i.config_digest.clone())
        .collect();
    assert_eq!(ids, want);
    let filtered = list(&mut images, Some("busybox")).await;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, busybox.config_digest);

    // Two tags of one image: removing one keeps the other.
    pull(&mut images, &format!("{host}/two:a"), None)
        .await
        .unwrap();
    pull(&mut images, &format!("{host}/two:b"), None)
        .await
        .unwrap();
    let two = image_status(&mut images, &format!("{host}/two:a"))
        .await
        .unwrap();
    assert_eq!(two.id, busybox.config_digest);
    assert!(two.repo_tags.contains(&format!("{host}/two:b")));
    remove(&mut images, &format!("{host}/two:a")).await;
    assert!(image_status(&mut images, &format!("{host}/two:b"))
        .await
        .is_some());
    assert!(image_status(&mut images, &format!("{host}/two:a"))
        .await
        .is_none());

    // Restart: every image is still there.
    daemon.restart().await;
    let mut images = daemon.image_client().await;
    assert_eq!(list(&mut images, None).await.len(), 4);

    // Removing by id and by digest; layers no image uses are collected, shared ones stay.
    let before = layer_dirs(&daemon);
    remove(&mut images, &oci.config_digest).await;
    assert!(image_status(&mut images, &oci_ref).await.is_none());
    assert_eq!(
        layer_dirs(&daemon),
        before - 2,
        "the zstd and plain layers are gone"
    );
    remove(&mut images, &format!("{host}/formats/index@{index_digest}")).await;
    assert!(image_status(&mut images, &index_ref).await.is_none());
    remove(&mut images, "nothing/here:v9").await; // unknown: no error
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert_eq!(
        usage.fs_id.as_ref().unwrap().mountpoint,
        daemon.root().join("images").display().to_string()
    );
    assert!(usage.used_bytes.as_ref().unwrap().value > blob_bytes as u64);
    assert!(usage.inodes_used.as_ref().unwrap().value > 20);
    for id in [&busybox.config_digest, &docker.config_digest] {
        remove(&mut images, id).await;
    }
    assert!(list(&mut images, None).await.is_empty());
    assert_eq!(layer_dirs(&daemon), 0);
    let blobs = std::fs::read_dir(daemon.root().join("images/content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_required_and_honoured() {
    let test = "basic_auth_is_required_and_honoured";
    if !can_pull(test) {
        return;
    }
    let reg = Registry::start_with_basic_auth("alice", "s3cret");
    let host = reg.host();
    let busybox = build(&ImageSpec::busybox());
    push(&host, "private/busybox", "v1", &busybox, reg.credentials())
        .await
        .unwrap();
    let daemon = Daemon::start().await;
    let mut images = daemon.image_client().await;
    let reference = format!("{host}/private/busybox:v1");

    let err = pull(&mut images, &reference, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&reference), "{err:?}");
    let wrong = cri::AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut images, &reference, Some(wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(list(&mut images, None).await.is_empty());

    let right = cri::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        server_address: host.clone(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut images, &reference, Some(right)).await.unwrap(),
        busybox.config_digest
    );
    remove(&mut images, &reference).await;
    // The `auth` field: base64 of user:password.
    let encoded = cri::AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut images, &reference, Some(encoded)).await.unwrap(),
        busybox.config_digest
    );
    let bad = cri::AuthConfig {
        auth: "not base64!".into(),
        ..Default::default()
    };
    let err = pull(&mut images, &reference, Some(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("auth.auth"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_by_credentials_and_by_registry_token() {
    let test = "token_auth_by_credentials_and_by_registry_token";
    if !can_pull(test) {
        return;
    }
    let reg = Registry::start_with_token_auth("bob", "t0ken-pass");
    let host = reg.host();
    let busybox = build(&ImageSpec::busybox());
    push(&host, "secure/busybox", "v1", &busybox, reg.credentials())
        .await
        .unwrap();
    let daemon = Daemon::start().await;
    let mut images = daemon.image_client().await;
    let reference = format!("{host}/secure/busybox:v1");

    // Anonymous, a wrong password, a token for another repository: refused, nothing stored.
    let err = pull(&mut images, &reference, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let wrong = cri::AuthConfig {
        username: "bob".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = pull(&mut images, &reference, Some(wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let other = cri::AuthConfig {
        registry_token: reg.issue_token("secure/other", &["pull"]),
        ..Default::default()
    };
    let err = pull(&mut images, &reference, Some(other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(list(&mut images, None).await.is_empty());

    // Username and password: the Bearer challenge is answered at the token realm.
    let before = reg.token_requests().len();
    let right = cri::AuthConfig {
        username: "bob".into(),
        password: "t0ken-pass".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut images, &reference, Some(right)).await.unwrap(),
        busybox.config_digest
    );
    let issued = &reg.token_requests()[before..];
    assert!(issued.iter().any(|r| r.starts_with("200 ")), "{issued:?}");
    remove(&mut images, &reference).await;

    // A registry token from the CRI AuthConfig, sent as the bearer token.
    let token = cri::AuthConfig {
        registry_token: reg.issue_token("secure/busybox", &["pull"]),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut images, &reference, Some(token)).await.unwrap(),
        busybox.config_digest
    );
}

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

async fn list(
    images: &mut vessel_tests::cri::ImageClient,
    filter: Option<&str>,
) -> Vec<cri::Image> {
    images
        .list_images(cri::ListImagesRequest {
            filter: filter.map(|f| cri::ImageFilter {
                image: Some(spec(f)),
            }),
        })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

async fn remove(images: &mut vessel_tests::cri::ImageClient, image: &str) {
    images
        .remove_image(cri::RemoveImageRequest {
            image: Some(spec(image)),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage {image}: {e:?}"));
}
