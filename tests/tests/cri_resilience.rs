//! Pods survive the daemon: SIGKILL and restart vessel-shim, everything is still there and
//! works; a container that exited meanwhile reports its exit code. A pod whose VM is killed
//! turns NOTREADY with its containers EXITED within 2 s, and is cleaned up completely; a
//! guest kernel panic is reported as one. A pod VM booted from an older guest image is adopted
//! by the daemon restarted on the current one (a node upgrade) and keeps being served, with only
//! what its agent lacks refused. On either backend.

use std::time::{Duration, Instant};

use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, container_status, exec_sh, expect_err, list_pods, pod_config, pod_info,
    pod_state, pod_vmm, pull, registry_with_busybox, remove_pod_checked, run_container, run_pod,
    wait_state, with_namespaces, Client, CriTest, Daemon,
};
use vessel_tests::leftovers::leftovers;
use vessel_tests::TestEnv;

/// Runs a pod and starts a container in it; returns (pod id, container id).
async fn pod_with_container(
    cri: &mut Client,
    env: &TestEnv,
    image: &str,
    name: &str,
    cmd: &[&str],
) -> (String, String) {
    let config = pod_config(name, &env.state_dir().join("logs"));
    let pod = run_pod(cri, &config).await;
    let ctr = start_container(cri, &pod, &config, image, "main", cmd).await;
    (pod, ctr)
}

/// Creates and starts a container of `image` running `cmd`; returns its id.
async fn start_container(
    cri: &mut Client,
    pod: &str,
    config: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
    cmd: &[&str],
) -> String {
    run_container(cri, pod, config, container_config(name, image, cmd)).await
}

/// SIGKILLs the VMM of `pod` (either backend's, checked against the run's expected one);
/// returns its name.
async fn kill_vmm(cri: &mut Client, test: &str, pod: &str) -> String {
    let (vmm, pid) = pod_vmm(cri, pod).await;
    vessel_tests::check_backend(test, &vmm);
    let pid = pid.unwrap_or_else(|| panic!("no pid for the {vmm} of pod {pod}"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("kill {vmm}: {e}"));
    vmm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_daemon_sigkill() {
    let Some(CriTest {
        env,
        mut daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("pods_survive_a_daemon_sigkill").await
    else {
        return;
    };

    let mut pods = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        pods.push(pod_with_container(&mut cri, &env, &image, name, &["sleep", "1000"]).await);
    }
    // Exits while the daemon is down.
    let alpha_config = pod_config("alpha", &env.state_dir().join("logs"));
    let short = start_container(
        &mut cri,
        &pods[0].0,
        &alpha_config,
        &image,
        "short",
        &["sh", "-c", "sleep 2; exit 7"],
    )
    .await;

    daemon.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    daemon.restart().await;
    let mut cri = daemon.client().await;

    let listed = list_pods(&mut cri).await;
    assert_eq!(listed.len(), 3);
    assert!(listed
        .iter()
        .all(|p| p.state == cri::PodSandboxState::SandboxReady as i32));
    let containers = cri
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("list containers")
        .into_inner()
        .containers;
    assert_eq!(containers.len(), 4);
    let status = wait_state(&mut cri, &short, cri::ContainerState::ContainerExited).await;
    assert_eq!(status.exit_code, 7);
    for (_, ctr) in &pods {
        let st = container_status(&mut cri, ctr).await;
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        let out = cri
            .exec_sync(cri::ExecSyncRequest {
                container_id: ctr.clone(),
                cmd: vec!["echo".into(), "still-here".into()],
                timeout: 30,
            })
            .await
            .expect("exec after restart")
            .into_inner();
        assert_eq!(out.stdout, b"still-here\n");
    }
    // The adopted VMs are watched as the daemon's own were.
    kill_vmm(&mut cri, "pods_survive_a_daemon_sigkill", &pods[1].0).await;
    wait_pod_down(&mut cri, &pods[1].0, &pods[1].1, Duration::from_secs(2)).await;
    wait_vm_cleaned_up(&daemon, &pods[1].0).await;
    for (pod, _) in &pods {
        remove_pod_checked(&mut cri, &daemon, pod).await;
    }
}

/// Waits until the pod is NOTREADY and `ctr` EXITED, at most `within`; returns how long.
async fn wait_pod_down(cri: &mut Client, pod: &str, ctr: &str, within: Duration) -> Duration {
    let since = Instant::now();
    loop {
        let pod_down = pod_state(cri, pod).await == cri::PodSandboxState::SandboxNotready as i32;
        let ctr_down =
            container_status(cri, ctr).await.state == cri::ContainerState::ContainerExited as i32;
        if pod_down && ctr_down {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "pod not NOTREADY/EXITED {within:?} after its VM died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (5 s at most) until nothing of the pod's VM is left: no process naming its runtime
/// dir (VMM, virtiofsd, vsock helper), no mount below it, no dir (sockets live there).
async fn wait_vm_cleaned_up(daemon: &Daemon, pod: &str) {
    let run_dir = daemon.state().join("pods").join(pod);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(&run_dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a dead pod VM left behind: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The verbose pod status's reason.
async fn pod_reason(cri: &mut Client, pod: &str) -> String {
    let info = pod_info(cri, pod).await;
    info["reason"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_vm_turns_the_pod_notready_within_2s() {
    let test = "killed_vm_turns_the_pod_notready_within_2s";
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup(test).await
    else {
        return;
    };
    let (pod, ctr) = pod_with_container(&mut cri, &env, &image, "victim", &["sleep", "1000"]).await;

    let vmm = kill_vmm(&mut cri, test, &pod).await;
    let noticed = wait_pod_down(&mut cri, &pod, &ctr, Duration::from_secs(2)).await;
    println!("{vmm} death noticed after {noticed:?}");
    let st = container_status(&mut cri, &ctr).await;
    assert!(st.message.contains("killed by SIGKILL"), "{st:?}");
    assert!(pod_reason(&mut cri, &pod)
        .await
        .contains("killed by SIGKILL"));
    // Its helpers, sockets and mounts go without waiting for StopPodSandbox.
    wait_vm_cleaned_up(&daemon, &pod).await;
    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

/// A guest kernel panic (sysrq's crash, from a privileged container) is reported as one: the
/// pod NOTREADY, its container EXITED with the panic as message, the console's panic line
/// in the reason and the shim's log, nothing of the VM left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_panic_is_reported_as_one() {
    let test = "a_guest_panic_is_reported_as_one";
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup(test).await
    else {
        return;
    };
    let mut config = pod_config("panicky", &env.state_dir().join("logs"));
    let privileged = cri::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    };
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(privileged),
        ..Default::default()
    });
    let pod = run_pod(&mut cri, &config).await;
    let mut crash = container_config(
        "crash",
        &image,
        &[
            "sh",
            "-c",
            "sleep 2; echo c > /proc/sysrq-trigger; sleep 100",
        ],
    );
    crash.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctr = run_container(&mut cri, &pod, &config, crash).await;

    wait_pod_down(&mut cri, &pod, &ctr, Duration::from_secs(60)).await;
    let reason = pod_reason(&mut cri, &pod).await;
    assert!(
        reason.contains("guest kernel panicked") && reason.contains("sysrq triggered crash"),
        "{reason}"
    );
    let st = container_status(&mut cri, &ctr).await;
    assert!(st.message.contains("guest kernel panicked"), "{st:?}");
    let log = std::fs::read_to_string(daemon.log()).unwrap_or_default();
    assert!(
        log.contains("guest kernel panic") && log.contains("Kernel panic - not syncing"),
        "the shim's log names the panic and quotes the console"
    );
    wait_vm_cleaned_up(&daemon, &pod).await;
    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_run_pod_sandbox_leaves_nothing() {
    let Some(env) = TestEnv::detect("failed_run_pod_sandbox_leaves_nothing") else {
        return;
    };
    // A guest that never runs the agent: RunPodSandbox must fail at the deadline and undo
    // everything it started.
    let initrd = env.state_dir().join("busybox-initramfs.img");
    vessel_tests::rootfs::busybox_initramfs(&initrd).expect("initramfs");
    let config = format!(
        "[hypervisor]\ninitrd = {:?}\nagent_ready_timeout_secs = 5\n",
        initrd.display().to_string()
    );
    let daemon = Daemon::start_with_config(Some(&config)).await;
    let mut cri = daemon.client().await;
    let err = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("doomed", &env.state_dir().join("logs"))),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a pod whose agent never answers");
    assert!(
        err.message().contains("did not come up within 5 s"),
        "{err:?}"
    );
    assert!(err.message().contains("console tail"), "{err:?}");
    let pods = list_pods(&mut cri).await;
    assert!(pods.is_empty(), "{pods:?}");
    let left: Vec<_> = std::fs::read_dir(daemon.state().join("pods"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pod dirs left: {left:?}");
    let procs = leftovers(&daemon.state().join("pods"));
    assert!(
        procs
            .iter()
            .all(|l| !l.starts_with("process") && !l.starts_with("mount")),
        "{procs:#?}"
    );
}

/// A node upgrade: pods keep the guest image they booted with while the daemon restarts on the
/// current one. The baseline agent (guest-image/BASELINE) reports no contract capabilities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_from_an_older_guest_image_is_served_after_an_upgrade() {
    let test = "a_pod_from_an_older_guest_image_is_served_after_an_upgrade";
    let Some(env) = TestEnv::detect(test) else {
        return;
    };
    if !vessel_tests::registry::available(test) {
        return;
    }
    let old_image = format!(
        "[hypervisor]\ninitrd = {:?}\n",
        vessel_tests::baseline_initrd().display().to_string()
    );
    let (_registry, image) = registry_with_busybox().await;
    let mut daemon = Daemon::start_with_config(Some(&old_image)).await;
    vessel_tests::check_backend(test, &daemon.vmm().await);
    pull(&mut daemon.image_client().await, &image, None)
        .await
        .expect("pull busybox");
    let mut cri = daemon.client().await;
    let logs = env.state_dir().join("logs");
    let (pod, first) = pod_with_container(&mut cri, &env, &image, "old", &["sleep", "1000"]).await;
    // What the old agent cannot do is refused before a VM is left running for it.
    let shared = with_namespaces(
        pod_config("shared", &logs),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        },
    );
    let refused = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(shared.clone()),
            runtime_handler: String::new(),
        })
        .await;
    expect_err(
        refused,
        tonic::Code::FailedPrecondition,
        "needs guest capability \"pod-pid-namespace\"",
    );
    let pods = list_pods(&mut cri).await;
    assert_eq!(pods.len(), 1, "the refused pod is not listed: {pods:?}");

    // The upgrade: the daemon restarts on the current guest image and adopts the old VM.
    daemon.restart_with_config(None).await;
    let mut cri = daemon.client().await;
    let log = std::fs::read_to_string(daemon.log()).unwrap_or_default();
    assert!(
        log.contains("adopted pod VM runs an older guest agent")
            && log.contains("pod-pid-namespace"),
        "the daemon's log says which capabilities the adopted agent lacks"
    );
    let guest = &pod_info(&mut cri, &pod).await["guest"];
    assert_eq!(guest["capabilities"], serde_json::json!([]), "{guest}");
    let st = container_status(&mut cri, &first).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(
        exec_sh(&mut cri, &first, "echo adopted").await,
        (0, "adopted\n".into())
    );
    let config = pod_config("old", &logs);
    let second = start_container(
        &mut cri,
        &pod,
        &config,
        &image,
        "second",
        &["sleep", "1000"],
    )
    .await;
    assert_eq!(
        exec_sh(&mut cri, &second, "echo new").await,
        (0, "new\n".into())
    );
    // Streams need the current agent: refused by name, while ExecSync above still works.
    let streamed = cri
        .exec(cri::ExecRequest {
            container_id: second.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await;
    expect_err(
        streamed,
        tonic::Code::FailedPrecondition,
        "needs guest capability \"streams\"",
    );

    // New pods boot the current image, whose agent has the capability.
    let shared_pod = run_pod(&mut cri, &shared).await;
    let guest = &pod_info(&mut cri, &shared_pod).await["guest"];
    assert_eq!(
        guest["capabilities"],
        serde_json::json!(["pod-pid-namespace", "pod-network", "streams", "pod-sysctls"]),
        "{guest}"
    );
    let ctr = start_container(
        &mut cri,
        &shared_pod,
        &shared,
        &image,
        "main",
        &["sleep", "1000"],
    )
    .await;
    let (code, init) = exec_sh(&mut cri, &ctr, "cat /proc/1/cmdline").await;
    assert_eq!(
        (code, init.as_str()),
        (0, "/pause\0"),
        "the pod's pid namespace is shared"
    );
    for pod in [&pod, &shared_pod] {
        remove_pod_checked(&mut cri, &daemon, pod).await;
    }
}
