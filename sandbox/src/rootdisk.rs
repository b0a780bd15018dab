//! Each sandbox's root disk: the Debian ext4 image from `guest/build --rootfs`, grown to the
//! sandbox's `--disk` size, as the read-only base of the VMM's layered block store.
//!
//! The grown image is made once per (rootfs content, size) and shared:
//! `$CAIRN_HOME/images/root-<content hash>-<N>g.ext4` (the hash of the rootfs's bytes, see
//! [`crate::content_key`]; never its file or directory name, so two different images with
//! the same name never share an entry), a sparse copy of the cached rootfs (`cp --sparse=always
//! --reflink=auto`) enlarged offline with `resize2fs` (lazy inode-table init, so the new block
//! groups' inode tables are never written: about 30 ms and no extra disk for 100 GiB). Each
//! sandbox's `disk.img` is a hard link to it. The VMM opens the base read-only and writes only
//! the sandbox's own deltas, so a new sandbox costs no copy. The guest mounts the root with
//! `noinit_itable`, so its kernel never zeroes those inode tables either (1.6 GiB at 100 GiB).

use crate::image::ImageError;
use crate::lock::{FileLock, Mode};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Kernel command-line arguments that boot from the root disk (appended to the image's own).
pub const ROOT_ARGS: &str =
    "root=/dev/vda rw rootfstype=ext4 rootflags=noinit_itable,no_prefetch_block_bitmaps init=/sbin/cairn-init";

/// Largest `--disk`, GiB (ext4 with 4 KiB blocks and 64bit goes far beyond; this only catches
/// typos).
pub const MAX_DISK_GIB: u64 = 64 * 1024;

/// Where the shared grown image for a rootfs with content key `key` at `gib` GiB lives
/// under `images`.
pub fn grown_path(images: &Path, key: &str, gib: u64) -> PathBuf {
    images.join(format!("root-{key}-{gib}g.ext4"))
}

/// Where the content keys of hashed root images are remembered (see [`crate::content_key`]).
pub fn keys_dir(images: &Path) -> PathBuf {
    images.join(".keys")
}

/// The content key of `rootfs` (short hex SHA-256 of its bytes, remembered per file version).
pub fn rootfs_key(images: &Path, rootfs: &Path) -> Result<String, ImageError> {
    crate::content_key::short_hash(rootfs, &keys_dir(images))
        .map_err(|e| ImageError::RootDisk(format!("hash {}: {e}", rootfs.display())))
}

/// Where the lock over `images` lives: held while an image is made and linked, and by
/// `cairn doctor` while it removes unused ones.
pub fn images_lock(images: &Path) -> PathBuf {
    images.join(".lock")
}

/// Makes `disk` the root disk of a sandbox: a link to the shared image of `rootfs` grown to
/// `gib` GiB, made first if missing. Both steps happen under the images lock, so concurrent
/// creates make an image once and `cairn doctor` never removes one between the two.
pub fn root_disk(
    images: &Path,
    rootfs: &Path,
    gib: u64,
    disk: &Path,
) -> Result<PathBuf, ImageError> {
    let base = grown_base(images, rootfs, gib, |base| link_disk(base, disk))?;
    Ok(base)
}

/// The shared image of `rootfs` grown to `gib` GiB, made first if missing; `then` runs on it
/// with the lock still held.
fn grown_base(
    images: &Path,
    rootfs: &Path,
    gib: u64,
    then: impl FnOnce(&Path) -> Result<(), ImageError>,
) -> Result<PathBuf, ImageError> {
    let io = |what: String| move |e: std::io::Error| ImageError::RootDisk(format!("{what}: {e}"));
    let want = gib
        .checked_mul(1 << 30)
        .filter(|_| (1..=MAX_DISK_GIB).contains(&gib))
        .ok_or_else(|| {
            ImageError::RootDisk(format!(
                "disk size {gib} GiB is out of range (hint: --disk 1..={MAX_DISK_GIB})"
            ))
        })?;
    let have = fs::metadata(rootfs)
        .map_err(io(format!("stat {}", rootfs.display())))?
        .len();
    if want < have {
        return Err(ImageError::RootDisk(format!(
            "--disk {gib} GiB is smaller than the root image ({:.1} GiB) (hint: a larger --disk)",
            have as f64 / f64::from(1 << 30)
        )));
    }
    fs::create_dir_all(images).map_err(io(format!("create {}", images.display())))?;
    let dest = grown_path(images, &rootfs_key(images, rootfs)?, gib);
    let _lock = FileLock::acquire(&images_lock(images), Mode::Exclusive)
        .map_err(io(format!("lock {}", images.display())))?;
    if dest.is_file() {
        then(&dest)?;
        return Ok(dest);
    }
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg("--reflink=auto")
            .arg(rootfs)
            .arg(&tmp))?;
        if want > have {
            // -f: the image comes straight from mkfs (clean); the env var makes the lazy inode
            // table init independent of the host kernel's /sys/fs/ext4/features.
            run(Command::new(sbin_tool("resize2fs"))
                .arg("-f")
                .arg(&tmp)
                .arg(format!("{gib}G"))
                .env("RESIZE2FS_FORCE_LAZY_ITABLE_INIT", "1"))?;
        }
        record_overhead(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444))
            .map_err(io(format!("chmod {}", tmp.display())))?;
        fs::rename(&tmp, &dest).map_err(io(format!("rename to {}", dest.display())))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    then(&dest)?;
    Ok(dest)
}

/// Stores the file system's overhead (metadata and journal clusters) in its superblock
/// (`s_overhead_clusters`), as the kernel would after its first mount. Without it, the guest
/// kernel computes it at every first mount, touching a page per block group: 53 s at 100 GiB
/// under the emulator. Skipped (not an error) for layouts [`overhead_clusters`] does not cover.
fn record_overhead(image: &Path) -> Result<(), ImageError> {
    let out = Command::new(sbin_tool("dumpe2fs"))
        .arg("-h")
        .arg(image)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| {
            ImageError::RootDisk(format!(
                "cannot run dumpe2fs: {e} (hint: install e2fsprogs)"
            ))
        })?;
    let Some(n) = overhead_clusters(&String::from_utf8_lossy(&out.stdout)) else {
        return Ok(());
    };
    run(Command::new(sbin_tool("debugfs"))
        .arg("-w")
        .arg("-R")
        .arg(format!("ssv overhead_clusters {n}"))
        .arg(image))
}

/// The kernel's `ext4_calculate_overhead` for `dumpe2fs -h` output, without bigalloc or
/// meta_bg: the first data block, plus per block group its inode table, two bitmaps, and where
/// a superblock copy lives, that block with the group descriptors and the reserved GDT blocks;
/// plus the journal.
pub fn overhead_clusters(dumpe2fs: &str) -> Option<u64> {
    let field = |name: &str| {
        dumpe2fs.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    let features = dumpe2fs
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))?;
    let has = |f: &str| features.split_whitespace().any(|x| x == f);
    if has("bigalloc") || has("meta_bg") || has("sparse_super2") {
        return None;
    }
    let blocks = field("Block count")?;
    let first = field("First block")?;
    let per_group = field("Blocks per group")?.max(1);
    let block_size = field("Block size")?;
    let desc_size = field("Group descriptor size").unwrap_or(32).max(1);
    let reserved_gdt = field("Reserved GDT blocks").unwrap_or(0);
    let itb = field("Inode blocks per group")?;
    let journal = field("Total journal blocks").unwrap_or(0);
    let groups = blocks.checked_sub(first)?.div_ceil(per_group);
    let gdb = groups.div_ceil((block_size / desc_size).max(1));
    let power_of = |mut g: u64, b: u64| {
        while g > 1 && g % b == 0 {
            g /= b;
        }
        g == 1
    };
    let has_super = |g: u64| {
        !has("sparse_super") || g <= 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
    };
    let supers = (0..groups).filter(|&g| has_super(g)).count() as u64;
    Some(first + supers * (1 + gdb + reserved_gdt) + groups * (itb + 2) + journal)
}

/// An e2fsprogs tool: from `PATH`, else `/usr/sbin` or `/sbin` (not in a normal user's `PATH` on
/// Debian, and a user in the kvm group creates sandboxes too).
pub fn sbin_tool(name: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()));
    if !in_path {
        for d in ["/usr/sbin", "/sbin"] {
            let p = Path::new(d).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

fn run(cmd: &mut Command) -> Result<(), ImageError> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            ImageError::RootDisk(format!(
                "cannot run {prog}: {e} (hint: install e2fsprogs and coreutils)"
            ))
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(ImageError::RootDisk(format!(
        "{prog} failed ({}): {}",
        out.status,
        last.trim()
    )))
}

/// Makes `dest` the sandbox's disk: a hard link to the shared `base`, or (across filesystems)
/// a sparse copy of it.
fn link_disk(base: &Path, dest: &Path) -> Result<(), ImageError> {
    let _ = fs::remove_file(dest);
    match fs::hard_link(base, dest) {
        Ok(()) => Ok(()),
        Err(_) => run(Command::new("cp")
            .arg("--sparse=always")
            .arg("--reflink=auto")
            .arg(base)
            .arg(dest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn have(prog: &str) -> bool {
        Command::new(prog)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    #[test]
    fn the_overhead_matches_what_the_kernel_computed() {
        // dumpe2fs -h of the 1 GiB rootfs grown to 100 GiB; the host kernel (6.18) recorded
        // 421327 overhead clusters in it at its first mount.
        let text = "Filesystem features:      has_journal ext_attr resize_inode dir_index \
                    filetype extent 64bit flex_bg sparse_super large_file huge_file dir_nlink \
                    extra_isize metadata_csum
Block count:              26214400
First block:              0
Block size:               4096
Group descriptor size:    64
Reserved GDT blocks:      115
Blocks per group:         32768
Inode blocks per group:   512
Total journal blocks:     8192
";
        assert_eq!(overhead_clusters(text), Some(421_327));
        assert_eq!(
            overhead_clusters(&text.replace("flex_bg", "bigalloc")),
            None
        );
        assert_eq!(overhead_clusters("Block count: 1\n"), None);
    }

    #[test]
    fn grown_path_names_the_content_key_and_size() {
        let p = grown_path(Path::new("/h/images"), "abc", 100);
        assert_eq!(p, PathBuf::from("/h/images/root-abc-100g.ext4"));
    }

    fn mkfs(path: &Path, label: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::File::create(path).unwrap().set_len(64 << 20).unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", label])
            .arg(path))
        .unwrap();
    }

    fn label(image: &Path) -> String {
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Filesystem volume name:"))
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    /// The bug: `stock.ext4`, then `custom.ext4` from the same directory (and a
    /// same-named file elsewhere) each get their own grown image, never an earlier one.
    #[test]
    fn different_root_images_never_share_a_grown_image() {
        if !have("mkfs.ext4") || !have("resize2fs") {
            eprintln!("SKIP different_root_images_never_share_a_grown_image: no e2fsprogs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let stock = dir.path().join("imgs/stock.ext4");
        let custom = dir.path().join("imgs/custom.ext4");
        let elsewhere = dir.path().join("other/stock.ext4");
        mkfs(&stock, "stock");
        mkfs(&custom, "custom");
        mkfs(&elsewhere, "elsewhere");
        let mut bases = Vec::new();
        for (src, want) in [
            (&stock, "stock"),
            (&custom, "custom"),
            (&elsewhere, "elsewhere"),
        ] {
            let disk = dir.path().join(format!("{want}.img"));
            let base = root_disk(&images, src, 1, &disk).unwrap();
            assert_eq!(label(&disk), want, "{} booted another image", src.display());
            bases.push(base);
        }
        bases.dedup();
        assert_eq!(bases.len(), 3, "{bases:?}");
        // An image rewritten in place gets a new entry too.
        std::thread::sleep(std::time::Duration::from_millis(20));
        mkfs(&stock, "stock2");
        let disk = dir.path().join("stock2.img");
        root_disk(&images, &stock, 1, &disk).unwrap();
        assert_eq!(label(&disk), "stock2");
    }

    #[test]
    fn sizes_out_of_range_or_below_the_image_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("rootfs-x/rootfs.ext4");
        fs::create_dir_all(src.parent().unwrap()).unwrap();
        fs::File::create(&src).unwrap().set_len(2 << 30).unwrap();
        let images = dir.path().join("images");
        for gib in [0, 1, MAX_DISK_GIB + 1] {
            let disk = dir.path().join("disk.img");
            let e = root_disk(&images, &src, gib, &disk)
                .unwrap_err()
                .to_string();
            assert!(e.contains("hint"), "{gib}: {e}");
        }
    }

    #[test]
    fn an_ext4_image_is_grown_once_shared_and_linked() {
        if !have("mkfs.ext4") || !have("resize2fs") {
            eprintln!("SKIP an_ext4_image_is_grown_once_shared_and_linked: no e2fsprogs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("rootfs-x/rootfs.ext4");
        fs::create_dir_all(src.parent().unwrap()).unwrap();
        fs::File::create(&src).unwrap().set_len(64 << 20).unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&src))
        .unwrap();
        let images = dir.path().join("images");
        let disk = dir.path().join("disk.img");
        let base = root_disk(&images, &src, 2, &disk).unwrap();
        let m = fs::metadata(&base).unwrap();
        assert_eq!(m.len(), 2 << 30);
        assert!(m.blocks() * 512 < 64 << 20, "sparse: {} blocks", m.blocks());
        assert_eq!(m.mode() & 0o222, 0, "read-only");
        // The filesystem itself was grown: dumpe2fs reports 2 GiB of 4 KiB blocks.
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&base)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Block count:              524288"), "{text}");
        let overhead = overhead_clusters(&text).unwrap();
        assert!(
            text.contains(&format!("Overhead clusters:        {overhead}")),
            "{text}"
        );
        // The sandbox's disk is a link to it; a second sandbox reuses it.
        assert_eq!(fs::metadata(&disk).unwrap().ino(), m.ino());
        let disk2 = dir.path().join("disk2.img");
        assert_eq!(root_disk(&images, &src, 2, &disk2).unwrap(), base);
        assert_eq!(fs::metadata(&disk2).unwrap().ino(), m.ino());
    }
}
