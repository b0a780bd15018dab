//! A KVM VM made ahead of time, off the boot and restore critical path.
//!
//! Making a VM is a handful of ioctls, and one wait that depends on their order (see
//! [`Vm`](crate::vstate::vm::Vm)): a memory slot made after the irqchip and PIT waits for an
//! SRCU grace period of the kernel (4–11 ms on the development host), one made before them does
//! not. So the prewarm works in two stages on a background thread, started by [`start`]:
//!
//! 1. **Bare VM**: open `/dev/kvm`, check its capabilities, `KVM_CREATE_VM` with identity map and
//!    TSS, the MSR list and the supported CPUID (≈ 1 ms, most of it `KVM_CREATE_VM` and
//!    `KVM_GET_SUPPORTED_CPUID`). A [`take`] from now on gets this VM, registers its memory and
//!    then makes the irqchip and PIT itself: no grace-period wait. That is the boot with
//!    `--config-file` and a `/snapshot/load` sent right after spawn.
//! 2. **Complete VM**: when nothing has taken the bare VM within [`COMPLETE_AFTER`], the process
//!    is a standby (started ahead of its load) or is being configured through the API: the
//!    thread adds the irqchip and PIT and sits out the grace period by registering and deleting
//!    a one-page scratch slot. A [`take`] then gets a VM whose memory slots and interrupt
//!    controllers cost nothing more.
//!
//! A [`take`] never waits for stage 2: one that comes while it runs makes a bare VM inline
//! (≈ 1 ms, less than the rest of the wait) and leaves the completed VM for the next [`take`].
//! There is at most one prepared VM per process; [`take`] makes a VM inline when none was started
//! or the preparation failed, so a caller never depends on prewarming for correctness.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use kvm_bindings::{kvm_userspace_memory_region, CpuId};
use kvm_ioctls::Kvm;

use crate::builder::open_kvm;
use crate::error::VmmError;
use crate::vstate::vm::Vm;

/// How long a bare VM waits to be taken before the prewarm completes it. A boot or restore on a
/// process's critical path takes its VM within a few ms of the start; a process still idle
/// after this long is a standby or an API client still configuring, and gets a complete VM.
pub const COMPLETE_AFTER: Duration = Duration::from_millis(25);

/// An open `/dev/kvm` and a VM made from it, ready for memory, devices and vCPUs.
#[derive(Debug)]
pub struct PreparedVm {
    /// The KVM system handle the VM was made with.
    pub kvm: Kvm,
    /// The VM: no memory slots; its irqchip and PIT only if the prewarm completed it
    /// ([`Vm::set_up`] makes them when missing).
    pub vm: Vm,
    /// `KVM_GET_SUPPORTED_CPUID` of this host (the base of every vCPU's CPUID, and what a
    /// restore checks a snapshot's CPUID against).
    pub supported_cpuid: CpuId,
}

/// Where the background preparation stands.
#[derive(Debug)]
enum Stage {
    /// Nothing prepared or in flight.
    Idle,
    /// Stage 1 in flight.
    Making,
    /// Stage 1 done; the thread waits up to [`COMPLETE_AFTER`] for a taker.
    Bare(PreparedVm),
    /// Stage 2 in flight (the thread holds the VM).
    Completing,
    /// Stage 2 done.
    Complete(PreparedVm),
}

static STAGE: Mutex<Stage> = Mutex::new(Stage::Idle);
static CHANGED: Condvar = Condvar::new();

fn stage() -> MutexGuard<'static, Stage> {
    STAGE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Make a bare VM now, on this thread (stage 1).
pub fn prepare() -> Result<PreparedVm, VmmError> {
    let kvm = open_kvm()?;
    let vm = Vm::new(&kvm)?;
    let supported_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(PreparedVm {
        kvm,
        vm,
        supported_cpuid,
    })
}

/// Start preparing a VM on a background thread, unless one is already prepared or in flight.
/// The thread runs under the VMM thread's seccomp filter (when filtering is on).
pub fn start() {
    let mut st = stage();
    if !matches!(*st, Stage::Idle) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("cairn-prewarm".into())
        .spawn(run);
    match spawned {
        Ok(_) => *st = Stage::Making,
        Err(e) => tracing::debug!("VM prewarm not started: {e}"),
    }
}

/// Puts the stage back to `Idle` if the thread ends while holding it (an error or a panic), so
/// a [`take`] waiting for it makes its VM inline instead of waiting forever.
struct ResetOnExit(bool);

impl Drop for ResetOnExit {
    fn drop(&mut self) {
        if self.0 {
            let mut st = stage();
            if matches!(*st, Stage::Making | Stage::Completing) {
                *st = Stage::Idle;
            }
            CHANGED.notify_all();
        }
    }
}

/// The prewarm thread: stage 1, the wait for a taker, stage 2.
fn run() {
    let mut guard = ResetOnExit(true);
    let made = crate::seccomp::install_for_thread(crate::seccomp::ThreadKind::Vmm)
        .map_err(|e| VmmError::Config(format!("seccomp: {e}")))
        .and_then(|()| prepare());
    let prepared = match made {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("VM prewarm failed, the VM will be made inline: {e}");
            return;
        }
    };
    let mut st = stage();
    *st = Stage::Bare(prepared);
    CHANGED.notify_all();
    let (mut st, _) = CHANGED
        .wait_timeout_while(st, COMPLETE_AFTER, |s| matches!(s, Stage::Bare(_)))
        .unwrap_or_else(|p| p.into_inner());
    if !matches!(*st, Stage::Bare(_)) {
        // Taken: nothing left to do.
        guard.0 = false;
        return;
    }
    let Stage::Bare(mut prepared) = std::mem::replace(&mut *st, Stage::Completing) else {
        return;
    };
    drop(st);
    if let Err(e) = complete(&mut prepared.vm) {
        tracing::debug!("VM prewarm could not complete the VM: {e}");
        return;
    }
    *stage() = Stage::Complete(prepared);
    guard.0 = false;
    CHANGED.notify_all();
}

/// The prepared VM if there is one (waiting for stage 1 if it is in flight), else a VM made now.
pub fn take() -> Result<PreparedVm, VmmError> {
    let mut st = stage();
    loop {
        match std::mem::replace(&mut *st, Stage::Idle) {
            Stage::Bare(p) | Stage::Complete(p) => {
                CHANGED.notify_all();
                return Ok(p);
            }
            Stage::Making => {
                *st = Stage::Making;
                st = CHANGED.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            Stage::Completing => {
                // Its VM has the irqchip already, so its memory would wait as long as the
                // thread does: a fresh bare VM is quicker. The completed one stays for the next.
                *st = Stage::Completing;
                break;
            }
            Stage::Idle => break,
        }
    }
    drop(st);
    prepare()
}

/// Stage 2: the irqchip and PIT, then register and delete a one-page scratch slot so the VM's
/// pending grace period is over. The page is guest-invisible: the VM has no vCPU yet and the
/// slot is gone on return.
fn complete(vm: &mut Vm) -> Result<(), VmmError> {
    vm.create_interrupt_controllers()?;
    let page = ScratchPage::new()?;
    let mut region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: ScratchPage::SIZE as u64,
        userspace_addr: page.addr as u64,
    };
    // SAFETY: the slot maps `page`, a live anonymous mapping that outlives the slot: the slot is
    // deleted below before `page` is unmapped, and no vCPU exists that could touch it.
    unsafe { vm.fd().set_user_memory_region(region) }
        .map_err(VmmError::kvm("KVM_SET_USER_MEMORY_REGION (prewarm)"))?;
    region.memory_size = 0;
    // SAFETY: a zero size deletes slot 0; no memory is referenced.
    unsafe { vm.fd().set_user_memory_region(region) }
        .map_err(VmmError::kvm("KVM_SET_USER_MEMORY_REGION (prewarm delete)"))
}

/// One anonymous page, unmapped on drop.
struct ScratchPage {
    addr: *mut libc::c_void,
}

impl ScratchPage {
    const SIZE: usize = 4096;

    fn new() -> Result<Self, VmmError> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(VmmError::io("map a scratch page")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { addr })
    }
}

impl Drop for ScratchPage {
    fn drop(&mut self) {
        // SAFETY: `addr` is the mapping made in `new`, of `SIZE` bytes, unmapped only here.
        unsafe { libc::munmap(self.addr, Self::SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm_available(name: &str) -> bool {
        if std::path::Path::new("/dev/kvm").exists() {
            return true;
        }
        if std::env::var("CAIRN_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{name}: /dev/kvm not available and CAIRN_REQUIRE_KVM=1");
        }
        println!("SKIP {name}: /dev/kvm not available");
        false
    }

    fn vm_takes_memory(vm: Vm) {
        assert!(vm.slots().is_empty());
        // Any scratch slot is gone: slot 0 can be registered again, with a different size.
        let mem =
            crate::vstate::memory::create_guest_memory(2, crate::config::HugePages::None).unwrap();
        let mut vm = vm;
        vm.set_up(&mem, true).unwrap();
        assert_eq!(vm.slots().len(), 1);
        assert_eq!(vm.take_dirty_log().unwrap()[0].len(), 2 * 256 / 64);
        // The interrupt controllers exist (made by the prewarm or by set_up, once).
        vm.fd().get_pit2().unwrap();
    }

    /// Both stages in one test: the prewarm state is per process and tests run in parallel.
    #[test]
    fn prepared_vms_bare_and_complete_take_memory() {
        if !kvm_available("prepared_vms_bare_and_complete_take_memory") {
            return;
        }
        // Taken at once: the bare VM (or one made inline), without interrupt controllers.
        start();
        let p = take().unwrap();
        assert!(!p.supported_cpuid.as_slice().is_empty());
        vm_takes_memory(p.vm);

        // Left alone past COMPLETE_AFTER: the completed VM.
        start();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !matches!(*stage(), Stage::Complete(_)) {
            assert!(
                std::time::Instant::now() < deadline,
                "prewarm never completed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let p = take().unwrap();
        vm_takes_memory(p.vm);

        // Nothing left in flight: the next take makes a VM inline.
        assert!(matches!(*stage(), Stage::Idle));
        take().unwrap();
    }
}
