//! Firecracker-compatible configuration types (in progress).
