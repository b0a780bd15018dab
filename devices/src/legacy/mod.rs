//! Legacy PC devices: the 16550 serial port and the i8042 controller.
//!
//! Both sit on the PIO bus. Where the VMM must place them:
//!
//! | device | base | len | IRQ |
//! |---|---|---|---|
//! | [`serial::SerialDevice`] (COM1) | [`serial::COM1_BASE`] 0x3f8 | 8 | 4 |
//! | [`i8042::I8042Device`] | [`i8042::I8042_BASE`] 0x60 | 5 | 1 (optional) |

pub mod i8042;
pub mod serial;
pub mod serial_limit;

pub use i8042::I8042Device;
pub use serial::SerialDevice;
