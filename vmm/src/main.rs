//! vessel-vmm: one microVM per process. Loads the kernel (an ELF vmlinux, entered at its PVH
//! note or its 64-bit entry, or a bzImage) with its initramfs and command line; writes the
//! ACPI tables (hardware-reduced: the power-off port, COM1 and the virtio-mmio devices);
//! serves the devices: the 8250 serial console (stdout or `--console`), virtio-rng, and
//! when asked virtio-vsock on a hybrid Unix socket (`--vsock-uds`), virtio-fs through a
//! vhost-user backend (`--fs-socket`), virtio-net on a tap (`--tap`/`--tap-fd`) and
//! virtio-blk on a file (`--disk`). The devices run on one event loop thread, each vCPU on
//! its own thread, every thread under its seccomp filter. It exits when
//! the guest stops: 0 on a power-off (S5 through the ACPI sleep control register), 2 on a
//! reset (triple fault or i8042 reset), 3 on a guest kernel panic (reported through the
//! pvpanic port; a panic before the guest's pvpanic driver loaded ends as a reset), 1 on a
//! VMM error or a bad command line; `--api-sock` serves the control socket (pause, resume,
//! shutdown, info, metrics).
//!
//! This file is the command line only: arguments → [`VmConfig`] → `build()?.run()`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use vessel_vmm::builder::VmBuilder;
use vessel_vmm::config::{
    default_mac, parse_mac, ConfigError, DiskConfig, FsConfig, NetConfig, TapSource, VmConfig,
    VsockConfig, MAX_VCPUS,
};
use vessel_vmm::runner::VmEnd;

#[derive(Parser)]
#[command(about = "vessel's built-in microVM monitor")]
struct Args {
    /// ELF kernel with a PVH entry note (e.g. vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "console=ttyS0 reboot=t panic=-1")]
    cmdline: String,
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// vCPUs, each on its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_VCPUS)))]
    vcpus: u8,
    /// Where the serial console goes (appended); stdout when absent.
    #[arg(long)]
    console: Option<PathBuf>,
    /// The hybrid vsock Unix socket (host clients write `CONNECT <port>`); no vsock device
    /// when absent.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = 3)]
    guest_cid: u64,
    /// A file the guest sees as a virtio-blk disk.
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Offer `--disk` read-only.
    #[arg(long, requires = "disk")]
    disk_read_only: bool,
    /// A vhost-user-fs backend's socket (virtiofsd); no virtio-fs device when absent.
    #[arg(long)]
    fs_socket: Option<PathBuf>,
    /// The tag the guest mounts the `--fs-socket` file system by.
    #[arg(long, default_value = "vessel-shared", requires = "fs_socket")]
    fs_tag: String,
    /// A tap interface the guest sees as a virtio-net device (`%d` lets the kernel number
    /// it); created if missing, removed with the VMM unless it was persistent.
    #[arg(long, conflicts_with = "tap_fd")]
    tap: Option<String>,
    /// An open tap descriptor inherited from the parent (IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR), for a VMM that may not create interfaces itself.
    #[arg(long)]
    tap_fd: Option<i32>,
    /// The guest's MAC address; by default a locally administered one made from the CID.
    #[arg(long, value_parser = parse_mac)]
    mac: Option<[u8; 6]>,
    /// Run without the per-thread seccomp filters (to find a system call a filter lacks).
    #[arg(long)]
    no_seccomp: bool,
    /// The control socket (`pause`, `resume`, `shutdown`, `info`, `metrics`); none when
    /// absent.
    #[arg(long)]
    api_sock: Option<PathBuf>,
}

impl Args {
    fn into_config(self) -> Result<VmConfig> {
        let tap = match (self.tap, self.tap_fd) {
            (Some(name), _) => Some(TapSource::Name(name)),
            (None, Some(fd)) => {
                Some(TapSource::inherited(fd).with_context(|| format!("--tap-fd {fd}"))?)
            }
            (None, None) => None,
        };
        let mac = self.mac.unwrap_or_else(|| default_mac(self.guest_cid));
        Ok(VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            console: self.console,
            vsock: self.vsock_uds.map(|uds| VsockConfig {
                cid: self.guest_cid,
                uds,
            }),
            fs: self.fs_socket.map(|socket| FsConfig {
                socket,
                tag: self.fs_tag,
            }),
            net: tap.map(|tap| NetConfig { tap, mac }),
            disk: self.disk.map(|path| DiskConfig {
                path,
                read_only: self.disk_read_only,
            }),
            api_sock: self.api_sock,
            seccomp: !self.no_seccomp,
        })
    }
}

fn main() -> ExitCode {
    // Status 2 means a guest reset, so a bad command line is 1, as other VMM errors are.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    // Device and VMM warnings go to stderr (the shim's `vessel-vmm.log`), at the level
    // VESSEL_VMM_LOG sets (`info` by default).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VESSEL_VMM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    bound_malloc_arenas();
    match run(args) {
        Ok(end) => exit_code(end),
        Err(e) => {
            eprintln!("vessel-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Keeps glibc's malloc to its main arena (the VMM has a handful of threads), before the
/// seccomp filters are installed. A thread with an arena of its own has it trimmed on a
/// large free, and the first trim opens /proc/sys/vm/overcommit_memory: an `openat` no
/// filtered thread may make, which ended the VMM once the vsock device freed a large buffer
/// (strace: `free` → `shrink_heap` → `openat` in the event loop thread). The main arena
/// shrinks with `brk`, which every thread may call; so does working out an arena limit.
fn bound_malloc_arenas() {
    // SAFETY: mallopt only sets a malloc tunable; it is called before any thread starts.
    let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if set != 1 {
        tracing::warn!("mallopt(M_ARENA_MAX) failed");
    }
}

fn run(args: Args) -> Result<VmEnd> {
    let config = args.into_config()?;
    // The builder checks the limits; the error names the flag a limit came from.
    let builder = VmBuilder::new(config).map_err(|e| match e {
        ConfigError::Memory(_) => anyhow!("--memory-mib: {e}"),
        ConfigError::Vcpus(_) => anyhow!("--vcpus: {e}"),
        other => other.into(),
    })?;
    Ok(builder.build()?.run()?)
}

/// The exit status for how the guest ended.
fn exit_code(end: VmEnd) -> ExitCode {
    match end {
        VmEnd::PowerOff | VmEnd::Shutdown => ExitCode::SUCCESS,
        VmEnd::Reset => ExitCode::from(2),
        VmEnd::Panic => {
            eprintln!("vessel-vmm: the guest kernel panicked");
            ExitCode::from(3)
        }
    }
}
