//! Checks on the VMM binary before anything is created: it must exist, be a regular file, and be a
//! statically linked ELF executable, because the jail holds nothing else it could load.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::Error;

/// ELF program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;

/// The VMM binary, checked.
#[derive(Debug, Clone)]
pub struct ExecFile {
    /// The path as given on the command line.
    pub path: PathBuf,
    /// Its last component: the name it gets inside the jail (`/<name>`).
    pub name: String,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::ExecFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// What kind of executable a file's first bytes and program headers describe.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A 64-bit little-endian ELF without `PT_INTERP` (static or static-pie).
    Static,
    /// An ELF that needs the named loader.
    Dynamic(String),
    /// A `#!` script.
    Script,
    /// Something else.
    Unknown(&'static str),
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Classifies an executable read through `r`. Reads at most the ELF header, the program headers and the
/// interpreter's name; sizes are bounded so a hostile file cannot make it allocate much.
pub fn classify<R: Read + Seek>(r: &mut R) -> std::io::Result<Kind> {
    let mut header = [0u8; 64];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got >= 2 && &header[..2] == b"#!" {
        return Ok(Kind::Script);
    }
    if got < 64 || &header[..4] != b"\x7fELF" {
        return Ok(Kind::Unknown("not an ELF executable"));
    }
    if header[4] != 2 || header[5] != 1 {
        return Ok(Kind::Unknown("not a 64-bit little-endian ELF executable"));
    }
    let malformed = Kind::Unknown("malformed ELF header");
    let (Some(phoff), Some(phentsize), Some(phnum)) = (
        u64_at(&header, 32),
        u16_at(&header, 54),
        u16_at(&header, 56),
    ) else {
        return Ok(malformed);
    };
    if phentsize < 56 || phnum == 0 {
        return Ok(Kind::Unknown("ELF file has no program headers"));
    }
    let table_len = usize::from(phentsize) * usize::from(phnum);
    let mut table = vec![0u8; table_len];
    r.seek(SeekFrom::Start(phoff))?;
    if r.read_exact(&mut table).is_err() {
        return Ok(malformed);
    }
    for entry in table.chunks_exact(usize::from(phentsize)) {
        if u32_at(entry, 0) != Some(PT_INTERP) {
            continue;
        }
        let (Some(offset), Some(size)) = (u64_at(entry, 8), u64_at(entry, 32)) else {
            return Ok(malformed);
        };
        let size = size.min(4096) as usize;
        let mut name = vec![0u8; size];
        r.seek(SeekFrom::Start(offset))?;
        if r.read_exact(&mut name).is_err() {
            return Ok(malformed);
        }
        let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default())
            .into_owned();
        return Ok(Kind::Dynamic(name));
    }
    Ok(Kind::Static)
}

/// Checks the exec file and returns its name inside the jail.
pub fn inspect(path: &Path) -> Result<ExecFile, Error> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad(path, "does not exist"),
        _ => Error::ExecFileRead {
            path: path.to_owned(),
            source: e,
        },
    })?;
    if !meta.is_file() {
        return Err(bad(path, "is not a regular file"));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad(path, "has no usable file name"))?
        .to_string();
    let mut file = File::open(path).map_err(|source| Error::ExecFileRead {
        path: path.to_owned(),
        source,
    })?;
    match classify(&mut file).map_err(|source| Error::ExecFileRead {
        path: path.to_owned(),
        source,
    })? {
        Kind::Static => Ok(ExecFile {
            path: path.to_owned(),
            name,
        }),
        Kind::Dynamic(loader) => Err(bad(
            path,
            format!(
                "is dynamically linked (needs {loader}, which the jail does not contain); \
                 build it statically, e.g. RUSTFLAGS='-C target-feature=+crt-static'"
            ),
        )),
        Kind::Script => Err(bad(path, "is a script; the jail has no interpreter for it")),
        Kind::Unknown(reason) => Err(bad(path, reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn elf(interp: Option<&str>) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let mut ph = vec![0u8; 112];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        if let Some(i) = interp {
            ph[56..60].copy_from_slice(&PT_INTERP.to_le_bytes());
            ph[64..72].copy_from_slice(&176u64.to_le_bytes());
            ph[88..96].copy_from_slice(&(i.len() as u64 + 1).to_le_bytes());
        }
        f.extend(ph);
        if let Some(i) = interp {
            f.extend(i.as_bytes());
            f.push(0);
        }
        f
    }

    #[test]
    fn classifies() {
        assert_eq!(classify(&mut Cursor::new(elf(None))).unwrap(), Kind::Static);
        assert_eq!(
            classify(&mut Cursor::new(elf(Some("/lib64/ld-linux-x86-64.so.2")))).unwrap(),
            Kind::Dynamic("/lib64/ld-linux-x86-64.so.2".into())
        );
        assert_eq!(
            classify(&mut Cursor::new(b"#!/bin/sh\n".to_vec())).unwrap(),
            Kind::Script
        );
        assert!(matches!(
            classify(&mut Cursor::new(b"hello".to_vec())).unwrap(),
            Kind::Unknown(_)
        ));
        let mut truncated = elf(Some("/lib/ld.so"));
        truncated.truncate(100);
        assert!(matches!(
            classify(&mut Cursor::new(truncated)).unwrap(),
            Kind::Unknown(_)
        ));
    }

    #[test]
    fn inspects_real_files() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(inspect(&tmp.path().join("missing"))
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(inspect(tmp.path())
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let script = tmp.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(inspect(&script).unwrap_err().to_string().contains("script"));
        let stat = tmp.path().join("vmm");
        std::fs::write(&stat, elf(None)).unwrap();
        assert_eq!(inspect(&stat).unwrap().name, "vmm");
        // The test binary itself is dynamically linked unless built with crt-static.
        let me = std::env::current_exe().unwrap();
        let kind = classify(&mut File::open(me).unwrap()).unwrap();
        assert!(matches!(kind, Kind::Static | Kind::Dynamic(_)), "{kind:?}");
    }
}
