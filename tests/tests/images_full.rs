//! Real images end to end (root, KVM, and a Debian mirror to build the images from; skipped with
//! `CAIRN_TEST_FULL_IMAGES=0`). Each image is built once with `cairn image build` (debootstrap,
//! minutes) and cached in `~/.cache/cairn/test-images/`, keyed by the content of what goes into
//! it: the package list, the static agent, the recipe's init and fstab, and the image builder's
//! source. Building is the only step that reaches outside this machine (the mirror, as
//! `guest/build` does); the sandboxes in these tests send nothing out.
//!
//! - The default development image: git, python3 (pip, venv), node and npm, a C compiler,
//!   curl, ssh, ip, ps, less, and `sudo -u dev`.
//! - Podman inside a sandbox runs a container from a local image (a busybox rootfs made in the
//!   guest and `podman import`ed: no registry, no network).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cairn_tests::kvm_available;
use cairn_tests::process::workspace_bin;
use cairn_tests::sandbox::CairnHome;
use sha2::{Digest, Sha256};

const OPT_OUT: &str = "CAIRN_TEST_FULL_IMAGES";

fn wanted(name: &str) -> bool {
    if std::env::var_os(OPT_OUT).is_some_and(|v| v == "0") {
        eprintln!("SKIP {name}: {OPT_OUT}=0");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {name}: building an image needs root (debootstrap)");
        return false;
    }
    kvm_available(name)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The images cache: `$XDG_CACHE_HOME/cairn` or `~/.cache/cairn`, as `guest/build` uses.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"))
        .join("cairn")
        .join("test-images")
}

/// The content key of image `name` built with `packages` (None: the default set).
fn image_key(packages: Option<&str>, agent: &Path) -> String {
    let mut h = Sha256::new();
    h.update(b"cairn-test-image-v1\0");
    h.update(packages.unwrap_or("(default)").as_bytes());
    for f in [
        agent.to_path_buf(),
        workspace().join("guest/rootfs/usr/sbin/cairn-init"),
        workspace().join("guest/rootfs/etc/fstab"),
        workspace().join("sandbox/src/image_store.rs"),
        workspace().join("sandbox/src/image_debian.rs"),
        workspace().join("sandbox/src/oci.rs"),
    ] {
        h.update(fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display())));
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Image `name` in `h`: linked from the cache, built there first if missing.
fn install_image(h: &CairnHome, name: &str, packages: Option<&str>) {
    let agent = std::env::var_os("CAIRN_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(cairn_tests::linux::agent_binary);
    let key = image_key(packages, &agent);
    let entry = cache_dir().join(format!("{name}-{key}"));
    let built = entry.join("home/images/named").join(name);
    if !built.join("image.json").is_file() {
        let tmp = cache_dir().join(format!(".tmp-{name}-{key}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        let mut cmd = Command::new(workspace_bin("cairn"));
        cmd.env("CAIRN_HOME", tmp.join("home"))
            .env("CAIRN_AGENT_BIN", &agent)
            .args(["image", "build", name]);
        if let Some(p) = packages {
            cmd.args(["--packages", p]);
        }
        let t = Instant::now();
        let out = cmd.output().unwrap();
        eprintln!(
            "cairn image build {name}: {:.0} s\n{}{}",
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "image build {name} failed");
        let _ = fs::remove_dir_all(&entry);
        fs::rename(&tmp, &entry).unwrap();
    } else {
        eprintln!("image {name}: cached in {}", entry.display());
    }
    let dst = h.home.path().join("images/named").join(name);
    fs::create_dir_all(&dst).unwrap();
    for f in ["image.json", "rootfs.ext4"] {
        // cairn never writes to a named image's files (a sandbox's disk is a grown copy).
        fs::hard_link(built.join(f), dst.join(f))
            .or_else(|_| fs::copy(built.join(f), dst.join(f)).map(|_| ()))
            .unwrap();
    }
    eprintln!("{}", h.ok(&["image", "ls"]));
}

fn check(h: &CairnHome, sandbox: &str, script: &str, want: &str) {
    let out = h.sh(sandbox, script);
    assert!(
        out.contains(want),
        "{script:?} printed {out:?}, wanted {want:?}"
    );
}

#[test]
fn the_default_image_has_what_an_agent_expects() {
    let name = "the_default_image_has_what_an_agent_expects";
    if !wanted(name) {
        return;
    }
    let h = CairnHome::new();
    install_image(&h, "dev", None);
    let t = h.create(
        "d",
        &["--image", "dev", "--mem", "1024", "--idle-timeout", "0"],
    );
    eprintln!("create from the dev image: {:.1} s", t.as_secs_f64());
    check(&h, "d", "git --version", "git version 2.");
    check(
        &h,
        "d",
        "python3 -c 'import sys, venv, ensurepip; print(\"py\", sys.version_info[:2])' && \
         python3 -m pip --version",
        "py (3, 11)",
    );
    check(&h, "d", "node -v && npm -v", "v18.");
    check(&h, "d", "cc --version", "(Debian 12.");
    check(
        &h,
        "d",
        "cd /tmp && printf 'int main(void){return 42;}' > a.c && cc a.c -o a && { ./a; echo rc=$?; }",
        "rc=42",
    );
    check(&h, "d", "sudo -u dev id", "uid=1000(dev)");
    check(&h, "d", "sudo -u dev sudo -n id -u", "0");
    check(
        &h,
        "d",
        "curl --version | head -1; ssh -V 2>&1; ip -V; ps -p 1 -o comm=; less --version | head -1",
        "OpenSSH",
    );
    check(
        &h,
        "d",
        "test -s /etc/ssl/certs/ca-certificates.crt && echo certs",
        "certs",
    );
}

#[test]
fn podman_runs_a_container_from_a_local_image_in_a_sandbox() {
    let name = "podman_runs_a_container_from_a_local_image_in_a_sandbox";
    if !wanted(name) {
        return;
    }
    let h = CairnHome::new();
    install_image(&h, "pod", Some("podman,crun,busybox-static,util-linux"));
    h.create(
        "p",
        &["--image", "pod", "--mem", "1024", "--idle-timeout", "0"],
    );
    // A one-file image: busybox, imported from a tar (no registry).
    h.sh(
        "p",
        "rm -rf /tmp/c && mkdir -p /tmp/c/bin && cp /bin/busybox /tmp/c/bin/ && \
         ln -s busybox /tmp/c/bin/sh && ln -s busybox /tmp/c/bin/echo && \
         tar -C /tmp/c -cf /tmp/c.tar . && podman import /tmp/c.tar localhost/tiny:1",
    );
    let t = Instant::now();
    check(
        &h,
        "p",
        "podman --cgroup-manager=cgroupfs --events-backend=file run --rm --network=none \
         localhost/tiny:1 /bin/sh -c 'echo hello from a container; echo pid $$'",
        "hello from a container\npid 1",
    );
    eprintln!("podman run: {:.1} s", t.elapsed().as_secs_f64());
}
