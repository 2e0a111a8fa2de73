//! The guest driver's side of virtio-mmio, for tests that drive a device wired into a VM
//! from the host: register access, the status handshake, feature negotiation and queue
//! set-up, and split-ring buffers in guest memory.

#![allow(dead_code)] // each test binary uses its own part

use std::time::{Duration, Instant};

use vessel_vmm::devices::virtio::mmio::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
use vessel_vmm::devices::Bus;
use vessel_vmm::memory::{self, GuestMemory};
use vessel_vmm::vstate::vm::Vm;
use vm_memory::{Bytes, GuestAddress};

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

/// Reports that `test` did not run and why, as a `SKIPPED` line on the real stderr (the
/// harness captures `println!` of passing tests).
pub fn skipped(test: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// A VM with an in-kernel irqchip and 1 MiB of registered guest memory, for a device to be
/// wired into; `None`, after a SKIPPED line for `test`, where /dev/kvm cannot be opened.
pub fn test_vm(test: &str) -> Option<(Vm, GuestMemory)> {
    let kvm = match vessel_vmm::vstate::open_kvm() {
        Ok(kvm) => kvm,
        Err(e) => {
            skipped(test, &e.to_string());
            return None;
        }
    };
    let vm = Vm::new(&kvm).unwrap();
    let mem = memory::create(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    vm.register_memory(&mem).unwrap();
    vm.create_irqchip().unwrap();
    Some((vm, mem))
}

/// A driver of the virtio-mmio device at `base` on `bus`.
pub struct MmioDriver<'a> {
    pub bus: &'a Bus,
    pub base: u64,
}

/// One split virtqueue's rings in guest memory, and how many buffers were offered.
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    offered: u16,
    next_desc: u16,
}

impl Ring {
    /// Rings at `base` (descriptors), `base + 0x1000` (available), `base + 0x2000` (used).
    pub fn at(base: u64, size: u16) -> Self {
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
            offered: 0,
            next_desc: 0,
        }
    }

    /// Offers one chain of `(address, length, device-writable)` buffers; returns its head.
    pub fn offer(&mut self, mem: &GuestMemory, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc += 1;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < buffers.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let at = self.desc + 16 * u64::from(index);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(index + 1, GuestAddress(at + 14)).unwrap();
        }
        let slot = self.avail + 4 + 2 * u64::from(self.offered % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.offered += 1;
        mem.write_obj(self.offered, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// Waits up to 5 s until the device has used `count` buffers; returns the last one's
    /// `(head, written length)`.
    pub fn wait_used(&self, mem: &GuestMemory, count: u16) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while mem.read_obj::<u16>(GuestAddress(self.used + 2)).unwrap() < count {
            assert!(
                Instant::now() < deadline,
                "the device never returned buffer {count}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let elem = self.used + 4 + 8 * u64::from((count - 1) % self.size);
        (
            mem.read_obj(GuestAddress(elem)).unwrap(),
            mem.read_obj(GuestAddress(elem + 4)).unwrap(),
        )
    }
}

impl MmioDriver<'_> {
    pub fn wr(&self, offset: u64, value: u32) {
        assert!(self.bus.write(self.base + offset, &value.to_le_bytes()));
    }

    pub fn rd(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.bus.read(self.base + offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The device's feature bits.
    pub fn device_features(&self) -> u64 {
        self.wr(0x14, 0);
        let low = self.rd(0x10);
        self.wr(0x14, 1);
        u64::from(low) | (u64::from(self.rd(0x10)) << 32)
    }

    /// ACKNOWLEDGE, DRIVER, `features`, FEATURES_OK; asserts the device accepted them.
    pub fn negotiate(&self, features: u64) {
        self.wr(0x70, ACKNOWLEDGE);
        self.wr(0x70, ACKNOWLEDGE | DRIVER);
        self.wr(0x24, 0);
        self.wr(0x20, features as u32);
        self.wr(0x24, 1);
        self.wr(0x20, (features >> 32) as u32);
        self.wr(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_ne!(self.rd(0x70) & FEATURES_OK, 0, "features refused");
    }

    /// Sets queue `index` up on `ring` and marks it ready.
    pub fn set_up_queue(&self, index: u32, ring: &Ring) {
        self.wr(0x30, index);
        self.wr(0x38, u32::from(ring.size));
        for (reg, addr) in [(0x80, ring.desc), (0x90, ring.avail), (0xa0, ring.used)] {
            self.wr(reg, addr as u32);
            self.wr(reg + 4, (addr >> 32) as u32);
        }
        self.wr(0x44, 1);
    }

    /// DRIVER_OK; asserts the device activated.
    pub fn driver_ok(&self) {
        let ready = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        self.wr(0x70, ready);
        assert_eq!(self.rd(0x70), ready, "device activation failed");
    }

    /// Notifies queue `index`.
    pub fn notify(&self, index: u32) {
        self.wr(0x50, index);
    }

    /// The pending interrupt status bits.
    pub fn interrupt_status(&self) -> u32 {
        self.rd(0x60)
    }
}

/// Turns the VMM's seccomp filters on for this test process (threads the devices start
/// from now on install theirs) and runs `body` on a thread under the vCPU filter, as the
/// guest's MMIO accesses run in the binary. A blocked call ends the process with a
/// message naming it.
pub fn as_filtered_vcpu<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                vessel_vmm::seccomp::apply(vessel_vmm::seccomp::Role::Vcpu).unwrap();
                body()
            })
            .join()
            .unwrap()
    })
}

/// Turns the seccomp filters on for threads started from now on.
pub fn enable_seccomp() {
    vessel_vmm::seccomp::enable().unwrap();
}
