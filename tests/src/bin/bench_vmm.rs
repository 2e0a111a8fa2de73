//! Benchmark of VMM start and footprint, in one run and side by side: process spawn → the
//! first guest instruction (a tiny PVH kernel whose first instruction writes `!` to the serial
//! port; timed until the byte reaches this process), and each VMM's resident memory minus the
//! guest memory it touched (VmRSS − RssShmem: guest RAM is a memfd in both), for vessel-vmm
//! and for `qemu-system-x86_64 -M microvm` booting the same kernel with the same RAM. QEMU
//! runs with `-accel kvm`; if that cannot start here it falls back to `-accel tcg`, and the
//! output says so. Prints figures and the ratios against the targets (≥ 5× faster start,
//! ≤ ¼ of QEMU's overhead); never asserts timings.
//!
//! Run: `cargo build --release -p vessel-vmm && cargo run --release -p vessel-tests --bin bench_vmm`

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vessel_tests::cri::workspace_binary;
use vessel_tests::tiny_elf::{pvh_elf, PRINT_BANG};

const RUNS: usize = 10;
const MEMORY_MIB: u64 = 128;
const TIMEOUT: Duration = Duration::from_secs(20);

/// One start: time to the first console byte, and the VMM's own resident memory then.
struct Sample {
    first_byte: Duration,
    overhead_kib: u64,
}

/// `VmRSS − RssShmem` of a process, in KiB.
fn overhead_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok(field("VmRSS:")?.saturating_sub(field("RssShmem:")?))
}

/// Spawns `command`, waits for the first byte on its stdout, samples its memory, kills it.
fn sample(mut command: Command) -> Result<Sample> {
    let started = Instant::now();
    let mut child: Child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = tx.send(stdout.read_exact(&mut byte).map(|_| byte[0]));
    });
    let got = rx.recv_timeout(TIMEOUT);
    let first_byte = started.elapsed();
    // Let the process settle at its steady footprint before sampling it.
    std::thread::sleep(Duration::from_millis(200));
    let overhead = overhead_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    match got {
        Ok(Ok(b'!')) => Ok(Sample {
            first_byte,
            overhead_kib: overhead?,
        }),
        Ok(other) => bail!("unexpected console output {other:?}; stderr: {stderr}"),
        Err(_) => bail!("no console output within {TIMEOUT:?}; stderr: {stderr}"),
    }
}

fn vessel_vmm(vmm: &Path, kernel: &Path) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(kernel)
        .args(["--memory-mib", &MEMORY_MIB.to_string()]);
    c
}

fn qemu(kernel: &Path, accel: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let cpu = if accel == "kvm" {
        "host,-arch-capabilities"
    } else {
        "max"
    };
    c.args(["-M", "microvm,x-option-roms=off,rtc=off,memory-backend=mem"])
        .args(["-accel", accel, "-cpu", cpu])
        .args(["-m", &format!("{MEMORY_MIB}M")])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on"),
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel);
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary(name: &str, samples: &[Sample]) -> (f64, f64) {
    let ms: Vec<f64> = samples
        .iter()
        .map(|s| s.first_byte.as_secs_f64() * 1e3)
        .collect();
    let kib: Vec<f64> = samples.iter().map(|s| s.overhead_kib as f64).collect();
    let (ms_med, kib_med) = (median(ms.clone()), median(kib));
    let max = ms.iter().cloned().fold(0.0, f64::max);
    println!(
        "{name:<34} start→first instruction p50 {ms_med:7.1} ms (max {max:7.1}) | RSS − guest memory p50 {:7.0} KiB",
        kib_med
    );
    (ms_med, kib_med)
}

fn main() -> Result<()> {
    let vmm = workspace_binary("vessel-vmm");
    ensure!(
        vmm.is_file(),
        "{} missing (cargo build --release -p vessel-vmm)",
        vmm.display()
    );
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        bail!("/dev/kvm: {e}");
    }
    let dir = tempfile::tempdir()?;
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, pvh_elf(PRINT_BANG))?;

    let accel = match sample(qemu(&kernel, "kvm")) {
        Ok(_) => "kvm",
        Err(e) => {
            println!("note: QEMU with -accel kvm failed here ({e}); QEMU runs with -accel tcg");
            "tcg"
        }
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    // Alternate, so both see the same machine state.
    for _ in 0..RUNS {
        ours.push(sample(vessel_vmm(&vmm, &kernel)).context("vessel-vmm")?);
        theirs.push(sample(qemu(&kernel, accel)).context("qemu")?);
    }
    println!("{RUNS} starts each, {MEMORY_MIB} MiB guest RAM, tiny PVH kernel:");
    let (our_ms, our_kib) = summary("vessel-vmm", &ours);
    let (their_ms, their_kib) = summary(&format!("qemu -M microvm -accel {accel}"), &theirs);
    println!(
        "start: vessel-vmm is {:.1}x faster (target >= 5x); overhead: {:.2} of QEMU's (target <= 0.25)",
        their_ms / our_ms,
        our_kib / their_kib
    );
    Ok(())
}
