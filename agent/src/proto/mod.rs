//! The wire protocol between the host client and the guest agent.
//!
//! Every frame is a little-endian `u32` payload length followed by a postcard payload of at most
//! [`MAX_FRAME`] bytes. Each side's first frame is a [`Hello`]; after it the client sends
//! [`ClientMsg`] frames and the agent [`AgentMsg`] frames. A connection carries one request.
//! `docs/agent-protocol.md` describes every message.

mod bytes;
mod frame;
mod restored;
mod session;
mod tree;

pub use frame::{FrameError, FrameReader, FrameWriter};
pub use restored::{RestoredReport, RestoredRequest};
pub use session::{SessionInfo, SessionStatus};
pub use tree::{join_relative, EntryKind, TreeMsg};

use serde::{Deserialize, Serialize};

/// The vsock port the agent listens on in the guest.
pub const AGENT_PORT: u32 = 52;

/// The protocol version. Bump it on any change to the existing variants of [`ClientMsg`] and
/// [`AgentMsg`] or the types they carry; a new request is appended at the end instead (an agent
/// that cannot decode it answers [`UNKNOWN_REQUEST`], and the host falls back), since a bump cuts
/// the host off from the agents in existing checkpoints. [`Hello`] itself never changes.
pub const PROTOCOL_VERSION: u32 = 2;

/// The four bytes every [`Hello`] starts with.
pub const MAGIC: [u8; 4] = *b"CRNA";

/// The largest payload a frame may carry (1 MiB). A longer length prefix is rejected before any
/// allocation.
pub const MAX_FRAME: u32 = 1 << 20;

/// The most data bytes a sender puts in one `Stdout`, `Stderr`, `Stdin` or tree `Data` chunk.
pub const CHUNK: usize = 128 << 10;

/// The first frame in each direction. Its layout is frozen across protocol versions so that
/// both sides can always read it and report a version mismatch clearly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Free text naming the sender's software, e.g. `cairn-agent 0.1.0`.
    pub software: String,
}

impl Hello {
    /// This build's hello.
    pub fn ours(role: &str) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            software: format!("{role} {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Checks the peer's hello against ours; the error text says what differs.
    pub fn check(&self) -> Result<(), String> {
        if self.magic != MAGIC {
            return Err(format!(
                "peer is not a cairn agent endpoint (magic {:02x?})",
                self.magic
            ));
        }
        if self.version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version mismatch: peer {:?} speaks v{}, we speak v{PROTOCOL_VERSION}",
                self.software, self.version
            ));
        }
        Ok(())
    }
}

/// Terminal size for an exec with a pseudo-terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Variables added to (or replacing those in) the agent's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's own when `None`.
    pub cwd: Option<String>,
    /// Whether the client will send stdin. When false the process reads `/dev/null`
    /// (or, with a pty, a terminal nobody types into).
    pub stdin: bool,
    /// Run under a pseudo-terminal of this size; stdout and stderr then arrive merged as `Stdout`.
    pub pty: Option<PtySize>,
}

/// Frames the client sends after its [`Hello`]. The first one is the request
/// (`Exec`, `Put`, `Get`, `Sync`, `Ping` or `Connect`); the others only follow the request named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Run a process; the agent answers `Started`, streams output, then `Exit` or `Killed`.
    Exec(ExecRequest),
    /// After `Exec`: bytes for the process's stdin.
    Stdin(#[serde(with = "bytes")] Vec<u8>),
    /// After `Exec`: close the process's stdin (with a pty: send the EOF character, ^D).
    StdinClose,
    /// After `Exec` with a pty: new terminal size.
    Resize(PtySize),
    /// After `Exec`: send this signal number to the process.
    Signal(i32),
    /// Write a file or directory tree at `path`; a tree stream follows. Answered by `Done`.
    Put {
        /// Absolute destination path in the guest; missing parents are created.
        path: String,
    },
    /// After `Put`: one element of the tree stream.
    Tree(TreeMsg),
    /// Read the file or directory tree at `path`; answered by a tree stream.
    Get {
        /// Absolute source path in the guest.
        path: String,
    },
    /// Flush all file systems (sync(2)); answered by `Done`.
    Sync,
    /// Answered by `Pong`.
    Ping,
    /// Open a TCP connection in the guest to `host:port`; answered by `Connected` (then both
    /// sides send `Data` and `DataEnd`) or `Error`. See [`ConnectRequest`].
    Connect(ConnectRequest),
    /// After `Connect`: bytes for the guest's TCP connection.
    Data(#[serde(with = "bytes")] Vec<u8>),
    /// After `Connect`: the host side has no more bytes to send (the agent shuts down the
    /// write half of the guest connection).
    DataEnd,
    /// Configure the guest's network interface (after a boot, or a restore as a fork with a new
    /// address and MAC); answered by `Done`. See `docs/network.md`.
    NetConfigure(NetConfig),
    /// Set the guest's wall clock (CLOCK_REALTIME) to the host's, after a restore or wake;
    /// answered by `Done`.
    SetClock {
        /// Nanoseconds since the Unix epoch, read on the host just before sending.
        unix_nanos: u64,
    },
    /// Make this guest its own machine after a restore; answered by `Done`. See
    /// [`IdentityRequest`] (protocol v2).
    Identity(IdentityRequest),
    /// Start a detached session: a process that outlives this connection, its output kept in
    /// the agent's ring buffer. Answered by `SessionStarted` or `Error`.
    SessionStart(ExecRequest),
    /// List the sessions; answered by `Sessions`.
    SessionList,
    /// Attach to a session: answered by `SessionAttached`, the buffered output, then live
    /// output and `Exit`/`Killed` when it ends. `Stdin`, `StdinClose`, `Resize` and `Signal`
    /// may follow; closing the connection detaches (the process keeps running).
    SessionAttach {
        /// The session.
        id: u32,
    },
    /// Kill a session's process group (SIGKILL) if it runs, and forget the session and its
    /// output. Answered by `Done`.
    SessionKill {
        /// The session.
        id: u32,
    },
    /// After a restore: clock, network and identity in one request (see [`RestoredRequest`]);
    /// answered by `Restored`. An agent older than it closes the connection (newer agents
    /// answer any request they cannot decode with `Error`, starting [`UNKNOWN_REQUEST`]); the
    /// host then falls back to `SetClock`, `NetConfigure` and `Identity`.
    Restored(RestoredRequest),
}

/// How an agent's `Error` answer to a request it cannot decode (one newer than the agent)
/// begins, so that a client can tell "not supported" from a failure.
pub const UNKNOWN_REQUEST: &str = "unknown request";

/// A TCP connection to open inside the guest (`cairn proxy`, the HTTP router).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Guest address: an IP address or a host name the guest resolves; `127.0.0.1` usually.
    pub host: String,
    /// Guest TCP port.
    pub port: u16,
}

/// The guest network configuration the host hands the agent ([`ClientMsg::NetConfigure`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The interface; the first one that is not `lo` when `None`.
    pub iface: Option<String>,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// IPv4 address.
    pub addr: [u8; 4],
    /// Prefix length of the link's subnet.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: [u8; 4],
    /// Resolvers written to `/etc/resolv.conf` (left alone when empty).
    pub dns: Vec<[u8; 4]>,
}

/// After a restore (a fork, a create from a golden checkpoint, a wake), what makes this guest
/// differ from every other guest restored from the same checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRequest {
    /// Host randomness mixed into the kernel's pool (`RNDADDENTROPY`, credited) before the
    /// kernel's RNG is reseeded from it at once (`RNDRESEEDCRNG`).
    #[serde(with = "bytes")]
    pub entropy: Vec<u8>,
    /// New hostname (kernel, `/etc/hostname`, the `127.0.1.1` line of `/etc/hosts`).
    pub hostname: Option<String>,
    /// New `/etc/machine-id`: 32 lowercase hex digits. Also regenerates SSH host keys where
    /// the image has them (`ssh-keygen -A`, in the background).
    pub machine_id: Option<String>,
}

/// Frames the agent sends after its [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// The process started with this pid.
    Started {
        /// Guest pid.
        pid: u32,
    },
    /// Bytes the process wrote to stdout (or to its pty).
    Stdout(#[serde(with = "bytes")] Vec<u8>),
    /// Bytes the process wrote to stderr.
    Stderr(#[serde(with = "bytes")] Vec<u8>),
    /// The process exited with this code. Last frame of an exec.
    Exit {
        /// Exit code, 0–255.
        code: i32,
    },
    /// The process was killed by this signal. Last frame of an exec.
    Killed {
        /// Signal number.
        signal: i32,
    },
    /// One element of a `Get` tree stream.
    Tree(TreeMsg),
    /// `Put` or `Sync` finished.
    Done,
    /// Answer to `Ping`.
    Pong,
    /// The request failed; the text says why. Last frame.
    Error {
        /// Human-readable reason.
        message: String,
    },
    /// The guest TCP connection of a `Connect` is open.
    Connected,
    /// After `Connected`: bytes the guest's TCP peer sent.
    Data(#[serde(with = "bytes")] Vec<u8>),
    /// After `Connected`: the guest's TCP peer closed its write half (EOF).
    DataEnd,
    /// The session of a `SessionStart` runs.
    SessionStarted {
        /// Its id.
        id: u32,
        /// Its process's guest pid.
        pid: u32,
    },
    /// Answer to `SessionList`, oldest first.
    Sessions(Vec<SessionInfo>),
    /// First answer to `SessionAttach`: the ring buffer's contents follow as `Stdout`/`Stderr`
    /// (`replay` bytes), then live output.
    SessionAttached {
        /// Output bytes dropped from the ring buffer before its oldest byte.
        dropped: u64,
        /// Bytes of buffered output that follow at once, before any live output.
        replay: u64,
    },
    /// Answer to `Restored`: how each of its parts went.
    Restored(RestoredReport),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn round_trip<T>(msg: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let frame = frame::encode(msg).unwrap();
        assert_eq!(
            u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        let mut r = FrameReader::new(Cursor::new(frame));
        assert_eq!(&r.read::<T>().unwrap().unwrap(), msg);
        assert!(
            r.read::<T>().unwrap().is_none(),
            "clean end after the last frame"
        );
    }

    fn client_msgs() -> Vec<ClientMsg> {
        vec![
            ClientMsg::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec![("A".into(), "b".into())],
                cwd: Some("/tmp".into()),
                stdin: true,
                pty: Some(PtySize { rows: 24, cols: 80 }),
            }),
            ClientMsg::Exec(ExecRequest::default()),
            ClientMsg::Stdin(vec![0, 1, 2, 255]),
            ClientMsg::Stdin(vec![7; CHUNK]),
            ClientMsg::StdinClose,
            ClientMsg::Resize(PtySize {
                rows: 1,
                cols: 65535,
            }),
            ClientMsg::Signal(9),
            ClientMsg::Put {
                path: "/a/b".into(),
            },
            ClientMsg::Tree(TreeMsg::Entry {
                path: "x/y".into(),
                kind: EntryKind::File,
                mode: 0o755,
                size: 3,
            }),
            ClientMsg::Tree(TreeMsg::Entry {
                path: String::new(),
                kind: EntryKind::Dir,
                mode: 0o700,
                size: 0,
            }),
            ClientMsg::Tree(TreeMsg::Data(b"abc".to_vec())),
            ClientMsg::Tree(TreeMsg::End { skipped: 2 }),
            ClientMsg::Get {
                path: "/etc".into(),
            },
            ClientMsg::Sync,
            ClientMsg::Ping,
            ClientMsg::Connect(ConnectRequest {
                host: "127.0.0.1".into(),
                port: 8080,
            }),
            ClientMsg::Data(b"GET / HTTP/1.0\r\n\r\n".to_vec()),
            ClientMsg::DataEnd,
            ClientMsg::NetConfigure(NetConfig {
                iface: Some("eth0".into()),
                mac: "02:ca:00:00:00:01".into(),
                addr: [10, 213, 0, 2],
                prefix: 30,
                gateway: [10, 213, 0, 1],
                dns: vec![[10, 213, 0, 1]],
            }),
            ClientMsg::SetClock {
                unix_nanos: 1 << 60,
            },
            ClientMsg::Identity(IdentityRequest {
                entropy: vec![9; 64],
                hostname: Some("box".into()),
                machine_id: Some("0".repeat(32)),
            }),
            ClientMsg::Identity(IdentityRequest::default()),
            ClientMsg::SessionStart(ExecRequest::default()),
            ClientMsg::SessionList,
            ClientMsg::SessionAttach { id: 7 },
            ClientMsg::SessionKill { id: u32::MAX },
            ClientMsg::Restored(RestoredRequest {
                clock_unix_nanos: Some(1 << 60),
                net: Some(NetConfig {
                    iface: None,
                    mac: "02:ca:00:00:00:02".into(),
                    addr: [10, 213, 0, 6],
                    prefix: 30,
                    gateway: [10, 213, 0, 5],
                    dns: Vec::new(),
                }),
                identity: IdentityRequest {
                    entropy: vec![1; 64],
                    hostname: Some("x1".into()),
                    machine_id: Some("a".repeat(32)),
                },
            }),
            ClientMsg::Restored(RestoredRequest::default()),
        ]
    }

    fn agent_msgs() -> Vec<AgentMsg> {
        vec![
            AgentMsg::Started { pid: 42 },
            AgentMsg::Stdout(b"hi\n".to_vec()),
            AgentMsg::Stderr(Vec::new()),
            AgentMsg::Exit { code: 3 },
            AgentMsg::Killed { signal: 9 },
            AgentMsg::Tree(TreeMsg::Data(vec![1; 1000])),
            AgentMsg::Done,
            AgentMsg::Pong,
            AgentMsg::Error {
                message: "no such file".into(),
            },
            AgentMsg::Connected,
            AgentMsg::Data(vec![0; 3]),
            AgentMsg::DataEnd,
            AgentMsg::SessionStarted { id: 1, pid: 99 },
            AgentMsg::Sessions(vec![SessionInfo {
                id: 1,
                pid: 99,
                argv: vec!["sh".into()],
                started_unix: 1 << 33,
                tty: true,
                stdin: false,
                status: SessionStatus::Killed(9),
                output_bytes: 1 << 40,
                dropped_bytes: 3,
                attached: 2,
            }]),
            AgentMsg::Sessions(Vec::new()),
            AgentMsg::SessionAttached {
                dropped: 0,
                replay: 1 << 18,
            },
            AgentMsg::Restored(RestoredReport::default()),
            AgentMsg::Restored(RestoredReport {
                clock_error: Some("EPERM".into()),
                net_error: Some("no interface".into()),
                identity_error: None,
                micros: [1, u32::MAX, 0],
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(&Hello::ours("test"));
        client_msgs().iter().for_each(round_trip);
        agent_msgs().iter().for_each(round_trip);
    }

    #[test]
    fn a_stream_of_frames_reads_back_in_order() {
        let mut w = FrameWriter::new(Vec::new());
        for m in client_msgs() {
            w.write(&m).unwrap();
        }
        let mut r = FrameReader::new(Cursor::new(w.get_ref().clone()));
        for m in client_msgs() {
            assert_eq!(r.read::<ClientMsg>().unwrap().unwrap(), m);
        }
        assert!(r.read::<ClientMsg>().unwrap().is_none());
    }

    /// A reader that fails the test if asked for more than the prefix: proves the length is
    /// judged before the payload is read (and so before it is allocated).
    struct PrefixOnly(Cursor<Vec<u8>>);
    impl std::io::Read for PrefixOnly {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            assert!(self.0.position() < 4, "read past the length prefix");
            self.0.read(buf)
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_allocation() {
        for len in [MAX_FRAME + 1, u32::MAX] {
            let mut r = FrameReader::new(PrefixOnly(Cursor::new(len.to_le_bytes().to_vec())));
            match r.read::<ClientMsg>() {
                Err(FrameError::TooLarge(n)) => assert_eq!(n, u64::from(len)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn oversized_message_is_not_sent() {
        let msg = ClientMsg::Stdin(vec![0; MAX_FRAME as usize]);
        assert!(matches!(frame::encode(&msg), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_accepted() {
        // 1 byte variant + 3 bytes varint length + payload = MAX_FRAME.
        let msg = AgentMsg::Stdout(vec![b'x'; MAX_FRAME as usize - 4]);
        round_trip(&msg);
    }

    #[test]
    fn truncated_frames_are_clean_errors() {
        let frame = frame::encode(&ClientMsg::Put {
            path: "/tmp/x".into(),
        })
        .unwrap();
        for cut in 1..frame.len() {
            let mut r = FrameReader::new(Cursor::new(frame[..cut].to_vec()));
            assert!(
                matches!(r.read::<ClientMsg>(), Err(FrameError::Truncated)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_payloads_are_clean_errors() {
        // Unknown enum variant.
        assert!(matches!(
            frame::decode::<ClientMsg>(&[200]),
            Err(FrameError::Decode(_))
        ));
        // Valid message followed by junk.
        let mut payload = frame::encode(&ClientMsg::Ping).unwrap()[4..].to_vec();
        payload.push(0);
        assert!(matches!(
            frame::decode::<ClientMsg>(&payload),
            Err(FrameError::TrailingBytes(1))
        ));
        // A byte string claiming more bytes than the frame holds.
        assert!(matches!(
            frame::decode::<ClientMsg>(&[1, 0xff, 0xff, 0x3f]),
            Err(FrameError::Decode(_))
        ));
        // Empty payload.
        assert!(matches!(
            frame::decode::<AgentMsg>(&[]),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn wrong_version_or_magic_is_a_clean_error() {
        let mut other = Hello::ours("future-client");
        other.version = PROTOCOL_VERSION + 1;
        let frame = frame::encode(&other).unwrap();
        let got: Hello = FrameReader::new(Cursor::new(frame))
            .read()
            .unwrap()
            .unwrap();
        let err = got.check().unwrap_err();
        assert!(
            err.contains("protocol version mismatch") && err.contains("future-client"),
            "{err}"
        );

        let mut bad = Hello::ours("x");
        bad.magic = *b"HTTP";
        assert!(bad.check().unwrap_err().contains("not a cairn agent"));
        assert!(Hello::ours("x").check().is_ok());
    }

    #[test]
    fn variant_indices_are_frozen() {
        // The variant index is the payload's first byte: older agents must still read the
        // requests they know, and a newer host must find them where they always were.
        let first = |m: &ClientMsg| frame::encode(m).unwrap()[4];
        let known = [
            (ClientMsg::Ping, 9),
            (ClientMsg::SetClock { unix_nanos: 0 }, 14),
            (ClientMsg::Identity(IdentityRequest::default()), 15),
            (ClientMsg::SessionKill { id: 0 }, 19),
            (ClientMsg::Restored(RestoredRequest::default()), 20),
        ];
        for (m, index) in known {
            assert_eq!(first(&m), index, "{m:?}");
        }
        let payload = &frame::encode(&AgentMsg::Restored(RestoredReport::default())).unwrap()[4..];
        assert_eq!(payload, [15, 0, 0, 0, 0, 0, 0]);
        // An empty `Restored`: index 20, no clock, no network, empty identity (no entropy,
        // no hostname, no machine-id).
        let payload =
            &frame::encode(&ClientMsg::Restored(RestoredRequest::default())).unwrap()[4..];
        assert_eq!(payload, [20, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn hello_layout_is_frozen() {
        // Magic, varint version, varint length + text. Changing this breaks version detection.
        let payload = &frame::encode(&Hello {
            magic: MAGIC,
            version: 1,
            software: "a".into(),
        })
        .unwrap()[4..];
        assert_eq!(payload, b"CRNA\x01\x01a");
    }
}
