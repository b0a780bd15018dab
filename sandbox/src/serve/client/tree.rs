//! `cairn cp` of a directory, or of a file too large for the files routes, through the
//! daemon's tar routes (`PUT`/`GET …/tree`), streamed both ways. The local side is the same
//! library code as without a daemon: [`send_tree`] walks the local tree (symlinks below the
//! root skipped and counted) and [`TreeWriter::for_host`] writes the fetched one (no setuid,
//! setgid or sticky bit, less the umask); here their tree streams are turned into tar and
//! back, so the counts printed are the same.

use super::{query, segment, Daemon, DaemonError};
use bytes::Bytes;
use cairn_agent::proto::{EntryKind, TreeMsg, CHUNK};
use cairn_agent::tree::{send_tree, TransferStats, TreeError, TreeWriter};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Method;
use std::io::{self, Read, Write};
use std::path::Path;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// How much tar is sent per chunk.
const SEND_CHUNK: usize = 256 << 10;

/// A tar block.
const BLOCK: usize = 512;

type Chunk = Result<Bytes, io::Error>;

impl Daemon {
    /// Copies the local file or directory `local` to `remote` in sandbox `name` (a directory
    /// merged into, a file replaced, parents made), as `cairn cp` does without a daemon.
    pub fn put_tree(
        &self,
        name: &str,
        local: &Path,
        remote: &str,
    ) -> Result<TransferStats, DaemonError> {
        let meta = std::fs::metadata(local).map_err(|source| {
            DaemonError::Tree(TreeError::Fs {
                op: "stat",
                path: local.to_path_buf(),
                source,
            })
        })?;
        // A directory unpacks into `remote`; a file is one entry in its parent.
        let (into, root) = if meta.is_dir() {
            (remote.to_string(), "./".to_string())
        } else {
            match remote.trim_end_matches('/').rsplit_once('/') {
                Some((parent, base)) if !base.is_empty() => (
                    if parent.is_empty() { "/" } else { parent }.to_string(),
                    base.to_string(),
                ),
                _ => {
                    return Err(DaemonError::Api {
                        status: 400,
                        code: "bad_request".into(),
                        message: format!("cannot copy a file over {remote}"),
                    })
                }
            }
        };
        let (tx, rx) = mpsc::channel::<Chunk>(4);
        let local = local.to_path_buf();
        let walker = std::thread::spawn(move || {
            let mut tar = TarWriter::new(root, ChunkSink::new(tx.clone()));
            let sent = send_tree(&local, |m| Ok(tar.apply(m)?));
            match sent {
                Ok(stats) => Ok(stats),
                Err(e) => {
                    // A broken body: the daemon kills tar, and nothing half-sent counts.
                    let _ = tx.blocking_send(Err(io::Error::other("the local tree failed")));
                    Err(e)
                }
            }
        });
        let body = StreamBody::new(ReceiverStream::new(rx).map(|c| c.map(Frame::data)));
        let path = format!("/v1/sandboxes/{}/tree?path={}", segment(name), query(&into));
        let sent = self.rt.block_on(async {
            self.send_body(Method::PUT, &path, body, Some("application/x-tar"))
                .await
                .map(|_| ())
        });
        let walked = walker
            .join()
            .map_err(|_| self.transport("the tree walker panicked"))?;
        match (sent, walked) {
            // The local failure says more than the daemon's answer to a broken body.
            (_, Err(e)) => Err(DaemonError::Tree(e)),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(stats)) => Ok(stats),
        }
    }

    /// Copies `remote` (a directory, or a file) out of sandbox `name` to `local` (into it,
    /// when it is an existing directory), as `cairn cp` does without a daemon.
    pub fn get_tree(
        &self,
        name: &str,
        remote: &str,
        local: &Path,
    ) -> Result<TransferStats, DaemonError> {
        let target = match Path::new(remote).file_name() {
            Some(base) if local.is_dir() => local.join(base),
            _ => local.to_path_buf(),
        };
        let (tx, rx) = mpsc::channel::<Chunk>(4);
        let writer = std::thread::spawn(move || unpack(ChunkReader::new(rx), target));
        let path = format!(
            "/v1/sandboxes/{}/tree?path={}",
            segment(name),
            query(remote)
        );
        let fetched = self.rt.block_on(async {
            let mut body = self.send(Method::GET, &path, None).await?.into_body();
            while let Some(frame) = body.frame().await {
                let chunk = frame
                    .map(|f| f.into_data().unwrap_or_default())
                    .map_err(|e| io::Error::other(e.to_string()));
                let broken = chunk.is_err();
                if tx.send(chunk).await.is_err() || broken {
                    break; // the writer stopped: its error says why
                }
            }
            Ok::<(), DaemonError>(())
        });
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| self.transport("the tree writer panicked"))?;
        fetched?;
        written.map_err(DaemonError::Tree)
    }
}

/// Writes the tar archive `tar` carries as a tree at `target`: a directory's (`./` first),
/// or a single file's. Entries that are neither files nor directories are skipped, and
/// counted, as the agent's own stream does.
fn unpack(tar: impl Read, target: std::path::PathBuf) -> Result<TransferStats, TreeError> {
    let bad = |e: io::Error| TreeError::Protocol(format!("tar: {e}"));
    let base = target.clone();
    let mut w = TreeWriter::for_host(target);
    let mut archive = tar::Archive::new(tar);
    let mut root: Option<EntryKind> = None;
    let mut skipped = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let ty = entry.header().entry_type();
        let kind = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => {
                EntryKind::File
            }
            tar::EntryType::Directory => EntryKind::Dir,
            _ => {
                skipped += 1;
                continue;
            }
        };
        // A hard link to a file already written: that file's bytes again (the agent's own
        // stream sends each link as a file).
        let linked = match (ty, &root, entry.link_name_bytes()) {
            (tar::EntryType::Link, Some(EntryKind::Dir), Some(l)) => {
                let l = String::from_utf8_lossy(&l).into_owned();
                let l = l.strip_prefix("./").unwrap_or(&l).to_string();
                let p =
                    cairn_agent::proto::join_relative(&base, &l).map_err(TreeError::Protocol)?;
                Some(std::fs::read(&p).map_err(|source| TreeError::Fs {
                    op: "read",
                    path: p,
                    source,
                })?)
            }
            (tar::EntryType::Link, _, _) => {
                skipped += 1;
                continue;
            }
            _ => None,
        };
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw)
            .map_err(|_| TreeError::Protocol("a tar entry's name is not UTF-8".into()))?;
        let rel = name.trim_end_matches('/');
        let rel = rel.strip_prefix("./").unwrap_or(rel);
        let path = match root {
            None => {
                root = Some(kind);
                String::new()
            }
            Some(_) if rel == "." || rel.is_empty() => continue,
            Some(_) => rel.to_string(),
        };
        let mode = entry.header().mode().map_err(bad)? & 0o7777;
        let size = match (&linked, kind) {
            (Some(d), _) => d.len() as u64,
            (None, EntryKind::File) => entry.size(),
            (None, EntryKind::Dir) => 0,
        };
        w.apply(TreeMsg::Entry {
            path,
            kind,
            mode,
            size,
        })?;
        if let Some(d) = linked {
            w.apply(TreeMsg::Data(d))?;
        } else if kind == EntryKind::File {
            loop {
                let n = entry.read(&mut buf).map_err(bad)?;
                if n == 0 {
                    break;
                }
                w.apply(TreeMsg::Data(buf[..n].to_vec()))?;
            }
        }
    }
    let stats = w
        .apply(TreeMsg::End { skipped })?
        .ok_or_else(|| TreeError::Protocol("the tree did not end".into()))?;
    // The archive's end padding, and the answer's end: the daemon then sees the transfer
    // done, not a client that left mid-way.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(bad)?;
    Ok(stats)
}

/// Turns a tree stream into a tar archive: the root named `root` (`./` for a directory, a
/// file's name for a file), the rest `./PATH`; owned by root, as the agent's `Put` makes
/// them; names over 100 bytes as GNU long names.
pub(super) struct TarWriter<W: Write> {
    root: String,
    out: W,
    /// Zero bytes owed after the current file's data.
    pad: usize,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    pub(super) fn new(root: String, out: W) -> Self {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        TarWriter {
            root,
            out,
            pad: 0,
            mtime,
        }
    }

    /// Writes one message's part of the archive.
    pub(super) fn apply(&mut self, msg: TreeMsg) -> io::Result<()> {
        match msg {
            TreeMsg::Entry {
                path,
                kind,
                mode,
                size,
            } => {
                self.finish_file()?;
                let mut name = if path.is_empty() {
                    self.root.clone()
                } else {
                    format!("./{path}")
                };
                let mut h = tar::Header::new_gnu();
                match kind {
                    EntryKind::Dir => {
                        if !name.ends_with('/') {
                            name.push('/');
                        }
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_size(0);
                    }
                    EntryKind::File => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_size(size);
                        self.pad = padding(size);
                    }
                }
                h.set_mode(mode & 0o7777);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(self.mtime);
                self.header(h, name.as_bytes())
            }
            TreeMsg::Data(d) => self.out.write_all(&d),
            TreeMsg::End { .. } => {
                self.finish_file()?;
                self.out.write_all(&[0u8; 2 * BLOCK])?;
                self.out.flush()
            }
        }
    }

    /// Writes header `h` named `name` (a GNU long-name record first when it does not fit).
    fn header(&mut self, mut h: tar::Header, name: &[u8]) -> io::Result<()> {
        let field = &mut h.as_old_mut().name;
        if name.len() > field.len() {
            let mut long = tar::Header::new_gnu();
            long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            long.set_entry_type(tar::EntryType::GNULongName);
            long.set_mode(0o644);
            let len = name.len() as u64 + 1;
            long.set_size(len);
            long.set_cksum();
            self.out.write_all(long.as_bytes())?;
            self.out.write_all(name)?;
            self.out.write_all(&[0u8])?;
            self.out.write_all(&vec![0u8; padding(len)])?;
        }
        let n = name.len().min(field.len());
        field[..n].copy_from_slice(&name[..n]);
        h.set_cksum();
        self.out.write_all(h.as_bytes())
    }

    fn finish_file(&mut self) -> io::Result<()> {
        let pad = std::mem::take(&mut self.pad);
        self.out.write_all(&vec![0u8; pad])
    }
}

/// Zero bytes after `size` bytes of data, to the next block.
fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    (BLOCK - rem) % BLOCK
}

/// Bytes written here go out as request body chunks of [`SEND_CHUNK`].
struct ChunkSink {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn new(tx: mpsc::Sender<Chunk>) -> Self {
        ChunkSink {
            tx,
            buf: Vec::with_capacity(SEND_CHUNK),
        }
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= SEND_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(SEND_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the daemon stopped reading"))
    }
}

/// The response body's chunks as a `Read`.
struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Bytes,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        ChunkReader {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A local tree through [`TarWriter`] (as a put sends it) and back through [`unpack`]
    /// (as a get writes it): the same files, modes and counts; a symlink skipped both ways.
    #[test]
    fn a_tree_round_trips_through_tar() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let long = "d".repeat(120);
        std::fs::create_dir_all(src.join("a/b").join(&long)).unwrap();
        std::fs::write(src.join("top.txt"), b"top").unwrap();
        std::fs::write(src.join("a/b").join(&long).join("f"), vec![7u8; 70_000]).unwrap();
        std::fs::write(src.join("a/x.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("a/x.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("top.txt", src.join("link")).unwrap();

        let mut tar = TarWriter::new("./".into(), Vec::new());
        let sent = send_tree(&src, |m| Ok(tar.apply(m)?)).unwrap();
        let bytes = tar.out;
        assert_eq!(bytes.len() % BLOCK, 0);
        assert_eq!((sent.files, sent.dirs, sent.skipped), (3, 4, 1));

        let dst = dir.path().join("dst");
        let got = unpack(&bytes[..], dst.clone()).unwrap();
        assert_eq!(
            (got.files, got.dirs, got.bytes),
            (sent.files, sent.dirs, sent.bytes)
        );
        assert_eq!(std::fs::read(dst.join("top.txt")).unwrap(), b"top");
        let f = std::fs::read(dst.join("a/b").join(&long).join("f")).unwrap();
        assert_eq!(f, vec![7u8; 70_000]);
        let mode = std::fs::metadata(dst.join("a/x.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o100, 0o100, "{mode:o}");
        assert!(!dst.join("link").exists());

        // One file: its own name in the archive, written at the target.
        let mut tar = TarWriter::new("big.bin".into(), Vec::new());
        send_tree(&src.join("top.txt"), |m| Ok(tar.apply(m)?)).unwrap();
        let one = dir.path().join("one");
        let got = unpack(&tar.out[..], one.clone()).unwrap();
        assert_eq!((got.files, got.dirs, got.bytes), (1, 0, 3));
        assert_eq!(std::fs::read(&one).unwrap(), b"top");

        // Not a tar: an error, no panic.
        assert!(unpack(&[1u8; 700][..], dir.path().join("bad")).is_err());
    }
}
