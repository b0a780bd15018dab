//! Firecracker's T2S and T2CL CPU templates, as built-in custom templates.
//!
//! Both present an Intel T2-class feature set (no AVX-512, TSX, PT, SGX...) and also set
//! `IA32_ARCH_CAPABILITIES` (MSR 0x10a), so that a snapshot moves between Skylake and Cascade
//! Lake hosts (T2S) or between Cascade Lake and Ice Lake hosts (T2CL) without the guest seeing
//! a different CPU. The bit patterns are those of Firecracker's definitions (v1.16,
//! `cpu_config/x86_64/static_cpu_templates`), in Firecracker's own custom-template notation
//! (`0`/`1` force a bit, `x` keeps the host's), so a guest booted under cairn's T2S sees what
//! one booted under Firecracker's sees. They are applied after cairn's CPUID normalisation, as
//! a custom template (`cpu-config`) is; cairn's own T2 and C3 masks are not involved.

use super::cpuid::{CpuTemplate, CpuidError};
use crate::config::{
    BitFilter, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier, CustomCpuTemplate,
    MsrModifier,
};

/// `IA32_ARCH_CAPABILITIES`.
const MSR_ARCH_CAPABILITIES: u32 = 0x10a;

/// One CPUID leaf's modifiers: `(leaf, subleaf, KVM flags, [(register, bitmap)])`.
type Leaf = (u32, u32, u32, &'static [(CpuidRegister, &'static str)]);

use CpuidRegister::{Eax, Ebx, Ecx, Edx};

/// Leaves 0x1, 0x7, 0xd and 0x80000008, shared by T2S and T2CL.
const T2_FAMILY_LEAVES: &[Leaf] = &[
    (
        0x1,
        0x0,
        0,
        &[
            (Eax, "0bxxxx000000000011xx00011011110010"),
            (Ecx, "0bxxxxxxxxxxxxx0xx00xx00x0000000xx"),
            (Edx, "0b000x0xxxx00xx0xxxxx1xxxx1xxxxxxx"),
        ],
    ),
    (
        0x7,
        0x0,
        1,
        &[
            (Ebx, "0b00000000000x000000x00x1xxxx0x0xx"),
            (Ecx, "0bx0xxxxxxx0xxxxx0x0x00000x0x0000x"),
            (Edx, "0bxxxxxxxxxxxxxxxxxxxxxxx0xxx000xx"),
        ],
    ),
    (0xd, 0x0, 1, &[(Eax, "0bxxxxxxxxxxxxxxxxxxxxxx0x00000xxx")]),
    (0xd, 0x1, 1, &[(Eax, "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxx000x")]),
    (
        0x8000_0008,
        0x0,
        0,
        &[(Ebx, "0bxxxxxxxxxxxxxxxxxxxxxx0xxxxxxxxx")],
    ),
];

/// T2S's leaf 0x80000001: no LZCNT/ABM... as T2.
const T2S_EXTENDED: Leaf = (
    0x8000_0001,
    0x0,
    0,
    &[
        (Ecx, "0bxx0xxxxxxxxxxxxxxxxxxxx0xxxxxxxx"),
        (Edx, "0bxxxxx0xxxxxxxxxxxxxxxxxxxxxxxxxx"),
    ],
);

/// T2CL's leaf 0x80000001: also no ABM/LZCNT, SSE4A, misaligned SSE; no 1 GiB pages, RDTSCP,
/// and the bits AMD Milan (T2A) lacks.
const T2CL_EXTENDED: Leaf = (
    0x8000_0001,
    0x0,
    0,
    &[
        (Ecx, "0bxx0xxxxxxxxxxxxxxxxxxxx000xxxxxx"),
        (Edx, "0bxxxxx00000xxxxxxxxxxxxxxxxxxxxxx"),
    ],
);

/// T2S: `IA32_ARCH_CAPABILITIES` set outright (the mitigations a Skylake guest must keep on).
const T2S_ARCH_CAPABILITIES: &str =
    "0b0000000000000000000000000000000000001100000010000000110001001100";

/// T2CL: `IA32_ARCH_CAPABILITIES` with the bits a Cascade Lake or Ice Lake host differs in
/// cleared, the rest kept.
const T2CL_ARCH_CAPABILITIES: &str =
    "0b00000000000000000000000000000000000xxx0x0000x0x0xxx0000xxxxxxxxx";

fn leaf((leaf, subleaf, flags, regs): &Leaf) -> Result<CpuidLeafModifier, CpuidError> {
    let modifiers = regs
        .iter()
        .map(|(register, bits)| {
            Ok(CpuidRegisterModifier {
                register: *register,
                bitmap: BitFilter::parse(bits, 32).map_err(CpuidError::BuiltinTemplate)?,
            })
        })
        .collect::<Result<_, CpuidError>>()?;
    Ok(CpuidLeafModifier {
        leaf: *leaf,
        subleaf: *subleaf,
        flags: *flags,
        modifiers,
    })
}

/// The custom template a static template stands for: `Some` for T2S and T2CL, `None` for the
/// templates cairn implements as CPUID masks (None, T2, C3).
pub fn builtin(template: CpuTemplate) -> Result<Option<CustomCpuTemplate>, CpuidError> {
    let (extended, arch_capabilities) = match template {
        CpuTemplate::T2S => (&T2S_EXTENDED, T2S_ARCH_CAPABILITIES),
        CpuTemplate::T2CL => (&T2CL_EXTENDED, T2CL_ARCH_CAPABILITIES),
        CpuTemplate::None | CpuTemplate::T2 | CpuTemplate::C3 => return Ok(None),
    };
    let cpuid_modifiers = T2_FAMILY_LEAVES
        .iter()
        .chain(std::iter::once(extended))
        .map(leaf)
        .collect::<Result<_, _>>()?;
    Ok(Some(CustomCpuTemplate {
        cpuid_modifiers,
        msr_modifiers: vec![MsrModifier {
            addr: MSR_ARCH_CAPABILITIES,
            bitmap: BitFilter::parse(arch_capabilities, 64).map_err(CpuidError::BuiltinTemplate)?,
        }],
        ..CustomCpuTemplate::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t2s_and_t2cl_parse_and_differ_where_firecracker_s_do() {
        assert!(builtin(CpuTemplate::T2).unwrap().is_none());
        assert!(builtin(CpuTemplate::None).unwrap().is_none());
        let t2s = builtin(CpuTemplate::T2S).unwrap().unwrap();
        let t2cl = builtin(CpuTemplate::T2CL).unwrap().unwrap();
        assert_eq!(t2s.cpuid_modifiers.len(), 6);
        assert_eq!(t2s.cpuid_modifiers[..5], t2cl.cpuid_modifiers[..5]);
        assert_ne!(t2s.cpuid_modifiers[5], t2cl.cpuid_modifiers[5]);
        // T2S forces every bit of ARCH_CAPABILITIES; T2CL keeps some of the host's.
        assert_eq!(t2s.msr_modifiers[0].bitmap.mask, u64::MAX);
        assert_eq!(t2s.msr_modifiers[0].bitmap.value, 0x0c08_0c4c);
        assert_ne!(t2cl.msr_modifiers[0].bitmap.mask, u64::MAX);
        assert_eq!(t2cl.msr_modifiers[0].bitmap.value, 0);
        // Leaf 7 ebx: AVX-512F (16), RTM (11) and HLE (4) forced off, AVX2 (5) kept.
        let leaf7 = &t2s.cpuid_modifiers[1];
        assert_eq!((leaf7.leaf, leaf7.subleaf, leaf7.flags), (7, 0, 1));
        let ebx = leaf7.modifiers[0].bitmap;
        assert_eq!(
            ebx.apply(u64::from(u32::MAX)) & (1 << 16 | 1 << 11 | 1 << 4),
            0
        );
        assert_ne!(ebx.apply(u64::from(u32::MAX)) & (1 << 5), 0);
        // The family/model/stepping leaf reads as Firecracker's T2 (family 6, model 0x3f).
        let eax = t2s.cpuid_modifiers[0].modifiers[0].bitmap.apply(0);
        assert_eq!((eax >> 8) & 0xf, 6);
        assert_eq!(((eax >> 16) & 0xf) << 4 | (eax >> 4) & 0xf, 0x3f);
    }
}
