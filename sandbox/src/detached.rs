//! The long-lived helpers the CLI leaves behind (`cairn __idle-watch NAME`, `cairn
//! __lease-renew NAME`): the same `cairn` executable, in a session of its own so it outlives the
//! command that started it, with stdout and stderr appended to a log in the sandbox's directory.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::sandbox::{io_err, Home, SandboxError};

/// Starts `cairn SUBCOMMAND NAME` for `home`, detached, logging to `log`; `what` names it in
/// errors ("the idle watcher").
pub fn spawn_cairn(
    home: &Home,
    subcommand: &str,
    name: &str,
    log: &Path,
    what: &str,
) -> Result<(), SandboxError> {
    let exe = std::env::current_exe().map_err(io_err("find the cairn executable"))?;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("open {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("duplicate {}", log.display())))?;
    let mut cmd = Command::new(exe);
    cmd.arg(subcommand)
        .arg(name)
        .env("CAIRN_HOME", home.root())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err(format!("start {what}")))?;
    // Reaped when it ends, so a long-running caller (`cairn serve`) keeps no zombies; a CLI
    // that exits first leaves it to init.
    std::thread::spawn(move || child.wait());
    Ok(())
}
