//! The full CRI flow on a pulled image: PullImage → RunPodSandbox → CreateContainer →
//! StartContainer → ExecSync, in a real pod VM. The image has three layers (gzip, zstd,
//! uncompressed) with a whiteout and an opaque directory, and a config whose Entrypoint, Cmd,
//! Env, WorkingDir and User the container gets because the CRI config leaves them empty.

use serde_json::json;
use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, exec_sh, image_status, pod_config, pull, remove_pod_checked, wait_state,
    Daemon,
};
use vessel_tests::images::{build, busybox_layer, push, Compression, Entry, ImageSpec, Layer};
use vessel_tests::registry::{self, Registry};
use vessel_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_image_runs_with_whiteouts_and_config_defaults() {
    let test = "pulled_image_runs_with_whiteouts_and_config_defaults";
    let Some(env) = TestEnv::detect(test) else {
        return;
    };
    if !registry::available(test) {
        return;
    }
    let reg = Registry::start();
    let mut base = busybox_layer();
    base.entries.extend([
        Entry::file("etc/motd", b"hidden by a whiteout\n", 0o644),
        Entry::dir("data", 0o777),
        Entry::dir("data/old", 0o755),
        Entry::file("data/old/a", b"a", 0o644),
        Entry::file("data/old/b", b"b", 0o644),
        Entry::file("data/keep", b"kept", 0o644),
    ]);
    let upper = Layer {
        entries: vec![
            Entry::dir("data", 0o777),
            Entry::dir("data/old", 0o755),
            Entry::whiteout("etc/motd"),
            Entry::opaque("data/old"),
            Entry::file("data/old/new", b"new", 0o644),
        ],
        compression: Compression::Zstd,
    };
    let top = Layer {
        entries: vec![
            Entry::dir("data", 0o777),
            Entry::file_owned("data/top", b"top", 0o640, 1000, 1000),
        ],
        compression: Compression::None,
    };
    let image = build(&ImageSpec {
        layers: vec![base, upper, top],
        config: json!({
            "Entrypoint": ["sh", "-c"],
            "Cmd": ["echo started as $(id -u) in $(pwd) with $GREETING; exec sleep 1000"],
            "Env": ["PATH=/bin", "GREETING=hello-from-config"],
            "WorkingDir": "/data",
            "User": "1000:1000",
        }),
        ..ImageSpec::busybox()
    });
    push(&reg.host(), "layers", "v1", &image, None)
        .await
        .unwrap();
    let reference = format!("{}/layers:v1", reg.host());

    let daemon = Daemon::start().await;
    let mut images = daemon.image_client().await;
    let id = pull(&mut images, &reference, None)
        .await
        .expect("PullImage");
    assert_eq!(id, image.config_digest);

    let mut cri = daemon.client().await;
    let logs = env.state_dir().join("logs");
    let config = pod_config("pulled", &logs);
    let pod = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: vessel_tests::cri::test_handler(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    // No command, args, env, workdir or user: the image config's apply.
    let ctr = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("app", &reference, &[])),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("StartContainer");
    let status = wait_state(&mut cri, &ctr, cri::ContainerState::ContainerRunning).await;
    // CRI's image_ref is the repo digest (kubectl's imageID), image_id the image id.
    assert_eq!(
        status.image_ref,
        format!("{}/layers@{}", reg.host(), image.digest)
    );
    assert_eq!(status.image_id, image.config_digest);

    // Whiteout: gone; opaque dir: only the upper layer's file; lower files kept.
    assert_eq!(exec_sh(&mut cri, &ctr, "test -e /etc/motd").await.0, 1);
    assert_eq!(
        exec_sh(&mut cri, &ctr, "ls /data/old").await,
        (0, "new\n".into())
    );
    assert_eq!(
        exec_sh(&mut cri, &ctr, "cat /data/keep /data/top").await,
        (0, "kepttop".into())
    );
    assert_eq!(
        exec_sh(&mut cri, &ctr, "ls -ln /data/top")
            .await
            .1
            .split_whitespace()
            .nth(2),
        Some("1000")
    );
    // Config defaults: user, workdir, env; the entrypoint + cmd ran (its log line).
    assert_eq!(
        exec_sh(&mut cri, &ctr, "id -u; pwd; echo $GREETING").await,
        (0, "1000\n/data\nhello-from-config\n".into())
    );
    let log = std::fs::read_to_string(&status.log_path).expect("container log");
    assert!(
        log.contains("started as 1000 in /data with hello-from-config"),
        "{log}"
    );
    // Writes land in the container's upper dir, not in the shared image layers.
    assert_eq!(
        exec_sh(
            &mut cri,
            &ctr,
            "echo w > /data/written && cat /data/written"
        )
        .await,
        (0, "w\n".into())
    );
    let layers = daemon.root().join("images/layers");
    let written = walk(&layers).into_iter().any(|p| p.ends_with("written"));
    assert!(!written, "a container write reached an image layer");

    // Removing the image while the container lives keeps the layers under its rootfs.
    images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage");
    assert!(image_status(&mut images, &reference).await.is_none());
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 3);
    assert_eq!(
        exec_sh(&mut cri, &ctr, "cat /data/keep").await,
        (0, "kept".into())
    );

    cri.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer");
    cri.remove_container(cri::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("RemoveContainer");
    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
