//! Tests of [`super`]: OCI layouts and `docker save` archives built here with the `tar` crate.

use super::*;
use std::io::Write;

/// One tar entry to build.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Dev(&'a str),
    /// A raw name (bypassing the builder's own path checks), regular file.
    RawFile(&'a str, &'a [u8]),
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn raw_name(h: &mut tar::Header, name: &str) {
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name = [0; 100];
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::File(p, data) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Link(p, t) => {
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hard(p, t) => {
                let mut h = header(tar::EntryType::Link, 0, 0o644);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Dev(p) => {
                let mut h = header(tar::EntryType::Char, 0, 0o666);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::RawFile(p, data) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
                raw_name(&mut h, p);
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI layout of `layers` (gzipped) in `dir`.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let h = sha(data);
        fs::write(blobs.join(&h), data).unwrap();
        format!("sha256:{h}")
    };
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let gz = gzip(l);
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(&gz), "size": gz.len()
            })
        })
        .collect();
    let config = put(b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": layer_descs,
    });
    let m = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": 1}]});
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// A `docker save` archive of `layers` (uncompressed) at `file`.
fn docker_archive(file: &Path, layers: &[Vec<u8>]) {
    let mut b = tar::Builder::new(File::create(file).unwrap());
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{i:064}/layer.tar");
        let mut h = header(tar::EntryType::Regular, l.len() as u64, 0o644);
        b.append_data(&mut h, &name, l.as_slice()).unwrap();
        names.push(name);
    }
    let manifest =
        serde_json::json!([{"Config": "c.json", "RepoTags": ["t:latest"], "Layers": names}]);
    let text = manifest.to_string();
    let mut h = header(tar::EntryType::Regular, text.len() as u64, 0o644);
    b.append_data(&mut h, "manifest.json", text.as_bytes())
        .unwrap();
    b.finish().unwrap();
}

fn base_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            E::Dir("usr/"),
            E::Dir("usr/bin/"),
            E::Link("bin", "usr/bin"),
            E::File("usr/bin/tool", b"v1"),
            E::Dir("etc/"),
            E::File("etc/gone", b"x"),
            E::Dir("opt/"),
            E::File("opt/a", b"a"),
            E::File("opt/b", b"b"),
            E::Link("etc/abs", "/usr/bin"),
        ]),
        layer(&[
            // Written through the in-image symlink bin -> usr/bin.
            E::File("bin/tool", b"v2"),
            E::File("etc/.wh.gone", b""),
            E::File("opt/.wh..wh..opq", b""),
            E::File("opt/c", b"c"),
            // An absolute symlink target means the image's root.
            E::File("etc/abs/viaabs", b"ok"),
            E::Hard("usr/bin/tool2", "usr/bin/tool"),
        ]),
    ]
}

fn check_base(root: &Path) {
    assert_eq!(fs::read(root.join("usr/bin/tool")).unwrap(), b"v2");
    assert_eq!(fs::read(root.join("usr/bin/tool2")).unwrap(), b"v2");
    assert_eq!(fs::read(root.join("usr/bin/viaabs")).unwrap(), b"ok");
    assert!(!root.join("etc/gone").exists(), "whiteout");
    let opt: Vec<_> = fs::read_dir(root.join("opt"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(opt, ["c"], "opaque whiteout");
}

#[test]
fn an_oci_layout_unpacks_in_order_with_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    oci_layout(&layout, &base_layers());
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    assert_eq!(unpack_oci_layout(&layout, &root).unwrap(), 2);
    check_base(&root);
}

#[test]
fn a_docker_archive_unpacks_in_order_with_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("img.tar");
    docker_archive(&file, &base_layers());
    let (root, scratch) = (tmp.path().join("root"), tmp.path().join("scratch"));
    fs::create_dir(&root).unwrap();
    fs::create_dir(&scratch).unwrap();
    assert_eq!(unpack_docker_archive(&file, &root, &scratch).unwrap(), 2);
    check_base(&root);
}

/// Everything bad is refused with a clear error, and nothing lands outside the root.
#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", layer(&[E::RawFile("../escape", b"x")]), "'..'"),
        (
            "absolute",
            layer(&[E::RawFile("/escape", b"x")]),
            "absolute",
        ),
        ("device", layer(&[E::Dev("dev/kmsg")]), "device node"),
        (
            "symlink up",
            layer(&[E::Link("up", "../.."), E::File("up/escape", b"x")]),
            "outside the image",
        ),
        (
            "symlink chain",
            layer(&[
                E::Dir("a/"),
                E::Link("a/b", ".."),
                E::Link("c", "a/b/.."),
                E::File("c/escape", b"x"),
            ]),
            "outside the image",
        ),
        (
            "hard link out",
            layer(&[E::Hard("h", "../../etc/passwd")]),
            "'..'",
        ),
        (
            "loop",
            layer(&[E::Link("l", "l"), E::File("l/x", b"x")]),
            "symlinks",
        ),
    ];
    for (name, data, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b/root");
        fs::create_dir_all(&root).unwrap();
        let err = apply_layer(&data[..], &root, "layer 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{name}: {err}");
        assert!(!err.contains('\n'), "{name}: one line: {err}");
        let outside: Vec<_> = walk(tmp.path())
            .into_iter()
            .filter(|p| !p.starts_with(&root) && p.file_name().is_some_and(|n| n == "escape"))
            .collect();
        assert!(outside.is_empty(), "{name}: wrote {outside:?}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        v.push(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            v.extend(walk(&p));
        }
    }
    v
}

#[test]
fn corrupt_and_truncated_inputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A blob whose bytes no longer match its digest.
    let layout = tmp.path().join("layout");
    oci_layout(&layout, &base_layers());
    let blobs = layout.join("blobs/sha256");
    let mut biggest: Vec<_> = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    biggest.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let victim = biggest.last().unwrap();
    let mut data = fs::read(victim).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    fs::write(victim, &data).unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let err = unpack_oci_layout(&layout, &root).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");
    // Not a layout at all; a malformed index.
    let err = unpack_oci_layout(tmp.path(), &root)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an OCI image layout"), "{err}");
    fs::write(layout.join("index.json"), "{").unwrap();
    let err = unpack_oci_layout(&layout, &root).unwrap_err().to_string();
    assert!(err.contains("malformed"), "{err}");
    // A truncated docker archive, and a truncated layer.
    let file = tmp.path().join("img.tar");
    docker_archive(&file, &base_layers());
    let full = fs::read(&file).unwrap();
    fs::write(&file, &full[..full.len() / 3 + 100]).unwrap();
    let scratch = tmp.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let err = unpack_docker_archive(&file, &root, &scratch)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated") || err.contains("manifest.json"),
        "{err}"
    );
    let l = layer(&[E::File("big", &[7u8; 5000])]);
    let err = apply_layer(&l[..1024], &root, "layer 0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    // Garbage.
    let err = apply_layer(&[0x55u8; 1024][..], &root, "layer 0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt"), "{err}");
}
