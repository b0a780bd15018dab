//! `cairn doctor`'s image checks: what a crash leaves in `golden/` and `images/named/`.
//!
//! - a golden entry that is not whole (no valid `golden.json`, a key that is not its
//!   directory's, or no `golden` checkpoint): a crash while it was made; removed, so the next
//!   create of that image and shape boots and makes it again (an entry being made holds its
//!   lock and is left alone);
//! - an image build or import directory (`images/named/.tmp-NAME-PID`) whose maker is gone:
//!   removed, after unmounting what debootstrap left mounted in it (its chroot's `/proc`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Doctor;
use crate::golden::{self, GoldenMeta, GOLDEN_CKPT};
use crate::image_store;
use crate::lock::{FileLock, Mode};
use crate::sandbox::Paths;

/// Why the golden entry at `dir` is not whole, or `None` when it is.
fn golden_defect(dir: &Path) -> Option<String> {
    let meta = dir.join("golden.json");
    let Ok(text) = fs::read_to_string(&meta) else {
        return Some("has no golden.json".into());
    };
    let Ok(m) = serde_json::from_str::<GoldenMeta>(&text) else {
        return Some("has an unreadable golden.json".into());
    };
    let short = dir.file_name()?.to_string_lossy().into_owned();
    if !m.key.starts_with(&short) {
        return Some(format!("records key {}, not its own", m.key));
    }
    let ckpt = Paths::at(dir.to_path_buf())
        .checkpoints
        .join(GOLDEN_CKPT)
        .join("meta.json");
    (!ckpt.is_file()).then(|| format!("has no complete {GOLDEN_CKPT} checkpoint"))
}

/// Golden entries that a crash left half made.
pub(super) fn golden_leftovers(d: &mut Doctor) {
    let root = golden::golden_root(d.home);
    let Ok(rd) = fs::read_dir(&root) else {
        return;
    };
    for e in rd.flatten() {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let Some(defect) = golden_defect(&dir) else {
            continue;
        };
        let lock = root.join(format!("{}.lock", e.file_name().to_string_lossy()));
        // `golden::save` holds the entry's lock while it makes it.
        let Ok(Some(_held)) = FileLock::try_acquire(&lock, Mode::Exclusive) else {
            d.note(
                None,
                format!("golden entry {} is locked (being made?)", dir.display()),
                "left it alone",
            );
            continue;
        };
        d.note(
            None,
            format!(
                "golden entry {} {defect} (a create that crashed while keeping it)",
                dir.display()
            ),
            "removed it (the next create of that image and shape boots and keeps it again)",
        );
        d.act(|| {
            let _ = fs::remove_dir_all(&dir);
        });
    }
}

/// The mount points at or under `dir` (from `/proc/self/mountinfo`), deepest first.
pub(super) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                out.push(o.iter().fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The maker's pid of an image build directory `.tmp-NAME-PID`.
fn build_dir_pid(file_name: &str) -> Option<u32> {
    file_name
        .strip_prefix(".tmp-")?
        .rsplit_once('-')?
        .1
        .parse()
        .ok()
}

/// Image builds and imports whose maker is gone.
pub(super) fn image_build_leftovers(d: &mut Doctor) {
    let Ok(rd) = fs::read_dir(image_store::named_root(d.home)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = build_dir_pid(&name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() || !e.path().is_dir() {
            continue;
        }
        let dir = fs::canonicalize(e.path()).unwrap_or_else(|_| e.path());
        let mounts = mounts_under(&dir);
        let what = format!(
            "unfinished image build {} (its maker, pid {pid}, is gone){}",
            dir.display(),
            if mounts.is_empty() {
                String::new()
            } else {
                format!(", with {} mount(s) left in it", mounts.len())
            }
        );
        if d.dry_run {
            d.note(None, what, "removed it");
            continue;
        }
        for m in &mounts {
            let _ = Command::new("umount").arg("--lazy").arg(m).output();
        }
        let still = mounts_under(&dir);
        if !still.is_empty() {
            d.note(
                None,
                what,
                format!(
                    "left it alone: could not unmount {} (hint: umount it, then run doctor again)",
                    still[0].display()
                ),
            );
            continue;
        }
        let _ = fs::remove_dir_all(&dir);
        d.note(None, what, "removed it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Home;

    fn doctor(home: &Home, dry_run: bool) -> Vec<super::super::Finding> {
        super::super::run(home, dry_run).unwrap()
    }

    fn meta(key: &str) -> String {
        serde_json::to_string(&GoldenMeta {
            key: key.into(),
            kernel: "/k".into(),
            rootfs: None,
            cpus: 1,
            mem_mib: 256,
            disk_gib: 1,
            jailed: false,
            created_unix_ms: 1,
        })
        .unwrap()
    }

    /// A golden entry directory `short` with `golden.json` text and, if `ckpt`, its checkpoint.
    fn entry(home: &Home, short: &str, json: Option<&str>, ckpt: bool) -> PathBuf {
        let dir = golden::golden_root(home).join(short);
        fs::create_dir_all(dir.join("checkpoints")).unwrap();
        if let Some(j) = json {
            fs::write(dir.join("golden.json"), j).unwrap();
        }
        if ckpt {
            let c = dir.join("checkpoints").join(GOLDEN_CKPT);
            fs::create_dir_all(&c).unwrap();
            fs::write(c.join("meta.json"), "{}").unwrap();
        }
        dir
    }

    #[test]
    fn half_made_golden_entries_are_removed_and_whole_or_locked_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path()).unwrap();
        let key = |c: char| c.to_string().repeat(64);
        let whole = entry(&home, &key('a')[..16], Some(&meta(&key('a'))), true);
        let no_meta = entry(&home, &key('b')[..16], None, true);
        let torn = entry(&home, &key('c')[..16], Some("{\"key\":"), true);
        let no_ckpt = entry(&home, &key('d')[..16], Some(&meta(&key('d'))), false);
        let wrong_key = entry(&home, &key('e')[..16], Some(&meta(&key('f'))), true);
        let busy = entry(&home, &key('9')[..16], None, false);
        let lock = golden::golden_root(&home).join(format!("{}.lock", &key('9')[..16]));
        let held = FileLock::acquire(&lock, Mode::Exclusive).unwrap();

        let dry = doctor(&home, true);
        assert_eq!(dry.len(), 5, "{dry:#?}");
        assert!(dry
            .iter()
            .all(|f| f.did.starts_with("would have") || f.did == "left it alone"));
        assert!(no_meta.exists(), "a dry run removes nothing");

        let found = doctor(&home, false);
        let text = format!("{found:#?}");
        for (dir, why) in [
            (&no_meta, "has no golden.json"),
            (&torn, "unreadable golden.json"),
            (&no_ckpt, "no complete golden checkpoint"),
            (&wrong_key, "not its own"),
        ] {
            assert!(!dir.exists(), "{} removed: {text}", dir.display());
            assert!(text.contains(why), "{why}: {text}");
        }
        assert!(whole.exists() && busy.exists(), "{text}");
        assert!(text.contains("locked (being made?)"), "{text}");
        drop(held);
        // The whole entry is no finding; the once-locked one goes now.
        let again = doctor(&home, false);
        assert_eq!(again.len(), 1, "{again:#?}");
        assert!(!busy.exists() && whole.exists());
        assert!(doctor(&home, false).is_empty());
        assert!(golden::lookup(&home, &key('a')).is_some());
    }

    #[test]
    fn unfinished_image_builds_whose_maker_is_gone_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path()).unwrap();
        let named = image_store::named_root(&home);
        let dead = named.join(format!(".tmp-dev-{}", u32::MAX - 1));
        let live = named.join(format!(".tmp-web-{}", std::process::id()));
        let image = named.join("dev");
        for d in [&dead, &live, &image] {
            fs::create_dir_all(d.join("root/etc")).unwrap();
            fs::write(d.join("root/etc/hostname"), "x").unwrap();
        }
        let found = doctor(&home, false);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].found.contains("unfinished image build"),
            "{found:#?}"
        );
        assert!(!dead.exists() && live.exists() && image.exists());
    }

    /// As debootstrap leaves it when killed: its chroot's `/proc` still mounted.
    #[test]
    fn a_dead_build_with_a_mount_left_in_it_is_unmounted_then_removed() {
        if !crate::net::is_root() {
            eprintln!(
                "SKIP a_dead_build_with_a_mount_left_in_it_is_unmounted_then_removed: needs root"
            );
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path()).unwrap();
        let dead = image_store::named_root(&home).join(format!(".tmp-dev-{}", u32::MAX - 1));
        let proc_dir = fs::canonicalize(tmp.path())
            .unwrap()
            .join(dead.strip_prefix(tmp.path()).unwrap().join("root/proc"));
        fs::create_dir_all(&proc_dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "cairn-doctor-test"])
            .arg(&proc_dir)
            .status()
            .unwrap();
        assert!(ok.success());
        fs::write(proc_dir.join("f"), "x").unwrap();
        assert_eq!(mounts_under(&proc_dir), vec![proc_dir.clone()]);
        let found = doctor(&home, false);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].found.contains("1 mount(s)"), "{found:#?}");
        assert_eq!(found[0].did, "removed it");
        assert!(mounts_under(&proc_dir).is_empty() && !dead.exists());
    }

    #[test]
    fn mountinfo_paths_and_build_dir_names_are_parsed() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
        assert_eq!(build_dir_pid(".tmp-my-image-123"), Some(123));
        assert_eq!(build_dir_pid(".tmp-x"), None);
        assert_eq!(build_dir_pid("dev"), None);
        assert!(mounts_under(Path::new("/")).contains(&PathBuf::from("/")));
        assert!(mounts_under(Path::new("/nonexistent-cairn-dir")).is_empty());
    }
}
