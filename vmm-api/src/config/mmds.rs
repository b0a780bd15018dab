//! Firecracker's MMDS settings: `PUT /mmds/config` and the config file's `mmds-config`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validate};

/// The MMDS address when `ipv4_address` is not given.
pub const DEFAULT_MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Which MMDS protocol the guest speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// GETs need no session token (Firecracker calls V1 deprecated).
    #[default]
    V1,
    /// GETs need a session token from `PUT /latest/api/token`.
    V2,
}

/// `PUT /mmds/config` (before boot) and `mmds-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// The protocol version (default V1).
    #[serde(default)]
    pub version: MmdsVersion,
    /// The interfaces (ids of attached network interfaces) on which the guest reaches MMDS.
    pub network_interfaces: Vec<String>,
    /// The MMDS address: link-local, outside 169.254.0.0/24 and 169.254.255.0/24; default
    /// 169.254.169.254.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer in IMDS text whatever the request's `Accept` header says, as EC2's IMDS does.
    #[serde(default)]
    pub imds_compat: bool,
}

impl MmdsConfig {
    /// The MMDS address, the default filled in.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_MMDS_IPV4)
    }
}

/// Firecracker's rule for the MMDS address: link-local, but not in the first or last /24 (RFC
/// 3927 reserves them).
pub fn is_valid_mmds_ipv4(addr: Ipv4Addr) -> bool {
    matches!(addr.octets(), [169, 254, third, _] if third != 0 && third != 255)
}

impl Validate for MmdsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.network_interfaces.is_empty() {
            return Err(ConfigError::invalid(
                "network_interfaces",
                "The list of network interface IDs that allow forwarding MMDS requests is empty.",
            ));
        }
        if !is_valid_mmds_ipv4(self.ipv4()) {
            return Err(ConfigError::invalid(
                "ipv4_address",
                "The MMDS IPv4 address is not link local.",
            ));
        }
        Ok(())
    }
}

/// Firecracker's refusal of an MMDS config naming an interface that is not attached.
pub const UNKNOWN_MMDS_INTERFACE: &str = "The list of network interface IDs provided contains at \
     least one ID that does not correspond to any existing network interface.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_and_validate;

    fn err(json: &str) -> String {
        parse_and_validate::<MmdsConfig>(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn link_local_rule() {
        for (addr, ok) in [
            ([169, 254, 169, 254], true),
            ([169, 254, 1, 0], true),
            ([169, 254, 254, 255], true),
            ([169, 254, 0, 1], false),
            ([169, 254, 255, 1], false),
            ([169, 253, 1, 1], false),
            ([10, 0, 0, 1], false),
        ] {
            assert_eq!(is_valid_mmds_ipv4(Ipv4Addr::from(addr)), ok, "{addr:?}");
        }
    }

    #[test]
    fn parse_defaults_and_rules() {
        let c: MmdsConfig = parse_and_validate(br#"{"network_interfaces": ["eth0"]}"#).unwrap();
        assert_eq!(c.version, MmdsVersion::V1);
        assert_eq!(c.ipv4(), DEFAULT_MMDS_IPV4);
        assert!(!c.imds_compat);
        let c: MmdsConfig = parse_and_validate(
            br#"{"version": "V2", "ipv4_address": "169.254.169.250", "network_interfaces": ["a", "b"], "imds_compat": true}"#,
        )
        .unwrap();
        assert_eq!(c.version, MmdsVersion::V2);
        assert_eq!(c.ipv4(), Ipv4Addr::new(169, 254, 169, 250));
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"version":"V2","network_interfaces":["a","b"],"ipv4_address":"169.254.169.250","imds_compat":true}"#
        );
        assert!(err(r#"{"network_interfaces": []}"#)
            .starts_with("network_interfaces: The list of network interface IDs"));
        assert!(
            err(r#"{"network_interfaces": ["a"], "ipv4_address": "169.254.0.1"}"#)
                .starts_with("ipv4_address: The MMDS IPv4 address is not link local.")
        );
        assert!(
            err(r#"{"network_interfaces": ["a"], "ipv4_address": "10.0.0.1"}"#)
                .starts_with("ipv4_address:")
        );
        assert!(
            err(r#"{"network_interfaces": ["a"], "ipv4_address": "nope"}"#)
                .starts_with("ipv4_address:")
        );
        assert!(err(r#"{"version": "foo", "network_interfaces": ["a"]}"#)
            .contains("unknown variant `foo`, expected `V1` or `V2`"));
        assert!(err(r#"{}"#).contains("missing field `network_interfaces`"));
        assert!(err(r#"{"network_interfaces": ["a"], "x": 1}"#).contains("unknown field `x`"));
    }
}
