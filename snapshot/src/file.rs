//! The container every cairn metadata file is wrapped in: magic, version, kind, length, payload, CRC64.
//!
//! ```text
//! offset  size  field
//!      0     8  magic (one per file kind, e.g. b"CAIRNST\0")
//!      8     2  format version, u16 little-endian (FORMAT_VERSION)
//!     10     2  kind code, u16 little-endian (must match the magic)
//!     12     4  reserved, must be 0
//!     16     8  payload length N, u64 little-endian
//!     24     N  payload
//!   24+N     8  CRC-64/XZ of bytes 0..24+N, u64 little-endian
//! ```
//!
//! Reads are bounded: the declared length is checked against the caller's limit and the file size before
//! anything is allocated. Writes are atomic: temporary name, fsync, rename, fsync of the directory
//! ([`crate::durable`], which also makes several new files durable together).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The container format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 24;
/// Size of the trailing CRC.
pub const TRAILER_LEN: usize = 8;

/// CRC-64/XZ (ECMA-182 polynomial, reflected, inverted) of `data`.
pub fn crc64(data: &[u8]) -> u64 {
    // CRC-64/XZ, SIMD-accelerated (carry-less multiply) where the CPU has it.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Xz, data)
}

/// What a container holds. Each kind has its own magic, so a file of one kind is never read as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The `state` file: every device's and vCPU's Persist state (postcard).
    State,
    /// A memory layer's page index (`mem.layer.index`).
    PageIndex,
    /// A disk layer's block index (`disk.<drive>.layer.index`, and the active delta's index).
    DiskIndex,
}

impl FileKind {
    /// All kinds.
    pub const ALL: [FileKind; 3] = [FileKind::State, FileKind::PageIndex, FileKind::DiskIndex];

    /// The 8-byte magic that opens a file of this kind.
    pub const fn magic(self) -> [u8; 8] {
        match self {
            FileKind::State => *b"CAIRNST\0",
            FileKind::PageIndex => *b"CAIRNPI\0",
            FileKind::DiskIndex => *b"CAIRNDI\0",
        }
    }

    /// The kind code stored at offset 10.
    pub const fn code(self) -> u16 {
        match self {
            FileKind::State => 1,
            FileKind::PageIndex => 2,
            FileKind::DiskIndex => 3,
        }
    }
}

/// Wrap `payload` in a container of `kind`.
pub fn encode(kind: FileKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&kind.magic());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&kind.code().to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Check a header and return the payload length it declares. `total_len` is the size of the whole
/// container (file size), so a lying length is refused before anything is allocated.
fn check_header(header: &[u8], kind: FileKind, max_len: u64, total_len: u64) -> Result<u64> {
    if header.len() < HEADER_LEN {
        return Err(Error::Truncated {
            need: HEADER_LEN as u64,
            have: header.len() as u64,
        });
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[0..8]);
    if magic != kind.magic() {
        return Err(Error::BadMagic {
            expected: kind.magic(),
            found: magic,
        });
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let code = u16::from_le_bytes([header[10], header[11]]);
    if code != kind.code() {
        return Err(Error::WrongKind {
            expected: kind.code(),
            found: code,
        });
    }
    let reserved = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if reserved != 0 {
        return Err(Error::Reserved(reserved));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let len = u64::from_le_bytes(len);
    if len > max_len {
        return Err(Error::PayloadTooLarge { len, max: max_len });
    }
    let overhead = (HEADER_LEN + TRAILER_LEN) as u64;
    let actual = total_len.saturating_sub(overhead);
    if total_len < overhead || len != actual {
        return Err(Error::LengthMismatch {
            declared: len,
            actual,
        });
    }
    Ok(len)
}

fn check_crc(container: &[u8]) -> Result<()> {
    let split = container.len() - TRAILER_LEN;
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&container[split..]);
    let stored = u64::from_le_bytes(stored);
    let computed = crc64(&container[..split]);
    if stored != computed {
        return Err(Error::Checksum { stored, computed });
    }
    Ok(())
}

/// Unwrap an in-memory container of `kind`, returning its payload. Never panics on any input.
pub fn decode(bytes: &[u8], kind: FileKind, max_len: u64) -> Result<&[u8]> {
    let len = check_header(bytes, kind, max_len, bytes.len() as u64)?;
    check_crc(bytes)?;
    // check_header proved bytes.len() == HEADER_LEN + len + TRAILER_LEN.
    let end = HEADER_LEN
        + usize::try_from(len).map_err(|_| Error::PayloadTooLarge { len, max: max_len })?;
    Ok(&bytes[HEADER_LEN..end])
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name beside `path`: `<path>.tmp-<pid>-<n>`.
pub fn temp_path(path: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}-{}", std::process::id(), n));
    PathBuf::from(name)
}

/// fsync the directory that holds `path`, so a rename into it is durable.
pub fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let f = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    f.sync_all()
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Atomically replace `path` with a file `fill` writes: write `<path>.tmp-<pid>-<n>`, fsync it, rename it
/// over `path`, fsync the directory ([`crate::durable::replace_with`]). On a failure before the rename
/// the temporary file is removed and `path` is untouched.
///
/// `path` must be a regular file or absent, in a directory this process may write
/// ([`crate::safe_path::check_output_target`]): nothing else is ever replaced.
pub fn replace_atomic_with(path: &Path, fill: impl FnOnce(&File) -> Result<()>) -> Result<()> {
    crate::durable::replace_with(path, fill)
}

/// Atomically replace `path` with `bytes` (no container). Used for `meta.json`.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomic_with(path, |mut f| {
        f.write_all(bytes).map_err(|e| Error::io("write", path, e))
    })
}

/// Atomically write a container of `kind` holding `payload` to `path`.
pub fn write_atomic(path: &Path, kind: FileKind, payload: &[u8]) -> Result<()> {
    write_bytes_atomic(path, &encode(kind, payload))
}

/// Read a container of `kind` from `path` and return its payload, refusing payloads over `max_len` bytes.
///
/// Every failure names the file ([`Error::InFile`] around the specific check), except I/O errors, which
/// already carry it.
pub fn read(path: &Path, kind: FileKind, max_len: u64) -> Result<Vec<u8>> {
    let mut f = crate::safe_path::open_input(path, false, crate::safe_path::InputKind::Regular)
        .map_err(|e| Error::io("open", path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let mut header = [0u8; HEADER_LEN];
    let have = read_up_to(&mut f, &mut header).map_err(|e| Error::io("read", path, e))?;
    let len =
        check_header(&header[..have], kind, max_len, file_len).map_err(|e| e.in_file(path))?;
    // Bounded: len <= max_len and len matches the file's size.
    let total = HEADER_LEN as u64 + len + TRAILER_LEN as u64;
    let total = usize::try_from(total)
        .map_err(|_| Error::PayloadTooLarge { len, max: max_len }.in_file(path))?;
    let mut buf = vec![0u8; total];
    buf[..HEADER_LEN].copy_from_slice(&header);
    let got = read_up_to(&mut f, &mut buf[HEADER_LEN..]).map_err(|e| Error::io("read", path, e))?;
    if got != total - HEADER_LEN {
        return Err(Error::Truncated {
            need: total as u64,
            have: (HEADER_LEN + got) as u64,
        }
        .in_file(path));
    }
    check_crc(&buf).map_err(|e| e.in_file(path))?;
    buf.truncate(total - TRAILER_LEN);
    buf.drain(..HEADER_LEN);
    Ok(buf)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Serialize `value` with postcard and write it atomically as a container of `kind`.
pub fn save<T: Serialize>(path: &Path, kind: FileKind, value: &T) -> Result<()> {
    let payload = postcard::to_stdvec(value).map_err(Error::Encode)?;
    write_atomic(path, kind, &payload)
}

/// Read a container of `kind` (payload at most `max_len` bytes) and deserialize it with postcard.
/// Trailing bytes after the value are refused.
pub fn load<T: DeserializeOwned>(path: &Path, kind: FileKind, max_len: u64) -> Result<T> {
    let payload = read(path, kind, max_len)?;
    decode_payload(&payload).map_err(|e| e.in_file(path))
}

/// Encode `value` into an in-memory container of `kind` (postcard payload).
pub fn encode_value<T: Serialize>(kind: FileKind, value: &T) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(value).map_err(Error::Encode)?;
    Ok(encode(kind, &payload))
}

/// Decode an in-memory container of `kind` holding a postcard value. Never panics on any input.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8], kind: FileKind, max_len: u64) -> Result<T> {
    decode_payload(decode(bytes, kind, max_len)?)
}

/// Deserialize a postcard payload (already unwrapped from its container), refusing trailing bytes.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(Error::Decode)?;
    if !rest.is_empty() {
        return Err(Error::LengthMismatch {
            declared: (payload.len() - rest.len()) as u64,
            actual: payload.len() as u64,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u32,
        b: Vec<u8>,
        c: Option<String>,
    }

    fn sample() -> Sample {
        Sample {
            a: 7,
            b: vec![1, 2, 3],
            c: Some("x".into()),
        }
    }

    #[test]
    fn crc_is_crc64_xz() {
        assert_eq!(crc64(b"123456789"), 0x995d_c9bb_df19_39fa);
    }

    #[test]
    fn roundtrip_in_memory() {
        let bytes = encode(FileKind::State, b"hello");
        assert_eq!(bytes.len(), HEADER_LEN + 5 + TRAILER_LEN);
        assert_eq!(&bytes[..8], b"CAIRNST\0");
        assert_eq!(decode(&bytes, FileKind::State, 100).unwrap(), b"hello");
        let empty = encode(FileKind::PageIndex, b"");
        assert_eq!(decode(&empty, FileKind::PageIndex, 0).unwrap(), b"");
    }

    #[test]
    fn distinct_magics_and_codes() {
        for a in FileKind::ALL {
            for b in FileKind::ALL {
                if a != b {
                    assert_ne!(a.magic(), b.magic());
                    assert_ne!(a.code(), b.code());
                }
            }
        }
    }

    #[test]
    fn each_failure_is_reported() {
        let good = encode(FileKind::State, b"payload");
        assert!(matches!(
            decode(&good[..10], FileKind::State, 100),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            decode(&good, FileKind::PageIndex, 100),
            Err(Error::BadMagic { .. })
        ));
        let mut v = good.clone();
        v[8] = 9;
        assert!(matches!(
            decode(&v, FileKind::State, 100),
            Err(Error::UnsupportedVersion { found: 9, .. })
        ));
        let mut v = good.clone();
        v[10] = 3;
        assert!(matches!(
            decode(&v, FileKind::State, 100),
            Err(Error::WrongKind { .. })
        ));
        let mut v = good.clone();
        v[12] = 1;
        assert!(matches!(
            decode(&v, FileKind::State, 100),
            Err(Error::Reserved(1))
        ));
        assert!(matches!(
            decode(&good, FileKind::State, 3),
            Err(Error::PayloadTooLarge { len: 7, max: 3 })
        ));
        let mut v = good.clone();
        v[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&v, FileKind::State, u64::MAX),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode(&good[..good.len() - 1], FileKind::State, 100),
            Err(Error::LengthMismatch { .. })
        ));
        let mut v = good.clone();
        v[HEADER_LEN] ^= 1;
        assert!(matches!(
            decode(&v, FileKind::State, 100),
            Err(Error::Checksum { .. })
        ));
    }

    #[test]
    fn file_roundtrip_and_atomic_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        save(&p, FileKind::State, &sample()).unwrap();
        let back: Sample = load(&p, FileKind::State, 1 << 20).unwrap();
        assert_eq!(back, sample());
        // Overwrite is atomic and leaves no temporary files behind.
        save(
            &p,
            FileKind::State,
            &Sample {
                a: 8,
                b: vec![],
                c: None,
            },
        )
        .unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let back: Sample = load(&p, FileKind::State, 1 << 20).unwrap();
        assert_eq!(back.a, 8);
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("idx");
        write_atomic(&p, FileKind::PageIndex, &[0u8; 64]).unwrap();
        let err = read(&p, FileKind::PageIndex, 10).unwrap_err();
        match err {
            Error::InFile { path, source } => {
                assert_eq!(path, p);
                assert!(matches!(
                    *source,
                    Error::PayloadTooLarge { len: 64, max: 10 }
                ));
            }
            e => panic!("unexpected {e:?}"),
        }
        assert!(matches!(
            read(&dir.path().join("missing"), FileKind::State, 10),
            Err(Error::Io { .. })
        ));
        // A header that claims a huge payload is refused without allocating it.
        let mut bytes = encode(FileKind::State, b"abc");
        bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let err = read(&p, FileKind::State, u64::MAX).unwrap_err();
        assert!(
            matches!(err, Error::InFile { ref source, .. } if matches!(**source, Error::LengthMismatch { .. }))
        );
    }

    #[test]
    fn trailing_postcard_bytes_are_refused() {
        let mut payload = postcard::to_stdvec(&sample()).unwrap();
        payload.push(0);
        let bytes = encode(FileKind::State, &payload);
        assert!(decode_value::<Sample>(&bytes, FileKind::State, 1000).is_err());
        let ok = encode_value(FileKind::State, &sample()).unwrap();
        assert_eq!(
            decode_value::<Sample>(&ok, FileKind::State, 1000).unwrap(),
            sample()
        );
    }

    #[test]
    fn temp_names_are_unique() {
        let p = Path::new("/x/state");
        let a = temp_path(p);
        let b = temp_path(p);
        assert_ne!(a, b);
        assert!(a
            .to_string_lossy()
            .starts_with(&format!("/x/state.tmp-{}-", std::process::id())));
    }
}
