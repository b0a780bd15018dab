//! The address pool (`CAIRN_NET_POOL`): one /30 per sandbox, checked against the host's routes.

use super::NetError;
use std::net::Ipv4Addr;
use std::process::Command;

/// The pool used when `CAIRN_NET_POOL` is unset: rarely used private space.
pub const DEFAULT_POOL: &str = "10.213.0.0/16";

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` (a bare address is a /32); host bits must be zero.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().ok()?;
        let len: u8 = l.parse().ok()?;
        if len > 32 || u32::from(addr) & !mask(len) != 0 {
            return None;
        }
        Some(Cidr { addr, len })
    }

    /// The first and last address.
    pub fn range(&self) -> (u32, u32) {
        let a = u32::from(self.addr);
        (a, a | !mask(self.len))
    }

    /// Whether the two prefixes share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let (a0, a1) = self.range();
        let (b0, b1) = other.range();
        a0 <= b1 && b0 <= a1
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (a0, a1) = self.range();
        (a0..=a1).contains(&u32::from(ip))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// The pool from `CAIRN_NET_POOL` (else [`DEFAULT_POOL`]): a prefix of /8 to /28.
pub fn pool() -> Result<Cidr, NetError> {
    let text = std::env::var("CAIRN_NET_POOL").unwrap_or_else(|_| DEFAULT_POOL.to_string());
    parse_pool(&text)
}

/// Parses a pool prefix (/8 to /28, so that it holds at least four /30 links).
pub fn parse_pool(text: &str) -> Result<Cidr, NetError> {
    match Cidr::parse(text.trim()) {
        Some(c) if (8..=28).contains(&c.len) => Ok(c),
        _ => Err(NetError::BadPool(text.to_string())),
    }
}

/// One sandbox's link: the /30 at `slot` of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The link's /30.
    pub subnet: Cidr,
    /// The host end (the guest's gateway and resolver).
    pub gateway: Ipv4Addr,
    /// The guest.
    pub guest: Ipv4Addr,
}

/// The `n`th /30 of `pool`, if the pool has it.
pub fn slot(pool: &Cidr, n: u32) -> Option<Slot> {
    let (first, last) = pool.range();
    let base = first.checked_add(n.checked_mul(4)?)?;
    if base.checked_add(3)? > last {
        return None;
    }
    Some(Slot {
        subnet: Cidr {
            addr: Ipv4Addr::from(base),
            len: 30,
        },
        gateway: Ipv4Addr::from(base + 1),
        guest: Ipv4Addr::from(base + 2),
    })
}

/// The host's IPv4 routes as (prefix, device), from `ip -4 route show table all`.
pub fn host_routes() -> Result<Vec<(Cidr, String)>, NetError> {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "show", "table", "all"])
        .output()
        .map_err(|e| NetError::Tool("ip route".into(), e.to_string()))?;
    Ok(parse_routes(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `ip -o route` lines: `[type] PREFIX ... dev DEV ...` (`default` is 0.0.0.0/0).
pub fn parse_routes(text: &str) -> Vec<(Cidr, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace().peekable();
        if matches!(
            words.peek(),
            Some(&("local" | "broadcast" | "unicast" | "multicast" | "unreachable" | "blackhole"))
        ) {
            words.next();
        }
        let Some(prefix) = words.next() else { continue };
        let cidr = if prefix == "default" {
            Cidr::parse("0.0.0.0/0")
        } else {
            Cidr::parse(prefix)
        };
        let rest: Vec<&str> = words.collect();
        let dev = rest
            .windows(2)
            .find(|w| w[0] == "dev")
            .map(|w| w[1].to_string())
            .unwrap_or_default();
        if let Some(c) = cidr {
            out.push((c, dev));
        }
    }
    out
}

/// Fails when `pool` overlaps a host route that is not a sandbox link (`cn*` devices, made by
/// cairn) or the default route.
pub fn check_overlap(pool: &Cidr, routes: &[(Cidr, String)]) -> Result<(), NetError> {
    for (r, dev) in routes {
        if r.len == 0 || dev.starts_with(super::VETH_PREFIX) {
            continue;
        }
        if r.overlaps(pool) {
            return Err(NetError::PoolOverlap {
                pool: pool.to_string(),
                route: r.to_string(),
                dev: dev.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_overlap() {
        let p = parse_pool("10.213.0.0/16").unwrap();
        assert!(parse_pool("10.213.0.1/16").is_err());
        assert!(parse_pool("10.0.0.0/30").is_err());
        assert!(parse_pool("banana").is_err());
        assert!(p.overlaps(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(!p.overlaps(&Cidr::parse("10.214.0.0/16").unwrap()));
        let s = slot(&p, 1).unwrap();
        assert_eq!(s.gateway, Ipv4Addr::new(10, 213, 0, 5));
        assert_eq!(s.guest, Ipv4Addr::new(10, 213, 0, 6));
        assert_eq!(
            slot(&p, 16383).unwrap().guest,
            Ipv4Addr::new(10, 213, 255, 254)
        );
        assert!(slot(&p, 16384).is_none());
    }

    #[test]
    fn routes_are_read_and_overlaps_refused() {
        let text = "default via 192.0.2.1 dev eth0 \n\
                    192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2 \n\
                    10.213.0.0/30 dev cnab12cd34ef56 proto kernel scope link src 10.213.0.1 \n\
                    local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1 \n";
        let routes = parse_routes(text);
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[0].0.len, 0);
        assert_eq!(routes[3].0.to_string(), "127.0.0.1/32");
        let pool = parse_pool("10.213.0.0/16").unwrap();
        check_overlap(&pool, &routes).unwrap();
        let bad = parse_pool("192.0.0.0/8").unwrap();
        let e = check_overlap(&bad, &routes).unwrap_err().to_string();
        assert!(
            e.contains("192.0.2.0/24") && e.contains("CAIRN_NET_POOL"),
            "{e}"
        );
    }
}
