//! Putting devices into a VM: each virtio device gets a virtio-mmio window on the MMIO bus,
//! an irqfd for its interrupt line, an ioeventfd on its QueueNotify register, and a handler
//! on the device event loop.

use std::path::Path;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::boot::acpi::MmioDevice;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, MMIO_LEN, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::rng::{Rng, RngError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::{Bus, BusError};
use crate::event_loop::{EventLoop, EventLoopError, Handler, Trigger};
use crate::vstate::memory::GuestMemory;
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Puts `device` at `base` with interrupt line `irq`: its virtio-mmio window on the MMIO
/// bus, an irqfd, and an ioeventfd per queue on QueueNotify. Returns its DSDT entry and the
/// queue notification eventfds (for a device served by the event loop).
pub fn add_virtio_device(
    vm: &Vm,
    memory: &GuestMemory,
    mmio: &Bus,
    device: Arc<Mutex<dyn VirtioDevice>>,
    base: u64,
    irq: u32,
) -> Result<(MmioDevice, Vec<EventFd>), BuilderError> {
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(BuilderError::EventFd)?;
    vm.register_irqfd(&irqfd, irq)?;
    let transport = MmioTransport::new(
        device,
        memory.clone(),
        Arc::new(VirtioInterrupt::new(irqfd)),
    )?;
    let mut notify = Vec::new();
    for (queue, event) in transport.queue_events().iter().enumerate() {
        vm.register_queue_notify(event, base + QUEUE_NOTIFY_OFFSET, queue as u32)?;
        notify.push(event.try_clone().map_err(BuilderError::EventFd)?);
    }
    mmio.insert(base, MMIO_LEN, Arc::new(Mutex::new(transport)))?;
    let entry = MmioDevice {
        base: base as u32,
        len: MMIO_LEN as u32,
        irq,
    };
    Ok((entry, notify))
}

/// Puts a one-queue `device` at `base` with interrupt line `irq`, its requests served by
/// `process` on the event loop; returns its DSDT entry.
#[allow(clippy::too_many_arguments)]
fn add_event_served<T, E>(
    vm: &Vm,
    memory: &GuestMemory,
    mmio: &Bus,
    events: &mut EventLoop,
    device: T,
    (base, irq): (u64, u32),
    name: &'static str,
    process: fn(&mut T) -> Result<usize, E>,
) -> Result<MmioDevice, BuilderError>
where
    T: VirtioDevice + 'static,
    E: std::fmt::Display + 'static,
{
    let device = Arc::new(Mutex::new(device));
    let (entry, mut notify) = add_virtio_device(vm, memory, mmio, device.clone(), base, irq)?;
    let Some(request_queue) = notify.pop() else {
        return Ok(entry);
    };
    events.add(
        request_queue,
        Box::new(move || {
            let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = process(&mut device) {
                tracing::warn!(error = %e, device = name, "virtio request");
            }
        }),
    )?;
    Ok(entry)
}

/// Puts a virtio-rng device at `base` with interrupt line `irq`, served by `events`;
/// returns its DSDT entry.
pub fn add_virtio_rng(
    vm: &Vm,
    memory: &GuestMemory,
    mmio: &Bus,
    events: &mut EventLoop,
    base: u64,
    irq: u32,
) -> Result<MmioDevice, BuilderError> {
    let rng = Rng::new()?;
    add_event_served(
        vm,
        memory,
        mmio,
        events,
        rng,
        (base, irq),
        "virtio-rng",
        Rng::process_queue,
    )
}

/// Puts a virtio-blk device on the file `path` at `base` with interrupt line `irq`, served
/// by `events`; returns its DSDT entry.
#[allow(clippy::too_many_arguments)]
pub fn add_virtio_blk(
    vm: &Vm,
    memory: &GuestMemory,
    mmio: &Bus,
    events: &mut EventLoop,
    path: &Path,
    read_only: bool,
    base: u64,
    irq: u32,
) -> Result<MmioDevice, BuilderError> {
    let block = Block::new(path, read_only)?;
    let place = (base, irq);
    add_event_served(
        vm,
        memory,
        mmio,
        events,
        block,
        place,
        "virtio-blk",
        Block::process_queue,
    )
}

/// Puts a virtio-vsock device for guest `cid` at `base` with interrupt line `irq`; its host
/// side is the hybrid Unix socket `uds`. `events` serves it: its queue notifications, its
/// activation, and its epoll set of host sockets. Returns its DSDT entry.
#[allow(clippy::too_many_arguments)]
pub fn add_virtio_vsock(
    vm: &Vm,
    memory: &GuestMemory,
    mmio: &Bus,
    events: &mut EventLoop,
    cid: u64,
    uds: &Path,
    base: u64,
    irq: u32,
) -> Result<MmioDevice, BuilderError> {
    let vsock = Vsock::new(cid, uds)?;
    let (poll_fd, activated) = (
        vsock.poll_fd(),
        vsock.activation_event().map_err(BuilderError::EventFd)?,
    );
    let vsock = Arc::new(Mutex::new(vsock));
    let (entry, notify) = add_virtio_device(vm, memory, mmio, vsock.clone(), base, irq)?;
    let serve = || {
        let vsock = vsock.clone();
        Box::new(move || {
            let mut vsock = vsock.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = vsock.process() {
                tracing::warn!(error = %e, device = "virtio-vsock", "packets");
            }
        }) as Handler
    };
    // The event queue (the third) carries nothing from the driver.
    for queue in notify.into_iter().take(2) {
        events.add(queue, serve())?;
    }
    events.add(activated, serve())?;
    // The device owns the epoll set, and lives as long as the loop's handlers.
    events.add_readable(poll_fd, Trigger::Level, serve())?;
    Ok(entry)
}

/// Puts a virtio-fs device at `base` with interrupt line `irq`, connected to the vhost-user
/// backend (virtiofsd) listening on `socket`, mounted by the guest as `tag`. The backend
/// serves the queues; `events` relays its used-buffer calls to the device's interrupt.
/// Returns its DSDT entry.
#[allow(clippy::too_many_arguments)]
pub fn add_virtio_fs(
    vm: &Vm,
    memory: &GuestMemory,
    mmio: &Bus,
    events: &mut EventLoop,
    socket: &Path,
    tag: &str,
    base: u64,
    irq: u32,
) -> Result<MmioDevice, BuilderError> {
    let fs = Fs::new(socket, tag)?;
    let calls = fs.call_events()?;
    let fs = Arc::new(Mutex::new(fs));
    let (entry, _) = add_virtio_device(vm, memory, mmio, fs.clone(), base, irq)?;
    for call in calls {
        let fs = fs.clone();
        events.add(
            call,
            Box::new(move || {
                let fs = fs.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = fs.raise_interrupt() {
                    tracing::warn!(error = %e, device = "virtio-fs", "raise interrupt");
                }
            }),
        )?;
    }
    Ok(entry)
}

/// Puts a virtio-net device on `tap` with MAC address `mac` at `base` with interrupt line
/// `irq`: `events` serves its tx queue, and its rx queue both when the driver adds buffers
/// and when the tap has frames. Returns its DSDT entry and the device (for its metrics).
#[allow(clippy::too_many_arguments)]
pub fn add_virtio_net(
    vm: &Vm,
    memory: &GuestMemory,
    mmio: &Bus,
    events: &mut EventLoop,
    tap: Tap,
    mac: [u8; 6],
    base: u64,
    irq: u32,
) -> Result<(MmioDevice, Arc<Mutex<Net>>), BuilderError> {
    let net = Arc::new(Mutex::new(Net::new(tap, mac)));
    let tap_fd = net.lock().unwrap_or_else(|e| e.into_inner()).tap_fd();
    let (entry, notify) = add_virtio_device(vm, memory, mmio, net.clone(), base, irq)?;
    let serve = |process: fn(&mut Net) -> Result<usize, crate::devices::virtio::net::NetError>| {
        let net = net.clone();
        Box::new(move || {
            let mut net = net.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = process(&mut net) {
                tracing::warn!(error = %e, device = "virtio-net", "frames");
            }
        }) as Handler
    };
    let mut queues = notify.into_iter();
    if let (Some(rx), Some(tx)) = (queues.next(), queues.next()) {
        events.add(rx, serve(Net::process_rx))?;
        events.add(tx, serve(Net::process_tx))?;
    }
    // The device owns the tap, and the device lives as long as the loop's handlers.
    events.add_readable(tap_fd, Trigger::Edge, serve(Net::process_rx))?;
    Ok((entry, net))
}
