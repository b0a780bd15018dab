//! `cairn-jailer`: starts a VMM in a jail, the way Firecracker's jailer does.
//!
//! In order, it
//! 1. checks the command line ([`args`]) and the VMM binary ([`exec_file`]: a static ELF);
//! 2. creates `<chroot-base-dir>/<exec-file-name>/<id>/root` and copies the binary in ([`chroot`]);
//! 3. makes a private `/dev` with only `kvm`, `net/tun`, `urandom`, `null` (and `userfaultfd`) ([`dev`]);
//! 4. creates the jail's cgroups and writes the `--cgroup` values ([`cgroup`]);
//! 5. joins them, sets resource limits ([`rlimits`]), joins `--netns`, unshares mount/IPC/UTS (and pid)
//!    namespaces ([`namespaces`]), makes the `--bind` mounts ([`bind`]) and `pivot_root`s into the jail
//!    ([`chroot::pivot_into`]);
//! 6. sets no-new-privs, drops every capability and switches to the jail's uid/gid ([`privileges`]);
//! 7. execs the VMM with a minimal environment ([`env`]).
//!
//! Any failure before the exec undoes steps 2-5 ([`rollback`]): a failed start leaves no jail directory
//! and no cgroup behind. The crate depends on none of cairn's other crates. See `docs/jailer.md`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod args;
pub mod bind;
pub mod cgroup;
pub mod chroot;
pub mod dev;
pub mod env;
mod error;
pub mod exec_file;
pub mod jail;
pub mod namespaces;
pub mod privileges;
pub mod rlimits;
pub mod rollback;
mod sys;

pub use error::Error;
pub use jail::run;

/// Parses `argv` (without the program name) and, for a run, jails and starts the VMM.
///
/// Returns the process exit code: 0 after `--help`/`--version`, the VMM's exit code when the jailer waits
/// for it, or 0 after `--daemonize`. Prints `--help`/`--version` output itself.
pub fn main_with_args(argv: &[String]) -> Result<i32, Error> {
    match args::parse(argv)? {
        args::Command::Help => {
            print!("{}", args::USAGE);
            Ok(0)
        }
        args::Command::Version => {
            println!("cairn-jailer {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        args::Command::Run(a) => run(&a),
    }
}
