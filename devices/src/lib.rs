//! cairn's device models.
//!
//! Devices never import KVM. They reach guest memory through `vm-memory` traits, raise interrupts
//! through [`virtio::IrqTrigger`] (an eventfd the VMM registers as a KVM irqfd) or a
//! `vm_superio::Trigger`, and are driven by the VMM's buses ([`bus`]) and its event loop
//! (`event-manager` subscribers). Every device can therefore be unit-tested without `/dev/kvm`.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod acpi;
pub mod bus;
pub mod legacy;
pub mod mmds;
pub mod rate_limiter;
pub mod virtio;

/// Guest memory as every device and the VMM see it: mmap-backed regions with a dirty bitmap, so
/// that writes made by the VMM itself (virtio devices) are tracked for incremental checkpoints.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;
