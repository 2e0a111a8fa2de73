//! vessel-vmm: the built-in KVM microVM monitor, on the rust-vmm crates.
//!
//! - [`memory`]: guest memory (memfd-backed, shareable with vhost-user backends), which
//!   boot, the devices and KVM all use.
//! - [`vstate`]: the KVM side: the VM (memory slots, in-kernel irqchip and PIT,
//!   ioeventfd/irqfd) and vCPUs (CPUID and topology, their run loop dispatching port and
//!   MMIO exits to the buses).
//! - [`boot`]: the memory layout and e820 map; loading an ELF vmlinux or bzImage, initramfs
//!   and command line; the PVH start info or the Linux zero page; ACPI tables; the CPU
//!   state of the 32-bit PVH and 64-bit entries.
//! - [`devices`]: the buses and the device models on them (8250 serial, i8042 reset, ACPI
//!   sleep control), the virtio-mmio transport and the virtio devices (rng, vsock, fs as a
//!   vhost-user frontend, net, blk).
//! - [`event_loop`]: the thread that waits on device eventfds and runs their handlers.
//! - [`config`]: what a VM is made of ([`config::VmConfig`]), as the command line fills it.
//! - [`builder`]: [`builder::VmBuilder`] assembles the VM from its config: memory, kernel
//!   and boot information, ACPI, the virtio-mmio slots ([`builder::virtio`]: MMIO window,
//!   irqfd, ioeventfd, event handlers) and port devices ([`builder::legacy`]), the vCPUs.
//! - [`machine`]: the built VM's run: event loop, control socket, vCPU threads, the end.
//! - [`runner`]: the vCPU threads, their kick signal and exit counts, and how the VM ended.
//! - [`api`]: the control socket (pause, resume, shutdown, info, metrics).
//! - [`seccomp`]: the filter each kind of thread installs.

pub mod api;
pub mod boot;
pub mod builder;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod machine;
pub mod memory;
pub mod runner;
pub mod seccomp;
pub mod vstate;

// Module dependencies run one way: config → builder → machine → runner; builder uses boot,
// devices and vstate; boot uses vstate; vstate uses devices (the buses); all use memory.
