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
//!
//! seccompiler's programs are rearranged to find a syscall by binary search
//! ([`search_tree`]), the built-in ones at build time, JSON from `--seccomp-filter` when it is
//! compiled: installing a filter then costs the kernel far less, and so does each syscall.
//! Compiled filter files (Firecracker's format) are installed as they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::sock_filter;

mod search_tree;

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

/// The largest `--seccomp-filter` file read, as in Firecracker (whose loader refuses bigger
/// ones before decoding, so a hostile file cannot make it allocate without bound).
pub const FILTER_FILE_LIMIT: usize = 100_000;

/// The longest program the kernel takes (`BPF_MAXINSNS`).
const BPF_MAX_LEN: usize = 4096;

/// Reads `--seccomp-filter FILE`, in either of Firecracker's formats:
/// - the compiled file Firecracker's `seccompiler-bin` writes and Firecracker itself loads: a
///   `bitcode`-serialized map from thread kind to BPF program (each instruction a `u64`, the
///   8 bytes of a `struct sock_filter`);
/// - the seccompiler JSON that file is compiled from, compiled here.
///
/// Either holds one filter per thread kind (`"vmm"`, `"api"`, `"vcpu"`); from now on these
/// programs replace the built-in ones. Anything else (a file over [`FILTER_FILE_LIMIT`] bytes,
/// one that decodes as neither, one that lacks or adds a thread kind, a program the kernel would
/// refuse) is an error, so a user never believes a filter is in force when it is not. As in
/// Firecracker, an empty program leaves its thread kind unfiltered. Call once, before any thread
/// installs its filter.
pub fn load_custom(path: &Path) -> Result<(), SeccompError> {
    let bad = |reason: String| SeccompError::CustomFilter {
        path: path.to_owned(),
        reason,
    };
    let programs = read_filter_file(path).map_err(bad)?;
    CUSTOM
        .set(programs)
        .map_err(|_| bad("a custom filter is already loaded".into()))
}

/// Reads and checks a filter file ([`load_custom`]); the error is the reason alone.
pub fn read_filter_file(path: &Path) -> Result<HashMap<&'static str, Vec<sock_filter>>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(FILTER_FILE_LIMIT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > FILTER_FILE_LIMIT {
        return Err(format!(
            "the file is over the limit of {FILTER_FILE_LIMIT} bytes"
        ));
    }
    parse_filters(&bytes)
}

/// Decodes a filter file's bytes: JSON when its first non-blank byte is `{` (which a compiled
/// file with three thread kinds never starts with), else the compiled format.
pub fn parse_filters(bytes: &[u8]) -> Result<HashMap<&'static str, Vec<sock_filter>>, String> {
    let looks_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    let mut map = if looks_json {
        compile_json(bytes)?
            .into_iter()
            .map(|(kind, linear)| {
                let searched = search_tree::to_search_tree(&linear).unwrap_or(linear);
                (kind, searched)
            })
            .collect()
    } else {
        decode_compiled(bytes)?
    };
    let mut unknown: Vec<&String> = map
        .keys()
        .filter(|k| !ThreadKind::ALL.iter().any(|kind| kind.name() == k.as_str()))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(format!(
            "unknown thread kind(s) {unknown:?} (expected vmm, api and vcpu)"
        ));
    }
    let mut programs = HashMap::new();
    for kind in ThreadKind::ALL {
        let program = map
            .remove(kind.name())
            .ok_or_else(|| format!("it has no filter for the {kind} thread"))?;
        check_program(&program).map_err(|e| format!("the {kind} filter is invalid: {e}"))?;
        programs.insert(kind.name(), program);
    }
    Ok(programs)
}

/// Compiles seccompiler JSON. Firecracker's own JSON (`resources/seccomp/*.json`, the input of
/// its `seccompiler-bin`) names a filter's actions `default_action` and `filter_action` where
/// rust-vmm's seccompiler says `mismatch_action` and `match_action`; both spellings are taken.
fn compile_json(bytes: &[u8]) -> Result<HashMap<String, Vec<sock_filter>>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("not a seccompiler JSON filter file ({e})");
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(&e))?;
    if let Some(filters) = doc.as_object_mut() {
        for filter in filters.values_mut().filter_map(|f| f.as_object_mut()) {
            for (firecracker, rust_vmm) in [
                ("default_action", "mismatch_action"),
                ("filter_action", "match_action"),
            ] {
                if !filter.contains_key(rust_vmm) {
                    if let Some(action) = filter.remove(firecracker) {
                        filter.insert(rust_vmm.to_string(), action);
                    }
                }
            }
        }
    }
    let text = doc.to_string();
    let arch =
        seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    seccompiler::compile_from_json(text.as_bytes(), arch).map_err(|e| bad(&e))
}

/// Firecracker's compiled format (`seccompiler-bin` output): `bitcode` of
/// `HashMap<String, Vec<u64>>`, each `u64` one `struct sock_filter` in native byte order, the
/// thread kinds matched without regard to case.
fn decode_compiled(bytes: &[u8]) -> Result<HashMap<String, Vec<sock_filter>>, String> {
    let map: HashMap<String, Vec<u64>> = bitcode::deserialize(bytes).map_err(|e| {
        format!(
            "neither a compiled Firecracker filter file (seccompiler-bin output: {e}) nor \
             seccompiler JSON"
        )
    })?;
    let mut out = HashMap::new();
    for (name, program) in map {
        let insns = program
            .into_iter()
            .map(|insn| {
                let b = insn.to_ne_bytes();
                sock_filter {
                    code: u16::from_ne_bytes([b[0], b[1]]),
                    jt: b[2],
                    jf: b[3],
                    k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                }
            })
            .collect();
        if out.insert(name.to_lowercase(), insns).is_some() {
            return Err(format!("the thread kind {name:?} appears twice"));
        }
    }
    Ok(out)
}

/// What the kernel checks of a seccomp program before taking it (`bpf_check_classic` and
/// `seccomp_check_filter`), checked here so a bad file is refused at start, not when a thread
/// first installs it: at most 4096 instructions, only the opcodes seccomp allows, every jump
/// inside the program, the last instruction a return. Empty means "no filter".
fn check_program(program: &[sock_filter]) -> Result<(), String> {
    const ALLOWED: &[u16] = &[
        0x20, // BPF_LD | BPF_W | BPF_ABS (seccomp_data loads)
        0x80, // BPF_LD | BPF_W | BPF_LEN
        0x81, // BPF_LDX | BPF_W | BPF_LEN
        0x06, 0x16, // BPF_RET | BPF_K, BPF_RET | BPF_A
        0x04, 0x0c, 0x14, 0x1c, 0x24, 0x2c, 0x34, 0x3c, 0x44, 0x4c, 0x54, 0x5c, 0x64, 0x6c, 0x74,
        0x7c, 0x84, 0x94, 0x9c, 0xa4, 0xac, // BPF_ALU
        0x00, 0x01, 0x60, 0x61, 0x02, 0x03, // BPF_LD/LDX | BPF_IMM/MEM, BPF_ST, BPF_STX
        0x87, 0x07, // BPF_MISC | BPF_TXA / BPF_TAX
        0x05, 0x15, 0x1d, 0x25, 0x2d, 0x35, 0x3d, 0x45, 0x4d, // BPF_JMP
    ];
    if program.is_empty() {
        return Ok(());
    }
    if program.len() > BPF_MAX_LEN {
        return Err(format!(
            "{} instructions, over the kernel's limit of {BPF_MAX_LEN}",
            program.len()
        ));
    }
    let len = program.len();
    for (i, insn) in program.iter().enumerate() {
        if !ALLOWED.contains(&insn.code) {
            return Err(format!(
                "instruction {i} has opcode {:#06x}, which seccomp does not allow",
                insn.code
            ));
        }
        let next = i + 1;
        let in_range = |offset: usize| next.checked_add(offset).is_some_and(|t| t < len);
        let ok = match insn.code {
            0x05 => in_range(insn.k as usize),
            c if c & 0x07 == 0x05 => in_range(insn.jt.into()) && in_range(insn.jf.into()),
            _ => true,
        };
        if !ok {
            return Err(format!("instruction {i} jumps past the end of the program"));
        }
        // BPF_LD | BPF_ABS loads must be 4-byte aligned and inside struct seccomp_data (64 bytes).
        if insn.code == 0x20 && (insn.k % 4 != 0 || insn.k >= 64) {
            return Err(format!(
                "instruction {i} loads offset {} outside seccomp_data",
                insn.k
            ));
        }
        // BPF_MEM scratch slots 0..16.
        if matches!(insn.code, 0x60 | 0x61 | 0x02 | 0x03) && insn.k >= 16 {
            return Err(format!("instruction {i} uses scratch slot {}", insn.k));
        }
    }
    match program[len - 1].code {
        0x06 | 0x16 => Ok(()),
        _ => Err("the last instruction is not a return".into()),
    }
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
/// Irreversible: from now on a syscall not in the filter kills the process. An empty program
/// (possible only from `--seccomp-filter`, as in Firecracker) installs nothing.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = program(kind)?;
    if program.is_empty() {
        return Ok(());
    }
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

    /// The built-in programs as Firecracker's `seccompiler-bin` writes them.
    fn compiled(kinds: &[&str]) -> Vec<u8> {
        let map: HashMap<String, Vec<u64>> = kinds
            .iter()
            .map(|&name| {
                let kind = ThreadKind::ALL.into_iter().find(|k| k.name() == name);
                let insns = kind.map_or(vec![], |k| program(k).unwrap());
                (name.to_string(), insns.iter().map(to_u64).collect())
            })
            .collect();
        bitcode::serialize(&map).unwrap()
    }

    fn to_u64(i: &sock_filter) -> u64 {
        let mut b = [0u8; 8];
        b[..2].copy_from_slice(&i.code.to_ne_bytes());
        b[2] = i.jt;
        b[3] = i.jf;
        b[4..].copy_from_slice(&i.k.to_ne_bytes());
        u64::from_ne_bytes(b)
    }

    fn same(a: &[sock_filter], b: &[sock_filter]) -> bool {
        a.iter().map(to_u64).eq(b.iter().map(to_u64))
    }

    #[test]
    fn a_compiled_file_decodes_to_its_programs() {
        let bytes = compiled(&["vmm", "api", "vcpu"]);
        assert_ne!(bytes.first(), Some(&b'{'));
        let map = parse_filters(&bytes).unwrap();
        for kind in ThreadKind::ALL {
            assert!(same(&map[kind.name()], &program(kind).unwrap()), "{kind}");
        }
        // Firecracker matches thread kinds without regard to case.
        let map: HashMap<String, Vec<u64>> = [("VMM", vec![]), ("Api", vec![]), ("vcpu", vec![])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let map = parse_filters(&bitcode::serialize(&map).unwrap()).unwrap();
        assert!(map.values().all(|p| p.is_empty()));
    }

    #[test]
    fn bad_compiled_files_are_refused_with_a_reason() {
        let good = compiled(&["vmm", "api", "vcpu"]);
        for cut in [0, 1, good.len() / 2, good.len() - 1] {
            let e = parse_filters(&good[..cut]).unwrap_err();
            assert!(e.contains("compiled Firecracker filter"), "{cut}: {e}");
        }
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0, 1, 2]);
        assert!(parse_filters(&trailing).is_err());
        let e = parse_filters(&compiled(&["vmm", "api"])).unwrap_err();
        assert!(e.contains("no filter for the vcpu thread"), "{e}");
        let e = parse_filters(&compiled(&["vmm", "api", "vcpu", "bogus"])).unwrap_err();
        assert!(
            e.contains("unknown thread kind") && e.contains("bogus"),
            "{e}"
        );
        assert!(parse_filters(b"").is_err());
        assert!(parse_filters(&[0xff; 64]).is_err());
    }

    #[test]
    fn oversized_files_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bpf");
        std::fs::write(&path, vec![0u8; FILTER_FILE_LIMIT + 1]).unwrap();
        let e = read_filter_file(&path).unwrap_err();
        assert!(e.contains("over the limit of 100000 bytes"), "{e}");
    }

    #[test]
    fn programs_the_kernel_would_refuse_are_refused() {
        let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
        let ret = || insn(0x06, 0, 0, 0x7fff_0000);
        let with = |vcpu: Vec<sock_filter>| {
            let map: HashMap<String, Vec<u64>> = [
                ("vmm", vec![to_u64(&ret())]),
                ("api", vec![to_u64(&ret())]),
                ("vcpu", vcpu.iter().map(to_u64).collect()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            parse_filters(&bitcode::serialize(&map).unwrap())
        };
        assert!(with(vec![ret()]).is_ok());
        assert!(
            with(vec![]).is_ok(),
            "empty is no filter, as in Firecracker"
        );
        let e = with(vec![insn(0x15, 5, 0, 1), ret()]).unwrap_err();
        assert!(
            e.contains("vcpu filter is invalid") && e.contains("jumps past"),
            "{e}"
        );
        let e = with(vec![insn(0x05, 0, 0, u32::MAX), ret()]).unwrap_err();
        assert!(e.contains("jumps past"), "{e}");
        let e = with(vec![insn(0x20, 0, 0, 0)]).unwrap_err();
        assert!(e.contains("not a return"), "{e}");
        let e = with(vec![insn(0xff, 0, 0, 0), ret()]).unwrap_err();
        assert!(e.contains("opcode"), "{e}");
        let e = with(vec![insn(0x20, 0, 0, 100), ret()]).unwrap_err();
        assert!(e.contains("outside seccomp_data"), "{e}");
        let e = with((0..=BPF_MAX_LEN).map(|_| ret()).collect()).unwrap_err();
        assert!(e.contains("over the kernel's limit"), "{e}");
    }

    #[test]
    fn json_files_still_load() {
        let mut doc = serde_json::Map::new();
        for kind in ThreadKind::ALL {
            let path = format!("{}/seccomp/{kind}.json", env!("CARGO_MANIFEST_DIR"));
            let mut one: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let mut filter = one[kind.name()].take();
            if kind == ThreadKind::Vcpu {
                // Firecracker's own names for the two actions.
                let f = filter.as_object_mut().unwrap();
                let a = f.remove("mismatch_action").unwrap();
                f.insert("default_action".into(), a);
                let a = f.remove("match_action").unwrap();
                f.insert("filter_action".into(), a);
            }
            doc.insert(kind.to_string(), filter);
        }
        let text = format!("\n  {}", serde_json::Value::Object(doc));
        let map = parse_filters(text.as_bytes()).unwrap();
        assert_eq!(map.len(), 3);
        assert!(same(&map["vcpu"], &program(ThreadKind::Vcpu).unwrap()));
        let e = parse_filters(b"{ junk").unwrap_err();
        assert!(e.contains("not a seccompiler JSON"), "{e}");
    }

    #[test]
    fn built_in_programs_decide_as_seccompiler_s_linear_programs() {
        for kind in ThreadKind::ALL {
            let path = format!("{}/seccomp/{kind}.json", env!("CARGO_MANIFEST_DIR"));
            let linear = compile_json(&std::fs::read(path).unwrap())
                .unwrap()
                .remove(kind.name())
                .unwrap();
            let shipped = program(kind).unwrap();
            assert!(!same(&shipped, &linear), "{kind} is not rearranged");
            check_program(&shipped).unwrap();
            search_tree::interpreter::assert_same_decisions(&linear, &shipped);
            let (t, l) = (
                search_tree::interpreter::mean_steps(&shipped),
                search_tree::interpreter::mean_steps(&linear),
            );
            eprintln!("{kind}: {t:.1} instructions per syscall, linear {l:.1}");
            assert!(t * 3.0 < l, "{kind}: tree {t}, linear {l}");
        }
    }

    #[test]
    fn disabled_install_is_a_no_op() {
        set_enabled(false);
        assert!(install_for_thread(ThreadKind::Vcpu).is_ok());
        assert!(!enabled());
    }
}
