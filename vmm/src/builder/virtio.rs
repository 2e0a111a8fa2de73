//! The VM's virtio-mmio devices: each takes the next MMIO window and interrupt line (which the
//! DSDT then describes), an irqfd for that line, an ioeventfd on its QueueNotify register, and
//! handlers on the device event loop.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use vmm_sys_util::eventfd::EventFd;

use super::BuilderError;
use crate::api::MetricsSource;
use crate::boot::acpi::MmioDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_LEN, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{Net, NetError, Tap};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::Bus;
use crate::event_loop::{EventLoop, Handler, Trigger};
use crate::memory::GuestMemory;
use crate::vstate::vm::Vm;

/// The first virtio-mmio window and its interrupt line; each further device takes the next
/// window and line.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_IRQ: u32 = 5;

/// What the wiring leaves behind: the loop that serves the devices (not yet running),
/// their DSDT entries, and their counters for the control socket.
pub struct Wired {
    pub events: EventLoop,
    pub entries: Vec<MmioDevice>,
    pub metrics: Vec<(String, MetricsSource)>,
}

/// Puts virtio devices into a VM, one MMIO slot after another.
pub struct VirtioDevices<'a> {
    vm: &'a Vm,
    memory: GuestMemory,
    mmio: Arc<Bus>,
    events: EventLoop,
    entries: Vec<MmioDevice>,
    metrics: Vec<(String, MetricsSource)>,
}

impl<'a> VirtioDevices<'a> {
    /// Devices of `vm` over `memory`, their windows on `mmio`.
    pub fn new(vm: &'a Vm, memory: &GuestMemory, mmio: Arc<Bus>) -> Result<Self, BuilderError> {
        Ok(Self {
            vm,
            memory: memory.clone(),
            mmio,
            events: EventLoop::new()?,
            entries: Vec::new(),
            metrics: Vec::new(),
        })
    }

    /// Ends the wiring.
    pub fn finish(self) -> Wired {
        Wired {
            events: self.events,
            entries: self.entries,
            metrics: self.metrics,
        }
    }

    /// Puts `device` in the next slot: its virtio-mmio window on the MMIO bus, an irqfd, and
    /// an ioeventfd per queue on QueueNotify. Returns its DSDT entry and the queue
    /// notification eventfds (for a device served by the event loop).
    pub fn add_device(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<(MmioDevice, Vec<EventFd>), BuilderError> {
        let n = self.entries.len() as u64;
        let (base, irq) = (VIRTIO_MMIO_BASE + n * MMIO_LEN, VIRTIO_IRQ + n as u32);
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(BuilderError::EventFd)?;
        self.vm.register_irqfd(&irqfd, irq)?;
        let interrupt = Arc::new(VirtioInterrupt::new(irqfd));
        let transport = MmioTransport::new(device, self.memory.clone(), interrupt)?;
        let mut notify = Vec::new();
        for (queue, event) in transport.queue_events().iter().enumerate() {
            let register = base + QUEUE_NOTIFY_OFFSET;
            self.vm
                .register_queue_notify(event, register, queue as u32)?;
            notify.push(event.try_clone().map_err(BuilderError::EventFd)?);
        }
        self.mmio
            .insert(base, MMIO_LEN, Arc::new(Mutex::new(transport)))?;
        let entry = MmioDevice {
            base: base as u32,
            len: MMIO_LEN as u32,
            irq,
        };
        self.entries.push(entry);
        Ok((entry, notify))
    }

    /// Puts a one-queue `device` in the next slot, its requests served by `process` on the
    /// event loop; returns its DSDT entry.
    fn add_event_served<T, E>(
        &mut self,
        device: T,
        name: &'static str,
        process: fn(&mut T) -> Result<usize, E>,
    ) -> Result<MmioDevice, BuilderError>
    where
        T: VirtioDevice + 'static,
        E: std::fmt::Display + 'static,
    {
        let device = Arc::new(Mutex::new(device));
        let (entry, mut notify) = self.add_device(device.clone())?;
        let Some(request_queue) = notify.pop() else {
            return Ok(entry);
        };
        let handler = move || {
            let mut device = device.lock();
            if let Err(e) = process(&mut device) {
                tracing::warn!(error = %e, device = name, "virtio request");
            }
        };
        self.events.add(request_queue, Box::new(handler))?;
        Ok(entry)
    }

    /// A virtio-rng device.
    pub fn add_rng(&mut self) -> Result<MmioDevice, BuilderError> {
        self.add_event_served(Rng::new()?, "virtio-rng", Rng::process_queue)
    }

    /// A virtio-blk device on the file `path`.
    pub fn add_blk(&mut self, path: &Path, read_only: bool) -> Result<MmioDevice, BuilderError> {
        let block = Block::new(path, read_only)?;
        self.add_event_served(block, "virtio-blk", Block::process_queue)
    }

    /// A virtio-vsock device for guest `cid` whose host side is the hybrid Unix socket
    /// `uds`. The event loop serves its queue notifications, its activation, and its epoll
    /// set of host sockets.
    pub fn add_vsock(&mut self, cid: u64, uds: &Path) -> Result<MmioDevice, BuilderError> {
        let vsock = Vsock::new(cid, uds)?;
        let poll_fd = vsock.poll_fd();
        let activated = vsock.activation_event().map_err(BuilderError::EventFd)?;
        let vsock = Arc::new(Mutex::new(vsock));
        let (entry, notify) = self.add_device(vsock.clone())?;
        let serve = || {
            let vsock = vsock.clone();
            Box::new(move || {
                let mut vsock = vsock.lock();
                if let Err(e) = vsock.process() {
                    tracing::warn!(error = %e, device = "virtio-vsock", "packets");
                }
            }) as Handler
        };
        // The event queue (the third) carries nothing from the driver.
        for queue in notify.into_iter().take(2) {
            self.events.add(queue, serve())?;
        }
        self.events.add(activated, serve())?;
        // The device owns the epoll set, and lives as long as the loop's handlers.
        self.events.add_readable(poll_fd, Trigger::Level, serve())?;
        Ok(entry)
    }

    /// A virtio-fs device connected to the vhost-user backend (virtiofsd) listening on
    /// `socket`, mounted by the guest as `tag`. The backend serves the queues; the event
    /// loop relays its used-buffer calls to the device's interrupt.
    pub fn add_fs(&mut self, socket: &Path, tag: &str) -> Result<MmioDevice, BuilderError> {
        let fs = Fs::new(socket, tag)?;
        let calls = fs.call_events()?;
        let fs = Arc::new(Mutex::new(fs));
        let (entry, _) = self.add_device(fs.clone())?;
        for call in calls {
            let fs = fs.clone();
            let relay = move || {
                let fs = fs.lock();
                if let Err(e) = fs.raise_interrupt() {
                    tracing::warn!(error = %e, device = "virtio-fs", "raise interrupt");
                }
            };
            self.events.add(call, Box::new(relay))?;
        }
        Ok(entry)
    }

    /// A virtio-net device on `tap` with MAC address `mac`: the event loop serves its tx
    /// queue, and its rx queue both when the driver adds buffers and when the tap has
    /// frames. Its counters join the control socket's `metrics` as `net<n>`.
    pub fn add_net(&mut self, tap: Tap, mac: [u8; 6]) -> Result<Arc<Mutex<Net>>, BuilderError> {
        let net = Arc::new(Mutex::new(Net::new(tap, mac)));
        let tap_fd = net.lock().tap_fd();
        let (_, notify) = self.add_device(net.clone())?;
        let serve = |process: fn(&mut Net) -> Result<usize, NetError>| {
            let net = net.clone();
            Box::new(move || {
                let mut net = net.lock();
                if let Err(e) = process(&mut net) {
                    tracing::warn!(error = %e, device = "virtio-net", "frames");
                }
            }) as Handler
        };
        let mut queues = notify.into_iter();
        if let (Some(rx), Some(tx)) = (queues.next(), queues.next()) {
            self.events.add(rx, serve(Net::process_rx))?;
            self.events.add(tx, serve(Net::process_tx))?;
        }
        // The device owns the tap, and the device lives as long as the loop's handlers.
        self.events
            .add_readable(tap_fd, Trigger::Edge, serve(Net::process_rx))?;
        let name = format!(
            "net{}",
            self.metrics
                .iter()
                .filter(|(n, _)| n.starts_with("net"))
                .count()
        );
        let counters = net.clone();
        self.metrics
            .push((name, Box::new(move || counters.lock().metrics().to_json())));
        Ok(net)
    }
}
