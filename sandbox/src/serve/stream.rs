//! Bridges a blocking exec to async: the exec runs under `spawn_blocking` and hands its events
//! through a bounded channel. When the receiver goes (the HTTP client disconnected), the
//! process is killed at once, even if it prints nothing.

use super::ops::{self, ExecOutput, ExecSpec, OpsError};
use crate::sandbox::Home;
use base64::Engine;
use cairn_agent::client::ExecControl;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// One line of an NDJSON exec stream (`"type"` names the variant).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecLine {
    /// The process started.
    Started {
        /// Guest pid.
        pid: u32,
    },
    /// Output on stdout (or the terminal), base64.
    Stdout {
        /// The bytes, base64 (standard alphabet, padded).
        data: String,
    },
    /// Output on stderr, base64.
    Stderr {
        /// The bytes, base64.
        data: String,
    },
    /// The process ended; last line.
    Exit {
        /// Exit code; 128 + N when killed by signal N.
        exit_code: i32,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// Milliseconds in the agent round trip, as the server measured it (an exec's; not a
        /// session's): a client's time minus this is what cairn added.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_ms: Option<f64>,
    },
    /// The exec failed; last line.
    Error {
        /// Machine-readable code.
        code: String,
        /// What went wrong.
        message: String,
    },
}

impl ExecLine {
    /// The line for one exec event.
    pub fn of(ev: ExecOutput) -> ExecLine {
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        match ev {
            ExecOutput::Started { pid } => ExecLine::Started { pid },
            ExecOutput::Stdout(d) => ExecLine::Stdout { data: b64(&d) },
            ExecOutput::Stderr(d) => ExecLine::Stderr { data: b64(&d) },
            ExecOutput::Exit(s, agent) => ExecLine::Exit {
                exit_code: s.shell_code(),
                signal: match s {
                    cairn_agent::client::ExitStatus::Signal(n) => Some(n),
                    cairn_agent::client::ExitStatus::Code(_) => None,
                },
                agent_ms: agent.map(ops::millis),
            },
        }
    }

    /// The error line for `e`.
    pub fn error(e: &OpsError) -> ExecLine {
        ExecLine::Error {
            code: e.code().to_string(),
            message: cairn_agent::error_text(e),
        }
    }

    /// The line as NDJSON (with its newline).
    pub fn to_ndjson(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// Starts `spec` on a blocking thread; events (and a final error, if any) arrive on the
/// returned channel. Dropping the receiver kills the process.
pub fn spawn_exec(
    home: Home,
    name: String,
    spec: ExecSpec,
) -> mpsc::Receiver<Result<ExecOutput, OpsError>> {
    spawn_exec_controlled(home, name, spec).0
}

/// [`spawn_exec`], plus the process's control handle (stdin, signals, resizes), sent once it
/// runs: before its `Started` event.
pub fn spawn_exec_controlled(
    home: Home,
    name: String,
    spec: ExecSpec,
) -> (
    mpsc::Receiver<Result<ExecOutput, OpsError>>,
    oneshot::Receiver<ExecControl>,
) {
    let (tx, rx) = mpsc::channel(64);
    let (ctl_tx, ctl_rx) = oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let watch = tx.clone();
        let log_name = name.clone();
        let on_start = move |ctl: ExecControl| {
            let _ = ctl_tx.send(ctl.clone());
            rt.spawn(async move {
                tokio::select! {
                    _ = watch.closed() => {
                        // The client went away mid-exec: end the process now.
                        eprintln!("cairn serve: {log_name}: client left mid-exec; killing it");
                        let _ = tokio::task::spawn_blocking(move || ctl.signal(libc::SIGKILL)).await;
                    }
                    _ = done_rx => {}
                }
            });
        };
        // The exit ends the stream at once: the answer does not wait for the bookkeeping
        // after it (`touch`, a registry write: an fsync, tens of ms on a busy disk).
        let (mut tx, mut done_tx) = (Some(tx), Some(done_tx));
        let res = ops::exec_stream(&home, &name, spec, on_start, |ev| {
            let end = matches!(ev, ExecOutput::Exit(..));
            if end {
                // First: the watcher must not take the receiver's going for a client leaving.
                if let Some(d) = done_tx.take() {
                    let _ = d.send(());
                }
            }
            let sent = tx.as_ref().is_some_and(|t| t.blocking_send(Ok(ev)).is_ok());
            if end {
                tx = None;
            }
            sent
        });
        if let (Err(e), Some(t)) = (res, &tx) {
            let _ = t.blocking_send(Err(e));
        }
        if let Some(d) = done_tx.take() {
            let _ = d.send(());
        }
    });
    (rx, ctl_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_lines_are_tagged_ndjson() {
        let l = ExecLine::of(ExecOutput::Stdout(b"hi\n".to_vec()));
        assert_eq!(l.to_ndjson(), b"{\"type\":\"stdout\",\"data\":\"aGkK\"}\n");
        let e = ExecLine::of(ExecOutput::Exit(
            cairn_agent::client::ExitStatus::Signal(9),
            None,
        ));
        assert_eq!(
            e,
            ExecLine::Exit {
                exit_code: 137,
                signal: Some(9),
                agent_ms: None
            }
        );
        assert_eq!(
            e.to_ndjson(),
            b"{\"type\":\"exit\",\"exit_code\":137,\"signal\":9}\n"
        );
        let back: ExecLine = serde_json::from_slice(&e.to_ndjson()).unwrap();
        assert_eq!(back, e);
        // An exec's end says how long the agent round trip took, to the microsecond.
        let t = ExecLine::of(ExecOutput::Exit(
            cairn_agent::client::ExitStatus::Code(0),
            Some(std::time::Duration::from_micros(12_345_678)),
        ));
        assert_eq!(
            t.to_ndjson(),
            b"{\"type\":\"exit\",\"exit_code\":0,\"signal\":null,\"agent_ms\":12345.678}\n"
        );
    }
}
