//! Disks for checkpointable VMs: virtio-blk on cairn's layered block store (a read-only base
//! image, frozen per-checkpoint deltas, and an active delta that takes the writes).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_devices::virtio::block::{DiskBackend, RawFile};
use cairn_snapshot::disk::{DiskFetch, FileId, LayeredDisk};

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
        f(&mut disk).map_err(|e| {
            // The guest sees only an I/O error: the reason goes to the log.
            if matches!(e, cairn_snapshot::Error::Fetch { .. }) {
                tracing::error!("virtio-blk: {e}");
            }
            io::Error::other(e.to_string())
        })
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

/// A read-only image whose ranges a [`DiskFetch`] makes present before they are read (a
/// lazily pulled sandbox's read-only drive).
#[derive(Debug)]
pub struct FetchedRaw {
    raw: RawFile,
    id: FileId,
    path: PathBuf,
    fetch: Arc<dyn DiskFetch>,
}

impl FetchedRaw {
    /// Serve `raw` (opened from `path`) through `fetch`.
    pub fn new(raw: RawFile, path: &Path, fetch: Arc<dyn DiskFetch>) -> io::Result<Self> {
        Ok(Self {
            id: FileId::of_path(path)?,
            raw,
            path: path.to_path_buf(),
            fetch,
        })
    }
}

impl DiskBackend for FetchedRaw {
    fn len(&self) -> u64 {
        self.raw.len()
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if let Err(e) = self.fetch.ensure(self.id, off, buf.len() as u64) {
            tracing::error!("virtio-blk: `{}`: {e}", self.path.display());
            return Err(io::Error::other(e));
        }
        self.raw.read_at(off, buf)
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.raw.write_at(off, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.raw.flush()
    }

    fn discard(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.raw.discard(off, len)
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
