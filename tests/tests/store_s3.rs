//! cairn-store against a real S3-compatible server on 127.0.0.1 (scripts/s3-server; s3s-fs by
//! default, Garage with CAIRN_TEST_S3=garage): push only what the bucket lacks, pull sparse and
//! through the chunk cache, a damaged or missing chunk named, gc, leases, manifest conflicts.
//! No KVM needed: the "sandbox" is a directory of files shaped like one.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_store::chunk::CHUNK_SIZE;
use cairn_store::manifest::MANIFEST_FORMAT;
use cairn_store::{LocalFile, LocalStore, Manifest, SandboxSpec, StoreError};
use cairn_tests::s3::S3Server;

const MIB: u64 = CHUNK_SIZE;

/// A sparse file of `size_mib` with chunk `k` filled with byte `fill` for each `(k, fill)`.
fn sparse(path: &Path, size_mib: u64, chunks: &[(u64, u8)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = File::create(path).unwrap();
    f.set_len(size_mib * MIB).unwrap();
    for &(k, fill) in chunks {
        f.write_all_at(&vec![fill; MIB as usize], k * MIB).unwrap();
    }
}

/// A sandbox-shaped directory: a config, a disk image and one checkpoint "c1".
fn sandbox_dir(root: &Path, own: u8) -> (PathBuf, Vec<LocalFile>) {
    let dir = root.join(format!("sb{own}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vm.json"), b"{}").unwrap();
    sparse(&dir.join("disk.img"), 64, &[(0, 1), (1, 2), (40, 3)]);
    sparse(
        &dir.join("checkpoints/c1/mem.layer"),
        32,
        &[(0, 4), (5, 5), (6, own)],
    );
    let files = [
        ("vm.json", None),
        ("disk.img", None),
        ("checkpoints/c1/mem.layer", Some("c1")),
    ]
    .iter()
    .map(|(rel, ck)| LocalFile {
        path: dir.join(rel),
        rel: rel.to_string(),
        checkpoint: ck.map(str::to_string),
    })
    .collect();
    (dir, files)
}

fn manifest(name: &str, dir: &Path) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        sandbox: name.into(),
        host: "test".into(),
        pushed_at_ms: 0,
        origin_dir: dir.to_path_buf(),
        spec: SandboxSpec {
            cpus: 1,
            mem_mib: 32,
            disk_gib: 1,
            idle_timeout: 0,
            head_checkpoint: "c1".into(),
        },
        files: Vec::new(),
    }
}

#[test]
fn store_push_uploads_only_missing_chunks_and_pull_restores_sparse_files() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let r = s3.remote();
    let local = LocalStore::in_home(&tmp.path().join("home1"));
    let (dir_a, files_a) = sandbox_dir(tmp.path(), 10);
    let (dir_b, files_b) = sandbox_dir(tmp.path(), 11);

    let pa = r.push(&local, manifest("a", &dir_a), &files_a).unwrap();
    // vm.json, 3 disk chunks, 3 memory chunks.
    assert_eq!((pa.chunks, pa.chunks_uploaded), (7, 7), "{pa:?}");
    let pb = r.push(&local, manifest("b", &dir_b), &files_b).unwrap();
    assert_eq!(
        (pb.chunks, pb.chunks_uploaded),
        (7, 1),
        "a fork differing in one chunk uploads one: {pb:?}"
    );
    let again = r.push(&local, manifest("a", &dir_a), &files_a).unwrap();
    assert_eq!(
        again.chunks_uploaded, 0,
        "a second push of the same files uploads nothing"
    );
    assert_eq!(r.list_sandboxes().unwrap(), ["a", "b"]);

    // Another home pulls a, then b: b's shared chunks come from the chunk cache.
    let home2 = tmp.path().join("home2");
    let local2 = LocalStore::in_home(&home2);
    let out_a = home2.join("pull-a");
    let (m, pull_a) = r.pull(&local2, "a", &out_a).unwrap();
    assert_eq!(m.spec.head_checkpoint, "c1");
    assert_eq!(pull_a.chunks_fetched, 7);
    for rel in ["vm.json", "disk.img", "checkpoints/c1/mem.layer"] {
        let (x, y) = (dir_a.join(rel), out_a.join(rel));
        assert_eq!(
            std::fs::read(&x).unwrap(),
            std::fs::read(&y).unwrap(),
            "{rel}"
        );
    }
    let disk = std::fs::metadata(out_a.join("disk.img")).unwrap();
    assert_eq!(disk.len(), 64 * MIB);
    assert!(
        disk.blocks() * 512 <= 4 * MIB,
        "the pulled disk stays sparse: {} bytes allocated",
        disk.blocks() * 512
    );
    let (_, pull_b) = r.pull(&local2, "b", &home2.join("pull-b")).unwrap();
    assert_eq!(
        (pull_b.chunks_fetched, pull_b.chunks_cached),
        (1, 6),
        "{pull_b:?}"
    );
    let e = r
        .pull(&local2, "nope", &home2.join("pull-nope"))
        .unwrap_err();
    assert!(matches!(e, StoreError::NoSuchSandbox(_)), "{e}");
}

#[test]
fn store_a_damaged_or_missing_chunk_fails_the_pull_naming_sandbox_and_checkpoint() {
    let s3 = S3Server::start();
    let Some(data) = s3.data.clone() else {
        eprintln!("SKIP: {} keeps no objects as files", s3.kind);
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let r = s3.remote();
    let local = LocalStore::in_home(&tmp.path().join("home1"));
    let (dir, files) = sandbox_dir(tmp.path(), 10);
    r.push(&local, manifest("a", &dir), &files).unwrap();
    // The memory layer's own chunk (filled with 10) is only in checkpoint c1.
    let id = cairn_store::chunk::ChunkId::of(&vec![10u8; MIB as usize]);
    let object = data.join(format!("t/chunks/{}/{id}", &id.as_str()[..2]));
    assert!(object.is_file(), "{} not found", object.display());

    std::fs::write(&object, vec![9u8; MIB as usize]).unwrap();
    let local2 = LocalStore::in_home(&tmp.path().join("home2"));
    let e = r
        .pull(&local2, "a", &tmp.path().join("out1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sandbox \"a\"")
            && e.contains("checkpoint \"c1\" (mem.layer)")
            && e.contains("does not match its hash"),
        "{e}"
    );
    std::fs::remove_file(&object).unwrap();
    let e = r
        .pull(&local2, "a", &tmp.path().join("out2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint \"c1\"") && e.contains("missing"),
        "{e}"
    );
    // A push puts it back (the bucket lacks it), and the pull succeeds.
    assert_eq!(
        r.push(&local, manifest("a", &dir), &files)
            .unwrap()
            .chunks_uploaded,
        1
    );
    r.pull(&local2, "a", &tmp.path().join("out3")).unwrap();
}

#[test]
fn store_gc_deletes_unreferenced_chunks_past_the_grace_period_only() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let r = s3.remote();
    let local = LocalStore::in_home(&tmp.path().join("home1"));
    let (dir_a, files_a) = sandbox_dir(tmp.path(), 10);
    let (dir_b, files_b) = sandbox_dir(tmp.path(), 11);
    r.push(&local, manifest("a", &dir_a), &files_a).unwrap();
    // b pushed once, then again with a new memory chunk: its old own chunk is unreferenced.
    r.push(&local, manifest("b", &dir_b), &files_b).unwrap();
    sparse(
        &dir_b.join("checkpoints/c1/mem.layer"),
        32,
        &[(0, 4), (5, 5), (6, 12)],
    );
    r.push(&local, manifest("b", &dir_b), &files_b).unwrap();

    let g = r.gc(Duration::from_secs(3600), false).unwrap();
    assert_eq!((g.chunks, g.kept_young, g.deleted), (9, 1, 0), "{g:?}");
    let dry = r.gc(Duration::ZERO, true).unwrap();
    assert_eq!(dry.deleted, 1);
    let g = r.gc(Duration::ZERO, false).unwrap();
    assert_eq!((g.manifests, g.referenced, g.deleted), (2, 8, 1), "{g:?}");
    assert_eq!(g.bytes_deleted, MIB);
    assert_eq!(r.gc(Duration::ZERO, false).unwrap().deleted, 0);
    let local2 = LocalStore::in_home(&tmp.path().join("home2"));
    r.pull(&local2, "a", &tmp.path().join("out-a")).unwrap();
    r.pull(&local2, "b", &tmp.path().join("out-b")).unwrap();
}

#[test]
fn store_lease_is_held_by_one_host_until_it_expires() {
    let s3 = S3Server::start();
    if !s3.conditional_puts() {
        eprintln!("SKIP: {} ignores conditional PutObject", s3.kind);
        return;
    }
    let r = s3.remote();
    let ttl = Duration::from_secs(2);
    r.acquire_lease("a", "host1", ttl).unwrap();
    let e = r.acquire_lease("a", "host2", ttl).unwrap_err();
    assert!(
        matches!(&e, StoreError::Leased { holder, .. } if holder == "host1"),
        "{e}"
    );
    assert!(e.to_string().contains("leased by host host1"), "{e}");
    r.acquire_lease("a", "host1", ttl).unwrap(); // renewal
    r.acquire_lease("b", "host2", ttl).unwrap(); // another sandbox
    std::thread::sleep(Duration::from_millis(2200));
    r.acquire_lease("a", "host2", ttl).unwrap(); // takeover after expiry
    assert!(r.acquire_lease("a", "host1", ttl).is_err());
    assert!(
        !r.release_lease("a", "host1").unwrap(),
        "not host1's to release"
    );
    assert!(r.release_lease("a", "host2").unwrap());
    r.acquire_lease("a", "host1", ttl).unwrap();
}

#[test]
fn store_a_manifest_write_over_a_changed_manifest_is_a_conflict() {
    let s3 = S3Server::start();
    if !s3.conditional_puts() {
        eprintln!("SKIP: {} ignores conditional PutObject", s3.kind);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let r = s3.remote();
    let local = LocalStore::in_home(&tmp.path().join("home1"));
    let (dir, files) = sandbox_dir(tmp.path(), 10);
    r.push(&local, manifest("a", &dir), &files).unwrap();
    let (m, v) = r.manifest("a").unwrap().unwrap();
    let e = r.put_manifest(&m, None).unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    // A later push changes the manifest (and so its ETag); a write still based on `v` loses.
    let mut newer = m.clone();
    newer.pushed_at_ms += 1;
    r.put_manifest(&newer, Some(v.clone())).unwrap();
    let e = r.put_manifest(&m, Some(v)).unwrap_err();
    assert!(e.to_string().contains("pushed by another host"), "{e}");
}
