//! Disks whose files fill on first read from a block server, for a checkpoint whose disk files
//! are not (all) on this host yet: a sandbox pulled lazily from a bucket (docs/storage.md).
//!
//! The VMM is started with `--block-server SOCKET`. Its first restore connects to the server
//! ([`cairn_snapshot::disk::ServedDisk`]) and every layered disk it opens from then on reads its
//! base image and frozen layers through it: before a range of a file the server fills is read,
//! the server is asked to make it present, and answers once the bytes are in the file (fetched,
//! checked against their hash). The VMM never learns where the bytes come from. A range the
//! server cannot produce fails the guest's request with an I/O error, and the reason (which
//! names the sandbox, checkpoint and chunk) goes to the log: never zeros, never wrong bytes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_snapshot::disk::{DiskFetch, ServedDisk};

use crate::error::VmmError;

/// The block server of the next restore (`--block-server`), taken by it.
static NEXT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Fill the disks of the next restore from the block server at `socket` (`--block-server`).
pub fn serve_next_restore_from(socket: Option<PathBuf>) {
    *NEXT.lock().unwrap_or_else(|p| p.into_inner()) = socket;
}

/// The block server for this restore, if one was given (once).
pub fn take_next() -> Option<PathBuf> {
    NEXT.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Connect to the block server at `socket`.
pub fn connect(socket: &Path) -> Result<Arc<dyn DiskFetch>, VmmError> {
    let served = ServedDisk::connect(socket)
        .map_err(|e| VmmError::Snapshot(format!("block server {}: {e}", socket.display())))?;
    tracing::info!("disks served by the block server {}", socket.display());
    Ok(Arc::new(served))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_restore_takes_the_server_once_and_a_missing_one_is_an_error() {
        serve_next_restore_from(Some("/b".into()));
        assert_eq!(take_next(), Some(PathBuf::from("/b")));
        assert_eq!(take_next(), None);
        let dir = tempfile::tempdir().unwrap();
        let e = connect(&dir.path().join("none.sock")).unwrap_err();
        assert!(e.to_string().contains("none.sock"), "{e}");
    }
}
