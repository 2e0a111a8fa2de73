//! What kubelet's CRI validation suite (cri-tools `critest`) expects of pods and containers,
//! walked through the real CRI socket with busybox images the tests build: pod configs checked
//! before a VM starts (hostname, host namespaces), a pod without a hostname, a container
//! stopped right after it started, the pod's pause process in a shared pid namespace, kernel
//! features (bridge, veth, tun, NAT) for privileged containers only. Volumes and security
//! contexts have files of their own (cri_volumes.rs, cri_security.rs).

use std::time::{Duration, Instant};

use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, container_status, create_container, exec_sh, expect_err, list_pods,
    native_run, pod_config, pull, remove_pod_checked, run_container, run_pod, start_container,
    wait_state, with_namespaces, CriTest,
};
use vessel_tests::images;

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
        runtime_handler: vessel_tests::cri::test_handler(),
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
        // The microVM handler's rule, whichever handler this run's pods use.
        let config = with_namespaces(pod_config("hostns", &logs), options);
        let r = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: "kata".into(),
            })
            .await;
        expect_err(
            r,
            Code::InvalidArgument,
            &format!("namespace_options.{field}"),
        );
    }
    let pods = list_pods(&mut cri).await;
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

    // In a pod VM each needs a module the guest loads on demand (bridge, veth, dummy, tun,
    // nf_nat, ...). A native pod has the host's kernel, whose modules are the node's
    // business: there the asks are those of the kernel's built-in or loaded features.
    let all_steps = [
        ("brctl addbr foobar", " foobar:"),
        ("ip link add br1 type bridge", " br1:"),
        ("ip link add v0 type veth peer name v1", " v1"),
        ("ip link add d0 type dummy", " d0:"),
        ("tunctl -t tap0", " tap0:"),
        (
            "iptables -t nat -A POSTROUTING -o v0 -j MASQUERADE",
            "-A POSTROUTING -o v0 -j MASQUERADE",
        ),
    ];
    let steps = if native_run() {
        &all_steps[..3]
    } else {
        &all_steps[..]
    };
    let script: Vec<&str> = steps
        .iter()
        .map(|(step, _)| *step)
        .chain(["iptables -t nat -S POSTROUTING", "ip -o link show"])
        .filter(|step| !native_run() || !step.starts_with("iptables"))
        .collect();
    let (code, out) = exec_sh(
        &mut cri,
        &admin,
        &format!("exec 2>&1; set -ex; {}", script.join("; ")),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    for (_, needle) in steps {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    // Without privileges the same asks are refused.
    let (code, out) = exec_sh(&mut cri, &plain, "ip link add d1 type bridge 2>&1").await;
    assert_ne!(code, 0);
    assert!(out.contains("Operation not permitted"), "{out}");

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

/// The pod's sysctls take effect for the pod, IPC and network ones alike, on either handler
/// (in a VM: IPC ones in each container's namespace, the rest in the guest; on the host: all
/// in the pod's own namespaces, by its agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_sysctls_take_effect_in_the_pod() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("pod_sysctls_take_effect_in_the_pod").await
    else {
        return;
    };
    let mut config = pod_config("sysctls", &env.state_dir().join("logs"));
    config.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [
            ("kernel.shm_rmid_forced", "1"),
            ("net.ipv4.ip_unprivileged_port_start", "80"),
            ("net/ipv4/ping_group_range", "0 1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..Default::default()
    });
    let pod = run_pod(&mut cri, &config).await;
    let ctr = run_container(
        &mut cri,
        &pod,
        &config,
        container_config("reader", &image, &["sleep", "1000"]),
    )
    .await;
    let (code, out) = exec_sh(
        &mut cri,
        &ctr,
        "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start \
         /proc/sys/net/ipv4/ping_group_range",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["1", "80", "0", "1"], "{out:?}");
    remove_pod_checked(&mut cri, &daemon, &pod).await;

    // A name that is no sysctl is refused by name, before anything of the pod exists.
    let mut bad = pod_config("badsysctl", &env.state_dir().join("logs"));
    bad.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [("net..x".to_owned(), "1".to_owned())]
            .into_iter()
            .collect(),
        ..Default::default()
    });
    let r = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: vessel_tests::cri::test_handler(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, "sysctls[net..x]");
    assert!(list_pods(&mut cri).await.is_empty());
}
