//! Dropping privileges: no new privileges, no capabilities (effective, permitted, inheritable, ambient and
//! bounding), no supplementary groups, and the jail's uid and gid.

use crate::sys;
use crate::Error;

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Privileges { what, source }
}

/// `PR_SET_NO_NEW_PRIVS`: no later `execve` can gain privileges (setuid bits, file capabilities).
pub fn set_no_new_privs() -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only.
    sys::check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map(drop)
        .map_err(err("PR_SET_NO_NEW_PRIVS"))
}

/// Empties the ambient and bounding sets. Must run while the process still has `CAP_SETPCAP`.
pub fn drop_ambient_and_bounding() -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only. EINVAL means no ambient support (pre-4.3): nothing to clear.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(err("clear ambient capabilities")(
            std::io::Error::last_os_error(),
        ));
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(err("drop the capability bounding set")(e));
        }
    }
    Ok(())
}

/// Empties the inheritable set (an exec'd root process would otherwise get `bounding | inheritable`).
pub fn clear_inheritable() -> Result<(), Error> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 takes a header and two data structs, both valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(err("capget")(std::io::Error::last_os_error()));
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: as above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(err("capset")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `setgroups([])`, `setresgid(gid, gid, gid)`, `setresuid(uid, uid, 0)`.
///
/// The saved uid stays 0 until `execve`, which replaces it with the effective uid: the VMM ends with
/// real = effective = saved = `uid` and, since no uid is 0 any more, no permitted capabilities. Until then
/// the jailer can still [`regain_root`] to undo a failed start. With the bounding and inheritable sets
/// empty and no-new-privs set, the exec grants nothing, even for `--uid 0`.
pub fn set_ids(uid: u32, gid: u32) -> Result<(), Error> {
    // SAFETY: a zero-length list with a NULL pointer is valid for setgroups.
    sys::check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(err("setgroups"))?;
    // SAFETY: plain id setters.
    sys::check(unsafe { libc::setresgid(gid, gid, gid) }).map_err(err("setgid"))?;
    // SAFETY: as above.
    sys::check(unsafe { libc::setresuid(uid, uid, 0) }).map_err(err("setuid"))?;
    Ok(())
}

/// Back to effective uid 0 (and the permitted capabilities) after [`set_ids`], when the exec failed.
pub fn regain_root() -> Result<(), Error> {
    let keep = libc::uid_t::MAX; // -1: leave unchanged
                                 // SAFETY: plain id setter.
    sys::check(unsafe { libc::setresuid(keep, 0, keep) })
        .map(drop)
        .map_err(err("regain root to undo"))
}
