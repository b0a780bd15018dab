//! `meta.json`: what a checkpoint is, where its files are and what it cost.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file;

/// Version of the checkpoint layout and `meta.json` this build writes. Version 2 adds [`CheckpointMeta::files`]
/// and memory layer chunk checksums; version 1 checkpoints are still read (unchecked).
pub const META_FORMAT_VERSION: u16 = 2;
/// The oldest version this build reads.
pub const META_FORMAT_OLDEST: u16 = 1;
/// The checksum's key in `meta.json`.
const CRC_KEY: &str = "crc64";
/// Largest `meta.json` read back.
const MAX_META_LEN: u64 = 1 << 20;

/// The memory part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryMeta {
    /// Pages held by the layer, in MiB (dirty since the parent; all touched pages for a base).
    pub dirty_mib: f64,
    /// Layer file name inside the checkpoint directory (its index is `<layer_file>.index`).
    pub layer_file: String,
}

/// One drive's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskMeta {
    /// The drive's id (as in the VM config).
    pub drive_id: String,
    /// Block data written since the parent, in MiB.
    pub delta_mib: f64,
    /// Delta file name inside the checkpoint directory (its index is `<layer_file>.index`).
    pub layer_file: String,
}

/// The contents of `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// The checkpoint's name (its directory name).
    pub name: String,
    /// The checkpoint this one's layers apply over; `None` for a base (Full memory layer).
    pub parent: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// [`META_FORMAT_VERSION`] at the time of writing.
    pub format_version: u16,
    /// The CPU template the VM ran with, if any (a restore must use the same).
    pub cpu_template: Option<String>,
    /// The memory layer.
    pub memory: MemoryMeta,
    /// One delta per drive.
    pub disks: Vec<DiskMeta>,
    /// How long the VM was paused for this checkpoint, ms.
    pub pause_ms: f64,
    /// How long writing the files took, ms.
    pub write_ms: f64,
    /// From the checkpoint's request to its files written (the copy included, whether the guest
    /// ran during it or not), ms; 0 in checkpoints from before this field. The commit that syncs
    /// the files and writes this metadata follows (since 2026-12-07 no file is synced before
    /// it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total_ms: f64,
    /// The CRC-64 of each small file of the checkpoint (`state` and every layer's index, whose memory
    /// index holds the layer's chunk checksums), by file name: what binds each file to this checkpoint.
    /// Filled in by [`super::CheckpointStore::commit`]; empty in version 1 checkpoints.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files: std::collections::BTreeMap<String, u64>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A file name inside a checkpoint directory: one path component, no `..`, allowed characters only.
pub(crate) fn check_file_name(name: &str) -> Result<()> {
    super::store::validate_name(name)
        .map_err(|_| Error::InvalidMeta(format!("bad file name {name:?}")))
}

impl CheckpointMeta {
    /// Check the fields that must hold for a restore: version, names, file names, numbers.
    pub fn validate(&self) -> Result<()> {
        if !(META_FORMAT_OLDEST..=META_FORMAT_VERSION).contains(&self.format_version) {
            return Err(Error::UnsupportedVersion {
                found: self.format_version,
                supported: META_FORMAT_VERSION,
            });
        }
        super::store::validate_name(&self.name)?;
        if let Some(p) = &self.parent {
            super::store::validate_name(p)?;
            if p == &self.name {
                return Err(Error::InvalidMeta(format!(
                    "{:?} is its own parent",
                    self.name
                )));
            }
        }
        check_file_name(&self.memory.layer_file)?;
        for f in self.files.keys() {
            check_file_name(f)?;
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.disks {
            super::store::validate_name(&d.drive_id)
                .map_err(|_| Error::InvalidMeta(format!("bad drive id {:?}", d.drive_id)))?;
            check_file_name(&d.layer_file)?;
            if !seen.insert(&d.drive_id) {
                return Err(Error::InvalidMeta(format!(
                    "drive {:?} listed twice",
                    d.drive_id
                )));
            }
        }
        let nums = [
            self.memory.dirty_mib,
            self.pause_ms,
            self.write_ms,
            self.total_ms,
        ]
        .into_iter()
        .chain(self.disks.iter().map(|d| d.delta_mib));
        for x in nums {
            if !x.is_finite() || x < 0.0 {
                return Err(Error::InvalidMeta(format!(
                    "figure {x} is not a finite non-negative number"
                )));
            }
        }
        Ok(())
    }

    /// The bytes the checksum covers: the compact JSON of the fields, in declaration order.
    fn canonical(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(Error::Json)
    }

    /// Pretty JSON of the fields plus `"crc64"`: the CRC-64/XZ (16 hex digits) of the compact JSON of the
    /// fields, so a damaged `meta.json` is refused instead of silently naming the wrong parent or file.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let crc = crate::file::crc64(&self.canonical()?);
        let mut v = serde_json::to_value(self).map_err(Error::Json)?;
        if let serde_json::Value::Object(map) = &mut v {
            map.insert(
                CRC_KEY.to_string(),
                serde_json::Value::String(format!("{crc:016x}")),
            );
        }
        serde_json::to_vec_pretty(&v).map_err(Error::Json)
    }

    /// Parse, check the `"crc64"` field and validate.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(Error::Json)?;
        let stored = match &mut v {
            serde_json::Value::Object(map) => map.remove(CRC_KEY),
            _ => None,
        };
        let Some(serde_json::Value::String(stored)) = stored else {
            return Err(Error::InvalidMeta(format!(
                "missing or malformed {CRC_KEY:?}"
            )));
        };
        let stored = u64::from_str_radix(&stored, 16)
            .ok()
            .filter(|_| stored.len() == 16 && stored.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| Error::InvalidMeta(format!("malformed {CRC_KEY:?}")))?;
        let m: CheckpointMeta = serde_json::from_value(v).map_err(Error::Json)?;
        let computed = crate::file::crc64(&m.canonical()?);
        if computed != stored {
            return Err(Error::Checksum { stored, computed });
        }
        m.validate()?;
        Ok(m)
    }

    /// Validate and write atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        file::write_bytes_atomic(path, &self.to_json()?)
    }

    /// Read (bounded) and validate `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        if len > MAX_META_LEN {
            return Err(Error::PayloadTooLarge {
                len,
                max: MAX_META_LEN,
            }
            .in_file(path));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        Self::from_json(&bytes).map_err(|e| e.in_file(path))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(name: &str, parent: Option<&str>) -> CheckpointMeta {
        CheckpointMeta {
            name: name.into(),
            parent: parent.map(Into::into),
            created_unix_ms: 1_700_000_000_000,
            format_version: META_FORMAT_VERSION,
            cpu_template: Some("T2".into()),
            memory: MemoryMeta {
                dirty_mib: 16.0,
                layer_file: "mem.layer".into(),
            },
            disks: vec![DiskMeta {
                drive_id: "rootfs".into(),
                delta_mib: 1.5,
                layer_file: "disk.rootfs.layer".into(),
            }],
            pause_ms: 0.2,
            write_ms: 2.5,
            total_ms: 0.0,
            files: Default::default(),
        }
    }

    #[test]
    fn json_roundtrip_and_file() {
        let m = sample("c1", Some("c0"));
        assert_eq!(CheckpointMeta::from_json(&m.to_json().unwrap()).unwrap(), m);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.json");
        m.save(&p).unwrap();
        assert_eq!(CheckpointMeta::load(&p).unwrap(), m);
    }

    #[test]
    fn checksum_is_over_compact_json_in_field_order() {
        // Written by an independent implementation following docs/checkpoint-format.md.
        let doc = br#"{"name": "a", "parent": null, "created_unix_ms": 1, "format_version": 1,
            "cpu_template": null, "memory": {"dirty_mib": 0.0, "layer_file": "m"},
            "disks": [{"drive_id": "r", "delta_mib": 1.5, "layer_file": "d"}],
            "pause_ms": 0.0, "write_ms": 0.0, "crc64": "2c496465a5f612a6"}"#;
        let m = CheckpointMeta::from_json(doc).unwrap();
        assert_eq!(m.disks[0].delta_mib, 1.5);
        let canonical = br#"{"name":"a","parent":null,"created_unix_ms":1,"format_version":1,"cpu_template":null,"memory":{"dirty_mib":0.0,"layer_file":"m"},"disks":[{"drive_id":"r","delta_mib":1.5,"layer_file":"d"}],"pause_ms":0.0,"write_ms":0.0}"#;
        assert_eq!(crate::file::crc64(canonical), 0x2c49_6465_a5f6_12a6);
        assert!(String::from_utf8(m.to_json().unwrap())
            .unwrap()
            .contains("\"crc64\": \"2c496465a5f612a6\""));
    }

    #[test]
    fn invalid_meta_is_refused() {
        type Mutation = Box<dyn Fn(&mut CheckpointMeta)>;
        let bad: Vec<Mutation> = vec![
            Box::new(|m| m.format_version = 3),
            Box::new(|m| m.format_version = 0),
            Box::new(|m| {
                m.files.insert("../state".into(), 1);
            }),
            Box::new(|m| m.name = "../x".into()),
            Box::new(|m| m.parent = Some("c1".into())),
            Box::new(|m| m.memory.layer_file = "/etc/passwd".into()),
            Box::new(|m| m.disks[0].layer_file = "..".into()),
            Box::new(|m| m.disks[0].drive_id = "a/b".into()),
            Box::new(|m| m.disks.push(m.disks[0].clone())),
            Box::new(|m| m.pause_ms = f64::NAN),
            Box::new(|m| m.write_ms = -1.0),
        ];
        for (i, f) in bad.iter().enumerate() {
            let mut m = sample("c1", None);
            f(&mut m);
            assert!(m.validate().is_err(), "case {i}");
        }
        assert!(CheckpointMeta::from_json(b"{").is_err());
        assert!(CheckpointMeta::from_json(b"[1]").is_err());
        let good = String::from_utf8(sample("c1", None).to_json().unwrap()).unwrap();
        // Unknown fields, a missing or wrong checksum, and edited values are refused.
        let extra = good.replacen('{', "{\"extra\": 1,", 1);
        assert!(matches!(
            CheckpointMeta::from_json(extra.as_bytes()),
            Err(Error::Json(_))
        ));
        let edited = good.replace("\"write_ms\": 2.5", "\"write_ms\": 3.5");
        assert_ne!(edited, good);
        assert!(matches!(
            CheckpointMeta::from_json(edited.as_bytes()),
            Err(Error::Checksum { .. })
        ));
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let mut obj = v.as_object().unwrap().clone();
        obj.remove("crc64");
        assert!(CheckpointMeta::from_json(&serde_json::to_vec(&obj).unwrap()).is_err());
        // Whitespace does not matter.
        let compact = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            CheckpointMeta::from_json(&compact).unwrap(),
            sample("c1", None)
        );
    }
}
