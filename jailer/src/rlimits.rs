//! Resource limits (`--resource-limit`), set on the process before it execs the VMM and inherited by it.

use crate::args::{ResourceKind, ResourceLimit};
use crate::Error;

fn resource(kind: ResourceKind) -> libc::__rlimit_resource_t {
    match kind {
        ResourceKind::Fsize => libc::RLIMIT_FSIZE,
        ResourceKind::NoFile => libc::RLIMIT_NOFILE,
    }
}

/// Sets each limit, soft and hard alike.
pub fn apply(limits: &[ResourceLimit]) -> Result<(), Error> {
    for limit in limits {
        let value = limit.value as libc::rlim_t;
        let rl = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `rl` is a valid rlimit struct.
        if unsafe { libc::setrlimit(resource(limit.kind), &rl) } != 0 {
            return Err(Error::Rlimit {
                name: limit.kind.name(),
                value: limit.value,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
