//! virtio-rng wired into a VM the way the binary wires it (MMIO window, irqfd, ioeventfd,
//! event loop), driven from the host side as a guest driver would drive it: status
//! handshake, feature negotiation, one queue in guest memory, a request, QueueNotify. The
//! device thread must fill the buffer, return it on the used ring and raise the interrupt
//! status. The VMM's seccomp filters are on (the event loop's, and the vCPU's around
//! activation). Skipped, with the reason, where /dev/kvm cannot be opened.

mod common;

use std::sync::Arc;

use common::{MmioDriver, Ring};
use vessel_vmm::builder::virtio::{VirtioDevices, VIRTIO_MMIO_BASE};
use vessel_vmm::devices::virtio::VIRTIO_F_VERSION_1;
use vessel_vmm::devices::Bus;
use vm_memory::{Bytes, GuestAddress};

const BASE: u64 = VIRTIO_MMIO_BASE;
const BUFFER: u64 = 0x2_0000;

#[test]
fn a_request_is_filled_by_the_device_thread() {
    let Some((vm, mem)) = common::test_vm("a_request_is_filled_by_the_device_thread") else {
        return;
    };
    common::enable_seccomp();
    let mmio = Arc::new(Bus::default());
    let mut devices = VirtioDevices::new(&vm, &mem, mmio.clone()).unwrap();
    let entry = devices.add_rng().unwrap();
    assert_eq!((entry.base, entry.irq), (BASE as u32, 5));
    let (thread, stop) = devices.finish().events.spawn().unwrap();

    let driver = MmioDriver {
        bus: &mmio,
        base: BASE,
    };
    assert_eq!(driver.rd(0x0), 0x7472_6976);
    assert_eq!(driver.rd(0x8), 4, "entropy device");
    let mut ring = Ring::at(0x1_0000, 8);
    common::as_filtered_vcpu(|| {
        driver.negotiate(VIRTIO_F_VERSION_1);
        driver.set_up_queue(0, &ring);
        driver.driver_ok();
    });

    // One writable 512-byte buffer, offered on the available ring.
    ring.offer(&mem, &[(BUFFER, 512, true)]);
    driver.notify(0);
    let (_, used_len) = ring.wait_used(&mem, 1);
    assert_eq!(used_len, 512);
    let mut buf = [0u8; 512];
    mem.read_slice(&mut buf, GuestAddress(BUFFER)).unwrap();
    assert!(
        buf.iter().filter(|b| **b != 0).count() > 400,
        "looks random"
    );
    assert_eq!(
        driver.interrupt_status() & 1,
        1,
        "used-ring interrupt pending"
    );

    stop.write(1).unwrap();
    thread.join().unwrap();
}
