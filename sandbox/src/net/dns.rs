//! The per-sandbox DNS forwarder (`cairn __net-dns DIR`, started by cairn).
//!
//! It listens on the sandbox's gateway address, port 53 (UDP), on the host. For each query it
//! checks the name against the sandbox's policy (`policy.json`, re-read when it changes): a
//! denied name is answered REFUSED; an allowed one is forwarded to the upstream resolvers, and
//! the IPv4 addresses in the answer are added to the table's `allowed` set (for at least
//! [`MIN_ALLOW_SECS`]) before the answer goes back, so that the guest's connect that follows
//! is let through. Each such address is logged in `net-resolved.log` (expiry, name, address),
//! from which `cairn policy set` rebuilds the set for a new policy.

use super::{io_err, nft, policy::Policy, NetError, NetSpec};
use crate::sandbox::Paths;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The least time an address resolved for an allowed name stays reachable.
pub const MIN_ALLOW_SECS: u64 = 600;

fn log_path(dir: &Path) -> PathBuf {
    dir.join("net-resolved.log")
}

fn pid_path(paths: &Paths) -> PathBuf {
    paths.dir.join("net-dns.pid")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The addresses resolved for names `policy` allows, with the seconds each has left.
pub fn allowed_addresses(paths: &Paths, policy: &Policy) -> Vec<(Ipv4Addr, u64)> {
    let text = fs::read_to_string(log_path(&paths.dir)).unwrap_or_default();
    let now = now();
    let mut out: Vec<(Ipv4Addr, u64)> = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(exp), Some(name), Some(addr)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let (Ok(exp), Ok(addr)) = (exp.parse::<u64>(), addr.parse::<Ipv4Addr>()) else {
            continue;
        };
        if exp <= now || !policy.allows(name) {
            continue;
        }
        match out.iter_mut().find(|(a, _)| *a == addr) {
            Some(e) => e.1 = e.1.max(exp - now),
            None => out.push((addr, exp - now)),
        }
    }
    out
}

/// The forwarder's pid, if it runs.
pub fn running(paths: &Paths) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_path(paths))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_forwarder_of(pid, &paths.dir).then_some(pid)
}

/// Whether `pid` is a forwarder serving `dir`.
pub fn is_forwarder_of(pid: u32, dir: &Path) -> bool {
    forwarder_dir(pid).is_some_and(|d| d == dir)
}

/// The sandbox directory a forwarder process serves, if `pid` is one.
pub fn forwarder_dir(pid: u32) -> Option<PathBuf> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let i = args.iter().position(|a| *a == b"__net-dns")?;
    let dir = args.get(i + 1)?;
    Some(PathBuf::from(String::from_utf8_lossy(dir).into_owned()))
}

/// Every forwarder process on the host: (pid, directory).
pub fn all_forwarders() -> Vec<(u32, PathBuf)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, forwarder_dir(pid)?)))
        .collect()
}

/// Starts the forwarder for the sandbox at `paths` (detached, in its own session; its output
/// goes to `net-dns.log`) and waits until it listens.
pub fn spawn(paths: &Paths) -> Result<(), NetError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(io_err("find the cairn executable"))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.dir.join("net-dns.log"))
        .map_err(io_err("open net-dns.log"))?;
    let log2 = log.try_clone().map_err(io_err("open net-dns.log"))?;
    let dir = fs::canonicalize(&paths.dir).map_err(io_err("resolve the sandbox directory"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__net-dns")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io_err("start the DNS forwarder"))?;
    let pid = child.id();
    fs::write(pid_path(paths), pid.to_string()).map_err(io_err("write net-dns.pid"))?;
    let ready = paths.dir.join("net-dns.ready");
    for _ in 0..200 {
        if fs::read_to_string(&ready).is_ok_and(|p| p.trim() == pid.to_string()) {
            return Ok(());
        }
        if !is_forwarder_of(pid, &dir) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(NetError::Tool(
        "DNS forwarder".into(),
        format!(
            "did not start (see {})",
            paths.dir.join("net-dns.log").display()
        ),
    ))
}

/// Ends the forwarder (SIGTERM).
pub fn stop(paths: &Paths) {
    if let Some(pid) = running(paths) {
        kill(pid);
    }
    let _ = fs::remove_file(pid_path(paths));
}

/// SIGTERM to `pid`.
pub fn kill(pid: u32) {
    // SAFETY: kill(2) on a pid we checked is a forwarder.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

struct Shared {
    dir: PathBuf,
    spec: NetSpec,
    policy: Mutex<(Option<SystemTime>, Policy)>,
}

impl Shared {
    /// The policy, re-read when `policy.json` changed.
    fn policy(&self) -> Policy {
        let p = self.dir.join("policy.json");
        let mtime = fs::metadata(&p).and_then(|m| m.modified()).ok();
        let mut cur = match self.policy.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        if cur.0 != mtime {
            let fresh = fs::read_to_string(&p)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            *cur = (mtime, fresh);
        }
        cur.1.clone()
    }
}

/// The forwarder's main loop (`cairn __net-dns DIR`). Returns when the sandbox directory is gone.
pub fn serve(dir: &Path) -> Result<(), NetError> {
    let paths = crate::sandbox::Paths::at(dir.to_path_buf());
    let spec =
        super::load(&paths)?.ok_or_else(|| NetError::NoNetwork(dir.display().to_string()))?;
    let sock = UdpSocket::bind((spec.gateway, 53))
        .map_err(io_err(format!("listen on {}:53", spec.gateway)))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err("socket timeout"))?;
    fs::write(dir.join("net-dns.ready"), std::process::id().to_string())
        .map_err(io_err("write net-dns.ready"))?;
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        spec,
        policy: Mutex::new((None, Policy::default())),
    });
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => {
                if !dir.join("net.json").exists() {
                    return Ok(());
                }
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (shared, sock) = (Arc::clone(&shared), sock.try_clone());
        let Ok(sock) = sock else { continue };
        std::thread::spawn(move || {
            if let Some(answer) = answer(&shared, &query) {
                let _ = sock.send_to(&answer, from);
            }
        });
    }
}

/// The answer to one query: REFUSED for a denied name, else the upstream's answer (with its
/// addresses let through first); SERVFAIL when no upstream answers.
fn answer(shared: &Shared, query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let name = msg.queries().first()?.name().to_ascii();
    let policy = shared.policy();
    if !policy.allows(&name) {
        eprintln!("refused {name}");
        return reply(&msg, ResponseCode::Refused);
    }
    for up in &shared.spec.upstream {
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
            continue;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(3)));
        if sock.send_to(query, SocketAddr::from((*up, 53))).is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        buf.truncate(n);
        if let Ok(resp) = Message::from_vec(&buf) {
            let addrs: Vec<(Ipv4Addr, u64)> = resp
                .answers()
                .iter()
                .filter_map(|r| match r.data() {
                    Some(RData::A(a)) => Some((a.0, u64::from(r.ttl()))),
                    _ => None,
                })
                .collect();
            allow(shared, &name, &addrs);
        }
        return Some(buf);
    }
    reply(&msg, ResponseCode::ServFail)
}

/// Logs the addresses resolved for `name` and adds them to the allowed set.
fn allow(shared: &Shared, name: &str, addrs: &[(Ipv4Addr, u64)]) {
    if addrs.is_empty() {
        return;
    }
    let now = now();
    let mut lines = String::new();
    for (a, ttl) in addrs {
        let secs = (*ttl).max(MIN_ALLOW_SECS);
        lines.push_str(&format!(
            "{} {} {a}\n",
            now + secs,
            name.trim_end_matches('.')
        ));
        if let Err(e) = nft::allow(&shared.spec.table(), *a, secs) {
            eprintln!("allowing {a} for {name}: {e}");
        }
    }
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(&shared.dir))
    {
        let _ = f.write_all(lines.as_bytes());
    }
}

fn reply(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code)
        .add_queries(query.queries().to_vec());
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    #[test]
    fn refusals_keep_the_question_and_id() {
        let mut q = Message::new();
        q.set_id(4242).add_query(Query::query(
            Name::from_ascii("denied.example.").unwrap(),
            RecordType::A,
        ));
        let r = Message::from_vec(&reply(&q, ResponseCode::Refused).unwrap()).unwrap();
        assert_eq!(r.id(), 4242);
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert_eq!(r.message_type(), MessageType::Response);
        assert_eq!(r.queries()[0].name().to_ascii(), "denied.example.");
    }

    #[test]
    fn the_resolved_log_yields_addresses_of_allowed_names_only() {
        let home = tempfile::tempdir().unwrap();
        let paths = crate::sandbox::Paths::at(home.path().to_path_buf());
        let later = now() + 100;
        fs::write(
            log_path(home.path()),
            format!(
                "{later} a.example 198.18.77.80\n{later} b.example 198.18.77.81\n1 a.example 198.18.77.82\ngarbage\n"
            ),
        )
        .unwrap();
        let mut p = Policy::default();
        assert_eq!(allowed_addresses(&paths, &p).len(), 2);
        p.push(super::super::policy::Action::Deny, "b.example")
            .unwrap();
        let a = allowed_addresses(&paths, &p);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, Ipv4Addr::new(198, 18, 77, 80));
        assert!(a[0].1 <= 100 && a[0].1 > 90);
    }
}
