//! Container details through the CRI socket: bad input gets errors that name the problem and
//! leaks nothing; CRI logs with 1 MiB of output and a line over 16 KiB; stats that move under
//! load; resource updates; log reopening.

use std::time::{Duration, Instant};

use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, create_container as create, exec_sh, expect_err, list_pods, pod_config,
    pod_stats, remove_pod_checked, run_pod, with_namespaces, Client, CriTest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_named_errors_and_leaks_nothing() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("bad_input_gets_named_errors_and_leaks_nothing").await
    else {
        return;
    };
    let logs = env.state_dir().join("logs");
    let pod_cfg = pod_config("inputs", &logs);

    let r = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: "gvisor".into(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, "gvisor");
    let r = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig::default()),
            runtime_handler: String::new(),
        })
        .await;
    expect_err(r, Code::InvalidArgument, "config.metadata");
    assert!(list_pods(&mut cri).await.is_empty());
    let r = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: String::new(),
            verbose: false,
        })
        .await;
    expect_err(r, Code::InvalidArgument, "pod_sandbox_id");
    let r = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await;
    expect_err(r, Code::NotFound, "nope");

    let pod = run_pod(&mut cri, &pod_cfg).await;
    let missing = create(
        &mut cri,
        &pod,
        &pod_cfg,
        container_config("a", "/no/such/layout", &["sh"]),
    )
    .await;
    expect_err(missing, Code::NotFound, "/no/such/layout");
    let mut escaping = container_config("b", &image, &["sh"]);
    escaping.log_path = "../../etc/evil.log".into();
    expect_err(
        create(&mut cri, &pod, &pod_cfg, escaping).await,
        Code::InvalidArgument,
        "log_path",
    );
    let mut absurd = container_config("c", &image, &["sh"]);
    absurd.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 1,
            ..Default::default()
        }),
        ..Default::default()
    });
    expect_err(
        create(&mut cri, &pod, &pod_cfg, absurd).await,
        Code::InvalidArgument,
        "memory_limit_in_bytes",
    );
    let mut absurd = container_config("d", &image, &["sh"]);
    absurd.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: -5,
            cpu_quota: 1000,
            ..Default::default()
        }),
        ..Default::default()
    });
    expect_err(
        create(&mut cri, &pod, &pod_cfg, absurd).await,
        Code::InvalidArgument,
        "cpu_period",
    );
    let nocmd = create(
        &mut cri,
        &pod,
        &pod_cfg,
        container_config("e", &image, &["no-such-cmd"]),
    )
    .await;
    expect_err(nocmd, Code::NotFound, "no-such-cmd");

    let good = create(
        &mut cri,
        &pod,
        &pod_cfg,
        container_config("good", &image, &["sleep", "1000"]),
    )
    .await
    .expect("good container");
    let dup = create(
        &mut cri,
        &pod,
        &pod_cfg,
        container_config("good", &image, &["sleep", "1"]),
    )
    .await;
    expect_err(dup, Code::AlreadyExists, "good");
    let r = cri
        .container_status(cri::ContainerStatusRequest {
            container_id: String::new(),
            verbose: false,
        })
        .await;
    expect_err(r, Code::InvalidArgument, "container_id");
    let r = cri
        .start_container(cri::StartContainerRequest {
            container_id: "ghost".into(),
        })
        .await;
    expect_err(r, Code::NotFound, "ghost");

    // Only the good container exists, on the host and in the list.
    let listed = cri
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [good.as_str()]
    );
    let shared = daemon.state().join("pods").join(&pod).join("shared");
    let mut entries: Vec<String> = std::fs::read_dir(&shared)
        .expect("shared dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, [".pod".to_string(), good.clone()]);
    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

async fn stats(cri: &mut Client, id: &str) -> cri::ContainerStats {
    cri.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .expect("container stats")
    .into_inner()
    .stats
    .expect("stats")
}

fn cpu_ns(s: &cri::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stats_updates_and_reopen() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("logs_stats_updates_and_reopen").await
    else {
        return;
    };
    let logs = env.state_dir().join("logs");
    let pod_cfg = pod_config("busy", &logs);
    let pod = run_pod(&mut cri, &pod_cfg).await;
    cri.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: "10.88.0.0/16".into(),
            }),
        }),
    })
    .await
    .expect("update runtime config");

    // 1 MiB of 16-byte lines, one 32 KiB line, then a tick a second.
    let script = "yes 0123456789abcde | head -n 65536; \
                  s=xxxxxxxxxxxxxxxx; for i in 1 2 3 4 5 6 7 8 9 10 11; do s=$s$s; done; echo $s; \
                  while :; do echo tick; sleep 1; done";
    let talker = create(
        &mut cri,
        &pod,
        &pod_cfg,
        container_config("talker", &image, &["sh", "-c", script]),
    )
    .await
    .expect("create talker");
    let spinner = create(
        &mut cri,
        &pod,
        &pod_cfg,
        container_config("spinner", &image, &["sh", "-c", "while :; do :; done"]),
    )
    .await
    .expect("create spinner");
    for id in [&talker, &spinner] {
        cri.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("start");
    }
    let log_path = logs.join("talker/0.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains(" stdout F tick") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "log incomplete: {} bytes",
            text.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lines: Vec<&str> = log.lines().collect();
    let short = lines
        .iter()
        .filter(|l| l.ends_with(" stdout F 0123456789abcde"))
        .count();
    assert_eq!(short, 65536);
    let long: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(" stdout P ") || l.contains("xxxxxxxx"))
        .collect();
    assert_eq!(long.len(), 2, "the 32 KiB line is one P and one F piece");
    assert!(long[0].contains(" stdout P ") && long[0].ends_with(&"x".repeat(16384)));
    assert!(long[1].contains(" stdout F ") && long[1].ends_with(&"x".repeat(16384)));

    // Stats move under load.
    let before = stats(&mut cri, &spinner).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = stats(&mut cri, &spinner).await;
    assert!(
        cpu_ns(&after) > cpu_ns(&before) + 100_000_000,
        "{before:?} → {after:?}"
    );
    let mem = after
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    assert!(mem > 0);
    let listed = cri
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .expect("list stats")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 2);
    let linux = pod_stats(&mut cri, &pod).await;
    assert_eq!(linux.containers.len(), 2);
    assert!(
        linux
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value)
            >= cpu_ns(&after)
    );

    // Resources update in place.
    cri.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: spinner.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 * 1024 * 1024,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("update resources");
    let limits = exec_sh(
        &mut cri,
        &spinner,
        // cgroup v2 in a pod VM; on a v1 host (a native pod) the same limits in v1's files.
        "if [ -f /sys/fs/cgroup/memory.max ]; then \
           cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; \
         else \
           cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
           echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); \
         fi",
    )
    .await
    .1;
    assert_eq!(limits, "67108864\n50000 100000\n");
    let r = cri
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: spinner.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: -1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    expect_err(r, Code::InvalidArgument, "cpu_shares");

    // A container over its memory limit is OOM-killed and says so.
    let mut hog = container_config(
        "hog",
        &image,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 * 1024 * 1024,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = create(&mut cri, &pod, &pod_cfg, hog)
        .await
        .expect("create hog");
    cri.start_container(cri::StartContainerRequest {
        container_id: hog.clone(),
    })
    .await
    .expect("start hog");
    let st =
        vessel_tests::cri::wait_state(&mut cri, &hog, cri::ContainerState::ContainerExited).await;
    assert_eq!(
        (st.reason.as_str(), st.exit_code),
        ("OOMKilled", 137),
        "{st:?}"
    );
    let sandbox_stats = cri
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("list pod stats")
        .into_inner()
        .stats;
    assert_eq!(sandbox_stats.len(), 1);
    let rc = cri
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("runtime config")
        .into_inner();
    assert!(rc.linux.is_some());

    // Reopen after rotation: the new file exists when the call returns and gets new lines.
    let rotated = logs.join("talker/0.log.1");
    std::fs::rename(&log_path, &rotated).expect("rotate");
    cri.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: talker.clone(),
    })
    .await
    .expect("reopen");
    assert!(log_path.exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("tick")
    {
        assert!(Instant::now() < deadline, "no output in the reopened log");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_pid_namespace_mounts_and_pod_filters() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("pod_pid_namespace_mounts_and_pod_filters").await
    else {
        return;
    };
    let pod_cfg = with_namespaces(
        pod_config("pidns", &env.state_dir().join("logs")),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        },
    );
    let pod = run_pod(&mut cri, &pod_cfg).await;

    // ListPodSandbox filters: id prefix, state, labels.
    let list = |filter: cri::PodSandboxFilter| cri::ListPodSandboxRequest {
        filter: Some(filter),
    };
    let count = |r: Result<tonic::Response<cri::ListPodSandboxResponse>, tonic::Status>| {
        r.expect("list pods").into_inner().items.len()
    };
    let by_id = cri
        .list_pod_sandbox(list(cri::PodSandboxFilter {
            id: pod[..8].into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(count(by_id), 1);
    let label = |v: &str| std::collections::HashMap::from([("app".to_string(), v.to_string())]);
    let r = cri
        .list_pod_sandbox(list(cri::PodSandboxFilter {
            label_selector: label("pidns"),
            ..Default::default()
        }))
        .await;
    assert_eq!(count(r), 1);
    let r = cri
        .list_pod_sandbox(list(cri::PodSandboxFilter {
            label_selector: label("other"),
            ..Default::default()
        }))
        .await;
    assert_eq!(count(r), 0);
    let not_ready = Some(cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxNotready as i32,
    });
    let r = cri
        .list_pod_sandbox(list(cri::PodSandboxFilter {
            state: not_ready,
            ..Default::default()
        }))
        .await;
    assert_eq!(count(r), 0);

    // Volumes: read-only honoured, read-write reaches the host.
    let ro = env.state_dir().join("vol-ro");
    let rw = env.state_dir().join("vol-rw");
    std::fs::create_dir_all(&ro).expect("ro dir");
    std::fs::create_dir_all(&rw).expect("rw dir");
    std::fs::write(ro.join("data.txt"), "hello-volume\n").expect("data");
    let mut a = container_config("a", &image, &["sleep", "1000"]);
    a.mounts = vec![
        cri::Mount {
            container_path: "/data".into(),
            host_path: ro.display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/rw".into(),
            host_path: rw.display().to_string(),
            ..Default::default()
        },
    ];
    let a = create(&mut cri, &pod, &pod_cfg, a).await.expect("create a");
    let b = create(
        &mut cri,
        &pod,
        &pod_cfg,
        container_config("b", &image, &["sleep", "2000"]),
    )
    .await
    .expect("create b");
    for id in [&a, &b] {
        cri.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("start");
    }
    assert_eq!(
        exec_sh(&mut cri, &a, "cat /data/data.txt").await.1,
        "hello-volume\n"
    );
    assert_eq!(
        exec_sh(
            &mut cri,
            &a,
            "touch /data/x 2>/dev/null && echo writable || echo read-only"
        )
        .await
        .1,
        "read-only\n"
    );
    assert_eq!(
        exec_sh(&mut cri, &a, "echo hi > /rw/y && echo ok").await.1,
        "ok\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("y")).expect("written through"),
        "hi\n"
    );
    // One pid namespace for the pod: b sees a's process.
    let ps = exec_sh(&mut cri, &b, "ps").await.1;
    assert!(ps.contains("sleep 1000"), "{ps}");

    remove_pod_checked(&mut cri, &daemon, &pod).await;
    assert_eq!(
        std::fs::read_to_string(ro.join("data.txt")).expect("source intact"),
        "hello-volume\n"
    );
}
