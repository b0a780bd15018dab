//! `cairn exec --timeout SECS`: the command is killed (SIGKILL) once the time is up, and cairn
//! exits [`TIMED_OUT`] (124, as `timeout(1)`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use cairn_agent::client::{Client, ClientError, ExitStatus};
use cairn_agent::proto::ExecRequest;

/// The exit code of a command killed by `--timeout`.
pub const TIMED_OUT: u8 = 124;

/// Run `req` for at most `secs` seconds (stdin, stdout and stderr are this process's). Returns
/// the exit status, or None when the time ran out and the command was killed.
pub fn exec_with_timeout(
    client: &mut Client,
    req: &ExecRequest,
    secs: f64,
) -> Result<Option<ExitStatus>, ClientError> {
    let limit = Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX);
    let running = client.spawn(req)?;
    let control = running.control();
    if req.stdin {
        let c = running.control();
        std::thread::spawn(move || c.pump_stdin(io::stdin()));
    }
    let fired = Arc::new(AtomicBool::new(false));
    let (done, wait_done) = mpsc::channel::<()>();
    let timer = {
        let fired = Arc::clone(&fired);
        std::thread::spawn(move || {
            if wait_done.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                fired.store(true, Ordering::SeqCst);
                let _ = control.signal(libc::SIGKILL);
            }
        })
    };
    let status = running.wait(io::stdout(), io::stderr());
    drop(done);
    let _ = timer.join();
    let status = status?;
    Ok(
        if fired.load(Ordering::SeqCst) && status == ExitStatus::Signal(libc::SIGKILL) {
            None
        } else {
            Some(status)
        },
    )
}
