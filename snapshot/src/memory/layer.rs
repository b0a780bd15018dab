//! Writing memory layer files. The VMM owns guest memory (an mmap), so it supplies the bytes through a
//! callback; this module owns naming, sizing, fsync and atomic renames. [`write_layer_from_slice`] is a
//! safe writer for tests, benchmarks and tiny guests whose memory is a plain slice.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file;

use super::index::{LayerIndex, PageIndex};
use super::PAGE_SIZE;

/// The sidecar index of a layer file: `<layer>.index`.
pub fn index_path(layer: &Path) -> PathBuf {
    let mut s = layer.as_os_str().to_owned();
    s.push(".index");
    PathBuf::from(s)
}

/// Write the pages of `index` from `mem` (the whole guest memory, at its own offsets) into `file`,
/// sizing the file to `mem.len()` first so pages not written stay holes (Firecracker's Diff format; with
/// [`PageIndex::full`] it is a Full file).
pub fn write_layer_from_slice(file: &File, index: &PageIndex, mem: &[u8]) -> Result<()> {
    let size = mem.len() as u64;
    if index.end_page().saturating_mul(PAGE_SIZE) > size {
        return Err(Error::OutOfRange {
            offset: 0,
            len: index.end_page().saturating_mul(PAGE_SIZE),
            size,
        });
    }
    file.set_len(size)
        .map_err(|e| Error::io("size layer file", "<layer>", e))?;
    for (off, len) in index.write_plan() {
        let (s, e) = (off as usize, (off + len) as usize);
        file.write_all_at(&mem[s..e], off)
            .map_err(|e| Error::io("write layer pages", "<layer>", e))?;
    }
    Ok(())
}

/// Create the layer `path` and its index `<path>.index`, both atomically.
///
/// The layer file is created under a temporary name, sized to `mem_size` (sparse), and `fill` is called
/// once per `(file_offset, len)` of [`PageIndex::write_plan`]; it must write guest memory bytes
/// `file_offset .. file_offset + len` at that offset (e.g. `pwrite` from the VMM's mapping). Then the file is
/// fsynced and renamed into place, and the index is written the same way. A crash at any point leaves
/// either no file or complete files under the final names; the index is written last, so a layer without
/// an index is incomplete (and a checkpoint is only complete once its `meta.json` exists).
pub fn write_layer_with(
    path: &Path,
    mem_size: u64,
    pages: &PageIndex,
    mut fill: impl FnMut(&File, u64, u64) -> std::io::Result<()>,
) -> Result<LayerIndex> {
    let index = LayerIndex::new(mem_size, pages.clone())?;
    file::replace_atomic_with(path, |f| {
        f.set_len(mem_size)
            .map_err(|e| Error::io("size layer file", path, e))?;
        for (off, len) in pages.write_plan() {
            fill(f, off, len).map_err(|e| Error::io("write layer pages", path, e))?;
        }
        Ok(())
    })?;
    index.save(&index_path(path))?;
    Ok(index)
}

/// [`write_layer_with`] taking the pages from a slice holding the whole guest memory.
pub fn write_layer_from_slice_to(path: &Path, pages: &PageIndex, mem: &[u8]) -> Result<LayerIndex> {
    let size = mem.len() as u64;
    if pages.end_page().saturating_mul(PAGE_SIZE) > size || size % PAGE_SIZE != 0 {
        return Err(Error::OutOfRange {
            offset: 0,
            len: pages.end_page().saturating_mul(PAGE_SIZE),
            size,
        });
    }
    write_layer_with(path, size, pages, |f, off, len| {
        f.write_all_at(&mem[off as usize..(off + len) as usize], off)
    })
}

/// Load a layer's index and check its file is there and as large as the memory.
pub fn open_layer(path: &Path) -> Result<LayerIndex> {
    let index = LayerIndex::load(&index_path(path))?;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io("stat layer file", path, e))?
        .len();
    if len < index.mem_size {
        return Err(Error::LengthMismatch {
            declared: index.mem_size,
            actual: len,
        }
        .in_file(path));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_file_is_sparse_and_sized() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.layer");
        let mut mem = vec![0u8; 64 * PAGE_SIZE as usize];
        for (i, b) in mem.iter_mut().enumerate() {
            *b = (i / 4096) as u8 + 1;
        }
        let pages = PageIndex::from_ranges([(2, 2), (40, 1)]);
        let ix = write_layer_from_slice_to(&path, &pages, &mem).unwrap();
        assert_eq!(ix.pages, pages);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), mem.len());
        for p in 0..64usize {
            let want = if pages.contains(p as u64) {
                (p + 1) as u8
            } else {
                0
            };
            assert!(
                data[p * 4096..(p + 1) * 4096].iter().all(|&b| b == want),
                "page {p}"
            );
        }
        assert_eq!(open_layer(&path).unwrap(), ix);
        // Leaves only the layer and its index.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn refuses_pages_outside_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mem = vec![0u8; 4 * PAGE_SIZE as usize];
        let err = write_layer_from_slice_to(&dir.path().join("l"), &PageIndex::full(5), &mem);
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let r = write_layer_with(&path, 8 * PAGE_SIZE, &PageIndex::full(8), |_, _, _| {
            Err(std::io::Error::other("boom"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn truncated_layer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let mem = vec![1u8; 8 * PAGE_SIZE as usize];
        write_layer_from_slice_to(&path, &PageIndex::full(8), &mem).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        assert!(open_layer(&path).is_err());
    }

    #[test]
    fn slice_writer_into_open_file() {
        let f = tempfile::tempfile().unwrap();
        let mem = vec![7u8; 4 * PAGE_SIZE as usize];
        write_layer_from_slice(&f, &PageIndex::from_ranges([(1, 1)]), &mem).unwrap();
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}
