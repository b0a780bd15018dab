//! Firecracker's balloon device: `PUT`/`GET`/`PATCH /balloon`, `GET`/`PATCH
//! /balloon/statistics`, `PATCH /balloon/hinting/start|stop`, `GET /balloon/hinting/status` and
//! the configuration file's `balloon` key.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validate};

/// `PUT /balloon`, the `balloon` key, and what `GET /balloon` answers (every key written out,
/// as Firecracker v1.16.1 writes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
    /// Whether the guest may deflate the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; 0 (the default) turns statistics off.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page hinting: the host can ask the guest for its free memory
    /// (`/balloon/hinting/*`).
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Free page reporting: the guest gives its free memory back on its own.
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl Validate for BalloonConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// `PATCH /balloon/hinting/start` (after boot): the body is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonHintingStart {
    /// Have the VMM acknowledge the end of the run itself as soon as the guest has sent every
    /// hint (default `true`); otherwise the run lasts until `PATCH /balloon/hinting/stop`.
    #[serde(default = "default_true")]
    pub acknowledge_on_stop: bool,
}

fn default_true() -> bool {
    true
}

impl Default for BalloonHintingStart {
    fn default() -> Self {
        Self {
            acknowledge_on_stop: true,
        }
    }
}

impl Validate for BalloonHintingStart {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// `GET /balloon/hinting/status`: the command id the host last sent (0 before any run, 1 once a
/// run is done, else the running run's id) and the one the guest last sent (`null` until it
/// sends one), as Firecracker writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonHintingStatus {
    /// The host's last command id.
    pub host_cmd: u32,
    /// The guest's last command id.
    pub guest_cmd: Option<u32>,
}

/// `PATCH /balloon` (after boot): a new target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
}

impl Validate for BalloonUpdate {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// `PATCH /balloon/statistics` (after boot): a new polling interval. Statistics cannot be
/// turned on or off after boot, only their interval changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// Seconds between statistics refreshes.
    pub stats_polling_interval_s: u16,
}

impl Validate for BalloonStatsUpdate {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// `GET /balloon/statistics`: the balloon's target and actual size, and the guest's memory
/// statistics as last reported (each absent until the guest reports it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStatsReply {
    /// Target size in 4 KiB pages.
    pub target_pages: u32,
    /// Pages the guest has given to the balloon.
    pub actual_pages: u32,
    /// Target size in MiB.
    pub target_mib: u32,
    /// Size the guest has given, in MiB.
    pub actual_mib: u32,
    /// Memory swapped in (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Memory swapped out (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Major page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Minor page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Memory not used for anything (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// All memory the guest has (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Memory available for new applications without swapping (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Memory quickly reclaimable from caches (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// OOM killer invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Allocation stalls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Memory scanned asynchronously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Memory scanned directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Memory reclaimed asynchronously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Memory reclaimed directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_json, parse_vm_config, HugePages, VmConfig};

    fn valid_base() -> VmConfig {
        parse_vm_config(r#"{"boot-source": {"kernel_image_path": "vmlinux"}}"#).unwrap()
    }

    fn validate_err(cfg: &VmConfig) -> ConfigError {
        cfg.validate()
            .expect_err("validate() accepted an invalid config")
    }

    #[test]
    fn bodies_parse_as_firecracker_s() {
        let b: BalloonConfig =
            parse_json(br#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
        assert_eq!(b.amount_mib, 64);
        assert_eq!(b.stats_polling_interval_s, 0);
        b.validate().unwrap();
        assert_eq!(
            serde_json::to_value(b).unwrap(),
            serde_json::json!({"amount_mib": 64, "deflate_on_oom": true,
                "stats_polling_interval_s": 0, "free_page_hinting": false,
                "free_page_reporting": false})
        );
        for bad in [
            &br#"{"amount_mib": 1}"#[..],
            br#"{"deflate_on_oom": true}"#,
            br#"{"amount_mib": -1, "deflate_on_oom": true}"#,
            br#"{"amount_mib": 1, "deflate_on_oom": true, "x": 1}"#,
            br#"{"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": 70000}"#,
        ] {
            assert!(parse_json::<BalloonConfig>(bad).is_err());
        }
        let hinting: BalloonConfig = parse_json(
            br#"{"amount_mib": 1, "deflate_on_oom": true, "free_page_hinting": true,
                "free_page_reporting": true}"#,
        )
        .unwrap();
        hinting.validate().unwrap();
        assert!(hinting.free_page_hinting && hinting.free_page_reporting);
        // Hinting bodies: the flag defaults to true; unknown keys are ignored, as Firecracker
        // ignores them.
        let start: BalloonHintingStart = parse_json(br#"{}"#).unwrap();
        assert!(start.acknowledge_on_stop);
        let start: BalloonHintingStart =
            parse_json(br#"{"acknowledge_on_stop": false, "x": 1}"#).unwrap();
        assert!(!start.acknowledge_on_stop);
        assert!(parse_json::<BalloonHintingStart>(br#"{"acknowledge_on_stop": 3}"#).is_err());
        assert_eq!(
            serde_json::to_value(BalloonHintingStatus::default()).unwrap(),
            serde_json::json!({"host_cmd": 0, "guest_cmd": null})
        );
        assert!(parse_json::<BalloonUpdate>(br#"{"amount_mib": 1, "x": 2}"#).is_err());
        assert!(parse_json::<BalloonStatsUpdate>(br#"{}"#).is_err());
        let r = BalloonStatsReply {
            free_memory: Some(5),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            serde_json::json!({"target_pages": 0, "actual_pages": 0, "target_mib": 0,
                "actual_mib": 0, "free_memory": 5})
        );
    }

    #[test]
    fn balloon_key_rules() {
        let cfg = parse_vm_config(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "balloon": {"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.balloon.unwrap().stats_polling_interval_s, 1);
        let mut big = valid_base();
        big.balloon = Some(BalloonConfig {
            amount_mib: 129,
            ..Default::default()
        });
        assert_eq!(validate_err(&big).field(), "balloon.amount_mib");
        let mut huge = valid_base();
        huge.balloon = Some(BalloonConfig::default());
        huge.machine_config.huge_pages = HugePages::Hugetlbfs2M;
        assert_eq!(validate_err(&huge).field(), "balloon");
        let mut hinting = valid_base();
        hinting.balloon = Some(BalloonConfig {
            free_page_hinting: true,
            free_page_reporting: true,
            ..Default::default()
        });
        hinting.validate().unwrap();
        assert!(parse_vm_config(r#"{"balloon": {"x": 1}}"#).is_err());
    }
}
