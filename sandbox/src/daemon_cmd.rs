//! `cairn` when `cairn serve` runs on its home: the commands the API covers (exec without
//! stdin, tty or timeout; create without --no-jail, --no-network, --cold, --image or
//! --boot-timeout; start; stop; rm; checkpoint create, list, restore, rm; policy set
//! and show) go to the daemon, so sandbox state has one owner, and print what they print
//! without it. The rest, and everything under `CAIRN_NO_DAEMON=1` or `--no-daemon`, runs
//! here. See docs/api.md.

use super::{
    print_checkpoint, print_checkpoints, print_created, print_row, print_started, CheckpointCmd,
    CliError, Command,
};
use crate::net_cmd::{self, PolicyCmd};
use cairn_sandbox::net::policy_ops::PolicyChange;
use cairn_sandbox::sandbox::{CreateOptions, Home};
use cairn_sandbox::serve::client::{Daemon, DaemonError};
use cairn_sandbox::serve::ops::CreateRequest;
use std::io;
use std::time::Instant;

impl From<DaemonError> for CliError {
    fn from(e: DaemonError) -> CliError {
        CliError::Usage(cairn_agent::error_text(&e))
    }
}

/// Runs `command` through the daemon `d`; `None` when the daemon does not cover it.
pub(super) fn run(d: &Daemon, home: &Home, command: &Command) -> Option<Result<u8, CliError>> {
    match command {
        Command::Create {
            name,
            cpus,
            mem,
            disk,
            idle_timeout,
            boot_timeout,
            no_jail: false,
            no_network: false,
            cold: false,
            image: None,
            json,
        } => {
            // The API's create takes the library's defaults for the rest; other flags run here.
            if *boot_timeout != CreateOptions::default().boot_timeout.as_secs() {
                return None;
            }
            let req = CreateRequest {
                name: name.clone(),
                image: None,
                cpus: Some(*cpus),
                mem_mib: Some(*mem),
                disk_gib: Some(*disk),
                idle_timeout: Some(*idle_timeout),
            };
            let start = Instant::now();
            Some(
                d.create(&req)
                    .map_err(CliError::from)
                    .and_then(|info| print_created(home, start, &info, *json)),
            )
        }
        Command::Exec {
            name,
            detach: false,
            args,
        } => {
            let req = args.plain()?;
            let env = req.env.into_iter().collect();
            let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
            Some(
                d.exec(name, req.argv, env, req.cwd, &mut out, &mut err)
                    .map(|code| u8::try_from(code & 0xff).unwrap_or(u8::MAX))
                    .map_err(CliError::from),
            )
        }
        Command::Stop { name, json, push } => {
            // A push is the store's work, done here after the stop: not through the daemon.
            if *push || cairn_sandbox::store_sync::push_on_stop() {
                return None;
            }
            Some(d.stop(name).map_err(CliError::from).and_then(|stopped| {
                if *json {
                    return print_row(home, name);
                }
                match stopped {
                    Some(c) => println!("{name}: stopped at checkpoint {c}"),
                    None => println!("{name}: not running"),
                }
                Ok(0)
            }))
        }
        Command::Start { name, cold, json } => Some(
            d.start(name, *cold)
                .map_err(CliError::from)
                .and_then(|started| print_started(home, name, started, *json)),
        ),
        Command::Rm { name, json } => Some(d.remove(name).map_err(CliError::from).map(|()| {
            if *json {
                println!("{}", serde_json::json!({"name": name, "removed": true}));
            } else {
                println!("{name}: removed");
            }
            0
        })),
        Command::Checkpoint(c) => Some(checkpoint(d, home, c)),
        Command::Policy(PolicyCmd::Set {
            name,
            preset,
            allow,
            deny,
        }) => {
            let change = PolicyChange {
                preset: preset.clone(),
                allow: allow.clone(),
                deny: deny.clone(),
            };
            Some(
                d.policy_set(name, &change)
                    .map_err(CliError::from)
                    .map(|v| {
                        net_cmd::print_set(
                            name,
                            &cairn_sandbox::net::policy::Policy { rules: v.rules },
                        );
                        0
                    }),
            )
        }
        Command::Policy(PolicyCmd::Show { name, json }) => Some(
            d.policy_show(name)
                .map_err(CliError::from)
                .and_then(|v| net_cmd::print_view(v, *json).map(|()| 0)),
        ),
        _ => None,
    }
}

fn checkpoint(d: &Daemon, home: &Home, c: &CheckpointCmd) -> Result<u8, CliError> {
    match c {
        CheckpointCmd::Create { name, ckpt, json } => {
            let meta = d.checkpoint_create(name, ckpt.as_deref())?;
            print_checkpoint(name, &meta, *json);
        }
        CheckpointCmd::List { name, json } => {
            let list = d.checkpoint_list(name)?;
            print_checkpoints(home, name, &list, *json)?;
        }
        CheckpointCmd::Restore { name, ckpt } => {
            d.checkpoint_restore(name, ckpt)?;
            println!("{name}: restored to {ckpt}");
        }
        CheckpointCmd::Rm { name, ckpt } => {
            d.checkpoint_remove(name, ckpt)?;
            println!("{name}: checkpoint {ckpt} removed");
        }
    }
    Ok(0)
}
