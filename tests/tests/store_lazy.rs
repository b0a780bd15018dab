//! Lazy fetch (docs/storage.md, "Lazy fetch"): memory layers pulled on first touch from a real
//! S3 server on 127.0.0.1 (scripts/s3-server).
//!
//! - Without KVM: a two-layer memory chain pushed, pulled lazily (the layers left sparse) and
//!   read back block by block through the page source exactly as restore maps it; a damaged
//!   chunk is an error naming sandbox and checkpoint, never zeros.
//! - With KVM: a Linux sandbox pushed from one `CAIRN_HOME`, pulled lazily into another and
//!   started there, its memory served by userfaultfd from the bucket; then, with the bucket's
//!   memory chunks damaged, a third home's start fails naming the sandbox and checkpoint.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cairn_snapshot::memory::{write_layer_from_slice_to, PageIndex};
use cairn_store::chunk::CHUNK_SIZE;
use cairn_store::lazy::{ChainSource, LazyFiles, LazySet};
use cairn_store::manifest::MANIFEST_FORMAT;
use cairn_store::page_server::{PageSource, BLOCK};
use cairn_store::{LocalFile, LocalStore, Manifest, Remote, SandboxSpec};
use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::s3::{S3Server, SMALL_COLD_SANDBOX};
use cairn_tests::sandbox::CairnHome;

const MIB: usize = CHUNK_SIZE as usize;
const PAGE: usize = 4096;

/// Page `p` of layer `layer`: a pattern no other page has.
fn page_bytes(layer: u8, p: usize) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (i as u8) ^ (p as u8).wrapping_mul(7) ^ layer.wrapping_mul(101) ^ 1)
        .collect()
}

/// A chain in `dir`: c1 (base: pages 0..600 and 1500..1600 of an 8 MiB memory) and c2 (a diff
/// of pages 100..300 and 1590..1700). Returns the memory as restore sees it.
fn make_chain(dir: &Path) -> Vec<u8> {
    let size = 8 * MIB;
    let mut base = vec![0u8; size];
    let base_pages = PageIndex::from_ranges([(0, 600), (1500, 100)]);
    for p in (0..600).chain(1500..1600) {
        base[p * PAGE..(p + 1) * PAGE].copy_from_slice(&page_bytes(1, p));
    }
    let mut diff = vec![0u8; size];
    let diff_pages = PageIndex::from_ranges([(100, 200), (1590, 110)]);
    let mut expect = base.clone();
    for p in (100..300).chain(1590..1700) {
        let b = page_bytes(2, p);
        diff[p * PAGE..(p + 1) * PAGE].copy_from_slice(&b);
        expect[p * PAGE..(p + 1) * PAGE].copy_from_slice(&b);
    }
    for (c, mem, pages) in [("c1", &base, &base_pages), ("c2", &diff, &diff_pages)] {
        std::fs::create_dir_all(dir.join("checkpoints").join(c)).unwrap();
        write_layer_from_slice_to(&dir.join(format!("checkpoints/{c}/mem.layer")), pages, mem)
            .unwrap();
    }
    expect
}

fn chain_files(dir: &Path) -> Vec<LocalFile> {
    ["c1", "c2"]
        .iter()
        .flat_map(|c| {
            ["mem.layer", "mem.layer.index"].map(|f| LocalFile {
                path: dir.join(format!("checkpoints/{c}/{f}")),
                rel: format!("checkpoints/{c}/{f}"),
                checkpoint: Some(c.to_string()),
            })
        })
        .collect()
}

fn manifest(dir: &Path) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        sandbox: "a".into(),
        host: "test".into(),
        pushed_at_ms: 0,
        origin_dir: dir.to_path_buf(),
        spec: SandboxSpec {
            cpus: 1,
            mem_mib: 8,
            disk_gib: 1,
            idle_timeout: 0,
            head_checkpoint: "c2".into(),
        },
        files: Vec::new(),
    }
}

fn is_layer(e: &cairn_store::manifest::FileEntry) -> bool {
    e.path.ends_with("/mem.layer")
}

/// Pull "a" lazily into `out`; the layers' paths and the lazy list.
fn pull_lazily(r: &Remote, local: &LocalStore, out: &Path) -> (Vec<PathBuf>, LazyFiles) {
    let (m, report) = r.pull_with(local, "a", out, &is_layer).unwrap();
    assert!(
        report.bytes_fetched < 64 << 10,
        "only the indexes' chunks: {report:?}"
    );
    let layers = ["c1", "c2"].map(|c| out.join(format!("checkpoints/{c}/mem.layer")));
    for l in &layers {
        assert_eq!(
            std::fs::metadata(l).unwrap().blocks(),
            0,
            "{} is sparse",
            l.display()
        );
    }
    let lazy = LazyFiles {
        sandbox: "a".into(),
        files: m.files.iter().filter(|f| is_layer(f)).cloned().collect(),
    };
    // As a lazy pull leaves it: the set fills the files while this is there.
    lazy.save(out).unwrap();
    (layers.to_vec(), lazy)
}

#[test]
fn store_lazy_pages_come_from_the_bucket_as_restore_maps_them_and_damage_is_named() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let r = s3.remote();
    let src = tmp.path().join("src");
    let expect = make_chain(&src);
    r.push(
        &LocalStore::in_home(&tmp.path().join("h1")),
        manifest(&src),
        &chain_files(&src),
    )
    .unwrap();

    let local = LocalStore::in_home(&tmp.path().join("h2"));
    let out = tmp.path().join("out");
    let (layers, lazy) = pull_lazily(&r, &local, &out);
    let set = LazySet::open(&out, &lazy, &r, &local).unwrap();
    let source = ChainSource::open(&set, &layers).unwrap();
    // One block, then every block: each exactly the restored memory.
    let mut buf = vec![0u8; BLOCK as usize];
    source.fill(6 * BLOCK, &mut buf).unwrap();
    assert_eq!(buf[..], expect[6 * MIB..7 * MIB]);
    let fetched = set
        .stats
        .fault_bytes_fetched
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fetched, 2 * BLOCK, "block 6 needs one chunk of each layer");

    // Presence is remembered across runs once recorded (after the files are synced): a new
    // set over the same files (a restarted page server) neither fetches block 6's chunks nor
    // reads them from the cache.
    let count = |s: &LazySet<'_>| {
        use std::sync::atomic::Ordering::Relaxed;
        (
            s.stats.chunks_recorded_present.load(Relaxed),
            s.stats.fault_bytes_fetched.load(Relaxed),
            s.stats.chunks_from_cache.load(Relaxed),
        )
    };
    let again = LazySet::open(&out, &lazy, &r, &local).unwrap();
    assert_eq!(count(&again).0, 0, "nothing recorded before the flush");
    drop(again);
    set.flush_presence().unwrap();
    let again = LazySet::open(&out, &lazy, &r, &local).unwrap();
    let source2 = ChainSource::open(&again, &layers).unwrap();
    source2.fill(6 * BLOCK, &mut buf).unwrap();
    assert_eq!(buf[..], expect[6 * MIB..7 * MIB]);
    assert_eq!(count(&again), (2, 0, 0), "block 6 was here already");
    drop(source2);
    drop(again);
    // A record names a file by device and inode: a file since replaced (or another pull's)
    // is not taken as present.
    let c1 = &layers[0];
    let copy = c1.with_extension("copy");
    std::fs::copy(c1, &copy).unwrap();
    std::fs::rename(&copy, c1).unwrap();
    let again = LazySet::open(&out, &lazy, &r, &local).unwrap();
    assert_eq!(count(&again).0, 1, "only c2's chunk still counts");
    drop(again);
    for b in 0..8 {
        buf.fill(0xee);
        source.fill(b * BLOCK, &mut buf).unwrap();
        assert!(
            buf[..] == expect[b as usize * MIB..(b as usize + 1) * MIB],
            "block {b} differs"
        );
    }
    // A part of a block (a region's end), then completion: the files are whole.
    let mut part = vec![0u8; 3 * PAGE];
    source.fill(5 * BLOCK + 2 * PAGE as u64, &mut part).unwrap();
    assert_eq!(part[..], expect[5 * MIB + 2 * PAGE..5 * MIB + 5 * PAGE]);
    // (The set's own c1 is the replaced file's old inode: open c1 again to complete it.)
    let set = LazySet::open(&out, &lazy, &r, &local).unwrap();
    set.complete().unwrap();
    for (c, l) in ["c1", "c2"].iter().zip(&layers) {
        let original = std::fs::read(src.join(format!("checkpoints/{c}/mem.layer"))).unwrap();
        assert!(std::fs::read(l).unwrap() == original, "{c} completed");
    }
    // Ending the lazy state removes the list and the record; a set still open (another
    // process's) writes nothing into the files after that, though it never saw the chunks.
    let late = LazySet::open(&out, &lazy, &r, &local).unwrap();
    set.finish().unwrap();
    assert!(!out.join("lazy.json").exists() && !out.join("lazy.present").exists());
    // (As a checkpoint delete may, merging into it.)
    let changed = vec![0xabu8; MIB];
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options()
            .write(true)
            .open(&layers[0])
            .unwrap(),
        &changed,
        0,
    )
    .unwrap();
    let source3 = ChainSource::open(&late, &layers[..1]).unwrap();
    source3.fill(0, &mut buf).unwrap();
    assert!(
        buf == changed,
        "the late set read the file as it is now, and wrote nothing"
    );
    drop(source3);
    drop(late);

    // Damage every chunk of c2's layer in the bucket: a fresh home's fault is refused, named.
    let Some(data) = s3.data.clone() else {
        eprintln!("SKIP damage: {} keeps no objects as files", s3.kind);
        return;
    };
    let c2 = lazy.files.iter().find(|f| f.path.contains("c2")).unwrap();
    for c in &c2.content.chunks {
        let object = data.join(format!("t/chunks/{}/{}", &c.id.as_str()[..2], c.id));
        std::fs::write(&object, vec![0x55u8; c.len as usize]).unwrap();
    }
    let local3 = LocalStore::in_home(&tmp.path().join("h3"));
    let out3 = tmp.path().join("out3");
    let (layers3, lazy3) = pull_lazily(&r, &local3, &out3);
    let set = LazySet::open(&out3, &lazy3, &r, &local3).unwrap();
    let source = ChainSource::open(&set, &layers3).unwrap();
    let e = source.fill(0, &mut buf).unwrap_err();
    assert!(
        e.contains("sandbox \"a\"")
            && e.contains("checkpoint \"c2\" (mem.layer)")
            && e.contains("does not match its hash"),
        "{e}"
    );
    // A block only c1 supplies still comes (its chunks are whole).
    source.fill(3 * BLOCK, &mut buf).unwrap();
    assert_eq!(buf[..], expect[3 * MIB..4 * MIB]);
}

#[test]
fn store_lazy_a_lazy_push_names_chunks_without_reading_them_and_says_which_it_cannot_have() {
    use std::collections::HashMap;
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let r = s3.remote();
    let src = tmp.path().join("src");
    make_chain(&src);
    r.push(
        &LocalStore::in_home(&tmp.path().join("h1")),
        manifest(&src),
        &chain_files(&src),
    )
    .unwrap();
    let local = LocalStore::in_home(&tmp.path().join("h2"));
    let out = tmp.path().join("out");
    let (layers, lazy) = pull_lazily(&r, &local, &out);
    let known: HashMap<PathBuf, _> = lazy
        .files
        .iter()
        .map(|f| (f.path_under(&out).unwrap(), f.clone()))
        .collect();
    let as_b = |name: &str| Manifest {
        sandbox: name.into(),
        ..manifest(&out)
    };
    // Pushed under another name from the sparse files: every chunk is named as the pull
    // recorded it, none read, none uploaded (the bucket has them all).
    let push = r
        .push_with(&local, as_b("b"), &chain_files(&out), &known)
        .unwrap();
    assert_eq!(push.chunks_uploaded, 0, "{push:?}");
    let (first, _) = r.manifest("a").unwrap().unwrap();
    let (second, _) = r.manifest("b").unwrap().unwrap();
    assert_eq!(
        first.files, second.files,
        "the same manifest as the eager original's"
    );
    for l in &layers {
        assert_eq!(std::fs::metadata(l).unwrap().blocks(), 0, "nothing fetched");
    }

    // A chunk the bucket lost (a gc after another push): neither here nor in the cache, so
    // the push fails naming it; once fetched into the file, the push uploads it from there.
    let Some(data) = s3.data.clone() else {
        eprintln!("SKIP lost chunk: {} keeps no objects as files", s3.kind);
        return;
    };
    let c2 = lazy.files.iter().find(|f| f.path.contains("c2")).unwrap();
    let lost = &c2.content.chunks[0];
    let object = data.join(format!("t/chunks/{}/{}", &lost.id.as_str()[..2], lost.id));
    std::fs::remove_file(&object).unwrap();
    let e = r
        .push_with(&local, as_b("c"), &chain_files(&out), &known)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sandbox \"c\"")
            && e.contains("checkpoint \"c2\" (mem.layer)")
            && e.contains(lost.id.as_str())
            && e.contains("never fetched here"),
        "{e}"
    );
    assert!(r.manifest("c").unwrap().is_none(), "no manifest written");
    let other = LocalStore::in_home(&tmp.path().join("h3"));
    let src_entry = c2.clone();
    let mut bytes = vec![0u8; lost.len as usize];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(src.join("checkpoints/c2/mem.layer")).unwrap(),
        &mut bytes,
        lost.offset,
    )
    .unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options()
            .write(true)
            .open(src_entry.path_under(&out).unwrap())
            .unwrap(),
        &bytes,
        lost.offset,
    )
    .unwrap();
    let push = r
        .push_with(&other, as_b("c"), &chain_files(&out), &known)
        .unwrap();
    assert_eq!(
        push.chunks_uploaded, 1,
        "the lost chunk, from the file: {push:?}"
    );
    assert!(std::fs::read(&object).unwrap() == bytes);
}

fn stats(h: &CairnHome, name: &str) -> serde_json::Value {
    let p = h
        .home
        .path()
        .join("sandboxes")
        .join(name)
        .join("page-server.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

#[test]
fn store_lazy_a_pulled_sandbox_starts_with_memory_fetched_on_first_touch() {
    let name = "store_lazy_a_pulled_sandbox_starts_with_memory_fetched_on_first_touch";
    if !kvm_available(name) {
        return;
    }
    let s3 = S3Server::start();
    retry_on_guest_flake(name, || {
        let a = s3.home();
        a.create("sb", SMALL_COLD_SANDBOX);
        a.sh("sb", "echo lazy > /root/f; sync");
        a.ok(&["stop", "sb"]);
        a.ok(&["push", "sb"]);

        // Another home pulls it lazily: the memory layers stay in the bucket.
        let mut b = s3.home();
        b.env
            .push(("CAIRN_STORE_LAZY_BACKGROUND".into(), "0".into()));
        let pull: serde_json::Value =
            serde_json::from_str(&b.ok(&["pull", "sb", "--lazy", "--json"])).unwrap();
        eprintln!("lazy pull: {pull}");
        let dir = b.home.path().join("sandboxes/sb");
        assert!(dir.join("lazy.json").is_file());

        let t0 = std::time::Instant::now();
        b.restore_like(&["start", "sb"], &["start", "sb"]);
        assert_eq!(b.sh("sb", "cat /root/f"), "lazy\n");
        let first_exec = t0.elapsed().as_secs_f64();
        let s = stats(&b, "sb");
        eprintln!("served start: first exec after {first_exec:.2} s; page server: {s}");
        let (lazy, fetched) = (
            s["lazy_bytes"].as_u64().unwrap(),
            s["fetch"]["fault_bytes_fetched"].as_u64().unwrap(),
        );
        assert!(s["faults"].as_u64().unwrap() > 0, "{s}");
        assert!(fetched > 0 && fetched < lazy, "{s}");
        b.ok(&["stop", "sb"]);
        // Without its background fetch the sandbox stays lazy; its next start is served too.
        assert!(dir.join("lazy.json").is_file());

        // The bucket's memory chunks damaged: a third home's start fails, naming them.
        let Some(data) = s3.data.clone() else {
            return;
        };
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(data.join("t/sandboxes/sb/manifest.json")).unwrap(),
        )
        .unwrap();
        let mut damaged = Vec::new();
        for f in m["files"].as_array().unwrap() {
            if !f["path"].as_str().unwrap().ends_with("/mem.layer") {
                continue;
            }
            damaged.push(format!("checkpoint {} (mem.layer)", f["checkpoint"]));
            for c in f["chunks"].as_array().unwrap() {
                let id = c["id"].as_str().unwrap();
                let object = data.join(format!("t/chunks/{}/{id}", &id[..2]));
                std::fs::write(&object, vec![0x55u8; c["len"].as_u64().unwrap() as usize]).unwrap();
            }
        }
        b.ok(&["rm", "sb"]);
        let c = s3.home();
        c.ok(&["pull", "sb", "--lazy"]);
        let out = c.run(&["start", "sb"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("sandbox \"sb\"")
                && damaged.iter().any(|d| err.contains(d.as_str()))
                && err.contains("does not match its hash"),
            "{err}"
        );
    });
}
