//! Compiles the seccomp filters in `seccomp/*.json` (seccompiler's JSON format, one file per
//! thread kind) into BPF at build time. Each program is written to `$OUT_DIR/seccomp_<kind>.bpf`
//! as raw `struct sock_filter` records (8 bytes each: code u16, jt u8, jf u8, k u32, little
//! endian), which `src/seccomp/mod.rs` includes with `include_bytes!`. Each program is first
//! rearranged to find a syscall by binary search (`src/seccomp/search_tree.rs`, which explains
//! why).

use std::path::{Path, PathBuf};

#[path = "src/seccomp/search_tree.rs"]
mod search_tree;

/// The thread kinds, each with its `seccomp/<kind>.json` holding one filter named `<kind>`.
const KINDS: [&str; 3] = ["vmm", "api", "vcpu"];

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    for kind in KINDS {
        let json = manifest.join("seccomp").join(format!("{kind}.json"));
        println!("cargo:rerun-if-changed={}", json.display());
        let bytes = match compile(&json, kind, &arch) {
            Ok(b) => b,
            Err(e) => {
                // A broken filter file must fail the build, with the reason.
                eprintln!("seccomp filter {}: {e}", json.display());
                std::process::exit(1);
            }
        };
        let out = out_dir.join(format!("seccomp_{kind}.bpf"));
        if let Err(e) = std::fs::write(&out, bytes) {
            eprintln!("cannot write {}: {e}", out.display());
            std::process::exit(1);
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/seccomp/search_tree.rs");
}

/// Compile the filter named `kind` in `path` for `arch` and serialize its instructions.
fn compile(path: &Path, kind: &str, arch: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let arch = seccompiler::TargetArch::try_from(arch).map_err(|e| e.to_string())?;
    let mut map = seccompiler::compile_from_json(std::io::BufReader::new(file), arch)
        .map_err(|e| e.to_string())?;
    if map.len() != 1 {
        return Err(format!(
            "expected exactly one filter (named {kind:?}), found {}",
            map.len()
        ));
    }
    let program = map
        .remove(kind)
        .ok_or_else(|| format!("no filter named {kind:?}"))?;
    let program = search_tree::to_search_tree(&program)?;
    if program.is_empty() || program.len() > usize::from(u16::MAX) {
        return Err(format!("program of {} instructions", program.len()));
    }
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in &program {
        bytes.extend_from_slice(&insn.code.to_le_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_le_bytes());
    }
    Ok(bytes)
}
