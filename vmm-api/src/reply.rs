//! The bodies cairn-vmm answers with. Reading them is strict: a missing field is an error (an
//! `Option` field must be present, as `null` when empty), never a silent default. Unknown
//! fields are accepted, so an older client can read a newer VMM's replies.

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::full_config::{
    BootSourceReply, DriveReply, EntropyReply, FullVmConfig, NetReply, VsockReply,
};

/// Lifecycle state reported by `GET /`, with Firecracker's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured or being configured; not booted yet.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
}

/// The body of `GET /`, as Firecracker returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Instance id (`--id`; Firecracker's default is `anonymous-instance`).
    pub id: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// The VMM's version.
    pub vmm_version: String,
    /// The VMM's name (`cairn`).
    pub app_name: String,
}

/// One disk's share of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointDisk {
    /// The drive, as configured.
    pub drive_id: String,
    /// MiB written to it since the parent checkpoint.
    pub delta_mib: f64,
}

/// cairn's answer to `PUT /checkpoints`, and one item of `GET /checkpoints`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The checkpoint's name.
    pub name: String,
    /// The checkpoint it was taken on top of (`null` for the first).
    #[serde(deserialize_with = "required")]
    pub parent: Option<String>,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Guest memory written since the parent, in MiB.
    pub dirty_memory_mib: f64,
    /// All disks' deltas together, in MiB.
    pub disk_delta_mib: f64,
    /// Each disk's delta.
    pub disks: Vec<CheckpointDisk>,
    /// How long the vCPUs were paused, in ms.
    pub pause_ms: f64,
    /// How long writing the checkpoint took, in ms.
    pub write_ms: f64,
    /// From the request to the checkpoint's files written, in ms: the guest ran for all of it
    /// but `pause_ms` (0 for checkpoints taken before this field existed).
    pub total_ms: f64,
    /// The CPU template the VM ran with (`null` for none).
    #[serde(deserialize_with = "required")]
    pub cpu_template: Option<String>,
}

/// The body of every error reply (4xx, 5xx), as Firecracker sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What went wrong, in words.
    pub fault_message: String,
}

/// Reads a field that must be present even when its type is an `Option` (serde otherwise
/// fills an absent `Option` with `None`).
fn required<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<T, D::Error> {
    T::deserialize(de)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointInfo {
        CheckpointInfo {
            name: "c1".into(),
            parent: None,
            created_unix_ms: 1_700_000_000_000,
            dirty_memory_mib: 12.5,
            disk_delta_mib: 1.5,
            disks: vec![CheckpointDisk {
                drive_id: "disk".into(),
                delta_mib: 1.5,
            }],
            pause_ms: 3.25,
            write_ms: 40.0,
            total_ms: 42.0,
            cpu_template: Some("T2".into()),
        }
    }

    #[test]
    fn replies_round_trip() {
        let c = sample();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<CheckpointInfo>(&text).unwrap(), c);
        let info = InstanceInfo {
            id: "anonymous-instance".into(),
            state: InstanceState::NotStarted,
            vmm_version: "0.1.0".into(),
            app_name: "cairn".into(),
        };
        let text = serde_json::to_string(&info).unwrap();
        assert!(text.contains(r#""state":"Not started""#), "{text}");
        assert_eq!(serde_json::from_str::<InstanceInfo>(&text).unwrap(), info);
    }

    #[test]
    fn missing_fields_are_errors_even_optional_ones() {
        let full = serde_json::to_value(sample()).unwrap();
        for field in full.as_object().unwrap().keys() {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(field);
            let err = serde_json::from_value::<CheckpointInfo>(v).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("missing field `{field}`")),
                "{field}: {err}"
            );
        }
        let err =
            serde_json::from_str::<InstanceInfo>(r#"{"id":"x","state":"Running"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
        // `null` is how an empty Option is sent, and is read back as None.
        let mut v = full;
        v["cpu_template"] = serde_json::Value::Null;
        let c: CheckpointInfo = serde_json::from_value(v).unwrap();
        assert_eq!(c.cpu_template, None);
    }

    #[test]
    fn unknown_reply_fields_are_accepted() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["added_later"] = serde_json::json!(1);
        assert_eq!(
            serde_json::from_value::<CheckpointInfo>(v).unwrap(),
            sample()
        );
    }
}

/// The body of `GET /version`, as Firecracker returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The Firecracker API version the VMM implements.
    pub firecracker_version: String,
}
