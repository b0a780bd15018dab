//! `cairn create` checks a sandbox's size against the host up front: a guest larger than the
//! host's memory, or with more vCPUs than the host has CPUs, is refused at once instead of being
//! accepted and then timing out while it fails to boot.

use crate::sandbox::SandboxError;

/// The host's total memory in MiB (`MemTotal` in `/proc/meminfo`), if known.
pub fn host_mem_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The CPUs this process may run on.
pub fn host_cpus() -> Option<u64> {
    std::thread::available_parallelism()
        .ok()
        .map(|n| n.get() as u64)
}

/// Refuse `cpus` vCPUs or `mem_mib` MiB the host cannot give.
pub fn check(cpus: u8, mem_mib: u32) -> Result<(), SandboxError> {
    if let Some(host) = host_mem_mib().filter(|&h| u64::from(mem_mib) > h) {
        return Err(SandboxError::DoesNotFit(format!(
            "--mem {mem_mib} MiB is more than this host's memory ({host} MiB)"
        )));
    }
    if let Some(host) = host_cpus().filter(|&h| u64::from(cpus) > h) {
        return Err(SandboxError::DoesNotFit(format!(
            "--cpus {cpus} is more than this host's {host} CPUs"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused_up_front() {
        assert!(host_mem_mib().is_some_and(|m| m > 0));
        check(1, 64).unwrap();
        let e = check(1, 999_999_999).unwrap_err().to_string();
        assert!(e.contains("--mem"), "{e}");
        let e = check(255, 64).unwrap_err().to_string();
        assert!(e.contains("--cpus"), "{e}");
    }
}
