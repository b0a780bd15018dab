//! Folding a deleted checkpoint's disk layer into its child.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::file::crc64;

use super::index::{index_path, BlockEntry, BlockIndex};

/// What a disk merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskMergeStats {
    /// Blocks taken over from the parent (data and zero entries).
    pub blocks_copied: u64,
}

/// Copy into the `child` delta every block the `parent` delta has and the child does not, then atomically
/// replace the child's index. The child then stands for parent + child, so the parent can be deleted.
///
/// Blocks are appended past the child's indexed data, which no index refers to until the new index is
/// renamed into place (the single commit point): a crash before it leaves the child exactly as it was,
/// and the merge can be run again. Each copied block's CRC is checked on the way.
pub fn merge_disk_layer_into_child(parent: &Path, child: &Path) -> Result<DiskMergeStats> {
    let pix = BlockIndex::load(&index_path(parent))?;
    let cix = BlockIndex::load(&index_path(child))?;
    if pix.block_size != cix.block_size || pix.disk_len != cix.disk_len {
        return Err(Error::Geometry(format!(
            "parent delta has block size {} and disk size {}, child {} and {}",
            pix.block_size, pix.disk_len, cix.block_size, cix.disk_len
        )));
    }
    let src = File::open(parent).map_err(|e| Error::io("open parent delta", parent, e))?;
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .open(child)
        .map_err(|e| Error::io("open child delta", child, e))?;
    let bs = u64::from(cix.block_size);
    let mut buf = vec![0u8; bs as usize];
    let mut data_len = cix.data_len;
    let mut added = Vec::new();
    for e in &pix.entries {
        if cix.get(e.block).is_some() {
            continue;
        }
        if e.is_zero() {
            added.push(*e);
            continue;
        }
        src.read_exact_at(&mut buf, e.offset)
            .map_err(|err| Error::io("read parent delta", parent, err))?;
        if crc64(&buf) != e.crc {
            return Err(Error::BlockChecksum {
                path: parent.to_path_buf(),
                block: e.block,
            });
        }
        dst.write_all_at(&buf, data_len)
            .map_err(|err| Error::io("write child delta", child, err))?;
        added.push(BlockEntry {
            block: e.block,
            offset: data_len,
            crc: e.crc,
        });
        data_len += bs;
    }
    if added.is_empty() {
        return Ok(DiskMergeStats::default());
    }
    dst.sync_data()
        .map_err(|e| Error::io("fsync child delta", child, e))?;
    let blocks_copied = added.len() as u64;
    let mut entries = cix.entries;
    entries.extend(added);
    entries.sort_unstable_by_key(|e| e.block);
    BlockIndex {
        entries,
        data_len,
        ..cix
    }
    .save(&index_path(child))?;
    Ok(DiskMergeStats { blocks_copied })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::LayeredDisk;

    #[test]
    fn merge_then_open_without_parent() {
        let dir = tempfile::tempdir().unwrap();
        let bp = dir.path().join("base");
        std::fs::write(&bp, vec![1u8; 8 * 4096]).unwrap();
        let mut d = LayeredDisk::open(&bp, &[], dir.path().join("active")).unwrap();
        d.write_at(0, &[2u8; 3 * 4096]).unwrap();
        d.discard(5 * 4096, 4096).unwrap();
        let l1 = dir.path().join("l1");
        d.checkpoint(&l1).unwrap();
        d.write_at(4096, &[3u8; 100]).unwrap();
        let l2 = dir.path().join("l2");
        d.checkpoint(&l2).unwrap();
        let mut want = vec![0u8; 8 * 4096];
        d.read_at(0, &mut want).unwrap();
        let st = merge_disk_layer_into_child(&l1, &l2).unwrap();
        assert_eq!(st.blocks_copied, 3);
        std::fs::remove_file(&l1).unwrap();
        std::fs::remove_file(index_path(&l1)).unwrap();
        let r = LayeredDisk::open(&bp, std::slice::from_ref(&l2), dir.path().join("a2")).unwrap();
        let mut got = vec![0u8; 8 * 4096];
        r.read_at(0, &mut got).unwrap();
        assert_eq!(got, want);
    }
}
