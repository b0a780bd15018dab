//! Firecracker conformance: requests built from Firecracker's API spec and API tests
//! (`fc_conformance/cases.rs`) are replayed against `cairn-vmm`, and each answer's status and
//! shape is checked against what Firecracker v1.16.1 gives: an error is `{"fault_message": "..."}`
//! alone, a 200 is a JSON object with the listed keys.
//!
//! With `FIRECRACKER=/path/to/firecracker` set, every case also runs against Firecracker and the
//! two are compared, which keeps the table honest. Differences cairn still has are listed in the
//! table (`known`) and in docs/vmm.md; any other difference fails the test.
//!
//! No case boots a VM, so no KVM is needed. Cases that create tap devices need root; the VMMs
//! then run in a private network namespace (`unshare -n`), so no tap reaches the host's.

#[path = "fc_conformance/cases.rs"]
mod cases;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cases::{Case, Step, CASES};

/// One VMM process serving its API socket.
struct Vmm {
    child: Child,
    sock: PathBuf,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn spawn(program: &Path, extra: &[&str], dir: &Path, in_netns: bool) -> Vmm {
    let sock = dir.join("api.sock");
    let mut cmd = if in_netns {
        let mut c = Command::new("unshare");
        c.arg("-n").arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.arg("--api-sock")
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    cairn_tests::process::http::wait_for_socket(&sock, Duration::from_secs(10));
    Vmm { child, sock }
}

/// The files a case refers to.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in [("kernel", 4096), ("rootfs", 1 << 20), ("scratch", 1 << 20)] {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_len(len).unwrap();
        }
        Fixture { dir }
    }

    fn expand(&self, text: &str) -> String {
        let d = self.dir.path().display().to_string();
        text.replace("{dir}", &d)
            .replace("{kernel}", &format!("{d}/kernel"))
            .replace("{rootfs}", &format!("{d}/rootfs"))
            .replace("{scratch}", &format!("{d}/scratch"))
    }

    fn body(&self, body: &str) -> String {
        if let Some(n) = body.strip_prefix("{big:").and_then(|r| r.strip_suffix('}')) {
            let n: usize = n.parse().unwrap();
            return format!("{{\"k\": \"{}\"}}", "x".repeat(n));
        }
        self.expand(body)
    }
}

/// What one step got: status, and a shape problem if any.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    status: u16,
    shape: Option<String>,
    keys: Vec<String>,
}

fn run_step(vmm: &Vmm, fx: &Fixture, step: &Step) -> Outcome {
    if step.method == "EXISTS" {
        let exists = Path::new(&fx.expand(step.path)).exists();
        return Outcome {
            status: if exists { 200 } else { 404 },
            shape: None,
            keys: vec![],
        };
    }
    let path = fx.expand(step.path);
    let body = step.body.map(|b| fx.body(b));
    let reply = if step.body.is_some_and(|b| b.starts_with("{big:")) {
        send_oversized(&vmm.sock, step.method, &path, body.as_deref().unwrap_or(""))
    } else {
        cairn_tests::process::api(&vmm.sock)
            .with_timeout(Duration::from_secs(20))
            .send(step.method, &path, body.as_deref().map(str::as_bytes))
            .unwrap_or_else(|e| panic!("{} {path}: {e}", step.method))
    };
    let json: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let keys = match &json {
        Some(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => vec![],
    };
    let shape = match reply.status {
        204 if !reply.body.is_empty() => Some(format!("204 with a body: {}", reply.text())),
        200 => match &json {
            Some(serde_json::Value::Object(_)) => None,
            _ => Some(format!("200 without a JSON object: {}", reply.text())),
        },
        400..=599 => match &json {
            Some(serde_json::Value::Object(map))
                if map.len() == 1 && map.get("fault_message").is_some_and(|v| v.is_string()) =>
            {
                None
            }
            // micro_http's own framing errors (a body over the size limit) carry {"error": ...}.
            Some(serde_json::Value::Object(map))
                if map.len() == 1 && map.get("error").is_some_and(|v| v.is_string()) =>
            {
                None
            }
            // ...which for an oversized body holds a raw newline, so it is not even JSON.
            None if reply.text().trim_start().starts_with("{ \"error\": ") => None,
            _ => Some(format!("error without a fault_message: {}", reply.text())),
        },
        _ => None,
    };
    Outcome {
        status: reply.status,
        shape,
        keys,
    }
}

/// Sends a body the server may refuse before reading it all: write errors are ignored and the
/// reply is read as far as it comes.
fn send_oversized(sock: &Path, method: &str, path: &str, body: &str) -> cairn_vmm_api::RawReply {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if rest.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Only the first reply: Firecracker answers the oversized request, then reads the rest of
    // the body as a second request and answers that too.
    let body = text
        .split_once("\r\n\r\n")
        .map(|(head, b)| {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(b.len());
            b.as_bytes()[..len.min(b.len())].to_vec()
        })
        .unwrap_or_default();
    cairn_vmm_api::RawReply { status, body }
}

fn run_case(program: &Path, extra: &[&str], case: &Case) -> Vec<Outcome> {
    let fx = Fixture::new();
    let vmm = spawn(program, extra, fx.dir.path(), case.needs_root);
    case.steps
        .iter()
        .map(|step| run_step(&vmm, &fx, step))
        .collect()
}

fn describe(case: &Case, i: usize, step: &Step) -> String {
    format!(
        "{} [{}] step {i}: {} {} {}",
        case.name,
        case.from,
        step.method,
        step.path,
        step.body.unwrap_or("")
    )
}

#[test]
fn cairn_answers_as_firecracker_does() {
    let cairn = PathBuf::from(env!("CARGO_BIN_EXE_cairn-vmm"));
    let firecracker = std::env::var_os("FIRECRACKER").map(PathBuf::from);
    let mut failures = vec![];
    let mut known = 0;
    let mut steps = 0;
    for case in CASES {
        if case.needs_root && !is_root() {
            println!("SKIP {}: needs root (it creates tap devices)", case.name);
            continue;
        }
        let ours = run_case(&cairn, &["--level", "Off"], case);
        // A Firecracker built for glibc with the musl seccomp policy is killed by its own
        // filters: FIRECRACKER_NO_SECCOMP=1 runs it without (docs/benchmarks.md).
        let fc_args: &[&str] = if std::env::var("FIRECRACKER_NO_SECCOMP").as_deref() == Ok("1") {
            &["--level", "Off", "--no-seccomp"]
        } else {
            &["--level", "Off"]
        };
        let theirs = firecracker.as_deref().map(|fc| run_case(fc, fc_args, case));
        for (i, step) in case.steps.iter().enumerate() {
            steps += 1;
            let what = describe(case, i, step);
            let got = &ours[i];
            if let Some(fc) = theirs.as_ref().map(|t| &t[i]) {
                if fc.status != step.status {
                    failures.push(format!(
                        "{what}: the table says Firecracker answers {}, it answered {}",
                        step.status, fc.status
                    ));
                }
                if let Some(shape) = &fc.shape {
                    failures.push(format!("{what}: Firecracker's reply: {shape}"));
                }
                if fc.status == 200 && got.status == 200 {
                    let missing: Vec<&String> =
                        fc.keys.iter().filter(|k| !got.keys.contains(k)).collect();
                    if !missing.is_empty() {
                        failures.push(format!(
                            "{what}: cairn's reply lacks Firecracker's keys {missing:?}"
                        ));
                    }
                }
            }
            let expected = match step.known {
                Some((status, why)) => {
                    known += 1;
                    println!(
                        "KNOWN {what}: cairn {status}, Firecracker {}: {why}",
                        step.status
                    );
                    status
                }
                None => step.status,
            };
            if got.status != expected {
                failures.push(format!(
                    "{what}: cairn answered {}, expected {expected}{}",
                    got.status,
                    if step.known.is_some() {
                        " (a listed known difference: if it is fixed, remove it from the table)"
                    } else {
                        ""
                    }
                ));
            }
            if let Some(shape) = &got.shape {
                failures.push(format!("{what}: cairn's reply: {shape}"));
            }
            if got.status == 200 {
                for key in step.keys {
                    if !got.keys.iter().any(|k| k == key) {
                        failures.push(format!("{what}: cairn's reply lacks the key {key}"));
                    }
                }
            }
        }
    }
    println!(
        "{steps} steps, {known} known differences, compared with Firecracker: {}",
        firecracker.is_some()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
