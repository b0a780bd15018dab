//! [`PageIndex`]: which pages a memory layer holds, as sorted, coalesced ranges; and [`LayerIndex`], its
//! on-disk form in the `<layer>.index` container.

use std::path::Path;

use crate::error::{Error, Result};
use crate::file::{self, FileKind};

use super::{MAX_INDEX_PAYLOAD, PAGE_SIZE};

/// A run of pages: `start .. start + len` (in pages). `len` is never 0 inside a [`PageIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRange {
    /// First page.
    pub start: u64,
    /// Number of pages.
    pub len: u64,
}

impl PageRange {
    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
    /// Byte offset of the first page.
    pub fn byte_offset(&self) -> u64 {
        self.start * PAGE_SIZE
    }
    /// Length in bytes.
    pub fn byte_len(&self) -> u64 {
        self.len * PAGE_SIZE
    }
}

/// A set of pages kept as sorted, non-overlapping, non-adjacent (coalesced) ranges.
///
/// All set operations work on ranges, never page by page, so their cost follows the number of ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageIndex {
    ranges: Vec<PageRange>,
}

impl PageIndex {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every page of a memory of `pages` pages (a Full layer).
    pub fn full(pages: u64) -> Self {
        let mut ix = Self::new();
        ix.push(0, pages);
        ix
    }

    /// Build from arbitrary (start, len) page ranges: sorted, overlaps and neighbours merged, empties dropped.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        // Clamp ranges that would run past the last page number instead of overflowing.
        let mut v: Vec<(u64, u64)> = ranges
            .into_iter()
            .filter(|r| r.1 > 0)
            .map(|(s, l)| (s, l.min(u64::MAX - s)))
            .collect();
        v.sort_unstable();
        let mut ix = Self::new();
        for (s, l) in v {
            ix.push(s, l);
        }
        ix
    }

    /// Build from a dirty bitmap of one memory region: bit `i` of `words[j]` set means page
    /// `base_page + 64*j + i` is dirty (KVM_GET_DIRTY_LOG's layout). Runs of set bits become ranges.
    pub fn from_bitmap(words: &[u64], base_page: u64) -> Self {
        let mut ix = Self::new();
        for (j, &w) in words.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let word_base = base_page.saturating_add(64 * j as u64);
            if w == u64::MAX {
                ix.push(word_base, 64);
                continue;
            }
            let mut w = w;
            let mut bit = 0u32;
            while w != 0 {
                let skip = w.trailing_zeros();
                w >>= skip;
                bit += skip;
                let run = w.trailing_ones();
                ix.push(word_base.saturating_add(u64::from(bit)), u64::from(run));
                bit += run;
                w = if run >= 64 { 0 } else { w >> run };
            }
        }
        ix
    }

    /// Add the dirty pages of one more region's bitmap (see [`PageIndex::from_bitmap`]).
    pub fn add_bitmap(&mut self, words: &[u64], base_page: u64) {
        let other = Self::from_bitmap(words, base_page);
        *self = self.union(&other);
    }

    /// Append a range at or after the current end, merging with the last range when they touch.
    /// Callers keep ranges in ascending start order.
    fn push(&mut self, start: u64, len: u64) {
        let len = len.min(u64::MAX - start);
        if len == 0 {
            return;
        }
        if let Some(last) = self.ranges.last_mut() {
            if start <= last.end() {
                let end = last.end().max(start + len);
                last.len = end - last.start;
                return;
            }
        }
        self.ranges.push(PageRange { start, len });
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[PageRange] {
        &self.ranges
    }
    /// True when no page is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    /// Number of pages in the set.
    pub fn page_count(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }
    /// Number of bytes in the set.
    pub fn byte_len(&self) -> u64 {
        self.page_count() * PAGE_SIZE
    }
    /// One past the highest page in the set (0 when empty).
    pub fn end_page(&self) -> u64 {
        self.ranges.last().map_or(0, PageRange::end)
    }
    /// Whether `page` is in the set (binary search).
    pub fn contains(&self, page: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end() <= page);
        self.ranges.get(i).is_some_and(|r| r.start <= page)
    }

    /// Pages in either set.
    pub fn union(&self, other: &PageIndex) -> PageIndex {
        let (a, b) = (&self.ranges, &other.ranges);
        let mut out = PageIndex {
            ranges: Vec::with_capacity(a.len() + b.len()),
        };
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let next = if j >= b.len() || (i < a.len() && a[i].start <= b[j].start) {
                i += 1;
                a[i - 1]
            } else {
                j += 1;
                b[j - 1]
            };
            out.push(next.start, next.len);
        }
        out
    }

    /// Pages in `self` but not in `other`.
    pub fn subtract(&self, other: &PageIndex) -> PageIndex {
        let b = &other.ranges;
        let mut out = PageIndex::new();
        let mut j = 0;
        for r in &self.ranges {
            let mut cur = r.start;
            let end = r.end();
            while j < b.len() && b[j].end() <= cur {
                j += 1;
            }
            let mut k = j;
            while cur < end && k < b.len() && b[k].start < end {
                if b[k].start > cur {
                    out.push(cur, b[k].start - cur);
                }
                cur = cur.max(b[k].end());
                k += 1;
            }
            if cur < end {
                out.push(cur, end - cur);
            }
        }
        out
    }

    /// Pages in both sets.
    pub fn intersect(&self, other: &PageIndex) -> PageIndex {
        self.subtract(&self.subtract(other))
    }

    /// The writes that produce a layer file for this set: `(file_offset, len)` in bytes, ascending. Layer
    /// files keep memory at its own offsets, so `file_offset` is also the memory offset to copy from.
    pub fn write_plan(&self) -> Vec<(u64, u64)> {
        self.ranges
            .iter()
            .map(|r| (r.byte_offset(), r.byte_len()))
            .collect()
    }
}

/// The sidecar index of one memory layer: the memory size, the pages the layer holds and, for layers
/// written since format 2, a CRC-64 of each chunk of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndex {
    /// Size of the guest memory (and of the layer file), in bytes; a multiple of [`PAGE_SIZE`].
    pub mem_size: u64,
    /// Pages present in the layer file.
    pub pages: PageIndex,
    /// One CRC-64 per [`super::CHUNK_PAGES`]-page chunk of the file, over the bytes of the chunk's pages
    /// that `pages` holds, in order (0 for a chunk that holds none); empty: not checksummed (older
    /// layers, and layers not yet sealed by [`crate::checkpoint::CheckpointStore::commit`]).
    pub chunk_crcs: Vec<u64>,
}

/// Flag bit in the payload header: chunk checksums follow the ranges.
const FLAG_CHUNK_CRCS: u32 = 1;

const PAYLOAD_HEADER: usize = 24;

impl LayerIndex {
    /// Build, checking the pages lie inside the memory.
    pub fn new(mem_size: u64, pages: PageIndex) -> Result<Self> {
        if mem_size % PAGE_SIZE != 0 {
            return Err(Error::InvalidIndex(format!(
                "memory size {mem_size} is not a multiple of {PAGE_SIZE}"
            )));
        }
        if pages.end_page() > mem_size / PAGE_SIZE {
            return Err(Error::OutOfRange {
                offset: 0,
                len: pages.end_page().saturating_mul(PAGE_SIZE),
                size: mem_size,
            });
        }
        Ok(Self {
            mem_size,
            pages,
            chunk_crcs: Vec::new(),
        })
    }

    /// Number of checksum chunks for this memory.
    pub fn chunk_count(&self) -> u64 {
        self.mem_pages().div_ceil(super::CHUNK_PAGES)
    }

    /// Number of pages in the memory.
    pub fn mem_pages(&self) -> u64 {
        self.mem_size / PAGE_SIZE
    }

    /// The container payload (see docs/checkpoint-format.md).
    pub fn encode(&self) -> Vec<u8> {
        let rs = self.pages.ranges();
        let mut out = Vec::with_capacity(PAYLOAD_HEADER + 16 * rs.len());
        out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        let flags = if self.chunk_crcs.is_empty() {
            0
        } else {
            FLAG_CHUNK_CRCS
        };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.mem_size.to_le_bytes());
        out.extend_from_slice(&(rs.len() as u64).to_le_bytes());
        for r in rs {
            out.extend_from_slice(&r.start.to_le_bytes());
            out.extend_from_slice(&r.len.to_le_bytes());
        }
        for c in &self.chunk_crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Parse and validate a payload: ranges must be non-empty, ascending, non-adjacent and inside memory.
    pub fn decode(p: &[u8]) -> Result<Self> {
        if p.len() < PAYLOAD_HEADER {
            return Err(Error::Truncated {
                need: PAYLOAD_HEADER as u64,
                have: p.len() as u64,
            });
        }
        let page_size = u32_at(p, 0);
        if u64::from(page_size) != PAGE_SIZE {
            return Err(Error::InvalidIndex(format!(
                "page size {page_size}, expected {PAGE_SIZE}"
            )));
        }
        let flags = u32_at(p, 4);
        if flags & !FLAG_CHUNK_CRCS != 0 {
            return Err(Error::Reserved(flags));
        }
        let mem_size = u64_at(p, 8);
        if mem_size % PAGE_SIZE != 0 {
            return Err(Error::InvalidIndex(format!(
                "memory size {mem_size} is not page-aligned"
            )));
        }
        let mem_pages = mem_size / PAGE_SIZE;
        let count = u64_at(p, 16);
        let chunks = if flags & FLAG_CHUNK_CRCS != 0 {
            mem_pages.div_ceil(super::CHUNK_PAGES)
        } else {
            0
        };
        if flags & FLAG_CHUNK_CRCS != 0 && chunks == 0 {
            // One encoding per index: no memory, no checksums, no flag.
            return Err(Error::InvalidIndex(
                "chunk checksums for an empty memory".into(),
            ));
        }
        let body = ((p.len() - PAYLOAD_HEADER) as u64).saturating_sub(chunks.saturating_mul(8));
        if (p.len() - PAYLOAD_HEADER) as u64 != body.saturating_add(chunks.saturating_mul(8))
            || count.checked_mul(16) != Some(body)
        {
            return Err(Error::LengthMismatch {
                declared: count.saturating_mul(16),
                actual: body,
            });
        }
        let mut ranges = Vec::with_capacity(body as usize / 16);
        let mut prev_end: Option<u64> = None;
        for k in 0..body as usize / 16 {
            let start = u64_at(p, PAYLOAD_HEADER + 16 * k);
            let len = u64_at(p, PAYLOAD_HEADER + 16 * k + 8);
            let end = start.checked_add(len);
            match end {
                Some(end) if len > 0 && end <= mem_pages && prev_end.is_none_or(|pe| start > pe) => {
                    ranges.push(PageRange { start, len });
                    prev_end = Some(end);
                }
                _ => {
                    return Err(Error::InvalidIndex(format!(
                        "range {k} ({start}, {len}) is empty, out of order, touching its neighbour or past {mem_pages} pages"
                    )))
                }
            }
        }
        let crc_at = PAYLOAD_HEADER + body as usize;
        let chunk_crcs = (0..chunks as usize)
            .map(|k| u64_at(p, crc_at + 8 * k))
            .collect();
        Ok(Self {
            mem_size,
            pages: PageIndex { ranges },
            chunk_crcs,
        })
    }

    /// Write atomically to `path` as a [`FileKind::PageIndex`] container.
    pub fn save(&self, path: &Path) -> Result<()> {
        file::write_atomic(path, FileKind::PageIndex, &self.encode())
    }

    /// Read and validate from `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let payload = file::read(path, FileKind::PageIndex, MAX_INDEX_PAYLOAD)?;
        Self::decode(&payload).map_err(|e| e.in_file(path))
    }
}

pub(crate) fn u32_at(p: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&p[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn u64_at(p: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    fn set_of(ix: &PageIndex) -> BTreeSet<u64> {
        ix.ranges().iter().flat_map(|r| r.start..r.end()).collect()
    }

    fn check_canonical(ix: &PageIndex) {
        for w in ix.ranges().windows(2) {
            assert!(w[0].end() < w[1].start, "{:?}", ix);
        }
        assert!(ix.ranges().iter().all(|r| r.len > 0));
    }

    fn random_index(rng: &mut impl Rng, pages: u64) -> (PageIndex, BTreeSet<u64>) {
        let mut set = BTreeSet::new();
        let mut ranges = Vec::new();
        for _ in 0..rng.gen_range(0..12) {
            let s = rng.gen_range(0..pages);
            let l = rng.gen_range(0..(pages - s).min(20) + 1);
            ranges.push((s, l));
            set.extend(s..s + l);
        }
        (PageIndex::from_ranges(ranges), set)
    }

    #[test]
    fn bitmap_runs() {
        let ix = PageIndex::from_bitmap(&[0b1110_0110, 0, u64::MAX, 1, 1 << 63, 1], 100);
        assert_eq!(
            ix.ranges(),
            &[
                PageRange { start: 101, len: 2 },
                PageRange { start: 105, len: 3 },
                PageRange {
                    start: 228,
                    len: 65
                },
                PageRange {
                    start: 356 - 1 + 64,
                    len: 2
                },
            ][..]
        );
        assert_eq!(
            PageIndex::from_bitmap(&[u64::MAX, u64::MAX], 0),
            PageIndex::full(128)
        );
        assert!(PageIndex::from_bitmap(&[0, 0], 5).is_empty());
    }

    #[test]
    fn bitmap_matches_bits_randomly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let words: Vec<u64> = (0..8)
                .map(|_| match rng.gen_range(0..4) {
                    0 => 0,
                    1 => u64::MAX,
                    _ => rng.gen(),
                })
                .collect();
            let base = rng.gen_range(0..1000);
            let ix = PageIndex::from_bitmap(&words, base);
            check_canonical(&ix);
            let want: BTreeSet<u64> = (0..512u64)
                .filter(|b| words[(b / 64) as usize] >> (b % 64) & 1 == 1)
                .map(|b| b + base)
                .collect();
            assert_eq!(set_of(&ix), want);
        }
    }

    #[test]
    fn set_operations_match_a_model() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for _ in 0..500 {
            let (a, sa) = random_index(&mut rng, 200);
            let (b, sb) = random_index(&mut rng, 200);
            for ix in [&a, &b] {
                check_canonical(ix);
            }
            let u = a.union(&b);
            let d = a.subtract(&b);
            let i = a.intersect(&b);
            for ix in [&u, &d, &i] {
                check_canonical(ix);
            }
            assert_eq!(set_of(&u), sa.union(&sb).copied().collect());
            assert_eq!(set_of(&d), sa.difference(&sb).copied().collect());
            assert_eq!(set_of(&i), sa.intersection(&sb).copied().collect());
            assert_eq!(a.page_count(), sa.len() as u64);
            for p in 0..210 {
                assert_eq!(a.contains(p), sa.contains(&p));
            }
        }
    }

    #[test]
    fn write_plan_is_in_bytes() {
        let ix = PageIndex::from_ranges([(3, 2), (0, 1)]);
        assert_eq!(ix.write_plan(), vec![(0, 4096), (3 * 4096, 2 * 4096)]);
        assert_eq!(ix.byte_len(), 3 * 4096);
    }

    #[test]
    fn layer_index_roundtrip_and_validation() {
        let li =
            LayerIndex::new(64 * PAGE_SIZE, PageIndex::from_ranges([(1, 3), (10, 5)])).unwrap();
        let p = li.encode();
        assert_eq!(LayerIndex::decode(&p).unwrap(), li);
        assert!(LayerIndex::new(4 * PAGE_SIZE, PageIndex::full(5)).is_err());
        assert!(LayerIndex::new(100, PageIndex::new()).is_err());
        // Overlapping, adjacent, empty and out-of-range ranges are refused.
        for bad in [
            [(1u64, 3u64), (3, 1)],
            [(1, 3), (4, 1)],
            [(1, 0), (5, 1)],
            [(1, 3), (60, 5)],
            [(5, 1), (1, 1)],
        ] {
            let mut q = p[..24].to_vec();
            for (s, l) in bad {
                q.extend_from_slice(&s.to_le_bytes());
                q.extend_from_slice(&l.to_le_bytes());
            }
            assert!(LayerIndex::decode(&q).is_err(), "{bad:?}");
        }
        assert!(LayerIndex::decode(&p[..p.len() - 1]).is_err());
        let mut q = p.clone();
        q[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(LayerIndex::decode(&q).is_err());
    }

    #[test]
    fn layer_index_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.layer.index");
        let li = LayerIndex::new(1 << 20, PageIndex::from_bitmap(&[0xf0f0], 0)).unwrap();
        li.save(&path).unwrap();
        assert_eq!(LayerIndex::load(&path).unwrap(), li);
    }
}
