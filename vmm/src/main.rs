//! vessel-vmm: one microVM per process. Loads a PVH ELF kernel (and initramfs), writes the
//! ACPI tables (hardware-reduced: the power-off port, COM1, virtio-rng and, when asked,
//! virtio-vsock (`--vsock-uds`) and virtio-blk (`--disk`) on virtio-mmio), puts the 8250 serial console on stdout or a
//! file, runs the device event loop and vCPU 0,
//! and exits when the guest stops: 0 on a power-off (S5 through the ACPI sleep control
//! register), 2 on a reset (triple fault or i8042 reset: a guest panic with `reboot=t` or
//! `reboot=k`), 1 on a VMM error; `--api-sock` serves the control socket (pause, resume,
//! shutdown, info). virtio-fs is not there yet, so the shim still runs pods on QEMU.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Parser;
use vessel_vmm::api::{self, VmControl};
use vessel_vmm::boot::{acpi, loader, pvh};
use vessel_vmm::builder;
use vessel_vmm::devices::acpi::{SleepControl, SLEEP_CONTROL_PORT};
use vessel_vmm::devices::legacy::{
    I8042Device, SerialDevice, COM1_IRQ, COM1_PORT, I8042_COMMAND_PORT,
};
use vessel_vmm::devices::virtio::mmio::MMIO_LEN;
use vessel_vmm::devices::Bus;
use vessel_vmm::event_loop::EventLoop;
use vessel_vmm::vstate::vcpu::{Exit, Vcpu};
use vessel_vmm::vstate::vm::Vm;
use vessel_vmm::vstate::{memory, open_kvm};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// RAM ends below the 32-bit MMIO hole until guest memory is split around it.
const MAX_MEMORY_MIB: u64 = 3 * 1024;

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
    /// The control socket (`pause`, `resume`, `shutdown`, `info`); none when absent.
    #[arg(long)]
    api_sock: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vessel-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    if !(2..=MAX_MEMORY_MIB).contains(&args.memory_mib) {
        bail!(
            "--memory-mib {} is outside 2..={MAX_MEMORY_MIB}",
            args.memory_mib
        );
    }
    let ram = args.memory_mib << 20;
    let kvm = open_kvm()?;
    let vm = Vm::new(&kvm)?;
    vm.create_irqchip()?;
    let memory = memory::create(&[(GuestAddress(0), ram as usize)])?;
    // Registering guest memory with KVM is the slowest step of a start (milliseconds on some
    // hosts); loading, tables, devices and vCPU state are set up beside it.
    std::thread::scope(|scope| {
        let registering = scope.spawn(|| vm.register_memory(&memory));
        set_up_and_run(&args, &kvm, &vm, &memory, ram, || {
            registering
                .join()
                .map_err(|_| anyhow::anyhow!("the memory registration thread panicked"))?
                .map_err(anyhow::Error::from)
        })
    })
}

/// The first virtio-mmio window and its interrupt line; each further device takes the next
/// window and line (the DSDT tells the guest).
const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
const VIRTIO_IRQ: u32 = 5;

/// Does nothing: the signal only has to interrupt the vCPU's KVM_RUN.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Serves the control socket; its commands kick this (the vCPU's) thread out of KVM_RUN.
fn start_api(path: &std::path::Path, memory_mib: u64) -> Result<Arc<VmControl>> {
    register_signal_handler(SIGRTMIN(), kick_handler).context("kick signal handler")?;
    // SAFETY: pthread_self has no preconditions; it names the calling thread.
    let vcpu_thread = unsafe { libc::pthread_self() };
    let kick = move || {
        // SAFETY: the vCPU runs on the main thread, which lives until the process exits, so
        // the id stays valid; the signal's handler does nothing but interrupt KVM_RUN.
        unsafe { libc::pthread_kill(vcpu_thread, SIGRTMIN()) };
    };
    let control = Arc::new(VmControl::new(memory_mib, Box::new(kick)));
    api::serve(path, control.clone())
        .with_context(|| format!("control socket {}", path.display()))?;
    Ok(control)
}

/// Loads the guest, creates its devices and vCPU 0, waits for `memory_registered`, and runs
/// the guest until it stops.
fn set_up_and_run(
    args: &Args,
    kvm: &kvm_ioctls::Kvm,
    vm: &Vm,
    memory: &memory::GuestMemory,
    ram: u64,
    memory_registered: impl FnOnce() -> Result<()>,
) -> Result<ExitCode> {
    let loaded = loader::load(
        memory,
        ram,
        &args.kernel,
        args.initrd.as_deref(),
        &args.cmdline,
    )?;
    let mmio = Arc::new(Bus::default());
    let mut events = EventLoop::new()?;
    let mut virtio = vec![builder::add_virtio_rng(
        vm,
        memory,
        &mmio,
        &mut events,
        VIRTIO_MMIO_BASE,
        VIRTIO_IRQ,
    )?];
    if let Some(uds) = &args.vsock_uds {
        virtio.push(builder::add_virtio_vsock(
            vm,
            memory,
            &mmio,
            args.guest_cid,
            uds,
            VIRTIO_MMIO_BASE + MMIO_LEN,
            VIRTIO_IRQ + 1,
        )?);
    }
    if let Some(disk) = &args.disk {
        let n = virtio.len() as u64;
        virtio.push(builder::add_virtio_blk(
            vm,
            memory,
            &mmio,
            &mut events,
            disk,
            args.disk_read_only,
            VIRTIO_MMIO_BASE + n * MMIO_LEN,
            VIRTIO_IRQ + n as u32,
        )?);
    }
    let rsdp = acpi::write_tables(memory, 1, &virtio)?;
    pvh::write_start_info(
        memory,
        ram,
        GuestAddress(loader::CMDLINE_ADDR),
        loaded.initrd,
        rsdp,
    )?;

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
    // Device threads end with the process; the loop is not joined.
    let (_event_thread, _stop_events) = events.spawn()?;

    let mut vcpu = Vcpu::new(vm, 0, pio, mmio)?;
    vcpu.configure_cpu(kvm)?;
    vcpu.set_pvh_entry(memory, loaded.entry.0, pvh::START_INFO_ADDR)?;
    vcpu.set_lint()?;
    memory_registered()?;
    let control = match &args.api_sock {
        Some(path) => Some(start_api(path, args.memory_mib)?),
        None => None,
    };
    loop {
        let exit = vcpu.run_once()?;
        if let Some(control) = &control {
            if !control.checkpoint() {
                return Ok(ExitCode::SUCCESS); // shut down through the control socket
            }
        }
        match exit {
            Exit::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN) => {
                return Ok(ExitCode::SUCCESS)
            }
            Exit::SystemEvent(_) | Exit::Shutdown => return Ok(ExitCode::from(2)),
            // A port write may have been the ACPI power-off or the i8042 reset command.
            Exit::Io if power_off.read().is_ok() => return Ok(ExitCode::SUCCESS),
            Exit::Io if reset.read().is_ok() => return Ok(ExitCode::from(2)),
            // Only without an in-kernel irqchip does a halt reach the VMM.
            Exit::Halt | Exit::Io | Exit::Mmio | Exit::Interrupted => continue,
        }
    }
}
