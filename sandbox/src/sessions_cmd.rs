//! `cairn exec -d` and `cairn sessions ls|attach|kill`: detached processes that keep running
//! in the guest (across idle sleep and wake) with their output kept for a later attach. The
//! work is in `cairn_sandbox::sessions`; see docs/sessions.md.

use crate::agent_cmd::{self, ExecArgs};
use crate::cli::CliError;
use crate::console::DETACH;
use cairn_agent::client::{tty, ExecEvent};
use cairn_sandbox::sandbox::Home;
use cairn_sandbox::sessions;
use clap::Subcommand;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `cairn sessions …`.
#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// List a sandbox's sessions (wakes it).
    Ls {
        /// Sandbox name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a session's kept output, then follow it until it ends (exits with its exit
    /// code) or until you detach (Ctrl-] on a terminal, or Ctrl-C): the session goes on.
    Attach {
        /// Sandbox name.
        name: String,
        /// Session id (`cairn sessions ls`).
        id: u32,
        /// Type into the session (one started with `cairn exec -d -i`).
        #[arg(short, long)]
        interactive: bool,
        /// Print the kept output and return at once.
        #[arg(long)]
        no_follow: bool,
    },
    /// Kill a session's processes and forget it.
    Kill {
        /// Sandbox name.
        name: String,
        /// Session id.
        id: u32,
    },
}

/// `cairn exec -d NAME -- CMD`: prints the new session's id.
pub fn start(home: &Home, name: &str, args: ExecArgs) -> Result<u8, CliError> {
    let req = agent_cmd::session_request(args).map_err(CliError::Usage)?;
    let s = sessions::start(home, name, &req)?;
    Ok(print_started(name, s))
}

/// What `exec -d` prints (here or through the daemon): the id on stdout, a hint on stderr.
pub fn print_started(name: &str, s: sessions::Started) -> u8 {
    println!("{}", s.id);
    eprintln!(
        "{name}: session {} started (pid {}); `cairn sessions attach {name} {}` follows it",
        s.id, s.pid, s.id
    );
    0
}

/// Runs a `cairn sessions` subcommand.
pub fn run(home: &Home, cmd: SessionsCmd) -> Result<u8, CliError> {
    match cmd {
        SessionsCmd::Ls { name, json } => print_list(&sessions::list(home, &name)?, json),
        SessionsCmd::Attach {
            name,
            id,
            interactive,
            no_follow,
        } => attach(home, &name, id, interactive, no_follow),
        SessionsCmd::Kill { name, id } => {
            sessions::kill(home, &name, id)?;
            println!("{name}: session {id} killed");
            Ok(0)
        }
    }
}

/// What `sessions ls` prints (here or through the daemon).
pub fn print_list(list: &[sessions::SessionView], json: bool) -> Result<u8, CliError> {
    if json {
        let v = serde_json::to_value(list).map_err(io::Error::other)?;
        println!("{v}");
        return Ok(0);
    }
    {
        println!(
            "{:>4} {:>7} {:<10} {:>10} {:>4} COMMAND",
            "ID", "PID", "STATE", "OUTPUT", "ATT"
        );
        for s in list {
            let state = match (s.state.as_str(), s.exit_code) {
                ("running", _) => "running".to_string(),
                (st, Some(c)) => format!("{st} {c}"),
                (st, None) => st.to_string(),
            };
            println!(
                "{:>4} {:>7} {:<10} {:>10} {:>4} {}",
                s.id,
                s.pid,
                state,
                s.output_bytes,
                s.attached,
                s.argv.join(" ")
            );
        }
        Ok(0)
    }
}

/// The note `sessions attach` prints when older output was dropped (here or through the
/// daemon).
pub fn print_dropped(bytes: u64) {
    if bytes > 0 {
        eprintln!("[{bytes} older bytes of output were dropped from the buffer]");
    }
}

fn attach(
    home: &Home,
    name: &str,
    id: u32,
    interactive: bool,
    no_follow: bool,
) -> Result<u8, CliError> {
    let (mut a, _active) = sessions::attach(home, name, id)?;
    print_dropped(a.dropped());
    let (mut out, mut err) = (io::stdout(), io::stderr());
    let mut write = |ev: ExecEvent| -> io::Result<Option<u8>> {
        match ev {
            ExecEvent::Stdout(d) => out.write_all(&d).and_then(|()| out.flush())?,
            ExecEvent::Stderr(d) => err.write_all(&d).and_then(|()| err.flush())?,
            ExecEvent::Exited(st) => {
                return Ok(Some(
                    u8::try_from(st.shell_code() & 0xff).unwrap_or(u8::MAX),
                ))
            }
        }
        Ok(None)
    };
    if no_follow {
        let mut left = a.replay_bytes();
        while left > 0 {
            let ev = a.next_event()?;
            if let ExecEvent::Stdout(d) | ExecEvent::Stderr(d) = &ev {
                left = left.saturating_sub(d.len() as u64);
            }
            write(ev)?;
        }
        a.detach();
        return Ok(0);
    }
    let stdin = io::stdin();
    let raw_tty = interactive && tty::is_terminal(stdin.as_fd());
    let _raw = raw_tty
        .then(|| tty::RawMode::enable(stdin.as_fd()))
        .transpose()?;
    if raw_tty {
        eprint!("[attached to session {id} of {name}; Ctrl-] detaches]\r\n");
    }
    let detached = Arc::new(AtomicBool::new(false));
    if interactive {
        let (control, detacher, flag) = (a.control(), a.detacher()?, Arc::clone(&detached));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            let mut input = io::stdin();
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = control.close_stdin();
                        return;
                    }
                    Ok(n) => n,
                };
                let keys = &buf[..n];
                let cut = raw_tty
                    .then(|| keys.iter().position(|&b| b == DETACH))
                    .flatten();
                if control.stdin(&keys[..cut.unwrap_or(n)]).is_err() {
                    return;
                }
                if cut.is_some() {
                    flag.store(true, Ordering::SeqCst);
                    detacher.detach();
                    return;
                }
            }
        });
    }
    loop {
        match a.next_event() {
            Ok(ev) => {
                if let Some(code) = write(ev)? {
                    return Ok(code);
                }
            }
            Err(_) if detached.load(Ordering::SeqCst) => {
                eprint!("\r\n[detached; session {id} goes on]\r\n");
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
