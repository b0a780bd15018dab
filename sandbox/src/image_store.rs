//! Named images: `cairn image import|build|ls|rm` and `cairn create --image NAME`. The owner of
//! `$CAIRN_HOME/images/named/`:
//!
//! ```text
//! images/named/NAME/rootfs.ext4   the root disk (ext4, made with mkfs.ext4 -d: no loop mount)
//! images/named/NAME/image.json    ImageInfo: where it came from, its size, when
//! images/named/.tmp-NAME-PID/     an import or build in progress (removed on failure)
//! ```
//!
//! Every image gets the guest agent (`/usr/sbin/cairn-agent`) and the recipe's init and fstab
//! (`guest/rootfs/`), so it boots like the default image with the same kernel. Sandboxes of an
//! image share its grown root image and golden checkpoint, both keyed by the image's content
//! (see [`crate::rootdisk`], [`crate::golden`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::image::{self, ImageError};
use crate::oci;
use crate::sandbox::{validate_name, Home, SandboxError};

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An OCI image layout directory.
    OciLayout(PathBuf),
    /// A `docker save` archive.
    DockerArchive(PathBuf),
    /// Debian bookworm (debootstrap minbase) with these packages (apt).
    Debootstrap(Vec<String>),
}

/// What `image.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The image's name.
    pub name: String,
    /// Its root disk.
    pub rootfs: PathBuf,
    /// Where it came from, for `cairn image ls`.
    pub source: String,
    /// Bytes of files in it (before the file system's overhead).
    pub content_bytes: u64,
    /// The root disk's size (apparent; it is sparse).
    pub disk_bytes: u64,
    /// When it was made (Unix ms).
    pub created_unix_ms: u64,
}

/// `$CAIRN_HOME/images/named`.
pub fn named_root(home: &Home) -> PathBuf {
    home.images().join("named")
}

fn err(msg: impl Into<String>) -> SandboxError {
    SandboxError::Image(ImageError::Import(msg.into()))
}

/// The root disk of image `name`.
pub fn rootfs_of(home: &Home, name: &str) -> Result<PathBuf, SandboxError> {
    let p = named_root(home).join(name).join("rootfs.ext4");
    if validate_name(name).is_ok() && p.is_file() {
        Ok(p)
    } else {
        Err(err(format!(
            "no image {name:?} (hint: `cairn image ls` lists images; `cairn image import` or `cairn image build` makes one)"
        )))
    }
}

/// Every image, oldest first.
pub fn list(home: &Home) -> Vec<ImageInfo> {
    let mut v: Vec<ImageInfo> = fs::read_dir(named_root(home))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let text = fs::read_to_string(e.path().join("image.json")).ok()?;
            serde_json::from_str(&text).ok()
        })
        .collect();
    v.sort_by_key(|i| i.created_unix_ms);
    v
}

/// Removes image `name` and the golden checkpoints booted from it (sandboxes made from it keep
/// working: their disks hold their own links to its grown root image).
pub fn remove(home: &Home, name: &str) -> Result<(), SandboxError> {
    let rootfs = rootfs_of(home, name)?;
    for (dir, meta) in crate::golden::list(home) {
        if meta.rootfs.as_deref() == Some(rootfs.as_path()) {
            crate::golden::remove(home, &meta.key)?;
            let _ = dir;
        }
    }
    let dir = named_root(home).join(name);
    fs::remove_dir_all(&dir).map_err(|e| err(format!("remove {}: {e}", dir.display())))
}

/// Makes image `name` from `source`; nothing is kept when it fails.
pub fn create(home: &Home, name: &str, source: &Source) -> Result<ImageInfo, SandboxError> {
    validate_name(name)?;
    let root_dir = named_root(home);
    let dir = root_dir.join(name);
    if dir.exists() {
        return Err(err(format!(
            "image {name:?} already exists (hint: `cairn image rm {name}` first)"
        )));
    }
    let agent = image::agent_binary()?;
    let recipe = image::recipe_dir().ok_or_else(|| {
        err("the guest recipe (guest/rootfs) was not found (hint: run scripts/install)")
    })?;
    fs::create_dir_all(&root_dir)
        .map_err(|e| err(format!("create {}: {e}", root_dir.display())))?;
    let tmp = root_dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let made = build_into(&tmp, name, source, &agent, &recipe.join("rootfs"));
    match made {
        Ok(mut info) => {
            fs::rename(&tmp, &dir).map_err(|e| {
                let _ = fs::remove_dir_all(&tmp);
                err(format!("commit {}: {e}", dir.display()))
            })?;
            info.rootfs = dir.join("rootfs.ext4");
            write_info(&dir, &info)?;
            Ok(info)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_info(dir: &Path, info: &ImageInfo) -> Result<(), SandboxError> {
    let text = serde_json::to_string_pretty(info).map_err(|e| err(e.to_string()))?;
    fs::write(dir.join("image.json"), text).map_err(|e| err(format!("write image.json: {e}")))
}

fn build_into(
    tmp: &Path,
    name: &str,
    source: &Source,
    agent: &Path,
    recipe_rootfs: &Path,
) -> Result<ImageInfo, SandboxError> {
    let root = tmp.join("root");
    let scratch = tmp.join("scratch");
    for d in [&root, &scratch] {
        fs::create_dir_all(d).map_err(|e| err(format!("create {}: {e}", d.display())))?;
    }
    let described = match source {
        Source::OciLayout(p) => {
            let n = oci::unpack_oci_layout(p, &root)?;
            format!("oci-layout {} ({n} layers)", p.display())
        }
        Source::DockerArchive(p) => {
            let n = oci::unpack_docker_archive(p, &root, &scratch)?;
            format!("docker-archive {} ({n} layers)", p.display())
        }
        Source::Debootstrap(pkgs) => {
            debian::build(&root, pkgs)?;
            format!("debootstrap bookworm +{}", pkgs.join(","))
        }
    };
    let _ = fs::remove_dir_all(&scratch);
    add_cairn(&root, agent, recipe_rootfs)?;
    let content_bytes = tree_bytes(&root);
    // Room to work in: half as much again, and at least 256 MiB free.
    let disk_bytes = ((content_bytes + content_bytes / 2 + (256 << 20)) >> 20 << 20).max(512 << 20);
    let disk = tmp.join("rootfs.ext4");
    let f = fs::File::create(&disk).map_err(|e| err(format!("create {}: {e}", disk.display())))?;
    f.set_len(disk_bytes)
        .map_err(|e| err(format!("size {}: {e}", disk.display())))?;
    drop(f);
    run(Command::new(crate::rootdisk::sbin_tool("mkfs.ext4"))
        .args(["-q", "-F", "-L", "cairn-root", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&disk))?;
    fs::remove_dir_all(&root).map_err(|e| err(format!("remove {}: {e}", root.display())))?;
    Ok(ImageInfo {
        name: name.to_string(),
        rootfs: disk,
        source: described,
        content_bytes,
        disk_bytes,
        created_unix_ms: cairn_snapshot::checkpoint::now_unix_ms(),
    })
}

/// The agent, the recipe's init and fstab, and a hostname; checks the image can run the init.
fn add_cairn(root: &Path, agent: &Path, recipe_rootfs: &Path) -> Result<(), SandboxError> {
    let bytes = fs::read(agent).map_err(|e| err(format!("read {}: {e}", agent.display())))?;
    oci::write_in_root(root, "usr/sbin/cairn-agent", &bytes, 0o755)?;
    for rel in ["usr/sbin/cairn-init", "etc/fstab"] {
        let src = recipe_rootfs.join(rel);
        let bytes = fs::read(&src).map_err(|e| err(format!("read {}: {e}", src.display())))?;
        let mode = if rel.contains("sbin") { 0o755 } else { 0o644 };
        oci::write_in_root(root, rel, &bytes, mode)?;
    }
    oci::write_in_root(root, "etc/hostname", b"cairn\n", 0o644)?;
    // cairn-init is a /bin/sh script run as /sbin/cairn-init.
    if !root.join("usr/bin/sh").exists() && !root.join("bin/sh").exists() {
        return Err(err(
            "the image has no /bin/sh, which cairn's init needs (hint: a Debian- or Ubuntu-based image)",
        ));
    }
    // The kernel runs /sbin/cairn-init: merged-/usr images reach it through their /sbin link.
    match fs::symlink_metadata(root.join("sbin")) {
        Ok(m) if m.is_dir() => {
            let init = fs::read(recipe_rootfs.join("usr/sbin/cairn-init"))
                .map_err(|e| err(format!("read cairn-init: {e}")))?;
            oci::write_in_root(root, "sbin/cairn-init", &init, 0o755)?;
        }
        Ok(_) => {}
        Err(_) => std::os::unix::fs::symlink("usr/sbin", root.join("sbin"))
            .map_err(|e| err(format!("link /sbin: {e}")))?,
    }
    Ok(())
}

fn tree_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The packages of the default development image (`cairn image build NAME` without
/// `--packages` adds these to Debian's minbase).
pub const DEFAULT_PACKAGES: &[&str] = &[
    "git",
    "curl",
    "ca-certificates",
    "python3",
    "python3-pip",
    "python3-venv",
    "nodejs",
    "npm",
    "build-essential",
    "openssh-client",
    "iproute2",
    "procps",
    "less",
    "sudo",
    "util-linux",
];

/// The unprivileged user the default image gets (in group sudo, no password needed).
pub const DEV_USER: &str = "dev";

fn run(cmd: &mut Command) -> Result<(), SandboxError> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run {prog}: {e} (hint: install e2fsprogs)")))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    Err(err(format!(
        "{prog} failed: {}",
        text.lines().last().unwrap_or("").trim()
    )))
}

#[path = "image_debian.rs"]
mod debian;
pub use debian::failure as build_failure;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_images_and_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path()).unwrap();
        let e = rootfs_of(&home, "nope").unwrap_err().to_string();
        assert!(e.contains("no image") && e.contains("hint"), "{e}");
        assert!(rootfs_of(&home, "../x").is_err());
        assert!(list(&home).is_empty());
    }
}
