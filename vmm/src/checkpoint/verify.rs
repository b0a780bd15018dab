//! Opt-in checks of named checkpoints' memory (`CAIRN_VERIFY_MEMORY=1` in the VMM's
//! environment): a hash of every guest page is stored beside each checkpoint (`mem.hashes`), and
//!
//! - a Diff checkpoint reports pages that changed since its parent but are not in the Diff (a
//!   write that dirty tracking missed);
//! - a restore reports pages whose mapped content differs from what was saved (a layering bug).
//!
//! Costs a pass over all of guest memory per checkpoint and restore, so it is for debugging only.

use std::path::Path;

use cairn_devices::GuestMemoryMmap;
use cairn_snapshot::memory::PageIndex;

use crate::checkpoint::memory::{region_layout, PAGE_SIZE};
use crate::error::VmmError;

/// The hashes' file name in a checkpoint directory.
pub const HASHES_FILE: &str = "mem.hashes";

/// Whether verification is on.
pub fn enabled() -> bool {
    std::env::var("CAIRN_VERIFY_MEMORY").as_deref() == Ok("1")
}

fn hash_page(words: &[u64]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    h
}

/// One hash per page of guest memory, in file order. The vCPUs must be paused.
pub fn page_hashes(mem: &GuestMemoryMmap) -> Vec<u64> {
    let mut out = Vec::new();
    for (host, len, _) in region_layout(mem) {
        let words = (len / 8) as usize;
        // SAFETY: [host, host+len) is a live, page-aligned mapping owned by `mem`; the vCPUs are
        // paused, and the VMM's own writers run on this thread, so nothing writes it meanwhile.
        let all = unsafe { std::slice::from_raw_parts(host as *const u64, words) };
        out.extend(all.chunks((PAGE_SIZE / 8) as usize).map(hash_page));
    }
    out
}

/// Store `hashes` in checkpoint directory `dir`.
pub fn save(dir: &Path, hashes: &[u64]) -> Result<(), VmmError> {
    let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
    std::fs::write(dir.join(HASHES_FILE), bytes).map_err(VmmError::io("write mem.hashes"))
}

/// The hashes stored in `dir`, if any.
pub fn load(dir: &Path) -> Option<Vec<u64>> {
    let bytes = std::fs::read(dir.join(HASHES_FILE)).ok()?;
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect(),
    )
}

/// Pages whose hashes differ between `a` and `b`, leaving out those in `expected`.
pub fn unexpected_changes(a: &[u64], b: &[u64], expected: &PageIndex) -> Vec<u64> {
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(i, (x, y))| x != y && !expected.contains(*i as u64))
        .map(|(i, _)| i as u64)
        .collect()
}

/// Pages of `pages` whose content in the layer file at `path` does not hash to `hashes` (the
/// memory at the pause): a background copy that saved a page after the guest changed it.
pub fn layer_mismatches(
    path: &Path,
    pages: &PageIndex,
    hashes: &[u64],
) -> Result<Vec<u64>, VmmError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(VmmError::io("open memory layer"))?;
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    let mut differ = Vec::new();
    for (offset, len) in pages.write_plan() {
        for page in (offset / PAGE_SIZE)..((offset + len) / PAGE_SIZE) {
            file.read_exact_at(&mut buf, page * PAGE_SIZE)
                .map_err(VmmError::io("read memory layer"))?;
            let words: Vec<u64> = buf
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            if hashes.get(page as usize) != Some(&hash_page(&words)) {
                differ.push(page);
            }
        }
    }
    Ok(differ)
}

/// Report on stderr (the sandbox's console log), whatever the log level: verification was asked
/// for, so its verdict is always shown. `pages` are those that differ, if any.
pub fn report(what: &str, pages: &[u64]) {
    if pages.is_empty() {
        eprintln!("cairn-vmm: verify: {what}: memory matches");
        return;
    }
    let first: Vec<String> = pages.iter().take(16).map(|p| format!("{p:#x}")).collect();
    eprintln!(
        "cairn-vmm: verify: {what}: {} pages differ (page numbers): {}",
        pages.len(),
        first.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_outside_the_expected_set_are_reported() {
        let a = [1, 2, 3, 4];
        let b = [1, 9, 3, 8];
        let expected = PageIndex::from_ranges([(1, 1)]);
        assert_eq!(unexpected_changes(&a, &b, &expected), [3]);
        assert_eq!(
            unexpected_changes(&a, &a, &PageIndex::new()),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn hashes_see_a_changed_word() {
        let mut p = vec![0u64; 512];
        let h0 = hash_page(&p);
        p[511] = 1;
        assert_ne!(h0, hash_page(&p));
    }
}
