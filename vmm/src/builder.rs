//! Putting devices into a VM: each virtio device gets a virtio-mmio window on the MMIO bus,
//! an irqfd for its interrupt line, an ioeventfd on its QueueNotify register, and a handler
//! on the device event loop.

use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::acpi::MmioDevice;
use crate::devices::virtio::mmio::{MmioError, MmioTransport, MMIO_LEN, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::rng::{Rng, RngError};
use crate::devices::virtio::VirtioInterrupt;
use crate::devices::{Bus, BusError};
use crate::event_loop::{EventLoop, EventLoopError};
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
}

/// Puts a virtio-rng device at `base` with interrupt line `irq`; returns its DSDT entry.
pub fn add_virtio_rng(
    vm: &Vm,
    memory: &GuestMemory,
    mmio: &Bus,
    events: &mut EventLoop,
    base: u64,
    irq: u32,
) -> Result<MmioDevice, BuilderError> {
    let rng = Arc::new(Mutex::new(Rng::new()?));
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(BuilderError::EventFd)?;
    vm.register_irqfd(&irqfd, irq)?;
    let transport = MmioTransport::new(
        rng.clone(),
        memory.clone(),
        Arc::new(VirtioInterrupt::new(irqfd)),
    )?;
    let notify = transport.queue_events()[0]
        .try_clone()
        .map_err(BuilderError::EventFd)?;
    vm.register_ioevent(&notify, IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET))?;
    events.add(
        notify,
        Box::new(move || {
            let served = rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .process_queue();
            if let Err(e) = served {
                tracing::warn!(error = %e, "virtio-rng");
            }
        }),
    )?;
    mmio.insert(base, MMIO_LEN, Arc::new(Mutex::new(transport)))?;
    Ok(MmioDevice {
        base: base as u32,
        len: MMIO_LEN as u32,
        irq,
    })
}
