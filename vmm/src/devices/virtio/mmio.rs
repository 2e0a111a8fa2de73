//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): the register file a driver
//! reads and writes, the device status state machine, feature negotiation (a driver may
//! only accept offered features, and must accept VIRTIO_F_VERSION_1), virtqueue setup, and
//! activation of the device when the driver sets DRIVER_OK. Malformed accesses (wrong width,
//! unknown registers, queue setup after activation) are ignored; a driver that breaks the
//! protocol gets DEVICE_NEEDS_RESET.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;
use crate::memory::GuestMemory;

/// "virt", little endian.
const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// Our vendor id: "VSSL".
const VENDOR_ID: u32 = 0x4c53_5356;
/// The register window of one device (registers, then configuration space).
pub const MMIO_LEN: u64 = 0x1000;
const CONFIG_OFFSET: u64 = 0x100;
/// The QueueNotify register, where the VMM registers each device's ioeventfd.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x050;

/// Device status bits (virtio 1.2, 2.1).
pub const ACKNOWLEDGE: u32 = 1;
pub const DRIVER: u32 = 2;
pub const DRIVER_OK: u32 = 4;
pub const FEATURES_OK: u32 = 8;
pub const DEVICE_NEEDS_RESET: u32 = 64;
pub const FAILED: u32 = 128;

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    memory: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    /// One notification eventfd per queue (also registered as ioeventfds by the VMM).
    events: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("virtqueue of {0} entries: {1:?}")]
    Queue(u16, virtio_queue::Error),
    #[error("queue notification eventfd: {0}")]
    EventFd(std::io::Error),
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        memory: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut events = Vec::new();
        let sizes = device.lock().queue_max_sizes().to_vec();
        for size in sizes {
            queues.push(Queue::new(size).map_err(|e| MmioError::Queue(size, e))?);
            events.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(Self {
            device,
            memory,
            interrupt,
            queues,
            events,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock()
    }

    /// The notification eventfd of each queue (for ioeventfd registration at
    /// `base + 0x50` with the queue index as datamatch).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.events
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn offered_features(&self) -> u64 {
        self.device().features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.activated || self.status & FEATURES_OK == 0 {
            return None; // queues are set up between FEATURES_OK and DRIVER_OK only
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device().device_type(),
            0x00c => VENDOR_ID,
            0x010 => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            0x034 => queue.map_or(0, |q| q.max_size().into()),
            0x044 => queue.map_or(0, |q| q.ready().into()),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            // SHMLen and SHMBase: all ones says "no shared memory region" (a driver reads
            // zero as a region of length 0 at address 0, which virtio-fs then fails to map).
            0x0b0..=0x0bc => u32::MAX,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x014 => self.device_features_sel = value,
            0x020 => self.write_driver_features(value),
            0x024 => self.driver_features_sel = value,
            0x030 => self.queue_sel = value,
            0x038 => {
                if let Some(q) = self.selected_queue() {
                    let size = u16::try_from(value).unwrap_or(0);
                    if size == 0 || size > q.max_size() || !size.is_power_of_two() {
                        tracing::warn!(size = value, max = q.max_size(), "bad virtqueue size");
                        self.status |= DEVICE_NEEDS_RESET;
                    } else {
                        q.set_size(size);
                    }
                }
            }
            0x044 => self.write_queue_ready(value == 1),
            0x050 => {
                if let Some(event) = self.events.get(value as usize) {
                    let _ = event.write(1);
                }
            }
            0x064 => self.interrupt.ack(value),
            0x070 => self.write_status(value),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                let high = offset & 0x4 != 0;
                let (low, high) = if high {
                    (None, Some(value))
                } else {
                    (Some(value), None)
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !0x4 {
                        0x080 => q.set_desc_table_address(low, high),
                        0x090 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => tracing::debug!(offset, value, "write to an unknown virtio-mmio register"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (DRIVER | FEATURES_OK) != DRIVER {
            return; // features are written after DRIVER and before FEATURES_OK
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, ready: bool) {
        let memory = self.memory.clone();
        if let Some(q) = self.selected_queue() {
            // A queue the driver marks ready must lie in guest memory (virtio-queue checks
            // the rings of a ready queue only).
            q.set_ready(ready);
            if ready && !q.is_valid(&memory) {
                tracing::warn!("virtqueue outside guest memory or misaligned: not ready");
                q.set_ready(false);
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        // Bits only ever get added, in the protocol's order.
        let ordered = value & self.status == self.status
            && match added {
                ACKNOWLEDGE => self.status == 0,
                DRIVER => self.status == ACKNOWLEDGE,
                FEATURES_OK => self.status == ACKNOWLEDGE | DRIVER,
                DRIVER_OK => self.status == ACKNOWLEDGE | DRIVER | FEATURES_OK,
                FAILED => true,
                _ => false,
            };
        if !ordered {
            tracing::warn!(status = self.status, value, "virtio status out of order");
            self.status |= DEVICE_NEEDS_RESET;
            return;
        }
        if added == FEATURES_OK {
            let offered = self.offered_features();
            let accepted = self.driver_features;
            if accepted & !offered != 0 || accepted & VIRTIO_F_VERSION_1 == 0 {
                // FEATURES_OK stays clear: the driver sees the device refused.
                return;
            }
            self.device().ack_features(accepted);
        }
        self.status = value;
        if added == DRIVER_OK {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if let Some(i) = self.queues.iter().position(|q| !q.ready()) {
            tracing::warn!(queue = i, "DRIVER_OK with a queue not ready");
            self.status |= DEVICE_NEEDS_RESET;
            return;
        }
        // The device gets its own copies of the queues' state; the transport keeps its
        // register view.
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let events: Result<Vec<EventFd>, _> = self.events.iter().map(EventFd::try_clone).collect();
        let result = match (queues, events) {
            (Ok(queues), Ok(events)) => {
                let (memory, interrupt) = (self.memory.clone(), self.interrupt.clone());
                self.device().activate(memory, interrupt, queues, events)
            }
            (Err(e), _) => Err(super::ActivateError::Device(format!("{e:?}"))),
            (_, Err(e)) => Err(super::ActivateError::Device(e.to_string())),
        };
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!(error = %e, "virtio device activation");
                self.status |= DEVICE_NEEDS_RESET;
            }
        }
    }

    fn reset(&mut self) {
        if self.activated && !self.device().reset() {
            self.status |= FAILED;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
        for q in &mut self.queues {
            q.reset();
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device().read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset.is_multiple_of(4) => {
                *word = self.read_register(offset).to_le_bytes()
            }
            _ => data.fill(0), // registers are 32-bit, aligned
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device().write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(word))
            }
            _ => tracing::debug!(offset, len = data.len(), "non 32-bit virtio-mmio access"),
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::test_utils::interrupt;
    use crate::devices::virtio::ActivateError;
    use crate::memory;

    /// What the dummy device saw.
    #[derive(Default)]
    struct Seen {
        acked: Option<u64>,
        activated: Option<Vec<(u16, u64, u64, u64)>>,
        config: Vec<u8>,
    }

    struct Dummy(Arc<Mutex<Seen>>);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn ack_features(&mut self, features: u64) {
            self.0.lock().acked = Some(features);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 0x40);
        }
        fn write_config(&mut self, _: u64, data: &[u8]) {
            self.0.lock().config.extend_from_slice(data);
        }
        fn activate(
            &mut self,
            _: GuestMemory,
            _: Arc<VirtioInterrupt>,
            queues: Vec<Queue>,
            events: Vec<EventFd>,
        ) -> Result<(), ActivateError> {
            assert_eq!(events.len(), queues.len());
            let q = queues
                .iter()
                .map(|q| (q.size(), q.desc_table(), q.avail_ring(), q.used_ring()))
                .collect();
            self.0.lock().activated = Some(q);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            true
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Seen>>, Arc<VirtioInterrupt>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mem = memory::create(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = interrupt();
        let t = MmioTransport::new(Arc::new(Mutex::new(Dummy(seen.clone()))), mem, irq.clone())
            .unwrap();
        (t, seen, irq)
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// Negotiates `features` (low, high) and returns the resulting status.
    fn negotiate(t: &mut MmioTransport, low: u32, high: u32) -> u32 {
        wr(t, 0x70, ACKNOWLEDGE);
        wr(t, 0x70, ACKNOWLEDGE | DRIVER);
        wr(t, 0x24, 0);
        wr(t, 0x20, low);
        wr(t, 0x24, 1);
        wr(t, 0x20, high);
        wr(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        rd(t, 0x70)
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
        wr(t, 0x30, index);
        wr(t, 0x38, size);
        for (reg, addr) in [(0x80, base), (0x90, base + 0x1000), (0xa0, base + 0x2000)] {
            wr(t, reg, addr as u32);
            wr(t, reg + 4, (addr >> 32) as u32);
        }
        wr(t, 0x44, 1);
    }

    #[test]
    fn no_shared_memory_region_reads_as_all_ones() {
        let (mut t, _, _) = transport();
        for offset in [0x0b0, 0x0b4, 0x0b8, 0x0bc] {
            wr(&mut t, 0x0ac, 0); // SHMSel
            assert_eq!(rd(&mut t, offset), u32::MAX, "register {offset:#x}");
        }
    }

    #[test]
    fn identifies_itself_and_offers_its_features() {
        let (mut t, _, _) = transport();
        assert_eq!(rd(&mut t, 0x0), MAGIC);
        assert_eq!(rd(&mut t, 0x4), 2);
        assert_eq!(rd(&mut t, 0x8), 4);
        wr(&mut t, 0x14, 0);
        assert_eq!(rd(&mut t, 0x10), 1 << 3);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1); // VIRTIO_F_VERSION_1 (bit 32)
        wr(&mut t, 0x14, 7);
        assert_eq!(rd(&mut t, 0x10), 0);
        wr(&mut t, 0x30, 1);
        assert_eq!(rd(&mut t, 0x34), 8);
        wr(&mut t, 0x30, 9);
        assert_eq!(rd(&mut t, 0x34), 0, "no such queue");
        let mut config = [0u8; 2];
        t.read(0x104, &mut config);
        assert_eq!(config, [0x44, 0x44]);
    }

    #[test]
    fn negotiation_accepts_only_offered_features_with_version_1() {
        let (mut t, seen, _) = transport();
        // An unoffered feature (bit 5): FEATURES_OK is refused.
        assert_eq!(negotiate(&mut t, (1 << 3) | (1 << 5), 1) & FEATURES_OK, 0);
        wr(&mut t, 0x70, 0);
        // Without VERSION_1: refused too.
        assert_eq!(negotiate(&mut t, 1 << 3, 0) & FEATURES_OK, 0);
        wr(&mut t, 0x70, 0);
        assert_eq!(negotiate(&mut t, 1 << 3, 1) & FEATURES_OK, FEATURES_OK);
        assert_eq!(seen.lock().acked, Some((1 << 3) | VIRTIO_F_VERSION_1));
        // Features are frozen after FEATURES_OK.
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, 0);
        assert_eq!(t.driver_features, (1 << 3) | VIRTIO_F_VERSION_1);
    }

    #[test]
    fn driver_ok_activates_with_the_queues_set_up() {
        let (mut t, seen, irq) = transport();
        negotiate(&mut t, 0, 1);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        setup_queue(&mut t, 1, 8, 0x2_0000);
        assert_eq!(rd(&mut t, 0x44), 1);
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(rd(&mut t, 0x70) & DEVICE_NEEDS_RESET, 0);
        let activated = seen.lock().activated.clone().unwrap();
        assert_eq!(
            activated,
            [
                (16, 0x1_0000, 0x1_1000, 0x1_2000),
                (8, 0x2_0000, 0x2_1000, 0x2_2000)
            ]
        );
        // Queue setup after activation is ignored.
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, 4);
        assert_eq!(t.queues[0].size(), 16);
        // Notifications reach the queue's eventfd; interrupts are acknowledged.
        wr(&mut t, 0x50, 1);
        assert_eq!(t.queue_events()[1].read().unwrap(), 1);
        wr(&mut t, 0x50, 99); // no such queue: ignored
        irq.trigger(0x3).unwrap();
        assert_eq!(rd(&mut t, 0x60), 0x3);
        wr(&mut t, 0x64, 0x1);
        assert_eq!(rd(&mut t, 0x60), 0x2);
        // Reset: back to the start, queues cleared.
        wr(&mut t, 0x70, 0);
        assert_eq!(rd(&mut t, 0x70), 0);
        assert_eq!(rd(&mut t, 0x60), 0);
        assert!(!t.queues[0].ready());
    }

    #[test]
    fn protocol_violations_are_refused() {
        let (mut t, seen, _) = transport();
        // DRIVER before ACKNOWLEDGE.
        wr(&mut t, 0x70, DRIVER);
        assert_ne!(rd(&mut t, 0x70) & DEVICE_NEEDS_RESET, 0);
        wr(&mut t, 0x70, 0);
        // DRIVER_OK with a queue not ready: no activation.
        negotiate(&mut t, 0, 1);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_ne!(rd(&mut t, 0x70) & DEVICE_NEEDS_RESET, 0);
        assert!(seen.lock().activated.is_none());
        wr(&mut t, 0x70, 0);
        // A queue outside guest memory never becomes ready; a size above the maximum (or not
        // a power of two) is refused and the device asks for a reset.
        negotiate(&mut t, 0, 1);
        setup_queue(&mut t, 0, 16, 0xffff_0000_0000);
        assert_eq!(rd(&mut t, 0x44), 0);
        wr(&mut t, 0x30, 1);
        wr(&mut t, 0x38, 64);
        assert_eq!(t.queues[1].size(), 8);
        assert_ne!(rd(&mut t, 0x70) & DEVICE_NEEDS_RESET, 0);
        // Odd widths and misaligned registers are ignored; unknown registers read 0.
        let mut byte = [0xffu8];
        t.read(0x0, &mut byte);
        assert_eq!(byte, [0]);
        t.write(0x70, &[0]);
        assert_ne!(rd(&mut t, 0x70), 0, "a 1-byte status write is no reset");
        assert_eq!(rd(&mut t, 0x2), 0);
        assert_eq!(rd(&mut t, 0xf0), 0);
        // Configuration writes reach the device.
        t.write(0x100, &[1, 2]);
        assert_eq!(seen.lock().config, [1, 2]);
    }
}
