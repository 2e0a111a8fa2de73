//! virtio-net wired into a VM as the binary wires it (MMIO window, irqfd, queue ioeventfds
//! and the tap's descriptor on the event loop, edge-triggered), with the VMM's seccomp
//! filters on, driven from the host as the guest's driver would drive it. A SOCK_SEQPACKET
//! socket pair stands in for the tap (one read, one frame): a frame that arrives before the
//! guest offers buffers waits for them, later frames arrive when the "tap" becomes readable,
//! and a frame the guest sends comes out byte for byte. Skipped, with the reason, where
//! /dev/kvm cannot be opened.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use common::{MmioDriver, Ring};
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use vessel_vmm::builder::virtio::{VirtioDevices, VIRTIO_MMIO_BASE};
use vessel_vmm::devices::virtio::net::Tap;
use vessel_vmm::devices::virtio::VIRTIO_F_VERSION_1;
use vessel_vmm::devices::Bus;
use vm_memory::{Bytes, GuestAddress};

const BASE: u64 = VIRTIO_MMIO_BASE;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const RX_BUFFERS: u64 = 0x4_0000;
const TX_BUFFER: u64 = 0x8_0000;
const HDR: usize = 12;

/// A frame as the tap carries it: the 12-byte vnet header, then `len` bytes of `fill`.
fn frame(fill: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; HDR];
    f.extend(std::iter::repeat_n(fill, len));
    f
}

#[test]
fn frames_cross_between_the_tap_and_guest_buffers() {
    let Some((vm, mem)) = common::test_vm("frames_cross_between_the_tap_and_guest_buffers") else {
        return;
    };
    common::enable_seccomp();
    let (ours, peer): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let tap = Tap::from_fd(ours).unwrap();
    let mmio = Arc::new(Bus::default());
    let mut devices = VirtioDevices::new(&vm, &mem, mmio.clone()).unwrap();
    let mac = [0x02, 0, 0, 0, 0, 7];
    let net = devices.add_net(tap, mac).unwrap();
    let (thread, stop) = devices.finish().events.spawn().unwrap();

    let driver = MmioDriver {
        bus: &mmio,
        base: BASE,
    };
    let mut rx = Ring::at(0x1_0000, 64);
    let mut tx = Ring::at(0x2_0000, 64);
    common::as_filtered_vcpu(|| {
        assert_eq!(driver.rd(0x8), 1, "network device");
        let mut config = [0u8; 6];
        mmio.read(BASE + 0x100, &mut config);
        assert_eq!(config, mac);
        assert_ne!(driver.device_features() & VIRTIO_NET_F_MAC, 0);
        driver.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
        driver.set_up_queue(0, &rx);
        driver.set_up_queue(1, &tx);
        driver.driver_ok();
    });

    // A frame before the guest has buffers waits for them.
    let early = frame(0xa1, 60);
    send(peer.as_raw_fd(), &early, MsgFlags::empty()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    for i in 0..4 {
        rx.offer(&mem, &[(RX_BUFFERS + 0x1000 * i, 0x1000, true)]);
    }
    driver.notify(0);
    let (head, len) = rx.wait_used(&mem, 1);
    assert_eq!(len as usize, early.len());
    let mut got = vec![0u8; early.len()];
    mem.read_slice(
        &mut got,
        GuestAddress(RX_BUFFERS + 0x1000 * u64::from(head)),
    )
    .unwrap();
    assert_eq!(got[HDR..], early[HDR..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");

    // Later frames arrive as the tap becomes readable.
    let later = frame(0xb2, 1500);
    send(peer.as_raw_fd(), &later, MsgFlags::empty()).unwrap();
    let (head, len) = rx.wait_used(&mem, 2);
    assert_eq!(len as usize, later.len());
    mem.read_slice(
        &mut got[..HDR + 1],
        GuestAddress(RX_BUFFERS + 0x1000 * u64::from(head)),
    )
    .unwrap();
    assert_eq!(got[HDR], 0xb2);

    // The guest sends a frame: header and data in two descriptors, one frame on the tap.
    let out = frame(0xc3, 200);
    mem.write_slice(&out, GuestAddress(TX_BUFFER)).unwrap();
    tx.offer(
        &mem,
        &[
            (TX_BUFFER, HDR as u32, false),
            (TX_BUFFER + HDR as u64, 200, false),
        ],
    );
    driver.notify(1);
    tx.wait_used(&mem, 1);
    let mut sent = vec![0u8; 4096];
    let n = recv(peer.as_raw_fd(), &mut sent, MsgFlags::empty()).unwrap();
    assert_eq!(&sent[..n], &out[..]);
    let metrics = net.lock().metrics();
    assert_eq!((metrics.rx_frames, metrics.tx_frames), (2, 1));
    assert_eq!(metrics.tx_bytes, 200);
    assert_eq!(metrics.to_json()["tx_bytes"], 200);

    stop.write(1).unwrap();
    thread.join().unwrap();
}
