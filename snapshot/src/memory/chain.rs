//! [`LayerChain`]: an ordered list of memory layers (base first) and the restore mapping plan.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::index::{LayerIndex, PageIndex};
use super::layer::open_layer;
use super::PAGE_SIZE;

/// One layer of a chain: its file and the pages it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayer {
    /// The layer file (guest memory at its own offsets).
    pub path: PathBuf,
    /// Pages present in the file.
    pub pages: PageIndex,
}

/// A range of guest memory to map from one layer file. The VMM maps each with
/// `mmap(base + guest_offset, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_FIXED, fd(layer), file_offset)`
/// over an anonymous (zero) mapping of the whole memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRange {
    /// Offset in guest memory (the VMM's linear offset space), bytes; page-aligned.
    pub guest_offset: u64,
    /// Length in bytes; page-aligned, never 0.
    pub len: u64,
    /// Index into the chain's layers (0 = base).
    pub layer: usize,
    /// Offset in that layer's file, bytes (equal to `guest_offset` in cairn's own layers).
    pub file_offset: u64,
}

/// An ordered list of memory layers over one memory size: base first, newest last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerChain {
    mem_size: u64,
    layers: Vec<MemoryLayer>,
}

impl LayerChain {
    /// An empty chain over a memory of `mem_size` bytes.
    pub fn new(mem_size: u64) -> Self {
        Self {
            mem_size,
            layers: Vec::new(),
        }
    }

    /// Open the layers at `paths` (base first), reading and checking each `<layer>.index`; all must
    /// describe the same memory size.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut chain: Option<LayerChain> = None;
        for p in paths {
            let ix = open_layer(p)?;
            let c = chain.get_or_insert_with(|| LayerChain::new(ix.mem_size));
            c.push(p.clone(), ix)?;
        }
        Ok(chain.unwrap_or_else(|| LayerChain::new(0)))
    }

    /// Add a newer layer on top.
    pub fn push(&mut self, path: impl AsRef<Path>, index: LayerIndex) -> Result<()> {
        if index.mem_size != self.mem_size {
            return Err(Error::Geometry(format!(
                "layer {} is for {} bytes of memory, the chain for {}",
                path.as_ref().display(),
                index.mem_size,
                self.mem_size
            )));
        }
        self.layers.push(MemoryLayer {
            path: path.as_ref().to_path_buf(),
            pages: index.pages,
        });
        Ok(())
    }

    /// Memory size in bytes.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// The layers, base first.
    pub fn layers(&self) -> &[MemoryLayer] {
        &self.layers
    }

    /// The restore mapping plan: ranges ascending by `guest_offset`, non-overlapping, covering every page
    /// that any layer holds, each taken from the newest layer that holds it. Pages in no range are zero.
    ///
    /// Works on ranges: O(L × R) for L layers of at most R ranges each, independent of memory size.
    pub fn resolve(&self) -> Vec<MappedRange> {
        let mut covered = PageIndex::new();
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let visible = layer.pages.subtract(&covered);
            out.extend(visible.ranges().iter().map(|r| MappedRange {
                guest_offset: r.byte_offset(),
                len: r.byte_len(),
                layer: i,
                file_offset: r.byte_offset(),
            }));
            covered = covered.union(&layer.pages);
        }
        out.sort_unstable_by_key(|r| r.guest_offset);
        // Neighbours from the same layer at contiguous file offsets become one mapping.
        let mut merged: Vec<MappedRange> = Vec::with_capacity(out.len());
        for r in out {
            match merged.last_mut() {
                Some(m)
                    if m.layer == r.layer
                        && m.guest_offset + m.len == r.guest_offset
                        && m.file_offset + m.len == r.file_offset =>
                {
                    m.len += r.len
                }
                _ => merged.push(r),
            }
        }
        merged
    }

    /// Pages that no layer holds (they restore as zero).
    pub fn zero_pages(&self) -> PageIndex {
        let all = self
            .layers
            .iter()
            .fold(PageIndex::new(), |acc, l| acc.union(&l.pages));
        PageIndex::full(self.mem_size / PAGE_SIZE).subtract(&all)
    }

    /// Materialize the whole memory by reading the plan's ranges from the files (for tests, tools and
    /// fallbacks without mmap). `buf` must be `mem_size` bytes.
    pub fn read_into(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 != self.mem_size {
            return Err(Error::Geometry(format!(
                "buffer of {} bytes for {} bytes of memory",
                buf.len(),
                self.mem_size
            )));
        }
        buf.fill(0);
        let files = self
            .layers
            .iter()
            .map(|l| File::open(&l.path).map_err(|e| Error::io("open layer", &l.path, e)))
            .collect::<Result<Vec<_>>>()?;
        for r in self.resolve() {
            let dst = &mut buf[r.guest_offset as usize..(r.guest_offset + r.len) as usize];
            let path = &self.layers[r.layer].path;
            files[r.layer]
                .read_exact_at(dst, r.file_offset)
                .map_err(|e| Error::io("read layer", path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::layer::write_layer_from_slice_to;
    use rand::{Rng, SeedableRng};

    fn chain_of(indexes: &[PageIndex], pages: u64) -> LayerChain {
        let mut c = LayerChain::new(pages * PAGE_SIZE);
        for (i, ix) in indexes.iter().enumerate() {
            c.push(
                format!("l{i}"),
                LayerIndex::new(pages * PAGE_SIZE, ix.clone()).unwrap(),
            )
            .unwrap();
        }
        c
    }

    #[test]
    fn newest_wins() {
        let c = chain_of(
            &[
                PageIndex::full(10),
                PageIndex::from_ranges([(2, 3)]),
                PageIndex::from_ranges([(3, 1), (8, 4)]),
            ],
            12,
        );
        let plan: Vec<_> = c
            .resolve()
            .iter()
            .map(|r| (r.guest_offset / PAGE_SIZE, r.len / PAGE_SIZE, r.layer))
            .collect();
        assert_eq!(
            plan,
            vec![
                (0, 2, 0),
                (2, 1, 1),
                (3, 1, 2),
                (4, 1, 1),
                (5, 3, 0),
                (8, 4, 2)
            ]
        );
        assert!(c.zero_pages().is_empty());
        let c = chain_of(&[PageIndex::from_ranges([(1, 1)])], 4);
        assert_eq!(c.zero_pages(), PageIndex::from_ranges([(0, 1), (2, 2)]));
    }

    #[test]
    fn random_plans_match_per_page_model() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..300 {
            let pages = rng.gen_range(1..300u64);
            let n = rng.gen_range(0..6);
            let indexes: Vec<PageIndex> = (0..n)
                .map(|_| {
                    PageIndex::from_ranges((0..rng.gen_range(0..8)).map(|_| {
                        let s = rng.gen_range(0..pages);
                        (s, rng.gen_range(0..=(pages - s).min(40)))
                    }))
                })
                .collect();
            let c = chain_of(&indexes, pages);
            let plan = c.resolve();
            let mut owner = vec![None; pages as usize];
            for r in &plan {
                assert!(r.len > 0 && r.guest_offset == r.file_offset);
                for p in r.guest_offset / PAGE_SIZE..(r.guest_offset + r.len) / PAGE_SIZE {
                    assert!(owner[p as usize].is_none(), "overlap");
                    owner[p as usize] = Some(r.layer);
                }
            }
            for w in plan.windows(2) {
                assert!(w[0].guest_offset + w[0].len <= w[1].guest_offset);
                assert!(
                    !(w[0].layer == w[1].layer
                        && w[0].guest_offset + w[0].len == w[1].guest_offset),
                    "not minimal"
                );
            }
            for p in 0..pages {
                let want = (0..indexes.len()).rev().find(|&i| indexes[i].contains(p));
                assert_eq!(owner[p as usize], want, "page {p}");
            }
        }
    }

    #[test]
    fn large_memory_resolves_by_ranges() {
        // 1 TiB of memory, 100 layers of 1,000 ranges each: resolves without per-page work.
        let pages = (1u64 << 40) / PAGE_SIZE;
        let mut indexes = vec![PageIndex::full(pages)];
        for l in 0..100u64 {
            indexes.push(PageIndex::from_ranges(
                (0..1000u64).map(|k| (k * (pages / 1000) + l * 7, 3)),
            ));
        }
        let c = chain_of(&indexes, pages);
        let t = std::time::Instant::now();
        let plan = c.resolve();
        assert!(t.elapsed().as_secs() < 5);
        assert_eq!(plan.iter().map(|r| r.len).sum::<u64>(), pages * PAGE_SIZE);
    }

    #[test]
    fn mismatched_sizes_are_refused() {
        let mut c = LayerChain::new(8 * PAGE_SIZE);
        assert!(c
            .push(
                "x",
                LayerIndex::new(4 * PAGE_SIZE, PageIndex::new()).unwrap()
            )
            .is_err());
    }

    #[test]
    fn read_into_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let pages = 16u64;
        let mut mem = vec![0u8; (pages * PAGE_SIZE) as usize];
        let mut paths = Vec::new();
        let mut expect = vec![0u8; mem.len()];
        for (gen, ranges) in [vec![(0u64, 16u64)], vec![(3, 2)], vec![(4, 4), (15, 1)]]
            .into_iter()
            .enumerate()
        {
            mem.fill(gen as u8 + 1);
            let ix = PageIndex::from_ranges(ranges);
            let p = dir.path().join(format!("l{gen}"));
            write_layer_from_slice_to(&p, &ix, &mem).unwrap();
            for r in ix.ranges() {
                expect[r.byte_offset() as usize..(r.byte_offset() + r.byte_len()) as usize]
                    .fill(gen as u8 + 1);
            }
            paths.push(p);
        }
        let c = LayerChain::open(&paths).unwrap();
        let mut got = vec![0xffu8; mem.len()];
        c.read_into(&mut got).unwrap();
        assert!(got == expect);
    }
}
