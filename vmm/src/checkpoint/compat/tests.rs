//! Restoring onto an incompatible host or CPU template is refused with the reason.

use std::sync::Arc;

use cairn_devices::bus::Bus;
use cairn_devices::GuestMemoryMmap;
use cairn_tests::kvm_available;
use kvm_ioctls::Kvm;
use vm_memory::GuestAddress;

use super::*;
use crate::vstate::vcpu::{ExitSignal, Vcpu};
use crate::vstate::vm::Vm;
use cairn_snapshot::Persist;

const AVX2: u32 = 1 << 5;
const AVX512F: u32 = 1 << 16;
const OSXSAVE: u32 = 1 << 27;

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

/// What KVM_GET_SUPPORTED_CPUID could say on an Intel host, with `leaf7_ebx` as its leaf 7
/// features.
fn intel_host(leaf7_ebx: u32) -> CpuId {
    let word = |s: &[u8; 4]| u32::from_le_bytes(*s);
    CpuId::from_entries(&[
        entry(0, 0, [0xd, word(b"Genu"), word(b"ntel"), word(b"ineI")]),
        entry(1, 0, [0x906ea, 0, 0x1 | (1 << 26), 0x1 | (1 << 9)]),
        entry(7, 0, [0, leaf7_ebx, 0, 0]),
        entry(0xd, 0, [0x7, 0x340, 0x340, 0]),
    ])
    .unwrap()
}

fn host(vendor: &str, template: &str) -> HostRequirements {
    HostRequirements {
        cpu_vendor: vendor.into(),
        cpu_template: template.into(),
    }
}

/// The CPUIDs `vcpus` vCPUs got at boot on `supported` with `template`.
fn booted_on(supported: &CpuId, template: CpuTemplate, vcpus: u8) -> Vec<Vec<kvm_cpuid_entry2>> {
    (0..vcpus)
        .map(|cpu_index| {
            let topo = Topology {
                cpu_index,
                cpu_count: vcpus,
                smt: false,
            };
            let c = cpuid::vcpu_cpuid(supported, topo, template).unwrap();
            c.as_slice().to_vec()
        })
        .collect()
}

/// [`check_compatible`] on a host CPU with no features of its own.
fn check(
    host: &HostRequirements,
    saved: &[Vec<kvm_cpuid_entry2>],
    supported: &CpuId,
) -> Result<(), String> {
    check_on_cpu(host, saved, supported, &[])
}

/// [`check_compatible`] on a host CPU with the features `cpu`.
fn check_on_cpu(
    host: &HostRequirements,
    saved: &[Vec<kvm_cpuid_entry2>],
    supported: &CpuId,
    cpu: &[kvm_cpuid_entry2],
) -> Result<(), String> {
    let slices: Vec<&[kvm_cpuid_entry2]> = saved.iter().map(Vec::as_slice).collect();
    check_compatible(host, &slices, supported, cpu).map_err(|e| {
        assert!(matches!(e, VmmError::Incompatible(_)), "{e:?}");
        e.to_string()
    })
}

#[test]
fn the_same_host_and_template_are_accepted() {
    let supported = intel_host(AVX2 | AVX512F);
    for template in [CpuTemplate::None, CpuTemplate::T2, CpuTemplate::C3] {
        let mut saved = booted_on(&supported, template, 2);
        // The guest turned on CR4.OSXSAVE, which KVM reflects in its CPUID.
        let leaf1 = saved[1].iter_mut().find(|e| e.function == 1).unwrap();
        leaf1.ecx |= OSXSAVE;
        let host = host("GenuineIntel", template.name());
        assert_eq!(check(&host, &saved, &supported), Ok(()), "{template:?}");
    }
}

#[test]
fn features_kvm_does_not_offer_but_the_host_cpu_has_are_accepted() {
    // As where KVM runs nested through PVM: KVM_GET_CPUID2 reports the host CPU's features
    // (AVX-512 here) although KVM_GET_SUPPORTED_CPUID does not offer them.
    let supported = intel_host(AVX2);
    let cpu = intel_host(AVX2 | AVX512F);
    let saved = booted_on(&cpu, CpuTemplate::None, 1);
    let host = host("GenuineIntel", "None");
    assert!(check(&host, &saved, &supported).is_err());
    let result = check_on_cpu(&host, &saved, &supported, cpu.as_slice());
    assert_eq!(result, Ok(()));
}

#[test]
fn another_cpu_vendor_is_refused_naming_both() {
    let supported = intel_host(AVX2);
    let saved = booted_on(&supported, CpuTemplate::None, 1);
    let err = check(&host("AuthenticAMD", "None"), &saved, &supported).unwrap_err();
    assert!(
        err.contains("AuthenticAMD") && err.contains("GenuineIntel"),
        "{err}"
    );
}

#[test]
fn an_unknown_cpu_template_is_refused_naming_it() {
    let supported = intel_host(AVX2);
    let saved = booted_on(&supported, CpuTemplate::None, 1);
    let err = check(&host("GenuineIntel", "Z9"), &saved, &supported).unwrap_err();
    assert!(err.contains("unknown CPU template \"Z9\""), "{err}");
}

#[test]
fn a_host_lacking_a_feature_the_guest_saw_is_refused_naming_it() {
    let old = intel_host(AVX2 | AVX512F);
    let new = intel_host(AVX2);
    let saved = booted_on(&old, CpuTemplate::None, 1);
    let err = check(&host("GenuineIntel", "None"), &saved, &new).unwrap_err();
    assert!(
        err.contains("vCPU 0") && err.contains("CPUID.0x7.0:EBX bits 0x10000"),
        "{err}"
    );
    assert!(err.contains("CPU template None"), "{err}");
}

#[test]
fn a_template_that_hides_the_difference_makes_the_hosts_compatible() {
    // T2 masks AVX-512, so a T2 guest from the AVX-512 host restores on the other one, while a
    // C3 guest (no AVX2) restores anywhere with AVX2 or not.
    let old = intel_host(AVX2 | AVX512F);
    let new = intel_host(AVX2);
    let t2 = booted_on(&old, CpuTemplate::T2, 1);
    assert_eq!(check(&host("GenuineIntel", "T2"), &t2, &new), Ok(()));
    let c3 = booted_on(&old, CpuTemplate::C3, 1);
    let no_avx2 = intel_host(0);
    assert_eq!(check(&host("GenuineIntel", "C3"), &c3, &no_avx2), Ok(()));
    // But a T2 guest still needs AVX2.
    let err = check(&host("GenuineIntel", "T2"), &t2, &no_avx2).unwrap_err();
    assert!(err.contains("CPUID.0x7.0:EBX bits 0x20"), "{err}");
}

#[test]
fn this_hosts_own_vcpus_pass_the_check_with_every_template() {
    if !kvm_available("this_hosts_own_vcpus_pass_the_check_with_every_template") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let vendor = cpuid::vendor(&supported);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    for template in [CpuTemplate::None, CpuTemplate::T2, CpuTemplate::C3] {
        let Ok(boot) = cpuid::vcpu_cpuid(
            &supported,
            Topology {
                cpu_index: 0,
                cpu_count: 1,
                smt: false,
            },
            template,
        ) else {
            continue; // T2 and C3 need an Intel host.
        };
        let mut vm = Vm::new(&kvm).unwrap();
        vm.set_up(&mem, false).unwrap();
        let vcpu = Vcpu::new(
            &vm,
            0,
            Arc::new(Bus::new()),
            Arc::new(Bus::new()),
            mem.clone(),
            Arc::new(ExitSignal::new().unwrap()),
        )
        .unwrap();
        vcpu.fd().set_cpuid2(&boot).unwrap();
        // What a snapshot saves: KVM's view of the vCPU's CPUID.
        let saved = vcpu.save().unwrap().cpuid;
        let host = host(&vendor, template.name());
        let result = check_compatible(&host, &[&saved], &supported, &host_cpuid());
        assert!(result.is_ok(), "{template:?}: {result:?}");
    }
}
