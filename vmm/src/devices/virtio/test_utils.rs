//! Test helpers of the device models: split-queue descriptors and an interrupt to observe.

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioInterrupt;

/// A split-queue descriptor.
pub(crate) fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// A device interrupt whose irqfd nobody listens to; tests read its status.
pub(crate) fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ))
}
