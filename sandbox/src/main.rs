//! `cairn`: the command-line front end. Argument parsing only; the work is in the library
//! (`cairn_sandbox`) and the agent client.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod agent_cmd;
mod cli;
mod console;
mod exec_timeout;
mod image_cmd;
mod net_cmd;
mod ports_cmd;
mod serve_cmd;
mod sessions_cmd;
mod store_cmd;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cairn: {}", cairn_agent::error_text(&e));
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
