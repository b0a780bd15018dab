//! Seccomp filters, one per thread kind (vmm, api, vcpu).
//!
//! The filters are data: `vmm/seccomp/<kind>.json`, in seccompiler's JSON format, with a
//! comment on every syscall saying why the thread needs it. `build.rs` compiles them to BPF at
//! build time and this module includes the programs with `include_bytes!`, so nothing is parsed
//! at run time. A syscall missing from a thread's list kills the whole process with `SIGSYS`.
//!
//! Each thread installs its own filter on itself ([`install_for_thread`], no `TSYNC`):
//! - the API thread, first thing in its closure;
//! - each vCPU thread, first thing in `Vcpu::run`;
//! - the main (VMM) thread, right before it enters the event loop.
//!
//! Filters stack: a thread started after its parent installed a filter carries the parent's
//! filter too, so a vCPU started by an API `InstanceStart` runs under vmm + vcpu.
//!
//! The binary turns filtering on (unless `--no-seccomp`); the library leaves it off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::sock_filter;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Programs from `--seccomp-filter`, which take the place of the built-in ones.
static CUSTOM: OnceLock<HashMap<&'static str, Vec<sock_filter>>> = OnceLock::new();

/// Bytes of one `struct sock_filter` as `build.rs` writes it.
const INSN_BYTES: usize = 8;

static VMM_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_vmm.bpf"));
static API_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_api.bpf"));
static VCPU_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_vcpu.bpf"));

/// The kinds of thread cairn-vmm runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, device emulation, API handling, snapshots.
    Vmm,
    /// The API server thread.
    Api,
    /// A vCPU thread.
    Vcpu,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu];

    /// The kind's name, as in `vmm/seccomp/<name>.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vmm => "vmm",
            Self::Api => "api",
            Self::Vcpu => "vcpu",
        }
    }

    fn bpf_bytes(self) -> &'static [u8] {
        match self {
            Self::Vmm => VMM_BPF,
            Self::Api => API_BPF,
            Self::Vcpu => VCPU_BPF,
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The compiled program for this kind is malformed (a build problem).
    #[error("the built-in {0} filter is malformed")]
    Malformed(ThreadKind),
    /// The `--seccomp-filter` file cannot be used.
    #[error("--seccomp-filter {path}: {reason}")]
    CustomFilter {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The kernel refused the filter (`prctl(PR_SET_NO_NEW_PRIVS)` or `seccomp(2)` failed).
    #[error("installing the {kind} filter failed: {reason}")]
    Install {
        /// The filter's thread kind.
        kind: ThreadKind,
        /// seccompiler's message.
        reason: String,
    },
}

/// Reads `--seccomp-filter FILE`: Firecracker's filter format, a seccompiler JSON document with
/// one filter per thread kind (`"vmm"`, `"api"`, `"vcpu"`), compiled here. From now on these
/// programs replace the built-in ones. Anything else (a file that does not parse, one that lacks
/// a thread kind, a compiled `.bpf` file) is an error, so a user never believes a filter is in
/// force when it is not. Call once, before any thread installs its filter.
pub fn load_custom(path: &Path) -> Result<(), SeccompError> {
    let bad = |reason: String| SeccompError::CustomFilter {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| bad(e.to_string()))?;
    let mut map =
        seccompiler::compile_from_json(std::io::BufReader::new(file), arch).map_err(|e| {
            bad(format!(
                "not a seccompiler JSON filter file ({e}); Firecracker's compiled .bpf files are \
             not read: pass the JSON they are compiled from"
            ))
        })?;
    let mut programs = HashMap::new();
    for kind in ThreadKind::ALL {
        let program = map
            .remove(kind.name())
            .ok_or_else(|| bad(format!("it has no filter for the {kind} thread")))?;
        programs.insert(kind.name(), program);
    }
    if let Some(extra) = map.keys().next() {
        return Err(bad(format!(
            "unknown thread kind {extra:?} (expected vmm, api and vcpu)"
        )));
    }
    CUSTOM
        .set(programs)
        .map_err(|_| bad("a custom filter is already loaded".into()))
}

/// Turn filtering on or off for threads started from now on (the binary turns it on unless
/// `--no-seccomp`; the library leaves it off).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether filters are installed.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// The BPF program for `kind`: from `--seccomp-filter` when one was loaded
/// ([`load_custom`]), else as compiled from `vmm/seccomp/<kind>.json` at build time.
pub fn program(kind: ThreadKind) -> Result<Vec<sock_filter>, SeccompError> {
    if let Some(custom) = CUSTOM.get().and_then(|m| m.get(kind.name())) {
        return Ok(custom.clone());
    }
    let bytes = kind.bpf_bytes();
    if bytes.is_empty() || bytes.len() % INSN_BYTES != 0 {
        return Err(SeccompError::Malformed(kind));
    }
    Ok(bytes
        .chunks_exact(INSN_BYTES)
        .map(|c| sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Install the filter for `kind` on the calling thread, whether or not filtering is enabled.
/// Irreversible: from now on a syscall not in the filter kills the process.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = program(kind)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install {
        kind,
        reason: e.to_string(),
    })
}

/// Install the filter for `kind` on the calling thread, when filtering is enabled.
pub fn install_for_thread(kind: ThreadKind) -> Result<(), String> {
    if !enabled() {
        return Ok(());
    }
    install(kind).map_err(|e| e.to_string())?;
    tracing::debug!("seccomp filter {kind} installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_decodes_and_ends_in_a_return() {
        for kind in ThreadKind::ALL {
            let p = program(kind).unwrap();
            assert!(p.len() > 10, "{kind}: {} instructions", p.len());
            // BPF_RET | BPF_K: the default (kill) action closes every program.
            assert_eq!(p.last().unwrap().code, 0x06, "{kind}");
        }
    }

    #[test]
    fn disabled_install_is_a_no_op() {
        set_enabled(false);
        assert!(install_for_thread(ThreadKind::Vcpu).is_ok());
        assert!(!enabled());
    }
}
