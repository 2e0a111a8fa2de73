//! Benchmark of pod networking, in one run on one machine:
//! - throughput of a bounded TCP transfer (200 MB, busybox nc in the container) node → pod and
//!   pod → node, through the pod VM's tap, beside the same transfer over a veth between two
//!   plain namespaces (the no-VM floor): MB/s and the ratio; and nc over the guest's own
//!   loopback, what the guest's CPU allows;
//! - RunPodSandbox latency with the pod network (namespace, CNI ADD, tap) against a daemon
//!   with networking off.
//!
//! Everything runs in namespaces this benchmark makes ([`vessel_tests::node_net`]); no packet
//! leaves the machine. Prints figures; asserts that every byte arrived, never timings.
//!
//! Run: `cargo build --release -p vessel-shim && cargo run --release -p vessel-tests --bin
//! bench_net` (as root, after `scripts/test.sh` or `scripts/setup.sh` and the guest build).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vessel_protocols::cri;
use vessel_shim::network::netns::NetNs;
use vessel_tests::cri::{
    container_config, create_container, pod_config, registry_with_busybox, run_pod,
    start_container, Client, Daemon,
};
use vessel_tests::node_net::{self, NodeNet, GATEWAY};
use vessel_tests::TestEnv;

const TRANSFER: usize = 200 * 1000 * 1000;
const PODS: usize = 5;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let Some(env) = TestEnv::detect("bench_net") else {
        bail!("benchmark environment incomplete (see SKIPPED line)");
    };
    if !vessel_tests::registry::available("bench_net") || !node_net::plugins_available("bench_net")
    {
        bail!("registry or CNI plugins missing (scripts/setup.sh installs them)");
    }
    let logs = env.state_dir().join("logs");
    let (registry, image) = registry_with_busybox().await;
    let node = NodeNet::create();
    let daemon = node.daemon(&registry, &image).await;
    let mut cri = daemon.client().await;

    let floor = veth_floor()?;
    println!(
        "veth between two namespaces (floor): {:.1} MB/s",
        mb_per_s(TRANSFER, floor)
    );

    // Node → pod: the container's nc reads and discards.
    let (pod, ip) = pod_with(&mut cri, "sink", &image, "nc -l -p 5001 >/dev/null", &logs).await?;
    let addr: SocketAddr = format!("{ip}:5001").parse()?;
    let to_pod = node
        .netns
        .run(move || send_with_retry(addr))
        .context("enter the node namespace")??;
    remove(&mut cri, &pod).await?;

    // Pod → node: the container's nc writes zeros to a listener of the node namespace.
    let listener = node
        .netns
        .run(|| TcpListener::bind(("0.0.0.0", 5002)))
        .context("enter the node namespace")??;
    let receive = std::thread::spawn(move || receive_all(&listener));
    let command = format!("head -c {TRANSFER} /dev/zero | nc {GATEWAY} 5002");
    let (pod, _) = pod_with(&mut cri, "source", &image, &command, &logs).await?;
    let from_pod = receive
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    remove(&mut cri, &pod).await?;

    // The same nc pipeline over the guest's loopback: what the guest's CPU allows (under
    // TCG it, not the tap, bounds the pod's sending side).
    let (pod, _) = pod_with(&mut cri, "loop", &image, "exec sleep 3600", &logs).await?;
    let ctr = container_id(&mut cri, &pod).await?;
    let loopback = guest_loopback(&mut cri, &ctr).await?;
    remove(&mut cri, &pod).await?;
    println!(
        "inside the guest, nc over its loopback: {:.1} MB/s",
        mb_per_s(TRANSFER, loopback)
    );

    for (what, took) in [("node → pod", to_pod), ("pod → node", from_pod)] {
        println!(
            "{what} through the pod VM's tap: {:.1} MB/s ({:.2} of the veth floor)",
            mb_per_s(TRANSFER, took),
            floor.as_secs_f64() / took.as_secs_f64()
        );
    }

    // RunPodSandbox with the pod network, and on a daemon with networking off.
    let plain = Daemon::start().await;
    let mut plain_cri = plain.client().await;
    for (what, client) in [("with pod network", &mut cri), ("without", &mut plain_cri)] {
        let mut took = Vec::new();
        for i in 0..PODS {
            let started = Instant::now();
            let id = run_pod(client, &pod_config(&format!("lat-{i}"), &logs)).await;
            took.push(started.elapsed());
            remove(client, &id).await?;
        }
        took.sort();
        println!(
            "RunPodSandbox {what}: median {:.0} ms, max {:.0} ms ({PODS} pods)",
            took[PODS / 2].as_secs_f64() * 1000.0,
            took[PODS - 1].as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// A pod running `command` in busybox; its id and IP.
async fn pod_with(
    cri: &mut Client,
    name: &str,
    image: &str,
    command: &str,
    logs: &Path,
) -> Result<(String, String)> {
    let config = pod_config(name, logs);
    let id = run_pod(cri, &config).await;
    let ctr = create_container(
        cri,
        &id,
        &config,
        container_config(name, image, &["sh", "-c", command]),
    )
    .await
    .with_context(|| format!("CreateContainer {name}"))?;
    start_container(cri, &ctr).await;
    let ip = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    ensure!(!ip.is_empty(), "pod {name} has no IP");
    Ok((id, ip))
}

/// The pod's one container.
async fn container_id(cri: &mut Client, pod: &str) -> Result<String> {
    let list = cri
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    list.containers
        .first()
        .map(|c| c.id.clone())
        .context("the pod has no container")
}

/// [`TRANSFER`] bytes through busybox nc over the guest's loopback, timed from the host
/// (less the listener's head start).
async fn guest_loopback(cri: &mut Client, ctr: &str) -> Result<Duration> {
    const HEAD_START: Duration = Duration::from_millis(500);
    let script = format!(
        "nc -l -p 5005 >/dev/null & sleep 0.5; head -c {TRANSFER} /dev/zero | nc 127.0.0.1 5005; wait"
    );
    let started = Instant::now();
    let out = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.into(),
            cmd: vec!["sh".into(), "-c".into(), script],
            timeout: 600,
        })
        .await?
        .into_inner();
    ensure!(
        out.exit_code == 0,
        "guest loopback transfer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(started.elapsed().saturating_sub(HEAD_START))
}

async fn remove(cri: &mut Client, id: &str) -> Result<()> {
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    Ok(())
}

/// Sends [`TRANSFER`] bytes to `addr` (retrying the connect while the listener starts) and
/// waits for the receiver to close; the time from connect to close.
fn send_with_retry(addr: SocketAddr) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => bail!("connect {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let started = Instant::now();
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < TRANSFER {
        let n = chunk.len().min(TRANSFER - sent);
        stream.write_all(&chunk[..n])?;
        sent += n;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok(started.elapsed())
}

/// Accepts one connection and reads [`TRANSFER`] bytes; the time from the first byte.
fn receive_all(listener: &TcpListener) -> Result<Duration> {
    let (mut stream, _) = listener.accept()?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    let started = Instant::now();
    let mut got = n;
    while got < TRANSFER {
        match stream.read(&mut buf)? {
            0 => break,
            n => got += n,
        }
    }
    ensure!(got >= TRANSFER, "received {got} of {TRANSFER} bytes");
    Ok(started.elapsed())
}

/// The same transfer over a veth between two namespaces of their own.
fn veth_floor() -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let a = NetNs::create(&dir.path().join("a"))?;
    let b = NetNs::create(&dir.path().join("b"))?;
    let result = (|| {
        node_net::sh_in(
            &a,
            &format!(
                "ip link set lo up && ip link add v0 type veth peer name v1 netns {} \
                 && ip addr add 10.77.0.1/24 dev v0 && ip link set v0 up",
                b.path().display()
            ),
        );
        node_net::sh_in(
            &b,
            "ip link set lo up && ip addr add 10.77.0.2/24 dev v1 && ip link set v1 up",
        );
        let listener = b.run(|| TcpListener::bind(("10.77.0.2", 5003)))??;
        let receive = std::thread::spawn(move || -> Result<()> {
            let (mut s, _) = listener.accept()?;
            std::io::copy(&mut s, &mut std::io::sink())?;
            Ok(())
        });
        let took = a.run(|| send_with_retry("10.77.0.2:5003".parse().expect("addr")))??;
        receive
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        Ok(took)
    })();
    let _ = a.remove();
    let _ = b.remove();
    result
}
