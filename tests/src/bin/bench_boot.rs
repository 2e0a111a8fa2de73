//! Benchmark: pod VM spawn → agent healthy, and the host memory a running pod VM costs (PSS
//! of its VMM, virtiofsd and vsock helper), for each backend this host runs: vessel-vmm and
//! QEMU `-accel kvm` side by side where KVM runs full guests (e.g. inside the nested-KVM
//! host), QEMU `-accel tcg` elsewhere. Beside each, the floor: the same kernel + initramfs
//! booted bare by the same VMM to a trivial init (the agent with `vessel.floor`, which prints
//! a line and powers off at once). Prints p50 and max of each, and the vessel-vmm/QEMU ratios.
//!
//! Run: `cargo run --release -p vessel-tests --bin bench_boot [-- RUNS]` (as root, after the
//! guest image is built), or inside the nested-KVM host:
//! `scripts/nested-kvm.sh target/release/bench_boot`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vessel_shim::hypervisor::qemu::{boot_args, kernel_params, machine_args};
use vessel_shim::hypervisor::{probe_kvm, Backend, KvmSupport, VmConfig};
use vessel_shim::pod_vm::PodVm;
use vessel_tests::bench::ms;
use vessel_tests::leftovers::pss_kib;
use vessel_tests::TestEnv;

const FLOOR_MARKER: &str = "vessel-agent: floor";

/// One backend's figures.
struct Figures {
    name: &'static str,
    pod: Vec<Duration>,
    floor: Vec<Duration>,
    /// PSS in KiB of each running pod VM's host processes.
    pss_kib: Vec<u64>,
}

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
    let backends: Vec<Backend> = match probe_kvm() {
        KvmSupport::FullGuests => vec![Backend::Builtin, Backend::Qemu { kvm: true }],
        KvmSupport::Unusable(_) => vec![Backend::Qemu { kvm: false }],
    };
    let mut all = Vec::new();
    for backend in backends {
        all.push(measure(&env, backend, runs).await?);
    }

    println!(
        "vCPUs {}, memory {} MiB, {runs} runs each",
        env.hypervisor.vcpus, env.hypervisor.memory_mib
    );
    for f in &mut all {
        let (pod_p50, pod_max) = summary(&mut f.pod);
        let (floor_p50, floor_max) = summary(&mut f.floor);
        f.pss_kib.sort_unstable();
        let pss = f.pss_kib[(f.pss_kib.len() - 1) / 2];
        println!(
            "{:<16} pod VM spawn -> agent healthy: p50 {:>6.0} ms, max {:>6.0} ms",
            f.name,
            ms(pod_p50),
            ms(pod_max)
        );
        println!(
            "{:<16} bare boot to trivial init:      p50 {:>6.0} ms, max {:>6.0} ms (pod/floor {:.2}x)",
            f.name,
            ms(floor_p50),
            ms(floor_max),
            ms(pod_p50) / ms(floor_p50)
        );
        println!(
            "{:<16} host PSS per running pod VM:    p50 {:>6.1} MiB (VMM + virtiofsd{})",
            f.name,
            pss as f64 / 1024.0,
            if f.name.starts_with("qemu") {
                " + vhost-device-vsock"
            } else {
                ""
            }
        );
    }
    if let [builtin, qemu] = &mut all[..] {
        let p50 = |v: &mut Vec<Duration>| summary(v).0;
        let pss = |v: &[u64]| v[(v.len() - 1) / 2] as f64;
        println!(
            "vessel-vmm/QEMU ratios: pod start {:.2}x, bare boot {:.2}x, PSS {:.2}x",
            ms(p50(&mut builtin.pod)) / ms(p50(&mut qemu.pod)),
            ms(p50(&mut builtin.floor)) / ms(p50(&mut qemu.floor)),
            pss(&builtin.pss_kib) / pss(&qemu.pss_kib)
        );
    }
    Ok(())
}

async fn measure(env: &TestEnv, backend: Backend, runs: usize) -> Result<Figures> {
    let name = match backend {
        Backend::Native => anyhow::bail!("bench_boot measures pod VMs; a native pod boots none"),
        Backend::Builtin => "vessel-vmm",
        Backend::Qemu { kvm: true } => "qemu -accel kvm",
        Backend::Qemu { kvm: false } => "qemu -accel tcg",
    };
    let mut figures = Figures {
        name,
        pod: Vec::new(),
        floor: Vec::new(),
        pss_kib: Vec::new(),
    };
    for i in 0..runs {
        let mut spec = env.vm_spec(&format!("bench-{i}"));
        spec.backend = backend;
        let vm = PodVm::start(spec)
            .await
            .with_context(|| format!("start a pod VM on {name}"))?;
        figures.pod.push(vm.boot_time());
        figures.pss_kib.push(pss_kib(vm.run_dir()));
        vm.destroy().await.context("destroy pod VM")?;
    }
    for i in 0..runs {
        figures.floor.push(bare_boot(env, backend, i)?);
    }
    Ok(figures)
}

/// The backend's VMM with only a serial console on stdout, the same kernel and initramfs,
/// init powering off at once: time from spawn to the init's first line.
fn bare_boot(env: &TestEnv, backend: Backend, i: usize) -> Result<Duration> {
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
        nic: None,
        cgroup: None,
        native: None,
    };
    let mut command = match backend {
        Backend::Native => anyhow::bail!("a native pod boots no VM"),
        Backend::Builtin => {
            let mut c = Command::new(&h.vmm);
            c.args(["--kernel".as_ref(), h.kernel.as_os_str()])
                .args(["--initrd".as_ref(), h.initrd.as_os_str()])
                .args(["--cmdline", &kernel_params(&config, true)])
                .args(["--memory-mib", &h.memory_mib.to_string()])
                .args(["--vcpus", &h.vcpus.to_string()]);
            c
        }
        Backend::Qemu { kvm } => {
            let mut args = machine_args(&config, kvm);
            args.extend(["-serial".into(), "stdio".into()]);
            args.extend(boot_args(&config, kvm));
            let mut c = Command::new(&h.qemu);
            c.args(&args);
            c
        }
    };
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn the VMM")?;
    let stdout = child.stdout.take().context("VMM stdout")?;
    // Read to the end: the console stays open until the VMM exits.
    let mut seen = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read console")?;
        if seen.is_none() && line.contains(FLOOR_MARKER) {
            seen = Some(started.elapsed());
        }
    }
    let exited = wait_or_kill(&mut child, Duration::from_secs(30))?;
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
