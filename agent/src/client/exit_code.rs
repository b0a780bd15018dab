//! Exit codes of `cairn exec` / `cairn agent exec` when no command exit status exists, as shells
//! and Docker use them: 127 for a command not found, 126 for one that cannot be executed, and
//! [`CAIRN_FAILED`] (125) when cairn itself failed or the exec was cut off (a restore or `rm`
//! ended the VM under it). Never 1, which belongs to the command.

use super::ClientError;

/// cairn itself failed, or the command was cut off before it reported an exit status.
pub const CAIRN_FAILED: u8 = 125;
/// The command exists but could not be executed (permission, not an executable).
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;

/// The exit code for an exec that failed with `e`.
pub fn exit_code_of(e: &ClientError) -> u8 {
    match e {
        // The agent's spawn error: `cannot run "ARGV0": <io error> (os error N)`.
        ClientError::Agent(m) if m.starts_with("cannot run ") => {
            let errno = m
                .rsplit_once("(os error ")
                .and_then(|(_, n)| n.trim_end_matches(')').parse::<i32>().ok());
            match errno {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => NOT_FOUND,
                Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EPERM) => NOT_EXECUTABLE,
                _ => CAIRN_FAILED,
            }
        }
        _ => CAIRN_FAILED,
    }
}
