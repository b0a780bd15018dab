//! Assembles the tiny test guests in `guests/` with GNU as/ld (binutils) into OUT_DIR.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils)"));
    assert!(status.success(), "{cmd:?} failed");
}

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let out = Path::new(&out);
    let src = Path::new("guests");
    println!("cargo:rerun-if-changed=guests");
    for (name, source, defsym, linker_script) in [
        ("hello64", "hello64", None, "flat.ld"),
        ("halt64", "halt64", None, "flat.ld"),
        ("cpuid64", "cpuid64", None, "flat.ld"),
        ("ticker64", "ticker64", None, "flat.ld"),
        ("dirty1m", "ticker64", Some("WINDOW_MIB=1"), "flat.ld"),
        ("dirty256m", "ticker64", Some("WINDOW_MIB=256"), "flat.ld"),
        ("dirty1g", "ticker64", Some("WINDOW_MIB=1024"), "flat.ld"),
        ("mmiofetch64", "mmiofetch64", None, "flat.ld"),
        ("pvh32", "pvh32", None, "pvh.ld"),
    ] {
        let obj = out.join(format!("{name}.o"));
        let mut asm = Command::new("as");
        asm.arg("--64").arg("-I").arg(src);
        if let Some(d) = defsym {
            asm.arg("--defsym").arg(d);
        }
        run(asm.arg("-o").arg(&obj).arg(src.join(format!("{source}.S"))));
        let mut ld = Command::new("ld");
        run(ld
            .arg("-static")
            .arg("-nostdlib")
            .arg("-T")
            .arg(src.join(linker_script))
            .arg("-o")
            .arg(out.join(format!("{name}.elf")))
            .arg(&obj));
    }
    let obj = out.join("real16.o");
    run(Command::new("as")
        .arg("--32")
        .arg("-I")
        .arg(src)
        .arg("-o")
        .arg(&obj)
        .arg(src.join("real16.S")));
    let elf = out.join("real16.elf");
    run(Command::new("ld")
        .args(["-m", "elf_i386", "-Ttext=0x0", "-e", "_start", "-o"])
        .arg(&elf)
        .arg(&obj));
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&elf)
        .arg(out.join("real16.bin")));
    // A bzImage around hello64's code: a one-sector setup header ("HdrS", protocol 2.12,
    // LOADED_HIGH, code32_start 1 MiB) and a protected-mode payload whose 64-bit entry point, at
    // offset 0x200, is hello64 (position independent: RIP-relative data, relative calls).
    let code_bin = out.join("hello64.bin");
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(out.join("hello64.elf"))
        .arg(&code_bin));
    let code = std::fs::read(&code_bin).expect("hello64.bin");
    let mut bz = vec![0u8; 1024];
    bz[0x1f1] = 1; // setup_sects: setup = (1 + 1) * 512 bytes
    bz[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes());
    bz[0x211] = 0x01; // loadflags: LOADED_HIGH
    bz[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    let mut payload = vec![0xf4u8; 0x200]; // hlt: nothing should run before the entry point
    payload.extend_from_slice(&code);
    bz[0x1f4..0x1f8].copy_from_slice(&(payload.len().div_ceil(16) as u32).to_le_bytes());
    bz.extend_from_slice(&payload);
    std::fs::write(out.join("hello64.bzimage"), bz).expect("write bzImage");
}
