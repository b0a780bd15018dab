//! Remembered answers of `guest/build` in a source tree.
//!
//! A `cairn create` run from a source tree asks `guest/build --quiet` for the guest image. With
//! everything cached that script still hashes its recipe and asks dpkg about packages: 0.3 s on
//! a quiet development host, 1–2 s on a loaded one, paid by every create. An installed cairn
//! reads `image/guest.txt` instead and pays nothing (docs/images.md, "Install").
//!
//! So the answer is remembered, keyed by the *version* of everything it depends on: the
//! `(device, inode, size, mtime, ctime)` of every file of the recipe directory and of the agent
//! binary, dpkg's status file (any package change, such as a new `linux-source`), the boot (the
//! profile `guest/build` picks depends on this host's KVM), the arguments and the environment
//! variables the script reads. Any edit, new file or package change gives a new key, and the
//! script runs again; a remembered answer whose files are gone is not used. The answers live in
//! `<cache>/cairn/guest/answers/` (the cache `guest/build` itself uses).

use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// The environment variables `guest/build` reads.
const SCRIPT_ENV: [&str; 5] = [
    "CAIRN_GUEST_PROFILE",
    "CAIRN_AGENT_TARGET_DIR",
    "XDG_CACHE_HOME",
    "HOME",
    "PATH",
];

/// The directory answers are kept in.
fn answers_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(cache.join("cairn/guest/answers"))
}

fn add_version(h: &mut Sha256, path: &Path) {
    h.update(path.as_os_str().as_encoded_bytes());
    match fs::symlink_metadata(path) {
        Ok(m) => h.update(format!("\0{}\n", crate::content_key::version_tag(&m)).as_bytes()),
        Err(_) => h.update(b"\0missing\n"),
    }
}

/// Every file and directory under `dir`, in a stable order.
fn tree(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        out.push(p.clone());
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            tree(&p, out);
        }
    }
}

/// The key of `script`'s answer for `agent` and `args` as things stand now.
pub fn key(script: &Path, agent: &Path, args: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"cairn guest/build answer v1\0");
    let mut files = vec![script.to_path_buf(), agent.to_path_buf()];
    if let Some(recipe) = script.parent() {
        files.push(recipe.to_path_buf());
        tree(recipe, &mut files);
    }
    files.push(PathBuf::from("/var/lib/dpkg/status"));
    for f in &files {
        add_version(&mut h, f);
    }
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    h.update(boot.trim().as_bytes());
    for a in args {
        h.update(b"\0arg ");
        h.update(a.as_bytes());
    }
    for var in SCRIPT_ENV {
        h.update(b"\0env ");
        h.update(var.as_bytes());
        if let Some(v) = std::env::var_os(var) {
            h.update(b"=");
            h.update(v.as_encoded_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The remembered answer for `key`, if there is one.
pub fn recall(key: &str) -> Option<String> {
    fs::read_to_string(answers_dir()?.join(key)).ok()
}

/// Remembers `answer` for `key` (best effort: an answer not kept only costs the next create
/// the script's run).
pub fn keep(key: &str, answer: &str) {
    let Some(dir) = answers_dir() else {
        return;
    };
    let path = dir.join(key);
    let tmp = dir.join(format!(".{key}.{}", std::process::id()));
    let _ = fs::create_dir_all(&dir)
        .and_then(|()| fs::write(&tmp, answer))
        .and_then(|()| fs::rename(&tmp, &path));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_every_file_of_the_recipe_and_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("guest");
        fs::create_dir_all(recipe.join("lib")).unwrap();
        let script = recipe.join("build");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        fs::write(recipe.join("lib/kernel.sh"), "a").unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, "x").unwrap();
        let k0 = key(&script, &agent, &["--rootfs"]);
        assert_eq!(k0, key(&script, &agent, &["--rootfs"]), "stable");
        assert_ne!(k0, key(&script, &agent, &[]), "arguments count");
        // An edit deep in the recipe (same size: the times and the inode's ctime change).
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(recipe.join("lib/kernel.sh"), "b").unwrap();
        let k1 = key(&script, &agent, &["--rootfs"]);
        assert_ne!(k0, k1, "a changed recipe file");
        fs::write(recipe.join("lib/new.config"), "").unwrap();
        let k2 = key(&script, &agent, &["--rootfs"]);
        assert_ne!(k1, k2, "a new recipe file");
        // A rebuilt agent is a new file version.
        fs::remove_file(&agent).unwrap();
        fs::write(&agent, "x").unwrap();
        assert_ne!(k2, key(&script, &agent, &["--rootfs"]), "a new agent");
    }
}
