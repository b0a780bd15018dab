//! What the host can give a VM, checked when a machine is configured (`PUT /machine-config`) and
//! again when it is built, so an absurd size is a clear error instead of an aborted process.
//!
//! Guest RAM is mapped `MAP_NORESERVE` and only touched pages cost memory, so the limit is the
//! host's physical memory (a VM larger than the whole host can never be filled and only fails
//! later, or aborts allocating its dirty bitmaps).

use std::sync::OnceLock;

static HOST_MEM: OnceLock<Option<u64>> = OnceLock::new();

/// The host's physical memory in bytes (`sysinfo(2)`), read once. Call [`init`] before the
/// seccomp filter is installed (the filter does not allow `sysinfo`).
pub fn host_memory_bytes() -> Option<u64> {
    *HOST_MEM.get_or_init(|| {
        // SAFETY: `info` is a plain C struct sysinfo fills; zeroed is a valid value for it.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable sysinfo struct for the duration of the call.
        if unsafe { libc::sysinfo(&mut info) } != 0 {
            return None;
        }
        (info.totalram as u64).checked_mul(u64::from(info.mem_unit.max(1)))
    })
}

/// Read the host's limits now (before seccomp).
pub fn init() {
    let _ = host_memory_bytes();
}

/// Check a guest of `mem_size_mib` MiB against the host's memory.
pub fn check_mem_size(mem_size_mib: usize) -> Result<(), String> {
    let want = (mem_size_mib as u64).checked_mul(1 << 20);
    match (want, host_memory_bytes()) {
        (None, _) => Err(format!("mem_size_mib {mem_size_mib} is too large")),
        (Some(w), Some(host)) if w > host => Err(format!(
            "mem_size_mib {mem_size_mib} is more than the host's memory ({} MiB)",
            host >> 20
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused() {
        assert!(host_memory_bytes().is_some_and(|m| m > 0));
        check_mem_size(16).unwrap();
        for mib in [1_000_000_000_000usize, usize::MAX, 1 << 40] {
            let e = check_mem_size(mib).unwrap_err();
            assert!(e.contains("mem_size_mib"), "{e}");
        }
    }
}
