//! Benchmark of what a pod VM's size costs the host, in one run: an idle pod of 2 GiB (its
//! `linux.resources` memory limit) beside an idle pod of the default 256 MiB, both with one
//! sleeping container; prints each one's host PSS (the VMM and its helpers) and cgroup usage,
//! and their ratio (goal: at most 1.2, since guest RAM is only backed where the guest touched
//! it), and the guest's own use of its RAM (kernel, agent, page cache: the `guest_base_mib`
//! a pod's limit needs on top) with the host's cost of an idle pod (what the RuntimeClass
//! `overhead` pays for).
//!
//! Run: `cargo build --release -p vessel-shim && cargo run --release -p vessel-tests --bin
//! bench_size` (as root, after `scripts/test.sh` or `scripts/setup.sh` and the guest build).
//! In the nested-KVM host (vessel-vmm): `scripts/nested-kvm.sh target/release/bench_size`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, exec_sh, pod_config, pod_info, pull, registry_with_busybox, run_container,
    run_pod, Client, Daemon,
};
use vessel_tests::leftovers::pss_kib;
use vessel_tests::TestEnv;

/// How long the pods idle before they are measured.
const SETTLE: Duration = Duration::from_secs(20);

struct Figures {
    vm_mib: i64,
    pss_kib: u64,
    cgroup_mib: u64,
    guest_used_mib: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let Some(env) = TestEnv::detect("bench_size") else {
        bail!("benchmark environment incomplete (see SKIPPED line)");
    };
    if !vessel_tests::registry::available("bench_size") {
        bail!("registry tools missing (scripts/setup.sh installs them)");
    }
    let logs = env.state_dir().join("logs");
    let (_registry, image) = registry_with_busybox().await;
    let daemon = Daemon::start().await;
    println!("backend: {}", daemon.vmm().await);
    pull(&mut daemon.image_client().await, &image, None)
        .await
        .context("pull busybox")?;
    let mut cri = daemon.client().await;

    let small_cfg = pod_config("small", &logs);
    let mut big_cfg = pod_config("big", &logs);
    big_cfg.linux = Some(cri::LinuxPodSandboxConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 2 << 30,
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut pods = Vec::new();
    for cfg in [&small_cfg, &big_cfg] {
        let pod = run_pod(&mut cri, cfg).await;
        let idle = container_config("idle", &image, &["sleep", "100000"]);
        let ctr = run_container(&mut cri, &pod, cfg, idle).await;
        pods.push((pod, ctr));
    }
    tokio::time::sleep(SETTLE).await;
    let mut figures = Vec::new();
    for (pod, ctr) in &pods {
        figures.push(measure(&mut cri, &daemon, pod, ctr).await?);
    }
    println!("| pod VM | host PSS of VMM + helpers | host cgroup usage | guest RAM in use |");
    println!("|---|---|---|---|");
    for f in &figures {
        println!(
            "| {} MiB | {:.1} MiB | {} MiB | {} MiB |",
            f.vm_mib,
            f.pss_kib as f64 / 1024.0,
            f.cgroup_mib,
            f.guest_used_mib
        );
    }
    let ratio = figures[1].pss_kib as f64 / figures[0].pss_kib.max(1) as f64;
    println!(
        "idle {} MiB pod / idle {} MiB pod, host PSS: {ratio:.2} (goal ≤ 1.2)",
        figures[1].vm_mib, figures[0].vm_mib
    );
    for (pod, _) in pods {
        cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?;
        cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await?;
    }
    Ok(())
}

async fn measure(cri: &mut Client, daemon: &Daemon, pod: &str, ctr: &str) -> Result<Figures> {
    let info = pod_info(cri, pod).await;
    let vm_mib = info["vmSize"]["memoryMiB"].as_i64().context("vmSize")?;
    let cgroup_mib = info["cgroup"]["hierarchies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str())
        .find_map(|d| {
            ["memory.usage_in_bytes", "memory.current"]
                .iter()
                .find_map(|f| std::fs::read_to_string(std::path::Path::new(d).join(f)).ok())
        })
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |b| b >> 20);
    let (_, meminfo) = exec_sh(
        cri,
        ctr,
        "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo",
    )
    .await;
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Figures {
        vm_mib,
        pss_kib: pss_kib(&daemon.state().join("pods").join(pod)),
        cgroup_mib,
        guest_used_mib: (kib("MemTotal:") - kib("MemAvailable:")) >> 10,
    })
}
