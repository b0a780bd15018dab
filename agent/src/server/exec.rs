//! Exec: start a process, stream its output, feed its stdin, forward signals, report its end.
//!
//! Threads per exec: one per output pipe (or one for the pty), one waiter, and the connection
//! thread itself, which reads the client's control messages. Every buffer is bounded: output is
//! read in [`OUT_CHUNK`] pieces and each piece is written to the socket before the next read, so
//! a slow client slows the process down instead of filling memory.

use super::{msg_name, pty, Conn, ServerError};
use crate::proto::{AgentMsg, ClientMsg, ExecRequest, FrameError, FrameReader, FrameWriter};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

/// Bytes read from a process's output per frame.
pub(super) const OUT_CHUNK: usize = 32 << 10;

/// `PATH` for processes when neither the agent nor the request has one (an agent started
/// directly by the kernel has an empty environment).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

type Shared<S> = Arc<Mutex<FrameWriter<S>>>;

fn send<S: Conn>(writer: &Mutex<FrameWriter<S>>, msg: &AgentMsg) -> Result<(), FrameError> {
    writer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .write(msg)
}

pub(super) struct Spawned {
    pub(super) child: Child,
    pub(super) input: Option<Box<dyn Write + Send>>,
    pub(super) outputs: Vec<(Box<dyn Read + Send>, bool)>,
    pub(super) pty_master: Option<File>,
}

pub(super) fn spawn(req: &ExecRequest) -> io::Result<Spawned> {
    let (prog, args) = req
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    if std::env::var_os("PATH").is_none() && !req.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    match req.pty {
        None => {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            // A group of its own, so that a client that goes away takes the whole tree with it.
            cmd.process_group(0);
            let mut child = cmd.spawn()?;
            let input = child
                .stdin
                .take()
                .map(|s| Box::new(s) as Box<dyn Write + Send>);
            let mut outputs: Vec<(Box<dyn Read + Send>, bool)> = Vec::new();
            if let Some(out) = child.stdout.take() {
                outputs.push((Box::new(out), false));
            }
            if let Some(err) = child.stderr.take() {
                outputs.push((Box::new(err), true));
            }
            Ok(Spawned {
                child,
                input,
                outputs,
                pty_master: None,
            })
        }
        Some(size) => {
            let (master, slave) = pty::open(size)?;
            cmd.stdin(slave.try_clone()?)
                .stdout(slave.try_clone()?)
                .stderr(slave);
            // SAFETY: the closure only makes async-signal-safe calls (setsid, ioctl).
            unsafe { cmd.pre_exec(pty::make_controlling) };
            let child = cmd.spawn()?;
            // `cmd` still holds the slave descriptors; it is dropped on return, so the master
            // sees EIO once the process and its descendants close the terminal.
            let input: Option<Box<dyn Write + Send>> = Some(Box::new(master.try_clone()?));
            let outputs: Vec<(Box<dyn Read + Send>, bool)> =
                vec![(Box::new(master.try_clone()?), false)];
            Ok(Spawned {
                child,
                input,
                outputs,
                pty_master: Some(master),
            })
        }
    }
}

/// Streams one output until it ends (EOF, or EIO on a pty whose slave is closed).
fn pump<S: Conn>(mut src: Box<dyn Read + Send>, is_stderr: bool, writer: &Mutex<FrameWriter<S>>) {
    let mut buf = vec![0u8; OUT_CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let data = buf[..n].to_vec();
        let msg = if is_stderr {
            AgentMsg::Stderr(data)
        } else {
            AgentMsg::Stdout(data)
        };
        if send(writer, &msg).is_err() {
            // The client is gone; the connection thread kills the process.
            return;
        }
    }
}

/// Waits for `pid` to exit without reaping it, so the pid stays ours until `reaped` is set.
pub(super) fn wait_exit_unreaped(pid: u32) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain data; all-zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid siginfo_t for waitid to fill.
        let rc =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends `sig` to the process's group, as a terminal signals its foreground job (every exec
/// leads a group of its own), and to the process itself, unless it has been reaped (so never to
/// a recycled pid or group). A SIGKILL thus ends the whole tree, not only its leader: once the
/// leader is reaped, [`kill_group`] can no longer reach the rest.
pub(super) fn signal(pid: u32, sig: i32, reaped: &Mutex<bool>) {
    let reaped = reaped.lock().unwrap_or_else(PoisonError::into_inner);
    if !*reaped {
        let pid = pid as libc::pid_t;
        // SAFETY: getpgid(2) and kill(2) take no pointers; `pid` is our unreaped child, so its
        // group id is still ours too.
        unsafe {
            libc::kill(-pid, sig);
            // A leader that left its group (setsid, setpgid) is signalled on its own; one still
            // in it already was, and is not signalled twice.
            if libc::getpgid(pid) != pid {
                libc::kill(pid, sig);
            }
        }
    }
}

/// Kills the process and its process group (every exec leads one: `process_group(0)`, or
/// `setsid` under a pty) unless the leader has been reaped: a client that left mid-exec leaves
/// nothing behind. After a normal exit, background jobs it started are left alone.
fn kill_group(pid: u32, reaped: &Mutex<bool>) {
    let reaped = reaped.lock().unwrap_or_else(PoisonError::into_inner);
    if !*reaped {
        // SAFETY: kill(2) takes no pointers; `pid` is our unreaped child, so its group id is
        // still ours too.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

fn wait_and_report<S: Conn>(
    mut child: Child,
    pumps: Vec<JoinHandle<()>>,
    reaped: &Mutex<bool>,
    writer: &Mutex<FrameWriter<S>>,
) -> Result<(), ServerError> {
    let pid = child.id();
    let status = wait_exit_unreaped(pid).and_then(|()| {
        let mut reaped = reaped.lock().unwrap_or_else(PoisonError::into_inner);
        *reaped = true;
        child.wait()
    });
    let status = match status {
        Ok(s) => s,
        Err(source) => {
            let e = ServerError::Wait { pid, source };
            let _ = send(
                writer,
                &AgentMsg::Error {
                    message: crate::error_text(&e),
                },
            );
            return Err(e);
        }
    };
    // All output goes out before the exit message.
    for p in pumps {
        let _ = p.join();
    }
    let msg = match (status.code(), status.signal()) {
        (Some(code), _) => AgentMsg::Exit { code },
        (None, Some(signal)) => AgentMsg::Killed { signal },
        (None, None) => AgentMsg::Error {
            message: format!("pid {pid} ended with unknown status {status:?}"),
        },
    };
    Ok(send(writer, &msg)?)
}

/// Runs one exec on a connection whose `Exec` request has been read.
pub(super) fn run<S: Conn>(
    req: ExecRequest,
    mut reader: FrameReader<S>,
    writer: FrameWriter<S>,
) -> Result<(), ServerError> {
    let writer: Shared<S> = Arc::new(Mutex::new(writer));
    let Spawned {
        child,
        mut input,
        outputs,
        pty_master,
    } = match spawn(&req) {
        Ok(s) => s,
        Err(source) => {
            let argv0 = req.argv.first().cloned().unwrap_or_default();
            let e = ServerError::Spawn { argv0, source };
            let _ = send(
                &writer,
                &AgentMsg::Error {
                    message: crate::error_text(&e),
                },
            );
            return Err(e);
        }
    };
    let pid = child.id();
    let reaped = Arc::new(Mutex::new(false));
    let started = send(&writer, &AgentMsg::Started { pid });
    let pumps = outputs
        .into_iter()
        .map(|(src, is_stderr)| {
            let writer = Arc::clone(&writer);
            thread::spawn(move || pump(src, is_stderr, &writer))
        })
        .collect();
    let waiter = {
        let (writer, reaped) = (Arc::clone(&writer), Arc::clone(&reaped));
        thread::spawn(move || wait_and_report(child, pumps, &reaped, &writer))
    };
    if started.is_ok() {
        control(pid, &mut reader, &mut input, pty_master.as_ref(), &reaped);
    }
    // Whatever ended the control loop, the client is gone or done: make sure the process (and
    // its group) is too.
    kill_group(pid, &reaped);
    drop(input);
    waiter
        .join()
        .unwrap_or_else(|_| Err(ServerError::Unexpected("panic in exec waiter")))
}

/// Applies the client's stdin, resize and signal messages until the client closes the connection.
fn control<S: Conn>(
    pid: u32,
    reader: &mut FrameReader<S>,
    input: &mut Option<Box<dyn Write + Send>>,
    pty_master: Option<&File>,
    reaped: &Mutex<bool>,
) {
    loop {
        let msg = match reader.read::<ClientMsg>() {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(e) => {
                super::log::error(&e);
                return;
            }
        };
        match msg {
            ClientMsg::Stdin(data) => {
                if let Some(w) = input.as_mut() {
                    // A process that closed its stdin just loses the rest.
                    if w.write_all(&data).is_err() {
                        *input = None;
                    }
                }
            }
            ClientMsg::StdinClose => match (pty_master, input.as_mut()) {
                // A terminal has no close: send the EOF character instead.
                (Some(_), Some(w)) => {
                    let _ = w.write_all(&[0x04]);
                }
                _ => *input = None,
            },
            ClientMsg::Resize(size) => {
                if let Some(m) = pty_master {
                    let _ = pty::resize(m, size);
                }
            }
            ClientMsg::Signal(sig) => signal(pid, sig, reaped),
            other => {
                super::log::error(&ServerError::Unexpected(msg_name(&other)));
                return;
            }
        }
    }
}
