//! Unpacking container images into a directory tree: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) or a `docker save` archive (`manifest.json` naming layer
//! tarballs). Layers apply in order, honouring whiteouts (`.wh.NAME` removes NAME from the
//! layers below, `.wh..wh..opq` empties its directory).
//!
//! Untrusted input: every blob's SHA-256 is checked against its digest, and a layer is refused,
//! with the reason, when it holds an absolute path, a `..` component, a device node, a hard
//! link to outside the image, or a path that reaches outside the image through a symlink (a
//! symlink's absolute target means the image's root, as it will in the guest; a `..` above the
//! root is refused). Nothing is ever written outside the destination directory: paths are
//! resolved component by component, never by the host's resolver through a symlink.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::image::ImageError;

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::Import(msg.into())
}

fn io_bad(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.to_string();
    move |e| bad(format!("{what}: {e}"))
}

/// Most symlinks followed while resolving one path (as the kernel's 40).
const MAX_HOPS: usize = 40;

/// A path inside an image, checked: relative, no `..`, `.` and empty components dropped.
fn clean_relative(p: &Path, what: &str) -> Result<Vec<OsString>, ImageError> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!(
                    "{what}: absolute path {} (refused)",
                    p.display()
                )))
            }
            Component::ParentDir => {
                return Err(bad(format!(
                    "{what}: path {} contains '..' (refused)",
                    p.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Resolves `comps` inside `root` as the guest will see it, following symlinks within the
/// image (an absolute target restarts at `root`), refusing any that climbs above it. Missing
/// directories are created when `create`. Returns the host path of that directory, every
/// component of which below `root` is a real directory, never a symlink.
fn resolve_dir(
    root: &Path,
    comps: &[OsString],
    create: bool,
    what: &str,
) -> Result<PathBuf, ImageError> {
    let mut stack: Vec<OsString> = Vec::new();
    let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut hops = 0;
    let here = |stack: &[OsString]| stack.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            if stack.pop().is_none() {
                return Err(bad(format!(
                    "{what}: reaches outside the image through a symlink (refused)"
                )));
            }
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        let next = here(&stack).join(&c);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(bad(format!("{what}: too many levels of symlinks")));
                }
                let target = fs::read_link(&next).map_err(io_bad(format!("{what}: readlink")))?;
                if target.is_absolute() {
                    stack.clear();
                }
                let mut front: Vec<OsString> = Vec::new();
                for t in target.components() {
                    match t {
                        Component::Normal(n) => front.push(n.to_os_string()),
                        Component::ParentDir => front.push("..".into()),
                        _ => {}
                    }
                }
                for t in front.into_iter().rev() {
                    queue.push_front(t);
                }
            }
            Ok(m) if m.is_dir() => stack.push(c),
            Ok(_) => {
                return Err(bad(format!(
                    "{what}: {} is not a directory",
                    here(&stack).join(&c).display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&next).map_err(io_bad(format!("{what}: mkdir")))?;
                fs::set_permissions(&next, fs::Permissions::from_mode(0o755))
                    .map_err(io_bad(format!("{what}: chmod")))?;
                stack.push(c);
            }
            Err(e) => return Err(bad(format!("{what}: {e}"))),
        }
    }
    Ok(here(&stack))
}

/// Removes whatever is at `p` (not following a symlink there).
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` at `rel` inside `root` (resolved as [`resolve_dir`] does), mode `mode`.
pub fn write_in_root(root: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<(), ImageError> {
    let comps = clean_relative(Path::new(rel), rel)?;
    let (name, parent) = comps
        .split_last()
        .ok_or_else(|| bad(format!("{rel}: empty path")))?;
    let dir = resolve_dir(root, parent, true, rel)?;
    let dest = dir.join(name);
    remove_any(&dest).map_err(io_bad(format!("replace {rel}")))?;
    fs::write(&dest, bytes).map_err(io_bad(format!("write {rel}")))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
        .map_err(io_bad(format!("chmod {rel}")))
}

/// Applies one layer (an uncompressed tar stream) on top of `root`. `layer` names it in errors.
pub fn apply_layer(reader: impl Read, root: &Path, layer: &str) -> Result<(), ImageError> {
    // SAFETY: trivial getter.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(io_bad(format!("{layer}: corrupt or truncated archive")))?;
    for entry in entries {
        let mut entry = entry.map_err(io_bad(format!("{layer}: corrupt or truncated archive")))?;
        let path = entry
            .path()
            .map_err(io_bad(format!("{layer}: bad path")))?
            .into_owned();
        let what = format!("{layer}: {}", path.display());
        let comps = clean_relative(&path, &what)?;
        let Some((name, parent)) = comps.split_last() else {
            continue; // the root itself
        };
        let name_str = name.to_string_lossy();
        if name_str == ".wh..wh..opq" {
            let dir = resolve_dir(root, parent, true, &what)?;
            for e in fs::read_dir(&dir).map_err(io_bad(&what))?.flatten() {
                remove_any(&e.path()).map_err(io_bad(&what))?;
            }
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(".wh.") {
            let target = clean_relative(Path::new(hidden), &what)?;
            let dir = resolve_dir(root, parent, true, &what)?;
            if let [t] = target.as_slice() {
                remove_any(&dir.join(t)).map_err(io_bad(&what))?;
            }
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );
        let dir = resolve_dir(root, parent, true, &what)?;
        let dest = dir.join(name);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let is_dir = fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    remove_any(&dest).map_err(io_bad(&what))?;
                    fs::create_dir(&dest).map_err(io_bad(&what))?;
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(io_bad(&what))?;
            }
            T::Regular | T::Continuous => {
                remove_any(&dest).map_err(io_bad(&what))?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                    .map_err(io_bad(&what))?;
                io::copy(&mut entry, &mut f)
                    .map_err(io_bad(format!("{what}: corrupt or truncated archive")))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(io_bad(&what))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(io_bad(&what))?
                    .ok_or_else(|| bad(format!("{what}: symlink without a target")))?
                    .into_owned();
                remove_any(&dest).map_err(io_bad(&what))?;
                std::os::unix::fs::symlink(&target, &dest).map_err(io_bad(&what))?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(io_bad(&what))?
                    .ok_or_else(|| bad(format!("{what}: hard link without a target")))?
                    .into_owned();
                let tc = clean_relative(&target, &what)?;
                let (tname, tparent) = tc
                    .split_last()
                    .ok_or_else(|| bad(format!("{what}: hard link to the root")))?;
                let src = resolve_dir(root, tparent, false, &what)?.join(tname);
                if !fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
                    return Err(bad(format!(
                        "{what}: hard link to {}, which is not a file in the image (refused)",
                        target.display()
                    )));
                }
                remove_any(&dest).map_err(io_bad(&what))?;
                fs::hard_link(&src, &dest).map_err(io_bad(&what))?;
            }
            T::Char | T::Block => {
                return Err(bad(format!(
                    "{what}: device node (refused: an image may not carry device nodes)"
                )))
            }
            // FIFOs, PAX and GNU metadata entries (the tar crate applies long names itself).
            _ => continue,
        }
        if as_root && kind != T::Link {
            std::os::unix::fs::lchown(&dest, Some(uid), Some(gid)).map_err(io_bad(&what))?;
        }
    }
    Ok(())
}

/// Reader for a layer: gunzipped when it starts with the gzip magic.
fn layer_reader(mut f: impl Read + 'static) -> Result<Box<dyn Read>, ImageError> {
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut f, &mut magic).map_err(io_bad("read layer"))?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(f);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(head)))
    } else if n == 2 && magic == [0x28, 0xb5] {
        Err(bad("zstd-compressed layers are not supported (hint: export with gzip or uncompressed layers)"))
    } else {
        Ok(Box::new(head))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

/// `blobs/sha256/<hex>` of `digest`, after checking the blob's content hashes to it.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| bad(format!("unsupported or malformed digest {digest:?}")))?;
    let path = layout.join("blobs/sha256").join(hex);
    let mut f = File::open(&path).map_err(io_bad(format!("blob {digest}")))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(io_bad(format!("read blob {digest}")))?;
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != hex {
        return Err(bad(format!(
            "blob {digest} is corrupt (its content hashes to sha256:{got})"
        )));
    }
    Ok(path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, ImageError> {
    let text = fs::read(path).map_err(io_bad(format!("read {what}")))?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("{what} is malformed: {e}")))
}

/// Applies the layers of the OCI image layout `layout` (its first image, or the first
/// linux/amd64 one of a nested index) on `root`; returns how many.
pub fn unpack_oci_layout(layout: &Path, root: &Path) -> Result<usize, ImageError> {
    if !layout.join("oci-layout").is_file() {
        return Err(bad(format!(
            "{} is not an OCI image layout (no oci-layout file)",
            layout.display()
        )));
    }
    let index: Index = read_json(&layout.join("index.json"), "index.json")?;
    let mut desc = index
        .manifests
        .into_iter()
        .next()
        .ok_or_else(|| bad("index.json lists no image"))?;
    // A nested index (multi-platform): take its first manifest.
    for _ in 0..4 {
        if !desc.media_type.contains("index") {
            break;
        }
        let nested: Index = read_json(&blob(layout, &desc.digest)?, "nested index")?;
        desc = nested
            .manifests
            .into_iter()
            .next()
            .ok_or_else(|| bad("nested index lists no image"))?;
    }
    let manifest: Manifest = read_json(&blob(layout, &desc.digest)?, "image manifest")?;
    for (i, l) in manifest.layers.iter().enumerate() {
        let path = blob(layout, &l.digest)?;
        let f = BufReader::new(File::open(&path).map_err(io_bad(format!("open layer {i}")))?);
        apply_layer(layer_reader(f)?, root, &format!("layer {i} ({})", l.digest))?;
    }
    Ok(manifest.layers.len())
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Applies the layers of the `docker save` archive `archive` (its first image) on `root`, using
/// `scratch` (an empty directory) to unpack the archive itself; returns how many.
pub fn unpack_docker_archive(
    archive: &Path,
    root: &Path,
    scratch: &Path,
) -> Result<usize, ImageError> {
    let f = File::open(archive).map_err(io_bad(format!("open {}", archive.display())))?;
    apply_layer(BufReader::new(f), scratch, "archive")?;
    let manifests: Vec<DockerManifest> =
        read_json(&scratch.join("manifest.json"), "manifest.json")?;
    let m = manifests
        .into_iter()
        .next()
        .ok_or_else(|| bad("manifest.json lists no image"))?;
    for (i, l) in m.layers.iter().enumerate() {
        let what = format!("layer {i} ({l})");
        let comps = clean_relative(Path::new(l), &what)?;
        let (name, parent) = comps
            .split_last()
            .ok_or_else(|| bad(format!("{what}: empty path")))?;
        let dir = resolve_dir(scratch, parent, false, &what)?;
        // The layer file itself may be a symlink to an identical layer (older `docker save`).
        let mut p = dir.join(name);
        for _ in 0..MAX_HOPS {
            if !fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                break;
            }
            let t = fs::read_link(&p).map_err(io_bad(&what))?;
            let base = p.parent().unwrap_or(scratch).to_path_buf();
            let rel = base.strip_prefix(scratch).unwrap_or(Path::new("")).join(t);
            let mut norm: Vec<OsString> = Vec::new();
            for c in rel.components() {
                match c {
                    Component::Normal(n) => norm.push(n.to_os_string()),
                    Component::ParentDir if norm.pop().is_some() => {}
                    Component::CurDir => {}
                    _ => return Err(bad(format!("{what}: points outside the archive (refused)"))),
                }
            }
            let (n, par) = norm
                .split_last()
                .ok_or_else(|| bad(format!("{what}: empty link")))?;
            p = resolve_dir(scratch, par, false, &what)?.join(n);
        }
        if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            return Err(bad(format!("{what}: missing from the archive")));
        }
        let f = BufReader::new(File::open(&p).map_err(io_bad(&what))?);
        apply_layer(layer_reader(f)?, root, &what)?;
    }
    Ok(m.layers.len())
}

#[cfg(test)]
#[path = "oci_tests.rs"]
mod tests;
