//! `cairn-vmm`: a thin shell over the `cairn_vmm` library, with Firecracker's command line.

use std::process::ExitCode;

use clap::Parser;

use cairn_vmm::cli::{run, CliArgs};

fn main() -> ExitCode {
    let args = CliArgs::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cairn-vmm: {e}");
            ExitCode::from(1)
        }
    }
}
