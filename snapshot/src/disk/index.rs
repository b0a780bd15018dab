//! [`BlockIndex`]: which blocks a disk delta holds and where, and its on-disk form.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file::{self, FileKind};
use crate::memory::index::{u32_at, u64_at};

use super::MAX_DISK_INDEX_PAYLOAD;

/// Offset value marking a block recorded as zero (discarded or written with zeros): no data is stored.
pub const ZERO_OFFSET: u64 = u64::MAX;

/// Where one block of a delta lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    /// Block number (disk offset / block size).
    pub block: u64,
    /// Offset of the block in the data file, or [`ZERO_OFFSET`].
    pub offset: u64,
    /// CRC-64/XZ of the block's bytes (0 for a zero block).
    pub crc: u64,
}

impl BlockEntry {
    /// Whether the block is recorded as zero.
    pub fn is_zero(&self) -> bool {
        self.offset == ZERO_OFFSET
    }
}

/// The index of one delta: geometry plus entries ascending by block number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    /// Block size in bytes.
    pub block_size: u32,
    /// Size of the virtual disk in bytes.
    pub disk_len: u64,
    /// Bytes of the data file the entries may refer to; the file is at least this long.
    pub data_len: u64,
    /// Entries, strictly ascending by `block`.
    pub entries: Vec<BlockEntry>,
}

const HEADER: usize = 32;
const ENTRY: usize = 24;

/// The sidecar index of a delta file: `<delta>.index`.
pub fn index_path(delta: &Path) -> PathBuf {
    crate::memory::index_path(delta)
}

/// Check a block size is a power of two in 512 ..= 1 MiB.
pub fn check_block_size(bs: u32) -> Result<()> {
    if !(512..=1 << 20).contains(&bs) || !bs.is_power_of_two() {
        return Err(Error::Geometry(format!(
            "block size {bs} is not a power of two in 512..=1MiB"
        )));
    }
    Ok(())
}

impl BlockIndex {
    /// Number of blocks of the virtual disk (the last may extend past `disk_len`).
    pub fn disk_blocks(&self) -> u64 {
        self.disk_len.div_ceil(u64::from(self.block_size))
    }

    /// Entry for `block`, if the delta has it (binary search).
    pub fn get(&self, block: u64) -> Option<&BlockEntry> {
        self.entries
            .binary_search_by_key(&block, |e| e.block)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Blocks holding data (not zero entries).
    pub fn data_blocks(&self) -> u64 {
        self.entries.iter().filter(|e| !e.is_zero()).count() as u64
    }

    /// The container payload (see docs/checkpoint-format.md).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.entries.len());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.disk_len.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.block.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.crc.to_le_bytes());
        }
        out
    }

    /// Parse and validate a payload.
    pub fn decode(p: &[u8]) -> Result<Self> {
        if p.len() < HEADER {
            return Err(Error::Truncated {
                need: HEADER as u64,
                have: p.len() as u64,
            });
        }
        let block_size = u32_at(p, 0);
        check_block_size(block_size)?;
        let reserved = u32_at(p, 4);
        if reserved != 0 {
            return Err(Error::Reserved(reserved));
        }
        let disk_len = u64_at(p, 8);
        let data_len = u64_at(p, 16);
        let count = u64_at(p, 24);
        let body = (p.len() - HEADER) as u64;
        if count.checked_mul(ENTRY as u64) != Some(body) {
            return Err(Error::LengthMismatch {
                declared: count.saturating_mul(ENTRY as u64),
                actual: body,
            });
        }
        let bs = u64::from(block_size);
        if data_len % bs != 0 {
            return Err(Error::InvalidIndex(format!(
                "data length {data_len} is not a multiple of the block size"
            )));
        }
        let blocks = disk_len.div_ceil(bs);
        let mut entries = Vec::with_capacity(body as usize / ENTRY);
        for k in 0..body as usize / ENTRY {
            let at = HEADER + ENTRY * k;
            let e = BlockEntry {
                block: u64_at(p, at),
                offset: u64_at(p, at + 8),
                crc: u64_at(p, at + 16),
            };
            let ordered = entries
                .last()
                .is_none_or(|prev: &BlockEntry| e.block > prev.block);
            let placed = if e.is_zero() {
                e.crc == 0
            } else {
                e.offset % bs == 0 && e.offset < data_len
            };
            if !ordered || e.block >= blocks || !placed {
                return Err(Error::InvalidIndex(format!(
                    "entry {k} (block {}, offset {:#x}) is out of order, past the disk's {blocks} blocks or outside the data",
                    e.block, e.offset
                )));
            }
            entries.push(e);
        }
        Ok(Self {
            block_size,
            disk_len,
            data_len,
            entries,
        })
    }

    /// Write atomically as a [`FileKind::DiskIndex`] container.
    pub fn save(&self, path: &Path) -> Result<()> {
        file::write_atomic(path, FileKind::DiskIndex, &self.encode())
    }

    /// Read and validate.
    pub fn load(path: &Path) -> Result<Self> {
        let payload = file::read(path, FileKind::DiskIndex, MAX_DISK_INDEX_PAYLOAD)?;
        Self::decode(&payload).map_err(|e| e.in_file(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BlockIndex {
        BlockIndex {
            block_size: 4096,
            disk_len: 10 * 4096 + 100,
            data_len: 3 * 4096,
            entries: vec![
                BlockEntry {
                    block: 0,
                    offset: 4096,
                    crc: 5,
                },
                BlockEntry {
                    block: 3,
                    offset: ZERO_OFFSET,
                    crc: 0,
                },
                BlockEntry {
                    block: 10,
                    offset: 0,
                    crc: 9,
                },
            ],
        }
    }

    #[test]
    fn roundtrip() {
        let ix = sample();
        assert_eq!(BlockIndex::decode(&ix.encode()).unwrap(), ix);
        assert_eq!(ix.disk_blocks(), 11);
        assert!(ix.get(3).unwrap().is_zero());
        assert!(ix.get(4).is_none());
        assert_eq!(ix.data_blocks(), 2);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.index");
        ix.save(&p).unwrap();
        assert_eq!(BlockIndex::load(&p).unwrap(), ix);
    }

    #[test]
    fn invalid_entries_are_refused() {
        type Mutation = Box<dyn Fn(&mut BlockIndex)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|ix| ix.entries[1].block = 0),
            Box::new(|ix| ix.entries[2].block = 11),
            Box::new(|ix| ix.entries[0].offset = 4095),
            Box::new(|ix| ix.entries[0].offset = 3 * 4096),
            Box::new(|ix| ix.entries[1].crc = 1),
            Box::new(|ix| ix.block_size = 1000),
            Box::new(|ix| ix.block_size = 256),
            Box::new(|ix| ix.data_len = 100),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut ix = sample();
            f(&mut ix);
            assert!(BlockIndex::decode(&ix.encode()).is_err(), "case {i}");
        }
        let p = sample().encode();
        assert!(BlockIndex::decode(&p[..p.len() - 1]).is_err());
        assert!(BlockIndex::decode(&p[..10]).is_err());
    }
}
