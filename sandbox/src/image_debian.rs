//! `cairn image build`: a Debian 12 root made with debootstrap (minbase) and apt.
//!
//! debootstrap alone cannot install the default development set: its resolver does not know
//! `:any` dependencies (npm's `node-*` packages depend on `nodejs:any`), so `--include=npm` ends
//! in a dpkg failure ("possibly the package npm is at fault"). So debootstrap makes only the
//! minbase system, and apt, inside it, installs the packages (without recommends, no services
//! started). A package apt does not know is named in the error.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{err, DEV_USER};
use crate::oci;
use crate::sandbox::SandboxError;

/// Where debootstrap and apt fetch from: `CAIRN_DEBIAN_MIRROR`, else deb.debian.org.
fn mirror() -> String {
    std::env::var("CAIRN_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into())
}

/// Combined stdout and stderr of a finished command, or why it could not run.
fn output(cmd: &mut Command, what: &str) -> Result<(bool, String), SandboxError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run {what}: {e}")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `/proc` mounted in the chroot while apt runs (maintainer scripts read it); unmounted on drop.
struct ProcMount<'a>(&'a Path);

impl<'a> ProcMount<'a> {
    fn mount(root: &'a Path) -> Result<Self, SandboxError> {
        let at = root.join("proc");
        fs::create_dir_all(&at).map_err(|e| err(format!("create {}: {e}", at.display())))?;
        let (ok, text) = output(
            Command::new("mount").args(["-t", "proc", "proc"]).arg(&at),
            "mount",
        )?;
        if !ok {
            return Err(err(format!("mount /proc in the image: {}", text.trim())));
        }
        Ok(ProcMount(root))
    }
}

impl Drop for ProcMount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.0.join("proc"))
            .status();
    }
}

/// debootstrap minbase, apt-get install `pkgs`, then the unprivileged user. Needs root
/// (debootstrap and apt chroot and make device nodes) and a Debian mirror.
pub(super) fn build(root: &Path, pkgs: &[String]) -> Result<(), SandboxError> {
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err(err(
            "building an image runs debootstrap, which needs root (hint: sudo cairn image build ...; \
             importing an OCI image does not need root)",
        ));
    }
    for p in pkgs {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !ok {
            return Err(err(format!("{p:?} is not a Debian package name")));
        }
    }
    let (ok, text) = output(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg("bookworm")
            .arg(root)
            .arg(mirror()),
        "debootstrap (hint: apt-get install debootstrap)",
    )?;
    if !ok {
        return Err(err(failure(&text, pkgs, "debootstrap")));
    }
    if !pkgs.is_empty() {
        apt_install(root, pkgs)?;
    }
    let user = Command::new("chroot")
        .arg(root)
        .args(["useradd", "-m", "-s", "/bin/bash", "-G", "sudo", DEV_USER])
        .status();
    if !user.is_ok_and(|s| s.success()) {
        return Err(err(format!(
            "could not add the user {DEV_USER} in the image (hint: include sudo in --packages)"
        )));
    }
    oci::write_in_root(
        root,
        &format!("etc/sudoers.d/{DEV_USER}"),
        format!("{DEV_USER} ALL=(ALL) NOPASSWD:ALL\n").as_bytes(),
        0o440,
    )?;
    let _ = fs::remove_dir_all(root.join("var/cache/apt/archives"));
    let _ = fs::create_dir_all(root.join("var/cache/apt/archives/partial"));
    Ok(())
}

fn apt_install(root: &Path, pkgs: &[String]) -> Result<(), SandboxError> {
    // No service starts in the chroot.
    let policy = "usr/sbin/policy-rc.d";
    oci::write_in_root(root, policy, b"#!/bin/sh\nexit 101\n", 0o755)?;
    let _proc = ProcMount::mount(root)?;
    let apt = |args: &[&str]| {
        let mut c = Command::new("chroot");
        c.arg(root)
            .arg("apt-get")
            .args(["-q", "-y", "-o", "Dpkg::Use-Pty=0"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C.UTF-8")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    };
    let (ok, text) = output(&mut apt(&["update"]), "apt-get update")?;
    if !ok {
        return Err(err(failure(&text, pkgs, "apt-get update")));
    }
    let mut install = apt(&["install", "--no-install-recommends"]);
    install.args(pkgs);
    let (ok, text) = output(&mut install, "apt-get install")?;
    if !ok {
        return Err(err(failure(&text, pkgs, "apt-get install")));
    }
    let _ = output(&mut apt(&["clean"]), "apt-get clean");
    let _ = fs::remove_file(root.join(policy));
    Ok(())
}

/// One line for a failed debootstrap or apt: the packages it could not find, else its last
/// `E:` (or `W:`) line.
pub fn failure(output: &str, pkgs: &[String], what: &str) -> String {
    if let Some(l) = output
        .lines()
        .find(|l| l.contains("Couldn't find these debs"))
    {
        let missing = l.rsplit(':').next().unwrap_or("").trim();
        return format!("no such package: {missing} (nothing was kept)");
    }
    let named: Vec<&str> = pkgs
        .iter()
        .filter(|p| output.contains(&format!("Unable to locate package {p}")))
        .map(String::as_str)
        .collect();
    if !named.is_empty() {
        return format!("no such package: {} (nothing was kept)", named.join(", "));
    }
    let last = output
        .lines()
        .rev()
        .find(|l| l.starts_with("E:"))
        .or_else(|| output.lines().rev().find(|l| l.starts_with("W:")))
        .or_else(|| output.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("no output");
    format!("{what} failed: {} (nothing was kept)", last.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_package_is_named() {
        let pkgs = vec!["git".to_string(), "nosuchpkg".to_string()];
        let m = failure(
            "I: Resolving\nE: Couldn't find these debs: nosuchpkg\n",
            &pkgs,
            "debootstrap",
        );
        assert_eq!(m, "no such package: nosuchpkg (nothing was kept)");
        let m = failure(
            "Reading package lists...\nE: Unable to locate package nosuchpkg\n",
            &pkgs,
            "apt-get install",
        );
        assert_eq!(m, "no such package: nosuchpkg (nothing was kept)");
        let m = failure(
            "W: a warning\nE: boom\nW: later\n",
            &pkgs,
            "apt-get install",
        );
        assert_eq!(m, "apt-get install failed: E: boom (nothing was kept)");
    }
}
