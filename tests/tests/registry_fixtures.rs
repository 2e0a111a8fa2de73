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
        vessel_tests::skipped(
            "busybox_image_is_deterministic",
            &format!("{BUSYBOX} missing"),
        );
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

/// The JSON of a JWT's header and claims.
fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let decode = |part: &str| {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url");
        serde_json::from_slice::<Value>(&json).expect("JWT JSON")
    };
    (decode(parts[0]), decode(parts[1]))
}

#[test]
fn rfc3339_dates() {
    use vessel_tests::token_auth::rfc3339;
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
}

#[test]
fn token_auth_challenges_and_verifies_tokens() {
    if !registry::available("token_auth_challenges_and_verifies_tokens") {
        return;
    }
    let reg = Registry::start_with_token_auth("bob", "t0ken");
    let host = reg.host();
    assert_eq!(reg.credentials(), Some(("bob", "t0ken")));
    let anonymous = http_get(&host, "/v2/", &[]).expect("GET /v2/");
    assert_eq!(anonymous.status, 401);
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    println!("anonymous GET /v2/: 401, WWW-Authenticate: {challenge}");
    let realm = challenge
        .strip_prefix("Bearer realm=\"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(realm, _)| realm)
        .unwrap_or_else(|| panic!("not a Bearer challenge: {challenge}"));
    assert!(
        challenge.contains("service=\"vessel-test-registry\""),
        "{challenge}"
    );
    // Basic credentials are no good at the registry itself.
    let basic = basic_auth("bob", "t0ken");
    let resp = http_get(&host, "/v2/", &[("Authorization", &basic)]).expect("GET");
    assert_eq!(resp.status, 401);

    // The token server.
    let (token_host, token_path) = realm
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .expect("an http realm");
    let token_path = format!("/{token_path}");
    let query = "?service=vessel-test-registry&scope=repository%3At%2Fa%3Apull%2Cpush\
                 &scope=repository:t/b:pull&account=bob";
    let url = format!("{token_path}{query}");
    let resp = http_get(token_host, &url, &[]).expect("GET token anonymously");
    assert_eq!(resp.status, 401);
    let wrong = basic_auth("bob", "nope");
    let resp = http_get(token_host, &url, &[("Authorization", &wrong)]).expect("GET token");
    assert_eq!(resp.status, 401);
    let other_service = format!("{token_path}?service=elsewhere&scope=repository:t/a:pull");
    let resp = http_get(token_host, &other_service, &[("Authorization", &basic)]).expect("GET");
    assert_eq!(resp.status, 400);
    let resp = http_get(token_host, &url, &[("Authorization", &basic)]).expect("GET token");
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let body: Value = serde_json::from_slice(&resp.body).expect("token JSON");
    println!("token response: {body}");
    let token = body["token"].as_str().expect("a token").to_string();
    assert_eq!(body["access_token"], *token);
    assert_eq!(body["expires_in"], 300);
    let issued_at = body["issued_at"].as_str().expect("issued_at");
    assert!(
        issued_at.len() == 20 && issued_at.ends_with('Z') && issued_at.as_bytes()[10] == b'T',
        "{issued_at}"
    );
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5c"].as_array().map(Vec::len), Some(1));
    assert_eq!(claims["iss"], "vessel-test-issuer");
    assert_eq!(
        (&claims["sub"], &claims["aud"]),
        (&"bob".into(), &"vessel-test-registry".into())
    );
    assert_eq!(
        claims["access"],
        serde_json::json!([
            {"type": "repository", "name": "t/a", "actions": ["pull", "push"]},
            {"type": "repository", "name": "t/b", "actions": ["pull"]},
        ])
    );
    let exp = claims["exp"].as_u64().expect("exp");
    assert_eq!(exp - claims["iat"].as_u64().expect("iat"), 300);

    // The registry takes the token for its repositories, and only for those.
    let bearer = |token: &str| format!("Bearer {token}");
    let get = |path: &str, token: &str| {
        let resp = http_get(&host, path, &[("Authorization", &bearer(token))]).expect("GET");
        (
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        )
    };
    assert_eq!(get("/v2/", &token).0, 200);
    let (status, body) = get("/v2/t/a/tags/list", &token);
    assert_eq!(status, 404, "{body}"); // NAME_UNKNOWN: let in, nothing pushed yet
    assert_eq!(get("/v2/t/b/tags/list", &token).0, 404);
    let (status, body) = get("/v2/t/c/tags/list", &token);
    assert_eq!(status, 401, "{body}");
    println!("t/c with a token for t/a and t/b: {status} {body}");

    // issue_token makes the same kind of token, without the server.
    let direct = reg.issue_token("t/c", &["pull"]);
    assert_eq!(
        jwt_parts(&direct).1["access"][0]["actions"],
        serde_json::json!(["pull"])
    );
    assert_eq!(get("/v2/t/c/tags/list", &direct).0, 404);
    assert_eq!(get("/v2/", &reg.issue_token("", &[])).0, 200);
    assert_eq!(reg.get("/v2/t/c/tags/list", &[]).expect("GET").status, 404);

    // A tampered signature, or a key the registry does not trust, is refused.
    // (Its first character: the last one of 342 carries 4 padding bits, which Go ignores.)
    let (signed, signature) = direct.rsplit_once('.').expect("a signature");
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{signed}.{flipped}{}", &signature[1..]);
    let (status, body) = get("/v2/", &tampered);
    assert_eq!(status, 401, "{body}");
    let stranger = vessel_tests::token_auth::TokenServer::start("bob", "t0ken");
    let (status, body) = get("/v2/", &stranger.issue("t/c", &["pull"]));
    assert_eq!(status, 401, "{body}");
    // What the registry logged: the x5c chain is checked against rootcertbundle.
    let log = reg.log();
    assert!(log.contains("unable to verify token signature"), "{log}");
    assert!(log.contains("unable to verify certificate chain"), "{log}");
    let requests = reg.token_requests();
    assert_eq!(requests.len(), 4, "{requests:#?}");
    assert!(requests[3].starts_with("200 /token?"), "{requests:#?}");

    let token_addr = token_host.to_string();
    drop(reg);
    assert!(
        http_get(&host, "/v2/", &[]).is_err(),
        "the registry outlived Drop"
    );
    assert!(
        http_get(&token_addr, "/token", &[]).is_err(),
        "the token server outlived Drop"
    );
}

#[tokio::test]
async fn token_auth_push_and_pull_with_oci_client() {
    use oci_client::secrets::RegistryAuth;
    if !registry::available("token_auth_push_and_pull_with_oci_client") {
        return;
    }
    let reg = Registry::start_with_token_auth("bob", "t0ken");
    let host = reg.host();
    let image = small_image();

    let wrong = push(&host, "t/tok", "v1", &image, Some(("bob", "nope"))).await;
    let err = wrong.expect_err("a push with a wrong password succeeded");
    println!("push with a wrong password: {err:#}");
    assert!(reg.token_requests().iter().all(|r| r.starts_with("401 ")));
    let anon = push(&host, "t/tok", "v1", &image, None).await;
    assert!(anon.is_err(), "an anonymous push succeeded");

    // Basic credentials: oci-client gets tokens from the realm itself.
    let digest = push(&host, "t/tok", "v1", &image, reg.credentials())
        .await
        .expect("pushing with credentials");
    assert_eq!(digest, image.digest);
    let requests = reg.token_requests();
    println!("token requests: {requests:#?}");
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("200 ") && r.contains("%3Apull%2Cpush")),
        "{requests:#?}"
    );
    let resp = reg.get_manifest("t/tok", "v1").expect("GET manifest");
    assert_eq!((resp.status, &resp.body), (200, &image.manifest));

    let accepted = vec![OCI_LAYER_GZIP];
    let pull = |auth: RegistryAuth, repo: &'static str| {
        let (host, accepted) = (host.clone(), accepted.clone());
        async move {
            let client = registry::registry_client(&host, None).await?;
            let reference = registry::reference(&host, repo, "v1");
            anyhow::Ok(client.pull(&reference, &auth, accepted).await?)
        }
    };
    let basic = RegistryAuth::Basic("bob".into(), "t0ken".into());
    let pulled = pull(basic, "t/tok").await.expect("pull with Basic");
    assert_eq!(pulled.digest.as_deref(), Some(image.digest.as_str()));
    assert_eq!(pulled.layers[0].data, image.layers[0].blob);
    let wrong = RegistryAuth::Basic("bob".into(), "nope".into());
    assert!(pull(wrong, "t/tok").await.is_err());
    assert!(pull(RegistryAuth::Anonymous, "t/tok").await.is_err());

    // A token handed over as is.
    let bearer = RegistryAuth::Bearer(reg.issue_token("t/tok", &["pull"]));
    let pulled = pull(bearer.clone(), "t/tok")
        .await
        .expect("pull with Bearer");
    assert_eq!(pulled.config.data, image.config);
    let Err(err) = pull(bearer.clone(), "t/other").await else {
        panic!("pulled another repository with a t/tok token");
    };
    println!("pull of another repository with a t/tok token: {err:#}");
    let push_with = |auth: RegistryAuth, repo: &'static str| {
        let (host, image) = (host.clone(), &image);
        async move {
            let client = registry::registry_client(&host, None).await?;
            client.store_auth_if_needed(&host, &auth).await;
            let reference = registry::reference(&host, repo, "v1");
            registry::push_blobs(&client, &reference, &image.blobs()).await?;
            registry::put_manifest(&client, &reference, &image.manifest, image.media_type).await
        }
    };
    let err = push_with(bearer, "t/tok")
        .await
        .expect_err("pushed with a pull token");
    println!("push with a pull-only token: {err:#}");
    let bearer = RegistryAuth::Bearer(reg.issue_token("t/bearer", &["pull", "push"]));
    let digest = push_with(bearer, "t/bearer")
        .await
        .expect("push with Bearer");
    assert_eq!(digest, image.digest);
    let resp = reg.get_manifest("t/bearer", "v1").expect("GET manifest");
    assert_eq!((resp.status, resp.body), (200, image.manifest.clone()));
}
