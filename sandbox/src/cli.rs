//! The `cairn` command tree (clap) and what each command prints.

use crate::agent_cmd::{self, AgentArgs, ExecArgs};
use cairn_agent::client::Client;
use cairn_agent::proto::AGENT_PORT;
use cairn_sandbox::registry::Record;
use cairn_sandbox::sandbox::{self, CreateOptions, Home, SandboxError};
use clap::{CommandFactory, Parser, Subcommand};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const AFTER_HELP: &str = "\
State lives in $CAIRN_HOME (default ~/.local/share/cairn): registry.db and sandboxes/NAME/.

Examples:
  cairn create dev --cpus 2 --mem 512
  cairn exec dev -- sh -c 'echo hello > /tmp/x'
  cairn cp ./src dev:/work/src
  cairn checkpoint create dev before-upgrade
  cairn checkpoint restore dev before-upgrade
  cairn stop dev && cairn start dev
  cairn fork dev before-upgrade dev2
  cairn rm dev";

/// cairn: persistent, checkpointable microVM sandboxes.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Work on the sandboxes here even when `cairn serve` runs (also CAIRN_NO_DAEMON=1).
    #[arg(long, global = true)]
    no_daemon: bool,
}

#[path = "daemon_cmd.rs"]
mod daemon_cmd;

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and boot a sandbox; waits until its agent answers.
    Create {
        /// Sandbox name (letters, digits, . _ -).
        name: String,
        /// vCPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u8,
        /// Memory in MiB.
        #[arg(long, value_name = "MiB", default_value_t = 512)]
        mem: u32,
        /// Disk size in GiB (a sparse file: costs only what is written).
        #[arg(long, value_name = "GiB", default_value_t = 100)]
        disk: u64,
        /// Checkpoint and stop the VM after this many quiet seconds (0 = never); the next
        /// exec, cp or console wakes it.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        idle_timeout: u64,
        /// How long to wait for the guest to boot.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        boot_timeout: u64,
        /// As root, run the VMM unjailed (also CAIRN_NO_JAIL=1); kept for the sandbox's life.
        #[arg(long)]
        no_jail: bool,
        /// No network interface (by default: a namespace, NAT egress, a resolver; docs/network.md).
        #[arg(long)]
        no_network: bool,
        /// Boot from scratch instead of restoring the image's golden checkpoint (and keep none).
        #[arg(long)]
        cold: bool,
        /// A named image (`cairn image ls`) instead of the default root disk.
        #[arg(long, value_name = "IMG")]
        image: Option<String>,
        /// Print the result as JSON (the sandbox as `ls --json` shows it).
        #[arg(long)]
        json: bool,
    },
    /// Named images: build, import, ls, rm (see docs/images.md).
    #[command(subcommand)]
    Image(crate::image_cmd::ImageCmd),
    /// Run a command in a sandbox; exits with the command's exit code.
    Exec {
        /// Sandbox name.
        name: String,
        /// Detach: start the command as a session that outlives this client, print its id
        /// (`cairn sessions attach NAME ID` follows it; docs/sessions.md).
        #[arg(short, long)]
        detach: bool,
        #[command(flatten)]
        args: ExecArgs,
    },
    /// Copy files between the host and a sandbox: `cairn cp SRC NAME:/PATH` or `cairn cp NAME:/PATH DST`.
    Cp {
        /// Source: a local path or NAME:/guest/path.
        src: String,
        /// Destination: a local path or NAME:/guest/path.
        dst: String,
    },
    /// Attach to a sandbox's serial console: output followed, keys (or piped stdin) sent to
    /// the guest; Ctrl-] detaches. Wakes a stopped sandbox.
    Console {
        /// Sandbox name.
        name: String,
    },
    /// Named checkpoints of a sandbox.
    #[command(subcommand)]
    Checkpoint(CheckpointCmd),
    /// Print a sandbox's console log (guest serial output and VMM messages).
    Logs {
        /// Sandbox name.
        name: String,
        /// Keep printing what is appended, until the sandbox is removed (or Ctrl-C).
        #[arg(short, long)]
        follow: bool,
    },
    /// List sandboxes with their live state.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint a sandbox and stop its VM.
    Stop {
        /// Sandbox name.
        name: String,
        /// Print the result as JSON (the sandbox as `ls --json` shows it).
        #[arg(long)]
        json: bool,
        /// Then push it to the bucket in CAIRN_STORE (as `cairn push`); also the default when
        /// CAIRN_STORE_PUSH_ON_STOP=1 (docs/storage.md).
        #[arg(long)]
        push: bool,
    },
    /// Start a stopped sandbox from its latest checkpoint (or boot it from its disk when it
    /// has none); reboots one whose agent does not answer.
    Start {
        /// Sandbox name.
        name: String,
        /// Boot a fresh VM from the sandbox's disk instead (files kept, processes lost).
        #[arg(long)]
        cold: bool,
        /// Print the result as JSON (the sandbox as `ls --json` shows it).
        #[arg(long)]
        json: bool,
    },
    /// Make a new sandbox from a checkpoint of another (copy-on-write memory and disk), and
    /// start it.
    Fork {
        /// The original sandbox.
        name: String,
        /// Its checkpoint to start from.
        ckpt: String,
        /// The new sandbox's name.
        new: String,
        /// Leave the new sandbox stopped (its first exec wakes it).
        #[arg(long)]
        no_start: bool,
        /// Print the result as JSON (the sandbox as `ls --json` shows it).
        #[arg(long)]
        json: bool,
    },
    /// Delete a sandbox: its VM, disk, checkpoints and registry entry.
    Rm {
        /// Sandbox name.
        name: String,
        /// Print the result as JSON (the sandbox as `ls --json` shows it).
        #[arg(long)]
        json: bool,
    },
    /// Find and repair what crashes left behind (dead VMMs, stale files, stray directories),
    /// one line per finding with what was done.
    Doctor {
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Forward local TCP connections to a port inside a sandbox (over vsock: no guest network
    /// needed). The first connection wakes a stopped sandbox; open connections keep it awake.
    Proxy {
        /// Sandbox name.
        name: String,
        /// TCP port in the guest (on its 127.0.0.1).
        guest_port: u16,
        /// Local address to listen on (default 127.0.0.1:GUEST_PORT).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
    /// HTTP router: http://NAME.localhost:PORT/ reaches port 8080 in sandbox NAME,
    /// http://GUESTPORT.NAME.localhost:PORT/ another guest port; wakes sleeping sandboxes.
    Router {
        /// Local address to listen on.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        /// The guest port a bare NAME.localhost goes to.
        #[arg(long, value_name = "PORT", default_value_t = cairn_sandbox::ports::router::DEFAULT_GUEST_PORT)]
        guest_port: u16,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Talk to a guest agent by socket path (plumbing).
    Agent(AgentArgs),
    /// Run the API server (REST `/v1` on $CAIRN_HOME/serve.sock; see docs/api.md).
    Serve(crate::serve_cmd::ServeArgs),
    /// Run the MCP server on stdio (tools for agents; see docs/mcp.md).
    Mcp,
    /// Detached sessions (`cairn exec -d`): ls, attach, kill.
    #[command(subcommand)]
    Sessions(crate::sessions_cmd::SessionsCmd),
    /// A sandbox's egress policy (allow/deny by domain name, applied live).
    #[command(subcommand)]
    Policy(crate::net_cmd::PolicyCmd),
    /// A sandbox's DNS forwarder (started by cairn itself).
    #[command(name = "__net-dns", hide = true)]
    NetDns {
        /// The sandbox directory.
        dir: PathBuf,
    },
    #[command(flatten)]
    Store(crate::store_cmd::StoreCmd),
    /// The idle watcher (started by cairn itself).
    #[command(name = "__idle-watch", hide = true)]
    IdleWatch {
        /// Sandbox name.
        name: String,
    },
    /// The lease renewer (started by cairn itself when a store is configured).
    #[command(name = "__lease-renew", hide = true)]
    LeaseRenew {
        /// Sandbox name.
        name: String,
    },
    /// Gives a created or forked guest its clock, network and identity (started by cairn
    /// itself once `create` or `fork` has returned).
    #[command(name = "__settle", hide = true)]
    Settle {
        /// Sandbox name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum CheckpointCmd {
    /// Take a checkpoint (name default: ckpt-<unix ms>).
    Create {
        /// Sandbox name.
        name: String,
        /// Checkpoint name.
        ckpt: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List checkpoints with their costs.
    #[command(alias = "ls")]
    List {
        /// Sandbox name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Roll the sandbox back (or forward) to a checkpoint.
    Restore {
        /// Sandbox name.
        name: String,
        /// Checkpoint name.
        ckpt: String,
    },
    /// Delete a checkpoint (its layers merge into its children).
    Rm {
        /// Sandbox name.
        name: String,
        /// Checkpoint name.
        ckpt: String,
    },
}

/// Where a `cp` argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpArg {
    /// A host path.
    Local(PathBuf),
    /// NAME:/guest/path.
    Remote(String, String),
}

/// Parses a `cp` argument: `NAME:/abs/path` is remote when NAME is a valid sandbox name.
pub fn parse_cp_arg(s: &str) -> CpArg {
    match s.split_once(':') {
        Some((name, path)) if sandbox::validate_name(name).is_ok() && path.starts_with('/') => {
            CpArg::Remote(name.to_string(), path.to_string())
        }
        _ => CpArg::Local(PathBuf::from(s)),
    }
}

/// A failure of a `cairn` command, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A sandbox operation failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] cairn_agent::client::ClientError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] cairn_sandbox::registry::RegistryError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Reaching a guest port failed.
    #[error(transparent)]
    Ports(#[from] cairn_sandbox::ports::PortsError),
    /// Local I/O failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The exit code for a failed command: 127/126 for an exec whose command is not found / not
/// executable, else 125 (cairn failed; see cairn_agent::client::exit_code). Never 1.
pub fn exit_code(e: &CliError) -> u8 {
    match e {
        CliError::Agent(a) => cairn_agent::client::exit_code::exit_code_of(a),
        CliError::Sandbox(SandboxError::Agent(a)) => {
            cairn_agent::client::exit_code::exit_code_of(a)
        }
        _ => cairn_agent::client::exit_code::CAIRN_FAILED,
    }
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Agent(args) => Ok(agent_cmd::run(args)?),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut io::stdout());
            Ok(0)
        }
        command => {
            let home = Home::from_env()?;
            if !cli.no_daemon {
                if let Some(d) = cairn_sandbox::serve::client::Daemon::find(&home) {
                    if let Some(r) = daemon_cmd::run(&d, &home, &command) {
                        return r;
                    }
                }
            }
            run_with_home(&home, command)
        }
    }
}

fn run_with_home(home: &Home, command: Command) -> Result<u8, CliError> {
    match command {
        Command::Create {
            name,
            cpus,
            mem,
            disk,
            idle_timeout,
            boot_timeout,
            no_jail,
            no_network,
            cold,
            image,
            json,
        } => {
            let opts = CreateOptions {
                cpus,
                mem_mib: mem,
                disk_gib: disk,
                idle_timeout,
                boot_timeout: Duration::from_secs(boot_timeout),
                no_jail,
                no_network,
                cold,
                image,
            };
            let start = Instant::now();
            let r = sandbox::create(home, &name, &opts)?;
            let info = cairn_sandbox::serve::ops::SandboxInfo::of(&r);
            print_created(home, start, &info, json)
        }
        Command::Exec {
            name,
            detach: true,
            args,
        } => crate::sessions_cmd::start(home, &name, args),
        Command::Exec { name, args, .. } => {
            let (r, _active, woken) = sandbox::enter(home, &name)?;
            let mut client = agent_of(&r, woken)?;
            let code = agent_cmd::exec(&mut client, args);
            let _ = sandbox::touch(home, &name);
            Ok(code?)
        }
        Command::Image(c) => Ok(crate::image_cmd::run(home, c)?),
        Command::Cp { src, dst } => cp(home, &src, &dst),
        Command::Console { name } => crate::console::run(home, &name),
        Command::Checkpoint(c) => checkpoint(home, c),
        Command::Logs { name, follow } => {
            cairn_sandbox::logs::logs(home, &name, follow, &mut io::stdout().lock())?;
            Ok(0)
        }
        Command::Ls { json } => ls(home, json),
        Command::Stop { name, json, push } => {
            let stopped = sandbox::stop(home, &name)?;
            if push || cairn_sandbox::store_sync::push_on_stop() {
                let r = cairn_sandbox::store_sync::push(home, &name)?;
                eprintln!(
                    "{name}: pushed, {} of {} chunks uploaded",
                    r.chunks_uploaded, r.chunks
                );
            }
            if json {
                return print_row(home, &name);
            }
            match stopped {
                Some(c) => println!("{name}: stopped at checkpoint {c}"),
                None => println!("{name}: not running"),
            }
            Ok(0)
        }
        Command::Start { name, cold, json } => {
            let started = sandbox::start_with(home, &name, cold)?;
            print_started(home, &name, started, json)
        }
        Command::Fork {
            name,
            ckpt,
            new,
            no_start,
            json,
        } => {
            let f = cairn_sandbox::fork::fork(home, &name, &ckpt, &new, !no_start)?;
            let figures = cairn_sandbox::serve::ops::ForkFigures::of(&f);
            print_forked(home, &name, &ckpt, &new, &figures, json)
        }
        Command::Rm { name, json } => {
            sandbox::remove(home, &name)?;
            if json {
                println!("{}", serde_json::json!({"name": name, "removed": true}));
                return Ok(0);
            }
            println!("{name}: removed");
            Ok(0)
        }
        Command::Doctor { json, dry_run } => doctor(home, json, dry_run),
        Command::Serve(args) => crate::serve_cmd::serve(home, args),
        Command::Mcp => crate::serve_cmd::mcp(home),
        Command::Proxy {
            name,
            guest_port,
            listen,
        } => crate::ports_cmd::proxy(home, &name, guest_port, listen),
        Command::Router { listen, guest_port } => {
            crate::ports_cmd::router(home, listen, guest_port)
        }
        Command::Policy(cmd) => crate::net_cmd::run(home, cmd),
        Command::Store(cmd) => crate::store_cmd::run(home, cmd),
        Command::Sessions(cmd) => crate::sessions_cmd::run(home, cmd),
        Command::NetDns { dir } => {
            cairn_sandbox::net::dns::serve(&dir).map_err(SandboxError::from)?;
            Ok(0)
        }
        Command::IdleWatch { name } => {
            cairn_sandbox::idle::watch(home, &name)?;
            Ok(0)
        }
        Command::LeaseRenew { name } => {
            Ok(cairn_sandbox::lease_renew::run(home, &name).map(|()| 0)?)
        }
        Command::Settle { name } => {
            cairn_sandbox::sandbox::settle(home, &name)?;
            Ok(0)
        }
        Command::Agent(_) | Command::Completions { .. } => Ok(0),
    }
}

/// The client a wake connected with, else a new connection to the sandbox's guest agent.
fn agent_of(r: &Record, woken: Option<Client>) -> Result<Client, CliError> {
    match woken {
        Some(client) => Ok(client),
        None => connect_agent(r),
    }
}

/// Connects to the sandbox's guest agent; an agent that does not answer gets a hint.
fn connect_agent(r: &Record) -> Result<Client, CliError> {
    Client::connect_uds(&r.vsock_sock, AGENT_PORT).map_err(|e| {
        CliError::Usage(format!(
            "the guest agent of {:?} does not answer: {} (hint: `cairn start {} --cold` reboots \
             it from its disk: files are kept, processes lost)",
            r.name,
            cairn_agent::error_text(&e),
            r.name
        ))
    })
}

fn cp(home: &Home, src: &str, dst: &str) -> Result<u8, CliError> {
    let (name, put, local, remote) = match (parse_cp_arg(src), parse_cp_arg(dst)) {
        (CpArg::Local(l), CpArg::Remote(n, r)) => (n, true, l, r),
        (CpArg::Remote(n, r), CpArg::Local(l)) => (n, false, l, r),
        _ => {
            return Err(CliError::Usage(
                "cp needs exactly one NAME:/absolute/path argument (hint: `cairn cp ./file dev:/tmp/file`)"
                    .into(),
            ))
        }
    };
    let (r, _active, woken) = sandbox::enter(home, &name)?;
    let mut client = agent_of(&r, woken)?;
    let start = Instant::now();
    let stats = if put {
        client.put(&local, &remote)?
    } else {
        client.get(&remote, &local)?
    };
    let _ = sandbox::touch(home, &name);
    agent_cmd::report(if put { "put" } else { "get" }, &stats, start);
    Ok(0)
}

fn checkpoint(home: &Home, c: CheckpointCmd) -> Result<u8, CliError> {
    match c {
        CheckpointCmd::Create { name, ckpt, json } => {
            let meta = sandbox::checkpoint_create(home, &name, ckpt.as_deref())?;
            print_checkpoint(&name, &meta, json);
        }
        CheckpointCmd::List { name, json } => {
            let list = sandbox::checkpoint_list(home, &name)?;
            print_checkpoints(home, &name, &list, json)?;
        }
        CheckpointCmd::Restore { name, ckpt } => {
            sandbox::checkpoint_restore(home, &name, &ckpt)?;
            println!("{name}: restored to {ckpt}");
        }
        CheckpointCmd::Rm { name, ckpt } => {
            sandbox::checkpoint_remove(home, &name, &ckpt)?;
            println!("{name}: checkpoint {ckpt} removed");
        }
    }
    Ok(0)
}

/// What `create` prints (here or through the daemon): `start` is when the command began.
fn print_created(
    home: &Home,
    start: Instant,
    r: &cairn_sandbox::serve::ops::SandboxInfo,
    json: bool,
) -> Result<u8, CliError> {
    if json {
        return print_row(home, &r.name);
    }
    println!(
        "{}: created in {:.1} s ({} vCPU, {} MiB, {} GiB disk, idle timeout {})",
        r.name,
        start.elapsed().as_secs_f64(),
        r.cpus,
        r.mem_mib,
        r.disk_gib,
        match r.idle_timeout {
            0 => "off".to_string(),
            s => format!("{s} s"),
        }
    );
    Ok(0)
}

/// What `start` prints (here or through the daemon).
fn print_started(
    home: &Home,
    name: &str,
    started: sandbox::Started,
    json: bool,
) -> Result<u8, CliError> {
    if json {
        return print_row(home, name);
    }
    match started {
        sandbox::Started::AlreadyRunning => println!("{name}: already running"),
        sandbox::Started::Started => println!("{name}: running"),
        sandbox::Started::Rebooted => println!("{name}: running (booted from its disk)"),
    }
    Ok(0)
}

/// What `checkpoint create` prints (here or through the daemon).
fn print_checkpoint(name: &str, meta: &cairn_vmm_api::CheckpointInfo, json: bool) {
    if json {
        println!("{}", json_text(meta));
    } else {
        println!(
            "{name}: checkpoint {} (parent {}): {:.1} MiB memory, {:.1} MiB disk, paused {} ms, total {} ms",
            meta.name,
            meta.parent.as_deref().unwrap_or("-"),
            meta.dirty_memory_mib,
            meta.disk_delta_mib,
            fmt_num(meta.pause_ms),
            fmt_num(meta.total_ms),
        );
    }
}

/// What `checkpoint list` prints (here or through the daemon).
fn print_checkpoints(
    home: &Home,
    name: &str,
    list: &[cairn_vmm_api::CheckpointInfo],
    json: bool,
) -> Result<(), CliError> {
    let head = home.registry()?.get(name)?.head_checkpoint;
    if json {
        println!("{}", json_text(&list));
    } else {
        println!(
            "{:<2}{:<28} {:<28} {:>10} {:>10} {:>9} {:>9} {:>9}",
            "", "NAME", "PARENT", "MEM MiB", "DISK MiB", "PAUSE ms", "WRITE ms", "TOTAL ms"
        );
        for c in list {
            let n = c.name.as_str();
            println!(
                "{:<2}{:<28} {:<28} {:>10.1} {:>10.1} {:>9} {:>9} {:>9}",
                if head.as_deref() == Some(n) { "*" } else { "" },
                n,
                c.parent.as_deref().unwrap_or("-"),
                c.dirty_memory_mib,
                c.disk_delta_mib,
                fmt_num(c.pause_ms),
                fmt_num(c.write_ms),
                fmt_num(c.total_ms),
            );
        }
    }
    Ok(())
}

fn fmt_num(f: f64) -> String {
    if f.fract() == 0.0 {
        format!("{f:.0}")
    } else {
        format!("{f:.1}")
    }
}

/// A VMM reply as one line of JSON (plain data: it always serializes).
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// What `fork` prints (here or through the daemon).
fn print_forked(
    home: &Home,
    name: &str,
    ckpt: &str,
    new: &str,
    f: &cairn_sandbox::serve::ops::ForkFigures,
    json: bool,
) -> Result<u8, CliError> {
    if json {
        return print_row(home, new);
    }
    println!(
        "{new}: forked from {name} at {ckpt} in {:.2} s ({} checkpoints, {} files shared, {:.1} MiB copied){}",
        f.fork_ms / 1e3,
        f.checkpoints,
        f.files_shared,
        f.bytes_copied as f64 / (1024.0 * 1024.0),
        match f.start_ms {
            Some(t) => format!(", started in {:.2} s", t / 1e3),
            None => ", stopped".to_string(),
        }
    );
    Ok(0)
}

/// `--json` on create, fork, start and stop: the sandbox's row as `ls --json` prints it.
fn print_row(home: &Home, name: &str) -> Result<u8, CliError> {
    let r = home.registry()?.get(name)?;
    println!("{}", sandbox::ls_json(&r));
    Ok(0)
}

fn ls(home: &Home, json: bool) -> Result<u8, CliError> {
    let rows: Vec<Record> = cairn_sandbox::serve::ops::list_records(home)?;
    if json {
        let v: Vec<_> = rows.iter().map(sandbox::ls_json).collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(0);
    }
    let rows: Vec<_> = rows
        .iter()
        .map(cairn_sandbox::serve::ops::SandboxInfo::of)
        .collect();
    print_ls(&rows);
    Ok(0)
}

/// What `ls` prints (here or through the daemon).
fn print_ls(rows: &[cairn_sandbox::serve::ops::SandboxInfo]) {
    println!(
        "{:<20} {:<9} {:>8} {:>4} {:>7} {:>6} {:<24} {:>8}",
        "NAME", "STATE", "PID", "CPUS", "MEM", "DISK", "HEAD", "IDLE"
    );
    let now = cairn_sandbox::registry::now();
    for r in rows {
        let pid = r.pid.map_or("-".to_string(), |p| p.to_string());
        println!(
            "{:<20} {:<9} {:>8} {:>4} {:>6}M {:>5}G {:<24} {:>7}s",
            r.name,
            r.state,
            pid,
            r.cpus,
            r.mem_mib,
            r.disk_gib,
            r.head_checkpoint.as_deref().unwrap_or("-"),
            now.saturating_sub(r.last_activity),
        );
    }
}

fn doctor(home: &Home, json: bool, dry_run: bool) -> Result<u8, CliError> {
    let findings = cairn_sandbox::doctor::run(home, dry_run)?;
    if json {
        let v = serde_json::to_value(&findings).map_err(io::Error::other)?;
        println!("{v}");
        return Ok(0);
    }
    if findings.is_empty() {
        println!("all is well");
    }
    for f in &findings {
        match &f.sandbox {
            Some(n) => println!("{n}: {}: {}", f.found, f.did),
            None => println!("{}: {}", f.found, f.did),
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_args() {
        assert_eq!(
            parse_cp_arg("dev:/tmp/x"),
            CpArg::Remote("dev".into(), "/tmp/x".into())
        );
        assert_eq!(parse_cp_arg("./a:b"), CpArg::Local("./a:b".into()));
        assert_eq!(parse_cp_arg("dev:rel"), CpArg::Local("dev:rel".into()));
        assert_eq!(parse_cp_arg("/abs"), CpArg::Local("/abs".into()));
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_keeps_the_double_dash_argv() {
        let cli =
            Cli::try_parse_from(["cairn", "exec", "dev", "-e", "A=1", "--", "ls", "-l"]).unwrap();
        assert!(matches!(cli.command, Command::Exec { ref name, .. } if name == "dev"));
    }
}
