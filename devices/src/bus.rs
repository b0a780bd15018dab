//! Port-I/O and MMIO buses: address ranges mapped to devices.
//!
//! vCPU threads hand every PIO and MMIO exit to a [`Bus`]. A bus is filled before the VM starts
//! and then shared read-only (`Arc<Bus>`); each device sits behind its own mutex.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes on a bus.
pub trait BusDevice: Send {
    /// Read `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Write `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be placed on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range [{base:#x}, +{len:#x}) is empty or overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Start of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
}

/// A shared, lockable bus device.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedBusDevice,
}

/// An address space (PIO or MMIO) holding devices at non-overlapping ranges.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<(u64, u64)> = self.devices.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Place `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if len == 0 {
            return Err(BusError::Overlap { base, len });
        }
        if let Some((prev_base, prev)) = self.devices.range(..end).next_back() {
            if prev_base + prev.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering `addr`, with the offset of `addr` inside it.
    fn resolve(&self, addr: u64) -> Option<(u64, &SharedBusDevice)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((offset, &entry.device))
    }

    /// Read from the device at `addr`. Returns false when no device is there (`data` untouched).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                // A poisoned lock means a device panicked earlier; keep serving with its state.
                let mut guard = dev.lock().unwrap_or_else(|p| p.into_inner());
                guard.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Write to the device at `addr`. Returns false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                let mut guard = dev.lock().unwrap_or_else(|p| p.into_inner());
                guard.write(offset, data);
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
    struct Echo {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo::default()));
        bus.insert(dev.clone(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo::default())), 0x10ff, 1),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo::default())), 0xf01, 0x100),
            Err(BusError::Overlap {
                base: 0xf01,
                len: 0x100
            })
        );
        bus.insert(Arc::new(Mutex::new(Echo::default())), 0x1100, 0x10)
            .unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x1005, &mut buf));
        assert_eq!(buf, [5, 5]);
        assert!(!bus.read(0x1110, &mut buf));
        assert!(bus.write(0x10ff, &[9]));
        assert_eq!(dev.lock().unwrap().last, vec![(0xff, vec![9])]);
        assert!(!bus.write(0xfff, &[1]));
    }
}
