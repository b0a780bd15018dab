//! Guest memory served on first touch by a page server: the handshake between the VMM and the
//! server (docs/storage.md, "Lazy fetch").
//!
//! The VMM maps guest RAM as anonymous memory, registers it with a userfaultfd for missing-page
//! faults, connects to the server's Unix socket and sends one [`ServedMemory`] (JSON) with the
//! userfaultfd attached (`SCM_RIGHTS`). The server answers [`READY`] and from then on resolves
//! every first touch of a page with `UFFDIO_COPY`. Offsets are those of the memory layer files
//! (guest RAM regions laid end to end).

use serde::{Deserialize, Serialize};

/// The byte the server answers once it serves faults.
pub const READY: u8 = b'R';

/// The largest handshake message, bytes.
pub const MAX_HELLO: usize = 64 << 10;

/// One guest RAM region as the VMM mapped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedRegion {
    /// Host virtual address of the region in the VMM.
    pub host: u64,
    /// Length in bytes (page-aligned).
    pub len: u64,
    /// Offset of the region in the memory layer files.
    pub offset: u64,
}

/// The VMM's handshake: its guest RAM regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedMemory {
    /// The regions, in offset order.
    pub regions: Vec<ServedRegion>,
}

impl ServedMemory {
    /// The region holding host address `addr`, if any.
    pub fn region_of(&self, addr: u64) -> Option<&ServedRegion> {
        self.regions
            .iter()
            .find(|r| addr >= r.host && addr < r.host + r.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_finds_regions() {
        let m = ServedMemory {
            regions: vec![
                ServedRegion {
                    host: 0x1000_0000,
                    len: 0x10_0000,
                    offset: 0,
                },
                ServedRegion {
                    host: 0x4000_0000,
                    len: 0x20_0000,
                    offset: 0x10_0000,
                },
            ],
        };
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(serde_json::from_slice::<ServedMemory>(&json).unwrap(), m);
        assert_eq!(m.region_of(0x4000_1000).unwrap().offset, 0x10_0000);
        assert!(m.region_of(0x1010_0000).is_none());
    }
}
