//! `NetConfigure` and `SetClock`: the guest's network interface and wall clock, as the host says.
//!
//! The interface is set with the classic `SIOC*` ioctls on an `AF_INET` datagram socket (no
//! netlink, no `ip` binary in the guest): MAC, address, netmask, up, then the default route.
//! virtio-net takes a new MAC while up (the driver changes it in software when the device has no
//! control queue), so a fork's guest takes its own address and MAC without a reboot.

use crate::proto::NetConfig;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Why configuring the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum NetCfgError {
    /// No interface other than `lo`.
    #[error("the guest has no network interface")]
    NoInterface,
    /// The MAC address is not `aa:bb:cc:dd:ee:ff`.
    #[error("bad MAC address {0:?}")]
    BadMac(String),
    /// The interface name does not fit `IFNAMSIZ`.
    #[error("bad interface name {0:?}")]
    BadName(String),
    /// An ioctl or file operation failed.
    #[error("{what}")]
    Io {
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> NetCfgError {
    move |source| NetCfgError::Io { what, source }
}

/// Applies `cfg`: MAC, address, netmask, link up, default route, resolv.conf.
pub fn configure(cfg: &NetConfig) -> Result<(), NetCfgError> {
    let iface = match &cfg.iface {
        Some(i) => i.clone(),
        None => first_interface()?,
    };
    let mac = parse_mac(&cfg.mac).ok_or_else(|| NetCfgError::BadMac(cfg.mac.clone()))?;
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("socket")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    let mut req = ifreq(&iface)?;
    req.ifr_ifru.ifru_hwaddr = libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data: [0; 14],
    };
    // SAFETY: writing plain bytes into the union member just initialised.
    unsafe {
        for (d, s) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *d = s as libc::c_char;
        }
    }
    ioctl(&sock, libc::SIOCSIFHWADDR, &mut req).map_err(io_err("set the MAC address"))?;

    let mut req = ifreq(&iface)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(cfg.addr);
    ioctl(&sock, libc::SIOCSIFADDR, &mut req).map_err(io_err("set the address"))?;
    let mut req = ifreq(&iface)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(cfg.prefix));
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req).map_err(io_err("set the netmask"))?;

    let mut req = ifreq(&iface)?;
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req).map_err(io_err("read the link flags"))?;
    // SAFETY: SIOCGIFFLAGS filled in `ifru_flags`.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req).map_err(io_err("bring the link up"))?;

    // Any old default route (a fork's parent's gateway) goes first.
    for _ in 0..8 {
        let mut rt = default_route(None);
        if ioctl(&sock, libc::SIOCDELRT, &mut rt).is_err() {
            break;
        }
    }
    let mut rt = default_route(Some(cfg.gateway));
    let dev = std::ffi::CString::new(iface.clone()).map_err(|_| NetCfgError::BadName(iface))?;
    rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
    match ioctl(&sock, libc::SIOCADDRT, &mut rt) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(io_err("add the default route")(e)),
    }
    drop(dev);

    if !cfg.dns.is_empty() {
        let text: String = cfg
            .dns
            .iter()
            .map(|a| format!("nameserver {}.{}.{}.{}\n", a[0], a[1], a[2], a[3]))
            .collect();
        write_resolv_conf(std::path::Path::new("/etc/resolv.conf"), &text)?;
    }
    Ok(())
}

/// Writes `text` to `path` unless it holds it already. A regular file is written in place: a
/// rename over it (or a truncation to zero) makes ext4 (`auto_da_alloc`) write it out
/// synchronously, which costs a restored guest seconds where its kernel code is emulated. A
/// symlink (a resolver daemon's file) is replaced, as before.
fn write_resolv_conf(path: &std::path::Path, text: &str) -> Result<(), NetCfgError> {
    let err = io_err("write resolv.conf");
    let regular = fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
    if regular {
        if fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        return super::identity::overwrite(path, text.as_bytes()).map_err(err);
    }
    let tmp = path.with_extension("cairn-tmp");
    fs::write(&tmp, text).map_err(io_err("write resolv.conf"))?;
    fs::rename(&tmp, path).map_err(err)
}

/// Sets CLOCK_REALTIME to `unix_nanos`.
pub fn set_clock(unix_nanos: u64) -> Result<(), NetCfgError> {
    let ts = libc::timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io_err("set the clock")(io::Error::last_os_error()));
    }
    Ok(())
}

fn first_interface() -> Result<String, NetCfgError> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .map_err(io_err("list /sys/class/net"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next().ok_or(NetCfgError::NoInterface)
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn netmask(prefix: u8) -> [u8; 4] {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    bits.to_be_bytes()
}

fn ifreq(name: &str) -> Result<libc::ifreq, NetCfgError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetCfgError::BadName(name.to_string()));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-data socket addresses.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn default_route(gateway: Option<[u8; 4]>) -> libc::rtentry {
    // SAFETY: rtentry is plain data; all-zero is a valid value (null device pointer).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in([0; 4]);
    rt.rt_genmask = sockaddr_in([0; 4]);
    rt.rt_flags = libc::RTF_UP;
    if let Some(gw) = gateway {
        rt.rt_gateway = sockaddr_in(gw);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    rt
}

fn ioctl<T>(sock: &OwnedFd, req: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the struct its request reads or writes (ifreq or rtentry),
    // exclusively borrowed for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, arg as *mut T) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_masks() {
        assert_eq!(
            parse_mac("02:ca:00:0a:ff:01"),
            Some([2, 0xca, 0, 0x0a, 0xff, 1])
        );
        for bad in [
            "",
            "02:ca",
            "02:ca:00:0a:ff:01:02",
            "zz:ca:00:0a:ff:01",
            "2:ca:0:a:f:1",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(netmask(30), [255, 255, 255, 252]);
        assert_eq!(netmask(0), [0, 0, 0, 0]);
        assert_eq!(netmask(32), [255; 4]);
    }

    #[test]
    fn resolv_conf_is_written_in_place_and_a_link_replaced() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        fs::write(&path, "nameserver 10.0.0.1\nsearch a.very.long.domain\n").unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        write_resolv_conf(&path, "nameserver 10.0.0.5\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "nameserver 10.0.0.5\n");
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino, "in place");
        write_resolv_conf(&path, "nameserver 10.0.0.5\n").unwrap();
        let link = dir.path().join("link.conf");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        write_resolv_conf(&link, "nameserver 10.0.0.9\n").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_file(), "replaced");
        assert_eq!(fs::read_to_string(&path).unwrap(), "nameserver 10.0.0.5\n");
    }
}
