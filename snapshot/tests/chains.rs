//! Chains of 10 memory + disk checkpoints (with a branch), deleted in random order: after every delete,
//! every remaining checkpoint restores to exactly what a reference model recorded for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_snapshot::checkpoint::{
    disk_layer_file, now_unix_ms, CheckpointMeta, CheckpointStore, DiskMeta, MemoryMeta,
    MEM_LAYER_FILE, META_FORMAT_VERSION, STATE_FILE,
};
use cairn_snapshot::disk::LayeredDisk;
use cairn_snapshot::file::{self, FileKind};
use cairn_snapshot::memory::{write_layer_from_slice_to, PageIndex, PAGE_SIZE};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const MEM_PAGES: u64 = 256;
const DISK_LEN: usize = 300 * 1024 + 513;

/// What a checkpoint must restore to.
struct Expected {
    mem: Vec<u8>,
    disk: Vec<u8>,
    state: (String, u64),
}

struct Vm {
    mem: Vec<u8>,
    disk: LayeredDisk,
    disk_model: Vec<u8>,
    dirty: PageIndex,
    parent: Option<String>,
}

fn dirty_memory(vm: &mut Vm, rng: &mut StdRng) {
    for _ in 0..rng.gen_range(1..12) {
        let start = rng.gen_range(0..MEM_PAGES);
        let len = rng.gen_range(1..=(MEM_PAGES - start).min(24));
        let byte: u8 = rng.gen();
        let (s, e) = (
            (start * PAGE_SIZE) as usize,
            ((start + len) * PAGE_SIZE) as usize,
        );
        vm.mem[s..e].fill(byte);
        vm.mem[s] = rng.gen(); // pages differ from each other
                               // Build the dirty set as KVM reports it: a bitmap.
        let mut words = vec![0u64; (MEM_PAGES / 64) as usize];
        for p in start..start + len {
            words[(p / 64) as usize] |= 1 << (p % 64);
        }
        vm.dirty.add_bitmap(&words, 0);
    }
}

fn dirty_disk(vm: &mut Vm, rng: &mut StdRng) {
    for _ in 0..rng.gen_range(1..10) {
        let off = rng.gen_range(0..DISK_LEN);
        let len = rng.gen_range(1..=(DISK_LEN - off).min(20_000));
        if rng.gen_bool(0.2) {
            vm.disk.discard(off as u64, len as u64).unwrap();
            vm.disk_model[off..off + len].fill(0);
        } else {
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            vm.disk.write_at(off as u64, &data).unwrap();
            vm.disk_model[off..off + len].copy_from_slice(&data);
        }
    }
}

fn checkpoint(
    store: &CheckpointStore,
    vm: &mut Vm,
    name: &str,
    seq: u64,
    expected: &mut BTreeMap<String, Expected>,
) {
    let dir = store.create_dir_for(name).unwrap();
    file::save(
        &dir.join(STATE_FILE),
        FileKind::State,
        &(name.to_string(), seq),
    )
    .unwrap();
    let pages = if vm.parent.is_none() {
        PageIndex::full(MEM_PAGES)
    } else {
        std::mem::take(&mut vm.dirty)
    };
    vm.dirty = PageIndex::new();
    write_layer_from_slice_to(&dir.join(MEM_LAYER_FILE), &pages, &vm.mem).unwrap();
    let st = vm
        .disk
        .checkpoint(&dir.join(disk_layer_file("root")))
        .unwrap();
    let meta = CheckpointMeta {
        name: name.into(),
        parent: vm.parent.clone(),
        created_unix_ms: now_unix_ms() * 100 + seq, // strictly increasing
        format_version: META_FORMAT_VERSION,
        cpu_template: None,
        memory: MemoryMeta {
            dirty_mib: pages.byte_len() as f64 / 1048576.0,
            layer_file: MEM_LAYER_FILE.into(),
        },
        disks: vec![DiskMeta {
            drive_id: "root".into(),
            delta_mib: st.bytes as f64 / 1048576.0,
            layer_file: disk_layer_file("root"),
        }],
        pause_ms: 0.0,
        write_ms: 0.0,
        total_ms: 0.0,
        files: Default::default(),
    };
    store.commit(&meta).unwrap();
    vm.parent = Some(name.into());
    expected.insert(
        name.into(),
        Expected {
            mem: vm.mem.clone(),
            disk: vm.disk_model.clone(),
            state: (name.into(), seq),
        },
    );
}

fn restore(
    store: &CheckpointStore,
    base: &Path,
    name: &str,
    active: PathBuf,
) -> (Vec<u8>, LayeredDisk) {
    let chain = store.memory_chain(name).unwrap();
    let plan = chain.resolve();
    // The plan covers each page at most once, ascending.
    for w in plan.windows(2) {
        assert!(w[0].guest_offset + w[0].len <= w[1].guest_offset);
    }
    let mut mem = vec![0u8; chain.mem_size() as usize];
    chain.read_into(&mut mem).unwrap();
    let disk = LayeredDisk::open(base, &store.disk_layers(name, "root").unwrap(), active).unwrap();
    (mem, disk)
}

fn verify_all(
    store: &CheckpointStore,
    base: &Path,
    scratch: &Path,
    expected: &BTreeMap<String, Expected>,
    round: usize,
) {
    let listed: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
    let mut want: Vec<&String> = expected.keys().collect();
    want.sort();
    let mut got: Vec<&String> = listed.iter().collect();
    got.sort();
    assert_eq!(got, want);
    for (name, exp) in expected {
        let (mem, disk) = restore(
            store,
            base,
            name,
            scratch.join(format!("verify-{round}-{name}")),
        );
        assert!(mem == exp.mem, "memory of {name} after round {round}");
        let mut d = vec![0u8; DISK_LEN];
        disk.read_at(0, &mut d).unwrap();
        assert!(d == exp.disk, "disk of {name} after round {round}");
        let dir = store.dir_of(name).unwrap();
        let state: (String, u64) =
            file::load(&dir.join(STATE_FILE), FileKind::State, 1 << 10).unwrap();
        assert_eq!(state, exp.state);
    }
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("checkpoints")).unwrap();
    let base = tmp.path().join("rootfs.img");
    let base_data: Vec<u8> = (0..DISK_LEN).map(|i| (i % 241) as u8).collect();
    std::fs::write(&base, &base_data).unwrap();
    let mut vm = Vm {
        mem: vec![0u8; (MEM_PAGES * PAGE_SIZE) as usize],
        disk: LayeredDisk::open(&base, &[], tmp.path().join("active-main")).unwrap(),
        disk_model: base_data,
        dirty: PageIndex::new(),
        parent: None,
    };
    let mut expected = BTreeMap::new();
    let mut seq = 0;
    for i in 0..10 {
        dirty_memory(&mut vm, &mut rng);
        dirty_disk(&mut vm, &mut rng);
        checkpoint(&store, &mut vm, &format!("c{i}"), seq, &mut expected);
        seq += 1;
    }
    // A branch: restore c4 and take two checkpoints of its own (c4 now has two children).
    let (mem, disk) = restore(&store, &base, "c4", tmp.path().join("active-branch"));
    let mut branch = Vm {
        mem,
        disk,
        disk_model: expected["c4"].disk.clone(),
        dirty: PageIndex::new(),
        parent: Some("c4".into()),
    };
    assert!(branch.mem == expected["c4"].mem);
    for j in 0..2 {
        dirty_memory(&mut branch, &mut rng);
        dirty_disk(&mut branch, &mut rng);
        checkpoint(&store, &mut branch, &format!("b{j}"), seq, &mut expected);
        seq += 1;
    }
    verify_all(&store, &base, tmp.path(), &expected, 0);
    // Delete in random order until two are left, checking everything after each delete.
    let mut names: Vec<String> = expected.keys().cloned().collect();
    names.shuffle(&mut rng);
    for (round, name) in names.iter().take(names.len() - 2).enumerate() {
        store.delete(name).unwrap();
        expected.remove(name);
        verify_all(&store, &base, tmp.path(), &expected, round + 1);
    }
    // Only the checkpoint directories remain.
    let left = std::fs::read_dir(store.root()).unwrap().count();
    assert_eq!(left, 2);
}

#[test]
fn random_deletes_keep_every_checkpoint_restorable() {
    for seed in 0..4 {
        run(seed);
    }
}

#[test]
fn delete_base_first_then_middle() {
    // Deterministic order: the base, then a middle one, then the newest.
    let mut rng = StdRng::seed_from_u64(99);
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("checkpoints")).unwrap();
    let base = tmp.path().join("rootfs.img");
    std::fs::write(&base, vec![7u8; DISK_LEN]).unwrap();
    let mut vm = Vm {
        mem: vec![0u8; (MEM_PAGES * PAGE_SIZE) as usize],
        disk: LayeredDisk::open(&base, &[], tmp.path().join("active")).unwrap(),
        disk_model: vec![7u8; DISK_LEN],
        dirty: PageIndex::new(),
        parent: None,
    };
    let mut expected = BTreeMap::new();
    for i in 0..5 {
        dirty_memory(&mut vm, &mut rng);
        dirty_disk(&mut vm, &mut rng);
        checkpoint(&store, &mut vm, &format!("c{i}"), i, &mut expected);
    }
    for name in ["c0", "c2", "c4"] {
        store.delete(name).unwrap();
        expected.remove(name);
        verify_all(&store, &base, tmp.path(), &expected, 0);
    }
    assert_eq!(store.get("c1").unwrap().parent, None);
    assert_eq!(store.get("c3").unwrap().parent.as_deref(), Some("c1"));
    assert_eq!(store.chain_to("c3").unwrap().len(), 2);
}
