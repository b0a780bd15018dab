//! `cairn-vmm`: a thin shell over the `cairn_vmm` library, with Firecracker's command line.

use std::process::ExitCode;

use clap::Parser;

use cairn_vmm::cli::{exit_code, run, CliArgs};

fn main() -> ExitCode {
    let args = match CliArgs::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // --help and --version print and succeed; any other error is Firecracker's
            // ArgParsing exit code.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit_code::ARG_PARSING
            } else {
                0
            });
        }
    };
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cairn-vmm: {e}");
            ExitCode::from(exit_code::for_error(&e))
        }
    }
}
