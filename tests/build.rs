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
        ("ticker64", "ticker64", None, "flat.ld"),
        ("dirty1m", "ticker64", Some("WINDOW_MIB=1"), "flat.ld"),
        ("dirty256m", "ticker64", Some("WINDOW_MIB=256"), "flat.ld"),
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
}
