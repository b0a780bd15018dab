//! The event loop: one thread, `event-manager`, serving device queues, the serial console's
//! stdin, the API socket's wake-ups and the VM's exit signals.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cairn_devices::legacy::SerialDevice;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::error::VmmError;
use crate::vstate::vcpu::{ExitReason, ExitSignal};

/// What the event loop holds.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The VMM's event loop.
pub struct EventLoop {
    em: EventManager<Subscriber>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventLoop")
    }
}

impl EventLoop {
    /// An empty loop.
    pub fn new() -> Result<Self, VmmError> {
        Ok(Self {
            em: EventManager::new().map_err(|e| VmmError::EventLoop(format!("{e:?}")))?,
        })
    }

    /// Add a subscriber; it registers its fds in `init`.
    pub fn add(&mut self, subscriber: Subscriber) {
        self.em.add_subscriber(subscriber);
    }

    /// Wait up to `timeout_ms` (-1: forever) and dispatch what is ready.
    pub fn run_once(&mut self, timeout_ms: i32) -> Result<usize, VmmError> {
        self.em
            .run_with_timeout(timeout_ms)
            .map_err(|e| VmmError::EventLoop(format!("{e:?}")))
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the whole call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Feeds host stdin (or any readable fd) into the serial port, holding back while the UART's
/// FIFO is full.
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    input: RawFd,
    input_ready: EventFd,
    pending: Vec<u8>,
    reading: bool,
}

impl SerialInput {
    /// Read from `input` into `serial`; `input_ready` is the eventfd the serial device signals
    /// when its input FIFO empties.
    pub fn new(serial: Arc<Mutex<SerialDevice>>, input: RawFd, input_ready: EventFd) -> Self {
        Self {
            serial,
            input,
            input_ready,
            pending: Vec::new(),
            reading: true,
        }
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        match serial.enqueue_input(&self.pending) {
            Ok(n) => {
                self.pending.drain(..n.min(self.pending.len()));
            }
            Err(e) => {
                tracing::warn!("serial input dropped: {e}");
                self.pending.clear();
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input_ready.as_raw_fd() {
            let _ = self.input_ready.read();
        } else if events.fd() == self.input {
            let mut buf = [0u8; 64];
            match read_fd(self.input, &mut buf) {
                Ok(0) => {
                    let _ = ops.remove(Events::new_raw(self.input, EventSet::IN));
                    self.reading = false;
                    return;
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("stdin: {e}; no more console input");
                    let _ = ops.remove(Events::new_raw(self.input, EventSet::IN));
                    self.reading = false;
                    return;
                }
            }
            if events.event_set().contains(EventSet::HANG_UP)
                && !events.event_set().contains(EventSet::IN)
            {
                let _ = ops.remove(Events::new_raw(self.input, EventSet::IN));
                self.reading = false;
            }
        }
        self.flush_pending();
        // Stop reading while the guest has not drained the FIFO; resume when it has.
        let want = self.pending.is_empty();
        if self.reading && !want {
            let _ = ops.remove(Events::new_raw(self.input, EventSet::IN));
            self.reading = false;
        } else if !self.reading
            && want
            && self.input >= 0
            && self.input_open()
            && ops.add(Events::new_raw(self.input, EventSet::IN)).is_ok()
        {
            self.reading = true;
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.input_ready, EventSet::IN)) {
            tracing::warn!("serial input-ready eventfd: {e:?}");
        }
        if let Err(e) = ops.add(Events::new_raw(self.input, EventSet::IN)) {
            tracing::warn!("stdin cannot be polled ({e:?}); no console input");
            self.reading = false;
            self.input = -1;
        }
    }
}

impl SerialInput {
    fn input_open(&self) -> bool {
        // SAFETY: F_GETFD only queries the descriptor table.
        unsafe { libc::fcntl(self.input, libc::F_GETFD) >= 0 }
    }
}

/// Turns the i8042 reset line and vCPU exit reports into the VM's exit.
pub struct ExitWatcher {
    exit: Arc<ExitSignal>,
    reset_evt: EventFd,
}

impl ExitWatcher {
    /// Watch `reset_evt` (the i8042's CPU reset line) as well as the exit signal itself.
    pub fn new(exit: Arc<ExitSignal>, reset_evt: EventFd) -> Self {
        Self { exit, reset_evt }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.exit.signal(ExitReason::GuestReset);
        } else {
            let _ = self.exit.eventfd().read();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in [&self.reset_evt, self.exit.eventfd()] {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                tracing::error!("cannot watch exit events: {e:?}");
            }
        }
    }
}

/// Sets a flag when its eventfd fires (API requests waiting, for example).
pub struct WakeFlag {
    evt: EventFd,
    flag: Arc<AtomicBool>,
}

impl WakeFlag {
    /// Watch `evt`; `flag` becomes true when it fires.
    pub fn new(evt: EventFd, flag: Arc<AtomicBool>) -> Self {
        Self { evt, flag }
    }
}

impl MutEventSubscriber for WakeFlag {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.flag.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("cannot watch wake eventfd: {e:?}");
        }
    }
}
