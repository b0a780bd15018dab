//! Whether a snapshot can run on this host: the same CPU vendor, a CPU template this cairn knows,
//! and every CPU feature the guest saw.
//!
//! A guest may already use any feature its CPUID showed, so each vCPU's saved feature words
//! must be offered here too: by what cairn sets at boot on this host with the same template, or
//! by this host's CPU itself. The second covers hosts where KVM_GET_CPUID2 reports more than was
//! set (KVM nested through PVM reports the host CPU's own features, and KVM_GET_SUPPORTED_CPUID
//! there lacks even SSE3).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::arch::x86_64::cpuid::{self, CpuTemplate, Topology};
use crate::checkpoint::state::HostRequirements;
use crate::error::VmmError;

const EAX: usize = 0;
const EBX: usize = 1;
const ECX: usize = 2;
const EDX: usize = 3;

/// The CPUID feature words a restored guest may already rely on: `(leaf, subleaf, register)`.
const FEATURE_WORDS: [(u32, u32, usize); 11] = [
    (1, 0, ECX),
    (1, 0, EDX),
    (7, 0, EBX),
    (7, 0, ECX),
    (7, 0, EDX),
    (7, 1, EAX),
    // XSAVE state components (XCR0 bits) and XSAVE instructions.
    (0xd, 0, EAX),
    (0xd, 0, EDX),
    (0xd, 1, EAX),
    (0x8000_0001, 0, ECX),
    (0x8000_0001, 0, EDX),
];

/// Feature bits KVM sets at run time from the guest's own settings, not from the host: OSXSAVE
/// (CR4.OSXSAVE), APIC (the APIC base MSR) and OSPKE (CR4.PKE).
const RUNTIME_BITS: [(u32, u32, usize, u32); 3] = [
    (1, 0, ECX, 1 << 27),
    (1, 0, EDX, 1 << 9),
    (7, 0, ECX, 1 << 4),
];

fn cpuid_word(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32, reg: usize) -> u32 {
    entries
        .iter()
        .find(|e| e.function == leaf && e.index == subleaf)
        .map(|e| [e.eax, e.ebx, e.ecx, e.edx][reg])
        .unwrap_or(0)
}

/// This host CPU's own feature leaves (those of [`FEATURE_WORDS`] it has), read with the CPUID
/// instruction.
pub fn host_cpuid() -> Vec<kvm_cpuid_entry2> {
    let max_basic = std::arch::x86_64::__cpuid(0).eax;
    let max_extended = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    let mut leaves: Vec<(u32, u32)> = FEATURE_WORDS.iter().map(|w| (w.0, w.1)).collect();
    leaves.dedup();
    leaves
        .into_iter()
        .filter(|&(leaf, _)| {
            let max = if leaf >= 0x8000_0000 {
                max_extended
            } else {
                max_basic
            };
            leaf <= max
        })
        .map(|(function, index)| {
            let r = std::arch::x86_64::__cpuid_count(function, index);
            kvm_cpuid_entry2 {
                function,
                index,
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
                ..Default::default()
            }
        })
        .collect()
}

/// The feature bits `saved` (a vCPU's CPUID in a snapshot) has and neither `offered` (what cairn
/// sets here with the same template) nor `host` (this CPU's own) has, as
/// `CPUID.<leaf>.<subleaf>:<reg> bits <mask>`.
fn missing_features(
    saved: &[kvm_cpuid_entry2],
    offered: &[kvm_cpuid_entry2],
    host: &[kvm_cpuid_entry2],
) -> Vec<String> {
    FEATURE_WORDS
        .iter()
        .filter_map(|&(leaf, subleaf, reg)| {
            let runtime: u32 = RUNTIME_BITS
                .iter()
                .filter(|r| (r.0, r.1, r.2) == (leaf, subleaf, reg))
                .map(|r| r.3)
                .sum();
            let missing = cpuid_word(saved, leaf, subleaf, reg)
                & !cpuid_word(offered, leaf, subleaf, reg)
                & !cpuid_word(host, leaf, subleaf, reg)
                & !runtime;
            let name = ["EAX", "EBX", "ECX", "EDX"][reg];
            (missing != 0).then(|| format!("CPUID.{leaf:#x}.{subleaf}:{name} bits {missing:#x}"))
        })
        .collect()
}

/// Refuse a snapshot this host cannot run, with the reason: another CPU vendor, a CPU template
/// this cairn does not know, or a vCPU that saw CPU features this host cannot offer with that
/// template. `saved_cpuids` holds each vCPU's saved CPUID in index order, `supported` is
/// KVM_GET_SUPPORTED_CPUID and `host` is [`host_cpuid`].
pub fn check_compatible(
    saved_host: &HostRequirements,
    saved_cpuids: &[&[kvm_cpuid_entry2]],
    supported: &CpuId,
    host: &[kvm_cpuid_entry2],
) -> Result<(), VmmError> {
    let vendor = cpuid::vendor(supported);
    if vendor != saved_host.cpu_vendor {
        return Err(VmmError::Incompatible(format!(
            "taken on a {} host, this host is {vendor}",
            saved_host.cpu_vendor
        )));
    }
    let Some(template) = CpuTemplate::from_name(&saved_host.cpu_template) else {
        return Err(VmmError::Incompatible(format!(
            "unknown CPU template {:?}",
            saved_host.cpu_template
        )));
    };
    let cpu_count = u8::try_from(saved_cpuids.len())
        .map_err(|_| VmmError::Incompatible(format!("{} vCPUs", saved_cpuids.len())))?;
    for (cpu_index, saved) in (0..cpu_count).zip(saved_cpuids) {
        let topo = Topology {
            cpu_index,
            cpu_count,
            smt: false,
        };
        let offered = cpuid::vcpu_cpuid(supported, topo, template)
            .map_err(|e| VmmError::Incompatible(e.to_string()))?;
        let missing = missing_features(saved, offered.as_slice(), host);
        if !missing.is_empty() {
            return Err(VmmError::Incompatible(format!(
                "vCPU {cpu_index} ran with CPU features this host does not offer with CPU template {}: {}",
                template.name(),
                missing.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
