//! `cairn policy ...`: a sandbox's egress policy (see `docs/network.md`).

use crate::cli::CliError;
use cairn_sandbox::net::policy::Policy;
use cairn_sandbox::net::policy_ops::{self, PolicyChange, PolicyView};
use cairn_sandbox::sandbox::Home;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Replace a sandbox's egress policy, live: `--allow github.com --allow '*.npmjs.org'
    /// --deny '*'`. The most specific matching pattern wins; with no flags the policy is open
    /// (every public address).
    Set {
        /// Sandbox name.
        name: String,
        /// Start from a preset (`cairn policy presets` lists them).
        #[arg(long)]
        preset: Option<String>,
        /// Allow names matching PATTERN (`name`, `*.suffix` or `*`).
        #[arg(long, value_name = "PATTERN")]
        allow: Vec<String>,
        /// Deny names matching PATTERN: they get REFUSED, their addresses stay unreachable.
        #[arg(long, value_name = "PATTERN")]
        deny: Vec<String>,
    },
    /// Show a sandbox's network and egress policy.
    Show {
        /// Sandbox name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List the presets.
    Presets,
}

pub fn run(home: &Home, cmd: PolicyCmd) -> Result<u8, CliError> {
    match cmd {
        PolicyCmd::Set {
            name,
            preset,
            allow,
            deny,
        } => {
            let change = PolicyChange {
                preset,
                allow,
                deny,
            };
            let policy = policy_ops::set(home, &name, &change)?;
            print_set(&name, &policy);
            Ok(0)
        }
        PolicyCmd::Show { name, json } => {
            print_view(policy_ops::show(home, &name)?, json)?;
            Ok(0)
        }
        PolicyCmd::Presets => {
            for p in policy_ops::presets() {
                println!("{:6} {}", p.name, p.description);
            }
            Ok(0)
        }
    }
}

/// What `cairn policy set` prints (here or through the daemon).
pub fn print_set(name: &str, policy: &Policy) {
    println!("{name}: policy set ({})", policy_ops::summary(policy));
}

/// What `cairn policy show` prints (here or through the daemon).
pub fn print_view(v: PolicyView, json: bool) -> Result<(), CliError> {
    if json {
        println!("{}", serde_json::to_string_pretty(&v).map_err(json_err)?);
        return Ok(());
    }
    let n = &v.network;
    println!(
        "{}: {} via {} (MAC {}, namespace {})",
        v.sandbox, n.address, n.gateway, n.mac, n.netns
    );
    let policy = Policy { rules: v.rules };
    println!("policy: {}", policy_ops::summary(&policy));
    Ok(())
}

fn json_err(e: serde_json::Error) -> CliError {
    CliError::Io(std::io::Error::other(e))
}
