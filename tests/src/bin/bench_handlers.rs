//! Benchmark of the two runtime handlers side by side on one daemon: for a native pod
//! (`runc`) and a microVM pod (`kata`), the latency of RunPodSandbox, CreateContainer,
//! StartContainer and an ExecSync of `true`, and the whole sequence, over several rounds,
//! alternating the handlers so that both see the same machine. The native figures are the
//! comparison point for containerd + runc on a node. Prints figures; asserts results, never
//! timings.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench_handlers` (as root,
//! after the guest image is built).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vessel_protocols::cri;
use vessel_tests::bench::{ms, percentile};
use vessel_tests::cri::{
    container_config, pod_config, pod_info, registry_with_busybox, shim_binary, Client, Daemon,
};
use vessel_tests::TestEnv;

const ROUNDS: usize = 7;
const HANDLERS: [&str; 2] = ["runc", "kata"];

/// One round's figures for one handler.
#[derive(Default, Clone)]
struct Round {
    run_pod: Duration,
    create: Duration,
    start: Duration,
    exec: Duration,
    total: Duration,
    /// A native pod's host agent, resident, right after RunPodSandbox.
    agent_rss_kib: Option<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let Some(env) = TestEnv::detect("bench_handlers") else {
        bail!("benchmark environment incomplete (see SKIPPED line)");
    };
    let shim = shim_binary();
    if !shim.is_file() {
        bail!(
            "{} missing (cargo build --release --workspace --bins)",
            shim.display()
        );
    }
    if !vessel_tests::registry::available("bench_handlers") {
        bail!("docker-registry missing (scripts/setup.sh installs it)");
    }
    let (_registry, image) = registry_with_busybox().await;
    let daemon = Daemon::start().await;
    vessel_tests::cri::pull(&mut daemon.image_client().await, &image, None)
        .await
        .context("pull busybox")?;
    let mut cri = daemon.client().await;
    let logs = env.state_dir().join("logs");

    // One warm-up round each (page cache, first spawns), not counted.
    let mut figures: Vec<Vec<Round>> = vec![Vec::new(); HANDLERS.len()];
    for round in 0..=ROUNDS {
        for (h, handler) in HANDLERS.iter().enumerate() {
            let name = format!("{handler}-{round}");
            let r = sequence(&mut cri, handler, &name, &image, &logs).await?;
            if round > 0 {
                figures[h].push(r);
            }
        }
    }

    println!(
        "RunPodSandbox + CreateContainer + StartContainer + ExecSync(true), {ROUNDS} rounds, \
         median (p95); host cpus: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<8} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "handler", "run pod", "create", "start", "exec", "total"
    );
    for (h, handler) in HANDLERS.iter().enumerate() {
        let col = |f: fn(&Round) -> Duration| {
            let samples: Vec<Duration> = figures[h].iter().map(f).collect();
            format!(
                "{:.1} ({:.1}) ms",
                ms(percentile(&samples, 50.0)),
                ms(percentile(&samples, 95.0))
            )
        };
        println!(
            "{handler:<8} {:>16} {:>16} {:>16} {:>16} {:>16}",
            col(|r| r.run_pod),
            col(|r| r.create),
            col(|r| r.start),
            col(|r| r.exec),
            col(|r| r.total),
        );
    }
    let rss: Vec<u64> = figures[0].iter().filter_map(|r| r.agent_rss_kib).collect();
    if let Some(max) = rss.iter().max() {
        println!(
            "native pod's host agent: {:.1} MiB resident at most (RuntimeClass runc's overhead)",
            *max as f64 / 1024.0
        );
    }
    let total = |h: usize| {
        let samples: Vec<Duration> = figures[h].iter().map(|r| r.total).collect();
        ms(percentile(&samples, 50.0))
    };
    println!(
        "the native sequence takes {:.2}x the microVM one's time (containerd + runc on a node: \
         about 60 / 6 / 40 ms for run pod / create / start)",
        total(0) / total(1)
    );
    Ok(())
}

/// The resident size of a native pod's agent (its pid from the verbose status).
async fn agent_rss_kib(cri: &mut Client, pod: &str) -> Option<u64> {
    let pid = pod_info(cri, pod).await["pid"].as_u64()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// One pod through the sequence on `handler`, then removed (not timed).
async fn sequence(
    cri: &mut Client,
    handler: &str,
    name: &str,
    image: &str,
    logs: &Path,
) -> Result<Round> {
    let config = pod_config(name, logs);
    let began = Instant::now();
    let pod = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .with_context(|| format!("RunPodSandbox on {handler}"))?
        .into_inner()
        .pod_sandbox_id;
    let run_pod = began.elapsed();
    let agent_rss_kib = if handler == "runc" {
        agent_rss_kib(cri, &pod).await
    } else {
        None
    };
    let at = Instant::now();
    let ctr = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", image, &["sleep", "1000"])),
            sandbox_config: Some(config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let create = at.elapsed();
    let at = Instant::now();
    cri.start_container(cri::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .context("StartContainer")?;
    let start = at.elapsed();
    let at = Instant::now();
    let out = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr,
            cmd: vec!["true".into()],
            timeout: 30,
        })
        .await
        .context("ExecSync")?
        .into_inner();
    let exec = at.elapsed();
    let total = began.elapsed();
    ensure!(
        out.exit_code == 0,
        "exec on {handler} exited {}",
        out.exit_code
    );
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .context("StopPodSandbox")?;
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .context("RemovePodSandbox")?;
    Ok(Round {
        run_pod,
        create,
        start,
        exec,
        total,
        agent_rss_kib,
    })
}
