//! CPUID for each vCPU: KVM's supported set, normalised for the VM's topology, then filtered
//! through a CPU template.
//!
//! Templates mask features so that a checkpoint taken on one host restores on another with the
//! same template, and so that a fleet exposes one stable feature set. Their names are
//! Firecracker's. On this project's emulated test host, KVM ignores feature removal in several
//! leaves (see docs/vmm.md); masking there must also happen on the guest kernel command line.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use serde::{Deserialize, Serialize};

/// A CPU template: which features the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// The host's features as KVM supports them.
    #[default]
    None,
    /// Firecracker's T2: an Intel Haswell-class feature set (no AVX-512, no TSX, no PT).
    T2,
    /// Firecracker's C3: an Intel Ivy Bridge-class feature set (T2 minus AVX2, BMI, FMA, ...).
    C3,
    /// Firecracker's T2S: T2 with `IA32_ARCH_CAPABILITIES` fixed, for snapshots that move
    /// between Skylake and Cascade Lake hosts ([`super::static_templates`]).
    T2S,
    /// Firecracker's T2CL: T2 for Cascade Lake and Ice Lake hosts ([`super::static_templates`]).
    T2CL,
}

impl CpuTemplate {
    /// Parse Firecracker's template names.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "None" => Some(Self::None),
            "T2" => Some(Self::T2),
            "C3" => Some(Self::C3),
            "T2S" => Some(Self::T2S),
            "T2CL" => Some(Self::T2CL),
            _ => None,
        }
    }

    /// The name as Firecracker spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::T2 => "T2",
            Self::C3 => "C3",
            Self::T2S => "T2S",
            Self::T2CL => "T2CL",
        }
    }
}

/// Why CPUID could not be prepared.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    /// The template needs a CPU vendor the host does not have.
    #[error("cpu_template {template} needs an Intel host; this host is {vendor}")]
    WrongVendor {
        /// The template asked for.
        template: &'static str,
        /// The host's vendor string.
        vendor: String,
    },
    /// Adding the topology entries went past KVM's limit on CPUID entries.
    #[error(
        "too many CPUID entries (more than {})",
        kvm_bindings::KVM_MAX_CPUID_ENTRIES
    )]
    TooManyEntries,
    /// A built-in template's bitmap does not parse (a cairn bug).
    #[error("built-in CPU template: {0}")]
    BuiltinTemplate(String),
}

/// CPU vendor string from leaf 0.
pub fn vendor(cpuid: &CpuId) -> String {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map(|e| {
            let mut v = Vec::with_capacity(12);
            v.extend_from_slice(&e.ebx.to_le_bytes());
            v.extend_from_slice(&e.edx.to_le_bytes());
            v.extend_from_slice(&e.ecx.to_le_bytes());
            String::from_utf8_lossy(&v).into_owned()
        })
        .unwrap_or_default()
}

/// The VM's topology as CPUID reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// This vCPU's index (= APIC id).
    pub cpu_index: u8,
    /// Number of vCPUs.
    pub cpu_count: u8,
    /// Two threads per core.
    pub smt: bool,
}

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// KVM's in-kernel LAPIC emulates the TSC-deadline timer, but KVM_GET_SUPPORTED_CPUID does not
/// report it (it is a VMM decision, KVM_CAP_TSC_DEADLINE_TIMER): offer it, as Firecracker and
/// QEMU do. Without it Linux programs the LAPIC timer through slower one-shot MMIO writes.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

fn bits_needed(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjust `entry` for this vCPU's place in the topology.
fn normalize_entry(entry: &mut kvm_cpuid_entry2, topo: Topology) {
    let count = u32::from(topo.cpu_count);
    let threads_per_core: u32 = if topo.smt { 2 } else { 1 };
    match entry.function {
        1 => {
            entry.ebx = (entry.ebx & 0x0000_ffff)
                | (u32::from(topo.cpu_index) << 24)
                | (count << 16)
                | (8 << 8);
            entry.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
            if count > 1 {
                entry.edx |= LEAF1_EDX_HTT;
            } else {
                entry.edx &= !LEAF1_EDX_HTT;
            }
        }
        4 => {
            // Cores per package - 1 in EAX[31:26]; threads sharing this cache in EAX[25:14].
            let cores = count.div_ceil(threads_per_core).max(1);
            let cache_level = (entry.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 {
                count
            } else {
                threads_per_core
            };
            entry.eax = (entry.eax & 0x3fff) | ((cores - 1) << 26) | ((sharing.max(1) - 1) << 14);
        }
        6 => {
            // No turbo/power management.
            entry.eax &= !(1 << 1);
            entry.ecx &= !(1 << 3);
        }
        0xa => {
            // No architectural PMU: KVM's vPMU is not part of the stable feature set.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        LEAF_EXT_TOPOLOGY => {
            entry.edx = u32::from(topo.cpu_index);
            match entry.index {
                0 => {
                    entry.eax = bits_needed(threads_per_core);
                    entry.ebx = threads_per_core;
                    entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = bits_needed(count);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_AMD_SIZES => {
            // NC: cores per package - 1; ApicIdCoreIdSize: APIC id bits that number the cores.
            entry.ecx = (entry.ecx & !0xf0ff)
                | (count.saturating_sub(1) & 0xff)
                | (bits_needed(count).max(1) << 12);
        }
        LEAF_AMD_CACHE_TOPOLOGY => {
            // NumSharingCache - 1 in EAX[25:14]: L1 and L2 per core, L3 for the whole package.
            let cache_level = (entry.eax >> 5) & 0x7;
            if cache_level != 0 {
                let sharing = if cache_level >= 3 {
                    count
                } else {
                    threads_per_core
                };
                entry.eax = (entry.eax & !(0xfff << 14)) | ((sharing.max(1) - 1) << 14);
            }
        }
        LEAF_AMD_EXT_APIC_ID => {
            // KVM hands this leaf over zeroed: without it every vCPU claims core 0 and an SMP
            // Linux guest hangs at "Bringing up secondary CPUs". As Firecracker fills it:
            // extended APIC id, core id + threads per core - 1, node 0 of 1.
            entry.eax = u32::from(topo.cpu_index);
            entry.ebx =
                ((threads_per_core - 1) << 8) | (u32::from(topo.cpu_index) / threads_per_core);
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
}

/// Entries `vcpu_cpuid` needs that KVM's supported set may lack: leaf 0xb's core level (KVM on
/// AMD reports only the SMT level, and a guest then takes each vCPU for its own package).
fn add_missing_topology_entries(cpuid: &CpuId) -> Result<CpuId, CpuidError> {
    let entries = cpuid.as_slice();
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    let has = |function: u32, index: u32| {
        entries
            .iter()
            .any(|e| e.function == function && e.index == index)
    };
    let mut out = entries.to_vec();
    if max_basic >= LEAF_EXT_TOPOLOGY {
        for index in 0..2 {
            if !has(LEAF_EXT_TOPOLOGY, index) {
                out.push(kvm_cpuid_entry2 {
                    function: LEAF_EXT_TOPOLOGY,
                    index,
                    flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                    ..Default::default()
                });
            }
        }
    }
    CpuId::from_entries(&out).map_err(|_| CpuidError::TooManyEntries)
}

/// Feature bits a template removes: `(leaf, subleaf, register index 0..4 = eax..edx, mask)`.
fn template_masks(template: CpuTemplate) -> Vec<(u32, u32, usize, u32)> {
    const EAX: usize = 0;
    const EBX: usize = 1;
    const ECX: usize = 2;
    const EDX: usize = 3;
    let mut masks = vec![];
    if !matches!(template, CpuTemplate::T2 | CpuTemplate::C3) {
        // None has no masks; T2S and T2CL are built-in custom templates (`vcpu_cpuid`).
        return masks;
    }
    // Shared by T2 and C3: host-only, monitoring and debug features.
    let leaf1_ecx = (1 << 2)
        | (1 << 3)
        | (1 << 4)
        | (1 << 5)
        | (1 << 6)
        | (1 << 7)
        | (1 << 8)
        | (1 << 10)
        | (1 << 11)
        | (1 << 14)
        | (1 << 15)
        | (1 << 18);
    let leaf1_edx = (1 << 18) | (1 << 21) | (1 << 22) | (1 << 27) | (1 << 29) | (1 << 31);
    // AVX-512 family, RDSEED, ADX, CLFLUSHOPT, CLWB, PT, SHA, HLE, RTM, MPX.
    let leaf7_ebx = (1 << 4)
        | (1 << 11)
        | (1 << 14)
        | (1 << 16)
        | (1 << 17)
        | (1 << 18)
        | (1 << 19)
        | (1 << 21)
        | (1 << 23)
        | (1 << 24)
        | (1 << 25)
        | (1 << 26)
        | (1 << 27)
        | (1 << 28)
        | (1 << 29)
        | (1 << 30)
        | (1 << 31);
    masks.push((1, 0, ECX, leaf1_ecx));
    masks.push((1, 0, EDX, leaf1_edx));
    masks.push((7, 0, EBX, leaf7_ebx));
    masks.push((7, 0, ECX, u32::MAX));
    // Everything but MD_CLEAR (10), IBRS/IBPB (26), STIBP (27) and ARCH_CAPABILITIES (29).
    masks.push((7, 0, EDX, !((1 << 10) | (1 << 26) | (1 << 27) | (1 << 29))));
    masks.push((7, 1, EAX, u32::MAX));
    // XSAVEC, XGETBV1, XSAVES.
    masks.push((0xd, 1, EAX, (1 << 1) | (1 << 2) | (1 << 3)));
    if template == CpuTemplate::C3 {
        // FMA, MOVBE.
        masks.push((1, 0, ECX, (1 << 12) | (1 << 22)));
        // BMI1, AVX2, BMI2, INVPCID.
        masks.push((7, 0, EBX, (1 << 3) | (1 << 5) | (1 << 8) | (1 << 10)));
        // ABM/LZCNT, PREFETCHW.
        masks.push((0x8000_0001, 0, ECX, (1 << 5) | (1 << 8)));
    }
    masks
}

fn apply_template(entry: &mut kvm_cpuid_entry2, template: CpuTemplate) {
    for (leaf, subleaf, reg, mask) in template_masks(template) {
        if entry.function == leaf && entry.index == subleaf {
            let r = match reg {
                0 => &mut entry.eax,
                1 => &mut entry.ebx,
                2 => &mut entry.ecx,
                _ => &mut entry.edx,
            };
            *r &= !mask;
        }
    }
}

/// The CPUID for one vCPU, from KVM's supported set.
pub fn vcpu_cpuid(
    supported: &CpuId,
    topo: Topology,
    template: CpuTemplate,
) -> Result<CpuId, CpuidError> {
    if template != CpuTemplate::None {
        let v = vendor(supported);
        if v != "GenuineIntel" {
            return Err(CpuidError::WrongVendor {
                template: template.name(),
                vendor: v,
            });
        }
    }
    let mut cpuid = add_missing_topology_entries(supported)?;
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, topo);
        apply_template(entry, template);
    }
    match super::static_templates::builtin(template)? {
        Some(builtin) => super::custom_template::apply_cpuid_modifiers(&cpuid, &builtin),
        None => Ok(cpuid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        // "GenuineIntel" = EBX "Genu", EDX "ineI", ECX "ntel".
        let genu = u32::from_le_bytes(*b"Genu");
        let inei = u32::from_le_bytes(*b"ineI");
        let ntel = u32::from_le_bytes(*b"ntel");
        CpuId::from_entries(&[
            entry(0, 0, [0xd, genu, ntel, inei]),
            entry(1, 0, [0x906ea, 0xff_ff_ff_ff, 0xffff_ffff, 0xffff_ffff]),
            entry(7, 0, [0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]),
            entry(0xb, 0, [9, 9, 9, 9]),
            entry(0xb, 1, [9, 9, 9, 9]),
            entry(0xa, 0, [1, 1, 1, 1]),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn topology_is_per_vcpu() {
        let topo = Topology {
            cpu_index: 3,
            cpu_count: 4,
            smt: false,
        };
        let c = vcpu_cpuid(&sample(), topo, CpuTemplate::None).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        let b1 = find(&c, 0xb, 1);
        assert_eq!(
            (b1.eax, b1.ebx, b1.edx, b1.ecx >> 8),
            (2, 4, 3, LEVEL_TYPE_CORE)
        );
        assert_eq!(find(&c, 0xa, 0).eax, 0);
    }

    fn amd_sample() -> CpuId {
        // "AuthenticAMD", as KVM reports it on an AMD host: leaf 0xb has its SMT level only and
        // 0x8000001e is zeroed; 0x80000008 carries the host's core count.
        let auth = u32::from_le_bytes(*b"Auth");
        let enti = u32::from_le_bytes(*b"enti");
        let camd = u32::from_le_bytes(*b"cAMD");
        CpuId::from_entries(&[
            entry(0, 0, [0x1c, auth, camd, enti]),
            entry(1, 0, [0xa10f11, 0x0102_0800, 0x8120_2000, 0x078b_fbff]),
            entry(0xb, 0, [0, 0, 0, 1]),
            entry(0x8000_0000, 0, [0x8000_0021, auth, camd, enti]),
            entry(0x8000_0008, 0, [0x3030, 0x5002_0005, 0x7001, 0]),
            entry(0x8000_001d, 0, [0x121, 0x01c0_003f, 0x3f, 0]),
            entry(0x8000_001d, 3, [0x4163, 0x03c0_003f, 0x7fff, 1]),
            entry(0x8000_001e, 0, [0, 0, 0, 0]),
        ])
        .unwrap()
    }

    #[test]
    fn amd_topology_is_per_vcpu() {
        let topo = Topology {
            cpu_index: 2,
            cpu_count: 4,
            smt: false,
        };
        let c = vcpu_cpuid(&amd_sample(), topo, CpuTemplate::None).unwrap();
        // Leaf 0xb gains its core level: all four vCPUs in one package.
        let b1 = find(&c, 0xb, 1);
        assert_eq!(
            (b1.eax, b1.ebx, b1.edx, b1.ecx >> 8),
            (2, 4, 2, LEVEL_TYPE_CORE)
        );
        assert_ne!(b1.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        let sizes = find(&c, 0x8000_0008, 0);
        assert_eq!((sizes.ecx & 0xff, (sizes.ecx >> 12) & 0xf), (3, 2));
        let ext = find(&c, 0x8000_001e, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (2, 2, 0));
        assert_eq!(
            (find(&c, 0x8000_001d, 0).eax >> 14) & 0xfff,
            0,
            "L1 per core"
        );
        assert_eq!(
            (find(&c, 0x8000_001d, 3).eax >> 14) & 0xfff,
            3,
            "L3 shared by 4"
        );
        // SMT: two threads per core, core id = index / 2.
        let smt = Topology {
            cpu_index: 3,
            cpu_count: 4,
            smt: true,
        };
        let c = vcpu_cpuid(&amd_sample(), smt, CpuTemplate::None).unwrap();
        assert_eq!(find(&c, 0x8000_001e, 0).ebx, (1 << 8) | 1);
    }

    #[test]
    fn templates_mask_features() {
        let topo = Topology {
            cpu_index: 0,
            cpu_count: 1,
            smt: false,
        };
        let t2 = vcpu_cpuid(&sample(), topo, CpuTemplate::T2).unwrap();
        let c3 = vcpu_cpuid(&sample(), topo, CpuTemplate::C3).unwrap();
        let avx512f = 1 << 16;
        let avx2 = 1 << 5;
        assert_eq!(find(&t2, 7, 0).ebx & avx512f, 0);
        assert_ne!(find(&t2, 7, 0).ebx & avx2, 0);
        assert_eq!(find(&c3, 7, 0).ebx & avx2, 0);
        assert_eq!(find(&t2, 1, 0).ecx & (1 << 5), 0, "VMX hidden");
        assert_eq!(CpuTemplate::from_name("C3"), Some(CpuTemplate::C3));
        assert_eq!(CpuTemplate::from_name("T2A"), None);
        // T2S and T2CL: the T2 feature set as Firecracker defines it, bit for bit.
        for template in [CpuTemplate::T2S, CpuTemplate::T2CL] {
            assert_eq!(CpuTemplate::from_name(template.name()), Some(template));
            let c = vcpu_cpuid(&sample(), topo, template).unwrap();
            assert_eq!(find(&c, 7, 0).ebx & avx512f, 0, "{template:?}");
            assert_ne!(find(&c, 7, 0).ebx & avx2, 0, "{template:?}");
            assert_eq!(find(&c, 1, 0).ecx & (1 << 5), 0, "{template:?}: VMX hidden");
            assert_eq!((find(&c, 1, 0).eax >> 8) & 0xf, 6, "{template:?}: family 6");
        }
    }

    #[test]
    fn intel_templates_refuse_other_vendors() {
        let mut c = sample();
        c.as_mut_slice()[0].ebx = u32::from_le_bytes(*b"Auth");
        let topo = Topology {
            cpu_index: 0,
            cpu_count: 1,
            smt: false,
        };
        assert!(matches!(
            vcpu_cpuid(&c, topo, CpuTemplate::T2),
            Err(CpuidError::WrongVendor { .. })
        ));
        for template in [CpuTemplate::T2S, CpuTemplate::T2CL] {
            assert!(matches!(
                vcpu_cpuid(&c, topo, template),
                Err(CpuidError::WrongVendor { .. })
            ));
        }
        assert!(vcpu_cpuid(&c, topo, CpuTemplate::None).is_ok());
    }
}
