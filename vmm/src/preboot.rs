//! Checks made when the API changes the configuration before InstanceStart, as Firecracker
//! makes them: the whole configuration must still be valid (one root drive, distinct MACs and
//! taps, ...), and the files it names must open. A refused PUT changes nothing, so the last
//! valid configuration stays in place.
//!
//! Also the vsock socket: Firecracker binds `uds_path` when `PUT /vsock` returns (clients such
//! as bandsox wait for it before they start the VM), so [`VsockPlaceholder`] binds it then and
//! hands the path back to the device at InstanceStart.

use std::fs::OpenOptions;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::VmConfig;

/// Why a configuration change was refused: the message for the 400's `fault_message`.
pub type Refusal = String;

/// Checks `config` as it would be after a PUT: the rules of
/// [`VmConfig::validate_so_far`], the memory size against the host, and that the kernel, the
/// initrd and every drive open (a drive read-write unless it is read-only).
pub fn check(config: &VmConfig) -> Result<(), Refusal> {
    config.validate_so_far().map_err(|e| e.to_string())?;
    crate::host_limits::check_mem_size(config.machine_config.mem_size_mib)
        .map_err(|e| format!("machine-config.{e}"))?;
    if let Some(boot) = &config.boot_source {
        open_read(&boot.kernel_image_path)
            .map_err(|e| format!("The kernel file cannot be opened: {e}"))?;
        if let Some(initrd) = &boot.initrd_path {
            open_read(initrd).map_err(|e| format!("The initrd file cannot be opened: {e}"))?;
        }
    }
    for drive in &config.drives {
        OpenOptions::new()
            .read(true)
            .write(!drive.read_only())
            .open(&drive.path_on_host)
            .map_err(|e| {
                format!(
                    "drives.{}: cannot open the backing file {}: {e}",
                    drive.drive_id,
                    drive.path_on_host.display()
                )
            })?;
    }
    Ok(())
}

fn open_read(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new().read(true).open(path)
}

/// The vsock socket, bound at `PUT /vsock` and given back to the device at InstanceStart.
#[derive(Debug, Default)]
pub struct VsockPlaceholder {
    bound: Option<(PathBuf, UnixListener)>,
}

impl VsockPlaceholder {
    /// Binds `path` (a stale socket left by a dead process is replaced), releasing the socket
    /// bound before, if any.
    pub fn bind(&mut self, path: &Path) -> Result<(), Refusal> {
        if self.bound.as_ref().is_some_and(|(p, _)| p == path) {
            return Ok(());
        }
        let listener = bind_fresh(path)
            .map_err(|e| format!("vsock.uds_path: cannot bind {}: {e}", path.display()))?;
        self.release();
        self.bound = Some((path.to_path_buf(), listener));
        Ok(())
    }

    /// Closes and removes the socket so the device can bind the path itself.
    pub fn release(&mut self) {
        if let Some((path, listener)) = self.bound.take() {
            drop(listener);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for VsockPlaceholder {
    fn drop(&mut self) {
        self.release();
    }
}

fn bind_fresh(path: &Path) -> std::io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket || UnixStream::connect(path).is_ok() {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootSourceConfig, DriveConfig};

    fn drive(id: &str, path: &Path, root: bool) -> DriveConfig {
        DriveConfig::new(id, path, root)
    }

    #[test]
    fn missing_files_and_a_second_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let mut cfg = VmConfig::default();
        assert!(check(&cfg).is_ok(), "an empty configuration is fine so far");
        cfg.boot_source = Some(BootSourceConfig {
            kernel_image_path: dir.path().join("nope"),
            ..BootSourceConfig::default()
        });
        let e = check(&cfg).unwrap_err();
        assert!(e.starts_with("The kernel file cannot be opened"), "{e}");
        cfg.boot_source = Some(BootSourceConfig {
            kernel_image_path: file.clone(),
            ..BootSourceConfig::default()
        });
        cfg.drives = vec![
            drive("a", &file, true),
            drive("b", &dir.path().join("x"), false),
        ];
        assert!(check(&cfg)
            .unwrap_err()
            .starts_with("drives.b: cannot open"));
        cfg.drives[1] = drive("b", &file, true);
        assert!(check(&cfg).unwrap_err().contains("only one root device"));
        cfg.drives[1] = drive("b", &file, false);
        check(&cfg).unwrap();
    }

    #[test]
    fn the_vsock_socket_exists_while_placed_and_moves_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
        let mut p = VsockPlaceholder::default();
        p.bind(&a).unwrap();
        assert!(a.exists());
        p.bind(&b).unwrap();
        assert!(b.exists() && !a.exists());
        p.release();
        assert!(!b.exists());
        std::fs::write(&a, b"not a socket").unwrap();
        assert!(p.bind(&a).is_err());
    }
}
