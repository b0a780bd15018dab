//! Tests of [`super`]: the checkpoint store.

use super::*;
use crate::checkpoint::meta::tests::sample;
use crate::checkpoint::{DiskMeta, MemoryMeta};
use crate::disk::LayeredDisk;
use crate::file::{self, FileKind};
use crate::memory::{write_layer_from_slice_to, PageIndex, PAGE_SIZE};

#[test]
fn names() {
    for ok in ["a", "base", "c-1.2_x", &"a".repeat(64)] {
        validate_name(ok).unwrap();
    }
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "a..b",
        "a/b",
        "a b",
        "é",
        &"a".repeat(65),
        "a\0",
    ] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
}

/// Write a checkpoint whose memory holds `tag` in `pages` and whose disk was written with `tag`.
pub(crate) fn make(
    store: &CheckpointStore,
    name: &str,
    parent: Option<&str>,
    t: u64,
    pages: &PageIndex,
    disk: &mut LayeredDisk,
) {
    let dir = store.create_dir_for(name).unwrap();
    file::save(
        &dir.join(STATE_FILE),
        FileKind::State,
        &(name.to_string(), t),
    )
    .unwrap();
    let mem = vec![t as u8; 16 * PAGE_SIZE as usize];
    write_layer_from_slice_to(&dir.join(MEM_LAYER_FILE), pages, &mem).unwrap();
    disk.write_at(t * 512, &[t as u8; 512]).unwrap();
    let st = disk.checkpoint(&dir.join(disk_layer_file("root"))).unwrap();
    let mut m = sample(name, parent);
    m.created_unix_ms = t;
    m.memory = MemoryMeta {
        dirty_mib: mib(pages.byte_len()),
        layer_file: MEM_LAYER_FILE.into(),
    };
    m.disks = vec![DiskMeta {
        drive_id: "root".into(),
        delta_mib: mib(st.bytes),
        layer_file: disk_layer_file("root"),
    }];
    store.commit(&m).unwrap();
}

#[test]
fn a_memoized_store_reads_each_meta_once_until_it_changes_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("ckpt")).unwrap();
    let base_img = tmp.path().join("root.img");
    std::fs::write(&base_img, vec![0xaau8; 64 * 1024]).unwrap();
    let mut disk = LayeredDisk::open(&base_img, &[], tmp.path().join("active")).unwrap();
    make(&store, "a", None, 1, &PageIndex::full(16), &mut disk);
    make(&store, "b", Some("a"), 2, &PageIndex::full(2), &mut disk);
    let memo = store.memoized();
    let chain = memo.chain_to("b").unwrap();
    // Break a's meta.json on disk: the memo still has it, a plain store does not.
    let a_meta = store.dir_of("a").unwrap().join(META_FILE);
    std::fs::write(&a_meta, b"{").unwrap();
    assert_eq!(memo.chain_to("b").unwrap(), chain);
    assert!(memo.unmemoized().chain_to("b").is_err());
    assert!(store.chain_to("b").is_err());
    // A commit clears the memo: the broken file is read again.
    chain[0].save(&a_meta).unwrap();
    make(&memo, "c", Some("b"), 3, &PageIndex::full(1), &mut disk);
    std::fs::write(&a_meta, b"{").unwrap();
    assert!(memo.chain_to("c").is_err());
}

#[test]
fn create_list_chain_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("ckpt")).unwrap();
    let base_img = tmp.path().join("root.img");
    std::fs::write(&base_img, vec![0xaau8; 64 * 1024]).unwrap();
    let mut disk = LayeredDisk::open(&base_img, &[], tmp.path().join("active")).unwrap();
    make(&store, "a", None, 1, &PageIndex::full(16), &mut disk);
    make(
        &store,
        "b",
        Some("a"),
        2,
        &PageIndex::from_ranges([(2, 3)]),
        &mut disk,
    );
    make(
        &store,
        "c",
        Some("b"),
        3,
        &PageIndex::from_ranges([(3, 1), (10, 2)]),
        &mut disk,
    );
    assert!(matches!(
        store.create_dir_for("c"),
        Err(Error::CheckpointExists(_))
    ));
    // An incomplete checkpoint is invisible.
    store.create_dir_for("partial").unwrap();
    let names: Vec<_> = store.list().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(
        store
            .chain_to("c")
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(store.children("a").unwrap().len(), 1);
    let read_mem = |name: &str| {
        let chain = store.memory_chain(name).unwrap();
        let mut m = vec![0u8; chain.mem_size() as usize];
        chain.read_into(&mut m).unwrap();
        m
    };
    let read_disk = |name: &str, i: usize| {
        let d = LayeredDisk::open(
            &base_img,
            &store.disk_layers(name, "root").unwrap(),
            tmp.path().join(format!("act{i}")),
        )
        .unwrap();
        let mut v = vec![0u8; d.len() as usize];
        d.read_at(0, &mut v).unwrap();
        v
    };
    let (mc, dc) = (read_mem("c"), read_disk("c", 0));
    // Delete the middle one, then the base.
    let r = store.delete("b").unwrap();
    assert_eq!(r.merged_into, ["c"]);
    assert_eq!(store.get("c").unwrap().parent.as_deref(), Some("a"));
    assert_eq!((read_mem("c"), read_disk("c", 2)), (mc.clone(), dc.clone()));
    store.delete("a").unwrap();
    assert_eq!(store.get("c").unwrap().parent, None);
    assert_eq!((read_mem("c"), read_disk("c", 3)), (mc, dc));
    assert!(matches!(store.get("b"), Err(Error::NoSuchCheckpoint(_))));
    assert_eq!(store.cleanup_incomplete().unwrap(), ["partial"]);
    let left: Vec<_> = std::fs::read_dir(store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["c"]);
}

#[test]
fn commit_checks_parent_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path()).unwrap();
    let dir = store.create_dir_for("x").unwrap();
    let mut m = sample("x", Some("nope"));
    m.disks.clear();
    assert!(matches!(store.commit(&m), Err(Error::NoSuchCheckpoint(_))));
    m.parent = None;
    assert!(store.commit(&m).is_err(), "state file missing");
    std::fs::write(dir.join(STATE_FILE), b"x").unwrap();
    assert!(store.commit(&m).is_err(), "memory layer missing");
    write_layer_from_slice_to(&dir.join(MEM_LAYER_FILE), &PageIndex::new(), &[0u8; 4096]).unwrap();
    store.commit(&m).unwrap();
    assert!(store.exists("x"));
    assert!(matches!(store.chain_to("../x"), Err(Error::InvalidName(_))));
}

#[test]
fn commit_with_syncs_written_files_and_moves_head_only_when_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("ckpt")).unwrap();
    let base_img = tmp.path().join("root.img");
    std::fs::write(&base_img, vec![0u8; 64 * 1024]).unwrap();
    let active = store.active_dir().join("root.active");
    std::fs::create_dir_all(store.active_dir()).unwrap();
    let mut disk = LayeredDisk::open(&base_img, &[], active.clone()).unwrap();
    make(&store, "a", None, 1, &PageIndex::full(16), &mut disk);
    store.set_head(Some("a")).unwrap();
    drop(disk);
    // "b" the VMM's way: the state and the layers' indexes written in place, the disk frozen,
    // all synced by the one commit that also moves HEAD. Each try starts from "a" again (a
    // failed try's directory removed, the disk reopened on a's layers).
    let write_b = || {
        let dir = store.dir_of("b").unwrap();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let layers = store.disk_layers("a", "root").unwrap();
        let mut disk = LayeredDisk::open(&base_img, &layers, active.clone()).unwrap();
        let dir = store.create_dir_for("b").unwrap();
        let mut written = vec![crate::durable::WrittenFile::write_new(
            &dir.join(STATE_FILE),
            &file::encode(FileKind::State, b"b"),
        )
        .unwrap()];
        write_layer_from_slice_to(
            &dir.join(MEM_LAYER_FILE),
            &PageIndex::new(),
            &[0u8; 16 * PAGE_SIZE as usize],
        )
        .unwrap();
        disk.write_at(0, &[2u8; 512]).unwrap();
        let frozen = disk.freeze(&dir.join(disk_layer_file("root"))).unwrap();
        written.extend(frozen.into_written().unwrap());
        let mut m = sample("b", Some("a"));
        m.disks = vec![DiskMeta {
            drive_id: "root".into(),
            delta_mib: 0.0,
            layer_file: disk_layer_file("root"),
        }];
        (m, written)
    };
    let names_in = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    // A commit that fails (its parent is gone from the metadata) leaves HEAD and no meta.json.
    let (mut m, written) = write_b();
    m.parent = Some("gone".into());
    assert!(store.commit_with(&m, written, true, |_| Ok(())).is_err());
    assert!(!store.exists("b"));
    assert_eq!(store.head().as_deref(), Some("a"));
    // The writeback hook's error fails it too, before anything is renamed in.
    let (m, written) = write_b();
    let err = store.commit_with(&m, written, true, |_| {
        Err(std::io::Error::other("no writeback"))
    });
    assert!(format!("{:?}", err.unwrap_err()).contains("no writeback"));
    assert!(!store.exists("b"));
    assert_eq!(store.head().as_deref(), Some("a"));
    let leftovers = names_in(&store.active_dir());
    assert!(
        !leftovers.iter().any(|n| n.contains(".tmp-")),
        "{leftovers:?}"
    );
    // And one that succeeds: b is complete, bound to its files, and HEAD names it.
    let (m, written) = write_b();
    let seen = std::cell::Cell::new(0);
    let committed = store
        .commit_with(&m, written, true, |_| {
            seen.set(seen.get() + 1);
            Ok(())
        })
        .unwrap();
    // state, the disk layer, its index, the new active delta and its index, meta.json, HEAD.
    assert_eq!(seen.get(), 7);
    assert!(committed.files.contains_key(STATE_FILE));
    assert_eq!(store.head().as_deref(), Some("b"));
    store.check_restorable("b").unwrap();
    let names = names_in(&store.dir_of("b").unwrap());
    assert!(
        !names.iter().any(|n| n.contains("replaced-index")),
        "{names:?}"
    );
    let r = LayeredDisk::open(
        &base_img,
        &store.disk_layers("b", "root").unwrap(),
        tmp.path().join("r"),
    )
    .unwrap();
    let mut block = [0u8; 512];
    r.read_at(0, &mut block).unwrap();
    assert_eq!(block, [2u8; 512]);
}

#[test]
fn head_and_restorable_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("ckpt")).unwrap();
    let base_img = tmp.path().join("root.img");
    std::fs::write(&base_img, vec![0u8; 64 * 1024]).unwrap();
    let mut disk = LayeredDisk::open(&base_img, &[], tmp.path().join("active")).unwrap();
    make(&store, "a", None, 1, &PageIndex::full(16), &mut disk);
    make(
        &store,
        "b",
        Some("a"),
        2,
        &PageIndex::from_ranges([(1, 1)]),
        &mut disk,
    );
    assert_eq!(store.head(), None);
    store.set_head(Some("b")).unwrap();
    assert_eq!(store.head().as_deref(), Some("b"));
    assert!(store.active_dir().join(HEAD_FILE).is_file());
    store.check_restorable("b").unwrap();
    store.check_head_writable().unwrap();
    // A truncated base layer makes every checkpoint above it unrestorable.
    let layer = store.dir_of("a").unwrap().join(MEM_LAYER_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&layer)
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert!(store.check_restorable("b").is_err());
    // A HEAD that is a directory cannot be replaced.
    let head = store.active_dir().join(HEAD_FILE);
    std::fs::remove_file(&head).unwrap();
    std::fs::create_dir(&head).unwrap();
    assert!(store.check_head_writable().is_err());
    assert_eq!(store.head(), None);
}

#[test]
fn swapped_or_damaged_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("ckpt")).unwrap();
    let base_img = tmp.path().join("root.img");
    std::fs::write(&base_img, vec![0u8; 64 * 1024]).unwrap();
    let mut disk = LayeredDisk::open(&base_img, &[], tmp.path().join("active")).unwrap();
    make(&store, "a", None, 1, &PageIndex::full(16), &mut disk);
    make(&store, "b", None, 2, &PageIndex::full(16), &mut disk);
    let m = store.get("a").unwrap();
    assert_eq!(m.format_version, META_FORMAT_VERSION);
    assert_eq!(m.files.len(), 3, "{:?}", m.files);
    store.check_restorable("a").unwrap();
    store.verify_memory("a").unwrap();
    let (a, b) = (store.dir_of("a").unwrap(), store.dir_of("b").unwrap());
    let swap = |f: &str| {
        let keep = std::fs::read(a.join(f)).unwrap();
        std::fs::copy(b.join(f), a.join(f)).unwrap();
        let e = store.check_restorable("a").unwrap_err();
        assert!(matches!(e, Error::NotBound { .. }), "{f}: {e}");
        std::fs::write(a.join(f), keep).unwrap();
    };
    swap(STATE_FILE);
    swap("mem.layer.index");
    swap("disk.root.layer.index");
    store.check_restorable("a").unwrap();
    // Another checkpoint's memory layer, or 16 flipped bytes, fail the chunk checksums.
    std::fs::copy(b.join(MEM_LAYER_FILE), a.join(MEM_LAYER_FILE)).unwrap();
    assert!(matches!(
        store.verify_memory("a"),
        Err(Error::LayerChecksum { chunk: 0, .. })
    ));
}

#[test]
fn an_interrupted_delete_is_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path().join("ckpt")).unwrap();
    let base_img = tmp.path().join("root.img");
    std::fs::write(&base_img, vec![0u8; 64 * 1024]).unwrap();
    let mut disk = LayeredDisk::open(&base_img, &[], tmp.path().join("active")).unwrap();
    make(&store, "a", None, 1, &PageIndex::full(16), &mut disk);
    make(
        &store,
        "b",
        Some("a"),
        2,
        &PageIndex::from_ranges([(3, 2)]),
        &mut disk,
    );
    // A crash after the child's layer was merged, before its meta.json was resealed.
    std::fs::write(store.root().join(".deleting-a"), b"").unwrap();
    merge_into_child(
        &store.dir_of("a").unwrap().join(MEM_LAYER_FILE),
        &store.dir_of("b").unwrap().join(MEM_LAYER_FILE),
    )
    .unwrap();
    assert!(store.check_restorable("b").is_err());
    assert_eq!(store.finish_interrupted_deletes().unwrap(), ["a"]);
    store.check_restorable("b").unwrap();
    store.verify_memory("b").unwrap();
    assert!(!store.exists("a"));
    assert_eq!(
        store.finish_interrupted_deletes().unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn broken_chains_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path()).unwrap();
    for (n, p) in [("a", Some("b")), ("b", Some("a")), ("c", Some("gone"))] {
        std::fs::create_dir(tmp.path().join(n)).unwrap();
        let mut m = sample(n, p);
        m.disks.clear();
        m.save(&tmp.path().join(n).join(META_FILE)).unwrap();
    }
    assert!(matches!(store.chain_to("a"), Err(Error::BrokenChain(_))));
    assert!(matches!(store.chain_to("c"), Err(Error::BrokenChain(ref p)) if p == "gone"));
}
