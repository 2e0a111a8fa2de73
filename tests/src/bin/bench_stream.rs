//! Benchmark of the streaming data path, in one run on one machine: a 200 MB file in a pod's
//! container (on a tmpfs in the guest) read
//! - by `cat` to /dev/null inside the guest (ExecSync; the rate the guest's CPU allows),
//! - by `cat` through CRI Exec's stdout, over WebSocket (the tests' client) and over SPDY
//!   (crictl, client-go's executor),
//! - through PortForward from busybox nc in the container, over WebSocket and over SPDY
//!   (crictl port-forward),
//!
//! each minus the same path's cost for an empty command or connection. Prints MB/s and the
//! ratio to the in-guest rate; asserts that every byte arrived, never timings. Everything
//! runs in a node namespace this benchmark makes.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench_stream` (as root,
//! after `scripts/setup.sh` and the guest build).

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vessel_protocols::cri;
use vessel_shim::network::netns::NetNs;
use vessel_tests::cri::{
    container_config, pod_config, registry_with_busybox, run_container, run_pod, Client,
};
use vessel_tests::node_net::{self, NodeNet};
use vessel_tests::streams::{connect_in, Crictl, WsClient};
use vessel_tests::TestEnv;

const SIZE: usize = 200 * 1000 * 1000;
const NC_PORT: u16 = 9000;
const ROUNDS: usize = 2;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let name = "bench_stream";
    let Some(env) = TestEnv::detect(name) else {
        bail!("benchmark environment incomplete (see SKIPPED line)");
    };
    if !vessel_tests::registry::available(name) || !node_net::plugins_available(name) {
        bail!("registry or CNI plugins missing (scripts/setup.sh installs them)");
    }
    let (registry, image) = registry_with_busybox().await;
    let node = NodeNet::create();
    let daemon = node.daemon(&registry, &image).await;
    let mut cri = daemon.client().await;
    let crictl = Crictl::find(name, node.netns.path(), &daemon.socket);
    let ns = NetNs::at(node.netns.path());

    // A pod with room for the file in guest RAM (1 GiB limit), a privileged container that
    // puts it on a tmpfs and serves it with nc on every connection.
    let mut config = pod_config("bench-stream", &env.state_dir().join("logs"));
    config.linux = Some(cri::LinuxPodSandboxConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 1024 << 20,
            ..Default::default()
        }),
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = run_pod(&mut cri, &config).await;
    let setup = format!(
        "mkdir -p /blob && mount -t tmpfs -o size=256m tmpfs /blob \
         && head -c {SIZE} /dev/zero > /blob/f && touch /blob/ready \
         && while true; do nc -l -p {NC_PORT} < /blob/f; done"
    );
    let mut ctr_config = container_config("blob", &image, &["sh", "-c", &setup]);
    ctr_config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctr = run_container(&mut cri, &pod, &config, ctr_config).await;
    let measured = measure(&mut cri, &ns, &node, crictl.as_ref(), &pod, &ctr).await;
    if measured.is_err() {
        let log = vessel_shim::hypervisor::tail_file(&daemon.log(), 60);
        eprintln!("---- vessel-shim log (last lines)\n{log}");
        vessel_tests::print_pod_logs(&daemon.state().join("pods"));
    }
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    measured
}

/// Every figure, printed.
async fn measure(
    cri: &mut Client,
    ns: &NetNs,
    node: &NodeNet,
    crictl: Option<&Crictl>,
    pod: &str,
    ctr: &str,
) -> Result<()> {
    let (pod, ctr) = (pod.to_owned(), ctr.to_owned());
    wait_ready(cri, &ctr).await?;

    let mut guest = f64::MAX;
    for _ in 0..ROUNDS {
        guest = guest.min(exec_sync_cost(cri, &ctr, "cat /blob/f > /dev/null").await?);
    }
    println!("in the guest: cat to /dev/null: {}", rate(guest));
    let report = |what: &str, secs: f64| {
        println!(
            "{what}: {} ({:.2} of the in-guest rate)",
            rate(secs),
            guest / secs
        );
    };

    let (mut ws_exec, mut ws_forward) = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        ws_exec = ws_exec.min(ws_exec_cost(cri, ns, &ctr).await?);
        ws_forward = ws_forward.min(ws_forward_cost(cri, ns, &pod).await?);
    }
    report("exec stdout over WebSocket", ws_exec);
    report("port-forward over WebSocket", ws_forward);
    match crictl {
        Some(crictl) => {
            let mut spdy_exec = f64::MAX;
            for _ in 0..ROUNDS {
                spdy_exec = spdy_exec.min(crictl_exec_cost(crictl, &ctr)?);
            }
            report("exec stdout over SPDY (crictl)", spdy_exec);
            let spdy_forward = crictl_forward_cost(crictl, node, &pod).await?;
            report("port-forward over SPDY (crictl)", spdy_forward);
        }
        None => println!("SPDY figures: no crictl (see SKIPPED line)"),
    }
    Ok(())
}

fn rate(secs: f64) -> String {
    format!("{:.1} MB/s", SIZE as f64 / 1e6 / secs)
}

async fn wait_ready(cri: &mut Client, ctr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let (code, _) = exec_sync(cri, ctr, "test -e /blob/ready").await?;
        if code == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("the container never wrote its file")
}

async fn exec_sync(cri: &mut Client, ctr: &str, cmd: &str) -> Result<(i32, Duration)> {
    let start = Instant::now();
    let out = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.into(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            timeout: 600,
        })
        .await?
        .into_inner();
    Ok((out.exit_code, start.elapsed()))
}

/// Seconds `cmd` takes beyond an empty ExecSync.
async fn exec_sync_cost(cri: &mut Client, ctr: &str, cmd: &str) -> Result<f64> {
    let (_, empty) = exec_sync(cri, ctr, "true").await?;
    let (code, full) = exec_sync(cri, ctr, cmd).await?;
    ensure!(code == 0, "{cmd} exited {code}");
    Ok((full.saturating_sub(empty)).as_secs_f64().max(1e-6))
}

/// Bytes on stdout and the seconds of one WebSocket exec of `cmd`.
async fn ws_exec(cri: &mut Client, ns: &NetNs, ctr: &str, cmd: &[&str]) -> Result<(usize, f64)> {
    let start = Instant::now();
    let url = cri
        .exec(cri::ExecRequest {
            container_id: ctr.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdout: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .url;
    let mut ws = WsClient::connect(ns, &url, "v4.channel.k8s.io").await?;
    let mut bytes = 0;
    while let Some((ch, data)) = ws.next().await {
        if ch == 1 {
            bytes += data.len();
        }
    }
    Ok((bytes, start.elapsed().as_secs_f64()))
}

async fn ws_exec_cost(cri: &mut Client, ns: &NetNs, ctr: &str) -> Result<f64> {
    let (_, empty) = ws_exec(cri, ns, ctr, &["true"]).await?;
    let (bytes, full) = ws_exec(cri, ns, ctr, &["cat", "/blob/f"]).await?;
    ensure!(
        bytes == SIZE,
        "exec over WebSocket moved {bytes} of {SIZE} bytes"
    );
    Ok((full - empty).max(1e-6))
}

/// Bytes from the nc port, the error channel's text and the seconds of one WebSocket port
/// forward.
async fn ws_forward(
    cri: &mut Client,
    ns: &NetNs,
    pod: &str,
    port: u16,
) -> Result<(usize, String, f64)> {
    let start = Instant::now();
    let url = cri
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![port.into()],
        })
        .await?
        .into_inner()
        .url;
    let mut ws = WsClient::connect(ns, &url, "v4.channel.k8s.io").await?;
    let mut bytes = 0;
    let mut error = Vec::new();
    let mut preamble = [false; 2];
    while let Some((ch, data)) = ws.next().await {
        match ch {
            0 | 1 if !preamble[ch as usize] => preamble[ch as usize] = true,
            0 => bytes += data.len(),
            1 => error.extend(data),
            _ => {}
        }
    }
    let error = String::from_utf8_lossy(&error).into_owned();
    Ok((bytes, error, start.elapsed().as_secs_f64()))
}

async fn ws_forward_cost(cri: &mut Client, ns: &NetNs, pod: &str) -> Result<f64> {
    // A port nobody listens on: the session's cost without the bytes.
    let (_, _, empty) = ws_forward(cri, ns, pod, 9).await?;
    let (bytes, error, full) = ws_forward(cri, ns, pod, NC_PORT).await?;
    ensure!(
        bytes == SIZE,
        "port-forward over WebSocket moved {bytes} of {SIZE} bytes: {error}"
    );
    Ok((full - empty).max(1e-6))
}

/// Bytes and seconds of `crictl exec ctr <cmd>`.
fn crictl_exec(crictl: &Crictl, ctr: &str, cmd: &[&str]) -> Result<(usize, f64)> {
    let mut args = vec!["exec", ctr];
    args.extend_from_slice(cmd);
    let start = Instant::now();
    let mut child = crictl
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("crictl exec")?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n;
    }
    ensure!(child.wait()?.success(), "crictl exec {cmd:?} failed");
    Ok((bytes, start.elapsed().as_secs_f64()))
}

fn crictl_exec_cost(crictl: &Crictl, ctr: &str) -> Result<f64> {
    let (_, empty) = crictl_exec(crictl, ctr, &["true"])?;
    let (bytes, full) = crictl_exec(crictl, ctr, &["cat", "/blob/f"])?;
    ensure!(bytes == SIZE, "crictl exec moved {bytes} of {SIZE} bytes");
    Ok((full - empty).max(1e-6))
}

/// Seconds of reading the nc port through `crictl port-forward`, from the first byte (old
/// client-go ends a whole forward when one connection is refused, so each round has a
/// forwarder of its own, started once nc listens again).
async fn crictl_forward_cost(crictl: &Crictl, node: &NodeNet, pod: &str) -> Result<f64> {
    use tokio::io::AsyncReadExt;
    let url = "http://127.0.0.1:19000";
    let mut fastest = f64::MAX;
    for _ in 0..ROUNDS {
        // nc starts again after each connection.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let forward = crictl.spawn(&["port-forward", pod, &format!("19000:{NC_PORT}")]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tcp = loop {
            match connect_in(&node.netns, url).await {
                Ok(tcp) => break tcp,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => bail!("crictl port-forward never listened: {e}"),
            }
        };
        let mut buf = vec![0u8; 1 << 20];
        let first = tcp.read(&mut buf).await?;
        let start = Instant::now();
        let mut bytes = first;
        loop {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            bytes += n;
        }
        let secs = start.elapsed().as_secs_f64();
        let out = forward.stop();
        ensure!(
            bytes == SIZE,
            "crictl port-forward moved {bytes} of {SIZE} bytes; it said: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fastest = fastest.min(secs);
    }
    Ok(fastest.max(1e-6))
}
