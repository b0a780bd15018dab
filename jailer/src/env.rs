//! The VMM's command line and environment.

use std::ffi::CString;
use std::path::Path;

/// Variables passed through from the jailer's environment, when set. Everything else is dropped.
/// The `CAIRN_` ones are the VMM's documented switches (docs/vmm.md, docs/checkpoints.md).
pub const PASSED_THROUGH: [&str; 7] = [
    "RUST_LOG",
    "RUST_BACKTRACE",
    "CAIRN_VERIFY_MEMORY",
    "CAIRN_CHECKPOINT_BACKGROUND",
    "CAIRN_RESTORE_FILL",
    "CAIRN_SNAPSHOT_DIRECT_IO",
    "CAIRN_GUEST_MEMORY_DIR",
];

/// The VMM's environment: `PATH=/`, `HOME=/`, plus [`PASSED_THROUGH`] taken from `vars`.
pub fn vmm_env(vars: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut env = vec!["PATH=/".to_string(), "HOME=/".to_string()];
    let mut passed: Vec<(String, String)> = vars
        .filter(|(k, _)| PASSED_THROUGH.contains(&k.as_str()))
        .collect();
    passed.sort();
    env.extend(passed.into_iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// `argv` for the VMM: its own name, then the arguments given after `--`.
pub fn vmm_argv(exec_name: &str, args: &[String]) -> Vec<String> {
    std::iter::once(exec_name.to_string())
        .chain(args.iter().cloned())
        .collect()
}

/// Prepared `execve` arguments (built before the jail is entered, so nothing allocates after the
/// privilege drop but the call itself).
#[derive(Debug)]
pub struct ExecArgs {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl ExecArgs {
    /// Converts to C strings; strings with NUL bytes are rejected.
    pub fn new(path: &Path, argv: &[String], envp: &[String]) -> std::io::Result<Self> {
        let c = |s: &str| {
            CString::new(s).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "argument contains NUL")
            })
        };
        Ok(ExecArgs {
            path: crate::sys::cstring(path)?,
            argv: argv.iter().map(|s| c(s)).collect::<Result<_, _>>()?,
            envp: envp.iter().map(|s| c(s)).collect::<Result<_, _>>()?,
        })
    }

    /// `execve`; returns only on failure.
    pub fn exec(&self) -> std::io::Error {
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays that outlive the call.
        unsafe { libc::execve(self.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        std::io::Error::last_os_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_minimal() {
        let vars = [
            ("HOME", "/root"),
            ("RUST_LOG", "debug"),
            ("SECRET", "x"),
            ("PATH", "/usr/bin"),
            ("CAIRN_RESTORE_FILL", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            vmm_env(vars),
            ["PATH=/", "HOME=/", "CAIRN_RESTORE_FILL=0", "RUST_LOG=debug"]
        );
    }

    #[test]
    fn argv_starts_with_name() {
        assert_eq!(
            vmm_argv("busybox", &["sh".into(), "-c".into()]),
            ["busybox", "sh", "-c"]
        );
        assert!(ExecArgs::new(Path::new("/x"), &["a\0b".into()], &[]).is_err());
    }
}
