//! `cairn-bench network`: guest -> host TCP throughput through the sandbox network (tap,
//! bridge, veth, NAT), on the Linux guest. Root only.
//!
//! Like the network test, the bench makes two namespaces: `net-b<pid>-h`, where `cairn` runs
//! (through `nsenter --net`), and `net-b<pid>-i` behind its default route, holding a TCP sink
//! (python3) on 198.18.0.2:9000. The guest's bash writes `--mib` MiB of zeros to
//! `/dev/tcp/198.18.0.2/9000` (`head -c`); the sink times first byte to end of stream, so the
//! guest's process start-up is not counted. No QEMU side yet.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cairn_tests::sandbox::CairnHome;

use crate::util::{figure, Options, Outcome};

const SINK: &str = r#"import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.2", 9000)); s.listen()
while True:
    c, _ = s.accept(); n = 0; t0 = None
    while True:
        b = c.recv(1 << 20)
        if not b: break
        if t0 is None: t0 = time.monotonic()
        n += len(b)
    dt = time.monotonic() - (t0 or time.monotonic())
    print(n, dt, flush=True); c.close()
"#;

/// MiB sent per run.
/// (1 MiB: the guest kernel runs emulated on the development host, at about 0.1 MiB/s.)
const MIB: u64 = 1;

fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-ec", cmd])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

struct Namespaces(String);

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip netns pids {0}-i | xargs -r kill; ip netns del {0}-h; ip netns del {0}-i",
            self.0
        ));
    }
}

pub fn network(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        out.failures
            .push("network: needs root (namespaces, nftables)".into());
        return out;
    }
    let tag = format!("net-b{}", std::process::id());
    let ns = Namespaces(tag.clone());
    if let Err(e) = sh(&format!(
        "ip netns add {tag}-h; ip netns add {tag}-i
         ip link add {tag}a netns {tag}-h type veth peer name {tag}b netns {tag}-i
         ip -n {tag}-h addr add 198.18.0.1/24 dev {tag}a; ip -n {tag}-h link set {tag}a up
         ip -n {tag}-h link set lo up; ip -n {tag}-h route add default via 198.18.0.2
         ip -n {tag}-i addr add 198.18.0.2/24 dev {tag}b; ip -n {tag}-i link set {tag}b up"
    )) {
        out.failures.push(format!("namespaces: {e}"));
        return out;
    }
    let sink = Command::new("ip")
        .args(["netns", "exec", &format!("{tag}-i"), "python3", "-c", SINK])
        .stdout(Stdio::piped())
        .spawn();
    let Ok(mut sink) = sink else {
        out.failures.push("cannot start the python3 sink".into());
        return out;
    };
    let Some(stdout) = sink.stdout.take() else {
        out.failures.push("no sink output".into());
        return out;
    };
    let mut lines = BufReader::new(stdout).lines();
    std::env::set_var("CAIRN_NET_DNS", "198.18.0.2");
    let mut h = CairnHome::new();
    h.verbose = false;
    h.netns = Some(format!("{tag}-h"));
    let created = h.run(&["create", "bn", "--mem", "256", "--idle-timeout", "0"]);
    if !created.status.success() {
        out.failures.push(format!(
            "cairn create: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        ));
        return out;
    }
    let script = format!("head -c {}M /dev/zero > /dev/tcp/198.18.0.2/9000", MIB);
    let mut samples = Vec::new();
    for _ in 0..opts.runs.max(1) {
        let (code, text) = h.exec("bn", &["bash", "-c", &script]);
        if code != 0 {
            out.failures
                .push(format!("guest send exited {code}: {text}"));
            continue;
        }
        let Some(Ok(line)) = lines.next() else {
            out.failures.push("the sink said nothing".into());
            break;
        };
        let mut w = line.split_whitespace();
        let (Some(Ok(n)), Some(Ok(secs))) = (
            w.next().map(str::parse::<f64>),
            w.next().map(str::parse::<f64>),
        ) else {
            out.failures.push(format!("sink line {line:?}"));
            continue;
        };
        if secs > 0.0 {
            samples.push(n / (1u64 << 20) as f64 / secs);
        }
    }
    if !samples.is_empty() {
        out.figures.push(figure(
            format!("guest -> host TCP, {MIB} MiB, cairn (tap+bridge+veth+NAT)"),
            samples,
            "MiB/s",
        ));
    }
    drop(h);
    let _ = sink.kill();
    let _ = sink.wait();
    drop(ns);
    out
}
