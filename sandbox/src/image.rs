//! The default guest image: kernel, the Debian root disk (or the initramfs) with the agent, and
//! boot arguments from `guest/build --agent PATH --rootfs`, and where the `cairn-vmm` and
//! `cairn-agent` binaries are.
//!
//! Lookups, first match wins:
//! - kernel/initrd/boot args: `CAIRN_KERNEL` + `CAIRN_INITRD` (+ `CAIRN_BOOT_ARGS`, and
//!   `CAIRN_ROOTFS` for a root disk image), else the output of `guest/build --quiet --agent
//!   AGENT --rootfs` (`CAIRN_GUEST_BUILD`, else `guest/build` in a parent directory of the
//!   `cairn` executable or of the source tree it was built from). If the root disk cannot be
//!   built (no network for debootstrap, say), `guest/build` runs again without `--rootfs` and
//!   the sandbox boots from the initramfs, with a note. `CAIRN_ROOTFS=none` asks for the
//!   initramfs outright;
//! - `cairn-vmm`: `CAIRN_VMM`, else next to the `cairn` executable, else `PATH`;
//! - the static agent: `CAIRN_AGENT_BIN`, else `<target>/x86_64-unknown-linux-gnu/release/cairn-agent`
//!   beside the `cairn` executable's target directory, else `cairn-agent` next to `cairn`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why the image or a binary could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A needed program or file is missing.
    #[error("{what} not found (hint: {hint})")]
    Missing {
        /// What was looked for.
        what: String,
        /// How to provide it.
        hint: String,
    },
    /// `guest/build` failed.
    #[error("{script} failed: {reason}")]
    Build {
        /// The script.
        script: PathBuf,
        /// Why.
        reason: String,
    },
    /// A container image could not be imported (the text says why; nothing is kept).
    #[error("image: {0}")]
    Import(String),
    /// The sandbox's root disk could not be prepared.
    #[error("root disk: {0}")]
    RootDisk(String),
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// ELF vmlinux.
    pub kernel: PathBuf,
    /// Uncompressed initramfs with `/sbin/cairn-agent` (used when there is no `rootfs`).
    pub initrd: PathBuf,
    /// Kernel command line.
    pub boot_args: String,
    /// The ext4 root disk image (`guest/build --rootfs`), if there is one.
    pub rootfs: Option<PathBuf>,
    /// A custom CPU template this host needs (`guest/build`'s `cpu_config=`), if any.
    pub cpu_config: Option<PathBuf>,
    /// Why the image falls back to the initramfs, to tell the user.
    pub note: Option<String>,
}

/// `PREFIX/lib/cairn` of an installed `cairn` (`PREFIX/bin/cairn`; see `scripts/install`):
/// the static agent, the static VMM for jails, the guest recipe and the prebuilt guest image.
pub fn lib_dir() -> Option<PathBuf> {
    exe_dir()
        .and_then(|d| d.parent().map(|p| p.join("lib/cairn")))
        .filter(|d| d.is_dir())
}

/// The guest image `scripts/install` built: `PREFIX/lib/cairn/image/guest.txt`, the lines
/// `guest/build` printed, naming files in that directory.
pub const INSTALLED_IMAGE: &str = "image/guest.txt";

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Directories to search upwards from: the executable's and the source tree's.
fn roots() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = exe_dir() {
        v.push(d);
    }
    v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    v
}

fn find_upwards(rel: &str) -> Option<PathBuf> {
    roots()
        .iter()
        .flat_map(|r| r.ancestors().map(|a| a.join(rel)).collect::<Vec<_>>())
        .find(|p| p.is_file())
}

/// The `cairn-vmm` binary.
pub fn vmm_binary() -> Result<PathBuf, ImageError> {
    if let Some(p) = std::env::var_os("CAIRN_VMM") {
        return Ok(p.into());
    }
    if let Some(p) = exe_dir()
        .map(|d| d.join("cairn-vmm"))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    in_path("cairn-vmm").ok_or_else(|| ImageError::Missing {
        what: "cairn-vmm".into(),
        hint: "build it with `cargo build --release -p cairn-vmm`, or set CAIRN_VMM".into(),
    })
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The static guest agent to put in the initramfs.
pub fn agent_binary() -> Result<PathBuf, ImageError> {
    if let Some(p) = std::env::var_os("CAIRN_AGENT_BIN") {
        return Ok(p.into());
    }
    let rel = "x86_64-unknown-linux-gnu/release/cairn-agent";
    let candidates = exe_dir()
        .into_iter()
        .flat_map(|d| d.ancestors().map(|a| a.join(rel)).collect::<Vec<_>>())
        .chain(lib_dir().map(|d| d.join("cairn-agent")));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::Missing {
            what: "static cairn-agent".into(),
            hint: "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p cairn-agent \
                   --target x86_64-unknown-linux-gnu, scripts/install, or set CAIRN_AGENT_BIN"
                .into(),
        })
}

/// The guest image, from the environment or `guest/build`.
pub fn guest_image() -> Result<GuestImage, ImageError> {
    if let (Some(k), Some(i)) = (
        std::env::var_os("CAIRN_KERNEL"),
        std::env::var_os("CAIRN_INITRD"),
    ) {
        return Ok(GuestImage {
            kernel: k.into(),
            initrd: i.into(),
            boot_args: std::env::var("CAIRN_BOOT_ARGS")
                .unwrap_or_else(|_| "console=ttyS0 reboot=k panic=1 pci=off".into()),
            rootfs: std::env::var_os("CAIRN_ROOTFS")
                .filter(|r| r != "none")
                .map(PathBuf::from),
            cpu_config: std::env::var_os("CAIRN_CPU_CONFIG")
                .filter(|r| !r.is_empty())
                .map(PathBuf::from),
            note: None,
        });
    }
    let installed = lib_dir().map(|d| d.join(INSTALLED_IMAGE));
    let script = match std::env::var_os("CAIRN_GUEST_BUILD") {
        Some(p) => PathBuf::from(p),
        None => {
            if let Some(img) = installed.as_deref().and_then(installed_image) {
                return Ok(img);
            }
            find_upwards("guest/build")
                .or_else(|| {
                    lib_dir()
                        .map(|d| d.join("guest/build"))
                        .filter(|p| p.is_file())
                })
                .ok_or_else(|| ImageError::Missing {
                    what: "guest/build".into(),
                    hint: "run scripts/install, run cairn from its source tree, or set \
                           CAIRN_GUEST_BUILD or CAIRN_KERNEL + CAIRN_INITRD"
                        .into(),
                })?
        }
    };
    let agent = agent_binary()?;
    if std::env::var_os("CAIRN_ROOTFS").is_some_and(|r| r == "none") {
        return run_build(&script, &agent, false);
    }
    match run_build(&script, &agent, true) {
        Ok(img) if img.rootfs.is_some() => Ok(img),
        Ok(_) => Err(ImageError::Build {
            script,
            reason: "no rootfs= line on stdout with --rootfs".into(),
        }),
        Err(e) => {
            let mut img = run_build(&script, &agent, false)?;
            img.note = Some(format!(
                "no root disk image ({e}); booting from the initramfs (set CAIRN_ROOTFS=none to \
                 ask for that and skip this attempt)"
            ));
            Ok(img)
        }
    }
}

/// `script`'s answer, remembered from an earlier run while nothing it depends on changed
/// ([`crate::build_answer`]), else from running it.
fn run_build(script: &Path, agent: &Path, rootfs: bool) -> Result<GuestImage, ImageError> {
    let key = crate::build_answer::key(script, agent, &[if rootfs { "--rootfs" } else { "" }]);
    let remembered = crate::build_answer::recall(&key)
        .and_then(|text| parse_build_output(&text))
        .filter(|img| {
            let files = [Some(&img.kernel), Some(&img.initrd), img.rootfs.as_ref()];
            let all = files.into_iter().flatten().chain(img.cpu_config.as_ref());
            all.into_iter().all(|p| p.is_file())
        });
    if let Some(img) = remembered {
        return Ok(img);
    }
    let mut cmd = Command::new(script);
    cmd.arg("--quiet").arg("--agent").arg(agent);
    if rootfs {
        cmd.arg("--rootfs");
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| ImageError::Build {
            script: script.to_path_buf(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ImageError::Build {
            script: script.to_path_buf(),
            reason: format!("{}", out.status),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let img = parse_build_output(&text).ok_or_else(|| ImageError::Build {
        script: script.to_path_buf(),
        reason: "no kernel=/initrd=/boot_args= lines on stdout".into(),
    })?;
    crate::build_answer::keep(&key, &text);
    Ok(img)
}

/// The guest recipe directory (`guest/`, with `build` and `rootfs/`): the source tree's, else
/// the installed one.
pub fn recipe_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRN_GUEST_BUILD") {
        return PathBuf::from(p).parent().map(Path::to_path_buf);
    }
    find_upwards("guest/build")
        .or_else(|| {
            lib_dir()
                .map(|d| d.join("guest/build"))
                .filter(|p| p.is_file())
        })
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The image `scripts/install` prebuilt, when its description and files are all there.
fn installed_image(desc: &Path) -> Option<GuestImage> {
    let img = parse_build_output(&std::fs::read_to_string(desc).ok()?)?;
    let files = [Some(&img.kernel), Some(&img.initrd), img.rootfs.as_ref()];
    files.iter().flatten().all(|p| p.is_file()).then_some(img)
}

/// Parses `guest/build`'s `key=value` lines.
pub fn parse_build_output(text: &str) -> Option<GuestImage> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(str::to_string)
    };
    Some(GuestImage {
        kernel: get("kernel")?.into(),
        initrd: get("initrd")?.into(),
        boot_args: get("boot_args")?,
        rootfs: get("rootfs").map(PathBuf::from),
        cpu_config: get("cpu_config").map(PathBuf::from),
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_build_lines() {
        let img = parse_build_output(
            "kernel=/k/vmlinux\ninitrd=/i/initrd.cpio\nboot_args=console=ttyS0 a=b\n",
        )
        .unwrap();
        assert_eq!(img.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!(img.initrd, PathBuf::from("/i/initrd.cpio"));
        assert_eq!(img.boot_args, "console=ttyS0 a=b");
        assert_eq!(img.rootfs, None);
        assert!(parse_build_output("kernel=/k\n").is_none());
        let img = parse_build_output("kernel=/k\ninitrd=/i\nboot_args=x\nrootfs=/r/rootfs.ext4\n")
            .unwrap();
        assert_eq!(img.rootfs, Some(PathBuf::from("/r/rootfs.ext4")));
    }

    #[test]
    fn without_a_root_image_the_initramfs_is_used_with_a_note() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("build");
        // A guest/build whose --rootfs fails (as without network for debootstrap).
        std::fs::write(
            &script,
            "#!/bin/sh\nfor a; do [ \"$a\" = --rootfs ] && { echo 'debootstrap failed' >&2; exit 1; }; done\n\
             echo kernel=/k; echo initrd=/i; echo boot_args=console=ttyS0\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The only test that sets these variables; nothing else in this crate's tests reads them.
        std::env::remove_var("CAIRN_KERNEL");
        std::env::set_var("CAIRN_GUEST_BUILD", &script);
        std::env::set_var("CAIRN_AGENT_BIN", "/nonexistent/agent");
        let img = guest_image().unwrap();
        assert_eq!(img.rootfs, None);
        assert_eq!(img.initrd, PathBuf::from("/i"));
        assert!(img.note.unwrap().contains("initramfs"));
        std::env::set_var("CAIRN_ROOTFS", "none");
        assert_eq!(guest_image().unwrap().note, None);
        std::env::remove_var("CAIRN_ROOTFS");
        std::env::remove_var("CAIRN_GUEST_BUILD");
        std::env::remove_var("CAIRN_AGENT_BIN");
    }
}
