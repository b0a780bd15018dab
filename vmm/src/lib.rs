//! cairn VMM library.
