//! The sandbox's nftables table: NAT, the always-denied ranges, and the egress policy.
//!
//! Each sandbox has one table of its own, `ip cairn-ID`, so that removing a sandbox is one
//! `nft delete table` and nothing is shared between sandboxes. Its chains see only traffic of
//! the sandbox's host-side veth; `accept` in them ends only this table's say.

use super::policy::{Action, Policy};
use super::{NetError, NetSpec};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Destinations a sandbox never reaches (besides the host itself, which the input chain
/// guards): this-network, private, carrier-grade NAT, loopback, link-local (cloud metadata),
/// multicast and reserved space. The pool is added (other sandboxes).
pub const ALWAYS_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",
];

/// `{ A/N, ... }` for a set's elements; empty for none.
fn net_elements(nets: &[(Ipv4Addr, u8)]) -> String {
    if nets.is_empty() {
        return String::new();
    }
    let list: Vec<String> = nets.iter().map(|(a, l)| format!("{a}/{l}")).collect();
    format!(" elements = {{ {} }};", list.join(", "))
}

/// The table's text for `policy`: `allowed` lists addresses resolved for allowed names with
/// the seconds each has left; a policy with rules limits egress to them. The policy's denied
/// networks are rejected first, then its allowed networks accepted (before the always-denied
/// ranges, so a rule can re-allow one of those). The same two sets decide what the sandbox
/// reaches on the host itself (the input chain): only its DNS forwarder, unless an address rule
/// allows a host address (`--allow GATEWAY/32` opens the host's services at the gateway).
pub fn table(spec: &NetSpec, pool: &str, policy: &Policy, allowed: &[(Ipv4Addr, u64)]) -> String {
    let restrict = policy.restricts();
    let deny_nets = net_elements(&policy.nets(Action::Deny));
    let allow_nets = net_elements(&policy.nets(Action::Allow));
    let t = spec.table();
    let veth = spec.veth();
    let gw = spec.gateway;
    let guest = spec.guest;
    let mut denied: Vec<&str> = ALWAYS_DENIED.to_vec();
    denied.push(pool);
    let elements: Vec<String> = allowed
        .iter()
        .map(|(a, secs)| format!("{a} timeout {}s", secs.max(&1)))
        .collect();
    let allowed_elems = if elements.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", elements.join(", "))
    };
    let restrict_rule = if restrict {
        "\t\tip daddr != @allowed reject with icmp type admin-prohibited\n"
    } else {
        ""
    };
    format!(
        "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
         \tset allowed {{ type ipv4_addr; flags timeout;{allowed_elems} }}\n\
         \tset denied {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {denied} }}; }}\n\
         \tset deny_nets {{ type ipv4_addr; flags interval; auto-merge;{deny_nets} }}\n\
         \tset allow_nets {{ type ipv4_addr; flags interval; auto-merge;{allow_nets} }}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\toifname \"{veth}\" ct state established,related accept\n\
         \t\toifname \"{veth}\" drop\n\
         \t\tiifname != \"{veth}\" accept\n\
         \t\tip saddr != {guest} drop\n\
         \t\tct state established,related accept\n\
         \t\tip daddr @deny_nets reject with icmp type admin-prohibited\n\
         \t\tip daddr @allow_nets accept\n\
         \t\tip daddr @denied reject with icmp type admin-prohibited\n\
         {restrict_rule}\
         \t\taccept\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tiifname != \"{veth}\" accept\n\
         \t\tct state established,related accept\n\
         \t\tip daddr {gw} udp dport 53 accept\n\
         \t\tip daddr {gw} tcp dport 53 accept\n\
         \t\tip daddr @deny_nets drop\n\
         \t\tip daddr @allow_nets accept\n\
         \t\tdrop\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {guest} oifname != \"{veth}\" masquerade\n\
         \t}}\n\
         }}\n",
        denied = denied.join(", "),
    )
}

/// Runs `nft -f -` with `script`.
pub fn apply(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Tool("nft".into(), format!("{e} (hint: install nftables)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Tool("nft".into(), e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Tool("nft".into(), e.to_string()))?;
    if !out.status.success() {
        return Err(NetError::Tool(
            "nft".into(),
            one_line(&String::from_utf8_lossy(&out.stderr)),
        ));
    }
    Ok(())
}

/// Adds `addr` to the table's allowed set for `secs` seconds.
pub fn allow(table: &str, addr: Ipv4Addr, secs: u64) -> Result<(), NetError> {
    apply(&format!(
        "add element ip {table} allowed {{ {addr} timeout {}s }}\n",
        secs.max(1)
    ))
}

/// Deletes table `name` (missing is fine).
pub fn delete(name: &str) -> Result<(), NetError> {
    apply(&format!("table ip {name}\ndelete table ip {name}\n"))
}

/// The names of the `ip` tables starting with `prefix`.
pub fn tables(prefix: &str) -> Vec<String> {
    let Ok(out) = Command::new("nft").args(["list", "tables", "ip"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table ip "))
        .map(|t| t.trim().to_string())
        .filter(|t| t.starts_with(prefix))
        .collect()
}

pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_the_sandbox_and_restricts_when_asked() {
        let spec = NetSpec::test_spec();
        let open = table(&spec, "10.213.0.0/16", &Policy::default(), &[]);
        assert!(open.contains("delete table ip cairn-abcd12345678"));
        assert!(open.contains("oifname != \"cnabcd12345678\" masquerade"));
        assert!(open.contains("169.254.0.0/16"));
        assert!(open.contains("10.213.0.0/16 }"));
        assert!(!open.contains("!= @allowed"));
        assert!(open.contains("set allow_nets { type ipv4_addr; flags interval; auto-merge; }"));
        let mut policy = Policy::default();
        policy.push(Action::Deny, "*").unwrap();
        policy.push(Action::Allow, "169.254.169.254").unwrap();
        policy.push(Action::Deny, "203.0.113.0/24").unwrap();
        let shut = table(
            &spec,
            "10.213.0.0/16",
            &policy,
            &[(Ipv4Addr::new(198, 18, 77, 80), 30)],
        );
        assert!(shut.contains("ip daddr != @allowed reject"));
        assert!(shut.contains("elements = { 198.18.77.80 timeout 30s }"));
        assert!(shut.contains("elements = { 169.254.169.254/32 }"));
        assert!(shut.contains("elements = { 203.0.113.0/24 }"));
        let order = |rule: &str| shut.find(rule).unwrap();
        assert!(order("@deny_nets reject") < order("@allow_nets accept"));
        // The host itself: DNS, then the address rules, then nothing else.
        let input = &open[open.find("chain input").unwrap()..];
        let at = |needle: &str| input.find(needle).unwrap();
        assert!(at("dport 53 accept") < at("@deny_nets drop"));
        assert!(at("@deny_nets drop") < at("@allow_nets accept"));
        assert!(at("@allow_nets accept") < at("\t\tdrop\n"));
        assert!(order("@allow_nets accept") < order("@denied reject"));
    }
}
