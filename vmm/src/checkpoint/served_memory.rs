//! Guest memory served on first touch by a page server, for a checkpoint whose memory layers
//! are not (all) on this host yet: a sandbox pulled lazily from a bucket (docs/storage.md).
//!
//! The VMM is started with `--page-server SOCKET`. Its first restore then maps guest RAM as
//! anonymous memory instead of from the layer files, registers it with a userfaultfd for
//! missing-page faults and hands the userfaultfd to the server
//! ([`cairn_snapshot::memory::served`]). Every first touch of a page, by a vCPU through KVM or
//! by a device, waits in the kernel until the server has copied the page in; the VMM itself
//! never reads the layer files, so they may be incomplete. The server, not the VMM, fetches and
//! checks the bytes: a page it cannot produce is never replaced by zeros (it stops the VMM).
//!
//! Once copied in, pages are ordinary anonymous memory: dirty tracking and later checkpoints
//! work as after any restore. The VMM keeps its userfaultfd and the connection open for its
//! whole life (closing them would let untouched pages read as zeros).

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cairn_devices::{GuestMemoryMmap, GuestRegionMmap};
use cairn_snapshot::memory::served::{ServedMemory, ServedRegion, READY};
use cairn_snapshot::memory::{LayerChain, PageIndex};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::GuestAddress;

use cairn_snapshot::memory::uffd::{
    UffdioApi, UffdioRange, UffdioRegister, UFFDIO_API, UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_MISSING, UFFD_API,
};

use crate::checkpoint::background::{ioctl, new_uffd};
use crate::checkpoint::memory::region_layout;
use crate::error::VmmError;

/// How long the server may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The page server of the next restore (`--page-server`), taken by it.
static NEXT: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Whether the running machine's memory is served (its layer files may be incomplete).
static SERVED: AtomicBool = AtomicBool::new(false);
/// The userfaultfds and connections of served memory, kept open for the process's life.
static KEEP: Mutex<Vec<(OwnedFd, UnixStream)>> = Mutex::new(Vec::new());

fn err(socket: &Path, what: impl std::fmt::Display) -> VmmError {
    VmmError::Snapshot(format!("page server {}: {what}", socket.display()))
}

/// Serve the memory of the next restore from the page server at `socket` (`--page-server`).
pub fn serve_next_restore_from(socket: Option<PathBuf>) {
    *NEXT.lock().unwrap_or_else(|p| p.into_inner()) = socket;
}

/// The page server for this restore, if one was given (once).
pub fn take_next() -> Option<PathBuf> {
    NEXT.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Whether the running machine's memory is served: its layer files may be incomplete, so they
/// must not be read (the background checksum verification skips them).
pub fn memory_is_served() -> bool {
    SERVED.load(Ordering::Relaxed)
}

/// Guest RAM for `regions`, anonymous and served by the page server at `socket`, with the pages
/// the memory chain `layers` claims (read from their indexes only).
pub fn map_served(
    regions: &[(u64, u64)],
    layers: &[PathBuf],
    socket: &Path,
) -> Result<(GuestMemoryMmap, PageIndex), VmmError> {
    let total: u64 = regions.iter().map(|(_, len)| len).sum();
    let chain = open_chain(total, layers)?;
    let pages = chain_pages(&chain);
    let mem = map_anonymous(regions).map_err(|e| err(socket, e))?;
    let layout: Vec<ServedRegion> = region_layout(&mem)
        .into_iter()
        .map(|(host, len, offset)| ServedRegion { host, len, offset })
        .collect();
    let uffd = register_missing(&mem).map_err(|e| err(socket, e))?;
    let stream = handshake(socket, &uffd, &ServedMemory { regions: layout })?;
    KEEP.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((uffd, stream));
    SERVED.store(true, Ordering::Relaxed);
    Ok((mem, pages))
}

/// The chain of memory layers `layers` (base first) over `total` bytes of guest RAM, from their
/// indexes only.
pub(crate) fn open_chain(total: u64, layers: &[PathBuf]) -> Result<LayerChain, VmmError> {
    let mut chain = LayerChain::new(total);
    for layer in layers {
        let index = cairn_snapshot::memory::open_layer(layer)
            .map_err(|e| VmmError::Snapshot(format!("{}: {e}", layer.display())))?;
        chain
            .push(layer, index)
            .map_err(|e| VmmError::Snapshot(e.to_string()))?;
    }
    Ok(chain)
}

/// Every page some layer of `chain` holds.
pub(crate) fn chain_pages(chain: &LayerChain) -> PageIndex {
    chain
        .layers()
        .iter()
        .fold(PageIndex::new(), |acc, l| acc.union(&l.pages))
}

/// Guest RAM for `regions` as anonymous memory: nothing is allocated until touched.
pub(crate) fn map_anonymous(regions: &[(u64, u64)]) -> Result<GuestMemoryMmap, String> {
    let mut mapped = Vec::with_capacity(regions.len());
    for &(gpa, len) in regions {
        let region = MmapRegionBuilder::<AtomicBitmap>::new_with_bitmap(
            len as usize,
            <AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(len as usize),
        )
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| format!("mmap guest memory: {e}"))?;
        let region = GuestRegionMmap::new(region, GuestAddress(gpa))
            .ok_or_else(|| "region overflows".to_string())?;
        mapped.push(region);
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| e.to_string())
}

/// A new userfaultfd with all of `mem` registered for missing-page faults: from now on every
/// first touch of a page waits until the page is copied in through it.
pub(crate) fn register_missing(mem: &GuestMemoryMmap) -> Result<OwnedFd, String> {
    let uffd = new_uffd().map_err(|e| format!("userfaultfd: {e}"))?;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    ioctl(&uffd, UFFDIO_API, &mut api).map_err(|e| format!("UFFDIO_API: {e}"))?;
    for (host, len, _) in region_layout(mem) {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: host, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(&uffd, UFFDIO_REGISTER, &mut reg).map_err(|e| format!("UFFDIO_REGISTER: {e}"))?;
    }
    Ok(uffd)
}

/// Connect, send `hello` with the userfaultfd attached, wait for [`READY`].
fn handshake(socket: &Path, uffd: &OwnedFd, hello: &ServedMemory) -> Result<UnixStream, VmmError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| err(socket, e))?;
    let body = serde_json::to_vec(hello).map_err(|e| err(socket, e))?;
    send_with_fd(&stream, &body, uffd.as_fd()).map_err(|e| err(socket, e))?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| err(socket, e))?;
    let mut answer = [0u8; 1];
    match stream.read(&mut answer) {
        Ok(1) if answer[0] == READY => Ok(stream),
        Ok(_) => Err(err(socket, "refused the memory (see its log)")),
        Err(e) => Err(err(socket, format!("no answer: {e}"))),
    }
}

/// One `sendmsg` of `body` with `fd` in an `SCM_RIGHTS` message.
fn send_with_fd(stream: &UnixStream, body: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    let n = sendmsg(
        stream,
        &[io::IoSlice::new(body)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if n != body.len() {
        return Err(io::Error::other("short handshake write"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_next_restore_takes_the_server_once() {
        serve_next_restore_from(Some("/s".into()));
        assert_eq!(take_next(), Some(PathBuf::from("/s")));
        assert_eq!(take_next(), None);
    }

    #[test]
    fn memory_is_handed_over_and_a_missing_or_refusing_server_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let regions = [(0u64, 2u64 << 20)];
        let e = map_served(&regions, &[], &dir.path().join("none.sock")).unwrap_err();
        if e.to_string().contains("userfaultfd:") {
            eprintln!("SKIP: no userfaultfd here ({e})");
            return;
        }
        assert!(e.to_string().contains("none.sock"), "{e}");

        let sock = dir.path().join("p.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            for answer in [b'X', READY] {
                let (mut s, _) = listener.accept().unwrap();
                let mut body = vec![0u8; 4096];
                let n = std::io::Read::read(&mut s, &mut body).unwrap();
                let hello: ServedMemory = serde_json::from_slice(&body[..n]).unwrap();
                assert_eq!(hello.regions.len(), 1);
                assert_eq!(
                    (hello.regions[0].len, hello.regions[0].offset),
                    (2 << 20, 0)
                );
                s.write_all(&[answer]).unwrap();
            }
        });
        let e = map_served(&regions, &[], &sock).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        let (mem, pages) = map_served(&regions, &[], &sock).unwrap();
        assert!(memory_is_served());
        assert_eq!(mem_size(&mem), 2 << 20);
        assert!(pages.is_empty());
        server.join().unwrap();
    }

    fn mem_size(mem: &GuestMemoryMmap) -> u64 {
        crate::checkpoint::memory::mem_size(mem)
    }
}
