//! Benchmark of image pulls: PullImage through the CRI socket of a real vessel-shim daemon
//! (manifest, config, four layers of about 50 MB each (gzip, zstd, uncompressed, gzip) fetched
//! from a local registry, verified, stored and unpacked), against the floor: plain HTTP GETs
//! of the same blobs from the same registry into memory. Prints MB/s of each and their ratio;
//! every pull starts cold (the image removed, its blobs and layers collected, and the disk
//! synced before).
//!
//! Run: `cargo run --release -p vessel-tests --bin bench_pull` (as root;
//! `cargo build --release -p vessel-shim` first, the daemon is started from the same target
//! dir).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vessel_protocols::cri;
use vessel_tests::cri::{pull, shim_binary, Daemon, ImageClient};
use vessel_tests::images::{
    build, busybox_layer, noise, push, BuiltImage, Compression, Entry, ImageSpec, Layer,
    MANIFEST_ACCEPT,
};
use vessel_tests::registry::{self, Registry};

const RUNS: usize = 3;
const MB: f64 = 1e6;

/// About 200 MB of content in four layers that exercise every unpack path: many small files,
/// a few large ones, incompressible and compressible data.
fn big_image() -> BuiltImage {
    let small_files = |seed: u64, count: usize, size: usize| -> Vec<Entry> {
        (0..count)
            .map(|i| {
                let mut data = noise(seed + i as u64, size / 2);
                data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, size / 2));
                Entry::file(&format!("small{seed}/f{i:05}"), &data, 0o644)
            })
            .collect()
    };
    let with_dir = |dir: &str, mut entries: Vec<Entry>| {
        entries.insert(0, Entry::dir(dir, 0o755));
        entries
    };
    let layers = vec![
        Layer {
            entries: with_dir("small1", small_files(1, 1000, 50_000)),
            compression: Compression::Gzip,
        },
        Layer {
            entries: with_dir(
                "big2",
                (0..50)
                    .map(|i| Entry::file(&format!("big2/f{i}"), &noise(100 + i, 1_000_000), 0o644))
                    .collect(),
            ),
            compression: Compression::Zstd,
        },
        Layer {
            entries: with_dir("small3", small_files(3, 10_000, 5_000)),
            compression: Compression::None,
        },
        Layer {
            entries: vec![Entry::file("blob4", &noise(4, 65_000_000), 0o644)],
            compression: Compression::Gzip,
        },
    ];
    let mut all = vec![busybox_layer()];
    all.extend(layers);
    build(&ImageSpec {
        layers: all,
        ..ImageSpec::busybox()
    })
}

fn mbps(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / MB / took.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("run as root (layers keep ownership and device nodes)");
    }
    if !registry::available("bench_pull") {
        bail!("docker-registry missing (scripts/setup.sh installs it)");
    }
    let shim = shim_binary();
    ensure!(
        shim.is_file(),
        "{} missing (cargo build --release -p vessel-shim)",
        shim.display()
    );
    let built = Instant::now();
    let image = big_image();
    let blobs: Vec<(&str, usize)> = std::iter::once((image.digest.as_str(), image.manifest.len()))
        .chain(image.blobs().into_iter().map(|(d, b)| (d, b.len())))
        .collect();
    let total: usize = blobs.iter().map(|(_, n)| n).sum();
    let unpacked: usize = image.layers.iter().map(|l| l.tar.len()).sum();
    println!(
        "image: {} layers, {:.1} MB of blobs, {:.1} MB unpacked (built in {:.1} s)",
        image.layers.len(),
        total as f64 / MB,
        unpacked as f64 / MB,
        built.elapsed().as_secs_f64()
    );
    let reg = Registry::start();
    push(&reg.host(), "bench/big", "v1", &image, None)
        .await
        .context("push the benchmark image")?;
    let reference = format!("{}/bench/big:v1", reg.host());
    let daemon = Daemon::start().await;
    let mut images = daemon.image_client().await;

    let mut floor = Vec::new();
    let mut pulls = Vec::new();
    for run in 0..RUNS {
        // Floor: every blob over plain HTTP into memory.
        let started = Instant::now();
        let mut got = 0;
        for (digest, size) in &blobs {
            let path = if *digest == image.digest {
                format!("/v2/bench/big/manifests/{digest}")
            } else {
                format!("/v2/bench/big/blobs/{digest}")
            };
            let response = reg.get(&path, &[("Accept", MANIFEST_ACCEPT)])?;
            ensure!(response.status == 200, "GET {path}: {}", response.status);
            ensure!(response.body.len() == *size, "GET {path}: short body");
            got += response.body.len();
        }
        floor.push(mbps(got, started.elapsed()));

        // PullImage, cold.
        let started = Instant::now();
        let id = pull(&mut images, &reference, None)
            .await
            .context("PullImage")?;
        let took = started.elapsed();
        ensure!(id == image.config_digest, "pulled {id}");
        pulls.push(mbps(total, took));
        println!(
            "run {run}: floor {:.0} MB/s, pull+unpack {:.0} MB/s ({:.2} s, {:.0} MB/s unpacked)",
            floor[run],
            pulls[run],
            took.as_secs_f64(),
            mbps(unpacked, took)
        );
        remove(&mut images, &id).await?;
        // Each run starts with the last one's writes and deletions flushed, so dirty-page
        // writeback of one run does not throttle the next.
        nix::unistd::sync();
    }
    let (floor, pull) = (median(floor), median(pulls));
    println!(
        "median of {RUNS}: pull+unpack {pull:.0} MB/s vs raw blob read {floor:.0} MB/s: ratio {:.2} (floor / pull {:.1}x)",
        pull / floor,
        floor / pull
    );
    Ok(())
}

async fn remove(images: &mut ImageClient, id: &str) -> Result<()> {
    images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: id.into(),
                ..Default::default()
            }),
        })
        .await
        .context("RemoveImage")?;
    Ok(())
}
