use super::*;
use crate::checkpoint::store::tests::make;
use crate::disk::LayeredDisk;
use crate::memory::PageIndex;

const BLOCK: u64 = crate::disk::DEFAULT_BLOCK_SIZE as u64;

/// A store with the chain a <- b <- c (memory and one disk), and the disk's base image.
struct Fixture {
    tmp: tempfile::TempDir,
    src: CheckpointStore,
    base: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = CheckpointStore::open(tmp.path().join("src")).unwrap();
    let base = tmp.path().join("root.img");
    std::fs::write(&base, vec![0xaau8; 1 << 20]).unwrap();
    let mut disk = LayeredDisk::open(&base, &[], tmp.path().join("active")).unwrap();
    // Each checkpoint also writes whole blocks of its own, so merges really copy blocks.
    let own = |disk: &mut LayeredDisk, t: u8, blocks: &[u64]| {
        for &b in blocks {
            disk.write_at(b * BLOCK, &vec![t; BLOCK as usize]).unwrap();
        }
    };
    own(&mut disk, 0x10, &[4, 5, 9]);
    make(&src, "a", None, 1, &PageIndex::full(16), &mut disk);
    own(&mut disk, 0x20, &[6, 9]);
    let b = PageIndex::from_ranges([(2, 3)]);
    make(&src, "b", Some("a"), 2, &b, &mut disk);
    own(&mut disk, 0x30, &[7]);
    let c = PageIndex::from_ranges([(3, 1), (10, 2)]);
    make(&src, "c", Some("b"), 3, &c, &mut disk);
    Fixture { tmp, src, base }
}

impl Fixture {
    fn store(&self, name: &str) -> CheckpointStore {
        CheckpointStore::open(self.tmp.path().join(name)).unwrap()
    }

    /// Memory and disk contents of `ckpt` as `store` restores them.
    fn read(&self, store: &CheckpointStore, ckpt: &str) -> (Vec<u8>, Vec<u8>) {
        let chain = store.memory_chain(ckpt).unwrap();
        let mut mem = vec![0u8; chain.mem_size() as usize];
        chain.read_into(&mut mem).unwrap();
        let active = self
            .tmp
            .path()
            .join(format!("read-{}", rand::random::<u64>()));
        let d = LayeredDisk::open(
            &self.base,
            &store.disk_layers(ckpt, "root").unwrap(),
            active,
        )
        .unwrap();
        let mut disk = vec![0u8; d.len() as usize];
        d.read_at(0, &mut disk).unwrap();
        (mem, disk)
    }
}

fn names(store: &CheckpointStore) -> Vec<String> {
    store.list().unwrap().into_iter().map(|m| m.name).collect()
}

fn nlink(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().nlink()
}

#[test]
fn a_fork_links_the_chain_and_restores_the_same_contents() {
    let f = fixture();
    let want = f.read(&f.src, "b");
    let dest = f.store("fork");
    let r = f.src.fork_chain("b", &dest).unwrap();
    assert_eq!(r.checkpoints, ["a", "b"]);
    // state + memory layer and index + disk layer and index, per checkpoint.
    assert_eq!((r.files_linked, r.files_copied, r.bytes_copied), (10, 0, 0));
    assert!(r.bytes_linked > 0);
    assert_eq!(names(&dest), ["a", "b"]);
    assert_eq!(dest.get("b").unwrap(), f.src.get("b").unwrap());
    assert_eq!(f.read(&dest, "b"), want);
    let layer = dest.dir_of("b").unwrap().join("mem.layer");
    assert_eq!(nlink(&layer), 2);
    // meta.json is the fork's own.
    assert_eq!(nlink(&dest.dir_of("b").unwrap().join("meta.json")), 1);
}

#[test]
fn deleting_in_the_source_never_breaks_the_fork() {
    let f = fixture();
    let (want_b, want_c) = (f.read(&f.src, "b"), f.read(&f.src, "c"));
    let fork_b = f.store("fork-b");
    f.src.fork_chain("b", &fork_b).unwrap();
    let fork_c = f.store("fork-c");
    f.src.fork_chain("c", &fork_c).unwrap();
    // The base merges into b (shared with both forks), then b into c (shared with fork-c).
    f.src.delete("a").unwrap();
    f.src.delete("b").unwrap();
    assert_eq!(names(&f.src), ["c"]);
    assert_eq!(f.read(&f.src, "c"), want_c);
    assert_eq!(f.read(&fork_b, "b"), want_b);
    assert_eq!(f.read(&fork_c, "c"), want_c);
    // The source can go entirely.
    std::fs::remove_dir_all(f.src.root()).unwrap();
    assert_eq!(f.read(&fork_b, "b"), want_b);
    assert_eq!(f.read(&fork_c, "c"), want_c);
    // And the forks delete their own history independently.
    fork_c.delete("a").unwrap();
    fork_c.delete("b").unwrap();
    assert_eq!(f.read(&fork_c, "c"), want_c);
    assert_eq!(f.read(&fork_b, "b"), want_b);
}

#[test]
fn deleting_in_the_fork_never_breaks_the_source() {
    let f = fixture();
    let want_c = f.read(&f.src, "c");
    let fork = f.store("fork");
    f.src.fork_chain("c", &fork).unwrap();
    // Interleaved: the source folds b into c, the fork folds a into b and then b into c; the
    // disk merges append at offsets each store's own index knows, so a shared file would break.
    f.src.delete("b").unwrap();
    fork.delete("a").unwrap();
    fork.delete("b").unwrap();
    assert_eq!(names(&fork), ["c"]);
    assert_eq!(f.read(&fork, "c"), want_c);
    assert_eq!(f.read(&f.src, "c"), want_c);
    f.src.delete("a").unwrap();
    assert_eq!(f.read(&f.src, "c"), want_c);
    assert_eq!(f.read(&fork, "c"), want_c);
    // Removing the fork leaves the source whole.
    std::fs::remove_dir_all(fork.root()).unwrap();
    assert_eq!(f.read(&f.src, "c"), want_c);
}

#[test]
fn bad_forks_are_refused() {
    let f = fixture();
    assert!(matches!(
        f.src.fork_chain("nope", &f.store("x")),
        Err(Error::NoSuchCheckpoint(_))
    ));
    assert!(f.src.fork_chain("c", &f.src).is_err());
    let dest = f.store("dest");
    f.src.fork_chain("a", &dest).unwrap();
    assert!(matches!(
        f.src.fork_chain("b", &dest),
        Err(Error::CheckpointExists(ref n)) if n == "a"
    ));
}

#[test]
fn sparse_copies_keep_holes_and_data() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let file = File::create(&src).unwrap();
    file.set_len(64 << 20).unwrap();
    file.write_all_at(b"head", 0).unwrap();
    file.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    let dst = tmp.path().join("dst");
    copy_sparse(&src, &dst).unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    // Two 1 MiB chunks hold data; the rest stays holes.
    assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 <= 4 << 20);
    assert!(
        copy_sparse(&src, &dst).is_err(),
        "an existing file is not overwritten"
    );
    // A private copy only when the file is shared.
    assert!(!make_private(&dst).unwrap());
    let link = tmp.path().join("link");
    std::fs::hard_link(&dst, &link).unwrap();
    assert!(make_private(&dst).unwrap());
    assert_eq!((nlink(&dst), nlink(&link)), (1, 1));
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&link).unwrap());
}

#[test]
fn drive_bases_are_recorded_per_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path()).unwrap();
    assert_eq!(store.drive_base("disk").unwrap(), None);
    store
        .set_drive_base("disk", Path::new("/x/disk.img"))
        .unwrap();
    store.set_drive_base("other", Path::new("/y")).unwrap();
    assert_eq!(
        store.drive_base("disk").unwrap(),
        Some(PathBuf::from("/x/disk.img"))
    );
    assert!(store.set_drive_base("../d", Path::new("/z")).is_err());
    // The file is not a checkpoint.
    assert!(store.list().unwrap().is_empty());
    assert!(store.cleanup_incomplete().unwrap().is_empty());
    std::fs::write(tmp.path().join(BASES_FILE), b"{not json").unwrap();
    assert!(store.drive_base("disk").is_err());
}
