//! Volumes and devices as kubelet uses them, through the real CRI socket: configMap updates
//! (the `..data` swap) reaching running containers, a symlinked host path, devices the VM has,
//! an emptyDir of medium Memory as a tmpfs of the pod, mount propagation (rslave sees later host
//! mounts, rprivate does not), refusals of what a VM cannot give (bidirectional mounts, host
//! devices).

use std::time::Duration;

use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, create_container, exec_sh, expect_err, native_run, pod_config,
    remove_pod_checked, run_pod, start_container, wait_exec_output, CriTest,
};

/// Writes `key` = `value` into `dir` as kubelet's atomic writer does for configMap, secret and
/// projected volumes: a new timestamped dir, `..data` swapped to it by rename, `key` a symlink
/// through `..data`.
fn kubelet_write(dir: &std::path::Path, generation: u32, key: &str, value: &str) {
    use std::os::unix::fs::symlink;
    let stamp = format!("..2026_12_03_00_00_0{generation}.000000001");
    std::fs::create_dir_all(dir.join(&stamp)).expect("volume generation dir");
    std::fs::write(dir.join(&stamp).join(key), value).expect("volume file");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let link = dir.join(key);
    if link.symlink_metadata().is_err() {
        symlink(format!("..data/{key}"), link).expect("key symlink");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_and_devices_as_kubelet_uses_them() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("volumes_and_devices_as_kubelet_uses_them").await
    else {
        return;
    };
    let config = pod_config("volumes", &env.state_dir().join("logs"));
    let pod = run_pod(&mut cri, &config).await;
    let configmap = env.state_dir().join("configmap");
    kubelet_write(&configmap, 1, "color", "blue");

    // A host path that is a symlink mounts what it points to.
    let linked = env.state_dir().join("configmap-link");
    std::os::unix::fs::symlink(&configmap, &linked).expect("symlink to the volume");
    let mut app = container_config("app", &image, &["sleep", "1000"]);
    app.mounts = vec![
        cri::Mount {
            container_path: "/etc/config".into(),
            host_path: configmap.display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/etc/linked".into(),
            host_path: linked.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    app.devices = vec![cri::Device {
        container_path: "/dev/mytun".into(),
        host_path: "/dev/net/tun".into(),
        permissions: "rw".into(),
    }];
    let app = create_container(&mut cri, &pod, &config, app)
        .await
        .expect("CreateContainer");
    start_container(&mut cri, &app).await;
    assert_eq!(
        exec_sh(&mut cri, &app, "cat /etc/config/color /etc/linked/color")
            .await
            .1,
        "blueblue"
    );

    // A configMap update (the ..data swap) reaches the running container within kubelet's
    // sync period.
    kubelet_write(&configmap, 2, "color", "green");
    wait_exec_output(
        &mut cri,
        &app,
        "cat /etc/config/color",
        "green",
        Duration::from_secs(10),
        "the configMap update",
    )
    .await;
    // A device the VM has too, under the container's own path.
    let (code, out) = exec_sh(&mut cri, &app, "test -c /dev/mytun && echo char").await;
    assert_eq!((code, out.as_str()), (0, "char\n"));

    // What a VM cannot give is refused by name, and nothing is left of the attempt.
    let mut shared = container_config("shared", &image, &["sleep", "1"]);
    shared.mounts = vec![cri::Mount {
        container_path: "/mnt".into(),
        host_path: env.state_dir().join("bidi").display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let r = create_container(&mut cri, &pod, &config, shared).await;
    expect_err(r, Code::InvalidArgument, "mounts[0].propagation");
    let mut disk = container_config("disk", &image, &["sleep", "1"]);
    disk.devices = vec![cri::Device {
        container_path: "/dev/xvda".into(),
        host_path: "/dev/sda".into(),
        permissions: "r".into(),
    }];
    let r = create_container(&mut cri, &pod, &config, disk).await;
    expect_err(r, Code::InvalidArgument, "devices[0].host_path");
    let listed = cri
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1, "{listed:?}");

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

/// An emptyDir of medium Memory (kubelet mounts a tmpfs at the volume's dir) is a tmpfs in the
/// guest, shared by the pod's containers; the node's tmpfs stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_empty_dir_is_a_tmpfs_of_the_pod() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("a_memory_empty_dir_is_a_tmpfs_of_the_pod").await
    else {
        return;
    };
    let volume = env
        .state_dir()
        .join("kubelet/pods/uid-1/volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(&volume).expect("volume dir");
    nix::mount::mount(
        Some("tmpfs"),
        &volume,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )
    .expect("mount the node's tmpfs as kubelet does");
    let config = pod_config("memvol", &env.state_dir().join("logs"));
    let pod = run_pod(&mut cri, &config).await;
    let mut ids = Vec::new();
    for name in ["writer", "reader"] {
        let mut c = container_config(name, &image, &["sleep", "1000"]);
        c.mounts = vec![cri::Mount {
            container_path: "/cache".into(),
            host_path: volume.display().to_string(),
            ..Default::default()
        }];
        let id = create_container(&mut cri, &pod, &config, c)
            .await
            .expect("CreateContainer");
        start_container(&mut cri, &id).await;
        ids.push(id);
    }
    let (_, fs) = exec_sh(
        &mut cri,
        &ids[0],
        "echo hot > /cache/x; grep ' /cache ' /proc/mounts",
    )
    .await;
    assert!(
        fs.starts_with("tmpfs /cache tmpfs") && fs.contains("size=16384k"),
        "{fs}"
    );
    assert_eq!(exec_sh(&mut cri, &ids[1], "cat /cache/x").await.1, "hot\n");
    // A pod VM's copy is a tmpfs of the guest; a native pod's is kubelet's own tmpfs, which
    // kubelet accounts and evicts by.
    assert_eq!(
        volume.join("x").exists(),
        native_run(),
        "whether the write reached the node's tmpfs"
    );

    remove_pod_checked(&mut cri, &daemon, &pod).await;
    nix::mount::umount(&volume).expect("unmount the node's tmpfs");
}

/// Mount propagation: a mount made on the host below a volume after the container started
/// reaches a HostToContainer (rslave) mount of it, not a Private (rprivate) one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mounts_reach_rslave_volumes_not_rprivate_ones() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("host_mounts_reach_rslave_volumes_not_rprivate_ones").await
    else {
        return;
    };
    // A shared mount point, as kubelet's root dir is.
    let volume = env.state_dir().join("propagation");
    std::fs::create_dir_all(volume.join("sub")).expect("volume dir");
    mount(
        Some(&volume),
        &volume,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind");
    mount(
        None::<&str>,
        &volume,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .expect("shared");
    let config = pod_config("propagation", &env.state_dir().join("logs"));
    let pod = run_pod(&mut cri, &config).await;
    let mut ids = Vec::new();
    for (name, propagation) in [
        ("slave", cri::MountPropagation::PropagationHostToContainer),
        ("private", cri::MountPropagation::PropagationPrivate),
    ] {
        let mut c = container_config(name, &image, &["sleep", "1000"]);
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: volume.display().to_string(),
            propagation: propagation as i32,
            ..Default::default()
        }];
        let id = create_container(&mut cri, &pod, &config, c)
            .await
            .expect("CreateContainer");
        start_container(&mut cri, &id).await;
        ids.push(id);
    }
    mount(
        Some("tmpfs"),
        &volume.join("sub"),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("a later mount on the host");
    std::fs::write(volume.join("sub/f"), "late").expect("write into it");

    wait_exec_output(
        &mut cri,
        &ids[0],
        "cat /vol/sub/f 2>/dev/null || echo none",
        "late",
        Duration::from_secs(10),
        "the host's later mount in the rslave volume",
    )
    .await;
    let (_, seen) = exec_sh(&mut cri, &ids[1], "cat /vol/sub/f 2>/dev/null || echo none").await;
    assert_eq!(
        seen, "none\n",
        "the rprivate mount saw the host's later mount"
    );

    // On the host (a native pod), Bidirectional: a mount the container makes below the
    // volume reaches the host's path. (In a VM it is refused; see the test above.)
    if native_run() {
        let mut c = container_config("shared", &image, &["sleep", "1000"]);
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: volume.display().to_string(),
            propagation: cri::MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        }];
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["SYS_ADMIN".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let shared = create_container(&mut cri, &pod, &config, c)
            .await
            .expect("CreateContainer with a Bidirectional mount");
        start_container(&mut cri, &shared).await;
        std::fs::create_dir_all(volume.join("back")).expect("mount point");
        let (code, out) = exec_sh(
            &mut cri,
            &shared,
            "mount -t tmpfs back /vol/back && echo from-the-container > /vol/back/g 2>&1",
        )
        .await;
        assert_eq!(code, 0, "{out}");
        let seen = std::fs::read_to_string(volume.join("back/g"));
        let _ = umount2(&volume.join("back"), MntFlags::MNT_DETACH);
        assert_eq!(
            seen.expect("the container's mount on the host"),
            "from-the-container\n"
        );
    }

    remove_pod_checked(&mut cri, &daemon, &pod).await;
    // Tearing the container's binds down left the host's own mounts below the volume alone
    // (a Bidirectional bind is a peer of them).
    assert_eq!(
        std::fs::read_to_string(volume.join("sub/f"))
            .ok()
            .as_deref(),
        Some("late"),
        "the host's mount below the volume"
    );
    let _ = umount2(&volume.join("sub"), MntFlags::MNT_DETACH);
    let _ = umount2(&volume, MntFlags::MNT_DETACH);
}
