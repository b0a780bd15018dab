//! Egress policy: allow/deny rules on domain-name patterns, the most specific match winning.
//!
//! A pattern is a name (`github.com`: that name only), a wildcard (`*.npmjs.org`: every name
//! below it, not the name itself) or `*` (every name). For a queried name the matching rule with
//! the longest pattern wins (an exact name beats a wildcard of the same length, deny beats allow
//! on a tie); a name no rule matches is allowed. An empty policy allows every public address;
//! a policy with rules limits egress to addresses its allowed names resolved to.
//!
//! A pattern may also be an IPv4 address or network (`10.1.0.0/16`, `169.254.169.254`): an
//! address rule, matched against destinations, never names. An allowed network is reachable
//! without a name being resolved, the always-denied ranges included (a way to re-allow one);
//! a denied one is unreachable even where an allowed name resolves into it. Deny rules on
//! addresses win over allow rules on addresses.

use super::NetError;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Names matching resolve, and their addresses become reachable.
    Allow,
    /// Names matching get REFUSED.
    Deny,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// `name`, `*.suffix` or `*`, lowercase.
    pub pattern: String,
}

/// A sandbox's policy (`policy.json` in its directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The rules, in the order given (order does not change the outcome).
    pub rules: Vec<Rule>,
}

/// Presets for `cairn policy set --preset`.
pub const PRESETS: &[(&str, &str)] = &[
    ("open", "every public address (the default: no rules)"),
    ("none", "no egress at all (deny *)"),
    (
        "dev",
        "package registries and code hosts (GitHub, PyPI, npm, crates.io, Debian), deny the rest",
    ),
];

const DEV: &[&str] = &[
    "github.com",
    "*.github.com",
    "*.githubusercontent.com",
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "*.npmjs.org",
    "crates.io",
    "*.crates.io",
    "static.rust-lang.org",
    "deb.debian.org",
    "security.debian.org",
];

impl Policy {
    /// The rules of preset `name`.
    pub fn preset(name: &str) -> Result<Policy, NetError> {
        let allow = |p: &str| Rule {
            action: Action::Allow,
            pattern: p.into(),
        };
        let deny_all = Rule {
            action: Action::Deny,
            pattern: "*".into(),
        };
        match name {
            "open" => Ok(Policy::default()),
            "none" => Ok(Policy {
                rules: vec![deny_all],
            }),
            "dev" => Ok(Policy {
                rules: DEV.iter().map(|p| allow(p)).chain([deny_all]).collect(),
            }),
            _ => Err(NetError::BadPreset(name.to_string())),
        }
    }

    /// Adds a rule after checking its pattern.
    pub fn push(&mut self, action: Action, pattern: &str) -> Result<(), NetError> {
        let pattern = check_pattern(pattern)?;
        self.rules.retain(|r| r.pattern != pattern);
        self.rules.push(Rule { action, pattern });
        Ok(())
    }

    /// Whether the policy restricts egress to resolved addresses (it has rules).
    pub fn restricts(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The networks of the address rules with `action`, as (network, prefix length).
    pub fn nets(&self, action: Action) -> Vec<(Ipv4Addr, u8)> {
        self.rules
            .iter()
            .filter(|r| r.action == action)
            .filter_map(|r| parse_net(&r.pattern))
            .collect()
    }

    /// The address rules' verdict for `addr`: `Some(false)` inside a denied network,
    /// `Some(true)` inside an allowed one (and no denied one), `None` outside both.
    pub fn addr_verdict(&self, addr: Ipv4Addr) -> Option<bool> {
        let inside = |action| {
            self.nets(action)
                .into_iter()
                .any(|(net, len)| mask(addr, len) == net)
        };
        if inside(Action::Deny) {
            Some(false)
        } else if inside(Action::Allow) {
            Some(true)
        } else {
            None
        }
    }

    /// The verdict for `name` (a trailing dot and case are ignored).
    pub fn allows(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut best: Option<((u8, usize), Action)> = None;
        for r in &self.rules {
            let Some(score) = score(&r.pattern, &name) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((s, a)) => score > s || (score == s && a == Action::Allow),
            };
            if better {
                best = Some((score, r.action));
            }
        }
        !matches!(best, Some((_, Action::Deny)))
    }
}

/// How specifically `pattern` matches `name`, if it does: (kind, length), greater is more specific.
fn score(pattern: &str, name: &str) -> Option<(u8, usize)> {
    if pattern == "*" {
        return Some((0, 0));
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let below = name.len() > suffix.len() + 1
            && name.ends_with(suffix)
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.';
        return below.then_some((1, suffix.len()));
    }
    (pattern == name).then_some((2, pattern.len()))
}

/// `addr` with all but its first `len` bits cleared.
fn mask(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    match len {
        0 => Ipv4Addr::UNSPECIFIED,
        l => Ipv4Addr::from(bits & (u32::MAX << (32 - u32::from(l.min(32))))),
    }
}

/// An address pattern `A.B.C.D/N` (as stored: network address, prefix length).
fn parse_net(pattern: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = pattern.split_once('/')?;
    Some((addr.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
}

/// Checks and lowercases a pattern: `*`, `*.name` or `name`, with labels of `a-z 0-9 -` (and
/// `_`), 1-63 long, no leading or trailing `-`, at most 253 characters; or an IPv4 address or
/// network, stored as `NETWORK/LEN` (host bits cleared; an address is `/32`).
pub fn check_pattern(pattern: &str) -> Result<String, NetError> {
    let p = pattern.trim().to_ascii_lowercase();
    if p == "*" {
        return Ok(p);
    }
    let (addr, len) = p.split_once('/').unwrap_or((&p, "32"));
    if let Ok(addr) = addr.parse::<Ipv4Addr>() {
        return match len.parse::<u8>() {
            Ok(len) if len <= 32 => Ok(format!("{}/{len}", mask(addr, len))),
            _ => Err(NetError::BadPattern(pattern.to_string())),
        };
    }
    let name = p.strip_prefix("*.").unwrap_or(&p);
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(NetError::BadPattern(pattern.to_string()));
    }
    Ok(match p.strip_prefix("*.") {
        Some(_) => format!("*.{name}"),
        None => name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[(Action, &str)]) -> Policy {
        let mut p = Policy::default();
        for (a, pat) in rules {
            p.push(*a, pat).unwrap();
        }
        p
    }

    #[test]
    fn the_most_specific_rule_wins() {
        use Action::*;
        let p = policy(&[(Allow, "github.com"), (Allow, "*.npmjs.org"), (Deny, "*")]);
        assert!(p.allows("github.com"));
        assert!(p.allows("GitHub.com."));
        assert!(p.allows("registry.npmjs.org"));
        assert!(
            !p.allows("npmjs.org"),
            "a wildcard covers names below it only"
        );
        assert!(!p.allows("api.github.com"));
        assert!(!p.allows("example.com"));
        let q = policy(&[(Deny, "evil.example.com"), (Allow, "*")]);
        assert!(!q.allows("evil.example.com"));
        assert!(q.allows("good.example.com"));
        let r = policy(&[(Deny, "*.example.com"), (Allow, "ok.example.com")]);
        assert!(r.allows("ok.example.com"));
        assert!(!r.allows("x.example.com"));
        assert!(Policy::default().allows("anything.at.all"));
        assert!(!Policy::default().restricts());
        assert!(!Policy::preset("none").unwrap().allows("github.com"));
        assert!(Policy::preset("dev").unwrap().allows("pypi.org"));
        assert!(Policy::preset("nope").is_err());
    }

    #[test]
    fn patterns_are_checked() {
        assert_eq!(check_pattern("GitHub.com").unwrap(), "github.com");
        assert_eq!(check_pattern("*.npmjs.org.").unwrap(), "*.npmjs.org");
        assert_eq!(check_pattern("*").unwrap(), "*");
        for bad in [
            "",
            "http://github.com",
            "git*.com",
            "a..b",
            "-a.com",
            "*.",
            "**.a",
            "a b",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "fd00::/8",
        ] {
            let e = check_pattern(bad).unwrap_err().to_string();
            assert!(e.contains("not a domain pattern"), "{bad}: {e}");
        }
        // A rule for a pattern replaces the earlier one.
        let mut p = Policy::default();
        p.push(Action::Allow, "a.com").unwrap();
        p.push(Action::Deny, "A.com").unwrap();
        assert_eq!(p.rules.len(), 1);
        assert!(!p.allows("a.com"));
    }

    #[test]
    fn address_rules_match_destinations_not_names() {
        assert_eq!(check_pattern("10.1.2.3/16").unwrap(), "10.1.0.0/16");
        assert_eq!(
            check_pattern("169.254.169.254").unwrap(),
            "169.254.169.254/32"
        );
        assert_eq!(check_pattern("0.0.0.0/0").unwrap(), "0.0.0.0/0");
        use Action::*;
        let p = policy(&[
            (Allow, "10.0.0.0/8"),
            (Deny, "10.1.0.0/16"),
            (Allow, "github.com"),
            (Deny, "*"),
        ]);
        assert_eq!(p.nets(Allow), vec![(Ipv4Addr::new(10, 0, 0, 0), 8)]);
        assert_eq!(p.nets(Deny), vec![(Ipv4Addr::new(10, 1, 0, 0), 16)]);
        assert_eq!(p.addr_verdict(Ipv4Addr::new(10, 2, 3, 4)), Some(true));
        assert_eq!(p.addr_verdict(Ipv4Addr::new(10, 1, 3, 4)), Some(false));
        assert_eq!(p.addr_verdict(Ipv4Addr::new(198, 18, 0, 1)), None);
        assert!(p.allows("github.com"));
        assert!(!p.allows("10.2.3.4"), "an address rule is no name rule");
        assert!(p.restricts());
    }
}
