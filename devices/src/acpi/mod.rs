//! Devices the guest finds through ACPI (the VMM's DSDT describes them) rather than on a bus.

pub mod vmgenid;

pub use vmgenid::VmGenId;
