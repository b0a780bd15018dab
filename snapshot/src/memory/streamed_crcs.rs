//! A layer's chunk checksums computed from its pages as they are written, so that committing a
//! checkpoint does not read the layer back.
//!
//! Sealing a layer ([`super::seal_layer`]) reads it back to checksum it: for a 256 MiB layer on
//! the development host that was ≈ 30 ms from tmpfs and ≈ 80 ms from ext4 (written past the page
//! cache, so read from the disk), after the checkpoint's copy and before its reply. The writer
//! has the bytes in hand as it writes them: [`StreamedCrcs::wrote`] feeds them to each chunk's
//! digest in the order [`super::checksum::chunk_crcs`] reads them (the claimed pages of a chunk,
//! ascending; claimed pages nobody writes are holes and count as zeros).
//!
//! Pages may arrive in any order or more than once (a background copy saves a page early for a
//! guest writer, and skips it when it gets there): a chunk whose pages did not arrive exactly in
//! order is read back from the file by [`StreamedCrcs::finish`], so the checksums are always those
//! of the file.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;

use crc_fast::{CrcAlgorithm, Digest};

use crate::error::{Error, Result};

use super::checksum::chunk_crc;
use super::index::PageIndex;
use super::{CHUNK_PAGES, PAGE_SIZE};

static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// A chunk being fed: the claimed page it expects next and the digest so far.
struct OpenChunk {
    next: Option<u64>,
    digest: Digest,
}

/// Chunk checksums of a layer being written; see the module doc.
pub struct StreamedCrcs {
    claimed: PageIndex,
    /// Claimed pages the writer does not write: holes, read as zeros.
    holes: PageIndex,
    chunks: u64,
    open: HashMap<u64, OpenChunk>,
    done: HashMap<u64, u64>,
    /// Chunks to read back: a page came out of order.
    redo: BTreeSet<u64>,
}

impl std::fmt::Debug for StreamedCrcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedCrcs")
            .field("chunks", &self.chunks)
            .field("open", &self.open.len())
            .field("done", &self.done.len())
            .field("redo", &self.redo)
            .finish()
    }
}

impl StreamedCrcs {
    /// For a layer of guest memory `mem_size` bytes whose index will claim `claimed`, of which
    /// the writer writes `written` (the rest of `claimed` stays holes).
    pub fn new(mem_size: u64, claimed: &PageIndex, written: &PageIndex) -> Self {
        Self {
            claimed: claimed.clone(),
            holes: claimed.subtract(written),
            chunks: (mem_size / PAGE_SIZE).div_ceil(CHUNK_PAGES),
            open: HashMap::new(),
            done: HashMap::new(),
            redo: BTreeSet::new(),
        }
    }

    /// The writer wrote `bytes` (whole pages) at page `first` of the layer.
    pub fn wrote(&mut self, first: u64, bytes: &[u8]) {
        for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
            self.wrote_page(first + i as u64, page);
        }
    }

    fn wrote_page(&mut self, page: u64, bytes: &[u8]) {
        if !self.claimed.contains(page) {
            // Outside the index: not checksummed.
            return;
        }
        let chunk = page / CHUNK_PAGES;
        if bytes.len() as u64 != PAGE_SIZE {
            // Not a whole page: the chunk is read back.
            return self.out_of_order(chunk);
        }
        if self.redo.contains(&chunk) {
            return;
        }
        if self.done.contains_key(&chunk) {
            return self.out_of_order(chunk);
        }
        let mut open = match self.open.remove(&chunk) {
            Some(open) => open,
            None => self.start(chunk),
        };
        if open.next != Some(page) {
            return self.out_of_order(chunk);
        }
        open.digest.update(bytes);
        open.next = self.next_claimed(page + 1, chunk);
        self.skip_holes(chunk, open);
    }

    /// A chunk's digest before any page: the holes it starts with fed, its first claimed page
    /// to be written expected.
    fn start(&self, chunk: u64) -> OpenChunk {
        let mut open = OpenChunk {
            next: self.next_claimed(chunk * CHUNK_PAGES, chunk),
            digest: Digest::new(CrcAlgorithm::Crc64Xz),
        };
        self.feed_holes(chunk, &mut open);
        open
    }

    /// Feeds the holes `open` expects next as zeros.
    fn feed_holes(&self, chunk: u64, open: &mut OpenChunk) {
        while let Some(hole) = open.next.filter(|&p| self.holes.contains(p)) {
            open.digest.update(&ZERO_PAGE);
            open.next = self.next_claimed(hole + 1, chunk);
        }
    }

    /// Feeds the holes `open` expects next; files the chunk as done when nothing is left to
    /// expect, else keeps it open.
    fn skip_holes(&mut self, chunk: u64, mut open: OpenChunk) {
        self.feed_holes(chunk, &mut open);
        match open.next {
            None => {
                self.done.insert(chunk, open.digest.finalize());
            }
            Some(_) => {
                self.open.insert(chunk, open);
            }
        }
    }

    fn out_of_order(&mut self, chunk: u64) {
        self.open.remove(&chunk);
        self.done.remove(&chunk);
        self.redo.insert(chunk);
    }

    /// The first claimed page from `from` on inside `chunk`.
    fn next_claimed(&self, from: u64, chunk: u64) -> Option<u64> {
        let end = (chunk + 1) * CHUNK_PAGES;
        let ranges = self.claimed.ranges();
        let r = ranges.get(ranges.partition_point(|r| r.end() <= from))?;
        Some(r.start.max(from)).filter(|&p| p < end)
    }

    /// The checksums of every chunk, as [`super::checksum::chunk_crcs`] would compute them from
    /// the layer file at `layer` (now written): the chunks fed in order from their digests, the
    /// others read back from the file.
    pub fn finish(mut self, layer: &Path) -> Result<Vec<u64>> {
        for chunk in 0..self.chunks {
            if self.done.contains_key(&chunk) || self.redo.contains(&chunk) {
                continue;
            }
            if self.next_claimed(chunk * CHUNK_PAGES, chunk).is_none() {
                // No claimed page in this chunk: 0, as chunk_crcs has it.
                self.done.insert(chunk, 0);
                continue;
            }
            let open = match self.open.remove(&chunk) {
                Some(open) => open,
                None => self.start(chunk),
            };
            self.skip_holes(chunk, open);
            if self.open.remove(&chunk).is_some() {
                // A page to be written never came.
                self.redo.insert(chunk);
            }
        }
        let mut out: Vec<u64> = (0..self.chunks)
            .map(|c| self.done.get(&c).copied().unwrap_or(0))
            .collect();
        if !self.redo.is_empty() {
            let f = File::open(layer).map_err(|e| Error::io("open memory layer", layer, e))?;
            let mut buf = vec![0u8; (CHUNK_PAGES * PAGE_SIZE) as usize];
            for &chunk in &self.redo {
                if let Some(slot) = out.get_mut(chunk as usize) {
                    *slot = chunk_crc(&f, layer, &self.claimed, chunk, &mut buf)?;
                }
            }
        }
        Ok(out)
    }

    /// How many chunks [`Self::finish`] reads back (so far): for logs and tests.
    pub fn chunks_read_back(&self) -> usize {
        self.redo.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::checksum::chunk_crcs;
    use crate::memory::{open_layer, write_layer_from_slice_to};

    /// A 5-chunk memory (the last chunk partial) with data in every page.
    fn memory() -> (u64, Vec<u8>) {
        let pages = 4 * CHUNK_PAGES + 37;
        let mem = (0..pages * PAGE_SIZE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        (pages, mem)
    }

    fn page_bytes(mem: &[u8], page: u64, n: u64) -> &[u8] {
        &mem[(page * PAGE_SIZE) as usize..((page + n) * PAGE_SIZE) as usize]
    }

    /// Writes `order` (runs of `written`, in that order) to a layer claiming `claimed`, feeding
    /// the digests; returns the streamed checksums, the ones read from the file and the count of
    /// chunks read back.
    fn streamed_and_read(
        claimed: &PageIndex,
        written: &PageIndex,
        order: &[(u64, u64)],
    ) -> (Vec<u64>, Vec<u64>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let (pages, mem) = memory();
        // The file: written pages hold data, the rest of `claimed` are holes.
        write_layer_from_slice_to(&path, written, &mem).unwrap();
        let mut index = open_layer(&path).unwrap();
        index.pages = claimed.clone();
        let mut s = StreamedCrcs::new(pages * PAGE_SIZE, claimed, written);
        for &(page, n) in order {
            s.wrote(page, page_bytes(&mem, page, n));
        }
        let back = s.chunks_read_back();
        let streamed = s.finish(&path).unwrap();
        (streamed, chunk_crcs(&path, &index).unwrap(), back)
    }

    #[test]
    fn pages_written_in_order_need_no_reading_back() {
        let claimed = PageIndex::from_ranges([(3, 300), (600, 2), (700, 50), (1030, 7)]);
        let order: Vec<(u64, u64)> = claimed
            .write_plan()
            .iter()
            .map(|&(o, l)| (o / PAGE_SIZE, l / PAGE_SIZE))
            .collect();
        let (streamed, read, back) = streamed_and_read(&claimed, &claimed, &order);
        assert_eq!(streamed, read);
        assert_eq!(back, 0);
        assert_eq!(streamed[3], 0, "a chunk with no claimed page");
        assert!(streamed.iter().enumerate().all(|(c, &v)| c == 3 || v != 0));
    }

    #[test]
    fn holes_count_as_zeros() {
        // A Full layer over a chain: every page claimed, a few written.
        let (pages, _) = memory();
        let claimed = PageIndex::full(pages);
        let written = PageIndex::from_ranges([(10, 5), (300, 1), (1000, 30)]);
        let order = [(10, 5), (300, 1), (1000, 30)];
        let (streamed, read, back) = streamed_and_read(&claimed, &written, &order);
        assert_eq!(streamed, read);
        assert_eq!(back, 0);
    }

    #[test]
    fn pages_out_of_order_are_read_back_and_still_right() {
        let claimed = PageIndex::from_ranges([(0, 600), (800, 100)]);
        // Page 520 saved early, before its chunk's first page 512; page 100 written twice.
        let order = [
            (520, 1),
            (0, 100),
            (100, 1),
            (100, 400),
            (100, 1),
            (500, 20),
            (521, 79),
            (800, 100),
        ];
        let (streamed, read, back) = streamed_and_read(&claimed, &claimed, &order);
        assert_eq!(streamed, read);
        assert_eq!(
            back, 2,
            "chunk 0 (page 100 twice) and chunk 2 (page 520 before 512)"
        );
    }

    #[test]
    fn an_early_page_that_comes_first_keeps_its_chunk_streamed() {
        // The first page of chunk 1 saved early for a writer, the copy then skips it.
        let claimed = PageIndex::from_ranges([(0, 512)]);
        let order = [(256, 1), (0, 256), (257, 255)];
        let (streamed, read, back) = streamed_and_read(&claimed, &claimed, &order);
        assert_eq!(streamed, read);
        assert_eq!(back, 0);
    }

    #[test]
    fn pages_never_written_are_read_back() {
        let claimed = PageIndex::from_ranges([(0, 300)]);
        // Pages 280..300 are in the plan but the writer stops early (the file has them as
        // written by the layer writer, so the read-back value is the file's).
        let order = [(0, 280)];
        let (streamed, read, back) = streamed_and_read(&claimed, &claimed, &order);
        assert_eq!(streamed, read);
        assert_eq!(back, 0, "found missing only at finish");
    }
}
