//! `Identity`: make a restored guest its own machine. Every guest restored from one checkpoint
//! starts with the same kernel RNG state, hostname and machine-id; this reseeds the RNG from the
//! host's entropy and gives the guest its own name and id.

use super::ServerError;
use crate::proto::IdentityRequest;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

/// `_IOW('R', 0x03, int[2])`: add entropy to the input pool, crediting it.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the kernel's CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// The most entropy bytes taken per request (the kernel's pool is 256 bits; more is waste).
const MAX_ENTROPY: usize = 512;

fn err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Identity { what, source }
}

fn invalid(what: &str, why: &str) -> ServerError {
    ServerError::Identity {
        what: what.into(),
        source: io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
    }
}

/// Applies `req`: entropy first (so nothing below draws from the shared RNG state), then the
/// hostname and machine-id.
pub(super) fn apply(req: &IdentityRequest) -> Result<(), ServerError> {
    if let Some(h) = &req.hostname {
        check_hostname(h)?;
    }
    if let Some(id) = &req.machine_id {
        check_machine_id(id)?;
    }
    if !req.entropy.is_empty() {
        reseed(&req.entropy[..req.entropy.len().min(MAX_ENTROPY)])?;
    }
    if let Some(h) = &req.hostname {
        set_hostname(h)?;
    }
    if let Some(id) = &req.machine_id {
        set_machine_id(id)?;
    }
    Ok(())
}

fn check_hostname(h: &str) -> Result<(), ServerError> {
    let ok = (1..=64).contains(&h.len())
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(invalid("hostname", "1-64 characters of a-z A-Z 0-9 - . _"))
    }
}

fn check_machine_id(id: &str) -> Result<(), ServerError> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(invalid("machine-id", "32 lowercase hex digits"))
    }
}

/// Credits `bytes` to the kernel's input pool and reseeds the CRNG from it at once, so every
/// read of `/dev/urandom` or `getrandom` after this differs from a twin restored from the same
/// checkpoint. Needs CAP_SYS_ADMIN (the agent runs as root).
fn reseed(bytes: &[u8]) -> Result<(), ServerError> {
    let dev = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(err("open /dev/urandom"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&len.saturating_mul(8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: `info` is a valid rand_pool_info of `len` data bytes that outlives the call; the
    // kernel only reads it.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if rc != 0 {
        return Err(err("RNDADDENTROPY")(io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc != 0 {
        return Err(err("RNDRESEEDCRNG")(io::Error::last_os_error()));
    }
    Ok(())
}

fn set_hostname(h: &str) -> Result<(), ServerError> {
    // SAFETY: the pointer and length describe `h`'s bytes, which outlive the call.
    let rc = unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) };
    if rc != 0 {
        return Err(err("sethostname")(io::Error::last_os_error()));
    }
    if Path::new("/etc").is_dir() {
        write_file(Path::new("/etc/hostname"), format!("{h}\n").as_bytes())?;
        let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
        write_file(Path::new("/etc/hosts"), hosts_with(&hosts, h).as_bytes())?;
    }
    Ok(())
}

/// Writes `bytes` over `path` in place: no truncation to zero and no rename over it, the two
/// patterns after which ext4 (`auto_da_alloc`) writes the file's blocks out synchronously, which
/// costs seconds where guest kernel code is emulated. Creates the file when missing. The file is
/// cut only when the new text is shorter: ext4 runs its journaled truncate even for a size that
/// does not change (a new machine-id or a same-length hostname).
pub(super) fn overwrite(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let old_len = f.metadata()?.len();
    f.write_all(bytes)?;
    if old_len > bytes.len() as u64 {
        f.set_len(bytes.len() as u64)?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    overwrite(path, bytes).map_err(err(format!("write {}", path.display())))
}

/// `/etc/hosts` with its `127.0.1.1` line naming `h` (added when missing), as Debian keeps it;
/// sudo and others look the hostname up there.
pub(crate) fn hosts_with(hosts: &str, h: &str) -> String {
    let line = format!("127.0.1.1\t{h}");
    let mut found = false;
    let mut out: Vec<String> = hosts
        .lines()
        .map(|l| {
            if l.split_whitespace().next() == Some("127.0.1.1") {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(line);
    }
    out.join("\n") + "\n"
}

fn set_machine_id(id: &str) -> Result<(), ServerError> {
    if !Path::new("/etc").is_dir() {
        return Ok(());
    }
    // Usually read-only (0444), which root writes through.
    write_file(Path::new("/etc/machine-id"), format!("{id}\n").as_bytes())?;
    let dbus = Path::new("/var/lib/dbus/machine-id");
    if fs::symlink_metadata(dbus).is_ok_and(|m| m.is_file()) {
        write_file(dbus, format!("{id}\n").as_bytes())?;
    }
    regenerate_ssh_host_keys();
    Ok(())
}

/// Where the image has SSH host keys, they are the checkpoint's: remove them and let
/// `ssh-keygen -A` make new ones in the background (seconds; nobody waits for it).
fn regenerate_ssh_host_keys() {
    let Ok(rd) = fs::read_dir("/etc/ssh") else {
        return;
    };
    let keys: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ssh_host_"))
        })
        .collect();
    if keys.is_empty() {
        return;
    }
    for k in &keys {
        let _ = fs::remove_file(k);
    }
    let child = Command::new("ssh-keygen")
        .arg("-A")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut c) = child {
        std::thread::spawn(move || c.wait());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_ids_are_refused_before_anything_changes() {
        let bad = IdentityRequest {
            hostname: Some("a b".into()),
            entropy: vec![1; 8],
            ..Default::default()
        };
        assert!(apply(&bad).unwrap_err().to_string().contains("hostname"));
        let bad = IdentityRequest {
            machine_id: Some("XYZ".into()),
            ..Default::default()
        };
        assert!(apply(&bad).unwrap_err().to_string().contains("machine-id"));
        check_machine_id(&"0a".repeat(16)).unwrap();
        check_hostname("sandbox-1.dev_x").unwrap();
    }

    #[test]
    fn overwrite_leaves_exactly_the_new_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for text in [
            "a much longer first text\n",
            "short\n",
            "other\n",
            "longer again\n",
        ] {
            overwrite(&p, text.as_bytes()).unwrap();
            assert_eq!(fs::read_to_string(&p).unwrap(), text);
        }
    }

    #[test]
    fn the_hosts_line_is_replaced_or_added() {
        let debian = "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost\n";
        assert_eq!(
            hosts_with(debian, "new"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n::1\tlocalhost\n"
        );
        assert_eq!(hosts_with("", "new"), "127.0.1.1\tnew\n");
    }
}
