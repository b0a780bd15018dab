//! `Restored`: the clock, the network and the identity after a restore, in one request. Each
//! part is tried whatever the others did, and the report says how each went, so the host can
//! treat them as before: a clock or identity failure is a note, a network failure fails the
//! start.

use super::{identity, netcfg};
use crate::proto::{RestoredReport, RestoredRequest};
use std::time::Instant;

/// Applies `req`: the clock first (so what follows is stamped with the right time), then the
/// identity (the RNG is reseeded before anything else draws from it), then the network.
pub(super) fn apply(req: &RestoredRequest) -> RestoredReport {
    let mut report = RestoredReport::default();
    let mut t = Instant::now();
    let mut lap = || {
        let now = Instant::now();
        let us = u32::try_from((now - t).as_micros()).unwrap_or(u32::MAX);
        t = now;
        us
    };
    if let Some(nanos) = req.clock_unix_nanos {
        report.clock_error = netcfg::set_clock(nanos)
            .err()
            .map(|e| crate::error_text(&e));
    }
    report.micros[0] = lap();
    report.identity_error = identity::apply(&req.identity)
        .err()
        .map(|e| crate::error_text(&e));
    report.micros[1] = lap();
    if let Some(cfg) = &req.net {
        report.net_error = netcfg::configure(cfg).err().map(|e| crate::error_text(&e));
    }
    report.micros[2] = lap();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{IdentityRequest, NetConfig};

    #[test]
    fn every_part_is_tried_and_reported_on_its_own() {
        // A bad hostname fails the identity before it changes anything, and a bad MAC fails the
        // network before any ioctl: neither touches this machine, and each is reported apart.
        let req = RestoredRequest {
            clock_unix_nanos: None,
            net: Some(NetConfig {
                mac: "not-a-mac".into(),
                iface: Some("eth0".into()),
                ..NetConfig::default()
            }),
            identity: IdentityRequest {
                hostname: Some("a b".into()),
                ..IdentityRequest::default()
            },
        };
        let report = apply(&req);
        assert_eq!(report.clock_error, None);
        assert!(report.identity_error.unwrap().contains("hostname"));
        assert!(report.net_error.unwrap().contains("MAC"));
        // Nothing asked, nothing done, nothing failed.
        let report = apply(&RestoredRequest::default());
        assert_eq!(
            (report.clock_error, report.net_error, report.identity_error),
            (None, None, None)
        );
    }
}
