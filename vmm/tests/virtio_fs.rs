//! virtio-fs through a real virtiofsd: the device is wired into a VM as the binary wires it
//! (MMIO window, irqfd, the queue ioeventfds handed to the backend as kick fds, the backend's
//! call fds relayed by the event loop), and driven from the host as the guest's driver would
//! drive it. virtiofsd must answer FUSE_INIT and look up a file of the shared dir, writing
//! its replies straight into guest memory, and the relay must raise the interrupt status.
//! The VMM's seccomp filters are on: the driver runs under the vCPU filter, the event loop
//! under its own. Skipped, with the reason, where /dev/kvm cannot be opened; virtiofsd comes from
//! `scripts/setup.sh` (`build/tools/bin`) or `VESSEL_VIRTIOFSD`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{MmioDriver, Ring};
use vessel_vmm::builder::virtio::{VirtioDevices, VIRTIO_MMIO_BASE};
use vessel_vmm::devices::virtio::VIRTIO_F_VERSION_1;
use vessel_vmm::devices::Bus;
use vessel_vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const BASE: u64 = VIRTIO_MMIO_BASE;
const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;
const FUSE_ROOT_ID: u64 = 1;
const REQUEST: u64 = 0x4_0000;
const REPLY: u64 = 0x5_0000;

fn virtiofsd() -> PathBuf {
    std::env::var_os("VESSEL_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/tools/bin/virtiofsd")
        })
}

/// virtiofsd, ended when dropped.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_virtiofsd(socket: &std::path::Path, shared: &std::path::Path) -> Backend {
    let binary = virtiofsd();
    assert!(
        binary.is_file(),
        "{} is missing: run scripts/setup.sh",
        binary.display()
    );
    let child = Command::new(&binary)
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared)
        .args(["--sandbox", "none", "--cache", "auto"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let backend = Backend(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd made no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    backend
}

/// A FUSE request: the 40-byte fuse_in_header, then `body`.
fn fuse_request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    r.extend_from_slice(&opcode.to_le_bytes());
    r.extend_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(&nodeid.to_le_bytes());
    r.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    r.extend_from_slice(body);
    r
}

/// Sends one request on the request queue (1) and returns the reply bytes.
fn call(
    driver: &MmioDriver,
    mem: &GuestMemory,
    ring: &mut Ring,
    n: u16,
    request: &[u8],
) -> Vec<u8> {
    let at = REQUEST + 0x1000 * u64::from(n);
    let reply_at = REPLY + 0x1000 * u64::from(n);
    mem.write_slice(request, GuestAddress(at)).unwrap();
    ring.offer(
        mem,
        &[(at, request.len() as u32, false), (reply_at, 0x1000, true)],
    );
    driver.notify(1);
    let (_, written) = ring.wait_used(mem, n);
    let mut reply = vec![0u8; written as usize];
    mem.read_slice(&mut reply, GuestAddress(reply_at)).unwrap();
    reply
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn virtiofsd_answers_fuse_requests_in_guest_memory() {
    let Some((vm, mem)) = common::test_vm("virtiofsd_answers_fuse_requests_in_guest_memory") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), b"from the host\n").unwrap();
    let socket = dir.path().join("fs.sock");
    let _backend = start_virtiofsd(&socket, &shared);

    common::enable_seccomp();
    let mmio = Arc::new(Bus::default());
    let mut devices = VirtioDevices::new(&vm, &mem, mmio.clone()).unwrap();
    devices.add_fs(&socket, "vessel-shared").unwrap();
    let (thread, stop) = devices.finish().events.spawn().unwrap();

    // The driver runs under the vCPU filter, the event loop under its own: activation's
    // vhost-user messages and the call relay must pass them.
    common::as_filtered_vcpu(|| drive(&mmio, &mem));
    stop.write(1).unwrap();
    thread.join().unwrap();
}

fn drive(mmio: &Bus, mem: &GuestMemory) {
    let driver = MmioDriver {
        bus: mmio,
        base: BASE,
    };
    assert_eq!(driver.rd(0x8), 26, "file system device");
    let mut tag = [0u8; 40];
    for (i, b) in tag.iter_mut().enumerate() {
        let mut byte = [0u8];
        mmio.read(BASE + 0x100 + i as u64, &mut byte);
        *b = byte[0];
    }
    assert_eq!(&tag[..14], b"vessel-shared\0");
    assert_eq!(u32_at(&tag, 36), 1, "one request queue");
    let features = driver.device_features();
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    assert_eq!(
        features & (1 << 30),
        0,
        "vhost-user's own bit is not offered"
    );
    driver.negotiate(VIRTIO_F_VERSION_1);
    let hiprio = Ring::at(0x1_0000, 64);
    let mut requests = Ring::at(0x2_0000, 64);
    driver.set_up_queue(0, &hiprio);
    driver.set_up_queue(1, &requests);
    driver.driver_ok();

    // FUSE_INIT: protocol 7.31, no flags.
    let mut init = Vec::new();
    for v in [7u32, 31, 0x2_0000, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    init.extend_from_slice(&[0u8; 44]);
    let reply = call(
        &driver,
        mem,
        &mut requests,
        1,
        &fuse_request(FUSE_INIT, 1, 0, &init),
    );
    assert!(reply.len() >= 24, "short FUSE_INIT reply: {reply:?}");
    assert_eq!(u32_at(&reply, 4), 0, "FUSE_INIT error");
    assert_eq!(u64_at(&reply, 8), 1, "reply to request 1");
    assert_eq!(u32_at(&reply, 16), 7, "FUSE major version");
    assert_ne!(
        driver.interrupt_status() & 1,
        0,
        "used-ring interrupt relayed"
    );

    // FUSE_LOOKUP "hello" in the root: the entry's attributes carry the file's size.
    let reply = call(
        &driver,
        mem,
        &mut requests,
        2,
        &fuse_request(FUSE_LOOKUP, 2, FUSE_ROOT_ID, b"hello\0"),
    );
    assert_eq!(u32_at(&reply, 4), 0, "FUSE_LOOKUP error");
    assert_ne!(u64_at(&reply, 16), 0, "node id");
    assert_eq!(u64_at(&reply, 16 + 40 + 8), 14, "size of hello");

    // A name that is not there: ENOENT, and the device keeps serving.
    let reply = call(
        &driver,
        mem,
        &mut requests,
        3,
        &fuse_request(FUSE_LOOKUP, 3, FUSE_ROOT_ID, b"absent\0"),
    );
    assert_eq!(u32_at(&reply, 4) as i32, -libc::ENOENT);
}
