//! The Virtual Machine Generation ID device (Microsoft's "VM Generation ID" spec, as QEMU and
//! Firecracker offer it): 16 random bytes in reserved guest memory that change whenever the VM
//! is restored from a snapshot, and an interrupt that tells the guest so.
//!
//! The guest finds the id's address through the ACPI `ADDR` method of a `VMGENCTR` device (the
//! VMM's DSDT describes it), and Linux's `vmgenid` driver feeds a changed id to the RNG
//! (`add_vmfork_randomness`), so two VMs restored from one snapshot stop sharing RNG state.
//!
//! Boot writes a fresh id; [`Persist::restore`] writes another fresh one (the saved state holds
//! only where the id lives and its interrupt, never the id), and [`VmGenId::notify`], called once
//! the vCPUs hold their restored state, raises the interrupt.

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

/// Size of the generation id in guest memory.
pub const VMGENID_LEN: usize = 16;

/// Why the device could not be set up, restored or could not notify the guest.
#[derive(Debug, thiserror::Error)]
pub enum VmGenIdError {
    /// The host could not provide random bytes.
    #[error("vmgenid: getrandom: {0}")]
    Random(std::io::Error),
    /// The id's address is not in guest memory.
    #[error("vmgenid: cannot write the generation id at {addr:#x}: {reason}")]
    Write {
        /// Guest physical address of the id.
        addr: u64,
        /// What vm-memory said.
        reason: String,
    },
    /// The id's address is not 8-byte aligned (the spec requires it).
    #[error("vmgenid: generation id address {0:#x} is not 8-byte aligned")]
    Misaligned(u64),
    /// The interrupt could not be raised.
    #[error("vmgenid: cannot raise the notify interrupt: {0}")]
    Notify(std::io::Error),
}

/// The device: where its id lives, its interrupt, and the id the guest was last given.
#[derive(Debug)]
pub struct VmGenId {
    addr: u64,
    gsi: u32,
    generation_id: [u8; VMGENID_LEN],
    interrupt: EventFd,
}

/// What a snapshot keeps of the device: the id's address and the GSI of its notify interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGenIdState {
    /// Guest physical address of the 16-byte id.
    pub addr: u64,
    /// GSI the GED raises `Notify(VGEN, 0x80)` for.
    pub gsi: u32,
}

/// What a restored device needs: guest memory (the new id is written there) and the eventfd the
/// VMM registered as the irqfd of the saved GSI.
#[derive(Debug)]
pub struct VmGenIdConstructorArgs<'a> {
    /// Guest memory of the restored VM.
    pub mem: &'a GuestMemoryMmap,
    /// The notify interrupt (a KVM irqfd for `state.gsi`).
    pub interrupt: EventFd,
}

fn fresh_id() -> Result<[u8; VMGENID_LEN], VmGenIdError> {
    let mut id = [0u8; VMGENID_LEN];
    let mut done = 0;
    while done < id.len() {
        let n = rustix::rand::getrandom(&mut id[done..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| VmGenIdError::Random(e.into()))?;
        done += n;
    }
    Ok(id)
}

impl VmGenId {
    /// A device with a fresh random id at `addr`, written into `mem` now, notifying on `gsi`
    /// through `interrupt`.
    pub fn new(
        mem: &GuestMemoryMmap,
        addr: u64,
        gsi: u32,
        interrupt: EventFd,
    ) -> Result<Self, VmGenIdError> {
        if addr % 8 != 0 {
            return Err(VmGenIdError::Misaligned(addr));
        }
        let mut dev = Self {
            addr,
            gsi,
            generation_id: [0; VMGENID_LEN],
            interrupt,
        };
        dev.regenerate(mem)?;
        Ok(dev)
    }

    /// Guest physical address of the id.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// GSI of the notify interrupt.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// The id the guest was last given.
    pub fn generation_id(&self) -> [u8; VMGENID_LEN] {
        self.generation_id
    }

    /// Write a new random id into guest memory.
    pub fn regenerate(&mut self, mem: &GuestMemoryMmap) -> Result<(), VmGenIdError> {
        let id = fresh_id()?;
        mem.write_slice(&id, GuestAddress(self.addr))
            .map_err(|e| VmGenIdError::Write {
                addr: self.addr,
                reason: e.to_string(),
            })?;
        self.generation_id = id;
        Ok(())
    }

    /// Raise the notify interrupt, so the guest reads the new id (ACPI `Notify(VGEN, 0x80)`).
    pub fn notify(&self) -> Result<(), VmGenIdError> {
        self.interrupt.write(1).map_err(VmGenIdError::Notify)
    }
}

impl<'a> Persist<'a> for VmGenId {
    type State = VmGenIdState;
    type ConstructorArgs = VmGenIdConstructorArgs<'a>;
    type Error = VmGenIdError;

    fn save(&self) -> Result<VmGenIdState, VmGenIdError> {
        Ok(VmGenIdState {
            addr: self.addr,
            gsi: self.gsi,
        })
    }

    /// A restored VM is a new generation: the id is always a fresh one.
    fn restore(
        args: VmGenIdConstructorArgs<'a>,
        state: &VmGenIdState,
    ) -> Result<Self, Self::Error> {
        Self::new(args.mem, state.addr, state.gsi, args.interrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: u64 = 0xdfff0;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn id_in(mem: &GuestMemoryMmap) -> [u8; VMGENID_LEN] {
        let mut id = [0u8; VMGENID_LEN];
        mem.read_slice(&mut id, GuestAddress(ADDR)).unwrap();
        id
    }

    #[test]
    fn boot_writes_a_random_id_into_guest_memory() {
        let mem = mem();
        let dev = VmGenId::new(&mem, ADDR, 23, evt()).unwrap();
        assert_eq!(id_in(&mem), dev.generation_id());
        assert_ne!(dev.generation_id(), [0; VMGENID_LEN]);
        assert_eq!((dev.addr(), dev.gsi()), (ADDR, 23));
    }

    #[test]
    fn round_trip_keeps_the_layout_and_changes_the_id() {
        let mem = mem();
        let dev = VmGenId::new(&mem, ADDR, 23, evt()).unwrap();
        let state = dev.save().unwrap();
        // The state file holds the layout only, and survives its own encoding.
        let bytes = postcard::to_stdvec(&state).unwrap();
        let decoded: VmGenIdState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, state);
        let args = VmGenIdConstructorArgs {
            mem: &mem,
            interrupt: evt(),
        };
        let restored = VmGenId::restore(args, &decoded).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert_ne!(restored.generation_id(), dev.generation_id());
        assert_eq!(id_in(&mem), restored.generation_id());
    }

    #[test]
    fn notify_raises_the_interrupt() {
        let mem = mem();
        let interrupt = evt();
        let watcher = interrupt.try_clone().unwrap();
        let dev = VmGenId::new(&mem, ADDR, 23, interrupt).unwrap();
        assert!(watcher.read().is_err(), "no interrupt before notify");
        dev.notify().unwrap();
        assert_eq!(watcher.read().unwrap(), 1);
    }

    #[test]
    fn bad_addresses_are_refused() {
        let mem = mem();
        assert!(matches!(
            VmGenId::new(&mem, ADDR + 4, 23, evt()),
            Err(VmGenIdError::Misaligned(_))
        ));
        let err = VmGenId::new(&mem, 2 << 20, 23, evt()).unwrap_err();
        assert!(err.to_string().contains("0x200000"), "{err}");
    }
}
