//! Smoke tests of the registry and image fixtures against a real docker-registry.

use std::fs;
use std::io::Read as _;

use serde_json::Value;
use vessel_tests::images::*;
use vessel_tests::registry::{self, basic_auth, http_get, Registry};
use vessel_tests::rootfs::BUSYBOX;

/// `"<kind> <name>[ -> <link>] <size>"` per tar entry.
fn listing(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().expect("reading the tar");
    let describe = |entry: std::io::Result<tar::Entry<&[u8]>>| {
        let mut entry = entry.expect("reading a tar entry");
        let size = entry
            .read_to_end(&mut Vec::new())
            .expect("reading entry data");
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| format!(" -> {}", lossy(&l)));
        let (kind, name) = (entry.header().entry_type(), lossy(&entry.path_bytes()));
        format!("{kind:?} {name}{} {size}", link.unwrap_or_default())
    };
    entries.map(describe).collect()
}

#[test]
fn basic_auth_header_is_base64() {
    assert_eq!(
        basic_auth("Aladdin", "open sesame"),
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
    assert_eq!(basic_auth("a", "b"), "Basic YTpi");
    assert_eq!(basic_auth("ab", "c"), "Basic YWI6Yw==");
}

#[test]
fn raw_entries_survive_and_blobs_decompress() {
    let raw = vec![
        Entry::raw_file(b"../evil", b"x"),
        Entry::raw_file(b"/abs/evil", b"yy"),
        Entry::raw_symlink(b"passwd", b"/etc/passwd"),
        Entry::raw_hardlink(b"up", b"../../x"),
        Entry::whiteout("etc/motd"),
        Entry::opaque("var"),
        Entry::whiteout("top"),
        Entry::file_owned("owned", b"abc", 0o4755, 1000, 1000),
    ];
    let want = [
        "Regular ../evil 1",
        "Regular /abs/evil 2",
        "Symlink passwd -> /etc/passwd 0",
        "Link up -> ../../x 0",
        "Regular etc/.wh.motd 0",
        "Regular var/.wh..wh..opq 0",
        "Regular .wh.top 0",
        "Regular owned 3",
    ];
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        for docker in [false, true] {
            let entries = raw.clone();
            let layer = Layer {
                entries,
                compression,
            }
            .build(docker)
            .expect("build");
            let mut tar = Vec::new();
            match compression {
                Compression::None => tar.clone_from(&layer.blob),
                Compression::Gzip => {
                    flate2::read::GzDecoder::new(layer.blob.as_slice())
                        .read_to_end(&mut tar)
                        .expect("gunzip");
                }
                Compression::Zstd => tar = zstd::decode_all(layer.blob.as_slice()).expect("unzstd"),
            };
            assert_eq!(tar, layer.tar);
            assert_eq!(layer.diff_id, sha256_digest(&tar));
            assert_eq!(layer.digest, sha256_digest(&layer.blob));
            assert_eq!(listing(&tar), want);
            println!("{compression:?} docker={docker}: {}", layer.media_type);
        }
    }
    let owned = Layer::new(vec![Entry::file_owned("o", b"", 0o4755, 1000, 1001)])
        .tar()
        .expect("tar");
    let mut archive = tar::Archive::new(owned.as_slice());
    let entry = archive
        .entries()
        .expect("entries")
        .next()
        .expect("one entry")
        .expect("entry");
    let h = entry.header();
    assert_eq!(
        (h.mode().ok(), h.uid().ok(), h.gid().ok()),
        (Some(0o4755), Some(1000), Some(1001))
    );
    let too_long = Entry::raw_file(&[b'a'; 101], b"");
    assert!(Layer::new(vec![too_long]).tar().is_err());
}

#[test]
fn busybox_image_is_deterministic() {
    if !std::path::Path::new(BUSYBOX).is_file() {
        println!("SKIPPED busybox_image_is_deterministic: {BUSYBOX} missing");
        return;
    }
    let image = build(&ImageSpec::busybox());
    assert_eq!(image.digest, build(&ImageSpec::busybox()).digest);
    let manifest: Value = serde_json::from_slice(&image.manifest).expect("manifest JSON");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG);
    assert_eq!(manifest["layers"][0]["mediaType"], OCI_LAYER_GZIP);
    let config: Value = serde_json::from_slice(&image.config).expect("config JSON");
    assert_eq!(config["rootfs"]["diff_ids"][0], *image.layers[0].diff_id);
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["Cmd"][0], "sh");
    let listing = listing(&image.layers[0].tar);
    for want in [
        "Symlink bin/stat -> busybox 0",
        "Directory tmp 0",
        "Regular etc/group 39",
    ] {
        assert!(
            listing.iter().any(|l| l == want),
            "{want} not in {listing:#?}"
        );
    }
    println!(
        "busybox layer: {} entries, {} bytes gzip",
        listing.len(),
        image.layers[0].blob.len()
    );
}

fn small_image() -> BuiltImage {
    build(&ImageSpec {
        layers: vec![Layer::new(vec![Entry::file("hello", b"hello\n", 0o644)])],
        config: serde_json::json!({"Cmd": ["cat", "/hello"]}),
        architecture: host_arch().into(),
        docker_media_types: false,
    })
}

#[tokio::test]
async fn counts_blob_gets_and_serves_what_is_on_disk() {
    if !registry::available("counts_blob_gets_and_serves_what_is_on_disk") {
        return;
    }
    let registry = Registry::start();
    let image = small_image();
    let host = registry.host();
    let digest = push(&host, "t/small", "v1", &image, None)
        .await
        .expect("push");
    assert_eq!(digest, image.digest);
    // Pushing again finds every blob and changes nothing.
    assert_eq!(
        push(&host, "t/small", "v1", &image, None)
            .await
            .expect("push again"),
        digest
    );
    let layer = &image.layers[0];
    let path = format!("/v2/t/small/blobs/{}", layer.digest);
    // The push's HEADs are not GETs.
    assert_eq!(
        registry.blob_gets("t/small", &layer.digest),
        0,
        "{}",
        registry.log()
    );
    let resp = registry.get(&path, &[]).expect("GET blob");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, layer.blob);
    assert_eq!(
        registry.blob_gets("t/small", &layer.digest),
        1,
        "{}",
        registry.log()
    );
    assert_eq!(registry.blob_gets("t/other", &layer.digest), 0);

    // No descriptor cache: a blob changed on disk is served as it now is.
    let data = registry.blob_data_path(&layer.digest);
    let mut corrupt = layer.blob.clone();
    corrupt.truncate(corrupt.len() - 1);
    corrupt.push(b'!');
    corrupt.push(b'!');
    fs::write(&data, &corrupt).expect("corrupting the blob");
    let resp = registry.get(&path, &[]).expect("GET corrupted blob");
    assert_eq!((resp.status, resp.body), (200, corrupt));
    let moved = data.with_extension("moved");
    fs::rename(&data, &moved).expect("moving the blob away");
    assert_eq!(registry.get(&path, &[]).expect("GET").status, 404);
    fs::rename(&moved, &data).expect("moving the blob back");
    assert_eq!(registry.get(&path, &[]).expect("GET").status, 200);
    assert_eq!(registry.blob_gets("t/small", &layer.digest), 3);

    let root = registry.storage_root();
    assert!(root.is_dir());
    drop(registry);
    assert!(!root.exists(), "the tempdir outlived the registry");
    assert!(
        http_get(&host, "/v2/", &[]).is_err(),
        "the registry outlived Drop"
    );
}

#[tokio::test]
async fn basic_auth_is_enforced_over_plain_http() {
    if !registry::available("basic_auth_is_enforced_over_plain_http") {
        return;
    }
    let registry = Registry::start_with_basic_auth("alice", "s3cret");
    let host = registry.host();
    let anonymous = http_get(&host, "/v2/", &[]).expect("GET /v2/");
    assert_eq!(anonymous.status, 401);
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic "), "{challenge}");
    println!("anonymous GET /v2/: 401, WWW-Authenticate: {challenge}");
    assert_eq!(registry.get("/v2/", &[]).expect("GET /v2/").status, 200);

    let image = small_image();
    let wrong = push(&host, "t/a", "v1", &image, Some(("alice", "nope"))).await;
    let err = wrong.expect_err("a push with a wrong password succeeded");
    println!("push with a wrong password: {err:#}");
    let anon = push(&host, "t/a", "v1", &image, None).await;
    assert!(anon.is_err(), "an anonymous push succeeded");
    let digest = push(&host, "t/a", "v1", &image, registry.credentials())
        .await
        .expect("pushing with credentials");
    assert_eq!(digest, image.digest);
    let resp = registry.get_manifest("t/a", "v1").expect("GET manifest");
    assert_eq!((resp.status, resp.body), (200, image.manifest));
    let resp = http_get(
        &host,
        "/v2/t/a/manifests/v1",
        &[("Accept", MANIFEST_ACCEPT)],
    )
    .expect("GET");
    assert_eq!(resp.status, 401);
}

/// Fetches `repo:tag` and `repo@digest` and checks both are the manifest of that digest.
fn check_manifest(reg: &Registry, repo: &str, tag: &str, digest: &str, media_type: &str) {
    for reference in [tag, digest] {
        let resp = reg.get_manifest(repo, reference).expect("GET manifest");
        let body = String::from_utf8_lossy(&resp.body);
        assert_eq!(resp.status, 200, "{repo}:{reference}: {body}");
        assert_eq!(sha256_digest(&resp.body), digest, "{repo}:{reference}");
        assert_eq!(resp.header("content-type"), Some(media_type));
        assert_eq!(resp.header("docker-content-digest"), Some(digest));
    }
    println!("{repo}:{tag} = {digest} ({media_type})");
}

#[tokio::test]
async fn push_images_indexes_and_docker_types() {
    if !registry::available("push_images_indexes_and_docker_types") {
        return;
    }
    let reg = Registry::start();
    let host = reg.host();
    let amd64 = build(&ImageSpec {
        architecture: "amd64".into(),
        ..ImageSpec::busybox()
    });
    let digest = push(&host, "busybox", "latest", &amd64, None)
        .await
        .expect("push busybox");
    assert_eq!(digest, amd64.digest);
    check_manifest(&reg, "busybox", "latest", &digest, OCI_MANIFEST);
    let config = reg
        .get(&format!("/v2/busybox/blobs/{}", amd64.config_digest), &[])
        .expect("GET config");
    assert_eq!(config.body, amd64.config);
    assert_eq!(reg.blob_gets("busybox", &amd64.config_digest), 1);

    let arm64 = build(&ImageSpec {
        architecture: "arm64".into(),
        ..ImageSpec::busybox()
    });
    let entries = [(&amd64, "amd64"), (&arm64, "arm64")];
    for (docker_list, media_type) in [(false, OCI_INDEX), (true, DOCKER_MANIFEST_LIST)] {
        let tag = format!("multi-{docker_list}");
        let digest = push_index(&host, "multi", &tag, &entries, docker_list, None)
            .await
            .expect("push index");
        assert_eq!(digest, index(&entries, docker_list).1);
        check_manifest(&reg, "multi", &tag, &digest, media_type);
        check_manifest(&reg, "multi", &arm64.digest, &arm64.digest, OCI_MANIFEST);
        let index: Value =
            serde_json::from_slice(&reg.get_manifest("multi", &tag).expect("GET").body)
                .expect("index JSON");
        assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64");
    }

    let mut spec = ImageSpec {
        docker_media_types: true,
        ..ImageSpec::busybox()
    };
    let zstd = Layer {
        entries: vec![Entry::file("etc/motd", b"zstd\n", 0o644)],
        compression: Compression::Zstd,
    };
    let plain = Layer {
        entries: vec![Entry::whiteout("etc/motd")],
        compression: Compression::None,
    };
    spec.layers.extend([zstd, plain]);
    let docker = build(&spec);
    let types: Vec<&str> = docker.layers.iter().map(|l| l.media_type).collect();
    assert_eq!(types, [DOCKER_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER]);
    assert_eq!(docker.config_media_type, DOCKER_CONFIG);
    let digest = push(&host, "docker", "v2", &docker, None)
        .await
        .expect("push docker image");
    check_manifest(&reg, "docker", "v2", &digest, DOCKER_MANIFEST);

    // A hand-made manifest goes through the registry primitives.
    let client = registry::registry_client(&host, None)
        .await
        .expect("client");
    let by_digest = registry::reference(&host, "busybox", &amd64.digest);
    let again = registry::put_manifest(&client, &by_digest, &amd64.manifest, OCI_MANIFEST).await;
    assert_eq!(again.expect("PUT by digest"), amd64.digest);
}
