//! `cairn-bench api`: what `cairn serve` adds to an exec. The same command (`true`) is run
//! alternately straight through the guest agent (the floor: vsock connect, hellos, spawn,
//! exit) and through `POST /v1/sandboxes/NAME/exec` on the server's Unix socket, so both see
//! the same guest and host load; the added latency is the difference (of medians and of
//! minimums, the steadier figure on a noisy host). Then N execs at once through the API.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cairn_agent::client::Client;
use cairn_agent::proto::{ExecRequest, AGENT_PORT};
use cairn_tests::sandbox::CairnHome;

use crate::util::{figure, ms, Options, Outcome};

/// How many execs run at once in the concurrency figure.
const CONCURRENT: usize = 20;

/// One `POST …/exec` of `true` over the Unix socket; the HTTP answer must hold exit code 0.
fn api_exec(sock: &Path, name: &str) -> Result<Duration, String> {
    let body = r#"{"argv":["true"]}"#;
    let req = format!(
        "POST /v1/sandboxes/{name}/exec HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let t = Instant::now();
    let mut s =
        UnixStream::connect(sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let took = t.elapsed();
    if !answer.starts_with("HTTP/1.1 200") || !answer.contains("\"exit_code\":0") {
        return Err(format!(
            "exec through the API: {}",
            answer.lines().last().unwrap_or("")
        ));
    }
    Ok(took)
}

/// One exec of `true` straight through the agent.
fn agent_exec(vsock: &Path) -> Result<Duration, String> {
    let req = ExecRequest {
        argv: vec!["true".into()],
        ..Default::default()
    };
    let t = Instant::now();
    let mut c = Client::connect_uds(vsock, AGENT_PORT).map_err(|e| cairn_agent::error_text(&e))?;
    let st = c
        .exec(&req, std::io::empty(), std::io::sink(), std::io::sink())
        .map_err(|e| cairn_agent::error_text(&e))?;
    let took = t.elapsed();
    if !st.success() {
        return Err(format!("true exited {st:?}"));
    }
    Ok(took)
}

/// Tries `f` up to 4 times: this host's guest now and then loses a process at start.
fn retried(mut f: impl FnMut() -> Result<Duration, String>) -> Result<Duration, String> {
    let mut last = String::new();
    for _ in 0..4 {
        match f() {
            Ok(d) => return Ok(d),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(last)
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes no pointers; the pid is our child's.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn run(h: &CairnHome, opts: &Options) -> Result<Vec<crate::util::Figure>, String> {
    let created = h
        .command(&[
            "create",
            "a",
            "--mem",
            "256",
            "--disk",
            "1",
            "--idle-timeout",
            "0",
            "--boot-timeout",
            "400",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !created.status.success() {
        return Err(format!(
            "create: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        ));
    }
    let sock: PathBuf = h.home.path().join("serve.sock");
    let child = h
        .command(&["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let _serve = Serve(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            return Err("cairn serve never listened".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let vsock = h.dir("a").join("vsock.sock");
    // Warm both paths once.
    retried(|| agent_exec(&vsock))?;
    retried(|| api_exec(&sock, "a"))?;
    let (mut direct, mut api) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs.max(5) {
        direct.push(ms(retried(|| agent_exec(&vsock))?));
        api.push(ms(retried(|| api_exec(&sock, "a"))?));
    }
    let d = figure("exec `true` through the agent".into(), direct, "ms");
    let a = figure("exec `true` through cairn serve".into(), api, "ms");
    let added_median = figure(
        "API added latency (median - median)".into(),
        vec![a.median - d.median],
        "ms",
    );
    let added_min = figure(
        "API added latency (min - min)".into(),
        vec![a.min - d.min],
        "ms",
    );
    let t = Instant::now();
    let handles: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || retried(|| api_exec(&sock, "a")).map(ms))
        })
        .collect();
    let mut each = Vec::new();
    for hd in handles {
        each.push(hd.join().map_err(|_| "a thread panicked".to_string())??);
    }
    let wall = ms(t.elapsed());
    Ok(vec![
        d,
        a,
        added_median,
        added_min,
        figure(format!("{CONCURRENT} concurrent execs: each"), each, "ms"),
        figure(
            format!("{CONCURRENT} concurrent execs: all done"),
            vec![wall],
            "ms",
        ),
    ])
}

/// `cairn-bench api [--runs N]`.
pub fn api(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let mut h = CairnHome::new();
    h.verbose = false;
    out.take("api", run(&h, opts));
    out
}
