//! Checkpoints: pause, collect every component's state, write memory and state files, and
//! rebuild a VM from them.
//!
//! Two interfaces sit on top: Firecracker's (`PUT /snapshot/create`, `PUT /snapshot/load`, with
//! the same file semantics) and cairn's named, incremental checkpoints (`/checkpoints`).

pub mod background;
pub mod compat;
pub mod direct_io;
pub mod disk;
pub mod filled_memory;
pub mod handover;
pub mod holes;
pub mod memory;
pub mod named;
pub mod prearm;
pub mod restore;
pub mod served_disk;
pub mod served_memory;
pub mod snapshot;
pub mod staged;
pub mod state;
pub mod state_versions;
pub mod verify;
