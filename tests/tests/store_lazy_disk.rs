//! Lazy fetch of disks (docs/storage.md, "Lazy fetch: disk blocks on first read"): a lazily
//! pulled sandbox's base image and disk layers filled on first read from a real S3 server on
//! 127.0.0.1 (scripts/s3-server), through the block server the VMM asks.
//!
//! - Without KVM: a base image and a disk layer pushed, pulled lazily (left sparse), then read
//!   through `LayeredDisk` whose fetcher is a `ServedDisk` connected to the store's block server
//!   over a Unix socket: the disk reads exactly as the original, one read fetches only the
//!   chunks it touches, and a damaged chunk fails the read naming sandbox and checkpoint.
//! - With KVM: a Linux sandbox pushed from one `CAIRN_HOME`, pulled lazily into another and
//!   started there; the guest reads a file from disk (its page cache dropped before the push)
//!   and gets its bytes, with far fewer bytes fetched than the disk holds; with the bucket's
//!   disk-layer chunks damaged, a third home's read of that file fails with an I/O error and
//!   the reason, naming sandbox and checkpoint, is in `cairn logs` and `disk-fetch.err`.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cairn_snapshot::disk::{LayeredDisk, ServedDisk};
use cairn_store::chunk::CHUNK_SIZE;
use cairn_store::lazy::{LazyFiles, LazySet};
use cairn_store::manifest::MANIFEST_FORMAT;
use cairn_store::{LocalFile, LocalStore, Manifest, Remote, SandboxSpec};
use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::s3::{S3Server, SMALL_COLD_SANDBOX};

const MIB: u64 = CHUNK_SIZE;

/// A 16 MiB base image with data in MiB 0..6 and 12, and checkpoint c1's layer over it (blocks
/// written in MiB 2 and 14). Returns the disk as it reads.
fn make_disk(dir: &Path) -> Vec<u8> {
    let base: Vec<u8> = (0..16 * MIB)
        .map(|i| match i / MIB {
            0..=5 | 12 => (i % 253) as u8 + 1,
            _ => 0,
        })
        .collect();
    std::fs::create_dir_all(dir.join("checkpoints/c1")).unwrap();
    std::fs::write(dir.join("disk.img"), &base).unwrap();
    let mut d = LayeredDisk::open(&dir.join("disk.img"), &[], dir.join("active")).unwrap();
    d.write_at(2 * MIB + 4096, &[0xa5; 3 * 4096]).unwrap();
    d.write_at(14 * MIB, &[0x5a; 8192]).unwrap();
    d.checkpoint(&dir.join("checkpoints/c1/disk.rootfs.layer"))
        .unwrap();
    let mut all = vec![0u8; 16 * MIB as usize];
    d.read_at(0, &mut all).unwrap();
    all
}

fn files(dir: &Path) -> Vec<LocalFile> {
    let mut out = vec![LocalFile {
        path: dir.join("disk.img"),
        rel: "disk.img".into(),
        checkpoint: None,
    }];
    for f in ["disk.rootfs.layer", "disk.rootfs.layer.index"] {
        out.push(LocalFile {
            path: dir.join("checkpoints/c1").join(f),
            rel: format!("checkpoints/c1/{f}"),
            checkpoint: Some("c1".into()),
        });
    }
    out
}

fn is_data(e: &cairn_store::manifest::FileEntry) -> bool {
    !e.path.ends_with(".index")
}

/// Pull sandbox "d" lazily into `out`; its lazy list.
fn pull_lazily(r: &Remote, local: &LocalStore, out: &Path) -> LazyFiles {
    let (m, report) = r.pull_with(local, "d", out, &is_data).unwrap();
    assert!(
        report.bytes_fetched < 64 << 10,
        "only the index: {report:?}"
    );
    assert_eq!(std::fs::metadata(out.join("disk.img")).unwrap().blocks(), 0);
    let lazy = LazyFiles {
        sandbox: "d".into(),
        files: m.files.iter().filter(|f| is_data(f)).cloned().collect(),
    };
    // As a lazy pull leaves it: the set fills the files while this is there.
    lazy.save(out).unwrap();
    lazy
}

/// The disk at `out` read through the store's block server on a Unix socket, as the VMM reads
/// it; `check` runs with the disk, then the server's set is returned to it for its counters.
fn through_block_server(
    out: &Path,
    set: &LazySet<'_>,
    check: impl FnOnce(&mut LayeredDisk),
) -> Vec<String> {
    let sock = out.join("blocks.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let (stream, _) = listener.accept().unwrap();
            cairn_store::disk_server::serve(stream, set, "disk of sandbox \"d\"", &|e| {
                errors.lock().unwrap().push(e.to_string())
            })
            .unwrap();
        });
        let fetch = Arc::new(ServedDisk::connect(&sock).unwrap());
        let mut d = LayeredDisk::open(
            &out.join("disk.img"),
            &[out.join("checkpoints/c1/disk.rootfs.layer")],
            out.join("active"),
        )
        .unwrap();
        d.set_fetcher(fetch);
        check(&mut d);
        drop(d);
        server.join().unwrap();
    });
    errors.into_inner().unwrap()
}

#[test]
fn store_lazy_disk_blocks_come_from_the_bucket_on_first_read_and_damage_is_named() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let r = s3.remote();
    let src = tmp.path().join("src");
    let expect = make_disk(&src);
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        sandbox: "d".into(),
        host: "test".into(),
        pushed_at_ms: 0,
        origin_dir: src.clone(),
        spec: SandboxSpec {
            cpus: 1,
            mem_mib: 8,
            disk_gib: 1,
            idle_timeout: 0,
            head_checkpoint: "c1".into(),
        },
        files: Vec::new(),
    };
    r.push(
        &LocalStore::in_home(&tmp.path().join("h1")),
        manifest,
        &files(&src),
    )
    .unwrap();

    let local = LocalStore::in_home(&tmp.path().join("h2"));
    let out = tmp.path().join("out");
    let lazy = pull_lazily(&r, &local, &out);
    let set = LazySet::open(&out, &lazy, &r, &local).unwrap();
    let errors = through_block_server(&out, &set, |d| {
        // One 4 KiB read in MiB 3 of the base: one chunk fetched, nothing else.
        let mut buf = vec![0u8; 4096];
        d.read_at(3 * MIB + 8192, &mut buf).unwrap();
        assert_eq!(buf[..], expect[(3 * MIB + 8192) as usize..][..4096]);
        assert_eq!(set.stats.disk_bytes_fetched.load(Ordering::Relaxed), MIB);
        // The whole disk: exactly the original, layer over base.
        let mut all = vec![0xeeu8; expect.len()];
        d.read_at(0, &mut all).unwrap();
        assert!(all == expect, "the disk reads as pushed");
    });
    assert!(errors.is_empty(), "{errors:?}");
    let data: u64 = lazy.files.iter().map(|f| f.content.data_bytes()).sum();
    assert_eq!(set.stats.disk_bytes_fetched.load(Ordering::Relaxed), data);

    // Damage the layer's chunks in the bucket: a fresh home's read of them fails, named; the
    // base's chunks still come.
    let Some(bucket) = s3.data.clone() else {
        eprintln!("SKIP damage: {} keeps no objects as files", s3.kind);
        return;
    };
    let layer = lazy
        .files
        .iter()
        .find(|f| f.path.ends_with("disk.rootfs.layer"))
        .unwrap();
    for c in &layer.content.chunks {
        let object = bucket.join(format!("t/chunks/{}/{}", &c.id.as_str()[..2], c.id));
        std::fs::write(&object, vec![0x55u8; c.len as usize]).unwrap();
    }
    let local3 = LocalStore::in_home(&tmp.path().join("h3"));
    let out3 = tmp.path().join("out3");
    let lazy3 = pull_lazily(&r, &local3, &out3);
    let set3 = LazySet::open(&out3, &lazy3, &r, &local3).unwrap();
    let errors = through_block_server(&out3, &set3, |d| {
        let mut buf = vec![0u8; 4096];
        d.read_at(4 * MIB, &mut buf).unwrap();
        assert_eq!(buf[..], expect[4 * MIB as usize..][..4096]);
        buf.fill(0);
        let e = d.read_at(2 * MIB + 4096, &mut buf).unwrap_err().to_string();
        assert!(
            e.contains("sandbox \"d\"")
                && e.contains("checkpoint \"c1\" (disk.rootfs.layer)")
                && e.contains("does not match its hash"),
            "{e}"
        );
        assert!(buf.iter().all(|&b| b == 0), "nothing was read");
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
}

fn page_server_stats(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("page-server.json")).unwrap()).unwrap()
}

#[test]
fn store_lazy_disk_a_pulled_sandbox_reads_its_disk_on_first_read() {
    let name = "store_lazy_disk_a_pulled_sandbox_reads_its_disk_on_first_read";
    if !kvm_available(name) {
        return;
    }
    let s3 = S3Server::start();
    retry_on_guest_flake(name, || {
        let a = s3.home();
        a.create("sb", SMALL_COLD_SANDBOX);
        // About 1 MiB of fresh data (awk: guest kernel code is slow on emulated KVM), then the
        // page cache dropped, so the restored guest reads it from its disk.
        let sum = a.sh(
            "sb",
            "awk 'BEGIN { for (n = 0; n < 100000; n++) print n, \"disk\" }' > /root/big; sync; md5sum /root/big; echo 3 > /proc/sys/vm/drop_caches",
        );
        a.ok(&["stop", "sb"]);
        a.ok(&["push", "sb"]);

        let mut b = s3.home();
        b.env
            .push(("CAIRN_STORE_LAZY_BACKGROUND".into(), "0".into()));
        let pull: serde_json::Value =
            serde_json::from_str(&b.ok(&["pull", "sb", "--lazy", "--json"])).unwrap();
        let dir = b.home.path().join("sandboxes/sb");
        assert_eq!(
            std::fs::metadata(dir.join("disk.img")).unwrap().blocks(),
            0,
            "the base image is left in the bucket"
        );
        let t0 = std::time::Instant::now();
        b.restore_like(&["start", "sb"], &["start", "sb"]);
        assert_eq!(b.sh("sb", "md5sum /root/big"), sum);
        let first_read = t0.elapsed().as_secs_f64();
        let s = page_server_stats(&dir);
        let disk = s["disk_lazy_bytes"].as_u64().unwrap();
        let fetched = s["fetch"]["disk_bytes_fetched"].as_u64().unwrap();
        eprintln!(
            "lazy disk: pull {} B fetched; start + md5sum {first_read:.2} s; disk {} MiB of data, {:.2} MiB fetched for reads ({:.1}%), memory {:.2} of {} MiB fetched; {s}",
            pull["bytes_fetched"],
            disk >> 20,
            fetched as f64 / (1 << 20) as f64,
            100.0 * fetched as f64 / disk as f64,
            s["fetch"]["fault_bytes_fetched"].as_u64().unwrap() as f64 / (1 << 20) as f64,
            s["memory_lazy_bytes"].as_u64().unwrap() >> 20,
        );
        assert!(fetched > 0, "the file came from the bucket: {s}");
        assert!(fetched * 4 < disk, "far fewer bytes than the disk's: {s}");
        b.ok(&["stop", "sb"]);
        assert!(dir.join("lazy.json").is_file(), "no background fetch");

        // The bucket's disk-layer chunks damaged: a third home's read of the file fails with
        // an I/O error, and the reason names the sandbox and checkpoint.
        let Some(data) = s3.data.clone() else {
            return;
        };
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(data.join("t/sandboxes/sb/manifest.json")).unwrap(),
        )
        .unwrap();
        for f in m["files"].as_array().unwrap() {
            let path = f["path"].as_str().unwrap();
            if !(path.contains("/disk.") && path.ends_with(".layer")) {
                continue;
            }
            for c in f["chunks"].as_array().unwrap() {
                let id = c["id"].as_str().unwrap();
                let object = data.join(format!("t/chunks/{}/{id}", &id[..2]));
                std::fs::write(&object, vec![0x55u8; c["len"].as_u64().unwrap() as usize]).unwrap();
            }
        }
        b.ok(&["rm", "sb"]);
        let mut c = s3.home();
        c.env
            .push(("CAIRN_STORE_LAZY_BACKGROUND".into(), "0".into()));
        c.ok(&["pull", "sb", "--lazy"]);
        let named = |text: &str| {
            text.contains("sandbox \"sb\"")
                && text.contains("checkpoint \"")
                && text.contains("does not match its hash")
        };
        let start = c.run(&["start", "sb"]);
        if !start.status.success() {
            // The guest needed a damaged block while it woke: the start says why.
            let err = String::from_utf8_lossy(&start.stderr);
            assert!(named(&err), "{err}");
            return;
        }
        let (code, out) = c.exec("sb", &["md5sum", "/root/big"]);
        assert_ne!(code, 0, "a damaged chunk is never read as data: {out}");
        assert_ne!(out, sum);
        let cdir = c.home.path().join("sandboxes/sb");
        let why = std::fs::read_to_string(cdir.join("disk-fetch.err")).unwrap();
        assert!(named(&why), "{why}");
        let logs = c.ok(&["logs", "sb"]);
        assert!(named(&logs), "the VMM's log says why: {logs}");
        c.ok(&["stop", "sb"]);
    });
}
