//! The operations `cairn serve` and `cairn mcp` offer, as blocking library calls over
//! [`crate::sandbox`] and the guest agent: the same functions the CLI runs, plus the shaping
//! of their answers into the API's types. Async callers run them under `spawn_blocking`.

use super::agent_gate::Turns;
use crate::registry::{Record, RegistryError};
use crate::sandbox::{self, CreateOptions, Home, Liveness, SandboxError};
use cairn_agent::client::{Client, ClientError, ExecControl, ExecEvent, ExitStatus};
use cairn_agent::proto::{ExecRequest, PtySize};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// The largest file `read_file` returns whole (larger ones: the tar endpoints).
pub const MAX_READ: u64 = 64 << 20;

/// Why an operation failed; [`OpsError::status`] gives its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A sandbox operation failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The guest agent failed or refused.
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The guest path does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A host-side temporary file failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl OpsError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            OpsError::BadRequest(_) => 400,
            OpsError::NotFound(_) => 404,
            OpsError::Sandbox(SandboxError::InvalidName(_)) => 400,
            OpsError::Sandbox(SandboxError::Registry(RegistryError::NotFound(_))) => 404,
            OpsError::Sandbox(SandboxError::Registry(RegistryError::NameTaken(_))) => 409,
            OpsError::Agent(ClientError::Agent(m)) if is_not_found(m) => 404,
            _ => 500,
        }
    }

    /// A short machine-readable code for the JSON error.
    pub fn code(&self) -> &'static str {
        match self.status() {
            400 => "bad_request",
            404 => "not_found",
            409 => "conflict",
            _ => "internal",
        }
    }
}

fn is_not_found(message: &str) -> bool {
    message.contains("No such file") || message.contains("not found")
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpsError {
    let what = what.into();
    move |source| OpsError::Io { what, source }
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxInfo {
    /// Unique name.
    pub name: String,
    /// Live state: running, stopped, creating, busy, dead or cold.
    pub state: String,
    /// vCPUs.
    pub cpus: u8,
    /// Memory, MiB.
    pub mem_mib: u32,
    /// Disk size, GiB (sparse).
    pub disk_gib: u64,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the last exec, file operation or lifecycle change.
    pub last_activity: u64,
    /// The checkpoint the VM descends from (or is stopped at).
    pub head_checkpoint: Option<String>,
    /// Seconds of quiet before the sandbox is checkpointed and stopped; 0 = never.
    pub idle_timeout: u64,
    /// The VMM's host pid while it is running or creating.
    #[serde(default)]
    pub pid: Option<u32>,
}

impl SandboxInfo {
    /// The API's view of a registry row.
    pub fn of(r: &Record) -> SandboxInfo {
        let live = sandbox::liveness(r);
        SandboxInfo {
            pid: r
                .pid
                .filter(|_| matches!(live, Liveness::Running | Liveness::Creating)),
            name: r.name.clone(),
            state: live.as_str().to_string(),
            cpus: r.cpus,
            mem_mib: r.mem_mib,
            disk_gib: r.disk_gib,
            created: r.created,
            last_activity: r.last_activity,
            head_checkpoint: r.head_checkpoint.clone(),
            idle_timeout: r.idle_timeout,
        }
    }
}

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Sandbox name (1-40 of a-z A-Z 0-9 . _ -).
    pub name: String,
    /// Guest image: `default` (or none), or an image of the image store (`cairn image ls`).
    #[serde(default)]
    pub image: Option<String>,
    /// vCPUs (default 1).
    #[serde(default)]
    pub cpus: Option<u8>,
    /// Memory in MiB (default 512).
    #[serde(default)]
    pub mem_mib: Option<u32>,
    /// Disk in GiB (default 100, sparse).
    #[serde(default)]
    pub disk_gib: Option<u64>,
    /// Idle timeout in seconds (default 30; 0 = never).
    #[serde(default)]
    pub idle_timeout: Option<u64>,
    /// Boot from scratch, neither using nor keeping a golden checkpoint (`cairn create --cold`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cold: bool,
    /// Seconds to wait for the guest agent at boot (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_timeout: Option<u64>,
}

/// Creates and boots a sandbox.
pub fn create(home: &Home, req: &CreateRequest) -> Result<SandboxInfo, OpsError> {
    let image = req.image.clone().filter(|i| i != "default");
    if let Some(img) = &image {
        // An unknown image is the caller's mistake (404), found before anything is made.
        crate::image_store::rootfs_of(home, img)
            .map_err(|e| OpsError::NotFound(cairn_agent::error_text(&e)))?;
    }
    let d = CreateOptions::default();
    let opts = CreateOptions {
        cpus: req.cpus.unwrap_or(d.cpus),
        mem_mib: req.mem_mib.unwrap_or(d.mem_mib),
        disk_gib: req.disk_gib.unwrap_or(d.disk_gib),
        idle_timeout: req.idle_timeout.unwrap_or(d.idle_timeout),
        boot_timeout: req.boot_timeout.map_or(d.boot_timeout, Duration::from_secs),
        cold: req.cold,
        image,
        ..d
    };
    let r = sandbox::create(home, &req.name, &opts)?;
    Ok(SandboxInfo::of(&r))
}

/// Every sandbox's row, each head moved to its store's where a store pull or push moved it
/// (`cairn ls`, and the API's list).
pub fn list_records(home: &Home) -> Result<Vec<Record>, SandboxError> {
    let mut reg = home.registry()?;
    let mut rows = reg.list()?;
    for r in &mut rows {
        if let Some(h) = crate::reconcile::follow_store(&mut reg, r, &home.paths(&r.name))? {
            r.head_checkpoint = Some(h);
        }
    }
    Ok(rows)
}

/// Every sandbox.
pub fn list(home: &Home) -> Result<Vec<SandboxInfo>, OpsError> {
    Ok(list_records(home)?.iter().map(SandboxInfo::of).collect())
}

/// One sandbox.
pub fn get(home: &Home, name: &str) -> Result<SandboxInfo, OpsError> {
    let r = home.registry()?.get(name).map_err(SandboxError::from)?;
    Ok(SandboxInfo::of(&r))
}

/// What to run: `argv` as is, or `command` through `sh -c`.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Bytes for stdin (closed after them); `None`: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Keep stdin open for the caller to feed through `on_start`'s control handle (with
    /// `stdin: None`; a WebSocket exec).
    pub stdin_open: bool,
    /// Run under a terminal of this size (stdout and stderr then merge).
    pub tty: Option<PtySize>,
}

/// One event of a running exec, in the order the agent sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// The process started.
    Started {
        /// Its guest pid.
        pid: u32,
    },
    /// Output on stdout (or the terminal).
    Stdout(Vec<u8>),
    /// Output on stderr.
    Stderr(Vec<u8>),
    /// The end: the exit status, and the time spent in the agent round trip (connecting to
    /// the agent, in its turn, through the exit: what the exec costs without cairn around it;
    /// `None` for a session's end, or an exec whose agent a wake had connected already).
    Exit(ExitStatus, Option<Duration>),
}

/// The agent client for a sandbox: the one a wake connected with, else a new connection,
/// opened in its turn ([`super::agent_gate`]); the turn is held until the caller lets it go
/// (once its process has started, or its transfer is done).
fn agent(r: &Record, woken: Option<Client>) -> Result<(Client, Option<Turns>), OpsError> {
    match woken {
        Some(c) => Ok((c, None)),
        None => {
            let (c, t) = super::agent_gate::connect_in_turn(&r.vsock_sock)?;
            Ok((c, Some(t)))
        }
    }
}

/// Runs `spec` in sandbox `name` (waking it if needed), handing each event to `sink` as it
/// comes. `on_start` gets a control handle once the process runs (to kill it when the caller
/// goes away). `sink` returning false abandons the exec: the connection to the agent closes,
/// and the agent kills the process. Returns the exit status, or `None` when abandoned.
pub fn exec_stream(
    home: &Home,
    name: &str,
    spec: ExecSpec,
    on_start: impl FnOnce(ExecControl),
    mut sink: impl FnMut(ExecOutput) -> bool,
) -> Result<Option<ExitStatus>, OpsError> {
    if spec.argv.is_empty() {
        return Err(OpsError::BadRequest("empty command".into()));
    }
    let (r, _active, woken) = sandbox::enter(home, name)?;
    // The agent round trip starts here; a wake's connection was made inside `enter`.
    let agent_start = woken.is_none().then(Instant::now);
    let (mut client, mut turn) = agent(&r, woken)?;
    let req = ExecRequest {
        argv: spec.argv,
        env: spec.env,
        cwd: spec.cwd,
        stdin: spec.stdin.is_some() || spec.stdin_open,
        pty: spec.tty,
    };
    let result = (|| {
        let mut running = client.spawn(&req)?;
        // Started: the next request to this sandbox may connect.
        drop(turn.take());
        let control = running.control();
        on_start(running.control());
        if !sink(ExecOutput::Started { pid: running.pid() }) {
            return Ok(None);
        }
        if let Some(data) = spec.stdin {
            // A feeder thread, so a process that does not read its stdin cannot stall output.
            let c = control.clone();
            std::thread::spawn(move || {
                let _ = c.stdin(&data).and_then(|()| c.close_stdin());
            });
        }
        loop {
            let ev = match running.next_event()? {
                ExecEvent::Stdout(d) => ExecOutput::Stdout(d),
                ExecEvent::Stderr(d) => ExecOutput::Stderr(d),
                ExecEvent::Exited(s) => {
                    sink(ExecOutput::Exit(s, agent_start.map(|t| t.elapsed())));
                    return Ok(Some(s));
                }
            };
            if !sink(ev) {
                let _ = control.signal(libc::SIGKILL);
                return Ok(None);
            }
        }
    })();
    let _ = sandbox::touch(home, name);
    result
}

/// An exec's collected result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecResult {
    /// Standard output (UTF-8, invalid bytes replaced).
    pub stdout: String,
    /// Standard error (UTF-8, invalid bytes replaced).
    pub stderr: String,
    /// The exit code; 128 + N when killed by signal N.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Milliseconds the exec spent in the agent round trip, as the server measured it (see
    /// [`ExecOutput::Exit`]); absent when not measured. A client's time minus this is what
    /// cairn added (`cairn-bench api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ms: Option<f64>,
}

/// A duration in milliseconds, to the microsecond, as the API reports it.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs `spec` to its end and collects its output.
pub fn exec_collect(home: &Home, name: &str, spec: ExecSpec) -> Result<ExecResult, OpsError> {
    let (mut out, mut err, mut agent) = (Vec::new(), Vec::new(), None);
    let status = exec_stream(
        home,
        name,
        spec,
        |_| {},
        |ev| {
            match ev {
                ExecOutput::Stdout(d) => out.extend_from_slice(&d),
                ExecOutput::Stderr(d) => err.extend_from_slice(&d),
                ExecOutput::Exit(_, t) => agent = t,
                ExecOutput::Started { .. } => {}
            }
            true
        },
    )?;
    let status = status.unwrap_or(ExitStatus::Signal(libc::SIGKILL));
    Ok(ExecResult {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        exit_code: status.shell_code(),
        signal: match status {
            ExitStatus::Signal(s) => Some(s),
            ExitStatus::Code(_) => None,
        },
        agent_ms: agent.map(millis),
    })
}

/// `sh -c COMMAND`.
pub fn shell(command: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), command.into()]
}

/// Checks a guest path: absolute, no `..` or `.` components, no NUL, at most 4096 bytes.
pub fn check_path(path: &str) -> Result<(), OpsError> {
    let bad = |why: &str| Err(OpsError::BadRequest(format!("path {path:?}: {why}")));
    if !path.starts_with('/') {
        return bad("must be absolute");
    }
    if path.len() > 4096 || path.contains('\0') {
        return bad("too long or contains NUL");
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return bad("must not contain . or .. components");
    }
    Ok(())
}

/// Reads a guest file whole (at most [`MAX_READ`] bytes).
pub fn read_file(home: &Home, name: &str, path: &str) -> Result<Vec<u8>, OpsError> {
    check_path(path)?;
    let (r, _active, woken) = sandbox::enter(home, name)?;
    let (mut client, _turn) = agent(&r, woken)?;
    let tmp = tempfile::tempdir().map_err(io_err("make a temporary directory"))?;
    let dst = tmp.path().join("f");
    client.get(path, &dst)?;
    let _ = sandbox::touch(home, name);
    let meta = std::fs::metadata(&dst).map_err(io_err("read the fetched file"))?;
    if meta.is_dir() {
        return Err(OpsError::BadRequest(format!(
            "{path} is a directory (hint: list it, or fetch it as tar)"
        )));
    }
    if meta.len() > MAX_READ {
        return Err(OpsError::BadRequest(format!(
            "{path} is larger than {MAX_READ} bytes (hint: fetch it as tar)"
        )));
    }
    std::fs::read(&dst).map_err(io_err("read the fetched file"))
}

/// Writes a guest file (parents created, an existing file replaced) with permission `mode`.
pub fn write_file(
    home: &Home,
    name: &str,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), OpsError> {
    check_path(path)?;
    if path == "/" {
        return Err(OpsError::BadRequest("cannot write over /".into()));
    }
    let mut f = tempfile::NamedTempFile::new().map_err(io_err("make a temporary file"))?;
    f.write_all(data)
        .map_err(io_err("write a temporary file"))?;
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("set a temporary file's mode"))?;
    let (r, _active, woken) = sandbox::enter(home, name)?;
    let (mut client, _turn) = agent(&r, woken)?;
    client.put(f.path(), path)?;
    let _ = sandbox::touch(home, name);
    Ok(())
}

/// One directory entry or stat result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileInfo {
    /// Base name (the whole path for stat).
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, octal text (e.g. `644`).
    pub mode: String,
    /// Modification time, Unix seconds.
    pub mtime: u64,
}

/// `stat -c` format of [`FileInfo`] lines: type|size|mode|mtime|name.
const STAT_FMT: &str = "%F|%s|%a|%Y|%n";

fn parse_stat_line(line: &str) -> Option<FileInfo> {
    let mut it = line.splitn(5, '|');
    let kind = match it.next()? {
        "regular file" | "regular empty file" => "file",
        "directory" => "dir",
        "symbolic link" => "symlink",
        _ => "other",
    };
    Some(FileInfo {
        kind: kind.to_string(),
        size: it.next()?.parse().ok()?,
        mode: it.next()?.to_string(),
        mtime: it.next()?.parse().ok()?,
        name: it.next()?.to_string(),
    })
}

fn guest_failure(path: &str, res: &ExecResult) -> OpsError {
    guest_failure_text(path, &res.stderr)
}

/// A guest command's failure on `path` from its stderr: a missing path is not found.
pub(super) fn guest_failure_text(path: &str, stderr: &str) -> OpsError {
    let msg = stderr.trim();
    if msg.contains("No such file") {
        OpsError::NotFound(format!("{path}: no such file or directory"))
    } else if msg.contains("Not a directory") {
        OpsError::BadRequest(format!("{path}: not a directory"))
    } else {
        OpsError::BadRequest(format!("{path}: {msg}"))
    }
}

/// Lists a guest directory (one `sh` and one `stat` in the guest).
pub fn list_files(home: &Home, name: &str, path: &str) -> Result<Vec<FileInfo>, OpsError> {
    check_path(path)?;
    let script = format!(
        "cd -- \"$1\" || exit 2; set -- .* *; for f; do case $f in .|..) continue;; esac; \
         if [ -e \"$f\" ] || [ -L \"$f\" ]; then printf '%s\\0' \"$f\"; fi; done | \
         xargs -0 -r stat -c '{STAT_FMT}' --"
    );
    let spec = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script, "sh".into(), path.into()],
        ..Default::default()
    };
    let res = exec_collect(home, name, spec)?;
    if res.exit_code != 0 {
        return Err(guest_failure(path, &res));
    }
    let mut v: Vec<FileInfo> = res.stdout.lines().filter_map(parse_stat_line).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// Stats one guest path (not following a final symlink).
pub fn stat(home: &Home, name: &str, path: &str) -> Result<FileInfo, OpsError> {
    check_path(path)?;
    let spec = ExecSpec {
        argv: vec![
            "stat".into(),
            "-c".into(),
            STAT_FMT.into(),
            "--".into(),
            path.into(),
        ],
        ..Default::default()
    };
    let res = exec_collect(home, name, spec)?;
    if res.exit_code != 0 {
        return Err(guest_failure(path, &res));
    }
    res.stdout
        .lines()
        .next()
        .and_then(parse_stat_line)
        .ok_or_else(|| OpsError::BadRequest(format!("{path}: unreadable stat output")))
}

/// Deletes a guest file or directory tree.
pub fn remove_path(home: &Home, name: &str, path: &str) -> Result<(), OpsError> {
    check_path(path)?;
    if path.trim_end_matches('/').is_empty() {
        return Err(OpsError::BadRequest("refusing to delete /".into()));
    }
    let spec = ExecSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "[ -e \"$1\" ] || [ -L \"$1\" ] || { echo \"$1: No such file\" >&2; exit 1; }; rm -rf -- \"$1\"".into(),
            "sh".into(),
            path.into(),
        ],
        ..Default::default()
    };
    let res = exec_collect(home, name, spec)?;
    if res.exit_code != 0 {
        return Err(guest_failure(path, &res));
    }
    Ok(())
}

/// The exec that streams the tree at `path` as a tar archive on stdout: a directory's
/// contents (`./`, `./a`, ...; the path followed if a symlink), or anything else as one entry
/// named after it (followed if a symlink), read from its parent directory.
pub fn tar_out_spec(path: &str) -> Result<ExecSpec, OpsError> {
    check_path(path)?;
    Ok(ExecSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "if [ -d \"$1\" ]; then exec tar -C \"$1\" -cf - .; fi; \
             d=${1%/*}; exec tar -C \"${d:-/}\" -hcf - -- \"${1##*/}\""
                .into(),
            "sh".into(),
            path.into(),
        ],
        ..Default::default()
    })
}

/// The exec that unpacks a tar archive on its stdin (fed by the caller) into the guest
/// directory `path`, made if missing.
pub fn tar_in_spec(path: &str) -> Result<ExecSpec, OpsError> {
    check_path(path)?;
    Ok(ExecSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "mkdir -p -- \"$1\" && exec tar -C \"$1\" -xf -".into(),
            "sh".into(),
            path.into(),
        ],
        stdin_open: true,
        ..Default::default()
    })
}

/// `sandbox::checkpoint_create`, its answer as JSON.
pub fn checkpoint_create(
    home: &Home,
    name: &str,
    ckpt: Option<&str>,
) -> Result<serde_json::Value, OpsError> {
    if let Some(c) = ckpt {
        check_checkpoint_name(c)?;
    }
    let meta = sandbox::checkpoint_create(home, name, ckpt)?;
    to_json(&meta)
}

/// `sandbox::checkpoint_list` as JSON.
pub fn checkpoint_list(home: &Home, name: &str) -> Result<serde_json::Value, OpsError> {
    let list = sandbox::checkpoint_list(home, name)?;
    to_json(&list)
}

/// Checks a checkpoint name the way sandbox names are checked.
pub fn check_checkpoint_name(c: &str) -> Result<(), OpsError> {
    sandbox::validate_name(c).map_err(|_| {
        OpsError::BadRequest(format!(
            "invalid checkpoint name {c:?} (hint: 1-40 characters from a-z A-Z 0-9 . _ -)"
        ))
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, OpsError> {
    serde_json::to_value(v).map_err(|e| OpsError::Io {
        what: "encode an answer".into(),
        source: std::io::Error::other(e),
    })
}

/// Forks sandbox `name` at `ckpt` into `new_name`, started.
pub fn fork(home: &Home, name: &str, ckpt: &str, new_name: &str) -> Result<SandboxInfo, OpsError> {
    Ok(fork_with(home, name, ckpt, new_name, true)?.sandbox)
}

/// A fork's answer: the new sandbox, and what the fork shared and took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForkInfo {
    /// The new sandbox.
    #[serde(flatten)]
    pub sandbox: SandboxInfo,
    /// The fork's figures.
    pub fork: ForkFigures,
}

/// What a fork shared with the original, and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForkFigures {
    /// Making the new sandbox's files (links, config, registry row), ms.
    pub fork_ms: f64,
    /// Checkpoints shared.
    pub checkpoints: u64,
    /// Files shared (linked, not copied).
    pub files_shared: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Starting its VMM, ms; `None` when left stopped.
    pub start_ms: Option<f64>,
}

impl ForkFigures {
    /// A fork's figures.
    pub fn of(f: &crate::fork::Forked) -> ForkFigures {
        ForkFigures {
            fork_ms: f.fork_time.as_secs_f64() * 1e3,
            checkpoints: f.report.checkpoints.len() as u64,
            files_shared: f.report.files_linked,
            bytes_copied: f.report.bytes_copied,
            start_ms: f.start_time.map(|t| t.as_secs_f64() * 1e3),
        }
    }
}

/// Forks sandbox `name` at `ckpt` into `new_name`, started if `start`.
pub fn fork_with(
    home: &Home,
    name: &str,
    ckpt: &str,
    new_name: &str,
    start: bool,
) -> Result<ForkInfo, OpsError> {
    check_checkpoint_name(ckpt)?;
    let f = crate::fork::fork(home, name, ckpt, new_name, start)?;
    Ok(ForkInfo {
        sandbox: get(home, &f.record.name)?,
        fork: ForkFigures::of(&f),
    })
}

/// How long the checkpoint endpoints report progress between beats.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for ok in ["/", "/a", "/a/b.txt", "/a/..b", "/a/b/"] {
            check_path(ok).unwrap();
        }
        for bad in ["", "a", "/a/../b", "/..", "/a/.", "/a\0b", "./x"] {
            assert_eq!(check_path(bad).unwrap_err().status(), 400, "{bad:?}");
        }
    }

    #[test]
    fn stat_lines_parse() {
        let f = parse_stat_line("regular file|12|644|1700000000|a|b").unwrap();
        assert_eq!(
            f,
            FileInfo {
                name: "a|b".into(),
                kind: "file".into(),
                size: 12,
                mode: "644".into(),
                mtime: 1700000000
            }
        );
        assert_eq!(parse_stat_line("directory|0|755|1|d").unwrap().kind, "dir");
        assert!(parse_stat_line("garbage").is_none());
    }

    #[test]
    fn errors_map_to_statuses() {
        let nf = OpsError::Sandbox(SandboxError::Registry(RegistryError::NotFound("x".into())));
        assert_eq!(nf.status(), 404);
        let taken = OpsError::Sandbox(SandboxError::Registry(RegistryError::NameTaken("x".into())));
        assert_eq!(taken.status(), 409);
        assert_eq!(OpsError::BadRequest("x".into()).code(), "bad_request");
    }
}
