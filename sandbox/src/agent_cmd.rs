//! `cairn agent …`: exec, put, get, sync and ping through the guest agent.

use cairn_agent::client::{tty, Client, ClientError};
use cairn_agent::proto::{ExecRequest, PtySize, AGENT_PORT};
use cairn_agent::tree::TransferStats;
use clap::{ArgGroup, Args, Subcommand};
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

/// Where the agent is and what to ask of it.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["uds", "unix"])))]
pub struct AgentArgs {
    /// The VMM's vsock Unix socket (Firecracker's `uds_path`).
    #[arg(long, value_name = "PATH")]
    uds: Option<PathBuf>,
    /// The guest vsock port the agent listens on.
    #[arg(long, default_value_t = AGENT_PORT, requires = "uds")]
    port: u32,
    /// An agent listening on a Unix socket directly (`cairn-agent --listen-unix PATH`).
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

/// How to run a command in the guest (shared by `cairn agent exec` and `cairn exec`).
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Forward this terminal's stdin.
    #[arg(short, long)]
    interactive: bool,
    /// Run under a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Kill the command (SIGKILL) after this many seconds; cairn then exits 124, as timeout(1).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    argv: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run a command in the guest; exits with its exit code (128 + signal when killed).
    Exec(ExecArgs),
    /// Copy a local file or directory into the guest.
    Put {
        /// Local source.
        local: PathBuf,
        /// Absolute guest destination.
        remote: String,
    },
    /// Copy a guest file or directory out.
    Get {
        /// Absolute guest source.
        remote: String,
        /// Local destination.
        local: PathBuf,
    },
    /// Flush the guest's file systems.
    Sync,
    /// Check that the agent answers.
    Ping,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not K=V"))
}

fn connect(args: &AgentArgs) -> Result<Client, ClientError> {
    match (&args.uds, &args.unix) {
        (Some(uds), _) => Client::connect_uds(uds, args.port),
        (None, Some(unix)) => Client::connect_unix(unix),
        // clap's "target" group requires one of them.
        (None, None) => Client::connect_unix(""),
    }
}

/// Runs the subcommand; returns the process exit code.
pub fn run(args: AgentArgs) -> Result<u8, ClientError> {
    let mut client = connect(&args)?;
    match args.action {
        Action::Exec(exec_args) => exec(&mut client, exec_args),
        Action::Put { local, remote } => {
            let start = Instant::now();
            let stats = client.put(&local, &remote)?;
            report("put", &stats, start);
            Ok(0)
        }
        Action::Get { remote, local } => {
            let start = Instant::now();
            let stats = client.get(&remote, &local)?;
            report("get", &stats, start);
            Ok(0)
        }
        Action::Sync => client.sync().map(|()| 0),
        Action::Ping => {
            let software = client.agent_software().unwrap_or("agent").to_string();
            let start = Instant::now();
            client.ping()?;
            println!(
                "pong from {software} in {:.2} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
            Ok(0)
        }
    }
}

/// Runs `args` through `client`, streaming output; returns the command's shell exit code.
pub fn exec(client: &mut Client, args: ExecArgs) -> Result<u8, ClientError> {
    let req = args.request();
    // Raw mode only when typing into a remote terminal; restored on drop.
    let _raw = args.raw_mode().map_err(ClientError::Stdio)?;
    let status = match args.timeout {
        None => client.exec(&req, io::stdin(), io::stdout(), io::stderr())?,
        Some(secs) => match crate::exec_timeout::exec_with_timeout(client, &req, secs)? {
            Some(status) => status,
            None => {
                eprintln!("cairn: the command ran past --timeout {secs} s and was killed");
                return Ok(crate::exec_timeout::TIMED_OUT);
            }
        },
    };
    Ok(u8::try_from(status.shell_code() & 0xff).unwrap_or(u8::MAX))
}

impl ExecArgs {
    /// The request `args` make, here or through the daemon: stdin forwarded with `-i`; with
    /// `-t` a terminal of this terminal's size (24x80 without one) and this `TERM`.
    pub fn request(&self) -> ExecRequest {
        let pty = self
            .tty
            .then(|| tty::size(io::stdout().as_fd()).unwrap_or(PtySize { rows: 24, cols: 80 }));
        let mut env = self.env.clone();
        if self.tty && !env.iter().any(|(k, _)| k == "TERM") {
            if let Ok(term) = std::env::var("TERM") {
                env.push(("TERM".into(), term));
            }
        }
        ExecRequest {
            argv: self.argv.clone(),
            env,
            cwd: self.workdir.clone(),
            stdin: self.interactive,
            pty,
        }
    }

    /// This terminal in raw mode (restored on drop) when typing into a remote terminal
    /// (`-i -t` with a terminal on stdin), so keys, Ctrl-C included, go to the guest.
    pub fn raw_mode(&self) -> io::Result<Option<tty::RawMode>> {
        let stdin = io::stdin();
        (self.tty && self.interactive && tty::is_terminal(stdin.as_fd()))
            .then(|| tty::RawMode::enable(stdin.as_fd()))
            .transpose()
    }

    /// Whether this exec needs stdin or a terminal (a WebSocket through the daemon).
    pub fn interactive(&self) -> bool {
        self.interactive || self.tty
    }

    /// The request of an exec that needs neither stdin nor a terminal: what the CLI hands a
    /// running daemon (`cairn serve`; a `--timeout` is kept by the CLI, see [`Self::timeout`]);
    /// `None` for the rest, run here.
    pub fn plain(&self) -> Option<ExecRequest> {
        if self.interactive || self.tty {
            return None;
        }
        Some(ExecRequest {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.workdir.clone(),
            stdin: false,
            pty: None,
        })
    }

    /// `--timeout`, in seconds.
    pub fn timeout(&self) -> Option<f64> {
        self.timeout
    }
}

/// The request `args` make for a detached session (`cairn exec -d`): `-t` gives it a terminal
/// of this terminal's size (24x80 without one), `-i` keeps its stdin open for a later attach.
pub fn session_request(args: ExecArgs) -> Result<ExecRequest, String> {
    if args.timeout.is_some() {
        return Err(
            "--timeout does not apply to a detached session (hint: `cairn sessions kill NAME ID` ends it)"
                .into(),
        );
    }
    let mut env = args.env;
    if args.tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push((
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        ));
    }
    Ok(ExecRequest {
        argv: args.argv,
        env,
        cwd: args.workdir,
        stdin: args.interactive,
        pty: args
            .tty
            .then(|| tty::size(io::stdout().as_fd()).unwrap_or(PtySize { rows: 24, cols: 80 })),
    })
}

/// Prints a one-line summary of a put or get to stderr.
pub fn report(what: &str, stats: &TransferStats, start: Instant) {
    let skipped = match stats.skipped {
        0 => String::new(),
        n => format!(", {n} skipped (not files or directories)"),
    };
    eprintln!(
        "{what}: {} files, {} directories, {} bytes in {:.1} ms{skipped}",
        stats.files,
        stats.dirs,
        stats.bytes,
        start.elapsed().as_secs_f64() * 1e3
    );
}
