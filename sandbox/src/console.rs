//! `cairn console NAME`: the guest's serial console, both ways.
//!
//! Output is the sandbox's `console.log` (the VMM's stdout), printed from its last 16 KiB and
//! then followed. Input goes into the sandbox's `console.in` FIFO, which is every VMM's stdin:
//! keys typed reach the guest's serial port, and so does piped stdin. When the sandbox has
//! been stopped for idleness, the next key wakes it first (its VMM then reads the same FIFO).
//! On a terminal the keys are sent raw (Ctrl-C goes to the guest); Ctrl-] detaches.

use crate::cli::CliError;
use cairn_agent::client::tty;
use cairn_sandbox::registry::Record;
use cairn_sandbox::sandbox::{self, Home, Paths};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// The detach key on a terminal: Ctrl-].
pub const DETACH: u8 = 0x1d;

/// How often typing counts as activity for the idle watcher.
const TOUCH_EVERY: Duration = Duration::from_secs(5);

struct Session<'a> {
    home: &'a Home,
    name: &'a str,
    paths: Paths,
    record: Record,
    input: File,
    touched: Instant,
}

impl Session<'_> {
    /// Wakes the sandbox (if its VMM is gone) and reopens the FIFO's write end.
    fn wake(&mut self) -> Result<(), CliError> {
        let (r, active, _) = sandbox::enter(self.home, self.name)?;
        drop(active);
        self.record = r;
        self.input = open_input(&self.paths)?;
        Ok(())
    }

    /// Sends `bytes` to the guest's serial port.
    fn send(&mut self, mut bytes: &[u8]) -> Result<(), CliError> {
        if !self.record.pid.is_some_and(sandbox::vmm_alive) {
            self.wake()?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut woke = false;
        while !bytes.is_empty() {
            match self.input.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                // The guest is not reading fast enough: the pipe (64 KiB) is full.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // No reader: the VMM stopped between the check and the write.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe && !woke => {
                    woke = true;
                    self.wake()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if self.touched.elapsed() >= TOUCH_EVERY {
            let _ = sandbox::touch(self.home, self.name);
            self.touched = Instant::now();
        }
        Ok(())
    }
}

/// The FIFO's write end, non-blocking (a reader, the VMM, holds it open while it runs).
fn open_input(paths: &Paths) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&paths.console_in)
}

/// Attaches to the console until Ctrl-] (terminal) or until killed.
pub fn run(home: &Home, name: &str) -> Result<u8, CliError> {
    let (record, active, _) = sandbox::enter(home, name)?;
    // Waking is all console needs the sandbox for: it must not keep the idle watcher away.
    drop(active);
    let paths = home.paths(&record.name);
    let input = open_input(&paths).map_err(|e| {
        CliError::Usage(format!(
            "cannot open {}: {e} (hint: the sandbox was started by an older cairn without \
             console input; `cairn stop {name} && cairn start {name}`)",
            paths.console_in.display()
        ))
    })?;
    let mut log = File::open(&paths.console)?;
    let len = log.metadata()?.len();
    log.seek(SeekFrom::Start(len.saturating_sub(16 << 10)))?;
    let stdin = io::stdin();
    let fd = stdin.as_fd().as_raw_fd();
    let is_tty = tty::is_terminal(stdin.as_fd());
    let _raw = is_tty
        .then(|| tty::RawMode::enable(stdin.as_fd()))
        .transpose()?;
    if is_tty {
        eprint!("[attached to {name}'s console; Ctrl-] detaches]\r\n");
    } else {
        eprintln!("[attached to {name}'s console; input from stdin; Ctrl-C ends]");
    }
    let mut s = Session {
        home,
        name,
        paths,
        record,
        input,
        touched: Instant::now(),
    };
    let mut out = io::stdout();
    let mut buf = vec![0u8; 32 << 10];
    let mut stdin_open = true;
    loop {
        let n = log.read(&mut buf)?;
        if n > 0 {
            write_output(&mut out, &buf[..n], is_tty)?;
            continue;
        }
        if !stdin_open {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let Some(keys) = read_input(fd, 100)? else {
            continue;
        };
        if keys.is_empty() {
            // End of piped input: keep following the output.
            stdin_open = false;
            continue;
        }
        let detach = is_tty
            .then(|| keys.iter().position(|&b| b == DETACH))
            .flatten();
        s.send(&keys[..detach.unwrap_or(keys.len())])?;
        if detach.is_some() {
            eprint!("\r\n[detached]\r\n");
            return Ok(0);
        }
    }
}

fn write_output(out: &mut impl Write, chunk: &[u8], is_tty: bool) -> io::Result<()> {
    if is_tty {
        // Raw mode turns off output processing: add the carriage returns ourselves.
        let mut text = Vec::with_capacity(chunk.len() + chunk.len() / 16);
        for &b in chunk {
            if b == b'\n' {
                text.push(b'\r');
            }
            text.push(b);
        }
        out.write_all(&text)?;
    } else {
        out.write_all(chunk)?;
    }
    out.flush()
}

/// Waits up to `ms` for input on `fd`: `None` on timeout, an empty vector at end of input.
fn read_input(fd: i32, ms: i32) -> io::Result<Option<Vec<u8>>> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    if rc == 0 {
        return Ok(None);
    }
    let mut b = vec![0u8; 4096];
    // SAFETY: reads into a local buffer of the given length.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    b.truncate(usize::try_from(n).unwrap_or(0));
    Ok(Some(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_output_gets_carriage_returns() {
        let mut out = Vec::new();
        write_output(&mut out, b"a\nb\n", true).unwrap();
        assert_eq!(out, b"a\r\nb\r\n");
        let mut out = Vec::new();
        write_output(&mut out, b"a\nb", false).unwrap();
        assert_eq!(out, b"a\nb");
    }

    #[test]
    fn piped_input_is_read_then_ends() {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = r.as_raw_fd();
        assert_eq!(read_input(fd, 10).unwrap(), None);
        (&w).write_all(b"ls\n").unwrap();
        assert_eq!(read_input(fd, 1000).unwrap(), Some(b"ls\n".to_vec()));
        drop(w);
        assert_eq!(read_input(fd, 1000).unwrap(), Some(vec![]));
    }
}
