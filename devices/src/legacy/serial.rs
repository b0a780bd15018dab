//! The 16550A UART on COM1, wrapping `vm_superio::Serial`.
//!
//! How the VMM wires it:
//! - Put the device on the PIO bus at [`COM1_BASE`] with length [`COM1_LEN`]; the bus offset is the
//!   UART register offset.
//! - Register the interrupt eventfd (the one given to [`SerialDevice::new`]) as a KVM irqfd for
//!   [`COM1_IRQ`].
//! - Feed host input (stdin) with [`SerialDevice::enqueue_input`]. It accepts at most the free
//!   FIFO space; when it accepts fewer bytes than offered, keep the rest and retry after the
//!   optional `input_ready` eventfd fires (the guest drained the FIFO).

use std::io::{self, Write};

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// I/O port base of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of ports a 16550 decodes.
pub const COM1_LEN: u64 = 8;
/// Legacy IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;

/// Where guest output goes (stdout in the VMM, a buffer in tests).
pub type SerialOut = Box<dyn Write + Send>;

/// A `vm_superio::Trigger` that signals an eventfd (registered by the VMM as an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wrap `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The wrapped eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Serial events the device reacts to: when the guest empties the receive FIFO, the optional
/// `input_ready` eventfd is signalled so the VMM can push the input it held back.
#[derive(Debug)]
pub struct InputReady(Option<EventFd>);

impl SerialEvents for InputReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(evt) = &self.0 {
            if let Err(e) = evt.write(1) {
                tracing::warn!("serial: cannot signal input-ready eventfd: {e}");
            }
        }
    }
}

/// Why a serial operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Raising the interrupt failed.
    #[error("cannot raise the serial interrupt: {0:?}")]
    Trigger(io::Error),
    /// The saved receive FIFO holds more bytes than a 16550 can.
    #[error("saved serial FIFO is longer than the device's FIFO")]
    FifoTooLong,
    /// Writing guest output failed.
    #[error("cannot write serial output: {0}")]
    Output(io::Error),
}

impl From<vm_superio::serial::Error<io::Error>> for SerialError {
    fn from(e: vm_superio::serial::Error<io::Error>) -> Self {
        use vm_superio::serial::Error;
        match e {
            Error::Trigger(e) => SerialError::Trigger(e),
            Error::IOError(e) => SerialError::Output(e),
            Error::FullFifo => SerialError::FifoTooLong,
        }
    }
}

/// COM1: a 16550A UART on the PIO bus.
pub struct SerialDevice {
    uart: Uart<EventFdTrigger, InputReady, SerialOut>,
    /// Output bytes lost because the sink failed; logged once, then counted.
    lost_bytes: u64,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("state", &self.uart.state())
            .field("lost_bytes", &self.lost_bytes)
            .finish()
    }
}

impl SerialDevice {
    /// A UART in its power-on state.
    ///
    /// `interrupt_evt` is signalled on every interrupt (irqfd for [`COM1_IRQ`]); `out` receives
    /// what the guest transmits; `input_ready`, if given, is signalled whenever the guest has
    /// emptied the receive FIFO.
    pub fn new(interrupt_evt: EventFd, out: SerialOut, input_ready: Option<EventFd>) -> Self {
        Self {
            uart: Uart::with_events(EventFdTrigger(interrupt_evt), InputReady(input_ready), out),
            lost_bytes: 0,
        }
    }

    /// Queue host input for the guest. Returns how many leading bytes of `input` were accepted
    /// (0 when the FIFO is full, or when the guest has put the UART in loopback mode); the caller
    /// keeps the rest and retries later.
    pub fn enqueue_input(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        if input.is_empty() || self.uart.fifo_capacity() == 0 {
            return Ok(0);
        }
        Ok(self.uart.enqueue_raw_bytes(input)?)
    }

    /// Free space in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The interrupt eventfd (to register as an irqfd).
    pub fn interrupt_evt(&self) -> &EventFd {
        self.uart.interrupt_evt().eventfd()
    }

    /// Output bytes lost because the output sink returned an error.
    pub fn lost_bytes(&self) -> u64 {
        self.lost_bytes
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The 16550 registers are one byte wide; wider accesses read as 0xff (open bus).
        match (u8::try_from(offset), data) {
            (Ok(off), [byte]) if u64::from(off) < COM1_LEN => *byte = self.uart.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        if u64::from(off) >= COM1_LEN {
            return;
        }
        match self.uart.write(off, *value) {
            Ok(()) => {}
            Err(vm_superio::serial::Error::IOError(e)) => {
                if self.lost_bytes == 0 {
                    tracing::warn!("serial: output sink failed, dropping guest output: {e}");
                }
                self.lost_bytes += 1;
            }
            Err(e) => tracing::warn!("serial: {}", SerialError::from(e)),
        }
    }
}

/// Plain-data copy of the UART registers and receive FIFO (mirrors `vm_superio::SerialState`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt Enable Register.
    pub interrupt_enable: u8,
    /// Interrupt Identification Register.
    pub interrupt_identification: u8,
    /// Line Control Register.
    pub line_control: u8,
    /// Line Status Register.
    pub line_status: u8,
    /// Modem Control Register.
    pub modem_control: u8,
    /// Modem Status Register.
    pub modem_status: u8,
    /// Scratch Register.
    pub scratch: u8,
    /// Bytes received but not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialDeviceState {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(s: &SerialDeviceState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// What [`SerialDevice::restore`] needs from the VMM: the same three things as
/// [`SerialDevice::new`].
pub struct SerialConstructorArgs {
    /// Interrupt eventfd (irqfd for [`COM1_IRQ`]).
    pub interrupt_evt: EventFd,
    /// Output sink.
    pub out: SerialOut,
    /// Signalled when the guest empties the receive FIFO.
    pub input_ready: Option<EventFd>,
}

impl std::fmt::Debug for SerialConstructorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConstructorArgs")
            .field("interrupt_evt", &self.interrupt_evt)
            .field("input_ready", &self.input_ready)
            .finish_non_exhaustive()
    }
}

impl Persist<'_> for SerialDevice {
    type State = SerialDeviceState;
    type ConstructorArgs = SerialConstructorArgs;
    type Error = SerialError;

    fn save(&self) -> Result<SerialDeviceState, SerialError> {
        Ok(self.uart.state().into())
    }

    fn restore(
        args: SerialConstructorArgs,
        state: &SerialDeviceState,
    ) -> Result<Self, SerialError> {
        let uart = Uart::from_state(
            &SerialState::from(state),
            EventFdTrigger(args.interrupt_evt),
            InputReady(args.input_ready),
            args.out,
        )?;
        Ok(Self {
            uart,
            lost_bytes: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `Write` sink tests can inspect.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("broken"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const IER: u64 = 1;
    const LSR: u64 = 5;

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn read(dev: &mut SerialDevice, off: u64) -> u8 {
        let mut b = [0u8];
        dev.read(off, &mut b);
        b[0]
    }

    #[test]
    fn output_reaches_sink_and_raises_thre_interrupt() {
        let irq = evt();
        let out = SharedBuf::default();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()), None);
        // Enable the THR-empty interrupt.
        dev.write(IER, &[0x02]);
        assert_eq!(irq.read().unwrap(), 1);
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // No new edge until the driver reads IIR.
        assert!(irq.read().is_err());
        assert_eq!(read(&mut dev, 2) & 0x0f, 0x02, "IIR: THR empty");
        dev.write(0, b"!");
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn input_respects_fifo_capacity() {
        let irq = evt();
        let ready = evt();
        let mut dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            Box::new(io::sink()),
            Some(ready.try_clone().unwrap()),
        );
        dev.write(IER, &[0x01]); // RDA interrupt
        let cap = dev.fifo_capacity();
        assert_eq!(cap, 64);
        let input = vec![b'x'; 100];
        assert_eq!(dev.enqueue_input(&input).unwrap(), 64);
        assert_eq!(dev.enqueue_input(&input).unwrap(), 0);
        assert_eq!(dev.enqueue_input(&[]).unwrap(), 0);
        assert!(irq.read().unwrap() >= 1);
        assert_eq!(read(&mut dev, LSR) & 1, 1, "data ready");
        for _ in 0..64 {
            assert_eq!(read(&mut dev, 0), b'x');
        }
        assert_eq!(read(&mut dev, LSR) & 1, 0);
        assert_eq!(
            ready.read().unwrap(),
            1,
            "input-ready signalled once drained"
        );
        assert_eq!(dev.enqueue_input(&input[64..]).unwrap(), 36);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut dev = SerialDevice::new(evt(), Box::new(io::sink()), None);
        let mut wide = [0u8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        let mut b = [0u8];
        dev.read(8, &mut b);
        assert_eq!(b, [0xff]);
        dev.read(u64::MAX, &mut b);
        dev.write(0, &[1, 2]);
        dev.write(9, &[1]);
        dev.write(u64::MAX, &[1]);
        dev.write(0, &[]);
        dev.read(0, &mut []);
    }

    #[test]
    fn broken_sink_counts_lost_bytes() {
        let mut dev = SerialDevice::new(evt(), Box::new(Broken), None);
        dev.write(0, b"a");
        dev.write(0, b"b");
        assert_eq!(dev.lost_bytes(), 2);
    }

    #[test]
    fn persist_round_trip() {
        let mut dev = SerialDevice::new(evt(), Box::new(io::sink()), None);
        dev.write(3, &[0x80]); // DLAB
        dev.write(0, &[0x01]);
        dev.write(1, &[0x00]);
        dev.write(3, &[0x03]);
        dev.write(7, &[0x5a]);
        dev.write(IER, &[0x01]);
        dev.enqueue_input(b"abc").unwrap();
        let state = dev.save().unwrap();
        assert_eq!(state.in_buffer, b"abc");
        assert_eq!(state.scratch, 0x5a);

        let irq = evt();
        let args = SerialConstructorArgs {
            interrupt_evt: irq.try_clone().unwrap(),
            out: Box::new(io::sink()),
            input_ready: None,
        };
        let mut restored = SerialDevice::restore(args, &state).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        // The pending RDA interrupt is re-raised on restore.
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read(&mut restored, 0), b'a');

        let mut bad = state.clone();
        bad.in_buffer = vec![0; 65];
        let args = SerialConstructorArgs {
            interrupt_evt: evt(),
            out: Box::new(io::sink()),
            input_ready: None,
        };
        assert!(matches!(
            SerialDevice::restore(args, &bad),
            Err(SerialError::FifoTooLong)
        ));
    }
}
