//! Firecracker's custom CPU templates: the document behind the config file's `"cpu-config"` path
//! and the body of `PUT /cpu-config`.
//!
//! ```json
//! {
//!   "kvm_capabilities": ["171", "!172"],
//!   "cpuid_modifiers": [
//!     {"leaf": "0x40000001", "subleaf": "0x0", "flags": 0,
//!      "modifiers": [{"register": "eax", "bitmap": "0bxxxxxxxxxxxxxxxxxx0x0xxx0xxxxxxx"}]}
//!   ],
//!   "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0000000000000000000000000000000000000000000000000000000000000000"}]
//! }
//! ```
//!
//! A bitmap is `0b` and up to 32 (CPUID) or 64 (MSR) characters, most significant bit first:
//! `0` clears the bit, `1` sets it, `x` leaves it as cairn would set it; `_` may separate groups,
//! and a shorter bitmap leaves the high bits alone. Leaves, subleaves and MSR addresses are strings
//! holding a number (`"0x1"`, `"0b1"` or `"1"`). The aarch64-only sections (`vcpu_features`,
//! `reg_modifiers`) must be empty.

use serde::{Deserialize, Deserializer};

use super::{ConfigError, Validate};

/// Bits to force in a register: where `mask` has a 1, the register takes the bit of `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitFilter {
    /// The bits the template decides.
    pub mask: u64,
    /// Their values (only bits inside `mask` are set).
    pub value: u64,
}

impl BitFilter {
    /// `old` with the template's bits applied.
    pub fn apply(&self, old: u64) -> u64 {
        (old & !self.mask) | (self.value & self.mask)
    }

    /// Parses `0b[01x_]{1,width}`.
    pub fn parse(text: &str, width: u32) -> Result<Self, String> {
        let digits = text
            .strip_prefix("0b")
            .ok_or_else(|| format!("bitmap {text:?} must start with 0b"))?;
        let digits: Vec<char> = digits.chars().filter(|c| *c != '_').collect();
        if digits.is_empty() || digits.len() > width as usize {
            return Err(format!(
                "bitmap {text:?} must have 1 to {width} bits, it has {}",
                digits.len()
            ));
        }
        let mut filter = BitFilter::default();
        for (bit, c) in digits.iter().rev().enumerate() {
            match c {
                '0' => filter.mask |= 1 << bit,
                '1' => {
                    filter.mask |= 1 << bit;
                    filter.value |= 1 << bit;
                }
                'x' | 'X' => {}
                other => {
                    return Err(format!(
                        "bitmap {text:?} has {other:?}: only 0, 1, x and _ are allowed"
                    ))
                }
            }
        }
        Ok(filter)
    }
}

/// A number written as a string: `0x` hexadecimal, `0b` binary or decimal.
fn parse_number(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16)
    } else if let Some(bin) = t.strip_prefix("0b") {
        u64::from_str_radix(bin, 2)
    } else {
        t.parse()
    };
    parsed.map_err(|e| format!("{text:?} is not a number: {e}"))
}

fn number_u32<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    let text = String::deserialize(de)?;
    let n = parse_number(&text).map_err(serde::de::Error::custom)?;
    u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{text:?} exceeds 32 bits")))
}

fn bitmap32<'de, D: Deserializer<'de>>(de: D) -> Result<BitFilter, D::Error> {
    BitFilter::parse(&String::deserialize(de)?, 32).map_err(serde::de::Error::custom)
}

fn bitmap64<'de, D: Deserializer<'de>>(de: D) -> Result<BitFilter, D::Error> {
    BitFilter::parse(&String::deserialize(de)?, 64).map_err(serde::de::Error::custom)
}

/// A CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// New bits for one register of a CPUID leaf.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    /// Which register.
    pub register: CpuidRegister,
    /// The bits to force.
    #[serde(deserialize_with = "bitmap32")]
    pub bitmap: BitFilter,
}

/// Changes to one CPUID leaf and subleaf. A leaf the vCPU does not have yet is added.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    /// The leaf (function).
    #[serde(deserialize_with = "number_u32")]
    pub leaf: u32,
    /// The subleaf (index).
    #[serde(deserialize_with = "number_u32")]
    pub subleaf: u32,
    /// KVM's CPUID entry flags (1: the subleaf is significant).
    #[serde(default)]
    pub flags: u32,
    /// Register changes.
    #[serde(default)]
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// New bits for one MSR, written at boot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    /// The MSR's address.
    #[serde(deserialize_with = "number_u32")]
    pub addr: u32,
    /// The bits to force.
    #[serde(deserialize_with = "bitmap64")]
    pub bitmap: BitFilter,
}

/// A KVM capability the template adds to the checks made at start (`"N"`) or removes from them
/// (`"!N"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmCapabilityModifier {
    /// KVM must offer capability N.
    Require(u32),
    /// Do not check capability N.
    Skip(u32),
}

impl<'de> Deserialize<'de> for KvmCapabilityModifier {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        let (skip, number) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let cap: u32 = number.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "{text:?} is not a KVM capability: write its decimal number, with ! in front to drop it"
            ))
        })?;
        Ok(if skip {
            Self::Skip(cap)
        } else {
            Self::Require(cap)
        })
    }
}

/// A custom CPU template (Firecracker's format).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomCpuTemplate {
    /// KVM capabilities to check at start, or not to check.
    #[serde(default)]
    pub kvm_capabilities: Vec<KvmCapabilityModifier>,
    /// aarch64 only; must be empty here.
    #[serde(default)]
    pub vcpu_features: Vec<serde_json::Value>,
    /// CPUID changes.
    #[serde(default)]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    /// MSR changes.
    #[serde(default)]
    pub msr_modifiers: Vec<MsrModifier>,
    /// aarch64 only; must be empty here.
    #[serde(default)]
    pub reg_modifiers: Vec<serde_json::Value>,
}

impl CustomCpuTemplate {
    /// Reads and checks a template file (the config file's `"cpu-config"`).
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|e| {
            ConfigError::invalid("", format!("cannot read {}: {e}", path.display()))
        })?;
        super::parse_and_validate(&text)
    }
}

impl Validate for CustomCpuTemplate {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.vcpu_features.is_empty() {
            return Err(ConfigError::invalid(
                "vcpu_features",
                "aarch64 only; must be empty on x86_64",
            ));
        }
        if !self.reg_modifiers.is_empty() {
            return Err(ConfigError::invalid(
                "reg_modifiers",
                "aarch64 only; must be empty on x86_64",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, leaf) in self.cpuid_modifiers.iter().enumerate() {
            if !seen.insert((leaf.leaf, leaf.subleaf)) {
                return Err(ConfigError::invalid(
                    format!("cpuid_modifiers[{i}]"),
                    format!(
                        "leaf {:#x} subleaf {:#x} appears twice",
                        leaf.leaf, leaf.subleaf
                    ),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, msr) in self.msr_modifiers.iter().enumerate() {
            if !seen.insert(msr.addr) {
                return Err(ConfigError::invalid(
                    format!("msr_modifiers[{i}].addr"),
                    format!("MSR {:#x} appears twice", msr.addr),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_and_validate;

    #[test]
    fn bitmaps_read_msb_first() {
        let f = BitFilter::parse("0b1x0", 32).unwrap();
        assert_eq!((f.mask, f.value), (0b101, 0b100));
        assert_eq!(f.apply(0b011), 0b110);
        let f = BitFilter::parse("0bxxxx_0000_1111", 32).unwrap();
        assert_eq!((f.mask, f.value), (0xff, 0x0f));
        let full = format!("0b1{}", "x".repeat(63));
        assert_eq!(BitFilter::parse(&full, 64).unwrap().value, 1 << 63);
    }

    #[test]
    fn bad_bitmaps_are_refused() {
        for (text, width) in [
            ("1010", 32),
            ("0b", 32),
            ("0b102", 32),
            ("0b___", 32),
            (&*format!("0b{}", "1".repeat(33)), 32),
            (&*format!("0b{}", "1".repeat(65)), 64),
        ] {
            assert!(BitFilter::parse(text, width).is_err(), "{text}");
        }
    }

    #[test]
    fn firecracker_template_parses() {
        let t: CustomCpuTemplate = parse_and_validate(
            br#"{
              "kvm_capabilities": ["171", "!172"],
              "cpuid_modifiers": [
                {"leaf": "0x40000001", "subleaf": "0x0", "flags": 0,
                 "modifiers": [{"register": "eax", "bitmap": "0bxxxxxxxxxxxxxxxxxx0x0xxx0xxxxxxx"}]},
                {"leaf": "7", "subleaf": "0b0", "flags": 1,
                 "modifiers": [{"register": "ebx", "bitmap": "0b1"}, {"register": "edx", "bitmap": "0b0x"}]}
              ],
              "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b10"}]
            }"#,
        )
        .unwrap();
        assert_eq!(
            t.kvm_capabilities,
            vec![
                KvmCapabilityModifier::Require(171),
                KvmCapabilityModifier::Skip(172)
            ]
        );
        let l = &t.cpuid_modifiers[0];
        assert_eq!((l.leaf, l.subleaf, l.flags), (0x4000_0001, 0, 0));
        assert_eq!(l.modifiers[0].register, CpuidRegister::Eax);
        assert_eq!(l.modifiers[0].bitmap.mask, (1 << 7) | (1 << 11) | (1 << 13));
        assert_eq!(l.modifiers[0].bitmap.value, 0);
        assert_eq!(t.cpuid_modifiers[1].leaf, 7);
        assert_eq!(
            t.cpuid_modifiers[1].modifiers[1].register,
            CpuidRegister::Edx
        );
        assert_eq!(t.msr_modifiers[0].addr, 0x10a);
        assert_eq!(t.msr_modifiers[0].bitmap.value, 0b10);
        let empty: CustomCpuTemplate = parse_and_validate(b"{}").unwrap();
        assert_eq!(empty, CustomCpuTemplate::default());
    }

    #[test]
    fn bad_templates_name_the_field() {
        for (json, field) in [
            (
                r#"{"cpuid_modifiers": [{"leaf": "0xzz", "subleaf": "0"}]}"#,
                "cpuid_modifiers[0].leaf",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0x100000000", "subleaf": "0"}]}"#,
                "cpuid_modifiers[0].leaf",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": "0"}]}"#,
                "cpuid_modifiers[0].leaf",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "modifiers": [{"register": "esi", "bitmap": "0b1"}]}]}"#,
                "cpuid_modifiers[0].modifiers[0].register",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "modifiers": [{"register": "eax", "bitmap": "0b2"}]}]}"#,
                "cpuid_modifiers[0].modifiers[0].bitmap",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0"}, {"leaf": "0x1", "subleaf": "0"}]}"#,
                "cpuid_modifiers[1]",
            ),
            (
                r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b1"}, {"addr": "16", "bitmap": "0b0"}]}"#,
                "msr_modifiers[1].addr",
            ),
            (
                r#"{"msr_modifiers": [{"addr": "0x10"}]}"#,
                "msr_modifiers[0]",
            ),
            (r#"{"kvm_capabilities": ["!x"]}"#, "kvm_capabilities[0]"),
            (
                r#"{"vcpu_features": [{"index": 0, "bitmap": "0b1"}]}"#,
                "vcpu_features",
            ),
            (
                r#"{"reg_modifiers": [{"addr": "0x1", "bitmap": "0b1"}]}"#,
                "reg_modifiers",
            ),
            (r#"{"cpuid": []}"#, "cpuid"),
        ] {
            let err = parse_and_validate::<CustomCpuTemplate>(json.as_bytes()).unwrap_err();
            assert_eq!(err.field(), field, "{json}: {err}");
        }
    }
}
