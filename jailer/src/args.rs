//! Command-line parsing, strict and dependency-free.
//!
//! The flags follow Firecracker's jailer. Parsing is pure: it looks at the strings only and never at the
//! file system, so it can be fuzzed. Checks that need the file system (does the exec file exist?) happen
//! later, in [`crate::jail`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::bind::{self, BindMount};

/// Where jails are created when `--chroot-base-dir` is not given.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// `RLIMIT_NOFILE` applied when no `--resource-limit no-file=…` is given.
pub const DEFAULT_NO_FILE: u64 = 2048;
/// Longest accepted `--id`.
pub const MAX_ID_LEN: usize = 64;

/// The usage text printed by `--help`.
pub const USAGE: &str = "\
Usage: cairn-jailer --id ID --exec-file PATH --uid UID --gid GID [OPTIONS] [-- VMM_ARGS...]

Starts PATH (copied into <chroot-base-dir>/<exec-file-name>/<ID>/root) inside a chroot, fresh
mount/IPC/UTS namespaces and per-jail cgroups, as UID:GID with no capabilities.

Required:
  --id ID                      jail id: 1-64 characters from [A-Za-z0-9-]
  --exec-file PATH             the VMM binary (must be statically linked)
  --uid UID                    user id the VMM runs as
  --gid GID                    group id the VMM runs as
Options:
  --chroot-base-dir DIR        absolute base of all jails [default: /srv/jailer]
  --netns PATH                 join this network namespace (e.g. /var/run/netns/NAME)
  --daemonize                  detach: new session, stdio to /dev/null, return once the VMM runs
  --new-pid-ns                 run the VMM as pid 1 of a new pid namespace
  --cgroup-version 1|2         cgroup hierarchy to use [default: 1]
  --cgroup FILE=VALUE          write VALUE to FILE in the jail's cgroup (repeatable),
                               e.g. pids.max=64; the controller is FILE up to its first dot
  --parent-cgroup PATH         parent of the jail's cgroup [default: <exec-file-name>]
  --resource-limit NAME=VALUE  fsize or no-file (repeatable) [default: no-file=2048]
  --userfaultfd                also create /dev/userfaultfd in the jail
  --bind HOST:JAIL[:ro]        bind-mount HOST (absolute) at JAIL inside the jail (repeatable),
                               nosuid,nodev, read-only with :ro; made before pivot_root
  -h, --help                   print this text
  -V, --version                print the version
Everything after `--` is passed to the VMM as argv[1..].
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// Build a jail and run the VMM in it.
    Run(Box<JailerArgs>),
}

/// Which cgroup hierarchy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupVersion {
    /// Per-controller v1 hierarchies.
    #[default]
    V1,
    /// The unified v2 hierarchy.
    V2,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// Interface file name, e.g. `pids.max`.
    pub file: String,
    /// Value written to it.
    pub value: String,
}

impl CgroupSetting {
    /// The controller owning the file: its name up to the first dot (`cpuset.cpus` -> `cpuset`).
    pub fn controller(&self) -> &str {
        controller_of(&self.file)
    }
}

/// The controller a cgroup interface file belongs to, as Firecracker derives it.
pub fn controller_of(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

/// A resource limit the jailer knows by Firecracker's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceKind {
    /// `fsize`: `RLIMIT_FSIZE`, the largest file the VMM may write.
    Fsize,
    /// `no-file`: `RLIMIT_NOFILE`, one more than the largest fd number.
    NoFile,
}

impl ResourceKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Fsize => "fsize",
            ResourceKind::NoFile => "no-file",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "fsize" => Some(ResourceKind::Fsize),
            "no-file" => Some(ResourceKind::NoFile),
            _ => None,
        }
    }
}

/// One `--resource-limit NAME=VALUE` (soft and hard limit alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    /// Which limit.
    pub kind: ResourceKind,
    /// Its value.
    pub value: u64,
}

/// A parsed, syntactically valid command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerArgs {
    /// Jail id.
    pub id: String,
    /// The VMM binary, as given.
    pub exec_file: PathBuf,
    /// User id the VMM runs as.
    pub uid: u32,
    /// Group id the VMM runs as.
    pub gid: u32,
    /// Absolute base of all jails.
    pub chroot_base: PathBuf,
    /// Network namespace to join.
    pub netns: Option<PathBuf>,
    /// Detach from the caller.
    pub daemonize: bool,
    /// Run the VMM in a new pid namespace.
    pub new_pid_ns: bool,
    /// Which cgroup hierarchy.
    pub cgroup_version: CgroupVersion,
    /// Values to write into the jail's cgroups, in command-line order.
    pub cgroups: Vec<CgroupSetting>,
    /// Parent of the jail's cgroup, relative to the hierarchy root.
    pub parent_cgroup: Option<String>,
    /// Limits given on the command line (see [`JailerArgs::effective_limits`]).
    pub resource_limits: Vec<ResourceLimit>,
    /// Create `/dev/userfaultfd` in the jail.
    pub userfaultfd: bool,
    /// `--bind HOST:JAIL[:ro]`, in order.
    pub binds: Vec<BindMount>,
    /// Arguments after `--`, passed to the VMM.
    pub vmm_args: Vec<String>,
}

impl JailerArgs {
    /// The limits to apply: the given ones plus defaults for those not given.
    pub fn effective_limits(&self) -> Vec<ResourceLimit> {
        let mut limits = self.resource_limits.clone();
        if !limits.iter().any(|l| l.kind == ResourceKind::NoFile) {
            limits.push(ResourceLimit {
                kind: ResourceKind::NoFile,
                value: DEFAULT_NO_FILE,
            });
        }
        limits
    }
}

/// A command line the jailer refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A flag the jailer does not know.
    #[error("unknown flag '{0}' (see --help)")]
    UnknownFlag(String),
    /// A word before `--` that is not a flag.
    #[error("unexpected argument '{0}' (VMM arguments go after --)")]
    UnexpectedArgument(String),
    /// A flag that needs a value came without one.
    #[error("flag {0} needs a value")]
    MissingValue(&'static str),
    /// A flag that takes no value was given one with `=`.
    #[error("flag {0} takes no value")]
    UnexpectedValue(&'static str),
    /// A single-valued flag was given twice.
    #[error("flag {0} given more than once")]
    Duplicate(&'static str),
    /// A required flag is missing.
    #[error("missing required flag {0}")]
    MissingRequired(&'static str),
    /// A flag's value is malformed.
    #[error("invalid value '{value}' for {flag}: {reason}")]
    InvalidValue {
        /// The flag.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ArgsError {
    ArgsError::InvalidValue {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Checks a jail id: 1..=64 characters from `[A-Za-z0-9-]`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("longer than {MAX_ID_LEN} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "character {c:?} not allowed (only A-Z, a-z, 0-9 and -)"
        ));
    }
    Ok(())
}

/// Checks that a path has no `.`/`..` components (after the leading `/`, if any) and no NUL byte.
fn plain_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err("must not contain '.' or '..' components".into());
    }
    Ok(())
}

/// A cgroup or file name component: `[A-Za-z0-9_.-]+`, not `.` or `..`.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_cgroup(value: &str) -> Result<CgroupSetting, ArgsError> {
    const FLAG: &str = "--cgroup";
    let (file, val) = value
        .split_once('=')
        .ok_or_else(|| invalid(FLAG, value, "expected FILE=VALUE"))?;
    if !plain_name(file) {
        return Err(invalid(
            FLAG,
            value,
            "FILE must be a cgroup file name like pids.max",
        ));
    }
    let (ctrl, rest) = file.split_once('.').ok_or_else(|| {
        invalid(
            FLAG,
            value,
            "FILE must be <controller>.<name>, e.g. pids.max",
        )
    })?;
    if ctrl.is_empty() || rest.is_empty() {
        return Err(invalid(
            FLAG,
            value,
            "FILE must be <controller>.<name>, e.g. pids.max",
        ));
    }
    if val.is_empty() {
        return Err(invalid(FLAG, value, "VALUE must not be empty"));
    }
    if val.contains(['\n', '\0']) {
        return Err(invalid(FLAG, value, "VALUE must be a single line"));
    }
    Ok(CgroupSetting {
        file: file.to_string(),
        value: val.to_string(),
    })
}

fn parse_limit(value: &str) -> Result<ResourceLimit, ArgsError> {
    const FLAG: &str = "--resource-limit";
    let (name, val) = value
        .split_once('=')
        .ok_or_else(|| invalid(FLAG, value, "expected NAME=VALUE"))?;
    let kind = ResourceKind::from_name(name).ok_or_else(|| {
        invalid(
            FLAG,
            value,
            format!("unknown resource '{name}' (known: fsize, no-file)"),
        )
    })?;
    let value =
        parse_u64(val).ok_or_else(|| invalid(FLAG, value, "VALUE must be a decimal number"))?;
    Ok(ResourceLimit { kind, value })
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_u32(flag: &'static str, s: &str) -> Result<u32, ArgsError> {
    let v = parse_u64(s).ok_or_else(|| invalid(flag, s, "must be a decimal number"))?;
    u32::try_from(v).map_err(|_| invalid(flag, s, "out of range"))
}

fn set_once<T>(slot: &mut Option<T>, flag: &'static str, value: T) -> Result<(), ArgsError> {
    if slot.is_some() {
        return Err(ArgsError::Duplicate(flag));
    }
    *slot = Some(value);
    Ok(())
}

fn set_flag(slot: &mut bool, flag: &'static str) -> Result<(), ArgsError> {
    if *slot {
        return Err(ArgsError::Duplicate(flag));
    }
    *slot = true;
    Ok(())
}

/// The flags, each with whether it takes a value.
const FLAGS: &[(&str, bool)] = &[
    ("--id", true),
    ("--exec-file", true),
    ("--uid", true),
    ("--gid", true),
    ("--chroot-base-dir", true),
    ("--netns", true),
    ("--daemonize", false),
    ("--new-pid-ns", false),
    ("--cgroup-version", true),
    ("--cgroup", true),
    ("--parent-cgroup", true),
    ("--resource-limit", true),
    ("--userfaultfd", false),
    ("--bind", true),
    ("--help", false),
    ("-h", false),
    ("--version", false),
    ("-V", false),
];

/// Parses the arguments that follow the program name.
pub fn parse<S: AsRef<str>>(argv: &[S]) -> Result<Command, ArgsError> {
    let mut id = None;
    let mut exec_file = None;
    let mut uid = None;
    let mut gid = None;
    let mut chroot_base = None;
    let mut netns = None;
    let mut daemonize = false;
    let mut new_pid_ns = false;
    let mut cgroup_version = None;
    let mut cgroups: Vec<CgroupSetting> = Vec::new();
    let mut parent_cgroup = None;
    let mut limits: Vec<ResourceLimit> = Vec::new();
    let mut userfaultfd = false;
    let mut binds: Vec<BindMount> = Vec::new();
    let mut help = false;
    let mut version = false;
    let mut vmm_args = Vec::new();

    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].as_ref();
        i += 1;
        if arg == "--" {
            vmm_args = argv[i..].iter().map(|s| s.as_ref().to_string()).collect();
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            return Err(ArgsError::UnexpectedArgument(arg.to_string()));
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        let &(flag, takes_value) = FLAGS
            .iter()
            .find(|(f, _)| *f == name)
            .ok_or_else(|| ArgsError::UnknownFlag(name.to_string()))?;
        let value: Option<&str> = if takes_value {
            match inline {
                Some(v) => Some(v),
                None => match argv.get(i).map(|s| s.as_ref()) {
                    Some(v) if !v.starts_with("--") => {
                        i += 1;
                        Some(v)
                    }
                    _ => return Err(ArgsError::MissingValue(flag)),
                },
            }
        } else {
            if inline.is_some() {
                return Err(ArgsError::UnexpectedValue(flag));
            }
            None
        };
        let v = value.unwrap_or_default();
        if takes_value && v.is_empty() {
            return Err(ArgsError::MissingValue(flag));
        }
        match flag {
            "--id" => {
                validate_id(v).map_err(|r| invalid(flag, v, r))?;
                set_once(&mut id, flag, v.to_string())?;
            }
            "--exec-file" => {
                if v.contains('\0') {
                    return Err(invalid(flag, v, "contains a NUL byte"));
                }
                let p = PathBuf::from(v);
                match p.file_name().and_then(|n| n.to_str()) {
                    Some(n) if plain_name(n) => {}
                    _ => {
                        return Err(invalid(
                            flag,
                            v,
                            "must name a file whose name is [A-Za-z0-9_.-]+",
                        ))
                    }
                }
                if v.ends_with('/') {
                    return Err(invalid(flag, v, "must name a file, not a directory"));
                }
                set_once(&mut exec_file, flag, p)?;
            }
            "--uid" => set_once(&mut uid, flag, parse_u32(flag, v)?)?,
            "--gid" => set_once(&mut gid, flag, parse_u32(flag, v)?)?,
            "--chroot-base-dir" => {
                if !v.starts_with('/') {
                    return Err(invalid(flag, v, "must be an absolute path"));
                }
                plain_path(v).map_err(|r| invalid(flag, v, r))?;
                set_once(&mut chroot_base, flag, PathBuf::from(v))?;
            }
            "--netns" => {
                plain_path(v).map_err(|r| invalid(flag, v, r))?;
                set_once(&mut netns, flag, PathBuf::from(v))?;
            }
            "--daemonize" => set_flag(&mut daemonize, flag)?,
            "--new-pid-ns" => set_flag(&mut new_pid_ns, flag)?,
            "--userfaultfd" => set_flag(&mut userfaultfd, flag)?,
            "--help" | "-h" => help = true,
            "--version" | "-V" => version = true,
            "--cgroup-version" => {
                let ver = match v {
                    "1" => CgroupVersion::V1,
                    "2" => CgroupVersion::V2,
                    _ => return Err(invalid(flag, v, "must be 1 or 2")),
                };
                set_once(&mut cgroup_version, flag, ver)?;
            }
            "--cgroup" => {
                let setting = parse_cgroup(v)?;
                if cgroups.iter().any(|c| c.file == setting.file) {
                    return Err(invalid(
                        flag,
                        v,
                        format!("{} given more than once", setting.file),
                    ));
                }
                cgroups.push(setting);
            }
            "--parent-cgroup" => {
                let trimmed = v.trim_end_matches('/');
                if v.starts_with('/') || trimmed.is_empty() || !trimmed.split('/').all(plain_name) {
                    return Err(invalid(
                        flag,
                        v,
                        "must be a relative cgroup path of [A-Za-z0-9_.-] names, without '.' or '..'",
                    ));
                }
                set_once(&mut parent_cgroup, flag, trimmed.to_string())?;
            }
            "--resource-limit" => {
                let limit = parse_limit(v)?;
                if limits.iter().any(|l| l.kind == limit.kind) {
                    return Err(invalid(
                        flag,
                        v,
                        format!("{} given more than once", limit.kind.name()),
                    ));
                }
                limits.push(limit);
            }
            "--bind" => {
                binds.push(bind::parse(v).map_err(|r| invalid(flag, v, r))?);
                bind::check_overlaps(&binds).map_err(|r| invalid(flag, v, r))?;
            }
            // Every name in FLAGS is handled above.
            _ => return Err(ArgsError::UnknownFlag(flag.to_string())),
        }
    }

    if help {
        return Ok(Command::Help);
    }
    if version {
        return Ok(Command::Version);
    }
    Ok(Command::Run(Box::new(JailerArgs {
        id: id.ok_or(ArgsError::MissingRequired("--id"))?,
        exec_file: exec_file.ok_or(ArgsError::MissingRequired("--exec-file"))?,
        uid: uid.ok_or(ArgsError::MissingRequired("--uid"))?,
        gid: gid.ok_or(ArgsError::MissingRequired("--gid"))?,
        chroot_base: chroot_base.unwrap_or_else(|| PathBuf::from(DEFAULT_CHROOT_BASE)),
        netns,
        daemonize,
        new_pid_ns,
        cgroup_version: cgroup_version.unwrap_or_default(),
        cgroups,
        parent_cgroup,
        resource_limits: limits,
        userfaultfd,
        binds,
        vmm_args,
    })))
}

/// Names of the controllers the settings need, sorted and without duplicates.
pub fn needed_controllers(settings: &[CgroupSetting]) -> BTreeSet<String> {
    settings
        .iter()
        .map(|s| s.controller().to_string())
        .collect()
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
