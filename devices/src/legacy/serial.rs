//! serial (in progress).
