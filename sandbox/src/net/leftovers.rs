//! What a crash can leave of sandbox networks, for `cairn doctor`: namespaces, host veths and
//! nftables tables carrying this home's tag that no sandbox of the home owns, and forwarder
//! processes whose sandbox is gone or has no network; and pasta processes (rootless mode) whose
//! sandbox is gone or that run no VMM any more. Other homes' objects (another tag) are never
//! touched.

use super::{dns, home_tag, link, nft, rootless, NAME_PREFIX, VETH_PREFIX};
use std::path::Path;
use std::time::Duration;

/// A pasta younger than this is left alone (it may be starting its VMM right now).
const PASTA_MIN_AGE: Duration = Duration::from_secs(2);

/// One leftover: what it is, and how to remove it.
#[derive(Debug)]
pub struct Leftover {
    /// `network namespace cairn-…`, `veth cn…`, `nftables table ip cairn-…`, `DNS forwarder pid N`.
    pub what: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Netns(String),
    Veth(String),
    Table(String),
    Forwarder(u32),
    Pasta(u32),
}

impl Leftover {
    /// What `cairn doctor` says it found.
    pub fn found(&self) -> String {
        match self.kind {
            Kind::Pasta(_) => self.what.clone(),
            _ => format!("{} that no sandbox owns", self.what),
        }
    }

    /// Removes it.
    pub fn remove(&self) {
        match &self.kind {
            Kind::Netns(n) => link::remove_netns(n),
            Kind::Veth(n) => link::remove_link(n),
            Kind::Table(t) => {
                let _ = nft::delete(t);
            }
            Kind::Forwarder(pid) => dns::kill(*pid),
            Kind::Pasta(pid) => rootless::kill(*pid),
        }
    }
}

/// The leftovers of `home`, given the network ids of its sandboxes (`owned`) and its
/// sandbox directories that have a network (`with_net`).
pub fn find(home: &Path, owned: &[String], with_net: &[std::path::PathBuf]) -> Vec<Leftover> {
    let tag = home_tag(home);
    let mine = |name: &str, prefix: &str| -> Option<String> {
        let id = name.strip_prefix(prefix)?;
        (id.starts_with(&tag) && !owned.iter().any(|o| o == id)).then(|| id.to_string())
    };
    let mut out = Vec::new();
    for ns in link::namespaces(NAME_PREFIX) {
        if mine(&ns, NAME_PREFIX).is_some() {
            out.push(Leftover {
                what: format!("network namespace {ns}"),
                kind: Kind::Netns(ns),
            });
        }
    }
    for v in link::links(VETH_PREFIX) {
        if mine(&v, VETH_PREFIX).is_some() {
            out.push(Leftover {
                what: format!("veth {v}"),
                kind: Kind::Veth(v),
            });
        }
    }
    for t in nft::tables(NAME_PREFIX) {
        if mine(&t, NAME_PREFIX).is_some() {
            out.push(Leftover {
                what: format!("nftables table ip {t}"),
                kind: Kind::Table(t),
            });
        }
    }
    let sandboxes = std::fs::canonicalize(home.join("sandboxes")).unwrap_or_default();
    for (pid, dir) in dns::all_forwarders() {
        let ours = dir.parent() == Some(sandboxes.as_path());
        if ours && !with_net.contains(&dir) {
            out.push(Leftover {
                what: format!("DNS forwarder pid {pid} for {}", dir.display()),
                kind: Kind::Forwarder(pid),
            });
        }
    }
    let plain = home.join("sandboxes");
    for (pid, dir) in rootless::all_pastas() {
        let parent = dir.parent();
        let young = rootless::age(pid).is_none_or(|a| a < PASTA_MIN_AGE);
        if (parent != Some(sandboxes.as_path()) && parent != Some(plain.as_path())) || young {
            continue;
        }
        let canonical = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        let why = match with_net.contains(&canonical) {
            false => "no sandbox owns",
            true if rootless::runs_nothing(pid) => "runs no VMM",
            true => continue,
        };
        out.push(Leftover {
            what: format!("pasta pid {pid} for {}, which {why}", dir.display()),
            kind: Kind::Pasta(pid),
        });
    }
    out
}
