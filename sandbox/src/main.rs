//! `cairn`: the command-line front end. Argument parsing only; the work is in the libraries.

mod agent_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "cairn", version, about = "cairn microVM sandboxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Talk to the guest agent of a running VM.
    Agent(agent_cmd::AgentArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => agent_cmd::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cairn: {}", cairn_agent::error_text(&e));
            ExitCode::FAILURE
        }
    }
}
