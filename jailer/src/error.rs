//! The crate's one error type: a variant per step that can fail. Messages do not repeat their source;
//! `main` prints the whole chain on one line.

use std::io;
use std::path::PathBuf;

use crate::args::ArgsError;

/// Why the jailer could not start the VMM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is malformed.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// A command-line argument is not valid UTF-8.
    #[error("argument {0} is not valid UTF-8")]
    NonUtf8Arg(usize),
    /// The jailer is not running as root.
    #[error("cairn-jailer must run as root (it creates device nodes, cgroups and namespaces)")]
    NotRoot,
    /// Closing inherited file descriptors failed.
    #[error("could not close inherited file descriptors")]
    CloseFds(#[source] io::Error),
    /// The exec file is unusable.
    #[error("exec file {path}: {reason}")]
    ExecFile {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading the exec file failed.
    #[error("could not read exec file {path}")]
    ExecFileRead {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The chroot base is unusable.
    #[error("chroot base {path}: {reason}")]
    ChrootBase {
        /// The base directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A jail with this id is in use: its VMM binary is still running.
    #[error("jail {0} is in use: the VMM copied into it is still running (is another jail using this id?)")]
    JailExists(PathBuf),
    /// Creating a jail directory failed.
    #[error("could not create {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Copying the exec file into the jail failed.
    #[error("could not copy the exec file to {path}")]
    CopyExecFile {
        /// The destination.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting owner or mode of a jail file failed.
    #[error("could not set owner or mode of {path}")]
    Chown {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating a device node failed.
    #[error("could not create device node {path}")]
    Mknod {
        /// The node.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The userfaultfd device's minor number could not be found.
    #[error("cannot find the userfaultfd misc device (needs Linux 6.1+; checked /sys/class/misc/userfaultfd/dev and /proc/misc)")]
    UserfaultfdMinor,
    /// `/proc/self/mountinfo` could not be read or parsed.
    #[error("malformed /proc/self/mountinfo: {0}")]
    Mountinfo(String),
    /// A /proc file could not be read.
    #[error("could not read {path}")]
    ReadProc {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No hierarchy holds a v1 controller named by `--cgroup`.
    #[error(
        "cgroup v{version} controller '{controller}' is not mounted (see /proc/self/mountinfo)"
    )]
    CgroupControllerNotMounted {
        /// Controller name.
        controller: String,
        /// Always 1.
        version: u8,
    },
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 file system is mounted (try --cgroup-version 1)")]
    CgroupV2NotMounted,
    /// The v2 hierarchy does not offer a controller.
    #[error("cgroup v2 controller '{controller}' is not available (not listed in {path})")]
    CgroupControllerUnavailable {
        /// Controller name.
        controller: String,
        /// The `cgroup.controllers` file read.
        path: PathBuf,
    },
    /// Creating a cgroup directory failed.
    #[error("could not create cgroup {path}")]
    CgroupCreate {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading a cgroup file failed.
    #[error("could not read cgroup file {path}")]
    CgroupRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing a cgroup file failed (unknown file, bad value, or no permission).
    #[error("could not write cgroup file {path}")]
    CgroupWrite {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Enabling a v2 controller failed.
    #[error("could not enable cgroup v2 controller '{controller}' in {path}")]
    CgroupEnable {
        /// Controller name.
        controller: String,
        /// The `cgroup.subtree_control` file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Moving the process into its cgroup failed.
    #[error("could not move the process into cgroup ({path})")]
    CgroupAttach {
        /// The `tasks` / `cgroup.procs` file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The `--netns` path could not be opened.
    #[error("could not open network namespace {path}")]
    NetnsOpen {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The `--netns` path is not a namespace file.
    #[error("{0} is not a network namespace file (expected e.g. /var/run/netns/NAME)")]
    NotANetns(PathBuf),
    /// Joining the network namespace failed.
    #[error("could not join network namespace {path}")]
    Setns {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `unshare` failed.
    #[error("could not create new {what} namespaces")]
    Unshare {
        /// Which namespaces.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A `--bind` cannot be made.
    #[error("--bind {host}:{jail}: {reason}")]
    Bind {
        /// The host path.
        host: PathBuf,
        /// The path inside the jail.
        jail: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Mounting a `--bind` failed.
    #[error("--bind {host}:{jail}: could not {what}")]
    BindMount {
        /// The host path.
        host: PathBuf,
        /// The path inside the jail.
        jail: PathBuf,
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A mount step of entering the jail failed.
    #[error("could not {what}")]
    Mount {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `setrlimit` failed.
    #[error("could not set resource limit {name}={value}")]
    Rlimit {
        /// Firecracker's name of the limit.
        name: &'static str,
        /// The value.
        value: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Detaching (`--daemonize`) failed.
    #[error("could not daemonize ({what})")]
    Daemonize {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Dropping privileges failed.
    #[error("could not drop privileges ({what})")]
    Privileges {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `fork` or waiting for the child failed.
    #[error("could not {what}")]
    Process {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `execve` of the VMM failed.
    #[error("could not execute {path} inside the jail")]
    Exec {
        /// The path inside the jail.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The forked child reported a failure before it could exec the VMM.
    #[error("{0}")]
    Child(String),
}

impl Error {
    /// The message with all its sources, on one line.
    pub fn chain(&self) -> String {
        let mut msg = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            // `transparent` variants already show their source's message.
            let text = s.to_string();
            if !msg.ends_with(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            source = s.source();
        }
        msg.replace('\n', " ")
    }
}
