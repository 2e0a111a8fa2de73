//! Pod resources through the CRI socket: a pod VM sized from `linux.resources` (guest RAM =
//! memory limit + the guest's base, vCPUs = ceil(quota / period) capped at the host's CPUs,
//! the default size without limits, InvalidArgument above the configured maxima), containers
//! that use what the VM holds and are OOM-killed at their own limit, updates that must fit
//! the VM; the VM's host processes in a cgroup under the pod's `cgroup_parent` (every
//! hierarchy), re-found after a daemon restart and removed with the pod; a pod cgroup limit
//! below what the VM touched gets the VMM OOM-killed by the host and the pod NOTREADY with
//! that reason. On either backend.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cgroups::{procs, ParentCgroup};
use vessel_tests::cri::{
    container_config, container_status, exec_sh, expect_err, list_pods, pod_config, pod_info,
    pod_stats, pod_vmm, remove_pod_checked, run_container, run_pod, wait_state, Client, CriTest,
};
use vessel_tests::leftovers::processes_naming;

const MIB: i64 = 1 << 20;

/// `config` asking for `memory` bytes and `quota` µs of CPU per 100 ms, under `cgroup_parent`.
fn sized(
    mut config: cri::PodSandboxConfig,
    memory: i64,
    quota: i64,
    cgroup_parent: &str,
) -> cri::PodSandboxConfig {
    config.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: cgroup_parent.into(),
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: memory,
            cpu_quota: quota,
            cpu_period: if quota > 0 { 100_000 } else { 0 },
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// A container of `image` running `cmd`, limited to `memory` bytes (0: no limit).
fn limited(name: &str, image: &str, cmd: &[&str], memory: i64) -> cri::ContainerConfig {
    let mut c = container_config(name, image, cmd);
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: memory,
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// The guest's MemTotal in KiB and CPU count, as a container sees them.
async fn guest_shape(cri: &mut Client, ctr: &str) -> (i64, u32) {
    let (_, out) = exec_sh(
        cri,
        ctr,
        "grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo",
    )
    .await;
    let mut lines = out.lines();
    let mem = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MemTotal in {out:?}"));
    let cpus = lines
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("cpu count in {out:?}"));
    (mem, cpus)
}

/// The guest RAM the kernel keeps for itself (its image, page structs, reserved ranges):
/// MemTotal is at least the VM's RAM less this.
fn kernel_reserve_kib(vm_mib: i64) -> i64 {
    48 * 1024 + vm_mib * 1024 / 40
}

/// The verbose status's VM size: (memory MiB, vCPUs, containers' MiB).
async fn vm_size(cri: &mut Client, pod: &str) -> (i64, i64, Option<i64>) {
    let info = pod_info(cri, pod).await;
    let size = &info["vmSize"];
    (
        size["memoryMiB"].as_i64().expect("vmSize.memoryMiB"),
        size["vcpus"].as_i64().expect("vmSize.vcpus"),
        size["containersMemoryMiB"].as_i64(),
    )
}

/// The host's online CPUs, as the daemon counts them.
fn host_cpus() -> u32 {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let n = info.lines().filter(|l| l.starts_with("processor")).count();
    u32::try_from(n).expect("CPU count").max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_a_vm_of_their_size() {
    let test = "pods_get_a_vm_of_their_size";
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
    let logs = env.state_dir().join("logs");

    // 2 GiB and 2 CPUs: the guest has 2 GiB + its base, and 2 CPUs where the host has them.
    let big_cfg = sized(pod_config("big", &logs), 2048 * MIB, 200_000, "");
    let big = run_pod(&mut cri, &big_cfg).await;
    let (vm_mib, vcpus, containers_mib) = vm_size(&mut cri, &big).await;
    assert_eq!(containers_mib, Some(2048));
    assert!(vm_mib > 2048, "the guest's base is added: {vm_mib}");
    let expected_cpus = 2.min(host_cpus());
    assert_eq!(vcpus, i64::from(expected_cpus));
    let hog = run_container(
        &mut cri,
        &big,
        &big_cfg,
        limited(
            "hog",
            &image,
            // dd reads 1 GiB from /dev/zero into its buffer (touching every page), then blocks
            // writing it to a pipe nobody reads: 1 GiB held for as long as the pod runs.
            &["sh", "-c", "dd if=/dev/zero bs=1G count=1 | sleep 100000"],
            2048 * MIB,
        ),
    )
    .await;
    let (mem_kib, cpus) = guest_shape(&mut cri, &hog).await;
    println!("2 GiB pod: VM {vm_mib} MiB, MemTotal {mem_kib} kB, {cpus} CPUs");
    assert!(
        mem_kib <= vm_mib * 1024 && mem_kib >= vm_mib * 1024 - kernel_reserve_kib(vm_mib),
        "MemTotal {mem_kib} kB for a VM of {vm_mib} MiB"
    );
    assert_eq!(cpus, expected_cpus);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, out) = exec_sh(&mut cri, &hog, "cat /sys/fs/cgroup/memory.current").await;
        let used: i64 = out.trim().parse().unwrap_or(0);
        if used >= 1024 * MIB {
            println!("the container holds {} MiB", used / MIB);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container never reached 1 GiB: {used}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // A container over its own 256 MiB limit is OOM-killed in the guest; the pod lives on.
    let over = run_container(
        &mut cri,
        &big,
        &big_cfg,
        limited(
            "over",
            &image,
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=512M", "count=1"],
            256 * MIB,
        ),
    )
    .await;
    let st = wait_state(&mut cri, &over, cri::ContainerState::ContainerExited).await;
    assert_eq!(
        (st.reason.as_str(), st.exit_code),
        ("OOMKilled", 137),
        "{st:?}"
    );
    assert_eq!(
        container_status(&mut cri, &hog).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "the 1 GiB container keeps running"
    );
    let pods = list_pods(&mut cri).await;
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);

    // The pod's stats count the VM's host processes: at least the 1 GiB the guest touched.
    let stats = pod_stats(&mut cri, &big).await;
    let working_set = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    let container_sum: u64 = stats
        .containers
        .iter()
        .filter_map(|c| {
            c.memory
                .as_ref()?
                .working_set_bytes
                .as_ref()
                .map(|v| v.value)
        })
        .sum();
    let processes = stats
        .process
        .and_then(|p| p.process_count)
        .map_or(0, |v| v.value);
    println!(
        "pod working set {} MiB (containers {} MiB), {processes} host processes",
        working_set >> 20,
        container_sum >> 20
    );
    assert!(working_set >= 1 << 30, "{working_set}");
    let (_, dirs) = vm_cgroup(&mut cri, &big).await;
    let host_memory = dirs
        .iter()
        .any(|d| d.join("memory.usage_in_bytes").exists() || d.join("memory.current").exists());
    if host_memory {
        // The host's figure (guest RAM touched + VMM and helpers) is above the containers'.
        assert!(
            working_set > container_sum,
            "{working_set} vs {container_sum}"
        );
    } else {
        vessel_tests::skipped(
            test,
            "(the host-cgroup part of the pod stats) no memory controller reaches the VM's cgroup",
        );
    }
    assert!(processes >= 2, "VMM and helpers: {processes}");

    // Updates inside the VM's size apply; beyond it they fail, naming the size.
    cri.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: hog.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 1536 * MIB,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("an update that fits");
    let r = cri
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: hog.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 4096 * MIB,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    expect_err(r, Code::FailedPrecondition, &format!("VM of {vm_mib} MiB"));

    // Half a CPU: one vCPU. No limits: the default size.
    let half_cfg = sized(pod_config("half", &logs), 0, 50_000, "");
    let half = run_pod(&mut cri, &half_cfg).await;
    let plain_cfg = pod_config("plain", &logs);
    let plain = run_pod(&mut cri, &plain_cfg).await;
    for (pod, cfg) in [(&half, &half_cfg), (&plain, &plain_cfg)] {
        let (vm_mib, vcpus, containers_mib) = vm_size(&mut cri, pod).await;
        assert_eq!(
            (vm_mib, vcpus, containers_mib),
            (256, 1, None),
            "default size"
        );
        let ctr = run_container(
            &mut cri,
            pod,
            cfg,
            container_config("c", &image, &["sleep", "1000"]),
        )
        .await;
        let (mem_kib, cpus) = guest_shape(&mut cri, &ctr).await;
        assert_eq!(cpus, 1);
        assert!(mem_kib <= 256 * 1024 && mem_kib >= 256 * 1024 - kernel_reserve_kib(256));
    }
    for pod in [big, half, plain] {
        remove_pod_checked(&mut cri, &daemon, &pod).await;
    }
}

/// Pod cgroups named as cgroupfs paths: the tests' parents are paths on every host, systemd's
/// or not.
const CGROUPFS: &str = "cgroup_driver = \"cgroupfs\"\n";

/// The cgroup of a pod's VM, from its verbose status: the path and each hierarchy's dir.
async fn vm_cgroup(cri: &mut Client, pod: &str) -> (String, Vec<PathBuf>) {
    let info = pod_info(cri, pod).await;
    let cg = &info["cgroup"];
    let path = cg["path"].as_str().expect("cgroup.path").to_owned();
    let dirs = cg["hierarchies"]
        .as_array()
        .expect("cgroup.hierarchies")
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .collect();
    (path, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_processes_run_in_the_pod_cgroup_across_restarts() {
    let test = "vm_processes_run_in_the_pod_cgroup_across_restarts";
    let config = format!("{CGROUPFS}[hypervisor]\nmax_memory_mib = 1024\nmax_vcpus = 4\n");
    let Some(CriTest {
        env,
        mut daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup_with_config(test, Some(&config)).await
    else {
        return;
    };
    let logs = env.state_dir().join("logs");
    let rc = cri
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        rc.linux.map(|l| l.cgroup_driver),
        Some(cri::CgroupDriver::Cgroupfs as i32)
    );

    // Above the maxima, or a parent that climbs out: refused, nothing started.
    for (cfg, field) in [
        (
            sized(pod_config("huge", &logs), 2048 * MIB, 0, ""),
            "memory_limit_in_bytes",
        ),
        (
            sized(pod_config("wide", &logs), 0, 800_000, ""),
            "cpu_quota",
        ),
        (
            sized(pod_config("escape", &logs), 0, 0, "/kubepods/../../etc"),
            "linux.cgroup_parent",
        ),
    ] {
        let r = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await;
        expect_err(r, Code::InvalidArgument, field);
    }
    assert!(list_pods(&mut cri).await.is_empty());
    assert!(
        std::fs::read_dir(daemon.state().join("pods")).map_or(true, |mut d| d.next().is_none()),
        "a refused pod left a VM dir"
    );

    // The daemon runs with an OOM score of its own (the systemd unit protects it with -999;
    // where the test lacks CAP_SYS_RESOURCE to lower a score, it raises it instead): its pod
    // VMs must start at the default score, not inherit the daemon's.
    let daemon_score = format!("/proc/{}/oom_score_adj", daemon.pid().expect("daemon pid"));
    if std::fs::write(&daemon_score, "-999").is_err() {
        std::fs::write(&daemon_score, "500").expect("set the daemon's OOM score");
    }
    let parent = ParentCgroup::new("podcg");
    let cfg = sized(
        pod_config("placed", &logs),
        256 * MIB,
        100_000,
        &parent.path,
    );
    let pod = run_pod(&mut cri, &cfg).await;
    let ctr = run_container(
        &mut cri,
        &pod,
        &cfg,
        container_config("c", &image, &["sleep", "1000"]),
    )
    .await;
    let (path, dirs) = vm_cgroup(&mut cri, &pod).await;
    assert_eq!(path, format!("{}/vessel-{pod}", parent.path));
    assert_eq!(
        dirs.len(),
        parent.dirs().len(),
        "one dir per hierarchy: {dirs:?}"
    );
    let (_, vmm_pid) = pod_vmm(&mut cri, &pod).await;
    let vmm_pid = vmm_pid.expect("VMM pid");
    let helpers = processes_naming(&daemon.state().join("pods").join(&pod));
    assert!(helpers.len() >= 2, "VMM and helpers: {helpers:?}");
    for dir in &dirs {
        let inside = procs(dir);
        assert!(
            inside.contains(&vmm_pid),
            "VMM {vmm_pid} not in {}: {inside:?}",
            dir.display()
        );
        for (pid, cmdline) in &helpers {
            assert!(inside.contains(pid), "{cmdline} not in {}", dir.display());
        }
    }
    for (pid, cmdline) in &helpers {
        let score = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(
            score.trim(),
            "0",
            "{cmdline} inherited the daemon's OOM protection"
        );
    }

    // A restarted daemon finds the cgroup again; the pod keeps serving.
    daemon.restart().await;
    let mut cri = daemon.client().await;
    assert_eq!(vm_cgroup(&mut cri, &pod).await.0, path);
    assert_eq!(exec_sh(&mut cri, &ctr, "echo up").await.1, "up\n");
    let log = std::fs::read_to_string(daemon.log()).unwrap_or_default();
    assert!(
        log.contains("host cgroup re-found"),
        "adoption did not check the cgroup"
    );

    // StopPodSandbox removes it from every hierarchy; the parent (kubelet's) stays.
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    for dir in &dirs {
        assert!(!dir.exists(), "{} left after StopPodSandbox", dir.display());
        assert!(dir.parent().unwrap().is_dir());
    }
    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_over_the_pod_cgroup_limit_is_oom_killed_by_the_host() {
    let test = "a_vm_over_the_pod_cgroup_limit_is_oom_killed_by_the_host";
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup_with_config(test, Some(CGROUPFS)).await
    else {
        return;
    };
    let parent = ParentCgroup::new("oompod");
    let cfg = sized(
        pod_config("oom", &env.state_dir().join("logs")),
        1024 * MIB,
        0,
        &parent.path,
    );
    let pod = run_pod(&mut cri, &cfg).await;
    let idle = run_container(
        &mut cri,
        &pod,
        &cfg,
        container_config("idle", &image, &["sleep", "1000"]),
    )
    .await;
    // The pod cgroup's limit: what the VM uses now plus 64 MiB, below what the guest is about
    // to touch (kubelet would have set it from the pod's limits and a too small overhead).
    let mut limited_somewhere = false;
    for (h, dir) in parent.dirs() {
        let (usage, limit) = if h.is_unified() {
            ("memory.current", "memory.max")
        } else if h.has("memory") {
            ("memory.usage_in_bytes", "memory.limit_in_bytes")
        } else {
            continue;
        };
        let Ok(used) = std::fs::read_to_string(dir.join(usage)) else {
            continue; // a unified hierarchy without the memory controller
        };
        let used: i64 = used.trim().parse().unwrap();
        std::fs::write(dir.join(limit), (used + 64 * MIB).to_string()).expect("set the limit");
        println!(
            "pod cgroup {} uses {} MiB; limit {} MiB",
            dir.display(),
            used / MIB,
            used / MIB + 64
        );
        limited_somewhere = true;
    }
    if !limited_somewhere {
        // A v2 host whose cgroup root cannot hand the memory controller down (a container
        // without delegation): the pod cannot be limited here.
        vessel_tests::skipped(test, "no memory controller reaches the pod's cgroup");
        remove_pod_checked(&mut cri, &daemon, &pod).await;
        return;
    }
    let hog = run_container(
        &mut cri,
        &pod,
        &cfg,
        container_config(
            "hog",
            &image,
            &["sh", "-c", "dd if=/dev/zero bs=600M count=1 | sleep 1000"],
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods = list_pods(&mut cri).await;
        if pods[0].state == cri::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VM outlived its pod cgroup's limit"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reason = pod_info(&mut cri, &pod).await["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("pod reason: {reason}");
    assert!(reason.contains("OOM"), "{reason}");
    for ctr in [idle, hog] {
        let st = wait_state(&mut cri, &ctr, cri::ContainerState::ContainerExited).await;
        assert!(st.message.contains("OOM"), "{st:?}");
    }
    let (_, dirs) = (parent.path.clone(), parent.dirs());
    remove_pod_checked(&mut cri, &daemon, &pod).await;
    for (_, dir) in dirs {
        let leaf = dir.join(format!("vessel-{pod}"));
        assert!(!leaf.exists(), "{} left behind", leaf.display());
    }
}
