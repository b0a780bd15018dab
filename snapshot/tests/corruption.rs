//! Every file kind, damaged 1,000 ways by bit flips and 1,000 by truncation: reading it gives an error or
//! the correct value, never a panic and never a wrong value.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_snapshot::checkpoint::{CheckpointMeta, DiskMeta, MemoryMeta, META_FORMAT_VERSION};
use cairn_snapshot::disk::{index::index_path as disk_index_path, LayeredDisk};
use cairn_snapshot::file::{self, FileKind};
use cairn_snapshot::memory::{index_path, LayerIndex, PageIndex, PAGE_SIZE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const TRIALS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct VcpuState {
    regs: [u64; 18],
    msrs: Vec<(u32, u64)>,
    lapic: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct VmState {
    vcpus: Vec<VcpuState>,
    devices: Vec<(String, Vec<u8>)>,
    clock_ns: u64,
    template: Option<String>,
}

fn vm_state() -> VmState {
    VmState {
        vcpus: (0..2)
            .map(|i| VcpuState {
                regs: [i as u64 * 0x1111; 18],
                msrs: vec![(0x10, 123456789), (0xc000_0080, 0xd01)],
                lapic: (0..1024).map(|b| (b * 7 + i) as u8).collect(),
            })
            .collect(),
        devices: vec![
            ("serial".into(), vec![1, 2, 3]),
            ("virtio-blk".into(), vec![9; 64]),
        ],
        clock_ns: 42_000_000,
        template: Some("T2".into()),
    }
}

/// Run `check` on 1,000 bit-flipped and 1,000 truncated copies of `path`. `check` gets the damaged file
/// in place and returns Err (fine) or Ok(correct?); a wrong value fails the test.
fn damage(path: &Path, seed: u64, mut check: impl FnMut() -> Result<bool, String>) {
    let good = std::fs::read(path).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut errors, mut correct) = (0, 0);
    for trial in 0..2 * TRIALS {
        let mut bad = good.clone();
        if trial < TRIALS {
            let flips = if rng.gen_bool(0.8) {
                1
            } else {
                rng.gen_range(2..=8)
            };
            for _ in 0..flips {
                let bit = rng.gen_range(0..bad.len() * 8);
                bad[bit / 8] ^= 1 << (bit % 8);
            }
        } else {
            bad.truncate(rng.gen_range(0..bad.len()));
        }
        std::fs::write(path, &bad).unwrap();
        match check() {
            Err(_) => errors += 1,
            Ok(true) => correct += 1,
            Ok(false) => panic!("{}: trial {trial} read back a wrong value", path.display()),
        }
    }
    std::fs::write(path, &good).unwrap();
    assert_eq!(check(), Ok(true), "the undamaged file must read back");
    assert!(errors > 0, "{errors} errors, {correct} correct");
}

#[test]
fn state_container() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state");
    let want = vm_state();
    file::save(&p, FileKind::State, &want).unwrap();
    damage(&p, 1, || {
        let got: VmState = file::load(&p, FileKind::State, 1 << 20).map_err(|e| e.to_string())?;
        Ok(got == want)
    });
    // The in-memory decoder (what the fuzzer drives) behaves the same.
    let bytes = file::encode_value(FileKind::State, &want).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..TRIALS {
        let mut bad = bytes.clone();
        let bit = rng.gen_range(0..bad.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(file::decode_value::<VmState>(&bad, FileKind::State, 1 << 20).is_err());
        let cut = rng.gen_range(0..bytes.len());
        assert!(file::decode_value::<VmState>(&bytes[..cut], FileKind::State, 1 << 20).is_err());
    }
}

#[test]
fn page_index() {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("mem.layer");
    let pages = PageIndex::from_bitmap(
        &[0xdead_beef_0000_ffff, 0, u64::MAX, 0x8000_0000_0000_0001],
        64,
    );
    let mem = vec![5u8; (320 * PAGE_SIZE) as usize];
    let want = cairn_snapshot::memory::write_layer_from_slice_to(&layer, &pages, &mem).unwrap();
    let ipath = index_path(&layer);
    damage(&ipath, 3, || {
        let got = LayerIndex::load(&ipath).map_err(|e| e.to_string())?;
        Ok(got == want)
    });
}

fn disk_fixture(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let base = dir.join("base.img");
    std::fs::write(
        &base,
        (0..20 * 4096 + 17)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let mut d = LayeredDisk::open(&base, &[], dir.join("active0")).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    for _ in 0..30 {
        let off = rng.gen_range(0..d.len() - 6000);
        let data: Vec<u8> = (0..rng.gen_range(1..6000)).map(|_| rng.gen()).collect();
        d.write_at(off, &data).unwrap();
    }
    d.discard(4096 * 3, 4096 * 2).unwrap();
    let layer = dir.join("disk.root.layer");
    d.checkpoint(&layer).unwrap();
    let mut want = vec![0u8; d.len() as usize];
    d.read_at(0, &mut want).unwrap();
    (base, layer, want)
}

fn read_disk(base: &Path, layer: &Path, active: &Path) -> Result<Vec<u8>, String> {
    let d = LayeredDisk::open(base, &[layer.to_path_buf()], active.to_path_buf())
        .map_err(|e| e.to_string())?;
    let mut got = vec![0u8; d.len() as usize];
    d.read_at(0, &mut got).map_err(|e| e.to_string())?;
    Ok(got)
}

#[test]
fn disk_index() {
    let dir = tempfile::tempdir().unwrap();
    let (base, layer, want) = disk_fixture(dir.path());
    let active = dir.path().join("active1");
    damage(&disk_index_path(&layer), 5, || {
        Ok(read_disk(&base, &layer, &active)? == want)
    });
}

#[test]
fn disk_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (base, layer, want) = disk_fixture(dir.path());
    let active = dir.path().join("active1");
    damage(&layer, 6, || Ok(read_disk(&base, &layer, &active)? == want));
    // Damage in place, as a disk would (no rewrite of the file): still caught per block.
    let f = OpenOptions::new().write(true).open(&layer).unwrap();
    f.write_all_at(&[0x55; 3], 100).unwrap();
    assert!(read_disk(&base, &layer, &active).is_err());
}

#[test]
fn meta_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("meta.json");
    let want = CheckpointMeta {
        name: "ckpt-7".into(),
        parent: Some("ckpt-6".into()),
        created_unix_ms: 1_763_000_000_123,
        format_version: META_FORMAT_VERSION,
        cpu_template: Some("T2S".into()),
        memory: MemoryMeta {
            dirty_mib: 16.25,
            layer_file: "mem.layer".into(),
        },
        disks: vec![
            DiskMeta {
                drive_id: "rootfs".into(),
                delta_mib: 0.5,
                layer_file: "disk.rootfs.layer".into(),
            },
            DiskMeta {
                drive_id: "scratch".into(),
                delta_mib: 3.0,
                layer_file: "disk.scratch.layer".into(),
            },
        ],
        pause_ms: 0.18,
        write_ms: 2.75,
        total_ms: 0.0,
        files: Default::default(),
    };
    want.save(&p).unwrap();
    damage(&p, 7, || {
        Ok(CheckpointMeta::load(&p).map_err(|e| e.to_string())? == want)
    });
}
