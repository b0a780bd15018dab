//! Making a restored guest its own machine. Guests restored from one checkpoint (forks, creates
//! from a golden checkpoint, a sandbox woken twice from the same checkpoint) start with the same
//! kernel RNG state, hostname and machine-id. After a restore the CLI sends the agent host
//! entropy (`Identity` op: `RNDADDENTROPY`, then `RNDRESEEDCRNG`); a new sandbox also gets its
//! name as hostname, a fresh `/etc/machine-id` and new SSH host keys (where the image has any).
//!
//! The guest kernel (6.1, no ACPI) cannot be told by a VM generation ID device: its `vmgenid`
//! driver binds only to an ACPI device (`VM_GEN_COUNTER`); device-tree discovery arrived in
//! 6.10, and an x86 guest gets a device tree only through `setup_data`. See docs/images.md.

use cairn_agent::client::Client;
use cairn_agent::proto::IdentityRequest;
use std::fs::File;
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

#[cfg(test)]
mod tests {
    use super::*;

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
