//! Benchmark of the CRI socket of a real vessel-shim daemon: RunPodSandbox → ready latency
//! (the RPC returns once the pod VM's agent is healthy), sequential and 4 at once, the cost of
//! StopPodSandbox+RemovePodSandbox, and ListContainers over 200 created containers (all, and
//! filtered by label to 1), against the bare gRPC round trip of `Version`. Prints figures; it
//! asserts results (counts), never timings.
//!
//! Every created (not started) container parks an init process in the guest; 200 of them do
//! not fit the default 256 MiB pod VM (the guest OOM-kills at about 150), so the ListContainers
//! part runs on a second daemon whose pod VMs get `LIST_POD_MEMORY_MIB`.
//!
//! Run: `cargo run --release -p vessel-tests --bin bench_cri` (as root, after the guest image
//! is built; `cargo build --release -p vessel-shim` first, the daemon is started from the same
//! target dir).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tonic::transport::Channel;
use vessel_protocols::cri;
use vessel_protocols::cri::runtime_service_client::RuntimeServiceClient;
use vessel_shim::hypervisor::Backend;
use vessel_tests::bench::{ms, percentile};
use vessel_tests::cri::{
    container_config, pod_config, pull, registry_with_busybox, shim_binary, Daemon,
};
use vessel_tests::TestEnv;

type Client = RuntimeServiceClient<Channel>;

const SEQUENTIAL_PODS: usize = 10;
const CONCURRENT_PODS: usize = 4;
const CONTAINERS: usize = 200;
const CALLS: usize = 50;
const LIST_POD_MEMORY_MIB: u32 = 512;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let run_started = Instant::now();
    let Some(env) = TestEnv::detect("bench_cri") else {
        bail!("benchmark environment incomplete (see SKIPPED line)");
    };
    let shim = shim_binary();
    if !shim.is_file() {
        bail!(
            "{} missing (cargo build --release -p vessel-shim)",
            shim.display()
        );
    }
    // Dropped in reverse order: the daemon (and whatever pod VMs a failure left) before the
    // environment's state dir.
    if !vessel_tests::registry::available("bench_cri") {
        bail!("docker-registry missing (scripts/setup.sh installs it)");
    }
    let (_registry, image) = registry_with_busybox().await;
    let daemon = Daemon::start().await;
    let mut cri = daemon.client().await;
    let logs = env.state_dir().join("logs");

    let version = time_version(&mut cri).await?;

    // RunPodSandbox, one at a time; each pod stopped and removed before the next.
    let mut seq = Vec::new();
    let mut teardown = Vec::new();
    for i in 0..SEQUENTIAL_PODS {
        let (id, took) = run_pod(&mut cri, &format!("seq-{i}"), &logs).await?;
        seq.push(took);
        teardown.push(remove_pod(&mut cri, &id).await?);
    }

    // RunPodSandbox, 4 at once on clones of the client.
    let batch_started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT_PODS)
        .map(|i| {
            let mut client = cri.clone();
            let logs = logs.clone();
            tokio::spawn(async move { run_pod(&mut client, &format!("par-{i}"), &logs).await })
        })
        .collect();
    let mut par = Vec::new();
    let mut par_ids = Vec::new();
    let mut first_err = None;
    for task in tasks {
        match task.await.context("RunPodSandbox task")? {
            Ok((id, took)) => {
                par_ids.push(id);
                par.push(took);
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let batch_wall = batch_started.elapsed();
    for id in &par_ids {
        teardown.push(remove_pod(&mut cri, id).await?);
    }
    if let Some(e) = first_err {
        return Err(e.context("concurrent RunPodSandbox"));
    }
    ensure_empty(&mut cri).await?;
    drop(cri);
    drop(daemon);

    // One pod with more memory, 200 containers created (not started).
    let daemon = Daemon::start_with_config(Some(&format!(
        "[hypervisor]\nmemory_mib = {LIST_POD_MEMORY_MIB}\n"
    )))
    .await;
    pull(&mut daemon.image_client().await, &image, None)
        .await
        .context("pull busybox")?;
    let mut cri = daemon.client().await;
    let (pod_id, _) = run_pod(&mut cri, "list", &logs).await?;
    let sandbox = pod_config("list", &logs);
    let mut creates = Vec::new();
    let creates_started = Instant::now();
    for i in 0..CONTAINERS {
        let started = Instant::now();
        cri.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config(
                &format!("c{i:03}"),
                &image,
                &["sleep", "1000"],
            )),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .with_context(|| {
            let console = daemon
                .state()
                .join("pods")
                .join(&pod_id)
                .join("console.log");
            format!(
                "CreateContainer c{i:03}; guest console tail:\n{}",
                vessel_shim::hypervisor::tail_file(&console, 30)
            )
        })?;
        creates.push(started.elapsed());
        if (i + 1) % 50 == 0 {
            eprintln!(
                "bench_cri: {} containers created in {:.1} s",
                i + 1,
                creates_started.elapsed().as_secs_f64()
            );
        }
    }
    let creates_total = creates_started.elapsed();

    let all = time_list(&mut cri, cri::ContainerFilter::default(), CONTAINERS).await?;
    let one = cri::ContainerFilter {
        label_selector: HashMap::from([("ctr".into(), "c100".into())]),
        ..Default::default()
    };
    let by_label = time_list(&mut cri, one, 1).await?;

    let list_teardown = remove_pod(&mut cri, &pod_id).await?;
    ensure_empty(&mut cri).await?;

    let accel = match env.backend {
        Backend::Qemu { kvm: true } => "qemu/kvm",
        Backend::Qemu { kvm: false } => "qemu/tcg",
        Backend::Builtin => "builtin",
        Backend::Native => "native",
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "accel: {accel}, pod VM {} vCPU / {} MiB ({LIST_POD_MEMORY_MIB} MiB for the list pod), \
         host cpus: {cpus}",
        env.hypervisor.vcpus, env.hypervisor.memory_mib
    );
    println!("{:<44} {:>4} {:>10} {:>10}  note", "", "n", "p50", "p95");
    row("Version (bare gRPC round trip)", &version, Unit::Us, "");
    row("RunPodSandbox -> ready, sequential", &seq, Unit::Ms, "");
    row(
        "RunPodSandbox -> ready, 4 concurrent",
        &par,
        Unit::Ms,
        &format!("batch wall {:.0} ms", ms(batch_wall)),
    );
    row("StopPodSandbox+RemovePodSandbox", &teardown, Unit::Ms, "");
    row(
        "CreateContainer (not started), 1 pod",
        &creates,
        Unit::Ms,
        &format!("{CONTAINERS} in {:.1} s", creates_total.as_secs_f64()),
    );
    row(
        "ListContainers, all",
        &all,
        Unit::Us,
        &format!("returns {CONTAINERS}"),
    );
    row(
        "ListContainers, label filter",
        &by_label,
        Unit::Us,
        &format!("returns 1 of {CONTAINERS}"),
    );
    row(
        "Stop+RemovePodSandbox, pod of 200 containers",
        &[list_teardown],
        Unit::Ms,
        "",
    );
    println!(
        "wall time of the run: {:.1} s",
        run_started.elapsed().as_secs_f64()
    );
    drop(daemon);
    Ok(())
}

/// RunPodSandbox for a pod named `name`: its id and how long the RPC took.
async fn run_pod(cri: &mut Client, name: &str, logs: &Path) -> Result<(String, Duration)> {
    let started = Instant::now();
    let id = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(name, logs)),
            runtime_handler: String::new(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name}"))?
        .into_inner()
        .pod_sandbox_id;
    Ok((id, started.elapsed()))
}

/// StopPodSandbox then RemovePodSandbox; how long both took.
async fn remove_pod(cri: &mut Client, id: &str) -> Result<Duration> {
    let started = Instant::now();
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .with_context(|| format!("StopPodSandbox {id}"))?;
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .with_context(|| format!("RemovePodSandbox {id}"))?;
    Ok(started.elapsed())
}

/// Fails unless no pod and no container is left.
async fn ensure_empty(cri: &mut Client) -> Result<()> {
    let containers = list(cri, cri::ContainerFilter::default()).await?.len();
    ensure!(containers == 0, "{containers} containers left");
    let pods = cri
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items
        .len();
    ensure!(pods == 0, "{pods} pods left");
    Ok(())
}

async fn time_version(cri: &mut Client) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for _ in 0..CALLS {
        let started = Instant::now();
        cri.version(cri::VersionRequest::default())
            .await
            .context("Version")?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

async fn list(cri: &mut Client, filter: cri::ContainerFilter) -> Result<Vec<cri::Container>> {
    Ok(cri
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers)
}

/// `CALLS` ListContainers with `filter`, each checked to return `expect` containers.
async fn time_list(
    cri: &mut Client,
    filter: cri::ContainerFilter,
    expect: usize,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for _ in 0..CALLS {
        let started = Instant::now();
        let got = list(cri, filter.clone()).await?;
        samples.push(started.elapsed());
        ensure!(
            got.len() == expect,
            "ListContainers returned {} containers, expected {expect}",
            got.len()
        );
    }
    Ok(samples)
}

#[derive(Clone, Copy)]
enum Unit {
    Ms,
    Us,
}

fn row(what: &str, samples: &[Duration], unit: Unit, note: &str) {
    let show = |d: Duration| match unit {
        Unit::Ms => format!("{:.1} ms", ms(d)),
        Unit::Us => format!("{:.0} µs", d.as_secs_f64() * 1e6),
    };
    println!(
        "{what:<44} {:>4} {:>10} {:>10}  {note}",
        samples.len(),
        show(percentile(samples, 50.0)),
        show(percentile(samples, 95.0)),
    );
}
