//! Making a restored guest its own machine. Guests restored from one checkpoint (forks, creates
//! from a golden checkpoint, a sandbox woken twice from the same checkpoint) start with the same
//! kernel RNG state, hostname and machine-id. After a restore the CLI sends the agent host
//! entropy (`Identity` op: `RNDADDENTROPY`, then `RNDRESEEDCRNG`); a new sandbox also gets its
//! name as hostname, a fresh `/etc/machine-id` and new SSH host keys (where the image has any).
//!
//! The guest kernel (6.1, no ACPI) cannot be told by a VM generation ID device: its `vmgenid`
//! driver binds only to an ACPI device (`VM_GEN_COUNTER`); device-tree discovery arrived in
//! 6.10, and an x86 guest gets a device tree only through `setup_data`. See docs/images.md.

use crate::sandbox::{Paths, SandboxError};
use cairn_agent::client::{Client, ClientError};
use cairn_agent::proto::{IdentityRequest, RestoredRequest};
use std::fs::{self, File};
use std::io::{self, Read};

/// Bytes of host entropy sent per restore (512 bits: twice the kernel pool's size).
pub const ENTROPY_BYTES: usize = 64;

fn host_random(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// A random machine-id as systemd writes it: 128 bits, version-4 UUID bits, 32 hex digits.
pub fn new_machine_id() -> io::Result<String> {
    let mut b = host_random(16)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The request that reseeds the guest's RNG and, with `name`, gives it that hostname and a new
/// machine-id.
pub fn request(name: Option<&str>) -> io::Result<IdentityRequest> {
    Ok(IdentityRequest {
        entropy: host_random(ENTROPY_BYTES)?,
        hostname: name.map(str::to_owned),
        machine_id: name.map(|_| new_machine_id()).transpose()?,
    })
}

/// Sends `request(name)` to the agent. An agent too old for the op (or any failure) is
/// reported as a note: the sandbox works, but shares that state with its twins.
pub fn apply(client: &mut Client, sandbox: &str, name: Option<&str>) {
    let result = request(name).map_err(|e| e.to_string()).and_then(|req| {
        client
            .identity(&req)
            .map_err(|e| cairn_agent::error_text(&e))
    });
    if let Err(e) = result {
        eprintln!(
            "cairn: note: {sandbox}: could not reseed the guest's RNG or set its identity: {e} \
             (hint: an image made before the agent's Identity op; rebuild it)"
        );
    }
}

/// [`apply`] with a new hostname (`sandbox`) and machine-id, over a fresh connection to the
/// running sandbox's agent (after a fork's start).
pub fn apply_to(home: &crate::sandbox::Home, sandbox: &str) {
    let paths = home.paths(sandbox);
    match Client::connect_uds_timeout(
        &paths.vsock,
        cairn_agent::proto::AGENT_PORT,
        std::time::Duration::from_secs(10),
    ) {
        Ok(mut c) => apply(&mut c, sandbox, Some(sandbox)),
        Err(e) => eprintln!(
            "cairn: note: {sandbox}: could not set its identity: {}",
            cairn_agent::error_text(&e)
        ),
    }
}

/// Records that the sandbox at `paths` must take the hostname `name` (and a new machine-id) at
/// its next restore: a create from a golden checkpoint and a fork write it before their VMM
/// starts, and [`after_restore`] removes it once the guest has its identity. Until then, the
/// guest still has the identity of the checkpoint it came from, so nothing may run in it: see
/// [`crate::sandbox::settle_locked`].
pub fn set_pending(paths: &Paths, name: &str) -> Result<(), SandboxError> {
    let tmp = paths.identity_pending.with_extension("tmp");
    fs::write(&tmp, name)
        .and_then(|()| fs::rename(&tmp, &paths.identity_pending))
        .map_err(crate::sandbox::io_err(format!(
            "write {}",
            paths.identity_pending.display()
        )))
}

/// The hostname a restore must still give the guest at `paths`, if [`set_pending`] recorded one
/// that no restore has applied yet.
pub fn pending(paths: &Paths) -> Option<String> {
    let name = fs::read_to_string(&paths.identity_pending).ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn clear_pending(paths: &Paths) {
    let _ = fs::remove_file(&paths.identity_pending);
}

/// The host's wall clock, nanoseconds since the Unix epoch.
fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// After a restore, once the agent answered on `agent`'s connection: the guest's clock, its
/// network (when it does not have this sandbox's yet: a fork's or a golden create's first
/// start) and its identity (reseeded RNG; with a hostname still [`pending`], that hostname and
/// a new machine-id, after which it is no longer pending) in one `Restored` request on that
/// same connection, the one round trip a restore needs. An agent older than the request gets
/// `SetClock`, `NetConfigure` and `Identity` as before, each on its own connection; so does any
/// agent after a failed `Restored`. As before, only the network failing fails; the clock and
/// the identity failing are notes.
pub fn after_restore(paths: &Paths, agent: &mut Client, sandbox: &str) -> Result<(), SandboxError> {
    let pending_name = pending(paths);
    let name = pending_name.as_deref();
    let net = crate::net::guest::pending(paths);
    let identity = match request(name) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: note: {sandbox}: no host entropy for the guest: {e}");
            IdentityRequest::default()
        }
    };
    let req = RestoredRequest {
        clock_unix_nanos: Some(now_unix_nanos()),
        net: net.as_ref().map(|(cfg, _)| cfg.clone()),
        identity,
    };
    let report = match agent.restored(&req) {
        Ok(report) => report,
        Err(e) => {
            if !matches!(e, ClientError::Unsupported(_)) {
                eprintln!(
                    "cairn: note: {sandbox}: {} (sending its parts one by one)",
                    cairn_agent::error_text(&e)
                );
            }
            crate::net::guest::after_agent(paths, true)?;
            apply(agent, sandbox, name);
            clear_pending(paths);
            return Ok(());
        }
    };
    if std::env::var_os("CAIRN_TIMES").is_some() {
        let [clock, id, netw] = report.micros.map(|us| f64::from(us) / 1e3);
        eprintln!(
            "{sandbox}: in the guest: clock {clock:.1} ms, identity {id:.1} ms, network {netw:.1} ms"
        );
    }
    if let Some(e) = &report.clock_error {
        eprintln!("cairn: note: the guest clock was not set ({e}); it may be behind");
    }
    if let Some(e) = &report.identity_error {
        eprintln!(
            "cairn: note: {sandbox}: could not reseed the guest's RNG or set its identity: {e}"
        );
    }
    if let Some(e) = report.net_error {
        return Err(ClientError::Agent(format!("configure the guest network: {e}")).into());
    }
    if let Some((_, marker)) = &net {
        crate::net::guest::mark_applied(paths, marker);
    }
    clear_pending(paths);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use cairn_agent::proto::{AgentMsg, FrameWriter, Hello, RestoredReport};
    use std::io::Write;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    /// A VMM's vsock socket (`CONNECT 52` / `OK`) with an agent behind it that knows only the
    /// requests whose variant index is in `knows`: it answers them (`Restored` with an empty
    /// report, the others `Done`) and drops the connection on any other, as agents before
    /// `Restored` did. Returns the variant index of every request it got, in order.
    fn fake_agent(paths: &Paths, knows: &'static [u8]) -> Arc<Mutex<Vec<u8>>> {
        std::fs::create_dir_all(&paths.dir).unwrap();
        let listener = UnixListener::bind(&paths.vsock).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut raw = stream.unwrap();
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while raw.read_exact(&mut b).is_ok() && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 52");
                raw.write_all(b"OK 1073741824\n").unwrap();
                let mut w = FrameWriter::new(raw.try_clone().unwrap());
                w.write(&Hello::ours("cairn-agent")).unwrap();
                let mut frame = || {
                    let mut len = [0u8; 4];
                    raw.read_exact(&mut len).ok()?;
                    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
                    raw.read_exact(&mut payload).ok()?;
                    Some(payload)
                };
                let _hello = frame();
                let Some(req) = frame() else { continue };
                log.lock().unwrap().push(req[0]);
                if knows.contains(&req[0]) {
                    let answer = match req[0] {
                        20 => AgentMsg::Restored(RestoredReport::default()),
                        _ => AgentMsg::Done,
                    };
                    w.write(&answer).unwrap();
                }
            }
        });
        seen
    }

    fn connect(paths: &Paths) -> Client {
        Client::connect_uds(&paths.vsock, cairn_agent::proto::AGENT_PORT).unwrap()
    }

    #[test]
    fn a_restore_is_one_request_and_an_older_agent_gets_the_old_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let home = crate::sandbox::Home::at(tmp.path()).unwrap();
        // An agent that knows `Restored`: one connection, one request.
        let paths = home.paths("new");
        let seen = fake_agent(&paths, &[20]);
        set_pending(&paths, "new").unwrap();
        after_restore(&paths, &mut connect(&paths), "new").unwrap();
        assert_eq!(*seen.lock().unwrap(), [20]);
        assert_eq!(pending(&paths), None, "the guest has its name");
        // One from before it (SetClock 14, Identity 15): `Restored` is dropped, and the clock
        // and the identity follow on connections of their own. (No network: no `net.json`.)
        let paths = home.paths("old");
        let seen = fake_agent(&paths, &[14, 15]);
        set_pending(&paths, "old").unwrap();
        after_restore(&paths, &mut connect(&paths), "old").unwrap();
        assert_eq!(*seen.lock().unwrap(), [20, 14, 15]);
        assert_eq!(pending(&paths), None);
    }

    #[test]
    fn machine_ids_are_fresh_v4_hex() {
        let a = new_machine_id().unwrap();
        let b = new_machine_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(&a[12..13], "4");
        let r = request(Some("dev")).unwrap();
        assert_eq!(r.entropy.len(), ENTROPY_BYTES);
        assert_eq!(r.hostname.as_deref(), Some("dev"));
        assert!(request(None).unwrap().machine_id.is_none());
    }
}
