//! The daemon client's WebSocket side: `cairn exec -i/-t` (`GET …/exec`, upgraded) and
//! `cairn sessions attach -i` (`GET …/sessions/{id}/attach`, upgraded), the frames of
//! [`crate::serve::ws`] over the daemon's Unix socket (tokio-tungstenite, as axum's server side).
//!
//! Stdin is read on a thread of its own and sent as binary frames (its end as `stdin_close`);
//! with a terminal, window-size changes (`SIGWINCH`) are sent as `resize` frames. Output is
//! written as it comes; the socket ends with the exit code, or (attach) `detached`. Frames are
//! written by a task of their own, so a full socket one way never stops reading the other.
//! A client that goes away (or gives up at `--timeout`) just closes the socket: the daemon
//! then kills an exec, and detaches from a session, which goes on.

use super::{segment, Daemon, DaemonError, ErrorReply};
use crate::serve::sessions::AttachLine;
use crate::serve::stream::ExecLine;
use crate::serve::ws::{ClientFrame, StartFrame};
use cairn_agent::client::tty;
use cairn_agent::proto::ExecRequest;
use futures_util::{SinkExt, StreamExt};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// How large a stdin frame gets.
const STDIN_CHUNK: usize = 32 << 10;

/// What an interactive socket reads and writes here.
pub struct Terminal<'a> {
    /// Stdin to forward (binary frames, then `stdin_close` at its end); `None`: none.
    pub input: Option<Box<dyn Read + Send>>,
    /// A byte of the input that detaches an attached client (Ctrl-] on a raw terminal): what
    /// came before it is sent, then `detach`.
    pub detach_key: Option<u8>,
    /// Send this terminal's new size on `SIGWINCH` (a remote terminal).
    pub follow_size: bool,
    /// Where stdout (or the remote terminal) goes.
    pub out: &'a mut dyn Write,
    /// Where stderr goes.
    pub err: &'a mut dyn Write,
    /// Hears how many older bytes of a session's output were gone (attach).
    pub dropped: &'a mut dyn FnMut(u64),
}

impl std::fmt::Debug for Terminal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("input", &self.input.is_some())
            .field("detach_key", &self.detach_key)
            .field("follow_size", &self.follow_size)
            .finish_non_exhaustive()
    }
}

/// How an interactive socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEnd {
    /// The process ended with this exit code (128 + N when killed by signal N).
    Exited(i32),
    /// Detached from a session, which goes on.
    Detached,
    /// The exec ran past its limit; the socket was closed, and the daemon kills it.
    TimedOut,
}

/// Input read here, in order.
enum Input {
    Data(Vec<u8>),
    Eof,
    Detach,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

impl Daemon {
    /// `GET /v1/sandboxes/{name}/exec` as a WebSocket: runs `req` (its stdin and terminal as
    /// it asks), with `term`'s input and output, until it exits. With a `limit`, a command
    /// still running once it is up is abandoned ([`SocketEnd::TimedOut`]).
    pub fn exec_interactive(
        &self,
        name: &str,
        req: &ExecRequest,
        limit: Option<Duration>,
        term: Terminal<'_>,
    ) -> Result<SocketEnd, DaemonError> {
        let start = serde_json::to_string(&StartFrame::of(req)).map_err(|e| self.transport(e))?;
        let path = format!("/v1/sandboxes/{}/exec", segment(name));
        let term = Terminal {
            input: term.input.filter(|_| req.stdin),
            ..term
        };
        self.rt.block_on(async {
            let mut ws = self.upgrade(&path).await?;
            ws.send(Message::Text(start.into()))
                .await
                .map_err(|e| self.transport(format!("send the start frame: {e}")))?;
            self.drive(ws, limit, term).await
        })
    }

    /// `GET /v1/sandboxes/{name}/sessions/{id}/attach` as a WebSocket: the kept output, then
    /// the live output, with `term`'s input typed into the session, until it ends or this
    /// client detaches.
    pub fn session_attach_interactive(
        &self,
        name: &str,
        id: u32,
        term: Terminal<'_>,
    ) -> Result<SocketEnd, DaemonError> {
        let path = format!("/v1/sandboxes/{}/sessions/{id}/attach", segment(name));
        self.rt.block_on(async {
            let ws = self.upgrade(&path).await?;
            self.drive(ws, None, term).await
        })
    }

    /// Connects to the socket and upgrades `path`; an error answer is the daemon's error.
    async fn upgrade(&self, path: &str) -> Result<Socket, DaemonError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.transport(format!("connect: {e}")))?;
        let req = format!("ws://cairn{path}")
            .into_client_request()
            .map_err(|e| self.transport(e))?;
        match tokio_tungstenite::client_async(req, stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.into_body().unwrap_or_default();
                Err(match serde_json::from_slice::<ErrorReply>(&body) {
                    Ok(e) => DaemonError::Api {
                        status,
                        code: e.code,
                        message: e.error,
                    },
                    Err(_) => self.transport(format!("HTTP {status}")),
                })
            }
            Err(e) => Err(self.transport(format!("upgrade: {e}"))),
        }
    }

    /// Runs one socket to its end: frames written by a task of their own, input and
    /// resizes sent, output written, the end returned.
    async fn drive(
        &self,
        ws: Socket,
        limit: Option<Duration>,
        term: Terminal<'_>,
    ) -> Result<SocketEnd, DaemonError> {
        let Terminal {
            input,
            detach_key,
            follow_size,
            out,
            err,
            dropped,
        } = term;
        let (mut sink, mut frames) = ws.split();
        let (send_tx, mut send_rx) = mpsc::channel::<Message>(16);
        let writer = tokio::spawn(async move {
            while let Some(m) = send_rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
        });
        let mut input = input.map(|i| read_input(i, detach_key));
        let mut winch = if follow_size {
            Some(signal(SignalKind::window_change()).map_err(|e| self.transport(e))?)
        } else {
            None
        };
        let mut deadline: Option<tokio::time::Instant> = None;
        let frame =
            |f: &ClientFrame| Message::Text(serde_json::to_string(f).unwrap_or_default().into());
        let end = loop {
            tokio::select! {
                m = frames.next() => {
                    let text = match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None => {
                            break Err(self.transport("the socket closed without an exit"));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => break Err(self.transport(e)),
                    };
                    match self.socket_line(text.as_str(), out, err, dropped) {
                        Ok(Line::Started) => {
                            deadline = limit.map(|l| tokio::time::Instant::now() + l);
                        }
                        Ok(Line::More) => {}
                        Ok(Line::End(end)) => break Ok(end),
                        Err(e) => break Err(e),
                    }
                }
                i = next_input(&mut input) => {
                    let m = match i {
                        Some(Input::Data(d)) => Message::Binary(d.into()),
                        Some(Input::Eof) | None => {
                            input = None;
                            frame(&ClientFrame::StdinClose)
                        }
                        Some(Input::Detach) => {
                            input = None;
                            frame(&ClientFrame::Detach)
                        }
                    };
                    if send_tx.send(m).await.is_err() {
                        break Err(self.transport("the socket closed"));
                    }
                }
                () = next_winch(&mut winch) => {
                    if let Some(s) = tty::size(io::stdout().as_fd()) {
                        let _ = send_tx.send(frame(&ClientFrame::Resize { rows: s.rows, cols: s.cols })).await;
                    }
                }
                () = at(deadline) => break Ok(SocketEnd::TimedOut),
            }
        };
        if matches!(end, Ok(SocketEnd::Exited(_) | SocketEnd::Detached)) {
            // The server waits a moment for this close; it is not needed.
            let _ = send_tx.send(Message::Close(None)).await;
            drop(send_tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        } else {
            // Closing the connection is the daemon's cue to kill the exec.
            drop(frames);
            writer.abort();
            let _ = writer.await;
        }
        end
    }

    /// One text frame from the daemon: output written; the start, or the end.
    fn socket_line(
        &self,
        text: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
        dropped: &mut dyn FnMut(u64),
    ) -> Result<Line, DaemonError> {
        if let Ok(a) = serde_json::from_str::<AttachLine>(text) {
            return Ok(match a {
                AttachLine::Attached { dropped: n, .. } => {
                    dropped(n);
                    Line::More
                }
                AttachLine::Detached => Line::End(SocketEnd::Detached),
            });
        }
        let ev: ExecLine =
            serde_json::from_str(text).map_err(|e| self.transport(format!("its answer: {e}")))?;
        if let ExecLine::Started { .. } = ev {
            return Ok(Line::Started);
        }
        Ok(match self.exec_line(ev, out, err)? {
            Some(code) => Line::End(SocketEnd::Exited(code)),
            None => Line::More,
        })
    }
}

enum Line {
    Started,
    More,
    End(SocketEnd),
}

/// Reads `input` on a thread of its own, in chunks, until its end or `detach_key`.
fn read_input(mut input: Box<dyn Read + Send>, detach_key: Option<u8>) -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(Input::Eof);
                    return;
                }
                Ok(n) => n,
            };
            let data = &buf[..n];
            let cut = detach_key.and_then(|k| data.iter().position(|&b| b == k));
            let before = &data[..cut.unwrap_or(n)];
            if !before.is_empty() && tx.blocking_send(Input::Data(before.to_vec())).is_err() {
                return;
            }
            if cut.is_some() {
                let _ = tx.blocking_send(Input::Detach);
                return;
            }
        }
    });
    rx
}

/// The next input; never, once there is no more.
async fn next_input(input: &mut Option<mpsc::Receiver<Input>>) -> Option<Input> {
    match input {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next `SIGWINCH`; never without a terminal to follow.
async fn next_winch(winch: &mut Option<Signal>) {
    match winch {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// `deadline`; never without one.
async fn at(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
