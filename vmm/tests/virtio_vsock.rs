//! virtio-vsock wired into a VM as the binary wires it, with the VMM's seccomp filters on
//! (the event loop serving it under its own, activation under the vCPU's), driven from the
//! host as the guest's driver would drive it. A host client's `CONNECT <port>` on the hybrid
//! socket reaches the guest as a REQUEST; the guest's RESPONSE gives the client `OK <port>`;
//! data flows both ways; a guest REQUEST to a host port connects to `<uds>_<port>`.
//! Skipped, with the reason, where /dev/kvm cannot be opened.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use common::{MmioDriver, Ring};
use vessel_vmm::builder::virtio::{VirtioDevices, VIRTIO_MMIO_BASE};
use vessel_vmm::devices::virtio::VIRTIO_F_VERSION_1;
use vessel_vmm::devices::Bus;
use vessel_vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const BASE: u64 = VIRTIO_MMIO_BASE;
const GUEST_CID: u64 = 3;
const HOST_CID: u64 = 2;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RW: u16 = 5;
const HEADER: usize = 44;
const RX_BUFFERS: u64 = 0x4_0000;
const TX_BUFFERS: u64 = 0x8_0000;

/// The fields of a `virtio_vsock_hdr` a test looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
}

impl Header {
    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER);
        b.extend_from_slice(&self.src_cid.to_le_bytes());
        b.extend_from_slice(&self.dst_cid.to_le_bytes());
        b.extend_from_slice(&self.src_port.to_le_bytes());
        b.extend_from_slice(&self.dst_port.to_le_bytes());
        b.extend_from_slice(&self.len.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes()); // stream
        b.extend_from_slice(&self.op.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // flags
        b.extend_from_slice(&(256 * 1024u32).to_le_bytes()); // buf_alloc
        b.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
        b
    }

    fn parse(b: &[u8]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            op: u16::from_le_bytes([b[30], b[31]]),
        }
    }
}

/// The guest's side: the rx ring with its buffers, the tx ring.
struct Guest<'a> {
    driver: MmioDriver<'a>,
    mem: &'a GuestMemory,
    rx: Ring,
    tx: Ring,
    received: u16,
    sent: u16,
}

impl Guest<'_> {
    /// The next packet the device put on the rx ring: header and payload.
    fn receive(&mut self) -> (Header, Vec<u8>) {
        self.received += 1;
        let (head, len) = self.rx.wait_used(self.mem, self.received);
        let mut buf = vec![0u8; len as usize];
        let at = RX_BUFFERS + 0x1000 * u64::from(head);
        self.mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
        let header = Header::parse(&buf);
        (header, buf[HEADER..].to_vec())
    }

    /// Sends a packet on the tx ring (header and payload in two descriptors) and waits
    /// until the device took it.
    fn send(&mut self, header: Header, payload: &[u8]) {
        let at = TX_BUFFERS + 0x2000 * u64::from(self.sent);
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + 0x1000))
            .unwrap();
        let mut chain = vec![(at, HEADER as u32, false)];
        if !payload.is_empty() {
            chain.push((at + 0x1000, payload.len() as u32, false));
        }
        self.tx.offer(self.mem, &chain);
        self.sent += 1;
        self.driver.notify(1);
        self.tx.wait_used(self.mem, self.sent);
    }
}

#[test]
fn host_and_guest_connections_cross_the_hybrid_socket() {
    let Some((vm, mem)) = common::test_vm("host_and_guest_connections_cross_the_hybrid_socket")
    else {
        return;
    };
    common::enable_seccomp();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("agent.vsock");
    let mmio = Arc::new(Bus::default());
    let mut devices = VirtioDevices::new(&vm, &mem, mmio.clone()).unwrap();
    devices.add_vsock(GUEST_CID, &uds).unwrap();
    let (thread, stop) = devices.finish().events.spawn().unwrap();

    let mut guest = Guest {
        driver: MmioDriver {
            bus: &mmio,
            base: BASE,
        },
        mem: &mem,
        rx: Ring::at(0x1_0000, 64),
        tx: Ring::at(0x2_0000, 64),
        received: 0,
        sent: 0,
    };
    let event = Ring::at(0x3_0000, 64);
    common::as_filtered_vcpu(|| {
        assert_eq!(guest.driver.rd(0x8), 19, "socket device");
        let mut cid = [0u8; 8];
        mmio.read(BASE + 0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
        guest.driver.negotiate(VIRTIO_F_VERSION_1);
        guest.driver.set_up_queue(0, &guest.rx);
        guest.driver.set_up_queue(1, &guest.tx);
        guest.driver.set_up_queue(2, &event);
        guest.driver.driver_ok();
    });
    for i in 0..16 {
        guest
            .rx
            .offer(&mem, &[(RX_BUFFERS + 0x1000 * i, 0x1000, true)]);
    }
    guest.driver.notify(0);

    // A host client connects to guest port 1234.
    let mut client = UnixStream::connect(&uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    let (request, _) = guest.receive();
    assert_eq!(request.op, OP_REQUEST);
    assert_eq!((request.src_cid, request.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(request.dst_port, 1234);
    let host_port = request.src_port;
    let reply = |op, len| Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: host_port,
        len,
        op,
    };
    guest.send(reply(OP_RESPONSE, 0), &[]);
    let mut line = String::new();
    BufReader::new(client.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, format!("OK {host_port}\n"));

    // Data both ways.
    client.write_all(b"ping").unwrap();
    let (data, payload) = guest.receive();
    assert_eq!(
        (data.op, data.len, payload.as_slice()),
        (OP_RW, 4, &b"ping"[..])
    );
    guest.send(reply(OP_RW, 4), b"pong");
    let mut pong = [0u8; 4];
    client.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong");

    // The guest connects to host port 5000: the device connects to `<uds>_5000`.
    let service = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let to_service = |op, len| Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 40000,
        dst_port: 5000,
        len,
        op,
    };
    guest.send(to_service(OP_REQUEST, 0), &[]);
    let (mut accepted, _) = service.accept().unwrap();
    let (response, _) = guest.receive();
    assert_eq!(response.op, OP_RESPONSE);
    assert_eq!((response.src_port, response.dst_port), (5000, 40000));
    guest.send(to_service(OP_RW, 5), b"hello");
    accepted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut hello = [0u8; 5];
    accepted.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");

    stop.write(1).unwrap();
    thread.join().unwrap();
}
