//! Disk files filled on first read by a block server (docs/storage.md, "Lazy fetch: disk
//! blocks on first read").
//!
//! A lazily pulled sandbox's base image and disk layers are sparse files whose chunks are still
//! in a bucket. The VMM knows nothing of buckets: before [`crate::disk::LayeredDisk`] reads a
//! range of such a file it asks a [`DiskFetch`] to make that range present. [`ServedDisk`] is
//! the one the VMM uses: a client of the block server on a Unix socket (run by the sandbox
//! manager beside the VMM, outside its jail), which fetches the chunks, checks each against its
//! hash, writes them into the file and answers. A range that cannot be had is an error, so the
//! guest gets an I/O error, never zeros or wrong bytes.
//!
//! The protocol is JSON lines. On connect the server sends one [`DiskHello`]: the chunk size
//! and the files it fills, by (device, inode) as `fstat` gives them (the VMM may see them under
//! other paths, inside its jail). Then the VMM sends a [`FetchRequest`] for each range it needs
//! and waits for its [`FetchReply`]. A range once answered stays present: the client asks for
//! each chunk at most once.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest line either side sends (a hello listing files, or an error message).
pub const MAX_LINE: u64 = 1 << 20;

/// How long the VMM waits for the hello, or for one range (a chunk from a slow bucket).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A file by identity: what `fstat` says, the same inside and outside a jail's bind mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub fn of(file: &File) -> io::Result<FileId> {
        let m = file.metadata()?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The identity of the file at `path`.
    pub fn of_path(path: &Path) -> io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Makes ranges of disk files present before they are read.
pub trait DiskFetch: Send + Sync + std::fmt::Debug {
    /// Make `len` bytes of `file` at `offset` present in the file. `Ok` at once for a file the
    /// fetcher does not fill. An error says why the bytes cannot be had (never a guess).
    fn ensure(&self, file: FileId, offset: u64, len: u64) -> Result<(), String>;
}

/// One file the server fills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedFile {
    /// Its identity.
    pub id: FileId,
    /// Its length.
    pub size: u64,
}

/// The server's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskHello {
    /// The unit the server fetches in (a power of two); ranges are made present in whole units.
    pub granule: u64,
    /// The files it fills; every other file is present already.
    pub files: Vec<ServedFile>,
}

/// The VMM's request: make a range present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// The file.
    pub id: FileId,
    /// Start of the range.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// The server's answer to one [`FetchRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchReply {
    /// Why the range cannot be had; `None`: it is present.
    pub error: Option<String>,
}

/// Write `msg` as one JSON line.
pub fn send_line<T: Serialize>(out: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Read one JSON line (at most [`MAX_LINE`] bytes); `None` at the end of the stream.
pub fn recv_line<T: for<'de> Deserialize<'de>>(input: &mut impl BufRead) -> io::Result<Option<T>> {
    let mut line = Vec::new();
    input.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a line that is cut off or too long",
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// The VMM's side: the block server on a Unix socket, and which granules it has answered for.
pub struct ServedDisk {
    socket: PathBuf,
    granule: u64,
    files: HashSet<FileId>,
    conn: Mutex<Conn>,
    /// `(file, granule index)` known present.
    present: Mutex<HashSet<(FileId, u64)>>,
}

impl std::fmt::Debug for ServedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedDisk")
            .field("socket", &self.socket)
            .field("granule", &self.granule)
            .field("files", &self.files.len())
            .finish()
    }
}

impl ServedDisk {
    /// Connect to the block server at `socket` and read its hello.
    pub fn connect(socket: &Path) -> io::Result<ServedDisk> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let hello: DiskHello = recv_line(&mut reader)?
            .ok_or_else(|| io::Error::other("the server closed before its hello"))?;
        if !hello.granule.is_power_of_two() {
            return Err(io::Error::other(format!(
                "the server's granule {} is not a power of two",
                hello.granule
            )));
        }
        Ok(ServedDisk {
            socket: socket.to_path_buf(),
            granule: hello.granule,
            files: hello.files.iter().map(|f| f.id).collect(),
            conn: Mutex::new(Conn { reader, writer }),
            present: Mutex::new(HashSet::new()),
        })
    }

    /// Whether the server fills `file`.
    pub fn serves(&self, file: FileId) -> bool {
        self.files.contains(&file)
    }

    fn ask(&self, req: &FetchRequest) -> Result<(), String> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let lost = |e: io::Error| format!("block server {}: {e}", self.socket.display());
        send_line(&mut conn.writer, req).map_err(lost)?;
        let reply: FetchReply = recv_line(&mut conn.reader)
            .map_err(lost)?
            .ok_or_else(|| lost(io::Error::other("it closed the connection")))?;
        match reply.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl DiskFetch for ServedDisk {
    fn ensure(&self, file: FileId, offset: u64, len: u64) -> Result<(), String> {
        if len == 0 || !self.serves(file) {
            return Ok(());
        }
        let g = self.granule;
        let first = offset / g;
        let last = (offset.saturating_add(len) - 1) / g;
        let missing: Vec<u64> = {
            let present = self.present.lock().unwrap_or_else(|p| p.into_inner());
            (first..=last)
                .filter(|k| !present.contains(&(file, *k)))
                .collect()
        };
        let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) else {
            return Ok(());
        };
        self.ask(&FetchRequest {
            id: file,
            offset: lo * g,
            len: (hi - lo + 1) * g,
        })?;
        let mut present = self.present.lock().unwrap_or_else(|p| p.into_inner());
        present.extend((lo..=hi).map(|k| (file, k)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_client_asks_once_per_granule_and_passes_errors_on() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let f = File::create(&data).unwrap();
        f.set_len(8 << 10).unwrap();
        let id = FileId::of(&f).unwrap();
        assert_eq!(FileId::of_path(&data).unwrap(), id);
        let sock = dir.path().join("b.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let hello = DiskHello {
                granule: 1024,
                files: vec![ServedFile { id, size: 8 << 10 }],
            };
            send_line(&mut w, &hello).unwrap();
            let mut asked = Vec::new();
            while let Some(req) = recv_line::<FetchRequest>(&mut r).unwrap() {
                asked.push((req.offset, req.len));
                let error = (req.offset >= 6 << 10).then(|| "chunk x is missing".to_string());
                if error.is_none() {
                    f.write_all_at(&vec![7u8; req.len as usize], req.offset)
                        .unwrap();
                }
                send_line(&mut w, &FetchReply { error }).unwrap();
            }
            asked
        });
        let client = ServedDisk::connect(&sock).unwrap();
        let other = FileId { dev: 1, ino: 2 };
        client.ensure(other, 0, 100).unwrap();
        client.ensure(id, 1500, 1000).unwrap();
        client.ensure(id, 1024, 2048).unwrap(); // answered already: no request
        client.ensure(id, 0, 4096).unwrap(); // only the granules not asked for
        let e = client.ensure(id, 6 << 10, 10).unwrap_err();
        assert_eq!(e, "chunk x is missing");
        let e = client.ensure(id, 6 << 10, 10).unwrap_err();
        assert!(
            e.contains("missing"),
            "an error is not remembered as present"
        );
        drop(client);
        let asked = server.join().unwrap();
        assert_eq!(
            asked,
            [(1024, 2048), (0, 4096), (6 << 10, 1024), (6 << 10, 1024)]
        );
        let mut buf = [0u8; 1];
        File::open(&data)
            .unwrap()
            .read_exact_at(&mut buf, 1500)
            .unwrap();
        assert_eq!(buf, [7]);
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        let mut r = BufReader::new(&b"{\"error\":null}\nnot json\n{\"error\""[..]);
        let ok: FetchReply = recv_line(&mut r).unwrap().unwrap();
        assert_eq!(ok.error, None);
        assert!(recv_line::<FetchReply>(&mut r).is_err());
        assert!(recv_line::<FetchReply>(&mut r).is_err(), "cut off");
        assert!(recv_line::<FetchReply>(&mut r).unwrap().is_none());
    }
}
