//! The server side of memory served on first touch ([`cairn_snapshot::memory::served`]): accept
//! a VMM's userfaultfd and resolve its missing-page faults with `UFFDIO_COPY` from a
//! [`PageSource`], a block (up to [`BLOCK`] bytes, chunk-aligned) at a time, so a guest that
//! touches memory in order faults about once per MiB.
//!
//! A source that cannot produce a block fails [`Served::run`]; the caller must then stop the
//! VMM ([`Served::peer_pid`]): its faulting thread waits in the kernel, and no page it did not
//! get is ever filled with zeros.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_snapshot::memory::served::{ServedMemory, MAX_HELLO, READY};
use cairn_snapshot::memory::uffd::{
    UffdMsg, UffdioCopy, UffdioRange, UFFDIO_COPY, UFFDIO_WAKE, UFFD_EVENT_PAGEFAULT,
};

use crate::chunk::CHUNK_SIZE;

/// The most bytes one fault copies in (one chunk).
pub const BLOCK: u64 = CHUNK_SIZE;

const PAGE: u64 = 4096;

/// Where guest memory comes from: the bytes at offsets of the memory layer files.
pub trait PageSource: Send + Sync {
    /// Fill `buf` with the memory at `offset` (page-aligned). An error means the bytes cannot
    /// be had (never a guess): its message names what is missing.
    fn fill(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
}

/// What serving did.
#[derive(Debug, Default)]
pub struct FaultStats {
    /// Faults resolved.
    pub faults: AtomicU64,
    /// Bytes copied into the guest.
    pub bytes_copied: AtomicU64,
}

/// One VMM's memory, being served.
#[derive(Debug)]
pub struct Served {
    uffd: OwnedFd,
    stream: UnixStream,
    memory: ServedMemory,
    peer_pid: Option<i32>,
}

/// Accept one VMM on `listener`: its handshake and userfaultfd.
pub fn accept(listener: &UnixListener) -> io::Result<Served> {
    let (stream, _) = listener.accept()?;
    let mut body = vec![0u8; MAX_HELLO];
    let (n, fd) = recv_with_fd(&stream, &mut body)?;
    let uffd = fd.ok_or_else(|| io::Error::other("the handshake carried no userfaultfd"))?;
    let memory: ServedMemory = serde_json::from_slice(&body[..n])
        .map_err(|e| io::Error::other(format!("bad handshake: {e}")))?;
    Ok(Served {
        peer_pid: peer_pid(&stream),
        uffd,
        stream,
        memory,
    })
}

impl Served {
    /// The VMM's process id (to stop it when a page cannot be had).
    pub fn peer_pid(&self) -> Option<i32> {
        self.peer_pid
    }

    /// Bytes of guest RAM served.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.regions.iter().map(|r| r.len).sum()
    }

    /// Resolve faults from `source` until the VMM goes away (its connection closes): `Ok`.
    /// Tells the VMM it is served first.
    pub fn run(&mut self, source: &dyn PageSource, stats: &FaultStats) -> Result<(), String> {
        self.stream
            .write_all(&[READY])
            .map_err(|e| format!("answer the VMM: {e}"))?;
        let mut buf = vec![0u8; BLOCK as usize];
        let mut msgs = [UffdMsg::default(); 16];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is our own array of two pollfds.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            if fds[0].revents & libc::POLLIN != 0 {
                // SAFETY: reading plain-data messages into our own array.
                let n = unsafe {
                    libc::read(
                        self.uffd.as_raw_fd(),
                        msgs.as_mut_ptr() as *mut libc::c_void,
                        std::mem::size_of_val(&msgs),
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) {
                        return Err(format!("read userfaultfd: {e}"));
                    }
                } else {
                    let count = n as usize / std::mem::size_of::<UffdMsg>();
                    for m in &msgs[..count] {
                        if m.event == UFFD_EVENT_PAGEFAULT {
                            self.resolve(m.address & !(PAGE - 1), source, &mut buf, stats)?;
                        }
                    }
                }
                continue;
            }
            if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                // The VMM never writes after the handshake: readable means closed.
                return Ok(());
            }
        }
    }

    fn resolve(
        &self,
        addr: u64,
        source: &dyn PageSource,
        buf: &mut [u8],
        stats: &FaultStats,
    ) -> Result<(), String> {
        let Some(r) = self.memory.region_of(addr) else {
            return Err(format!("a fault at {addr:#x} is outside guest memory"));
        };
        let offset = r.offset + (addr - r.host);
        let start = (offset / BLOCK * BLOCK).max(r.offset);
        let end = (start / BLOCK * BLOCK + BLOCK).min(r.offset + r.len);
        let len = (end - start) as usize;
        buf[..len].fill(0);
        source.fill(start, &mut buf[..len])?;
        let host = r.host + (start - r.offset);
        match self.copy(host, &buf[..len]) {
            Ok(()) => {
                stats.bytes_copied.fetch_add(len as u64, Ordering::Relaxed);
            }
            // Part of the block is there already (touched and copied before): the page alone.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let at = (offset - start) as usize;
                match self.copy(addr, &buf[at..at + PAGE as usize]) {
                    Ok(()) => {
                        stats.bytes_copied.fetch_add(PAGE, Ordering::Relaxed);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.wake(addr)?,
                    Err(e) => return Err(format!("UFFDIO_COPY at {addr:#x}: {e}")),
                }
            }
            Err(e) => return Err(format!("UFFDIO_COPY at {host:#x}: {e}")),
        }
        stats.faults.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn copy(&self, dst: u64, bytes: &[u8]) -> io::Result<()> {
        loop {
            let mut c = UffdioCopy {
                dst,
                src: bytes.as_ptr() as u64,
                len: bytes.len() as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY takes a `struct uffdio_copy`; `src` is our buffer of `len`
            // bytes, `dst` a range the VMM registered (checked against its regions).
            let rc = unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut c) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            // The VMM's mappings are changing: try again.
            if e.raw_os_error() == Some(libc::EAGAIN) {
                continue;
            }
            return Err(e);
        }
    }

    fn wake(&self, addr: u64) -> Result<(), String> {
        let mut range = UffdioRange {
            start: addr,
            len: PAGE,
        };
        // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`, ours for the call.
        let rc = unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_WAKE, &mut range) };
        if rc < 0 {
            return Err(format!("UFFDIO_WAKE: {}", io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn peer_pid(stream: &UnixStream) -> Option<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one `ucred` into our variable of that size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

/// One `recvmsg` into `body`, with the descriptor of an `SCM_RIGHTS` message if one came.
fn recv_with_fd(stream: &UnixStream, body: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        stream,
        &mut [io::IoSliceMut::new(body)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            fd = fd.or_else(|| fds.next());
        }
    }
    Ok((got.bytes, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_comes_with_the_handshake() {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        use std::os::fd::AsFd;
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [file.as_fd()];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        sendmsg(
            &a,
            &[io::IoSlice::new(b"hello")],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        let mut body = [0u8; 16];
        let (n, fd) = recv_with_fd(&b, &mut body).unwrap();
        assert_eq!(&body[..n], b"hello");
        let fd = fd.expect("the descriptor");
        std::fs::File::from(fd).set_len(7).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 7, "the same open file");
        // No descriptor: none reported.
        use std::io::Write as _;
        (&a).write_all(b"again").unwrap();
        let (n, fd) = recv_with_fd(&b, &mut body).unwrap();
        assert_eq!((&body[..n], fd.is_none()), (&b"again"[..], true));
    }
}
