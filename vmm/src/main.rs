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

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Parser;
use vessel_vmm::api::{self, MetricsSource, VmControl};
use vessel_vmm::boot::loader::Entry;
use vessel_vmm::boot::{acpi, layout, linux, loader, pvh};
use vessel_vmm::builder;
use vessel_vmm::devices::acpi::{SleepControl, SLEEP_CONTROL_PORT};
use vessel_vmm::devices::legacy::{
    I8042Device, PvPanic, SerialDevice, COM1_IRQ, COM1_PORT, I8042_COMMAND_PORT, PVPANIC_PORT,
};
use vessel_vmm::devices::virtio::mmio::MMIO_LEN;
use vessel_vmm::devices::virtio::net::Tap;
use vessel_vmm::devices::Bus;
use vessel_vmm::event_loop::EventLoop;
use vessel_vmm::runner::{self, ExitCounts, Stops, VcpuThreads, VmEnd};
use vessel_vmm::seccomp::{self, Role};
use vessel_vmm::vstate::vcpu::Vcpu;
use vessel_vmm::vstate::vm::Vm;
use vessel_vmm::vstate::{memory, open_kvm};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// The most vCPUs a VM gets (one xAPIC id each).
const MAX_VCPUS: i64 = 64;

/// The most guest RAM (above the hole below 4 GiB, it continues from 4 GiB).
const MAX_MEMORY_MIB: u64 = 1024 * 1024;

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
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=MAX_VCPUS))]
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

fn main() -> ExitCode {
    // Status 2 means a guest reset, so a bad command line is 1, as other VMM errors are.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vessel-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
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
    if !args.no_seccomp {
        // Every thread started from here on installs its own filter.
        seccomp::enable()?;
    }
    if !(2..=MAX_MEMORY_MIB).contains(&args.memory_mib) {
        bail!(
            "--memory-mib {} is outside 2..={MAX_MEMORY_MIB}",
            args.memory_mib
        );
    }
    let ram = args.memory_mib << 20;
    let kvm = open_kvm()?;
    let vm = Vm::new(&kvm)?;
    let memory = memory::create(&layout::ram_regions(ram))?;
    // Memory before the irqchip: once the in-kernel irqchip exists, every memory slot
    // change costs KVM milliseconds (measured: 5-8 ms a slot on this project's host, against
    // 0.05 ms before it).
    vm.register_memory(&memory)?;
    vm.create_irqchip()?;
    set_up_and_run(&args, &kvm, &vm, &memory)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text:?} is not a MAC address: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text:?} is not a MAC address: it needs 6 bytes"))
}

/// A locally administered unicast MAC unique per running VM (CIDs are): 02:76:73 ("vs"),
/// then the CID's low 24 bits.
fn default_mac(cid: u64) -> [u8; 6] {
    let c = cid.to_be_bytes();
    [0x02, 0x76, 0x73, c[5], c[6], c[7]]
}

/// The tap `--tap` names or `--tap-fd` passes, if any.
fn open_tap(args: &Args) -> Result<Option<Tap>> {
    if let Some(name) = &args.tap {
        return Ok(Some(Tap::open(name)?));
    }
    let Some(fd) = args.tap_fd else {
        return Ok(None);
    };
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails on a number that is not
    // an open descriptor, which is what this checks before taking ownership.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("--tap-fd {fd} is not an open descriptor");
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process for it
    // alone by `--tap-fd`; nothing else here owns or closes it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    Ok(Some(
        Tap::from_fd(owned).with_context(|| format!("--tap-fd {fd}"))?,
    ))
}

/// The first virtio-mmio window and its interrupt line; each further device takes the next
/// window and line (the DSDT tells the guest).
const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
const VIRTIO_IRQ: u32 = 5;

/// Loads the guest, creates its devices and vCPUs, and runs
/// the guest until it stops.
fn set_up_and_run(
    args: &Args,
    kvm: &kvm_ioctls::Kvm,
    vm: &Vm,
    memory: &memory::GuestMemory,
) -> Result<ExitCode> {
    let loaded = loader::load(memory, &args.kernel, args.initrd.as_deref(), &args.cmdline)?;
    let mmio = Arc::new(Bus::default());
    let mut events = EventLoop::new()?;
    // Each virtio device takes the next MMIO window and interrupt line.
    let mut slots = (0u64..).map(|n| (VIRTIO_MMIO_BASE + n * MMIO_LEN, VIRTIO_IRQ + n as u32));
    let mut slot = move || slots.next().unwrap_or_default();
    let (base, irq) = slot();
    let mut virtio = vec![builder::add_virtio_rng(
        vm,
        memory,
        &mmio,
        &mut events,
        base,
        irq,
    )?];
    if let Some(uds) = &args.vsock_uds {
        let (base, irq) = slot();
        virtio.push(builder::add_virtio_vsock(
            vm,
            memory,
            &mmio,
            &mut events,
            args.guest_cid,
            uds,
            base,
            irq,
        )?);
    }
    if let Some(socket) = &args.fs_socket {
        let (base, irq) = slot();
        virtio.push(
            builder::add_virtio_fs(
                vm,
                memory,
                &mmio,
                &mut events,
                socket,
                &args.fs_tag,
                base,
                irq,
            )
            .with_context(|| format!("virtio-fs on {}", socket.display()))?,
        );
    }
    // Counters for the control socket's `metrics`, by name.
    let mut metrics: Vec<(String, MetricsSource)> = Vec::new();
    if let Some(tap) = open_tap(args)? {
        let (base, irq) = slot();
        let mac = args.mac.unwrap_or_else(|| default_mac(args.guest_cid));
        let (entry, net) =
            builder::add_virtio_net(vm, memory, &mmio, &mut events, tap, mac, base, irq)?;
        virtio.push(entry);
        metrics.push((
            "net0".into(),
            Box::new(move || {
                net.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .metrics()
                    .to_json()
            }),
        ));
    }
    if let Some(disk) = &args.disk {
        let (base, irq) = slot();
        virtio.push(builder::add_virtio_blk(
            vm,
            memory,
            &mmio,
            &mut events,
            disk,
            args.disk_read_only,
            base,
            irq,
        )?);
    }
    let rsdp = acpi::write_tables(memory, args.vcpus, &virtio)?;
    match loaded.entry {
        Entry::Pvh(_) => pvh::write_start_info(
            memory,
            GuestAddress(loader::CMDLINE_ADDR),
            loaded.initrd,
            rsdp,
        )?,
        Entry::Linux64 { header, .. } => linux::write_boot_params(
            memory,
            &linux::BootInfo {
                header,
                cmdline: GuestAddress(loader::CMDLINE_ADDR),
                cmdline_len: loaded.cmdline_len,
                initrd: loaded.initrd,
                rsdp,
            },
        )?,
    }

    let console: Box<dyn Write + Send> = match &args.console {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open console {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).context("serial eventfd")?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)?;
    let pio = Arc::new(Bus::default());
    pio.insert(
        COM1_PORT,
        8,
        Arc::new(Mutex::new(SerialDevice::new(serial_irq, console))),
    )?;
    let reset = EventFd::new(libc::EFD_NONBLOCK).context("reset eventfd")?;
    pio.insert(
        I8042_COMMAND_PORT,
        1,
        Arc::new(Mutex::new(I8042Device::new(
            reset.try_clone().context("reset eventfd")?,
        ))),
    )?;
    let power_off = EventFd::new(libc::EFD_NONBLOCK).context("power-off eventfd")?;
    pio.insert(
        SLEEP_CONTROL_PORT,
        1,
        Arc::new(Mutex::new(SleepControl::new(
            power_off.try_clone().context("power-off eventfd")?,
        ))),
    )?;
    let panic = EventFd::new(libc::EFD_NONBLOCK).context("panic eventfd")?;
    pio.insert(
        PVPANIC_PORT,
        1,
        Arc::new(Mutex::new(PvPanic::new(
            panic.try_clone().context("panic eventfd")?,
        ))),
    )?;
    // Device threads end with the process; the loop is not joined.
    let (_event_thread, _stop_events) = events.spawn()?;

    let vcpus = (0..args.vcpus)
        .map(|id| -> Result<Vcpu> {
            let vcpu = Vcpu::new(vm, u64::from(id), pio.clone(), mmio.clone())?;
            vcpu.configure_cpu(kvm, args.vcpus)?;
            if id == 0 {
                // The others wait for the guest's INIT/SIPI in the in-kernel LAPIC.
                match loaded.entry {
                    Entry::Pvh(addr) => vcpu.set_pvh_entry(memory, addr.0, pvh::START_INFO_ADDR)?,
                    Entry::Linux64 { addr, .. } => {
                        vcpu.set_linux64_entry(memory, addr.0, linux::ZERO_PAGE_ADDR)?
                    }
                }
            }
            vcpu.set_lint()?;
            Ok(vcpu)
        })
        .collect::<Result<Vec<_>>>()?;

    runner::install_kick_handler()?;
    let threads = VcpuThreads::default();
    let exits = Arc::new(ExitCounts::default());
    let control = match &args.api_sock {
        Some(path) => {
            let kick = threads.clone();
            let control = Arc::new(VmControl::new(
                vcpus.len(),
                args.memory_mib,
                Box::new(move || kick.kick()),
            ));
            let counts = exits.clone();
            control.add_metrics("vcpu_exits", Box::new(move || counts.to_json()));
            for (name, source) in metrics {
                control.add_metrics(&name, source);
            }
            api::serve(path, control.clone())
                .with_context(|| format!("control socket {}", path.display()))?;
            Some(control)
        }
        None => None,
    };
    let stops = Stops {
        power_off,
        reset,
        panic,
    };
    let ended = runner::spawn(vcpus, stops, exits, control, threads)?;
    seccomp::apply(Role::Main)?;
    // The first vCPU to stop decides the exit status; the process ends the others.
    match ended
        .recv()
        .context("every vCPU thread ended without a status")??
    {
        VmEnd::PowerOff | VmEnd::Shutdown => Ok(ExitCode::SUCCESS),
        VmEnd::Reset => Ok(ExitCode::from(2)),
        VmEnd::Panic => {
            eprintln!("vessel-vmm: the guest kernel panicked");
            Ok(ExitCode::from(3))
        }
    }
}
