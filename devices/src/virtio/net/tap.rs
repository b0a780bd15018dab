//! The host side of virtio-net: a Linux tap device, behind the [`NetBackend`] trait.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// Where frames go to and come from. Every frame starts with a 12-byte `virtio_net_hdr_v1`.
pub trait NetBackend: Send {
    /// Read one frame into `buf`. `Err(WouldBlock)` when none is ready. A frame longer than `buf`
    /// is truncated by the backend.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one whole frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// The fd that becomes readable when a frame is waiting, if the backend has one.
    fn poll_fd(&self) -> Option<RawFd>;
}

/// Longest interface name accepted by the kernel, without the trailing NUL.
const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags (`ifr_flags`), padded to the
/// size of the kernel's union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap device in non-blocking mode, with a 12-byte vnet header on every frame.
#[derive(Debug)]
pub struct Tap {
    file: File,
    if_name: String,
}

impl Tap {
    /// Open (or create, when permitted) the tap interface `if_name`.
    pub fn open(if_name: &str) -> io::Result<Self> {
        if if_name.is_empty() || if_name.len() > MAX_IFNAME_LEN || if_name.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid tap interface name {if_name:?}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            // The flag values all fit in a c_short (the kernel's ifr_flags).
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..if_name.len()].copy_from_slice(if_name.as_bytes());
        tun_set_iff(&file, &mut req)?;
        tun_set_vnet_hdr_sz(&file, VNET_HDR_LEN as libc::c_int)?;
        let end = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(libc::IFNAMSIZ);
        let if_name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Ok(Self { file, if_name })
    }

    /// The interface's name as the kernel reports it.
    pub fn if_name(&self) -> &str {
        &self.if_name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

/// `TUNSETIFF`: attach `file` to the interface named in `req`, with the flags in `req`.
#[allow(unsafe_code)]
fn tun_set_iff(file: &File, req: &mut IfReqFlags) -> io::Result<()> {
    // SAFETY: `file` is an open `/dev/net/tun` fd and `req` points to a live, exclusively borrowed
    // `IfReqFlags`, laid out like the kernel's 40-byte `struct ifreq` that TUNSETIFF reads and
    // writes back; the kernel keeps no reference to it after the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req as *mut IfReqFlags) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `TUNSETVNETHDRSZ`: the size of the vnet header that prefixes every frame.
#[allow(unsafe_code)]
fn tun_set_vnet_hdr_sz(file: &File, size: libc::c_int) -> io::Result<()> {
    let mut size = size;
    // SAFETY: `file` is an open tap fd and the ioctl reads one `int` from the pointer, which
    // points to a live local variable; nothing is retained after the call.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &mut size as *mut libc::c_int,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }

    #[test]
    fn rejects_bad_names() {
        for name in ["", "0123456789abcdefg", "a\0b"] {
            let err = Tap::open(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    /// Opens a real tap when it can (root, `/dev/net/tun` present); prints SKIP otherwise.
    #[test]
    fn real_tap_opens_nonblocking_and_takes_frames() {
        // The effective uid, read from /proc (no unsafe geteuid).
        let is_root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
            })
            .unwrap_or(false);
        if !is_root || !std::path::Path::new("/dev/net/tun").exists() {
            println!(
                "SKIP real_tap_opens_nonblocking_and_takes_frames: needs root and /dev/net/tun"
            );
            return;
        }
        let name = format!("cnvt{}", std::process::id() % 100_000);
        let mut tap = match Tap::open(&name) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                println!("SKIP real_tap_opens_nonblocking_and_takes_frames: {e}");
                return;
            }
            Err(e) => panic!("cannot open tap {name}: {e}"),
        };
        assert_eq!(tap.if_name(), name);
        assert!(tap.poll_fd().is_some());
        let mut buf = [0u8; 2048];
        let err = tap.read_frame(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        // Bring the link up (when `ip` is there) and send a broadcast ARP request through it.
        let up = std::process::Command::new("ip")
            .args(["link", "set", "dev", &name, "up"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if up {
            let mut frame = vec![0u8; VNET_HDR_LEN];
            frame.extend_from_slice(&[0xff; 6]); // destination: broadcast
            frame.extend_from_slice(&[0x06, 0, 0, 0, 0, 1]); // source
            frame.extend_from_slice(&[0x08, 0x06]); // ARP
            frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            frame.extend_from_slice(&[0x06, 0, 0, 0, 0, 1, 169, 254, 0, 1]);
            frame.extend_from_slice(&[0, 0, 0, 0, 0, 0, 169, 254, 0, 2]);
            assert_eq!(tap.write_frame(&frame).unwrap(), frame.len());
        } else {
            println!("SKIP (part) real tap write: cannot bring {name} up");
        }
    }
}
