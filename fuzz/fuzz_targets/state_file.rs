//! Fuzz cairn-snapshot's decoders: the container, postcard into a sample state, the page and block
//! indexes, and meta.json. None may panic; valid indexes must re-encode to the same bytes.
#![no_main]

use cairn_snapshot::checkpoint::CheckpointMeta;
use cairn_snapshot::disk::BlockIndex;
use cairn_snapshot::file::{self, FileKind};
use cairn_snapshot::memory::LayerIndex;
use libfuzzer_sys::fuzz_target;

/// A state shaped like a VM's: numbers, registers, MSR lists, optional strings, nested byte vectors.
type SampleState = (
    u64,
    [u64; 4],
    Vec<(u32, u64)>,
    Option<String>,
    Vec<Vec<u8>>,
    bool,
    Vec<(String, Vec<u16>)>,
);

fuzz_target!(|data: &[u8]| {
    for kind in FileKind::ALL {
        if let Ok(payload) = file::decode(data, kind, 1 << 20) {
            assert_eq!(file::encode(kind, payload), data);
            match kind {
                FileKind::State => {
                    let _ = file::decode_payload::<SampleState>(payload);
                }
                FileKind::PageIndex => {
                    let _ = LayerIndex::decode(payload);
                }
                FileKind::DiskIndex => {
                    let _ = BlockIndex::decode(payload);
                }
            }
        }
    }
    // Payload decoders directly, so the fuzzer need not forge a CRC to reach them.
    let _ = file::decode_value::<SampleState>(data, FileKind::State, 1 << 20);
    let _ = file::decode_payload::<SampleState>(data);
    if let Ok(ix) = LayerIndex::decode(data) {
        assert_eq!(ix.encode(), data);
        let _ = ix.pages.union(
            &ix.pages
                .subtract(&cairn_snapshot::memory::PageIndex::full(7)),
        );
    }
    if let Ok(ix) = BlockIndex::decode(data) {
        assert_eq!(ix.encode(), data);
    }
    if let Ok(m) = CheckpointMeta::from_json(data) {
        assert_eq!(CheckpointMeta::from_json(&m.to_json().unwrap()).unwrap(), m);
    }
});
