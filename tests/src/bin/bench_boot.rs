//! Benchmark: pod VM spawn → agent healthy, against the floor of the same kernel + initramfs
//! booted bare by QEMU to a trivial init (the agent with `vessel.floor`, which prints a line
//! and powers off at once). Prints p50 and max of each and their ratio.
//!
//! Run: `cargo run --release -p vessel-tests --bin bench_boot [-- RUNS]` (as root, after the
//! guest image is built).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vessel_shim::hypervisor::qemu::{boot_args, machine_args};
use vessel_shim::hypervisor::{Backend, VmConfig};
use vessel_tests::TestEnv;

const FLOOR_MARKER: &str = "vessel-agent: floor";

#[tokio::main]
async fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("RUNS must be a number")?
        .unwrap_or(5);
    let Some(env) = TestEnv::detect("bench_boot") else {
        bail!("benchmark environment incomplete (see SKIPPED line)");
    };
    let Backend::Qemu { kvm } = env.backend else {
        bail!("the benchmark measures the QEMU backend");
    };

    let mut pod = Vec::new();
    for i in 0..runs {
        let vm = vessel_shim::sandbox::PodVm::start(env.vm_spec(&format!("bench-{i}")))
            .await
            .context("start pod VM")?;
        pod.push(vm.boot_time());
        vm.destroy().await.context("destroy pod VM")?;
    }

    let mut floor = Vec::new();
    for i in 0..runs {
        floor.push(bare_boot(&env, kvm, i)?);
    }

    let (pod_p50, pod_max) = summary(&mut pod);
    let (floor_p50, floor_max) = summary(&mut floor);
    println!("accel: {}", if kvm { "kvm" } else { "tcg" });
    println!(
        "pod VM spawn -> agent healthy ({runs} runs): p50 {:.0} ms, max {:.0} ms",
        ms(pod_p50),
        ms(pod_max)
    );
    println!(
        "bare boot to trivial init (floor, {runs} runs): p50 {:.0} ms, max {:.0} ms",
        ms(floor_p50),
        ms(floor_max)
    );
    println!("ratio pod/floor: p50 {:.2}x", ms(pod_p50) / ms(floor_p50));
    Ok(())
}

/// QEMU with only a serial console, the same kernel and initramfs, init powering off at once:
/// time from spawn to the init's first line.
fn bare_boot(env: &TestEnv, kvm: bool, i: usize) -> Result<Duration> {
    let h = &env.hypervisor;
    let config = VmConfig {
        id: format!("floor-{i}"),
        run_dir: env.state_dir().to_owned(),
        shared_dir: env.state_dir().to_owned(),
        cid: 3,
        vcpus: h.vcpus,
        memory_mib: h.memory_mib,
        kernel: h.kernel.clone(),
        initrd: h.initrd.clone(),
        kernel_params: "vessel.floor".into(),
    };
    let mut args = machine_args(&config, kvm);
    args.extend(["-serial".into(), "stdio".into()]);
    args.extend(boot_args(&config, kvm));
    let started = Instant::now();
    let mut child = Command::new(&h.qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn qemu")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut seen = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read console")?;
        if line.contains(FLOOR_MARKER) {
            seen = Some(started.elapsed());
            break;
        }
    }
    let exited = wait_or_kill(&mut child, Duration::from_secs(10))?;
    match seen {
        Some(t) if exited => Ok(t),
        Some(_) => bail!("bare guest printed the marker but did not power off"),
        None => bail!("bare guest never printed {FLOOR_MARKER:?}"),
    }
}

fn wait_or_kill(child: &mut std::process::Child, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()?;
    Ok(false)
}

fn summary(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let p50 = samples[(samples.len() - 1) / 2];
    let max = samples[samples.len() - 1];
    (p50, max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
