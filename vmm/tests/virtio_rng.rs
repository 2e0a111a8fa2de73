//! virtio-rng wired into a VM the way the binary wires it (MMIO window, irqfd, ioeventfd,
//! event loop), driven from the host side as a guest driver would drive it: status
//! handshake, feature negotiation, one queue in guest memory, a request, QueueNotify. The
//! device thread must fill the buffer, return it on the used ring and raise the interrupt
//! status. Skipped, with the reason, where /dev/kvm cannot be opened.

use std::time::{Duration, Instant};

use vessel_vmm::builder::add_virtio_rng;
use vessel_vmm::devices::virtio::mmio::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
use vessel_vmm::devices::Bus;
use vessel_vmm::event_loop::EventLoop;
use vessel_vmm::vstate::memory;
use vessel_vmm::vstate::open_kvm;
use vessel_vmm::vstate::vm::Vm;
use vm_memory::{Bytes, GuestAddress};

const BASE: u64 = 0xd000_0000;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const BUFFER: u64 = 0x2_0000;
const VRING_DESC_F_WRITE: u16 = 2;

fn wr(bus: &Bus, offset: u64, value: u32) {
    assert!(bus.write(BASE + offset, &value.to_le_bytes()));
}

fn rd(bus: &Bus, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    bus.read(BASE + offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn a_request_is_filled_by_the_device_thread() {
    let kvm = match open_kvm() {
        Ok(kvm) => kvm,
        Err(e) => {
            println!("SKIPPED a_request_is_filled_by_the_device_thread: {e}");
            return;
        }
    };
    let vm = Vm::new(&kvm).unwrap();
    vm.create_irqchip().unwrap();
    let mem = memory::create(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.register_memory(&mem).unwrap();
    let mmio = Bus::default();
    let mut events = EventLoop::new().unwrap();
    let entry = add_virtio_rng(&vm, &mem, &mmio, &mut events, BASE, 5).unwrap();
    assert_eq!((entry.base, entry.irq), (BASE as u32, 5));
    let (thread, stop) = events.spawn().unwrap();

    assert_eq!(rd(&mmio, 0x0), 0x7472_6976);
    assert_eq!(rd(&mmio, 0x8), 4, "entropy device");
    wr(&mmio, 0x70, ACKNOWLEDGE);
    wr(&mmio, 0x70, ACKNOWLEDGE | DRIVER);
    wr(&mmio, 0x24, 1);
    wr(&mmio, 0x20, 1); // VIRTIO_F_VERSION_1
    wr(&mmio, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_ne!(rd(&mmio, 0x70) & FEATURES_OK, 0);
    wr(&mmio, 0x30, 0);
    wr(&mmio, 0x38, 8);
    for (reg, addr) in [(0x80, DESC), (0x90, AVAIL), (0xa0, USED)] {
        wr(&mmio, reg, addr as u32);
        wr(&mmio, reg + 4, 0);
    }
    wr(&mmio, 0x44, 1);
    wr(&mmio, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(
        rd(&mmio, 0x70),
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    );

    // One writable 512-byte buffer, offered on the available ring.
    mem.write_obj(BUFFER, GuestAddress(DESC)).unwrap();
    mem.write_obj(512u32, GuestAddress(DESC + 8)).unwrap();
    mem.write_obj(VRING_DESC_F_WRITE, GuestAddress(DESC + 12))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap(); // ring[0] = descriptor 0
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap(); // avail idx
    wr(&mmio, 0x50, 0);

    let deadline = Instant::now() + Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "the device never returned the buffer"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!(used_len, 512);
    let mut buf = [0u8; 512];
    mem.read_slice(&mut buf, GuestAddress(BUFFER)).unwrap();
    assert!(
        buf.iter().filter(|b| **b != 0).count() > 400,
        "looks random"
    );
    assert_eq!(rd(&mmio, 0x60) & 1, 1, "used-ring interrupt pending");

    stop.write(1).unwrap();
    thread.join().unwrap();
}
