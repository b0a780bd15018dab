//! Folding a deleted checkpoint's memory layer into its child, so the child stays restorable without it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

use super::index::LayerIndex;
use super::layer::{index_path, open_layer};

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeStats {
    /// Pages copied from the parent into the child.
    pub pages_copied: u64,
}

const CHUNK: usize = 1 << 20;

/// Copy into `child` every page `parent` holds that `child` does not, then atomically replace the child's
/// index with the union. Afterwards the child layer stands for parent + child, so `parent` can be deleted
/// (this is also how a deleted base is merged away: the child then holds every page the base held).
///
/// Crash safety without copying the child: the pages written lie outside the child's current index, so
/// they are unreferenced until the new index is renamed into place, which is the single commit point.
/// A crash before it leaves the old index (still correct, as `parent` still exists); the merge can simply
/// be run again. Ranges of the child file that a VMM has mapped are never written. Zero chunks are
/// skipped when the child already reads zero there, so sparse files stay sparse.
pub fn merge_into_child(parent: &Path, child: &Path) -> Result<MergeStats> {
    let pix = open_layer(parent)?;
    let cix = open_layer(child)?;
    if pix.mem_size != cix.mem_size {
        return Err(Error::Geometry(format!(
            "parent layer is for {} bytes of memory, child for {}",
            pix.mem_size, cix.mem_size
        )));
    }
    let extra = pix.pages.subtract(&cix.pages);
    if extra.is_empty() {
        return Ok(MergeStats::default());
    }
    let src = File::open(parent).map_err(|e| Error::io("open parent layer", parent, e))?;
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .open(child)
        .map_err(|e| Error::io("open child layer", child, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut old = vec![0u8; CHUNK];
    for (off, len) in extra.write_plan() {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let at = off + done;
            src.read_exact_at(&mut buf[..n], at)
                .map_err(|e| Error::io("read parent layer", parent, e))?;
            let skip = buf[..n].iter().all(|&b| b == 0) && {
                dst.read_exact_at(&mut old[..n], at)
                    .map_err(|e| Error::io("read child layer", child, e))?;
                old[..n].iter().all(|&b| b == 0)
            };
            if !skip {
                dst.write_all_at(&buf[..n], at)
                    .map_err(|e| Error::io("write child layer", child, e))?;
            }
            done += n as u64;
        }
    }
    dst.sync_all()
        .map_err(|e| Error::io("fsync child layer", child, e))?;
    let merged = LayerIndex::new(cix.mem_size, cix.pages.union(&pix.pages))?;
    merged.save(&index_path(child))?;
    Ok(MergeStats {
        pages_copied: extra.page_count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{write_layer_from_slice_to, LayerChain, PageIndex, PAGE_SIZE};

    fn fill(mem: &mut [u8], tag: u8) {
        for (i, b) in mem.iter_mut().enumerate() {
            *b = tag ^ (i / 4096) as u8;
        }
    }

    #[test]
    fn merge_keeps_child_contents() {
        let dir = tempfile::tempdir().unwrap();
        let pages = 32u64;
        let mut mem = vec![0u8; (pages * PAGE_SIZE) as usize];
        let paths: Vec<_> = (0..3).map(|i| dir.path().join(format!("l{i}"))).collect();
        let sets = [
            PageIndex::from_ranges([(0, 20)]),
            PageIndex::from_ranges([(5, 10), (25, 2)]),
            PageIndex::from_ranges([(8, 4)]),
        ];
        for (i, s) in sets.iter().enumerate() {
            fill(&mut mem, 0x10 * (i as u8 + 1));
            write_layer_from_slice_to(&paths[i], s, &mem).unwrap();
        }
        let read = |ps: &[std::path::PathBuf]| {
            let c = LayerChain::open(ps).unwrap();
            let mut m = vec![0u8; (pages * PAGE_SIZE) as usize];
            c.read_into(&mut m).unwrap();
            m
        };
        let want2 = read(&paths);
        let want1 = read(&paths[..2]);
        // Delete the middle layer: fold it into the newest.
        let st = merge_into_child(&paths[1], &paths[2]).unwrap();
        assert_eq!(st.pages_copied, 10 + 2 - 4);
        assert_eq!(read(&[paths[0].clone(), paths[2].clone()]), want2);
        // Delete the base: fold it into layer 1.
        merge_into_child(&paths[0], &paths[1]).unwrap();
        assert_eq!(read(&paths[1..2]), want1);
        // Merging again is a no-op.
        assert_eq!(
            merge_into_child(&paths[0], &paths[1]).unwrap().pages_copied,
            0
        );
    }

    #[test]
    fn mismatched_sizes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_layer_from_slice_to(&a, &PageIndex::full(4), &vec![1u8; 4 * 4096]).unwrap();
        write_layer_from_slice_to(&b, &PageIndex::full(2), &vec![1u8; 8 * 4096][..2 * 4096])
            .unwrap();
        assert!(matches!(merge_into_child(&a, &b), Err(Error::Geometry(_))));
    }
}
