//! What kubelet's CRI validation suite (cri-tools `critest`) expects of pods and containers,
//! walked through the real CRI socket with busybox images the tests build: pod configs checked
//! before a VM starts (hostname, host namespaces), a pod without a hostname, a container
//! stopped right after it started, the pod's pause process in a shared pid namespace, kernel
//! features (bridge, veth, tun, NAT) for privileged containers only, configMap updates and
//! devices the VM has, refusals of what a VM cannot give (bidirectional mounts, host devices).

use std::time::{Duration, Instant};

use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, container_status, create_container, exec_sh, expect_err, pod_config, pull,
    remove_pod_checked, run_pod, start_container, wait_state, CriTest,
};
use vessel_tests::images;

fn with_namespaces(
    mut config: cri::PodSandboxConfig,
    options: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(options),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_configs_are_checked_as_containerd_does() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("pod_configs_are_checked_as_containerd_does").await
    else {
        return;
    };
    let logs = env.state_dir().join("logs");
    let runp = |config: cri::PodSandboxConfig| cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: "kata".into(),
    };

    // A hostname the guest could not take is refused by name, before any VM starts.
    for bad in ["h".repeat(65), "no spaces".into(), "-dash".into()] {
        let mut config = pod_config("badhost", &logs);
        config.hostname = bad;
        let r = cri.run_pod_sandbox(runp(config)).await;
        expect_err(r, Code::InvalidArgument, "config.hostname");
    }
    // A VM cannot share the node's namespaces: refused, not started with private ones.
    let node = cri::NamespaceMode::Node as i32;
    for (field, options) in [
        (
            "network",
            cri::NamespaceOption {
                network: node,
                ..Default::default()
            },
        ),
        (
            "pid",
            cri::NamespaceOption {
                pid: node,
                ..Default::default()
            },
        ),
        (
            "ipc",
            cri::NamespaceOption {
                ipc: node,
                ..Default::default()
            },
        ),
    ] {
        let config = with_namespaces(pod_config("hostns", &logs), options);
        let r = cri.run_pod_sandbox(runp(config)).await;
        expect_err(
            r,
            Code::InvalidArgument,
            &format!("namespace_options.{field}"),
        );
    }
    let pods = cri
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "refused pods were kept: {pods:?}");

    // No hostname and a name longer than a hostname may be (the suite's are ~70 bytes): the
    // pod takes the node's hostname, as under containerd.
    let name = format!("pod-without-a-hostname-{}", "x".repeat(50));
    let mut config = pod_config(&name, &logs);
    config.hostname.clear();
    let pod = run_pod(&mut cri, &config).await;
    let ctr = create_container(
        &mut cri,
        &pod,
        &config,
        container_config("main", &image, &["sleep", "1000"]),
    )
    .await
    .expect("CreateContainer");
    start_container(&mut cri, &ctr).await;
    let node_name = nix::unistd::gethostname().expect("hostname");
    let (code, out) = exec_sh(&mut cri, &ctr, "hostname; echo $HOSTNAME").await;
    assert_eq!(code, 0);
    let want = node_name.to_string_lossy();
    assert_eq!(out, format!("{want}\n{want}\n"));

    // A group without a user is refused (the image's user does not count), as containerd does.
    let mut group_only = container_config("group-only", &image, &["sleep", "10"]);
    group_only.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let r = create_container(&mut cri, &pod, &config, group_only).await;
    expect_err(r, Code::InvalidArgument, "run_as_group");

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_stopped_right_after_start_takes_the_sigterm() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("a_container_stopped_right_after_start_takes_the_sigterm").await
    else {
        return;
    };
    let config = pod_config("stopnow", &env.state_dir().join("logs"));
    let pod = run_pod(&mut cri, &config).await;
    // busybox top exits on SIGTERM once it runs; as PID 1 without a handler (before its
    // exec) the signal would be ignored and only the stop timeout's SIGKILL would end it.
    let ctr = create_container(
        &mut cri,
        &pod,
        &config,
        container_config("top", &image, &["top"]),
    )
    .await
    .expect("CreateContainer");
    start_container(&mut cri, &ctr).await;
    let timeout = 60;
    let stopping = Instant::now();
    cri.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout,
    })
    .await
    .expect("StopContainer");
    let took = stopping.elapsed();
    let status = container_status(&mut cri, &ctr).await;
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_ne!(
        status.exit_code, 137,
        "top was SIGKILLed after {took:?}: the SIGTERM was lost"
    );
    assert!(
        took < Duration::from_secs(timeout as u64 / 2),
        "stopping took {took:?} of the {timeout} s timeout"
    );

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pid_namespace_has_the_pods_pause_process() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("a_shared_pid_namespace_has_the_pods_pause_process").await
    else {
        return;
    };
    let config = with_namespaces(
        pod_config("sharedpid", &env.state_dir().join("logs")),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        },
    );
    let pod = run_pod(&mut cri, &config).await;
    let mut ids = Vec::new();
    for (name, cmd) in [
        ("first", &["sleep", "4"][..]),
        ("second", &["sleep", "1000"]),
    ] {
        let id = create_container(&mut cri, &pod, &config, container_config(name, &image, cmd))
            .await
            .expect("CreateContainer");
        start_container(&mut cri, &id).await;
        ids.push(id);
    }
    let (first, second) = (&ids[0], &ids[1]);

    // PID 1 of the pod is its pause process, not the first container.
    let (_, cmdline) = exec_sh(&mut cri, second, "cat /proc/1/cmdline").await;
    assert_eq!(cmdline, "/pause\0");
    // The pod lives on when the first container ends.
    wait_state(&mut cri, first, cri::ContainerState::ContainerExited).await;
    assert_eq!(
        container_status(&mut cri, second).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    // Orphans are reparented to it and reaped: no zombie stays.
    exec_sh(&mut cri, second, "sleep 1 & exit 0").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, zombies) = exec_sh(
        &mut cri,
        second,
        "grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l",
    )
    .await;
    let (_, ps) = exec_sh(&mut cri, second, "ps").await;
    assert_eq!(zombies.trim(), "0", "zombies left: {ps}");
    assert!(ps.contains("sleep 1000"), "{ps}");

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

/// The xtables plugins a NAT rule needs, beside iptables (legacy) itself.
const XTABLES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// Pushes busybox plus the host's iptables (legacy) as `vessel/netadmin`; its reference.
async fn push_netadmin_image(
    test: &str,
    registry: &vessel_tests::registry::Registry,
) -> Option<String> {
    let programs = [
        "/usr/sbin/xtables-legacy-multi".to_owned(),
        format!("{XTABLES}/libxt_standard.so"),
        format!("{XTABLES}/libxt_MASQUERADE.so"),
    ];
    let programs: Vec<&str> = programs.iter().map(String::as_str).collect();
    let Some(iptables) =
        images::host_programs_layer(&programs, &[("/usr/sbin/iptables", "xtables-legacy-multi")])
    else {
        vessel_tests::skipped(
            test,
            "needs iptables (legacy) on this machine: apt install iptables",
        );
        return None;
    };
    let mut spec = images::ImageSpec::busybox();
    spec.layers.push(iptables);
    spec.layers
        .push(images::Layer::new(vec![images::Entry::dir("run", 0o755)]));
    let built = images::build(&spec);
    images::push(&registry.host(), "vessel/netadmin", "latest", &built, None)
        .await
        .expect("push the netadmin image");
    Some(format!("{}/vessel/netadmin:latest", registry.host()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_containers_get_the_kernel_features_they_ask_for() {
    let test = "privileged_containers_get_the_kernel_features_they_ask_for";
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry,
    }) = CriTest::setup(test).await
    else {
        return;
    };
    let Some(netadmin) = push_netadmin_image(test, &registry).await else {
        return;
    };
    pull(&mut daemon.image_client().await, &netadmin, None)
        .await
        .expect("pull netadmin");
    let mut config = pod_config("netadmin", &env.state_dir().join("logs"));
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = run_pod(&mut cri, &config).await;
    let mut admin = container_config("admin", &netadmin, &["sleep", "1000"]);
    admin.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let admin = create_container(&mut cri, &pod, &config, admin)
        .await
        .expect("CreateContainer admin");
    start_container(&mut cri, &admin).await;
    let plain = create_container(
        &mut cri,
        &pod,
        &config,
        container_config("plain", &image, &["sleep", "1000"]),
    )
    .await
    .expect("CreateContainer plain");
    start_container(&mut cri, &plain).await;

    // Each needs a module the guest loads on demand (bridge, veth, dummy, tun, nf_nat, ...).
    let steps = [
        "brctl addbr foobar",
        "ip link add br1 type bridge",
        "ip link add v0 type veth peer name v1",
        "ip link add d0 type dummy",
        "tunctl -t tap0",
        "iptables -t nat -A POSTROUTING -o v0 -j MASQUERADE",
        "iptables -t nat -S POSTROUTING",
        "ip -o link show",
    ];
    let (code, out) = exec_sh(
        &mut cri,
        &admin,
        &format!("exec 2>&1; set -ex; {}", steps.join("; ")),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    for needle in [
        "-A POSTROUTING -o v0 -j MASQUERADE",
        " foobar:",
        " br1:",
        " v1",
        " d0:",
        " tap0:",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    // Without privileges the same asks are refused.
    let (code, out) = exec_sh(&mut cri, &plain, "ip link add d1 type dummy 2>&1").await;
    assert_ne!(code, 0);
    assert!(out.contains("Operation not permitted"), "{out}");

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, now) = exec_sh(&mut cri, &app, "cat /etc/config/color").await;
        if now == "green" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {now:?} 10 s after the update"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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

/// A container of `image` running `sleep` with `ctx` as its security context.
fn with_context(
    name: &str,
    image: &str,
    ctx: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    let mut config = container_config(name, image, &["sleep", "1000"]);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(ctx),
        ..Default::default()
    });
    config
}

/// The security-context bucket of the suite: users and groups (the image's groups too),
/// capabilities added and dropped (ALL), read-only rootfs, masked and read-only paths,
/// no_new_privs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_contexts_shape_the_container_process() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        registry,
        ..
    }) = CriTest::setup("security_contexts_shape_the_container_process").await
    else {
        return;
    };
    // busybox whose user `app` (1000) is also in wheel (10) and audio (29).
    let mut spec = images::ImageSpec::busybox();
    spec.layers
        .push(images::Layer::new(vec![images::Entry::file(
            "etc/group",
            b"root:x:0:\napp:x:1000:\nwheel:x:10:app\naudio:x:29:app\nnogroup:x:65534:\n",
            0o644,
        )]));
    let users = images::build(&spec);
    images::push(&registry.host(), "vessel/users", "latest", &users, None)
        .await
        .expect("push the users image");
    let image = format!("{}/vessel/users:latest", registry.host());
    pull(&mut daemon.image_client().await, &image, None)
        .await
        .expect("pull users");
    let config = pod_config("security", &env.state_dir().join("logs"));
    let pod = run_pod(&mut cri, &config).await;
    let caps = |add: &[&str], drop: &[&str]| {
        Some(cri::Capability {
            add_capabilities: add.iter().map(|c| c.to_string()).collect(),
            drop_capabilities: drop.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        })
    };
    let cases: [(&str, cri::LinuxContainerSecurityContext, &str, &str); 6] = [
        (
            "ids",
            cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                run_as_group: Some(cri::Int64Value { value: 3000 }),
                supplemental_groups: vec![4000],
                ..Default::default()
            },
            "id -u; id -g; id -G",
            "1000\n3000\n3000 10 29 4000\n",
        ),
        (
            "username",
            cri::LinuxContainerSecurityContext {
                run_as_username: "app".into(),
                ..Default::default()
            },
            "id -un; id -G",
            "app\n1000 10 29\n",
        ),
        (
            "caps",
            cri::LinuxContainerSecurityContext {
                capabilities: caps(&["NET_ADMIN"], &["ALL"]),
                ..Default::default()
            },
            // NET_ADMIN is bit 12.
            "grep -E '^Cap(Eff|Bnd)' /proc/1/status",
            "CapEff:\t0000000000001000\nCapBnd:\t0000000000001000\n",
        ),
        (
            "readonly",
            cri::LinuxContainerSecurityContext {
                readonly_rootfs: true,
                ..Default::default()
            },
            "touch /x 2>&1; cat /etc/hostname >/dev/null && echo etc-readable",
            "touch: /x: Read-only file system\netc-readable\n",
        ),
        (
            "paths",
            cri::LinuxContainerSecurityContext {
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                ..Default::default()
            },
            "wc -c < /proc/kcore; (echo x > /proc/sys/kernel/domainname) 2>/dev/null || echo ro",
            "0\nro\n",
        ),
        (
            "nnp",
            cri::LinuxContainerSecurityContext {
                no_new_privs: true,
                ..Default::default()
            },
            "grep NoNewPrivs /proc/1/status",
            "NoNewPrivs:\t1\n",
        ),
    ];
    for (name, ctx, check, want) in cases {
        let id = create_container(&mut cri, &pod, &config, with_context(name, &image, ctx))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"));
        start_container(&mut cri, &id).await;
        let (_, out) = exec_sh(&mut cri, &id, check).await;
        assert_eq!(out, want, "{name}: {check}");
    }

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

/// Seccomp as the suite checks it: a localhost profile blocks sethostname even with SYS_ADMIN,
/// the default profile allows it with SYS_ADMIN and blocks it without, Unconfined is no filter,
/// exec'd processes are filtered like the container's own, a bad legacy value is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // seccomp_profile_path: the legacy field older kubelets send
async fn seccomp_profiles_filter_system_calls() {
    use cri::security_profile::ProfileType;
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("seccomp_profiles_filter_system_calls").await
    else {
        return;
    };
    let deny = env.state_dir().join("deny-sethostname.json");
    std::fs::write(
        &deny,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("write the localhost profile");
    let config = pod_config("seccomp", &env.state_dir().join("logs"));
    let pod = run_pod(&mut cri, &config).await;
    let profile = |kind: ProfileType, admin: bool| cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: kind as i32,
            localhost_ref: deny.display().to_string(),
        }),
        capabilities: admin.then(|| cri::Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let try_sethostname =
        "hostname renamed 2>/dev/null && echo set || echo refused; grep ^Seccomp: /proc/1/status";
    let cases = [
        (
            "localhost",
            profile(ProfileType::Localhost, true),
            "refused\nSeccomp:\t2\n",
        ),
        (
            "default-admin",
            profile(ProfileType::RuntimeDefault, true),
            "set\nSeccomp:\t2\n",
        ),
        (
            "default",
            profile(ProfileType::RuntimeDefault, false),
            "refused\nSeccomp:\t2\n",
        ),
        (
            "unconfined",
            profile(ProfileType::Unconfined, true),
            "set\nSeccomp:\t0\n",
        ),
    ];
    for (name, ctx, want) in cases {
        let id = create_container(&mut cri, &pod, &config, with_context(name, &image, ctx))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"));
        start_container(&mut cri, &id).await;
        let (_, out) = exec_sh(&mut cri, &id, try_sethostname).await;
        assert_eq!(out, want, "{name}");
    }
    let legacy = cri::LinuxContainerSecurityContext {
        seccomp_profile_path: "my-profile".into(),
        ..Default::default()
    };
    let r = create_container(&mut cri, &pod, &config, with_context("bad", &image, legacy)).await;
    expect_err(r, Code::InvalidArgument, "seccomp_profile_path");

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
    assert!(
        !volume.join("x").exists(),
        "the write reached the node's tmpfs"
    );

    remove_pod_checked(&mut cri, &daemon, &pod).await;
    nix::mount::umount(&volume).expect("unmount the node's tmpfs");
}
