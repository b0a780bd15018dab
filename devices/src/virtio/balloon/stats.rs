//! Guest memory statistics (virtio 1.2, 5.5.6.3): the driver writes a list of
//! `(tag: u16, value: u64)` entries, packed (10 bytes each), into the statistics buffer.

use serde::{Deserialize, Serialize};

/// Size of one packed statistics entry.
pub const STAT_SIZE: u32 = 10;
/// Most entries read from one buffer; a larger buffer is read only this far.
pub const MAX_STATS: u32 = 256;

/// The tags cairn knows, in tag order (tag `i` is `NAMES[i]`), named as Firecracker's
/// `GET /balloon/statistics` names them.
pub const NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kill",
    "alloc_stall",
    "async_scan",
    "direct_scan",
    "async_reclaim",
    "direct_reclaim",
];

/// The latest statistics the guest reported: one value per known tag, `None` until reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Values by tag (see [`NAMES`]).
    pub values: [Option<u64>; 16],
}

impl BalloonStats {
    /// Record one entry; unknown tags are ignored (newer drivers report more).
    pub fn update(&mut self, tag: u16, value: u64) {
        if let Some(slot) = self.values.get_mut(usize::from(tag)) {
            *slot = Some(value);
        }
    }

    /// Parse a packed buffer of entries, updating the known tags. A trailing partial entry is
    /// ignored.
    pub fn update_from(&mut self, buf: &[u8]) {
        for entry in buf.chunks_exact(STAT_SIZE as usize) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&entry[2..10]);
            self.update(tag, u64::from_le_bytes(v));
        }
    }

    /// The reported statistics as `(Firecracker name, value)`.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        NAMES
            .iter()
            .zip(self.values.iter())
            .filter_map(|(name, v)| v.map(|v| (*name, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packed_entries_and_ignores_unknown_tags() {
        let mut buf = Vec::new();
        for (tag, value) in [(5u16, 1u64 << 30), (4, 12345), (99, 7), (0, 1)] {
            buf.extend_from_slice(&tag.to_le_bytes());
            buf.extend_from_slice(&value.to_le_bytes());
        }
        buf.extend_from_slice(&[1, 2, 3]); // a partial entry
        let mut s = BalloonStats::default();
        s.update_from(&buf);
        let named: Vec<_> = s.named().collect();
        assert_eq!(
            named,
            vec![
                ("swap_in", 1),
                ("free_memory", 12345),
                ("total_memory", 1 << 30)
            ]
        );
    }
}
