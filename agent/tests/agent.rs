//! The agent server on a Unix socket in a tempdir, driven through the client.

use cairn_agent::client::{Client, ClientError, ExecEvent, ExitStatus};
use cairn_agent::proto::{ExecRequest, PtySize};
use cairn_agent::server::serve_unix;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

struct Agent {
    dir: tempfile::TempDir,
    sock: PathBuf,
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    thread::spawn(move || serve_unix(listener));
    Agent { dir, sock }
}

impl Agent {
    fn client(&self) -> Client {
        Client::connect_unix(&self.sock).unwrap()
    }
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn run(client: &mut Client, req: &ExecRequest, stdin: &[u8]) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = client
        .exec(
            req,
            std::io::Cursor::new(stdin.to_vec()),
            &mut out,
            &mut err,
        )
        .unwrap();
    (status, out, err)
}

#[test]
fn ping_and_sync() {
    let a = agent();
    let mut c = a.client();
    assert!(c.agent_software().unwrap().starts_with("cairn-agent "));
    c.ping().unwrap();
    c.ping().unwrap();
    c.sync().unwrap();
}

#[test]
fn exec_echo_and_false() {
    let a = agent();
    let mut c = a.client();
    let (status, out, err) = run(&mut c, &req(&["echo", "hi"]), b"");
    assert_eq!(
        (status, out.as_slice(), err.as_slice()),
        (ExitStatus::Code(0), &b"hi\n"[..], &b""[..])
    );
    assert!(status.success());
    let (status, out, _) = run(&mut c, &req(&["false"]), b"");
    assert_eq!((status, out.len()), (ExitStatus::Code(1), 0));
    let (status, _, err) = run(&mut c, &req(&["sh", "-c", "echo oops >&2; exit 7"]), b"");
    assert_eq!(
        (status, err.as_slice()),
        (ExitStatus::Code(7), &b"oops\n"[..])
    );
}

#[test]
fn exec_cat_with_stdin() {
    let a = agent();
    let mut c = a.client();
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut r = req(&["cat"]);
    r.stdin = true;
    let (status, out, _) = run(&mut c, &r, &input);
    assert_eq!(status, ExitStatus::Code(0));
    assert!(
        out == input,
        "cat echoed {} of {} bytes",
        out.len(),
        input.len()
    );
}

#[test]
fn exec_without_stdin_reads_dev_null() {
    let a = agent();
    let (status, out, _) = run(&mut a.client(), &req(&["cat"]), b"ignored");
    assert_eq!((status, out.len()), (ExitStatus::Code(0), 0));
}

#[test]
fn exec_killed_by_signal() {
    let a = agent();
    let mut c = a.client();
    let (status, _, _) = run(&mut c, &req(&["sh", "-c", "kill -9 $$"]), b"");
    assert_eq!(status, ExitStatus::Signal(9));
    assert_eq!(status.shell_code(), 137);
}

#[test]
fn exec_signal_from_client() {
    let a = agent();
    let mut c = a.client();
    let mut running = c.spawn(&req(&["sleep", "30"])).unwrap();
    assert!(running.pid() > 0);
    running.control().signal(15).unwrap();
    assert_eq!(
        running.next_event().unwrap(),
        ExecEvent::Exited(ExitStatus::Signal(15))
    );
}

#[test]
fn exec_env_and_cwd() {
    let a = agent();
    let mut c = a.client();
    let mut r = req(&["sh", "-c", "echo \"$FOO $BAR\"; pwd"]);
    r.env = vec![
        ("FOO".into(), "foo value".into()),
        ("BAR".into(), "b".into()),
    ];
    r.cwd = Some(a.dir.path().to_str().unwrap().into());
    let (status, out, _) = run(&mut c, &r, b"");
    assert_eq!(status, ExitStatus::Code(0));
    let want = format!(
        "foo value b\n{}\n",
        a.dir.path().canonicalize().unwrap().display()
    );
    assert_eq!(String::from_utf8(out).unwrap(), want);
}

#[test]
fn exec_errors_are_reported() {
    let a = agent();
    let mut c = a.client();
    let err = c.spawn(&req(&["/nonexistent/program"])).unwrap_err();
    assert!(
        matches!(&err, ClientError::Agent(m) if m.contains("/nonexistent/program")),
        "{err}"
    );
    let mut r = req(&["true"]);
    r.cwd = Some("/nonexistent-dir".into());
    assert!(matches!(c.spawn(&r), Err(ClientError::Agent(_))));
    assert!(matches!(c.spawn(&req(&[])), Err(ClientError::Agent(m)) if m.contains("empty argv")));
}

#[test]
fn exec_with_pty() {
    let a = agent();
    let mut c = a.client();
    let mut r = req(&[
        "sh",
        "-c",
        "stty size; test -t 0 && echo tty; read x; echo got $x",
    ]);
    r.pty = Some(PtySize {
        rows: 33,
        cols: 101,
    });
    r.stdin = true;
    let (status, out, err) = run(&mut c, &r, b"line\n");
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    assert!(err.is_empty());
    assert!(
        out.contains("33 101") && out.contains("tty") && out.contains("got line"),
        "{out:?}"
    );
}

#[test]
fn dropping_the_connection_kills_the_process() {
    let a = agent();
    let mut c = a.client();
    let marker = a.dir.path().join("alive");
    let script = format!("sleep 2; touch {}", marker.display());
    let running = c.spawn(&req(&["sh", "-c", &script])).unwrap();
    drop(running);
    thread::sleep(Duration::from_secs(3));
    assert!(!marker.exists(), "the process outlived its connection");
}

fn write_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("a.txt"), b"alpha").unwrap();
    fs::write(root.join("sub/run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    let big: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 256) as u8).collect();
    fs::write(root.join("sub/deeper/big.bin"), big).unwrap();
    fs::write(root.join("empty.file"), b"").unwrap();
    fs::set_permissions(root.join("sub/run.sh"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("sub/deeper"), fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
}

/// Every file and directory under `root` with its mode and contents, sorted.
fn listing(root: &Path) -> Vec<(String, u32, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if m.is_dir() {
                stack.push(p.clone());
                out.push((rel, m.permissions().mode() & 0o7777, None));
            } else if m.is_file() {
                out.push((
                    rel,
                    m.permissions().mode() & 0o7777,
                    Some(fs::read(&p).unwrap()),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn put_then_get_a_file() {
    let a = agent();
    let mut c = a.client();
    let src = a.dir.path().join("src.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    fs::write(&src, &data).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
    let remote = a.dir.path().join("guest/new/dir/file.bin");
    let stats = c.put(&src, remote.to_str().unwrap()).unwrap();
    assert_eq!((stats.files, stats.bytes), (1, data.len() as u64));
    assert_eq!(fs::read(&remote).unwrap(), data);
    assert_eq!(
        fs::metadata(&remote).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    let back = a.dir.path().join("back.bin");
    let stats = c.get(remote.to_str().unwrap(), &back).unwrap();
    assert_eq!(stats.bytes, data.len() as u64);
    assert!(fs::read(&back).unwrap() == data);
    assert_eq!(
        fs::metadata(&back).unwrap().permissions().mode() & 0o7777,
        0o640
    );
}

#[test]
fn put_then_get_a_directory_with_modes() {
    let a = agent();
    let mut c = a.client();
    let src = a.dir.path().join("tree");
    write_tree(&src);
    let remote = a.dir.path().join("guest/tree");
    let stats = c.put(&src, remote.to_str().unwrap()).unwrap();
    assert_eq!((stats.files, stats.dirs, stats.skipped), (4, 4, 1));
    assert_eq!(listing(&remote), listing(&src));
    let back = a.dir.path().join("back");
    let stats = c.get(remote.to_str().unwrap(), &back).unwrap();
    assert_eq!((stats.files, stats.dirs), (4, 4));
    assert_eq!(listing(&back), listing(&src));
    assert!(!back.join("link").exists(), "symlinks are skipped");
}

#[test]
fn transfer_errors_are_reported() {
    let a = agent();
    let mut c = a.client();
    let err = c
        .get("/nonexistent/path", a.dir.path().join("x"))
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Agent(m) if m.contains("/nonexistent/path")),
        "{err}"
    );
    let err = c.get("relative/path", a.dir.path().join("x")).unwrap_err();
    assert!(
        matches!(&err, ClientError::Agent(m) if m.contains("not absolute")),
        "{err}"
    );
    let src = a.dir.path().join("f");
    fs::write(&src, b"x").unwrap();
    // A file where a directory is needed.
    let err = c
        .put(&src, &format!("{}/f/below", a.dir.path().display()))
        .unwrap_err();
    assert!(matches!(err, ClientError::Agent(_)), "{err}");
    // A local source that does not exist fails at once, without waiting on the agent.
    let err = c
        .put(a.dir.path().join("missing"), "/tmp/never")
        .unwrap_err();
    assert!(matches!(err, ClientError::Tree(_)), "{err}");
    assert!(!Path::new("/tmp/never").exists());
    // The agent is still fine.
    c.ping().unwrap();
}

#[test]
fn wrong_protocol_version_is_refused() {
    use cairn_agent::proto::{FrameReader, FrameWriter, Hello, PROTOCOL_VERSION};
    let a = agent();
    let s = UnixStream::connect(&a.sock).unwrap();
    let mut w = FrameWriter::new(s.try_clone().unwrap());
    let mut hello = Hello::ours("old-client");
    hello.version = PROTOCOL_VERSION + 100;
    w.write(&hello).unwrap();
    let mut r = FrameReader::new(s);
    let theirs: Hello = r.read().unwrap().unwrap();
    assert_eq!(theirs.version, PROTOCOL_VERSION);
    // The agent hangs up after its hello: the client side of a mismatch reports from that hello.
    assert!(r.read::<cairn_agent::proto::AgentMsg>().unwrap().is_none());
}

#[test]
fn oversized_frame_from_client_closes_the_connection() {
    use cairn_agent::proto::{FrameReader, Hello};
    let a = agent();
    let mut s = UnixStream::connect(&a.sock).unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The agent's hello goes out on accept; after the oversized frame comes nothing but EOF.
    let mut r = FrameReader::new(s.try_clone().unwrap());
    let theirs: Hello = r.read().unwrap().unwrap();
    assert_eq!(theirs.magic, Hello::ours("x").magic);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    a.client().ping().unwrap();
}

/// A stand-in for the VMM's vsock socket: answers `CONNECT 52` with `OK 1234`, then proxies
/// bytes to the agent's Unix socket.
fn fake_vmm(dir: &Path, agent_sock: PathBuf, reply: &'static str) -> PathBuf {
    let uds = dir.join("vsock.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let mut host = conn.unwrap();
            let agent_sock = agent_sock.clone();
            thread::spawn(move || {
                let mut line = Vec::new();
                let mut b = [0u8];
                while host.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 52");
                host.write_all(reply.as_bytes()).unwrap();
                if !reply.starts_with("OK") {
                    return;
                }
                let guest = UnixStream::connect(&agent_sock).unwrap();
                let (mut h2, mut g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
                let up = thread::spawn(move || {
                    let _ = std::io::copy(&mut h2, &mut g2);
                    let _ = g2.shutdown(std::net::Shutdown::Write);
                });
                let (mut g, mut h) = (guest, host);
                let _ = std::io::copy(&mut g, &mut h);
                let _ = h.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    uds
}

#[test]
fn connect_uds_does_the_connect_handshake() {
    let a = agent();
    let uds = fake_vmm(a.dir.path(), a.sock.clone(), "OK 1234\n");
    let mut c = Client::connect_uds(&uds, 52).unwrap();
    c.ping().unwrap();
    let (status, out, _) = run(&mut c, &req(&["echo", "through vsock"]), b"");
    assert_eq!(
        (status, out.as_slice()),
        (ExitStatus::Code(0), &b"through vsock\n"[..])
    );
    let mut r = req(&["cat"]);
    r.stdin = true;
    let (_, out, _) = run(&mut c, &r, b"piped");
    assert_eq!(out, b"piped");
}

#[test]
fn connect_uds_reports_a_refused_connect() {
    let dir = tempfile::tempdir().unwrap();
    let uds = fake_vmm(dir.path(), dir.path().join("none"), "");
    let err = Client::connect_uds(&uds, 52).unwrap_err();
    assert!(
        err.to_string()
            .contains("is the agent listening on port 52"),
        "{err}"
    );
}

#[test]
fn connect_uds_times_out_on_a_silent_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let t = std::time::Instant::now();
    let err = Client::connect_uds_timeout(&uds, 52, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[test]
fn copies_out_plant_no_privileges_and_land_in_existing_directories() {
    let a = agent();
    let mut c = a.client();
    // What a hostile guest made: a setuid world-writable file in a sticky world-writable directory.
    let guest = a.dir.path().join("guest/sd");
    fs::create_dir_all(&guest).unwrap();
    fs::write(guest.join("sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(guest.join("sh"), fs::Permissions::from_mode(0o6777)).unwrap();
    fs::set_permissions(&guest, fs::Permissions::from_mode(0o1777)).unwrap();
    let allowed = cairn_agent::tree::host_mode_mask();
    assert_eq!(allowed & 0o7000, 0);
    let out = a.dir.path().join("out");
    fs::create_dir(&out).unwrap();
    // Into an existing directory, as cp does.
    c.get(guest.to_str().unwrap(), &out).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&out.join("sd")), 0o777 & allowed);
    assert_eq!(mode(&out.join("sd/sh")), 0o777 & allowed);
    c.get(guest.join("sh").to_str().unwrap(), &out).unwrap();
    assert_eq!(mode(&out.join("sh")), 0o777 & allowed);
    assert_eq!(fs::read(out.join("sh")).unwrap(), b"#!/bin/sh\n");
}

#[test]
fn exec_failures_have_shell_exit_codes() {
    use cairn_agent::client::exit_code::{exit_code_of, NOT_EXECUTABLE, NOT_FOUND};
    let a = agent();
    let mut c = a.client();
    let run = |c: &mut cairn_agent::client::Client, argv: &[&str]| {
        c.exec(&req(argv), std::io::empty(), Vec::new(), Vec::new())
    };
    let e = run(&mut c, &["/no/such/command"]).unwrap_err();
    assert_eq!(exit_code_of(&e), NOT_FOUND, "{e}");
    let e = run(&mut c, &["no-such-command-anywhere"]).unwrap_err();
    assert_eq!(exit_code_of(&e), NOT_FOUND, "{e}");
    let plain = a.dir.path().join("plain.txt");
    fs::write(&plain, b"not a program").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let e = run(&mut c, &[plain.to_str().unwrap()]).unwrap_err();
    assert_eq!(exit_code_of(&e), NOT_EXECUTABLE, "{e}");
}
