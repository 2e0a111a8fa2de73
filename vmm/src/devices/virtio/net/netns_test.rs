//! A test on a real tap, in a child process inside a network namespace of its own (`unshare
//! --net`), so the host's interfaces are never touched and nothing is left behind: opening
//! and naming taps, taking a tap fd, and an ARP exchange with the kernel through the
//! device (which fails if the tap's vnet header were not the 12 bytes the device assumes).
//! Skipped, saying why, where no namespace, /dev/net/tun or `ip` is to be had.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::device::QUEUE_SIZE;
use super::tap::open_raw_tap;
use super::*;
use crate::devices::virtio::test_utils::{desc, interrupt};
use crate::devices::virtio::VirtioDevice;
use crate::memory;

/// Reports the real-tap test as not run, on the real stderr (the harness hides what a
/// passing test prints).
fn skipped(reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED a_real_tap_in_a_new_network_namespace: {reason}"
    );
}

/// Set in the child process, inside its namespace.
const CHILD_ENV: &str = "VESSEL_VMM_NETNS_CHILD";
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x53, 0x02];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];

#[test]
fn a_real_tap_in_a_new_network_namespace() {
    if !Path::new("/dev/net/tun").exists() {
        skipped("no /dev/net/tun");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let path = module_path!().split_once("::").map_or("", |(_, p)| p);
    let test = format!("{path}::real_tap_child");
    let mut why = String::new();
    for unshare in [&["--net"][..], &["--user", "--map-root-user", "--net"]] {
        let out = match Command::new("unshare")
            .args(unshare)
            .arg("--")
            .arg(&exe)
            .args([&test, "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, "1")
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                skipped(&format!("run unshare: {e}"));
                return;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stdout.contains("running 1 test") {
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "the test in the namespace failed:\n{stdout}\n{stderr}"
            );
            // The child's SKIPPED lines, if any, on the real stderr.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), stderr.as_bytes());
            return;
        }
        why = stderr.into_owned();
    }
    skipped(&format!("cannot create a network namespace: {why}"));
}

#[test]
#[ignore = "runs inside the namespace that a_real_tap_in_a_new_network_namespace creates"]
fn real_tap_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        skipped("only inside a_real_tap_in_a_new_network_namespace");
        return;
    }
    let tap = match Tap::open("vessel%d") {
        Ok(tap) => tap,
        Err(TapError::OpenTun { source, .. }) => {
            skipped(&format!("open /dev/net/tun: {source}"));
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let name = tap.name().to_owned();
    assert!(name.starts_with("vessel") && !name.contains('%'), "{name}");
    // A non-multiqueue tap takes one fd.
    let err = Tap::open(&name).unwrap_err();
    assert!(
        matches!(err, TapError::SetIff { .. }) && err.to_string().contains(&name),
        "{err}"
    );
    // A tap fd from elsewhere: taken with the vnet header, refused without.
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    let plain = open_raw_tap("vessel-plain", flags).unwrap();
    let err = Tap::from_fd(plain).unwrap_err();
    assert!(matches!(err, TapError::Flags { .. }), "{err}");
    assert!(err.to_string().contains("vessel-plain"), "{err}");
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let given = Tap::from_fd(open_raw_tap("vessel-fd", flags).unwrap()).unwrap();
    assert_eq!(given.name(), "vessel-fd");
    let mut buf = [0u8; 64];
    assert_eq!(
        given.read_frame(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );

    let ip = |args: &[&str]| Command::new("ip").args(args).status().map(|s| s.success());
    match ip(&["addr", "add", "10.0.0.1/24", "dev", &name]) {
        Ok(true) => {}
        other => {
            skipped(&format!("the ARP exchange: `ip addr add`: {other:?}"));
            return;
        }
    }
    assert!(ip(&["link", "set", &name, "up"]).unwrap());
    arp_exchange(tap);
}

/// The guest asks who has the host's address; the kernel's answer comes back through the
/// device.
fn arp_exchange(tap: Tap) {
    let mem = memory::create(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QUEUE_SIZE);
    let mut net = Net::new(tap, GUEST_MAC);
    let events = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    net.activate(
        mem.clone(),
        interrupt(),
        vec![
            rxq.create_queue::<Queue>().unwrap(),
            txq.create_queue::<Queue>().unwrap(),
        ],
        events,
    )
    .unwrap();
    const RX_BUFFERS: u64 = 0x10_0000;
    let buffers: Vec<_> = (0..64)
        .map(|i| desc(RX_BUFFERS + i * 0x1000, 0x1000, VRING_DESC_F_WRITE, 0))
        .collect();
    rxq.add_desc_chains(&buffers, 0).unwrap();

    let mut request = vec![0u8; VNET_HDR_LEN];
    request.extend([0xff; 6]);
    request.extend(GUEST_MAC);
    request.extend([0x08, 0x06]); // ARP
    request.extend([0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    request.extend(GUEST_MAC);
    request.extend(GUEST_IP);
    request.extend([0; 6]);
    request.extend(HOST_IP);
    mem.write_slice(&request, GuestAddress(0x30_0000)).unwrap();
    txq.add_desc_chains(&[desc(0x30_0000, request.len() as u32, 0, 0)], 0)
        .unwrap();
    assert_eq!(net.process_tx().unwrap(), 1);
    assert_eq!(net.metrics().tx_frames, 1, "{:?}", net.metrics());

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0u16;
    loop {
        net.process_rx().unwrap();
        let used: u16 = mem.read_obj(GuestAddress(rxq.used_addr().0 + 2)).unwrap();
        for i in seen..used {
            let at = rxq.used_addr().0 + 4 + 8 * u64::from(i);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            let mut frame = vec![0u8; len as usize];
            mem.read_slice(
                &mut frame,
                GuestAddress(RX_BUFFERS + u64::from(id) * 0x1000),
            )
            .unwrap();
            if is_arp_reply(&frame) {
                assert_eq!(&frame[..10], &[0; 10], "no offloads: a zero header");
                assert_eq!(&frame[10..12], &1u16.to_le_bytes(), "num_buffers");
                return;
            }
        }
        seen = used;
        assert!(
            Instant::now() < deadline,
            "no ARP reply came back: {:?}",
            net.metrics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A vnet header then an ARP reply to the guest from the host's address.
fn is_arp_reply(frame: &[u8]) -> bool {
    let Some(eth) = frame.get(VNET_HDR_LEN..) else {
        return false;
    };
    eth.len() >= 42
        && eth[..6] == GUEST_MAC
        && eth[12..14] == [0x08, 0x06]
        && eth[20..22] == [0, 2]
        && eth[28..32] == HOST_IP
        && eth[38..42] == GUEST_IP
}
