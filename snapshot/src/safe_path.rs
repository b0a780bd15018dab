//! Paths that come from requests must not harm the host: inputs are opened without blocking and must
//! be regular files (a FIFO would block the API in `open`, a device would be read forever); outputs
//! replace only regular files, in a directory the caller may write (a root VMM told to write
//! `/dev/null` must not rename its file over the host's).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What an input may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A regular file only (kernels, initrds, state and memory files, indexes).
    Regular,
    /// A regular file or a block device (disk images).
    RegularOrBlockDevice,
}

/// Open `path` for reading (and writing when `write`) without blocking in `open` (`O_NONBLOCK`, so
/// a FIFO cannot hang the caller), then refuse anything `kind` does not allow. `O_NONBLOCK` does
/// not change reads and writes of regular files or block devices.
pub fn open_input(path: &Path, write: bool, kind: InputKind) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let ft = f.metadata()?.file_type();
    let ok = ft.is_file() || (kind == InputKind::RegularOrBlockDevice && ft.is_block_device());
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// Check that `path` may be created or replaced: if it exists it is a regular file (not a device,
/// FIFO, socket, directory or symlink), and its parent is a directory.
pub fn check_output_target(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} exists and is not a regular file: refusing to replace it",
                    path.display()
                ),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let m = std::fs::metadata(parent)?;
    if !m.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", parent.display()),
        ));
    }
    // Writability is proven by creating the temporary file beside `path` (an `access` check would
    // need a syscall the VMM's seccomp filter does not allow, and says yes to root anyway).
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let start = Instant::now();
        let e = open_input(&fifo, false, InputKind::Regular).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(open_input(&fifo, false, InputKind::RegularOrBlockDevice).is_err());
        assert!(open_input(Path::new("/dev/null"), false, InputKind::Regular).is_err());
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        open_input(&f, false, InputKind::Regular).unwrap();
    }

    #[test]
    fn only_regular_targets_in_writable_directories() {
        let dir = tempfile::tempdir().unwrap();
        check_output_target(&dir.path().join("new")).unwrap();
        std::fs::write(dir.path().join("old"), b"x").unwrap();
        check_output_target(&dir.path().join("old")).unwrap();
        assert!(check_output_target(Path::new("/dev/null")).is_err());
        assert!(check_output_target(dir.path()).is_err(), "a directory");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        assert!(check_output_target(&dir.path().join("link")).is_err());
        assert!(check_output_target(&dir.path().join("old").join("x")).is_err());
        assert!(check_output_target(&dir.path().join("missing").join("x")).is_err());
    }
}
