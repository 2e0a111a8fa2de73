//! vessel-vmm: the built-in KVM microVM monitor, on the rust-vmm crates.
//!
//! - [`vstate`]: the KVM side: guest memory (memfd-backed, shareable with vhost-user
//!   backends), the VM (memory slots, in-kernel irqchip and PIT, ioeventfd/irqfd) and vCPUs
//!   (their run loop dispatching port and MMIO exits to the device buses).
//! - [`boot`]: the CPU state of a 64-bit entry (GDT, identity page tables, long mode).
//! - [`devices`]: the buses and the device models on them (8250 serial so far).
//!
//! Loading Linux (linux-loader, boot params, ACPI), the virtio devices, the control socket
//! and seccomp come next; until then the shim uses the QEMU backend.

pub mod boot;
pub mod devices;
pub mod vstate;
