//! A KVM VM made ahead of time, off the boot and restore critical path.
//!
//! Making a VM costs little CPU but contains one long wait: the first memory slot a VM gets
//! waits for an SRCU grace period in the kernel (`kvm_swap_active_memslots` ->
//! `synchronize_srcu`), about 7.5 ms on the development host whatever the slot's size, while
//! every later slot takes ~0.1 ms (docs/vmm.md, "Prewarming"). [`start`] makes a VM with its
//! in-kernel irqchip and PIT on a background thread and registers and deletes a one-page slot in
//! it, so that wait is over when a boot or restore calls [`take`]. Nothing of the scratch slot
//! remains: the slot number and guest addresses are free again.
//!
//! There is one prepared VM per process at most. [`take`] waits for a preparation in flight, and
//! makes a VM inline when none was started or the preparation failed, so a caller never depends on
//! prewarming for correctness.

use std::sync::Mutex;
use std::thread::JoinHandle;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;

use crate::builder::open_kvm;
use crate::error::VmmError;
use crate::vstate::vm::Vm;

/// An open `/dev/kvm` and a VM made from it, ready for memory, devices and vCPUs.
#[derive(Debug)]
pub struct PreparedVm {
    /// The KVM system handle the VM was made with.
    pub kvm: Kvm,
    /// The VM: irqchip and PIT created, no memory slots.
    pub vm: Vm,
}

type Preparation = JoinHandle<Result<PreparedVm, VmmError>>;

static PENDING: Mutex<Option<Preparation>> = Mutex::new(None);

/// Make a VM now, on this thread, including the first-slot wait.
pub fn prepare() -> Result<PreparedVm, VmmError> {
    let kvm = open_kvm()?;
    let vm = Vm::new(&kvm)?;
    settle_memslots(&vm)?;
    Ok(PreparedVm { kvm, vm })
}

/// Start preparing a VM on a background thread, unless one is already prepared or in flight.
/// The thread runs under the VMM thread's seccomp filter (when filtering is on).
pub fn start() {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    if pending.is_some() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("cairn-prewarm".into())
        .spawn(|| {
            crate::seccomp::install_for_thread(crate::seccomp::ThreadKind::Vmm)
                .map_err(|e| VmmError::Config(format!("seccomp: {e}")))?;
            prepare()
        });
    match spawned {
        Ok(handle) => *pending = Some(handle),
        Err(e) => tracing::debug!("VM prewarm not started: {e}"),
    }
}

/// The prepared VM if one was started (waiting for it if needed), else a VM made now.
pub fn take() -> Result<PreparedVm, VmmError> {
    let pending = PENDING.lock().unwrap_or_else(|p| p.into_inner()).take();
    match pending.map(JoinHandle::join) {
        Some(Ok(Ok(prepared))) => return Ok(prepared),
        Some(Ok(Err(e))) => tracing::debug!("VM prewarm failed, making the VM inline: {e}"),
        Some(Err(_)) => tracing::debug!("VM prewarm thread panicked, making the VM inline"),
        None => {}
    }
    prepare()
}

/// Register a one-page scratch slot and delete it again, so the VM's first SRCU grace period is
/// behind it. The page is guest-invisible: the VM has no vCPU yet and the slot is gone on return.
fn settle_memslots(vm: &Vm) -> Result<(), VmmError> {
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

    #[test]
    fn prepared_vm_has_no_slots_and_takes_memory() {
        if !kvm_available("prepared_vm_has_no_slots_and_takes_memory") {
            return;
        }
        start();
        let PreparedVm { vm, .. } = take().unwrap();
        assert!(vm.slots().is_empty());
        // The scratch slot is gone: slot 0 can be registered again, with a different size.
        let mem =
            crate::vstate::memory::create_guest_memory(2, crate::config::HugePages::None).unwrap();
        let mut vm = vm;
        vm.register_memory(&mem, true).unwrap();
        assert_eq!(vm.slots().len(), 1);
        assert_eq!(vm.take_dirty_log().unwrap()[0].len(), 2 * 256 / 64);
        // Nothing left in flight: the next take makes a VM inline.
        assert!(PENDING.lock().unwrap().is_none());
        take().unwrap();
    }
}
