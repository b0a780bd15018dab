//! A sandbox's egress policy as `cairn policy` and `cairn serve` (`/v1/sandboxes/{name}/policy`)
//! both change and show it: the same typed request and answer, the same calls.

use super::policy::{Action, Policy, Rule, PRESETS};
use super::NetError;
use crate::sandbox::{Home, SandboxError};
use serde::{Deserialize, Serialize};

/// A new policy: a preset (default: open), then allow and deny patterns on top. The body of
/// `PUT /v1/sandboxes/{name}/policy`; `cairn policy set`'s flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// Start from this preset (`open`, `none`, `dev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Allow names matching these patterns (`name`, `*.suffix` or `*`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Deny names matching these patterns.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl PolicyChange {
    /// The policy it describes; a bad preset or pattern is an error.
    pub fn build(&self) -> Result<Policy, NetError> {
        let mut policy = match &self.preset {
            Some(p) => Policy::preset(p)?,
            None => Policy::default(),
        };
        for a in &self.allow {
            policy.push(Action::Allow, a)?;
        }
        for d in &self.deny {
            policy.push(Action::Deny, d)?;
        }
        Ok(policy)
    }
}

/// A sandbox's network, as shown with its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkView {
    /// The guest's address, `A.B.C.D/PREFIX`.
    pub address: String,
    /// The gateway (the host end of the link).
    pub gateway: String,
    /// The resolver the guest uses (the gateway's forwarder).
    pub resolver: String,
    /// The guest's MAC.
    pub mac: String,
    /// The network namespace.
    pub netns: String,
    /// The nftables table (`ip cairn-ID`).
    pub table: String,
}

/// A sandbox's network and egress policy: `cairn policy show --json`, `GET …/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    /// The sandbox.
    pub sandbox: String,
    /// Its network.
    pub network: NetworkView,
    /// Whether egress is limited to the addresses allowed names resolved to (it has rules).
    pub restricts: bool,
    /// The rules; none: every public address.
    pub rules: Vec<Rule>,
}

/// One preset: `cairn policy presets`, `GET /v1/policy/presets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetView {
    /// Its name, for `preset`.
    pub name: String,
    /// What it allows.
    pub description: String,
}

/// The presets.
pub fn presets() -> Vec<PresetView> {
    PRESETS
        .iter()
        .map(|(name, what)| PresetView {
            name: (*name).into(),
            description: (*what).into(),
        })
        .collect()
}

/// Sandbox `name`'s network and policy.
pub fn show(home: &Home, name: &str) -> Result<PolicyView, SandboxError> {
    let r = home.registry()?.get(name)?;
    let paths = home.paths(&r.name);
    let spec = super::load(&paths)?.ok_or_else(|| NetError::NoNetwork(r.name.clone()))?;
    let policy = super::policy_load(&paths)?;
    Ok(PolicyView {
        sandbox: r.name,
        network: NetworkView {
            address: format!("{}/{}", spec.guest, spec.prefix),
            gateway: spec.gateway.to_string(),
            resolver: spec.gateway.to_string(),
            mac: spec.mac.clone(),
            netns: spec.netns(),
            table: format!("ip {}", spec.table()),
        },
        restricts: policy.restricts(),
        rules: policy.rules,
    })
}

/// Replaces sandbox `name`'s policy, live; returns the policy now in force.
pub fn set(home: &Home, name: &str, change: &PolicyChange) -> Result<Policy, SandboxError> {
    let r = home.registry()?.get(name)?;
    let policy = change.build()?;
    super::set_policy(&home.paths(&r.name), &r.name, &policy)?;
    Ok(policy)
}

/// One line naming the rules (`allow github.com, deny *`), or that the policy is open.
pub fn summary(p: &Policy) -> String {
    if p.rules.is_empty() {
        return "open: every public address".into();
    }
    p.rules
        .iter()
        .map(|r| match r.action {
            Action::Allow => format!("allow {}", r.pattern),
            Action::Deny => format!("deny {}", r.pattern),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_builds_its_policy_and_refuses_bad_input() {
        let c = PolicyChange {
            preset: Some("none".into()),
            allow: vec!["GitHub.com".into()],
            deny: vec![],
        };
        let p = c.build().unwrap();
        assert_eq!(summary(&p), "deny *, allow github.com");
        assert!(p.restricts());
        assert_eq!(
            summary(&PolicyChange::default().build().unwrap()),
            "open: every public address"
        );
        let bad = PolicyChange {
            preset: Some("nope".into()),
            ..PolicyChange::default()
        };
        assert!(matches!(bad.build(), Err(NetError::BadPreset(_))));
        let bad = PolicyChange {
            allow: vec!["a..b".into()],
            ..PolicyChange::default()
        };
        assert!(bad.build().is_err());
        let j: Result<PolicyChange, _> = serde_json::from_str(r#"{"allow":[],"oops":1}"#);
        assert!(j.is_err());
        assert_eq!(presets().len(), PRESETS.len());
    }
}
