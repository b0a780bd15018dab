//! A minimal i8042 PS/2 controller, as Firecracker has it.
//!
//! Its one real job is the CPU reset command: a guest that reboots (Linux `reboot=k`, the
//! default) writes 0xFE to the command port, and the device signals `reset_evt`, which the VMM
//! watches to end the VM cleanly. Beyond that it answers the status/data/command-byte/self-test
//! traffic of the Linux i8042 probe so the probe neither hangs nor times out; there is no
//! keyboard behind it.
//!
//! Bus placement: PIO base [`I8042_BASE`] (0x60), length [`I8042_LEN`] (5), so the data port
//! 0x60 is offset 0 and the status/command port 0x64 is offset 4. Offsets 1..=3 (ports
//! 0x61..0x63) read as 0 and ignore writes. The optional keyboard interrupt eventfd is for IRQ 1.
//! A guest that needs no keyboard can skip the probe with `i8042.noaux i8042.nomux i8042.nopnp
//! i8042.dumbkbd` on its command line.

use std::collections::VecDeque;

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// PIO base of the i8042 range.
pub const I8042_BASE: u64 = 0x60;
/// Length of the i8042 range (ports 0x60..=0x64).
pub const I8042_LEN: u64 = 5;
/// Legacy IRQ line of the keyboard.
pub const I8042_KBD_IRQ: u32 = 1;

const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;

// Status register bits.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_I8042_CMD_DATA: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

// Controller commands (written to port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xA7;
const CMD_ENABLE_AUX: u8 = 0xA8;
const CMD_TEST_AUX: u8 = 0xA9;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_TEST_KBD: u8 = 0xAB;
const CMD_DISABLE_KBD: u8 = 0xAD;
const CMD_ENABLE_KBD: u8 = 0xAE;
const CMD_READ_OUTP: u8 = 0xD0;
const CMD_WRITE_OUTP: u8 = 0xD1;
/// Pulse the reset line: the CPU reset the VMM turns into a clean exit.
pub const CMD_RESET_CPU: u8 = 0xFE;

// Control byte ("command byte") bits.
const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_KBD_DISABLED: u8 = 0x10;
const CB_AUX_DISABLED: u8 = 0x20;

// Replies.
const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
const KEY_ACK: u8 = 0xFA;

/// Output buffer depth, as Firecracker's model.
const BUF_SIZE: usize = 16;

/// Why an i8042 state could not be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042Error {
    /// The saved output buffer holds more bytes than the device's.
    #[error("saved i8042 output buffer holds {0} bytes, more than {BUF_SIZE}")]
    BufferTooLong(usize),
    /// The output buffer has no room for a whole key sequence.
    #[error("the i8042 output buffer is full: the guest is not reading its keyboard")]
    BufferFull,
}

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042Device {
    reset_evt: EventFd,
    kbd_evt: Option<EventFd>,
    status: u8,
    control: u8,
    outp: u8,
    /// A command that waits for its data byte on port 0x60 (0 when none).
    cmd: u8,
    buf: VecDeque<u8>,
}

impl I8042Device {
    /// A controller that signals `reset_evt` on CPU reset and, if given, `kbd_evt` (irqfd for
    /// [`I8042_KBD_IRQ`]) when it has a byte for the guest and keyboard interrupts are enabled.
    pub fn new(reset_evt: EventFd, kbd_evt: Option<EventFd>) -> Self {
        Self {
            reset_evt,
            kbd_evt,
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            control: CB_POST_OK | CB_KBD_INT,
            outp: 0,
            cmd: 0,
            buf: VecDeque::with_capacity(BUF_SIZE),
        }
    }

    /// The eventfd signalled when the guest asks for a CPU reset.
    pub fn reset_evt(&self) -> &EventFd {
        &self.reset_evt
    }

    /// Presses Ctrl, Alt and Delete, as Firecracker's `SendCtrlAltDel` does: the scan-code set 2
    /// make codes 0x14, 0x11 and 0xE0 0x71 go to the output buffer, with a keyboard interrupt
    /// for each key. A Linux guest with the i8042 and AT keyboard drivers reboots (or does what
    /// its `ctrl_alt_del` setting says). Refused when the buffer has no room for all 4 bytes.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        const CTRL_ALT_DEL: [&[u8]; 3] = [&[0x14], &[0x11], &[0xe0, 0x71]];
        let room = BUF_SIZE - self.buf.len();
        if room < 4 {
            return Err(I8042Error::BufferFull);
        }
        for key in CTRL_ALT_DEL {
            for &byte in key {
                self.buf.push_back(byte);
            }
            self.status |= SB_OUT_DATA_AVAIL;
            self.trigger_kbd_interrupt();
        }
        Ok(())
    }

    fn push_byte(&mut self, byte: u8) {
        if self.buf.len() >= BUF_SIZE {
            return;
        }
        self.buf.push_back(byte);
        self.status |= SB_OUT_DATA_AVAIL;
        self.trigger_kbd_interrupt();
    }

    fn flush_buf(&mut self) {
        self.buf.clear();
        self.status &= !SB_OUT_DATA_AVAIL;
    }

    fn trigger_kbd_interrupt(&self) {
        if self.control & CB_KBD_INT == 0 {
            return;
        }
        if let Some(evt) = &self.kbd_evt {
            if let Err(e) = evt.write(1) {
                tracing::warn!("i8042: cannot raise keyboard interrupt: {e}");
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        // Any new command abandons one still waiting for its data byte.
        self.cmd = 0;
        self.status &= !SB_I8042_CMD_DATA;
        match cmd {
            CMD_RESET_CPU => {
                if let Err(e) = self.reset_evt.write(1) {
                    tracing::error!("i8042: cannot signal CPU reset: {e}");
                }
            }
            CMD_READ_CTR => {
                self.flush_buf();
                self.push_byte(self.control);
            }
            CMD_READ_OUTP => {
                self.flush_buf();
                self.push_byte(self.outp);
            }
            CMD_WRITE_CTR | CMD_WRITE_OUTP => {
                self.cmd = cmd;
                self.status |= SB_I8042_CMD_DATA;
            }
            CMD_SELF_TEST => {
                self.flush_buf();
                self.push_byte(SELF_TEST_OK);
            }
            CMD_TEST_KBD | CMD_TEST_AUX => {
                self.flush_buf();
                self.push_byte(PORT_TEST_OK);
            }
            CMD_DISABLE_KBD => self.control |= CB_KBD_DISABLED,
            CMD_ENABLE_KBD => self.control &= !CB_KBD_DISABLED,
            CMD_DISABLE_AUX => self.control |= CB_AUX_DISABLED,
            CMD_ENABLE_AUX => self.control &= !CB_AUX_DISABLED,
            _ => tracing::debug!("i8042: ignoring command {cmd:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        match self.cmd {
            CMD_WRITE_CTR => self.control = value,
            CMD_WRITE_OUTP => self.outp = value,
            // A byte for the keyboard itself: acknowledge it like a real keyboard would.
            _ => {
                self.flush_buf();
                self.push_byte(KEY_ACK);
            }
        }
        self.cmd = 0;
        self.status &= !SB_I8042_CMD_DATA;
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            data.fill(0);
            return;
        };
        *byte = match offset {
            OFS_STATUS => self.status,
            OFS_DATA => {
                let v = self.buf.pop_front().unwrap_or(0);
                if self.buf.is_empty() {
                    self.status &= !SB_OUT_DATA_AVAIL;
                } else {
                    self.trigger_kbd_interrupt();
                }
                v
            }
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = *data else {
            return;
        };
        match offset {
            OFS_STATUS => self.command(value),
            OFS_DATA => self.data(value),
            _ => {}
        }
    }
}

/// Plain-data i8042 state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Status register.
    pub status: u8,
    /// Control byte.
    pub control: u8,
    /// Output port.
    pub outp: u8,
    /// Command waiting for its data byte.
    pub cmd: u8,
    /// Bytes waiting to be read from the data port.
    pub buf: Vec<u8>,
}

/// What [`I8042Device::restore`] needs: the same eventfds as [`I8042Device::new`].
#[derive(Debug)]
pub struct I8042ConstructorArgs {
    /// CPU reset eventfd.
    pub reset_evt: EventFd,
    /// Keyboard interrupt eventfd (IRQ 1), if any.
    pub kbd_evt: Option<EventFd>,
}

impl Persist<'_> for I8042Device {
    type State = I8042State;
    type ConstructorArgs = I8042ConstructorArgs;
    type Error = I8042Error;

    fn save(&self) -> Result<I8042State, I8042Error> {
        Ok(I8042State {
            status: self.status,
            control: self.control,
            outp: self.outp,
            cmd: self.cmd,
            buf: self.buf.iter().copied().collect(),
        })
    }

    fn restore(args: I8042ConstructorArgs, state: &I8042State) -> Result<Self, I8042Error> {
        if state.buf.len() > BUF_SIZE {
            return Err(I8042Error::BufferTooLong(state.buf.len()));
        }
        let mut dev = Self::new(args.reset_evt, args.kbd_evt);
        dev.status = state.status;
        dev.control = state.control;
        dev.outp = state.outp;
        dev.cmd = state.cmd;
        dev.buf = state.buf.iter().copied().collect();
        Ok(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn rd(dev: &mut I8042Device, off: u64) -> u8 {
        let mut b = [0u8];
        dev.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals_reset_evt() {
        let reset = evt();
        let mut dev = I8042Device::new(reset.try_clone().unwrap(), None);
        assert!(reset.read().is_err(), "nothing signalled yet");
        dev.write(OFS_STATUS, &[0x12]);
        assert!(reset.read().is_err());
        dev.write(OFS_STATUS, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
        // 0xFE on the data port is not a reset.
        dev.write(OFS_DATA, &[CMD_RESET_CPU]);
        assert!(reset.read().is_err());
    }

    #[test]
    fn ctrl_alt_del_delivers_the_scan_codes_with_interrupts() {
        let reset = evt();
        let kbd = evt();
        let mut dev = I8042Device::new(reset.try_clone().unwrap(), Some(kbd.try_clone().unwrap()));
        dev.trigger_ctrl_alt_del().unwrap();
        assert_eq!(kbd.read().unwrap(), 3, "one interrupt per key");
        assert!(reset.read().is_err(), "keys, not a reset");
        let mut got = vec![];
        while rd(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL != 0 {
            got.push(rd(&mut dev, OFS_DATA));
        }
        assert_eq!(got, [0x14, 0x11, 0xe0, 0x71]);
        for _ in 0..BUF_SIZE / 4 {
            dev.trigger_ctrl_alt_del().unwrap();
        }
        assert_eq!(dev.trigger_ctrl_alt_del(), Err(I8042Error::BufferFull));
    }

    #[test]
    fn linux_probe_traffic() {
        let kbd = evt();
        let mut dev = I8042Device::new(evt(), Some(kbd.try_clone().unwrap()));
        assert_eq!(rd(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
        // Read the control byte.
        dev.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_eq!(
            rd(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL,
            SB_OUT_DATA_AVAIL
        );
        assert_eq!(rd(&mut dev, OFS_DATA), CB_POST_OK | CB_KBD_INT);
        assert_eq!(rd(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
        assert_eq!(kbd.read().unwrap(), 1);
        // Write it back without interrupts.
        dev.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        assert_ne!(rd(&mut dev, OFS_STATUS) & SB_I8042_CMD_DATA, 0);
        dev.write(OFS_DATA, &[CB_POST_OK]);
        assert_eq!(rd(&mut dev, OFS_STATUS) & SB_I8042_CMD_DATA, 0);
        dev.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut dev, OFS_DATA), CB_POST_OK);
        assert!(kbd.read().is_err(), "keyboard interrupts now disabled");
        // Self-test and port tests.
        dev.write(OFS_STATUS, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut dev, OFS_DATA), SELF_TEST_OK);
        dev.write(OFS_STATUS, &[CMD_TEST_KBD]);
        assert_eq!(rd(&mut dev, OFS_DATA), PORT_TEST_OK);
        // A keyboard command is acknowledged.
        dev.write(OFS_DATA, &[0xF4]);
        assert_eq!(rd(&mut dev, OFS_DATA), KEY_ACK);
        // Reading an empty buffer gives 0.
        assert_eq!(rd(&mut dev, OFS_DATA), 0);
        // Output port.
        dev.write(OFS_STATUS, &[CMD_WRITE_OUTP]);
        dev.write(OFS_DATA, &[0x5a]);
        dev.write(OFS_STATUS, &[CMD_READ_OUTP]);
        assert_eq!(rd(&mut dev, OFS_DATA), 0x5a);
        dev.write(OFS_STATUS, &[CMD_DISABLE_KBD]);
        dev.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_ne!(rd(&mut dev, OFS_DATA) & CB_KBD_DISABLED, 0);
    }

    #[test]
    fn buffer_is_bounded_and_odd_accesses_ignored() {
        let mut dev = I8042Device::new(evt(), None);
        for _ in 0..100 {
            dev.write(OFS_DATA, &[0xF4]);
        }
        assert_eq!(dev.buf.len(), 1, "each keyboard command replaces the reply");
        for _ in 0..100 {
            dev.push_byte(1);
        }
        assert_eq!(dev.buf.len(), BUF_SIZE);
        let mut wide = [9u8; 2];
        dev.read(OFS_STATUS, &mut wide);
        assert_eq!(wide, [0, 0]);
        dev.write(OFS_STATUS, &[CMD_RESET_CPU, 0]);
        assert!(dev.reset_evt().read().is_err());
        assert_eq!(rd(&mut dev, 2), 0);
        dev.write(2, &[CMD_RESET_CPU]);
        assert!(dev.reset_evt().read().is_err());
    }

    #[test]
    fn persist_round_trip() {
        let mut dev = I8042Device::new(evt(), None);
        dev.write(OFS_STATUS, &[CMD_WRITE_OUTP]);
        dev.write(OFS_DATA, &[0x77]);
        dev.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        dev.write(OFS_DATA, &[CB_POST_OK | CB_AUX_DISABLED]);
        dev.write(OFS_STATUS, &[CMD_SELF_TEST]);
        dev.write(OFS_STATUS, &[CMD_WRITE_CTR]); // pending data byte
        let state = dev.save().unwrap();
        let args = I8042ConstructorArgs {
            reset_evt: evt(),
            kbd_evt: None,
        };
        let mut restored = I8042Device::restore(args, &state).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert_eq!(
            rd(&mut restored, OFS_STATUS) & SB_I8042_CMD_DATA,
            SB_I8042_CMD_DATA
        );

        let mut bad = state;
        bad.buf = vec![0; BUF_SIZE + 1];
        let args = I8042ConstructorArgs {
            reset_evt: evt(),
            kbd_evt: None,
        };
        assert_eq!(
            I8042Device::restore(args, &bad).unwrap_err(),
            I8042Error::BufferTooLong(BUF_SIZE + 1)
        );
    }
}
