//! Applying a custom CPU template ([`CustomCpuTemplate`], Firecracker's format) to a vCPU's CPUID
//! and boot MSRs.
//!
//! The template comes last: after KVM's supported set is normalised for the topology and the
//! static template has masked it, and after the boot MSRs are chosen. What the template says is
//! what the guest gets, bit for bit; bits it leaves as `x` keep cairn's value.

use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry, CpuId};

use crate::arch::x86_64::cpuid::CpuidError;
use crate::config::{CpuidRegister, CustomCpuTemplate};

fn register(entry: &mut kvm_cpuid_entry2, reg: CpuidRegister) -> &mut u32 {
    match reg {
        CpuidRegister::Eax => &mut entry.eax,
        CpuidRegister::Ebx => &mut entry.ebx,
        CpuidRegister::Ecx => &mut entry.ecx,
        CpuidRegister::Edx => &mut entry.edx,
    }
}

/// `cpuid` with the template's CPUID modifiers applied. A leaf the template names that `cpuid`
/// lacks is added, starting from zero, with the template's flags.
pub fn apply_cpuid_modifiers(
    cpuid: &CpuId,
    template: &CustomCpuTemplate,
) -> Result<CpuId, CpuidError> {
    let mut entries = cpuid.as_slice().to_vec();
    for leaf in &template.cpuid_modifiers {
        let index = match entries
            .iter()
            .position(|e| e.function == leaf.leaf && e.index == leaf.subleaf)
        {
            Some(i) => i,
            None => {
                entries.push(kvm_cpuid_entry2 {
                    function: leaf.leaf,
                    index: leaf.subleaf,
                    ..Default::default()
                });
                entries.len() - 1
            }
        };
        let Some(entry) = entries.get_mut(index) else {
            continue;
        };
        entry.flags = leaf.flags;
        for m in &leaf.modifiers {
            let r = register(entry, m.register);
            // The filter of a 32-bit bitmap has no bits above 31.
            *r = m.bitmap.apply(u64::from(*r)) as u32;
        }
    }
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries)
}

/// The MSRs the template names that `boot` does not set, whose current value must be read from
/// the vCPU before [`apply_msr_modifiers`].
pub fn msrs_to_read(boot: &[kvm_msr_entry], template: &CustomCpuTemplate) -> Vec<u32> {
    template
        .msr_modifiers
        .iter()
        .map(|m| m.addr)
        .filter(|addr| !boot.iter().any(|e| e.index == *addr))
        .collect()
}

/// `boot` with the template's MSR modifiers applied: an MSR in `boot` starts from cairn's boot
/// value, any other from its value in `current` (read from the vCPU).
pub fn apply_msr_modifiers(
    boot: &[kvm_msr_entry],
    current: &[kvm_msr_entry],
    template: &CustomCpuTemplate,
) -> Vec<kvm_msr_entry> {
    let mut out = boot.to_vec();
    for m in &template.msr_modifiers {
        if let Some(e) = out.iter_mut().find(|e| e.index == m.addr) {
            e.data = m.bitmap.apply(e.data);
        } else {
            let old = current
                .iter()
                .find(|e| e.index == m.addr)
                .map_or(0, |e| e.data);
            out.push(kvm_msr_entry {
                index: m.addr,
                data: m.bitmap.apply(old),
                ..Default::default()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_and_validate;

    fn template(json: &str) -> CustomCpuTemplate {
        parse_and_validate(json.as_bytes()).unwrap()
    }

    #[test]
    fn cpuid_bits_are_forced_and_missing_leaves_added() {
        let base = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: 0xffff_ffff,
                ebx: 7,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 0x10,
                ..Default::default()
            },
        ])
        .unwrap();
        let t = template(
            r#"{"cpuid_modifiers": [
                {"leaf": "0x40000001", "subleaf": "0", "flags": 0,
                 "modifiers": [{"register": "eax", "bitmap": "0b0x0x0x0000000"}]},
                {"leaf": "0x1", "subleaf": "0", "flags": 0,
                 "modifiers": [{"register": "ecx", "bitmap": "0b1x1"}]},
                {"leaf": "0xd", "subleaf": "1", "flags": 1,
                 "modifiers": [{"register": "ebx", "bitmap": "0b11"}]}
            ]}"#,
        );
        let out = apply_cpuid_modifiers(&base, &t).unwrap();
        let e = out.as_slice();
        assert_eq!(e.len(), 3);
        // Of the 13 bits the bitmap covers, 7, 9 and 11 are kept and the rest cleared.
        assert_eq!(e[0].eax & 0x1fff, (1 << 7) | (1 << 9) | (1 << 11));
        assert_eq!(e[0].eax >> 13, 0xffff_ffff >> 13);
        assert_eq!(e[0].ebx, 7);
        assert_eq!(e[1].ecx, 0x15);
        assert_eq!((e[2].function, e[2].index, e[2].flags), (0xd, 1, 1));
        assert_eq!(e[2].ebx, 3);
    }

    #[test]
    fn msrs_start_from_boot_or_current_values() {
        let boot = vec![kvm_msr_entry {
            index: 0x1a0,
            data: 1,
            ..Default::default()
        }];
        let t = template(
            r#"{"msr_modifiers": [
                {"addr": "0x1a0", "bitmap": "0b1x0"},
                {"addr": "0x10a", "bitmap": "0b1x"}
            ]}"#,
        );
        assert_eq!(msrs_to_read(&boot, &t), vec![0x10a]);
        let current = [kvm_msr_entry {
            index: 0x10a,
            data: 0b101,
            ..Default::default()
        }];
        let out = apply_msr_modifiers(&boot, &current, &t);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].index, out[0].data), (0x1a0, 0b100));
        assert_eq!((out[1].index, out[1].data), (0x10a, 0b111));
    }
}
