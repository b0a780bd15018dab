//! i8042 (in progress).
