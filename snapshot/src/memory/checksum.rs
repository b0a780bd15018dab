//! Per-chunk checksums of a memory layer's data, kept in its index ([`LayerIndex::chunk_crcs`]).
//!
//! The file is cut into chunks of [`CHUNK_PAGES`] pages at fixed offsets; each chunk's CRC-64 covers the
//! bytes of the pages the index claims in it, in order (holes the index claims read as zeros). A flipped
//! byte, a truncated-then-extended file or another VM's layer under this name fails the chunks it
//! touches. A checkpoint's layer gets its checksums as its pages are written
//! ([`super::StreamedCrcs`]); sealing reads back only a layer that has none (or the chunks whose
//! pages were not written in order). Verifying reads the layer again and is meant for a background
//! thread after a restore, so restores are not slower.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crc_fast::{CrcAlgorithm, Digest};

use crate::error::{Error, Result};

use super::index::{LayerIndex, PageIndex};
use super::layer::{index_path, open_layer};
use super::PAGE_SIZE;

/// Pages per checksum chunk (1 MiB).
pub const CHUNK_PAGES: u64 = 256;

/// The chunk checksums of `layer`'s data as `index` claims it.
pub fn chunk_crcs(layer: &Path, index: &LayerIndex) -> Result<Vec<u64>> {
    let f = File::open(layer).map_err(|e| Error::io("open memory layer", layer, e))?;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE_SIZE) as usize];
    (0..index.chunk_count())
        .map(|chunk| chunk_crc(&f, layer, &index.pages, chunk, &mut buf))
        .collect()
}

/// The checksum of one chunk of the open layer `f` (named `layer`), whose index claims
/// `claimed`: over the claimed pages' bytes in the chunk, in order; 0 when it claims none.
/// `buf` holds a chunk.
pub(crate) fn chunk_crc(
    f: &File,
    layer: &Path,
    claimed: &PageIndex,
    chunk: u64,
    buf: &mut [u8],
) -> Result<u64> {
    let (first, end) = (chunk * CHUNK_PAGES, (chunk + 1) * CHUNK_PAGES);
    let mut digest: Option<Digest> = None;
    let ranges = claimed.ranges();
    let overlapping = &ranges[ranges.partition_point(|r| r.end() <= first)..];
    for r in overlapping.iter().take_while(|r| r.start < end) {
        let (from, to) = (r.start.max(first), r.end().min(end));
        let n = ((to - from) * PAGE_SIZE) as usize;
        f.read_exact_at(&mut buf[..n], from * PAGE_SIZE)
            .map_err(|e| Error::io("read memory layer", layer, e))?;
        digest
            .get_or_insert_with(|| Digest::new(CrcAlgorithm::Crc64Xz))
            .update(&buf[..n]);
    }
    Ok(digest.map_or(0, |d| d.finalize()))
}

/// Compute `layer`'s chunk checksums and store them in its index (atomically), unless the
/// index has them already (computed as the layer was written, [`super::StreamedCrcs`]).
/// Returns the index.
pub fn seal_layer(layer: &Path) -> Result<LayerIndex> {
    let mut index = open_layer(layer)?;
    if !index.chunk_crcs.is_empty() {
        return Ok(index);
    }
    index.chunk_crcs = chunk_crcs(layer, &index)?;
    index.save(&index_path(layer))?;
    Ok(index)
}

/// Check `layer`'s data against the checksums in its index. A layer without checksums (written
/// before format 2) passes unchecked.
pub fn verify_layer(layer: &Path) -> Result<()> {
    let index = open_layer(layer)?;
    if index.chunk_crcs.is_empty() {
        return Ok(());
    }
    let now = chunk_crcs(layer, &index)?;
    match now.iter().zip(&index.chunk_crcs).position(|(a, b)| a != b) {
        Some(chunk) => Err(Error::LayerChecksum {
            path: layer.to_path_buf(),
            chunk: chunk as u64,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    /// Layers sealed before the switch to SIMD CRCs keep verifying: the digest fed in pieces
    /// equals CRC-64/XZ of the whole (the `crc` crate's reference implementation).
    #[test]
    fn chunk_digest_is_crc64_xz() {
        const REFERENCE: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut d = super::Digest::new(super::CrcAlgorithm::Crc64Xz);
        for piece in data.chunks(4096 * 3 + 7) {
            d.update(piece);
        }
        assert_eq!(d.finalize(), REFERENCE.checksum(&data));
    }

    use super::*;
    use crate::memory::{write_layer_from_slice_to, PageIndex};

    #[test]
    fn sealed_layers_catch_flipped_bytes_and_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.layer");
        let pages = 600u64;
        let mem: Vec<u8> = (0..pages * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        let held = PageIndex::from_ranges([(1, 2), (250, 20), (590, 10)]);
        write_layer_from_slice_to(&path, &held, &mem).unwrap();
        verify_layer(&path).unwrap();
        let ix = seal_layer(&path).unwrap();
        assert_eq!(ix.chunk_crcs.len(), 3);
        assert!(ix.chunk_crcs.iter().all(|&c| c != 0));
        assert_eq!(open_layer(&path).unwrap(), ix, "the index round-trips");
        verify_layer(&path).unwrap();
        // Flip 16 bytes inside a held page of chunk 1.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xee; 16], 260 * PAGE_SIZE + 100).unwrap();
        assert!(matches!(
            verify_layer(&path),
            Err(Error::LayerChecksum { chunk: 1, .. })
        ));
        // Another VM's layer of the same size under this name.
        let other: Vec<u8> = mem.iter().map(|b| b ^ 1).collect();
        let other_path = dir.path().join("other");
        write_layer_from_slice_to(&other_path, &held, &other).unwrap();
        std::fs::rename(&other_path, &path).unwrap();
        assert!(verify_layer(&path).is_err());
    }
}
