//! `cairn image import|ls|rm` end to end through the CLI, no KVM needed: an OCI layout and a
//! `docker save` archive built here with the `tar` crate are imported, listed and removed; a
//! hostile archive is refused with one line and leaves nothing behind.

use std::fs;
use std::path::Path;

use cairn_tests::sandbox::CairnHome;
use sha2::{Digest, Sha256};

fn have(prog: &str) -> bool {
    std::process::Command::new(prog).arg("-V").output().is_ok()
}

fn layer(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn oci_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |d: &[u8]| {
        fs::write(blobs.join(hex(d)), d).unwrap();
        format!("sha256:{}", hex(d))
    };
    let ls: Vec<_> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": put(l), "size": l.len()}))
        .collect();
    let m = put(serde_json::json!({"schemaVersion": 2, "layers": ls})
        .to_string()
        .as_bytes());
    fs::write(
        dir.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m}]}).to_string(),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn docker_archive(file: &Path, layers: &[Vec<u8>]) {
    let mut b = tar::Builder::new(fs::File::create(file).unwrap());
    let mut names = vec![];
    for (i, l) in layers.iter().enumerate() {
        let name = format!("l{i}/layer.tar");
        let mut h = tar::Header::new_gnu();
        h.set_size(l.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, &name, l.as_slice()).unwrap();
        names.push(name);
    }
    let m = serde_json::json!([{"Layers": names}]).to_string();
    let mut h = tar::Header::new_gnu();
    h.set_size(m.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "manifest.json", m.as_bytes())
        .unwrap();
    b.finish().unwrap();
}

#[test]
fn images_import_list_and_remove_and_bad_ones_leave_nothing() {
    if !have("mkfs.ext4") {
        eprintln!("SKIP images_import_list_and_remove_and_bad_ones_leave_nothing: no mkfs.ext4");
        return;
    }
    let h = CairnHome::new();
    let tmp = tempfile::tempdir().unwrap();
    let layers = vec![
        layer(&[
            ("usr/bin/sh", b"#!fake", 0o755),
            ("etc/os-release", b"ID=test\n", 0o644),
        ]),
        layer(&[
            ("etc/.wh.os-release", b"", 0o644),
            ("etc/app", b"v2\n", 0o644),
        ]),
    ];
    let layout = tmp.path().join("layout");
    oci_layout(&layout, &layers);
    let out = h.ok(&[
        "image",
        "import",
        "t1",
        "--oci-layout",
        layout.to_str().unwrap(),
    ]);
    assert!(
        out.contains("imported") && out.contains("2 layers"),
        "{out}"
    );
    let archive = tmp.path().join("img.tar");
    docker_archive(&archive, &layers);
    h.ok(&[
        "image",
        "import",
        "t2",
        "--docker-archive",
        archive.to_str().unwrap(),
    ]);
    let ls = h.ok(&["image", "ls", "--json"]);
    let names: Vec<String> = ls
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["t1", "t2"], "{ls}");
    // The image holds the layers' result plus cairn's agent and init (debugfs reads the ext4).
    let disk = h.home.path().join("images/named/t1/rootfs.ext4");
    let cat = |p: &str| {
        let o = std::process::Command::new("debugfs")
            .args(["-R", &format!("cat {p}")])
            .arg(&disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(cat("/etc/app"), "v2\n");
    assert_eq!(cat("/etc/os-release"), "", "whiteout");
    assert!(cat("/usr/sbin/cairn-init").starts_with("#!/bin/sh"));
    // Same name again: refused.
    let again = h.run(&[
        "image",
        "import",
        "t1",
        "--oci-layout",
        layout.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // Hostile: a path with '..'. One line, nothing kept.
    let mut evil = layer(&[("x", b"x", 0o644)]);
    let name_field = b"../../evil";
    evil[..100].fill(0);
    evil[..name_field.len()].copy_from_slice(name_field);
    let sum: u32 = evil[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    evil[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let bad = tmp.path().join("bad");
    oci_layout(&bad, &[evil]);
    let o = h.run(&[
        "image",
        "import",
        "t3",
        "--oci-layout",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("'..'"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let left: Vec<_> = fs::read_dir(h.home.path().join("images/named"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!tmp.path().join("evil").exists() && !h.home.path().join("evil").exists());
    h.ok(&["image", "rm", "t1"]);
    h.ok(&["image", "rm", "t2"]);
    assert_eq!(h.ok(&["image", "ls", "--json"]), "");
    let o = h.run(&["create", "x", "--image", "t1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no image"));
}
