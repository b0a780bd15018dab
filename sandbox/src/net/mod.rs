//! The sandbox network: a network namespace per sandbox, NAT on the host, a DNS forwarder that
//! enforces the egress policy. See `docs/network.md`.
//!
//! ```text
//!  guest eth0 ── virtio-net ── tap0 ─┐ netns cairn-ID (the VMM runs here)
//!                                    br0 ── cpID ══ veth ══ cnID (host: gateway, resolver)
//!                                                             │ nftables table ip cairn-ID:
//!                                                             │ forward policy, input guard, NAT
//! ```
//! - [`pool`]: one /30 per sandbox from `CAIRN_NET_POOL`, checked against the host's routes;
//! - [`link`]: making and removing the namespace, veth, bridge and tap (`ip`);
//! - [`nft`]: the sandbox's nftables table;
//! - [`policy`]: allow/deny rules on domain patterns; [`dns`]: the forwarder that applies them;
//! - [`guest`]: what the agent is told after a boot or restore (address, MAC, clock);
//! - [`leftovers`]: what `cairn doctor` looks for after a crash;
//! - [`rootless`]: a sandbox made by a user who is not root reaches the network through pasta.
//!
//! The spec of a sandbox's network is `net.json` in its directory (this module owns it); its
//! address, MAC and namespace are also in the registry row (`net_*` columns).

pub mod dns;
pub mod guest;
pub mod leftovers;
pub mod link;
pub mod nft;
pub mod policy;
pub mod policy_ops;
pub mod pool;
pub mod rootless;

use crate::sandbox::Paths;
use cairn_vmm_api::config::{NetConfig, VmConfig};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Host-side veth names start with this (`cn` + the sandbox's network id).
pub const VETH_PREFIX: &str = "cn";
/// Namespace and nftables table names start with this.
pub const NAME_PREFIX: &str = "cairn-";
/// The tap in every sandbox namespace (the same name in each, so a fork's VMM reopens it).
pub const TAP: &str = "tap0";

/// Why a network operation failed. One line each, with a hint where one helps.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `CAIRN_NET_POOL` is not a prefix.
    #[error(
        "CAIRN_NET_POOL {0:?} is not an IPv4 prefix between /8 and /28 (hint: e.g. 10.213.0.0/16)"
    )]
    BadPool(String),
    /// The pool overlaps a host route.
    #[error("the sandbox address pool {pool} overlaps the host route {route} (dev {dev}) (hint: set CAIRN_NET_POOL to a free private prefix, e.g. 10.214.0.0/16)")]
    PoolOverlap {
        /// The pool.
        pool: String,
        /// The route.
        route: String,
        /// Its device.
        dev: String,
    },
    /// Every /30 of the pool is taken.
    #[error(
        "the address pool {0} is full (hint: remove sandboxes, or set a larger CAIRN_NET_POOL)"
    )]
    PoolFull(String),
    /// A policy pattern is not a domain pattern.
    #[error("{0:?} is not a domain pattern (hint: a name like github.com, a wildcard like '*.npmjs.org', or '*')")]
    BadPattern(String),
    /// Unknown preset.
    #[error("no policy preset {0:?} (hint: open, none, dev)")]
    BadPreset(String),
    /// Policy on a sandbox without network.
    #[error("sandbox {0:?} has no network (hint: it was created with --no-network; create a new sandbox without it)")]
    NoNetwork(String),
    /// A policy on a sandbox made without root.
    #[error("sandbox {0:?} was made without root and reaches the network through pasta, which has no egress policy (hint: policies need a sandbox made by root; docs/network.md, \"Rootless mode\")")]
    RootlessPolicy(String),
    /// Networking needs root.
    #[error("{0} needs root (hint: run cairn as root; see docs/network.md, \"Rootless mode\")")]
    NeedsRoot(&'static str),
    /// A host tool failed.
    #[error("{0}: {1}")]
    Tool(String, String),
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// A sandbox's network (`net.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// 12 hex digits: 4 from the home, 8 from the sandbox name. Names the namespace
    /// (`cairn-ID`), the table (`ip cairn-ID`) and the host veth (`cnID`).
    pub id: String,
    /// The guest's address.
    pub guest: Ipv4Addr,
    /// The host end of the link: gateway and resolver.
    pub gateway: Ipv4Addr,
    /// The link's prefix length (30).
    pub prefix: u8,
    /// The guest's MAC.
    pub mac: String,
    /// The pool the address came from.
    pub pool: String,
    /// Resolvers the forwarder asks.
    pub upstream: Vec<Ipv4Addr>,
    /// Made without root: the VMM runs in a namespace that pasta connects ([`rootless`]); no
    /// host namespace, veth, table or forwarder.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rootless: bool,
}

impl NetSpec {
    /// The namespace's name.
    pub fn netns(&self) -> String {
        format!("{NAME_PREFIX}{}", self.id)
    }
    /// What `cairn ls` and the registry name as the namespace: `cairn-ID`, or `pasta` for a
    /// rootless sandbox (whose namespace lives only as long as its VMM).
    pub fn netns_name(&self) -> String {
        match self.rootless {
            true => "pasta".into(),
            false => self.netns(),
        }
    }
    /// The namespace's path, for `cairn-jailer --netns` and setns(2).
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(self.netns())
    }
    /// The nftables table's name.
    pub fn table(&self) -> String {
        format!("{NAME_PREFIX}{}", self.id)
    }
    /// The host-side veth.
    pub fn veth(&self) -> String {
        format!("{VETH_PREFIX}{}", self.id)
    }
    /// The namespace-side veth.
    pub fn peer(&self) -> String {
        format!("cp{}", self.id)
    }

    #[cfg(test)]
    pub(crate) fn test_spec() -> NetSpec {
        NetSpec {
            id: "abcd12345678".into(),
            guest: Ipv4Addr::new(10, 213, 0, 2),
            gateway: Ipv4Addr::new(10, 213, 0, 1),
            prefix: 30,
            mac: "02:ca:0a:d5:00:02".into(),
            pool: "10.213.0.0/16".into(),
            upstream: vec![Ipv4Addr::new(198, 18, 77, 53)],
            rootless: false,
        }
    }
}

fn fnv1a(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The 4 hex digits that mark this home's namespaces, tables and veths.
pub fn home_tag(home: &Path) -> String {
    let root = fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    format!(
        "{:04x}",
        fnv1a(root.as_os_str().as_encoded_bytes()) & 0xffff
    )
}

/// The network id of sandbox `name` in `home`.
pub fn net_id(home: &Path, name: &str) -> String {
    format!(
        "{}{:08x}",
        home_tag(home),
        fnv1a(name.as_bytes()) & 0xffff_ffff
    )
}

/// `net.json` of a sandbox.
pub fn spec_path(paths: &Paths) -> PathBuf {
    paths.dir.join("net.json")
}

/// The sandbox's network spec; `None` for a sandbox without network.
pub fn load(paths: &Paths) -> Result<Option<NetSpec>, NetError> {
    let p = spec_path(paths);
    match fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| io_err(format!("parse {}", p.display()))(io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", p.display()))(e)),
    }
}

/// Writes `net.json` (temporary name, then rename).
pub fn save(paths: &Paths, spec: &NetSpec) -> Result<(), NetError> {
    let p = spec_path(paths);
    let tmp = p.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(spec)
        .map_err(|e| io_err("encode net.json")(io::Error::other(e)))?;
    fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &p).map_err(io_err(format!("write {}", p.display())))
}

/// The resolvers the forwarder asks: `CAIRN_NET_DNS` (comma-separated), else the host's
/// `/etc/resolv.conf` nameservers (IPv4).
pub fn upstream_resolvers() -> Vec<Ipv4Addr> {
    if let Ok(v) = std::env::var("CAIRN_NET_DNS") {
        return v.split(',').filter_map(|a| a.trim().parse().ok()).collect();
    }
    fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: trivial getter.
    unsafe { libc::geteuid() == 0 }
}

/// Chooses a free /30 and a MAC for a new sandbox `name` (`used`: the guest addresses of the
/// home's sandboxes), after checking the pool against the host's routes.
pub fn allocate(home: &Path, name: &str, used: &[Ipv4Addr]) -> Result<NetSpec, NetError> {
    let pool = pool::pool()?;
    let routes = pool::host_routes()?;
    pool::check_overlap(&pool, &routes)?;
    let taken: Vec<pool::Cidr> = routes
        .iter()
        .filter(|(_, d)| d.starts_with(VETH_PREFIX))
        .map(|(c, _)| *c)
        .collect();
    let mut n = 0;
    let slot = loop {
        let Some(s) = pool::slot(&pool, n) else {
            return Err(NetError::PoolFull(pool.to_string()));
        };
        n += 1;
        if used.contains(&s.guest) || taken.iter().any(|c| c.overlaps(&s.subnet)) {
            continue;
        }
        break s;
    };
    let g = slot.guest.octets();
    Ok(NetSpec {
        id: net_id(home, name),
        guest: slot.guest,
        gateway: slot.gateway,
        prefix: 30,
        mac: format!("02:ca:{:02x}:{:02x}:{:02x}:{:02x}", g[0], g[1], g[2], g[3]),
        pool: pool.to_string(),
        upstream: upstream_resolvers(),
        rootless: false,
    })
}

/// Makes everything a new sandbox's network needs on the host: namespace, veth, bridge, tap
/// (owned by `tap_owner`, the jailed VMM's uid and gid), the nftables table with its policy,
/// and the DNS forwarder. Undone by [`teardown`] on failure.
pub fn setup(paths: &Paths, spec: &NetSpec, tap_owner: Option<(u32, u32)>) -> Result<(), NetError> {
    if !is_root() {
        return Err(NetError::NeedsRoot("a sandbox network namespace"));
    }
    save(paths, spec)?;
    let made = link::create(spec, tap_owner)
        .and_then(|()| apply_policy(paths, spec, &policy_load(paths)?))
        .and_then(|()| dns::spawn(paths));
    if made.is_err() {
        teardown(paths, spec);
    }
    made
}

/// Re-makes what is missing (after a host reboot, or a crash): namespace and links, table,
/// forwarder. A no-op when all is there.
pub fn ensure(paths: &Paths, tap_owner: Option<(u32, u32)>) -> Result<(), NetError> {
    let Some(spec) = load(paths)?.filter(|s| !s.rootless) else {
        return Ok(());
    };
    if !link::is_netns(&spec.netns_path()) || !link::exists(&spec.veth()) {
        link::remove(&spec);
        link::create(&spec, tap_owner)?;
    }
    if !nft::tables(&spec.table()).contains(&spec.table()) {
        apply_policy(paths, &spec, &policy_load(paths)?)?;
    }
    if dns::running(paths).is_none() {
        dns::spawn(paths)?;
    }
    Ok(())
}

/// What of the sandbox's network is missing on the host (for `cairn doctor`).
pub fn missing(paths: &Paths, spec: &NetSpec) -> Vec<&'static str> {
    let mut out = Vec::new();
    if spec.rootless {
        return out;
    }
    if !link::is_netns(&spec.netns_path()) {
        out.push("its namespace");
    }
    if !link::exists(&spec.veth()) {
        out.push("its veth");
    }
    if !nft::tables(&spec.table()).contains(&spec.table()) {
        out.push("its nftables table");
    }
    if dns::running(paths).is_none() {
        out.push("its DNS forwarder");
    }
    out
}

/// Removes the sandbox's forwarder, table, veth and namespace (each step best effort).
pub fn teardown(paths: &Paths, spec: &NetSpec) {
    if spec.rootless {
        return;
    }
    dns::stop(paths);
    let _ = nft::delete(&spec.table());
    link::remove(spec);
}

/// [`teardown`] for the sandbox at `paths`, if it has a network.
pub fn remove(paths: &Paths) {
    if let Ok(Some(spec)) = load(paths) {
        teardown(paths, &spec);
    }
}

/// `policy.json` of a sandbox.
pub fn policy_path(paths: &Paths) -> PathBuf {
    paths.dir.join("policy.json")
}

/// The sandbox's policy (empty when it never had one).
pub fn policy_load(paths: &Paths) -> Result<policy::Policy, NetError> {
    let p = policy_path(paths);
    match fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| io_err(format!("parse {}", p.display()))(io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(policy::Policy::default()),
        Err(e) => Err(io_err(format!("read {}", p.display()))(e)),
    }
}

/// `cairn policy set`: saves `policy` for the sandbox and applies it live: the table is
/// rebuilt with the addresses still allowed, and connections to destinations no longer
/// allowed are cut (conntrack entries deleted). The forwarder reads the new file on its next
/// query.
pub fn set_policy(paths: &Paths, name: &str, new: &policy::Policy) -> Result<(), NetError> {
    let spec = load(paths)?.ok_or_else(|| NetError::NoNetwork(name.to_string()))?;
    if spec.rootless {
        return Err(NetError::RootlessPolicy(name.to_string()));
    }
    if !is_root() {
        return Err(NetError::NeedsRoot("an egress policy"));
    }
    let p = policy_path(paths);
    let tmp = p.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(new)
        .map_err(|e| io_err("encode policy.json")(io::Error::other(e)))?;
    fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &p).map_err(io_err(format!("write {}", p.display())))?;
    apply_policy(paths, &spec, new)?;
    cut_connections(paths, &spec, new);
    Ok(())
}

/// Rebuilds the table for `policy`, keeping the addresses resolved for names it allows.
fn apply_policy(paths: &Paths, spec: &NetSpec, policy: &policy::Policy) -> Result<(), NetError> {
    let allowed = dns::allowed_addresses(paths, policy);
    nft::apply(&nft::table(spec, &spec.pool, policy.restricts(), &allowed))
}

/// Deletes the conntrack entries of the guest's connections whose destination the policy no
/// longer allows, so that they break now rather than live on.
fn cut_connections(paths: &Paths, spec: &NetSpec, policy: &policy::Policy) {
    if !policy.restricts() {
        return;
    }
    let allowed: Vec<Ipv4Addr> = dns::allowed_addresses(paths, policy)
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let guest = spec.guest.to_string();
    let Ok(out) = std::process::Command::new("conntrack")
        .args(["-L", "-s", &guest])
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return;
    };
    let mut cut: Vec<Ipv4Addr> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("dst=")))
        .filter_map(|a| a.parse().ok())
        .filter(|a| *a != spec.gateway && !allowed.contains(a))
        .collect();
    cut.sort();
    cut.dedup();
    for dst in cut {
        let _ = std::process::Command::new("conntrack")
            .args(["-D", "-s", &guest, "-d", &dst.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The registry's view of `spec`.
pub fn columns(spec: &NetSpec) -> crate::registry::NetColumns {
    crate::registry::NetColumns {
        addr: spec.guest.to_string(),
        mac: spec.mac.clone(),
        netns: spec.netns_name(),
    }
}

/// For `create` and `fork`: a new sandbox `name`'s network, allocated (under the home's
/// `net.lock`, so concurrent creates get different addresses), made, and recorded in the
/// registry row. `tap_owner`: the jailed VMM's uid and gid.
pub fn create_for(
    home: &crate::sandbox::Home,
    reg: &mut crate::registry::Registry,
    paths: &Paths,
    name: &str,
    tap_owner: Option<(u32, u32)>,
) -> Result<NetSpec, crate::sandbox::SandboxError> {
    use crate::lock::{FileLock, Mode};
    let rootless = !is_root();
    if rootless {
        rootless::pasta_binary()?;
    }
    let lock_path = home.root().join("net.lock");
    let _lock = FileLock::acquire(&lock_path, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", lock_path.display())))?;
    let used: Vec<Ipv4Addr> = reg
        .nets()?
        .iter()
        .filter_map(|(_, c)| c.addr.parse().ok())
        .collect();
    let mut spec = allocate(home.root(), name, &used)?;
    spec.rootless = rootless;
    match rootless {
        true => save(paths, &spec)?,
        false => setup(paths, &spec, tap_owner)?,
    }
    reg.set_net(name, Some(&columns(&spec)))?;
    Ok(spec)
}

/// The `network-interfaces` entry of a sandbox's VMM config.
pub fn vm_config_entry(spec: &NetSpec) -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: TAP.into(),
        guest_mac: Some(spec.mac.clone()),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        mtu: None,
    }
}

/// For `fork`: when the original has a network, the fork gets its own (namespace, address,
/// MAC), and its VMM config names the new MAC (for a later cold boot; a restore keeps the
/// checkpoint's device, and the agent then sets the new MAC in the guest).
pub fn fork_for(
    home: &crate::sandbox::Home,
    reg: &mut crate::registry::Registry,
    src: &Paths,
    dst: &Paths,
    name: &str,
) -> Result<(), crate::sandbox::SandboxError> {
    if load(src)?.is_none() {
        return Ok(());
    }
    attach_new(home, reg, dst, name)
}

/// Gives the sandbox `name` at `dst`, whose files were made from a checkpoint of a VM with a
/// network interface (a fork, or a create from a golden checkpoint), a network of its own, and
/// names its tap and new MAC in its VMM config.
pub fn attach_new(
    home: &crate::sandbox::Home,
    reg: &mut crate::registry::Registry,
    dst: &Paths,
    name: &str,
) -> Result<(), crate::sandbox::SandboxError> {
    let owner = crate::sandbox::jail::load(dst)?.map(|s| (s.uid, s.gid));
    let spec = create_for(home, reg, dst, name, owner)?;
    let text = fs::read_to_string(&dst.config)
        .map_err(io_err(format!("read {}", dst.config.display())))?;
    let mut cfg: VmConfig = serde_json::from_str(&text)
        .map_err(|e| io_err(format!("parse {}", dst.config.display()))(io::Error::other(e)))?;
    cfg.network_interfaces = vec![vm_config_entry(&spec)];
    let text = serde_json::to_vec(&cfg)
        .map_err(|e| io_err(format!("write {}", dst.config.display()))(io::Error::other(e)))?;
    fs::write(&dst.config, text).map_err(io_err(format!("write {}", dst.config.display())))?;
    Ok(())
}
