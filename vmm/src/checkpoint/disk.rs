//! Disks for checkpointable VMs: virtio-blk on cairn's layered block store (a read-only base
//! image, frozen per-checkpoint deltas, and an active delta that takes the writes).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cairn_devices::virtio::block::DiskBackend;
use cairn_snapshot::disk::LayeredDisk;

/// A layered disk shared by the block device (I/O) and the checkpoint code (freezing deltas).
pub type SharedLayeredDisk = Arc<Mutex<LayeredDisk>>;

/// The block device's view of a [`LayeredDisk`].
#[derive(Debug)]
pub struct LayeredBackend {
    disk: SharedLayeredDisk,
    len: u64,
}

impl LayeredBackend {
    /// Serve I/O from `disk`.
    pub fn new(disk: SharedLayeredDisk) -> Self {
        let len = disk.lock().unwrap_or_else(|p| p.into_inner()).len();
        Self { disk, len }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut LayeredDisk) -> cairn_snapshot::Result<T>,
    ) -> io::Result<T> {
        let mut disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut disk).map_err(|e| io::Error::other(e.to_string()))
    }
}

impl DiskBackend for LayeredBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|d| d.read_at(off, buf))
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.with(|d| d.write_at(off, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.with(|d| d.flush())
    }

    fn discard(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.with(|d| d.discard(off, len))
    }
}

/// A drive on the layered store.
#[derive(Debug, Clone)]
pub struct LayeredDrive {
    /// The drive's id.
    pub drive_id: String,
    /// Its base image.
    pub base: PathBuf,
    /// The open store.
    pub disk: SharedLayeredDisk,
}
