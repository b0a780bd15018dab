//! `cairn` when `cairn serve` runs on its home: the commands the API covers go to the daemon
//! (the table in docs/api.md, "The CLI and the daemon": exec in every form, create without
//! --no-jail or --no-network, start, stop (a `--push` then done here), rm, fork, cp,
//! checkpoints, policy, sessions), so sandbox state has one owner, and print what they print
//! without it. Interactive execs and attaches are the API's WebSockets. The rest (console,
//! logs, proxy, router, create --no-jail/--no-network), and everything under
//! `CAIRN_NO_DAEMON=1` or `--no-daemon`, runs here; docs/api.md says why each stays.

use super::{
    parse_cp_arg, print_checkpoint, print_checkpoints, print_created, print_forked, print_ls,
    print_row, print_started, CheckpointCmd, CliError, Command, CpArg,
};
use crate::agent_cmd::ExecArgs;
use crate::console::DETACH;
use crate::net_cmd::{self, PolicyCmd};
use crate::sessions_cmd::{self, SessionsCmd};
use cairn_agent::client::tty;
use cairn_sandbox::net::policy_ops::PolicyChange;
use cairn_sandbox::sandbox::Home;
use cairn_sandbox::serve::client::{Daemon, DaemonError, SocketEnd, Terminal};
use cairn_sandbox::serve::ops::{CreateRequest, MAX_READ};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

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
            cold,
            image,
            json,
        } => {
            // The jail and the network are the daemon's settings: those flags run here.
            let req = CreateRequest {
                name: name.clone(),
                image: image.clone(),
                cpus: Some(*cpus),
                mem_mib: Some(*mem),
                disk_gib: Some(*disk),
                idle_timeout: Some(*idle_timeout),
                cold: *cold,
                boot_timeout: Some(*boot_timeout),
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
        } if args.interactive() => Some(exec_interactive(d, name, args)),
        Command::Exec {
            name,
            detach: false,
            args,
        } => {
            let req = args.plain()?;
            let secs = args.timeout();
            let limit = limit(secs);
            let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
            Some(
                d.exec(name, req, limit, &mut out, &mut err)
                    .map(|code| match code {
                        Some(code) => status(code),
                        None => {
                            eprintln!(
                                "cairn: the command ran past --timeout {} s and was killed",
                                secs.unwrap_or_default()
                            );
                            crate::exec_timeout::TIMED_OUT
                        }
                    })
                    .map_err(CliError::from),
            )
        }
        Command::Exec {
            name,
            detach: true,
            args,
        } => Some(
            crate::agent_cmd::session_request(args.clone())
                .map_err(CliError::Usage)
                .and_then(|req| Ok(d.session_start(name, &req)?))
                .map(|s| sessions_cmd::print_started(name, s)),
        ),
        Command::Stop { name, json, push } => {
            Some(d.stop(name).map_err(CliError::from).and_then(|stopped| {
                // The push is the store's work, with the store's credentials in this
                // environment: done here, after the daemon's stop, as without a daemon.
                if *push || cairn_sandbox::store_sync::push_on_stop() {
                    let r = cairn_sandbox::store_sync::push(home, name)?;
                    eprintln!(
                        "{name}: pushed, {} of {} chunks uploaded",
                        r.chunks_uploaded, r.chunks
                    );
                }
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
        Command::Ls { json } => Some(d.list().map_err(CliError::from).and_then(|list| {
            if *json {
                // The rows as the daemon left them (store heads followed), in `ls --json`'s
                // shape, which has host details the API does not carry.
                let rows = home.registry()?.list()?;
                let v: Vec<_> = rows.iter().map(cairn_sandbox::sandbox::ls_json).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                print_ls(&list);
            }
            Ok(0)
        })),
        Command::Fork {
            name,
            ckpt,
            new,
            no_start,
            json,
        } => Some(
            d.fork(name, ckpt, new, !no_start)
                .map_err(CliError::from)
                .and_then(|f| print_forked(home, name, ckpt, new, &f.fork, *json)),
        ),
        Command::Cp { src, dst } => cp(d, src, dst),
        Command::Sessions(c) => sessions(d, c),
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

/// `cp` through the daemon: one regular file up to [`MAX_READ`] through the files routes,
/// a directory or a larger file through the tar routes, streamed (the same counts printed as
/// without a daemon). `None` (run here) for arguments `cp` itself refuses.
fn cp(d: &Daemon, src: &str, dst: &str) -> Option<Result<u8, CliError>> {
    let start = Instant::now();
    let stats = |bytes: u64| cairn_agent::tree::TransferStats {
        files: 1,
        bytes,
        ..Default::default()
    };
    match (parse_cp_arg(src), parse_cp_arg(dst)) {
        (CpArg::Local(local), CpArg::Remote(name, remote)) => {
            let small = std::fs::metadata(&local)
                .ok()
                .filter(|m| m.is_file() && m.len() <= MAX_READ);
            let put = match small {
                Some(meta) => std::fs::read(&local)
                    .map_err(CliError::from)
                    .and_then(|data| {
                        let n = data.len() as u64;
                        d.write_file(&name, &remote, data, meta.permissions().mode())?;
                        Ok(stats(n))
                    }),
                None => d.put_tree(&name, &local, &remote).map_err(CliError::from),
            };
            Some(put.map(|s| {
                crate::agent_cmd::report("put", &s, start);
                0
            }))
        }
        (CpArg::Remote(name, remote), CpArg::Local(local)) => {
            let info = match d.stat(&name, &remote) {
                Ok(i) => i,
                Err(e) => return Some(Err(e.into())),
            };
            let got = if info.kind == "file" && info.size <= MAX_READ {
                get_file(d, &name, &remote, &local, &info.mode).map(stats)
            } else {
                d.get_tree(&name, &remote, &local).map_err(CliError::from)
            };
            Some(got.map(|s| {
                crate::agent_cmd::report("get", &s, start);
                0
            }))
        }
        _ => None,
    }
}

/// One guest file, read whole, written at `local` (into it when it is a directory, as cp
/// does) with its permission bits less privilege bits, as cp does. Returns its size.
fn get_file(
    d: &Daemon,
    name: &str,
    remote: &str,
    local: &Path,
    mode: &str,
) -> Result<u64, CliError> {
    let target = match Path::new(remote).file_name() {
        Some(base) if local.is_dir() => local.join(base),
        _ => local.to_path_buf(),
    };
    let mode = u32::from_str_radix(mode, 8).unwrap_or(0o644) & 0o777;
    let data = d.read_file(name, remote)?;
    std::fs::write(&target, &data)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    Ok(data.len() as u64)
}

/// `sessions ls|kill|attach`: attach -i as a WebSocket, without it (or with --no-follow) the
/// NDJSON attach.
fn sessions(d: &Daemon, c: &SessionsCmd) -> Option<Result<u8, CliError>> {
    match c {
        SessionsCmd::Ls { name, json } => Some(
            d.sessions(name)
                .map_err(CliError::from)
                .and_then(|list| sessions_cmd::print_list(&list, *json)),
        ),
        SessionsCmd::Kill { name, id } => {
            Some(d.session_kill(name, *id).map_err(CliError::from).map(|()| {
                println!("{name}: session {id} killed");
                0
            }))
        }
        SessionsCmd::Attach {
            name,
            id,
            interactive: true,
            no_follow: false,
        } => Some(attach_interactive(d, name, *id)),
        // Without -i, or with --no-follow (the kept output only; nothing to type into).
        SessionsCmd::Attach {
            name,
            id,
            no_follow,
            ..
        } => {
            let (mut out, mut err) = (io::stdout(), io::stderr());
            let code = d.session_attach(
                name,
                *id,
                !no_follow,
                &mut sessions_cmd::print_dropped,
                &mut out,
                &mut err,
            );
            Some(
                code.map(|c| c.map_or(0, |c| u8::try_from(c & 0xff).unwrap_or(u8::MAX)))
                    .map_err(CliError::from),
            )
        }
    }
}

/// `--timeout SECS` as a duration.
fn limit(secs: Option<f64>) -> Option<Duration> {
    secs.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
}

/// The exit status of a command's exit code.
fn status(code: i32) -> u8 {
    u8::try_from(code & 0xff).unwrap_or(u8::MAX)
}

/// `exec -i` / `exec -t` over the exec WebSocket: stdin sent, the terminal's size (and its
/// changes) with `-t`, raw keys with `-i -t` on a terminal, as without a daemon.
fn exec_interactive(d: &Daemon, name: &str, args: &ExecArgs) -> Result<u8, CliError> {
    let req = args.request();
    let secs = args.timeout();
    let raw = args.raw_mode()?;
    let (mut out, mut err) = (io::stdout(), io::stderr());
    let term = Terminal {
        input: req
            .stdin
            .then(|| Box::new(io::stdin()) as Box<dyn Read + Send>),
        detach_key: None,
        follow_size: req.pty.is_some() && tty::is_terminal(io::stdout().as_fd()),
        out: &mut out,
        err: &mut err,
        dropped: &mut |_| {},
    };
    let end = d.exec_interactive(name, &req, limit(secs), term);
    drop(raw);
    match end? {
        SocketEnd::Exited(code) => Ok(status(code)),
        SocketEnd::Detached => Ok(0),
        SocketEnd::TimedOut => {
            eprintln!(
                "cairn: the command ran past --timeout {} s and was killed",
                secs.unwrap_or_default()
            );
            Ok(crate::exec_timeout::TIMED_OUT)
        }
    }
}

/// `sessions attach -i` over the attach WebSocket: typed keys go to the session; on a
/// terminal, raw, and Ctrl-] detaches (the session goes on).
fn attach_interactive(d: &Daemon, name: &str, id: u32) -> Result<u8, CliError> {
    let stdin = io::stdin();
    let raw_tty = tty::is_terminal(stdin.as_fd());
    let raw = raw_tty
        .then(|| tty::RawMode::enable(stdin.as_fd()))
        .transpose()?;
    if raw_tty {
        eprint!("[attached to session {id} of {name}; Ctrl-] detaches]\r\n");
    }
    let (mut out, mut err) = (io::stdout(), io::stderr());
    let term = Terminal {
        input: Some(Box::new(stdin)),
        detach_key: raw_tty.then_some(DETACH),
        follow_size: raw_tty,
        out: &mut out,
        err: &mut err,
        dropped: &mut sessions_cmd::print_dropped,
    };
    let end = d.session_attach_interactive(name, id, term);
    let code = match end? {
        SocketEnd::Exited(code) => status(code),
        SocketEnd::Detached | SocketEnd::TimedOut => {
            eprint!("\r\n[detached; session {id} goes on]\r\n");
            0
        }
    };
    drop(raw);
    Ok(code)
}
