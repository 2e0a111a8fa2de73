//! Image pulls that must not go wrong: hostile layers (path traversal, symlink escapes, hard
//! links to outside) are refused and write nothing outside the store; a blob whose digest does
//! not match is refused; an interrupted pull (a blob missing upstream, the daemon killed
//! mid-download) leaves no image and a retry succeeds; concurrent pulls download once.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cri::{can_pull, image_status, pull, Daemon, ImageClient};
use vessel_tests::images::{
    build, busybox_layer, noise, push, BuiltImage, Compression, Entry, ImageSpec, Layer,
};
use vessel_tests::registry::Registry;

/// Busybox plus one layer of `entries`.
fn with_layer(entries: Vec<Entry>, compression: Compression) -> BuiltImage {
    build(&ImageSpec {
        layers: vec![
            busybox_layer(),
            Layer {
                entries,
                compression,
            },
        ],
        config: json!({"Cmd": ["sh"]}),
        ..ImageSpec::busybox()
    })
}

async fn image_count(images: &mut ImageClient) -> usize {
    images
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images
        .len()
}

/// Entries of a directory (none when it is missing).
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_and_bad_blobs_are_refused() {
    let test = "hostile_layers_and_bad_blobs_are_refused";
    if !can_pull(test) {
        return;
    }
    let reg = Registry::start();
    let host = reg.host();
    let daemon = Daemon::start().await;
    let mut images = daemon.image_client().await;
    let outside = tempfile::Builder::new()
        .prefix("vessel-outside-")
        .tempdir_in("/tmp")
        .unwrap();
    let target = outside.path().display().to_string();
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();

    let absolute = format!("{target}/abs");
    let hostile: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "dotdot",
            vec![Entry::raw_file(b"../../../evil", b"x")],
            "../../../evil",
        ),
        (
            "absolute",
            vec![Entry::raw_file(absolute.as_bytes(), b"x")],
            &absolute,
        ),
        (
            "symlink-abs",
            vec![
                Entry::raw_symlink(b"link", target.as_bytes()),
                Entry::raw_file(b"link/pwned", b"x"),
            ],
            "link/pwned",
        ),
        (
            "symlink-rel",
            vec![
                Entry::raw_symlink(b"up", format!("../../../../../../..{target}").as_bytes()),
                Entry::raw_file(b"up/pwned", b"x"),
            ],
            "up/pwned",
        ),
        (
            "hardlink-abs",
            vec![Entry::raw_hardlink(b"hl", b"/etc/passwd")],
            "hl",
        ),
        (
            "hardlink-rel",
            vec![Entry::raw_hardlink(
                b"hl",
                b"../../../../../../../etc/passwd",
            )],
            "hl",
        ),
    ];
    for (repo, layer, entry) in hostile {
        let image = with_layer(layer, Compression::Gzip);
        push(&host, &format!("hostile/{repo}"), "v1", &image, None)
            .await
            .unwrap();
        let reference = format!("{host}/hostile/{repo}:v1");
        let err = pull(&mut images, &reference, None).await.unwrap_err();
        assert!(err.message().contains(entry), "{repo}: {err:?}");
        assert!(
            image_status(&mut images, &reference).await.is_none(),
            "{repo}"
        );
    }
    assert!(
        entries(outside.path()).is_empty(),
        "written outside: {:?}",
        entries(outside.path())
    );
    assert_eq!(
        std::fs::metadata("/etc/passwd").unwrap().nlink(),
        passwd_links
    );
    let root = daemon.root();
    for escaped in ["evil", "images/evil", "images/layers/evil"] {
        assert!(!root.join(escaped).exists(), "{escaped}");
    }
    // No hostile layer was kept: at most the busybox base layer (whose unpack may still be
    // finishing beside a refused one, or may have been cancelled with it) is there.
    let base = busybox_layer().build(false).unwrap().diff_id;
    let base = base.trim_start_matches("sha256:");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = entries(&root.join("images/layers"));
        if left
            .iter()
            .all(|p| p.file_name().is_some_and(|n| n == base))
        {
            break;
        }
        assert!(Instant::now() < deadline, "layers left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(image_count(&mut images).await, 0);

    // A blob whose bytes do not match its digest (same size) is refused, not stored.
    let image = with_layer(
        vec![Entry::file("corrupt", &noise(1, 4096), 0o644)],
        Compression::None,
    );
    push(&host, "corrupt", "v1", &image, None).await.unwrap();
    let data = reg.blob_data_path(&image.layers[1].digest);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[2048] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let err = pull(&mut images, &format!("{host}/corrupt:v1"), None)
        .await
        .unwrap_err();
    assert!(
        err.message().contains("does not match its digest"),
        "{err:?}"
    );
    assert!(err.message().contains(&image.layers[1].digest), "{err:?}");
    let hex = image.layers[1].digest.trim_start_matches("sha256:");
    assert!(!root.join("images/content/blobs/sha256").join(hex).exists());
    assert!(entries(&root.join("images/content/ingest")).is_empty());
    assert_eq!(image_count(&mut images).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pulls_leave_nothing_and_concurrent_pulls_share_downloads() {
    let test = "interrupted_pulls_leave_nothing_and_concurrent_pulls_share_downloads";
    if !can_pull(test) {
        return;
    }
    let reg = Registry::start();
    let host = reg.host();
    let mut daemon = Daemon::start().await;
    let mut images = daemon.image_client().await;

    // A layer missing upstream: the pull fails, nothing is visible; back, the retry works.
    let image = with_layer(
        vec![Entry::file("gone", &noise(2, 1 << 20), 0o644)],
        Compression::Gzip,
    );
    push(&host, "broken", "v1", &image, None).await.unwrap();
    let reference = format!("{host}/broken:v1");
    let data = reg.blob_data_path(&image.layers[1].digest);
    let moved = data.with_extension("moved");
    std::fs::rename(&data, &moved).unwrap();
    let err = pull(&mut images, &reference, None).await.unwrap_err();
    assert!(err.message().contains(&image.layers[1].digest), "{err:?}");
    assert!(image_status(&mut images, &reference).await.is_none());
    assert_eq!(image_count(&mut images).await, 0);
    std::fs::rename(&moved, &data).unwrap();
    assert_eq!(
        pull(&mut images, &reference, None).await.unwrap(),
        image.config_digest
    );

    // The daemon killed while a large layer downloads: after a restart there is no image and
    // no partial download, and the retry succeeds.
    let big = with_layer(
        vec![Entry::file("big", &noise(3, 96 << 20), 0o644)],
        Compression::None,
    );
    push(&host, "big", "v1", &big, None).await.unwrap();
    let reference = format!("{host}/big:v1");
    let ingest = daemon.root().join("images/content/ingest");
    let pulling = {
        let mut images = daemon.image_client().await;
        let reference = reference.clone();
        tokio::spawn(async move { pull(&mut images, &reference, None).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while entries(&ingest).is_empty() {
        assert!(Instant::now() < deadline, "the download never started");
        assert!(
            !pulling.is_finished(),
            "the pull finished before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    daemon.kill();
    assert!(pulling.await.unwrap().is_err());
    daemon.restart().await;
    let mut images = daemon.image_client().await;
    assert!(image_status(&mut images, &reference).await.is_none());
    assert!(entries(&ingest).is_empty(), "{:?}", entries(&ingest));
    assert_eq!(
        pull(&mut images, &reference, None).await.unwrap(),
        big.config_digest
    );

    // Two pulls of one new image at once: one download of each blob.
    let shared = with_layer(
        vec![Entry::file("shared", &noise(4, 8 << 20), 0o644)],
        Compression::Zstd,
    );
    push(&host, "shared", "v1", &shared, None).await.unwrap();
    let reference = format!("{host}/shared:v1");
    let mut a = daemon.image_client().await;
    let mut b = daemon.image_client().await;
    let (ra, rb) = tokio::join!(
        pull(&mut a, &reference, None),
        pull(&mut b, &reference, None)
    );
    assert_eq!(ra.unwrap(), shared.config_digest);
    assert_eq!(rb.unwrap(), shared.config_digest);
    // (The busybox base layer was in the store already: not fetched at all.)
    for digest in [&shared.config_digest, &shared.layers[1].digest] {
        assert_eq!(reg.blob_gets("shared", digest), 1, "{digest}");
    }
    assert_eq!(reg.blob_gets("shared", &shared.layers[0].digest), 0);
    let err = pull(&mut images, &format!("{host}/shared:nope"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}
