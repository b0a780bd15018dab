//! Tests of [`super::LayeredDisk`].

use super::*;
use rand::{Rng, SeedableRng};

fn base(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
    let p = dir.join("base.img");
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn read_all(d: &LayeredDisk) -> Vec<u8> {
    let mut v = vec![0u8; d.len() as usize];
    d.read_at(0, &mut v).unwrap();
    v
}

#[test]
fn reads_base_then_cow_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (bp, mut model) = base(dir.path(), 3 * 4096 + 100);
    let mut d = LayeredDisk::open(&bp, &[], dir.path().join("active")).unwrap();
    assert_eq!(d.len(), model.len() as u64);
    assert_eq!(read_all(&d), model);
    d.write_at(4000, &[9u8; 200]).unwrap();
    model[4000..4200].fill(9);
    d.write_at(3 * 4096 + 50, &[7u8; 50]).unwrap();
    model[3 * 4096 + 50..].fill(7);
    assert_eq!(read_all(&d), model);
    assert!(d.write_at(model.len() as u64 - 1, &[1, 2]).is_err());
    assert!(d.read_at(u64::MAX, &mut [0u8; 2]).is_err());
    // The base is never written.
    assert_ne!(std::fs::read(&bp).unwrap(), model);
}

#[test]
fn checkpoint_restore_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (bp, mut model) = base(dir.path(), 16 * 4096);
    let active = dir.path().join("active");
    let mut d = LayeredDisk::open(&bp, &[], active.clone()).unwrap();
    d.write_at(0, &[1u8; 8192]).unwrap();
    model[..8192].fill(1);
    let snap1 = model.clone();
    let st = d.checkpoint(&dir.path().join("l1")).unwrap();
    assert_eq!(
        st,
        DiskLayerStats {
            blocks: 2,
            bytes: 8192,
            file_bytes: 8192
        }
    );
    assert_eq!(d.active_stats().blocks, 0);
    d.write_at(4096, &[2u8; 10]).unwrap();
    model[4096..4106].fill(2);
    d.discard(8192, 3 * 4096 + 5).unwrap();
    model[8192..8192 + 3 * 4096 + 5].fill(0);
    assert_eq!(read_all(&d), model);
    d.flush().unwrap();
    drop(d);
    // Resume the active delta after a restart.
    let d = LayeredDisk::open(&bp, &[dir.path().join("l1")], active.clone()).unwrap();
    assert_eq!(read_all(&d), model);
    // Restore checkpoint 1 with a fresh active delta.
    let r = LayeredDisk::open(&bp, &[dir.path().join("l1")], dir.path().join("active2")).unwrap();
    assert_eq!(read_all(&r), snap1);
}

#[test]
fn unflushed_writes_never_corrupt_the_flushed_state() {
    let dir = tempfile::tempdir().unwrap();
    let (bp, mut model) = base(dir.path(), 8 * 4096);
    let active = dir.path().join("active");
    let mut d = LayeredDisk::open(&bp, &[], active.clone()).unwrap();
    d.write_at(0, &[1u8; 4096 * 4]).unwrap();
    model[..4096 * 4].fill(1);
    d.flush().unwrap();
    let flushed = model.clone();
    // Rewrites of durable blocks go to new slots; the old index still reads the flushed data.
    d.write_at(0, &[3u8; 4096 * 4]).unwrap();
    d.discard(4096, 4096).unwrap();
    let crashed = LayeredDisk::open(&bp, &[], active.clone());
    // (the "crashed" reader sees the on-disk index and data: exactly the flushed state)
    assert_eq!(read_all(&crashed.unwrap()), flushed);
    model[..4096 * 4].fill(3);
    model[4096..8192].fill(0);
    assert_eq!(read_all(&d), model);
    // After a flush, freed slots are reused: the file does not grow without bound.
    d.flush().unwrap();
    for _ in 0..20 {
        d.write_at(0, &[5u8; 4096 * 4]).unwrap();
        d.flush().unwrap();
    }
    assert!(
        d.active_stats().file_bytes <= 12 * 4096,
        "{:?}",
        d.active_stats()
    );
}

#[test]
fn random_ops_match_a_model_across_checkpoints() {
    for bs in [512u32, 4096] {
        random_ops(bs, 11 + u64::from(bs));
    }
}

fn random_ops(bs: u32, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (bp, mut model) = base(dir.path(), 40 * 4096 + 1234);
    let mut d =
        LayeredDisk::open_with_block_size(&bp, &[], dir.path().join("active"), Some(bs)).unwrap();
    let mut snaps = Vec::new();
    for round in 0..6 {
        for _ in 0..60 {
            let mut off = rng.gen_range(0..model.len() as u64);
            if rng.gen_bool(0.3) {
                off -= off % u64::from(bs);
            }
            let len =
                rng.gen_range(1..=(model.len() as u64 - off).min(24 * u64::from(bs))) as usize;
            match rng.gen_range(0..5) {
                0 => {
                    d.discard(off, len as u64).unwrap();
                    model[off as usize..off as usize + len].fill(0);
                }
                1 => d.flush().unwrap(),
                _ => {
                    let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    d.write_at(off, &data).unwrap();
                    model[off as usize..off as usize + len].copy_from_slice(&data);
                }
            }
            let off = rng.gen_range(0..model.len());
            let len = rng.gen_range(0..=(model.len() - off).min(10000));
            let mut got = vec![0u8; len];
            d.read_at(off as u64, &mut got).unwrap();
            assert_eq!(got, model[off..off + len]);
        }
        let p = dir.path().join(format!("l{round}"));
        if round % 2 == 1 {
            // The checkpoint's way: frozen at the pause, synced by its commit.
            let mut set = crate::durable::CommitSet::new();
            for w in d.freeze(&p).unwrap().into_written().unwrap() {
                set.written(w);
            }
            set.commit_with(|_| Ok(())).unwrap();
        } else {
            d.checkpoint(&p).unwrap();
        }
        snaps.push(model.clone());
    }
    let layers = d.layer_paths();
    for (i, snap) in snaps.iter().enumerate() {
        let r = LayeredDisk::open(&bp, &layers[..=i], dir.path().join(format!("a{i}"))).unwrap();
        assert!(read_all(&r) == *snap, "checkpoint {i}");
    }
    // Delete middle layers in the live disk: contents are unchanged.
    d.delete_layer(2).unwrap();
    d.delete_layer(0).unwrap();
    assert!(read_all(&d) == model);
    assert!(d.delete_layer(d.layer_paths().len() - 1).is_err());
}

#[test]
fn corrupt_block_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (bp, _) = base(dir.path(), 4 * 4096);
    let mut d = LayeredDisk::open(&bp, &[], dir.path().join("active")).unwrap();
    d.write_at(4096, &[4u8; 4096]).unwrap();
    d.checkpoint(&dir.path().join("l")).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(dir.path().join("l"))
        .unwrap();
    f.write_all_at(&[5], 10).unwrap();
    let r = LayeredDisk::open(&bp, &[dir.path().join("l")], dir.path().join("a2")).unwrap();
    assert!(matches!(
        r.read_at(4096, &mut [0u8; 16]),
        Err(Error::BlockChecksum { block: 1, .. })
    ));
    assert!(r.read_at(0, &mut [0u8; 16]).is_ok());
}

#[test]
fn geometry_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bp, _) = base(dir.path(), 4 * 4096);
    let mut d = LayeredDisk::open(&bp, &[], dir.path().join("active")).unwrap();
    d.write_at(0, &[1u8; 10]).unwrap();
    d.checkpoint(&dir.path().join("l")).unwrap();
    let bp2 = dir.path().join("other.img");
    std::fs::write(&bp2, vec![0u8; 5 * 4096]).unwrap();
    assert!(matches!(
        LayeredDisk::open(&bp2, &[dir.path().join("l")], dir.path().join("a")),
        Err(Error::Geometry(_))
    ));
}

/// A fetcher that fills its files from copies kept aside, and fails for ranges at or past `bad`.
#[derive(Debug)]
struct Filler {
    files: Vec<(FileId, PathBuf, Vec<u8>)>,
    bad: u64,
    asked: std::sync::Mutex<Vec<(FileId, u64, u64)>>,
}

impl DiskFetch for Filler {
    fn ensure(&self, file: FileId, offset: u64, len: u64) -> std::result::Result<(), String> {
        self.asked.lock().unwrap().push((file, offset, len));
        let Some((_, path, data)) = self.files.iter().find(|(id, _, _)| *id == file) else {
            return Ok(());
        };
        if offset + len > self.bad {
            return Err(format!(
                "chunk at {offset} of {} is damaged",
                path.display()
            ));
        }
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let end = (offset + len).min(data.len() as u64) as usize;
        f.write_all_at(&data[offset as usize..end], offset).unwrap();
        Ok(())
    }
}

#[test]
fn a_fetcher_fills_the_base_and_layers_before_reads_and_its_errors_fail_them() {
    let dir = tempfile::tempdir().unwrap();
    let (bp, base_data) = base(dir.path(), 64 * 4096);
    // A layer with a few blocks, from a disk over the whole base.
    let mut d = LayeredDisk::open(&bp, &[], dir.path().join("active")).unwrap();
    d.write_at(8 * 4096, &[0xaa; 3 * 4096]).unwrap();
    d.write_at(40 * 4096 + 100, &[0xbb; 10]).unwrap();
    let layer = dir.path().join("l1");
    d.checkpoint(&layer).unwrap();
    let expect = read_all(&d);
    drop(d);
    // Both files made sparse, their bytes kept aside.
    let layer_data = std::fs::read(&layer).unwrap();
    for (p, len) in [(&bp, base_data.len()), (&layer, layer_data.len())] {
        std::fs::remove_file(p).unwrap();
        File::create(p).unwrap().set_len(len as u64).unwrap();
    }
    let ids = [
        FileId::of_path(&bp).unwrap(),
        FileId::of_path(&layer).unwrap(),
    ];
    let filler = Arc::new(Filler {
        files: vec![
            (ids[0], bp.clone(), base_data.clone()),
            (ids[1], layer.clone(), layer_data),
        ],
        bad: u64::MAX,
        asked: Default::default(),
    });
    let mut d =
        LayeredDisk::open(&bp, std::slice::from_ref(&layer), dir.path().join("a2")).unwrap();
    let mut v = vec![0u8; expect.len()];
    let e = d.read_at(0, &mut v).unwrap_err();
    assert!(
        matches!(e, Error::BlockChecksum { .. }),
        "a sparse layer read without its fetcher fails its checksums: {e}"
    );
    d.set_fetcher(filler.clone());
    let mut part = [0u8; 200];
    d.read_at(40 * 4096, &mut part).unwrap();
    assert_eq!(part[..], expect[40 * 4096..40 * 4096 + 200]);
    assert_eq!(read_all(&d), expect);
    let asked = filler.asked.lock().unwrap().clone();
    assert!(asked.iter().any(|a| a.0 == ids[0]) && asked.iter().any(|a| a.0 == ids[1]));
    // Writes of whole blocks read nothing; a partial write reads its block first.
    filler.asked.lock().unwrap().clear();
    d.write_at(0, &[1; 4096]).unwrap();
    assert!(filler.asked.lock().unwrap().is_empty());
    d.write_at(20 * 4096 + 1, &[1; 10]).unwrap();
    assert_eq!(filler.asked.lock().unwrap()[0], (ids[0], 20 * 4096, 4096));

    // A range the fetcher cannot have fails the read, naming the file; nothing is guessed.
    let failing = Arc::new(Filler {
        files: vec![(ids[0], bp.clone(), base_data)],
        bad: 30 * 4096,
        asked: Default::default(),
    });
    let mut d = LayeredDisk::open(&bp, &[layer], dir.path().join("a3")).unwrap();
    d.set_fetcher(failing);
    let mut buf = vec![0u8; 4096];
    d.read_at(10 * 4096, &mut buf).unwrap();
    let e = d.read_at(50 * 4096, &mut buf).unwrap_err();
    assert!(matches!(e, Error::Fetch { .. }), "{e}");
    assert!(e.to_string().contains("is damaged"), "{e}");
    let e = d.write_at(50 * 4096 + 1, &[1]).unwrap_err();
    assert!(matches!(e, Error::Fetch { .. }), "{e}");
}

#[test]
fn freeze_makes_the_same_layer_and_every_crash_point_opens_a_fresh_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (bp, mut model) = base(dir.path(), 16 * 4096);
    let active = dir.path().join("active");
    let mut d = LayeredDisk::open(&bp, &[], active.clone()).unwrap();
    d.write_at(0, &[1u8; 8192]).unwrap();
    model[..8192].fill(1);
    d.flush().unwrap();
    d.write_at(3 * 4096, &[4u8; 100]).unwrap();
    model[3 * 4096..3 * 4096 + 100].fill(4);
    let snap1 = model.clone();
    let l1 = dir.path().join("l1");
    let frozen = d.freeze(&l1).unwrap();
    assert_eq!(
        frozen.stats,
        DiskLayerStats {
            blocks: 3,
            bytes: 3 * 4096,
            file_bytes: 3 * 4096
        }
    );
    // Before into_written, the layer's index is not there yet.
    assert!(!index_path(&l1).exists());
    assert!(!index_path(&active).exists());
    let files: Vec<PathBuf> = frozen
        .into_written()
        .unwrap()
        .iter()
        .map(|w| w.path().to_path_buf())
        .collect();
    assert_eq!(
        files,
        [
            l1.clone(),
            index_path(&l1),
            active.clone(),
            index_path(&active)
        ]
    );
    // Before any sync the layer reads as checkpoint 1 and the new delta is empty.
    assert_eq!(d.active_stats().blocks, 0);
    assert!(
        d.freeze(&l1).is_err(),
        "an existing layer is never overwritten"
    );
    d.write_at(4096, &[2u8; 10]).unwrap();
    model[4096..4106].fill(2);
    assert_eq!(read_all(&d), model);
    d.flush().unwrap();
    let r = LayeredDisk::open(&bp, std::slice::from_ref(&l1), dir.path().join("r1")).unwrap();
    assert_eq!(read_all(&r), snap1);
    let resumed = LayeredDisk::open(&bp, std::slice::from_ref(&l1), active.clone()).unwrap();
    assert_eq!(read_all(&resumed), model);
    // The states a crash during the freeze can leave at the active path (module comment of
    // freeze.rs), each with a leftover data file but no index, or nothing: a fresh delta.
    for (case, data) in [
        ("old data, index removed", Some(vec![9u8; 4096])),
        ("nothing", None),
        ("new empty data", Some(vec![])),
    ] {
        let a = dir.path().join(format!("crash-{}", case.len()));
        if let Some(bytes) = &data {
            std::fs::write(&a, bytes).unwrap();
        }
        let c = LayeredDisk::open(&bp, std::slice::from_ref(&l1), a).unwrap();
        assert_eq!(c.active_stats().blocks, 0, "{case}");
        assert_eq!(read_all(&c), snap1, "{case}");
    }
}

#[test]
fn thaw_gives_a_failed_checkpoint_s_blocks_back_to_the_active_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (bp, mut model) = base(dir.path(), 16 * 4096);
    let active = dir.path().join("active");
    let mut d = LayeredDisk::open(&bp, &[], active.clone()).unwrap();
    d.write_at(0, &[1u8; 4096]).unwrap();
    let l1 = dir.path().join("l1");
    d.checkpoint(&l1).unwrap();
    d.write_at(4096, &[5u8; 8192]).unwrap();
    model[..4096].fill(1);
    model[4096..3 * 4096].fill(5);
    let before = d.active_stats();
    // Frozen, indexes written (as before a commit), then the checkpoint fails.
    let l2 = dir.path().join("l2");
    d.freeze(&l2).unwrap().into_written().unwrap();
    assert!(!d.thaw(&l1).unwrap(), "only the newest layer thaws");
    assert!(d.thaw(&l2).unwrap());
    assert_eq!(d.layer_paths(), std::slice::from_ref(&l1));
    assert_eq!(d.active_stats(), before);
    assert_eq!(read_all(&d), model);
    assert!(!l2.exists());
    // The blocks are the active delta's on disk too, and it keeps taking writes.
    let reopened = LayeredDisk::open(&bp, std::slice::from_ref(&l1), active.clone()).unwrap();
    assert_eq!(read_all(&reopened), model);
    d.write_at(0, &[7u8; 10]).unwrap();
    model[..10].fill(7);
    assert_eq!(read_all(&d), model);
    // A delta that took writes after the freeze is not thawed.
    let l3 = dir.path().join("l3");
    d.freeze(&l3).unwrap().into_written().unwrap();
    d.write_at(0, &[8u8; 10]).unwrap();
    assert!(!d.thaw(&l3).unwrap());
    assert_eq!(d.layer_paths(), [l1, l3]);
}
