//! `cairn policy ...`: a sandbox's egress policy (see `docs/network.md`).

use crate::cli::CliError;
use cairn_sandbox::net::{self, policy::Action, policy::Policy};
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
            let r = home.registry()?.get(&name)?;
            let paths = home.paths(&r.name);
            let mut policy = match &preset {
                Some(p) => Policy::preset(p).map_err(sandbox_err)?,
                None => Policy::default(),
            };
            for a in &allow {
                policy.push(Action::Allow, a).map_err(sandbox_err)?;
            }
            for d in &deny {
                policy.push(Action::Deny, d).map_err(sandbox_err)?;
            }
            net::set_policy(&paths, &name, &policy).map_err(sandbox_err)?;
            println!("{name}: policy set ({})", summary(&policy));
            Ok(0)
        }
        PolicyCmd::Show { name, json } => {
            let r = home.registry()?.get(&name)?;
            let paths = home.paths(&r.name);
            let spec = net::load(&paths)
                .map_err(sandbox_err)?
                .ok_or_else(|| sandbox_err(net::NetError::NoNetwork(name.clone())))?;
            let policy = net::policy_load(&paths).map_err(sandbox_err)?;
            if json {
                let v = serde_json::json!({
                    "sandbox": name,
                    "network": {
                        "address": format!("{}/{}", spec.guest, spec.prefix),
                        "gateway": spec.gateway,
                        "resolver": spec.gateway,
                        "mac": spec.mac,
                        "netns": spec.netns(),
                        "table": format!("ip {}", spec.table()),
                    },
                    "restricts": policy.restricts(),
                    "rules": policy.rules,
                });
                println!("{v:#}");
            } else {
                println!(
                    "{name}: {}/{} via {} (MAC {}, namespace {})",
                    spec.guest,
                    spec.prefix,
                    spec.gateway,
                    spec.mac,
                    spec.netns()
                );
                println!("policy: {}", summary(&policy));
            }
            Ok(0)
        }
        PolicyCmd::Presets => {
            for (n, what) in net::policy::PRESETS {
                println!("{n:6} {what}");
            }
            Ok(0)
        }
    }
}

fn summary(p: &Policy) -> String {
    if p.rules.is_empty() {
        return "open: every public address".into();
    }
    p.rules
        .iter()
        .map(|r| match r.action {
            Action::Allow => format!("allow {}", r.pattern),
            Action::Deny => format!("deny {}", r.pattern),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sandbox_err(e: net::NetError) -> CliError {
    CliError::Sandbox(e.into())
}
