//! `cairn-jailer` binary: see the library's documentation and `docs/jailer.md`.

fn main() {
    let mut argv = Vec::new();
    for (i, arg) in std::env::args_os().enumerate().skip(1) {
        match arg.into_string() {
            Ok(s) => argv.push(s),
            Err(_) => {
                eprintln!(
                    "cairn-jailer: error: {}",
                    cairn_jailer::Error::NonUtf8Arg(i)
                );
                std::process::exit(2);
            }
        }
    }
    match cairn_jailer::main_with_args(&argv) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cairn-jailer: error: {}", e.chain());
            let usage = matches!(e, cairn_jailer::Error::Args(_));
            std::process::exit(if usage { 2 } else { 1 });
        }
    }
}
