//! KVM tests with tiny hand-assembled real-mode guests (this machine's KVM runs only such
//! guests; see DESIGN.md): the vCPU run loop, port I/O into the serial device, MMIO dispatch,
//! ioeventfd and irqfd delivery, and a clean stop. Each prints a SKIPPED line when /dev/kvm
//! cannot be opened. The byte strings were assembled with GNU as (`.code16`); the source is
//! beside each.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, Kvm};
use parking_lot::Mutex;
use vessel_vmm::boot::entry;
use vessel_vmm::boot::long_mode::PageSize;
use vessel_vmm::devices::legacy::{SerialDevice, COM1_PORT};
use vessel_vmm::devices::{Bus, BusDevice};
use vessel_vmm::memory::{self, GuestMemory};
use vessel_vmm::vstate::open_kvm;
use vessel_vmm::vstate::vcpu::{Exit, Vcpu};
use vessel_vmm::vstate::vm::Vm;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Guest code is loaded here; RAM is `[0, RAM_SIZE)`, so 0x8000 up is MMIO.
const CODE: u64 = 0x1000;
const RAM_SIZE: usize = 0x8000;
/// A port the guests report results on.
const RESULT_PORT: u64 = 0x500;

fn kvm(test: &str) -> Option<Kvm> {
    match open_kvm() {
        Ok(kvm) => Some(kvm),
        Err(e) => {
            common::skipped(test, &e.to_string());
            None
        }
    }
}

/// A device that records every write (offset, bytes) and answers reads with `read_value`.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
    read_value: u8,
}

impl BusDevice for Recorder {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(self.read_value);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

/// A writer tests can read back.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Guest {
    vm: Vm,
    memory: GuestMemory,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    result: Arc<Mutex<Recorder>>,
}

impl Guest {
    /// A VM with RAM at `[0, RAM_SIZE)` holding `code` at [`CODE`], a result port, and (if
    /// asked) the in-kernel irqchip.
    fn new(kvm: &Kvm, code: &[u8], irqchip: bool) -> Self {
        Self::with_ram(kvm, code, irqchip, RAM_SIZE)
    }

    fn with_ram(kvm: &Kvm, code: &[u8], irqchip: bool, ram: usize) -> Self {
        let vm = Vm::new(kvm).unwrap();
        let memory = memory::create(&[(GuestAddress(0), ram)]).unwrap();
        memory.write_slice(code, GuestAddress(CODE)).unwrap();
        vm.register_memory(&memory).unwrap();
        if irqchip {
            vm.create_irqchip().unwrap();
        }
        let pio = Arc::new(Bus::default());
        let result = Arc::new(Mutex::new(Recorder::default()));
        pio.insert(RESULT_PORT, 1, result.clone()).unwrap();
        Self {
            vm,
            memory,
            pio,
            mmio: Arc::new(Bus::default()),
            result,
        }
    }

    fn vcpu(&self) -> Vcpu {
        let vcpu = Vcpu::new(&self.vm, 0, self.pio.clone(), self.mmio.clone()).unwrap();
        entry::real_mode(&vcpu, CODE).unwrap();
        vcpu
    }

    fn results(&self) -> Vec<u8> {
        let result = self.result.lock();
        result.writes.iter().flat_map(|(_, d)| d.clone()).collect()
    }
}

#[test]
fn serial_output_then_halt() {
    let Some(kvm) = kvm("serial_output_then_halt") else {
        return;
    };
    // mov $0x3f8,%dx; mov $'H',%al; out %al,%dx; mov $'i',%al; out %al,%dx; hlt
    let code = [0xba, 0xf8, 0x03, 0xb0, 0x48, 0xee, 0xb0, 0x69, 0xee, 0xf4];
    let guest = Guest::new(&kvm, &code, false);
    let out = Output::default();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let serial = SerialDevice::new(irq, Box::new(out.clone()));
    guest
        .pio
        .insert(COM1_PORT, 8, Arc::new(Mutex::new(serial)))
        .unwrap();
    let mut vcpu = guest.vcpu();
    assert_eq!(vcpu.run().unwrap(), Exit::Halt);
    assert_eq!(out.0.lock().as_slice(), b"Hi");
}

#[test]
fn mmio_reads_and_writes_reach_the_device() {
    let Some(kvm) = kvm("mmio_reads_and_writes_reach_the_device") else {
        return;
    };
    // movb $0x5a,0x8000; mov 0x8004,%al; mov $0x500,%dx; out %al,%dx; hlt
    let code = [
        0xc6, 0x06, 0x00, 0x80, 0x5a, 0xa0, 0x04, 0x80, 0xba, 0x00, 0x05, 0xee, 0xf4,
    ];
    let guest = Guest::new(&kvm, &code, false);
    let device = Arc::new(Mutex::new(Recorder {
        read_value: 0x77,
        ..Default::default()
    }));
    guest.mmio.insert(0x8000, 0x10, device.clone()).unwrap();
    let mut vcpu = guest.vcpu();
    assert_eq!(vcpu.run().unwrap(), Exit::Halt);
    assert_eq!(device.lock().writes, [(0, vec![0x5a])]);
    // The value the device returned made it into the guest and back out.
    assert_eq!(guest.results(), [0x77]);
}

#[test]
fn ioeventfds_fire_without_exits() {
    let Some(kvm) = kvm("ioeventfds_fire_without_exits") else {
        return;
    };
    // mov $0x600,%dx; mov $7,%al; out %al,%dx; movb $9,0x9000; mov $0x500,%dx; out %al,%dx; hlt
    let code = [
        0xba, 0x00, 0x06, 0xb0, 0x07, 0xee, 0xc6, 0x06, 0x00, 0x90, 0x09, 0xba, 0x00, 0x05, 0xee,
        0xf4,
    ];
    let guest = Guest::new(&kvm, &code, false);
    let port_event = EventFd::new(EFD_NONBLOCK).unwrap();
    let mmio_event = EventFd::new(EFD_NONBLOCK).unwrap();
    guest
        .vm
        .register_ioevent(&port_event, IoEventAddress::Pio(0x600))
        .unwrap();
    guest
        .vm
        .register_ioevent(&mmio_event, IoEventAddress::Mmio(0x9000))
        .unwrap();
    // Devices behind the same addresses must never see the writes: KVM consumed them.
    let port_dev = Arc::new(Mutex::new(Recorder::default()));
    let mmio_dev = Arc::new(Mutex::new(Recorder::default()));
    guest.pio.insert(0x600, 1, port_dev.clone()).unwrap();
    guest.mmio.insert(0x9000, 1, mmio_dev.clone()).unwrap();
    let mut vcpu = guest.vcpu();
    let mut exits = Vec::new();
    loop {
        match vcpu.run_once().unwrap() {
            Exit::Halt => break,
            exit => exits.push(exit),
        }
    }
    assert_eq!(port_event.read().unwrap(), 1);
    assert_eq!(mmio_event.read().unwrap(), 1);
    assert!(port_dev.lock().writes.is_empty());
    assert!(mmio_dev.lock().writes.is_empty());
    assert_eq!(exits, [Exit::Io], "only the result port exits");
    assert_eq!(guest.results(), [7]);
}

/// Fires an irqfd when the guest writes to it (the guest's "ready" signal).
struct Kick(EventFd);

impl BusDevice for Kick {
    fn read(&mut self, _: u64, _: &mut [u8]) {}
    fn write(&mut self, _: u64, _: &[u8]) {
        self.0.write(1).unwrap();
    }
}

#[test]
fn irqfd_interrupts_a_halted_guest() {
    let test = "irqfd_interrupts_a_halted_guest";
    let Some(kvm) = kvm(test) else {
        return;
    };
    // 64-bit: PIC ICW1..4 with vectors from 0x20, only IRQ4 unmasked; tell the host (port
    // 0x501); sti; hlt in a loop. The handler (at +0x1d) writes 0x42 to 0x500, EOIs, iretq.
    //   mov $0x11,%al; out %al,$0x20; mov $0x20,%al; out %al,$0x21; mov $4,%al; out %al,$0x21
    //   mov $1,%al; out %al,$0x21; mov $0xef,%al; out %al,$0x21
    //   mov $0x501,%dx; out %al,%dx; sti; 1: hlt; jmp 1b
    // handler: mov $0x42,%al; mov $0x500,%dx; out %al,%dx; mov $0x20,%al; out %al,$0x20; iretq
    let code = [
        0xb0, 0x11, 0xe6, 0x20, 0xb0, 0x20, 0xe6, 0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01, 0xe6,
        0x21, 0xb0, 0xef, 0xe6, 0x21, 0x66, 0xba, 0x01, 0x05, 0xee, 0xfb, 0xf4, 0xeb, 0xfd, 0xb0,
        0x42, 0x66, 0xba, 0x00, 0x05, 0xee, 0xb0, 0x20, 0xe6, 0x20, 0x48, 0xcf,
    ];
    let handler = CODE + 0x1d;
    let guest = Guest::with_ram(&kvm, &code, true, 0x20_0000);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    guest.vm.register_irqfd(&irq, 4).unwrap();
    guest
        .pio
        .insert(0x501, 1, Arc::new(Mutex::new(Kick(irq))))
        .unwrap();
    let mut vcpu = Vcpu::new(&guest.vm, 0, guest.pio.clone(), guest.mmio.clone()).unwrap();
    entry::long_mode(&vcpu, &guest.memory, CODE, 0x8000, PageSize::Small).unwrap();
    // An IDT at 0x2000 whose vector 0x24 (IRQ4) is a 64-bit interrupt gate to the handler.
    let idt = 0x2000u64;
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    gate[5] = 0x8e;
    gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    guest
        .memory
        .write_slice(&gate, GuestAddress(idt + 0x24 * 16))
        .unwrap();
    let mut sregs = vcpu.fd().get_sregs().unwrap();
    sregs.idt.base = idt;
    sregs.idt.limit = 256 * 16 - 1;
    vcpu.fd().set_sregs(&sregs).unwrap();
    vcpu.set_lint().unwrap();

    // With the in-kernel irqchip a halted vCPU waits in KVM; the interrupt wakes it, and the
    // handler's port write comes back as an exit. Should it never come, a signal kicks the
    // vCPU out of KVM_RUN so the test fails instead of hanging.
    extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(SIGRTMIN(), kick).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let result = guest.result.clone();
    let runner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut exits = Vec::new();
            while !stop.load(Ordering::SeqCst) && result.lock().writes.is_empty() {
                exits.push(vcpu.run_once().unwrap());
            }
            exits
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while guest.results().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    while !runner.is_finished() {
        runner.kill(SIGRTMIN()).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let exits = runner.join().unwrap();
    assert_eq!(
        guest.results(),
        [0x42],
        "the interrupt handler never ran; exits: {exits:?}"
    );
    // The halt waited in KVM: no halt exit reached the VMM.
    assert!(!exits.contains(&Exit::Halt), "{exits:?}");
}
