//! cairn-vmm's REST API as types: the request bodies ([`config`]), the reply bodies, and one
//! blocking client over the VMM's Unix socket. Embedders depend on this crate alone, not on the
//! VMM.

pub mod config;
