//! `cairn-bench api`: what `cairn serve` adds. Each operation runs, per run, once through the
//! library the CLI calls (`cairn_sandbox::serve::ops`, in this process: the same code the
//! server runs, without HTTP) and once through the API on the server's Unix socket, in
//! alternating order, so both see the same guest and host load; the added latency is the
//! paired difference (median and p95). Operations: exec `true` (also straight through the guest
//! agent: the floor of vsock connect, hellos, spawn, exit), `GET /v1/sandboxes/NAME` (no guest:
//! HTTP, auth, the blocking pool, a registry read) and a files read of a small guest file.
//!
//! On a loaded host one guest exec varies by seconds between two runs, which swamps a paired
//! difference of milliseconds. So every exec through the API is also measured on its own: the
//! server reports the time it spent in the agent round trip (`agent_ms` in the exec's answer:
//! agent connect, hellos, spawn, output, exit), and the added latency of that one request is
//! the client's time minus it. That figure holds everything cairn does around the agent call
//! (HTTP, authentication, the access log, JSON, the blocking pool, `enter`: a registry read,
//! the sandbox's locks and the activity write, the event channel, the answer) and the Unix
//! socket both ways, and nothing of the guest's.
//!
//! Then 50 execs at once through the API, spread over 4 sandboxes, each checked for its own
//! output.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cairn_agent::client::Client;
use cairn_agent::proto::{ExecRequest, AGENT_PORT};
use cairn_sandbox::sandbox::Home;
use cairn_sandbox::serve::ops;
use cairn_tests::sandbox::CairnHome;
use serde::{Deserialize, Serialize};

use crate::util::{figure, ms, sandbox_create_args, Figure, Options, Outcome};

/// How many execs run at once in the concurrency figure, and over how many sandboxes.
const CONCURRENT: usize = 50;
const SANDBOXES: usize = 4;

/// `POST …/exec`'s body, as the API takes it.
#[derive(Serialize)]
struct ExecBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    argv: Option<&'a [&'a str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
}

/// `POST …/exec`'s collected answer.
#[derive(Deserialize)]
struct ExecAnswer {
    stdout: String,
    exit_code: i32,
    /// The server's time in the agent round trip.
    #[serde(default)]
    agent_ms: Option<f64>,
}

/// The body of an HTTP/1.1 answer, de-chunked; an error unless the status is 2xx.
fn http_body(answer: &[u8]) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(answer);
    let split = text.find("\r\n\r\n").ok_or("no HTTP header end")?;
    let (head, mut rest) = (&text[..split], &text[split + 4..]);
    if !head.starts_with("HTTP/1.1 2") {
        return Err(format!(
            "{}: {}",
            head.lines().next().unwrap_or(""),
            rest.trim()
        ));
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(rest.as_bytes().to_vec());
    }
    let mut body = Vec::new();
    loop {
        let line_end = rest.find("\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(rest[..line_end].trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(body);
        }
        let start = line_end + 2;
        let chunk = rest.get(start..start + size).ok_or("short chunk")?;
        body.extend_from_slice(chunk.as_bytes());
        rest = rest.get(start + size + 2..).ok_or("short chunk")?;
    }
}

/// One request on the server's Unix socket; the time to the whole answer and its body.
fn api_call(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(Duration, Vec<u8>), String> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let t = Instant::now();
    let mut s =
        UnixStream::connect(sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let took = t.elapsed();
    Ok((took, http_body(&answer)?))
}

/// One `POST …/exec` over the Unix socket; its time and answer.
fn api_exec(sock: &Path, name: &str, body: &ExecBody) -> Result<(Duration, ExecAnswer), String> {
    let body = serde_json::to_string(body).map_err(|e| e.to_string())?;
    let (took, answer) = api_call(sock, "POST", &format!("/v1/sandboxes/{name}/exec"), &body)?;
    let a: ExecAnswer = serde_json::from_slice(&answer)
        .map_err(|e| format!("exec answer: {e}: {}", String::from_utf8_lossy(&answer)))?;
    Ok((took, a))
}

/// Per-request figures of execs through the API: the client's time, the server's time in
/// the agent round trip, and their difference (what cairn added to that request).
#[derive(Default)]
struct SelfTimed {
    client: Vec<f64>,
    agent: Vec<f64>,
    added: Vec<f64>,
}

impl SelfTimed {
    fn figures(self) -> Vec<Figure> {
        let n = self.added.len();
        let mut v = Vec::new();
        if n == 0 {
            return v;
        }
        v.extend(with_p95(
            &format!("exec `true` through cairn serve, per request ({n}): client time"),
            self.client,
        ));
        v.extend(with_p95(
            &format!("exec `true` through cairn serve, per request ({n}): server's agent time"),
            self.agent,
        ));
        v.extend(with_p95(
            &format!("API added latency, per request ({n}): client - server's agent time"),
            self.added,
        ));
        v
    }
}

/// One exec of `true` through the API; exit code 0 required. Its per-request figures go to
/// `timed` when the server reported its agent time.
fn api_true(sock: &Path, name: &str, timed: &mut SelfTimed) -> Result<Duration, String> {
    let (took, a) = api_exec(
        sock,
        name,
        &ExecBody {
            argv: Some(&["true"]),
            command: None,
        },
    )?;
    if a.exit_code != 0 {
        return Err(format!("true exited {} through the API", a.exit_code));
    }
    if let Some(agent) = a.agent_ms {
        timed.client.push(ms(took));
        timed.agent.push(agent);
        timed.added.push(ms(took) - agent);
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

/// Times one library call.
fn lib<T, E: std::error::Error + 'static>(
    f: impl FnOnce() -> Result<T, E>,
) -> Result<(Duration, T), String> {
    let t = Instant::now();
    let v = f().map_err(|e| cairn_agent::error_text(&e))?;
    Ok((t.elapsed(), v))
}

/// One exec of `true` through the library (`ops::exec_collect`, as the server runs it).
fn lib_true(home: &Home, name: &str) -> Result<Duration, String> {
    let spec = ops::ExecSpec {
        argv: vec!["true".into()],
        ..Default::default()
    };
    let (took, r) = lib(|| ops::exec_collect(home, name, spec))?;
    if r.exit_code != 0 {
        return Err(format!("true exited {} through the library", r.exit_code));
    }
    Ok(took)
}

/// Runs `a` and `b` in the order `flip` picks; their times in ms, as (a, b).
fn pair(
    flip: bool,
    mut a: impl FnMut() -> Result<Duration, String>,
    mut b: impl FnMut() -> Result<Duration, String>,
) -> Result<(f64, f64), String> {
    if flip {
        let y = b()?;
        Ok((ms(a()?), ms(y)))
    } else {
        let x = a()?;
        Ok((ms(x), ms(b()?)))
    }
}

/// Library and API series of one operation: both, and their paired difference.
#[derive(Default)]
struct Paired {
    lib: Vec<f64>,
    api: Vec<f64>,
}

impl Paired {
    fn push(&mut self, (l, a): (f64, f64)) {
        self.lib.push(l);
        self.api.push(a);
    }

    fn figures(self, what: &str) -> Vec<Figure> {
        let diff: Vec<f64> = self.api.iter().zip(&self.lib).map(|(a, l)| a - l).collect();
        let mut v = Vec::new();
        v.extend(with_p95(&format!("{what}: library"), self.lib));
        v.extend(with_p95(&format!("{what}: API"), self.api));
        v.extend(with_p95(
            &format!("{what}: API added latency (paired api - library)"),
            diff,
        ));
        v
    }
}

/// The 95th percentile (nearest rank) of `v`.
fn p95(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((v.len() as f64) * 0.95).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A series' figure and its p95 as a second figure.
fn with_p95(name: &str, samples: Vec<f64>) -> [Figure; 2] {
    let p = p95(samples.clone());
    [
        figure(name.to_string(), samples, "ms"),
        figure(format!("{name}: p95"), vec![p], "ms"),
    ]
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

fn create(h: &CairnHome, name: &str) -> Result<(), String> {
    let created = h
        .command(&sandbox_create_args(name))
        .output()
        .map_err(|e| e.to_string())?;
    if !created.status.success() {
        return Err(format!(
            "create {name}: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        ));
    }
    Ok(())
}

fn run(h: &CairnHome, opts: &Options) -> Result<Vec<Figure>, String> {
    let names: Vec<String> = (0..SANDBOXES).map(|i| format!("s{i}")).collect();
    for n in &names {
        create(h, n)?;
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
    // Each sandbox knows its name; each exec prints its number and the name it ran in.
    for n in &names {
        let cmd = format!("echo {n} > /root/me");
        let (_, r) = api_exec(
            &sock,
            n,
            &ExecBody {
                argv: None,
                command: Some(&cmd),
            },
        )?;
        if r.exit_code != 0 {
            return Err(format!("{n}: writing /root/me exited {}", r.exit_code));
        }
    }
    let home = Home::at(h.home.path()).map_err(|e| cairn_agent::error_text(&e))?;
    let a = &names[0];
    let vsock = h.dir(a).join("vsock.sock");
    // Warm every path once.
    retried(|| agent_exec(&vsock))?;
    retried(|| api_true(&sock, a, &mut SelfTimed::default()))?;
    retried(|| lib_true(&home, a))?;
    let mut timed = SelfTimed::default();
    let runs = opts.runs.max(5);
    let (mut direct, mut api, mut diff) = (vec![], vec![], vec![]);
    let (mut exec, mut get, mut read) = (Paired::default(), Paired::default(), Paired::default());
    // The part of the added latency that is the library's, not HTTP's: `sandbox::enter`, which
    // the server runs before the agent call (registry read, the sandbox's locks, the activity
    // write), timed here in the bench's own process once per run.
    let mut enter = Vec::new();
    // And, inside it, the liveness check (`/proc` reads and a `GET` on the VMM's API socket).
    let mut live = Vec::new();
    let record = home
        .registry()
        .and_then(|reg| Ok(reg.get(a)?))
        .map_err(|e| cairn_agent::error_text(&e))?;
    let get_uri = format!("/v1/sandboxes/{a}");
    let read_uri = format!("/v1/sandboxes/{a}/files?path=/root/me");
    for run in 0..runs {
        let flip = run % 2 == 1;
        let (d, x) = pair(
            flip,
            || retried(|| agent_exec(&vsock)),
            || retried(|| api_true(&sock, a, &mut timed)),
        )?;
        direct.push(d);
        api.push(x);
        diff.push(x - d);
        exec.push(pair(
            flip,
            || retried(|| lib_true(&home, a)),
            || retried(|| api_true(&sock, a, &mut timed)),
        )?);
        let (took, _) = lib(|| cairn_sandbox::sandbox::enter(&home, a))?;
        enter.push(ms(took));
        let t = Instant::now();
        let state = cairn_sandbox::sandbox::liveness(&record);
        live.push(ms(t.elapsed()));
        if state != cairn_sandbox::sandbox::Liveness::Running {
            return Err(format!(
                "{a} is {} in the middle of the bench",
                state.as_str()
            ));
        }
        get.push(pair(
            flip,
            || lib(|| ops::get(&home, a)).map(|(t, _)| t),
            || api_call(&sock, "GET", &get_uri, "").map(|(t, _)| t),
        )?);
        read.push(pair(
            flip,
            || lib(|| ops::read_file(&home, a, "/root/me")).map(|(t, _)| t),
            || api_call(&sock, "GET", &read_uri, "").map(|(t, _)| t),
        )?);
    }
    let mut figs = timed.figures();
    figs.extend(with_p95(
        "of which sandbox::enter (library, timed in the bench)",
        enter,
    ));
    figs.extend(with_p95(
        "of which sandbox::liveness (VMM API round trip, timed in the bench)",
        live,
    ));
    figs.extend(with_p95("exec `true` through the agent", direct.clone()));
    figs.extend(with_p95("exec `true` through cairn serve", api.clone()));
    figs.extend(with_p95("API added latency (paired api - agent)", diff));
    let (dm, am) = (
        figure(String::new(), direct.clone(), "ms"),
        figure(String::new(), api.clone(), "ms"),
    );
    figs.push(figure(
        "API added latency (median - median)".into(),
        vec![am.median - dm.median],
        "ms",
    ));
    figs.push(figure(
        "API added latency (p95 - p95)".into(),
        vec![p95(api) - p95(direct)],
        "ms",
    ));
    figs.extend(exec.figures("exec `true`"));
    figs.extend(get.figures("GET /v1/sandboxes/NAME (no guest)"));
    figs.extend(read.figures("files read /root/me"));
    let t = Instant::now();
    let handles: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let sock = sock.clone();
            let name = names[i % SANDBOXES].clone();
            std::thread::spawn(move || {
                let cmd = format!("echo {i} $(cat /root/me)");
                let (took, r) = api_exec(
                    &sock,
                    &name,
                    &ExecBody {
                        argv: None,
                        command: Some(&cmd),
                    },
                )?;
                let want = format!("{i} {name}\n");
                if r.exit_code != 0 || r.stdout != want {
                    return Err(format!(
                        "exec {i} in {name}: exit {} stdout {:?}",
                        r.exit_code, r.stdout
                    ));
                }
                Ok(ms(took))
            })
        })
        .collect();
    let (mut each, mut errors) = (Vec::new(), Vec::new());
    for hd in handles {
        match hd.join().map_err(|_| "a thread panicked".to_string())? {
            Ok(t) => each.push(t),
            Err(e) => errors.push(e),
        }
    }
    let wall = ms(t.elapsed());
    for e in &errors {
        eprintln!("api: concurrent exec failed: {e}");
    }
    if each.is_empty() {
        return Err(format!(
            "every concurrent exec failed: {}",
            errors.join("; ")
        ));
    }
    let label = format!("{CONCURRENT} concurrent execs over {SANDBOXES} sandboxes");
    figs.extend(with_p95(&format!("{label}: each"), each));
    figs.push(figure(format!("{label}: all done"), vec![wall], "ms"));
    figs.push(figure(
        format!("{label}: errors"),
        vec![errors.len() as f64],
        "count",
    ));
    Ok(figs)
}

/// `cairn-bench api [--runs N]`.
pub fn api(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let mut h = CairnHome::new();
    h.verbose = false;
    out.take("api", run(&h, opts));
    out
}
