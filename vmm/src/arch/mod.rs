//! Architecture support. cairn runs on x86_64 only for now; everything arch-specific lives in
//! [`x86_64`] so the rest of the VMM reads the same on any future architecture.

pub mod x86_64;
