//! An address space of devices (the port I/O space or the MMIO space): each device owns a
//! range, and an access is handed to the device with its offset in that range. Accesses that
//! hit no device read as all ones and are otherwise dropped, as on real hardware.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// A device on a bus. `offset` is relative to the start of the device's range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overflows")]
    BadRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Devices by base address.
#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut devices = self.devices.write();
        let before = devices.range(..end).next_back();
        if let Some((&other, entry)) = before {
            if other + entry.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in its range.
    fn find(&self, addr: u64, size: usize) -> Option<(Arc<Mutex<dyn BusDevice>>, u64)> {
        let devices = self.devices.read();
        let (&base, entry) = devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Reads from the device at `addr`; returns false (and all ones) when none is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                device.lock().read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; returns false when none is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                device.lock().write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_by_offset() {
        let bus = Bus::default();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x1000, 0x10, dev.clone()).unwrap();
        assert!(bus.write(0x1004, &[1, 2]));
        let mut data = [0u8; 4];
        assert!(bus.read(0x100c, &mut data));
        assert_eq!(data, [0xc; 4]);
        // Past the end, straddling the end, before the start: no device.
        assert!(!bus.write(0x1010, &[1]));
        assert!(!bus.read(0x100e, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.write(0xfff, &[1]));
        assert_eq!(dev.lock().writes, [(4, vec![1, 2])]);
    }

    #[test]
    fn ranges_may_not_overlap_or_overflow() {
        let bus = Bus::default();
        let dev = || Arc::new(Mutex::new(Recorder::default())) as Arc<Mutex<dyn BusDevice>>;
        bus.insert(0x100, 0x10, dev()).unwrap();
        assert!(matches!(
            bus.insert(0x108, 0x10, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0xf8, 0x10, dev()),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0x110, 0x10, dev()).unwrap();
        bus.insert(0xf0, 0x10, dev()).unwrap();
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(0x500, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
    }
}
