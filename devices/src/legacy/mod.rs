//! Legacy PC devices: the 16550 serial port and the i8042 controller.

pub mod i8042;
pub mod serial;
