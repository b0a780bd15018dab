//! The VMM core against tiny guests, through the library API: each boot protocol, port and
//! MMIO exits, reset through the i8042, emulation failures, pause and resume.

use std::time::Duration;

use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available};
use cairn_vmm::builder::{BuildSpec, ConsoleIo, KernelImage};
use cairn_vmm::runtime::Runtime;
use cairn_vmm::vstate::vcpu::ExitReason;

fn boot(spec: BuildSpec) -> (Runtime, Capture) {
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(
        &spec,
        ConsoleIo {
            output: Box::new(out.clone()),
            input: None,
        },
    )
    .unwrap();
    (rt, out)
}

fn tiny(path: &str) -> BuildSpec {
    let mut spec = BuildSpec::linux(path);
    spec.mem_size_mib = 32;
    spec
}

fn run(spec: BuildSpec) -> (ExitReason, String) {
    let (mut rt, out) = boot(spec);
    let reason = rt.run_until_exit(Some(Duration::from_secs(20))).unwrap();
    (reason, out.text())
}

#[test]
fn long_mode_linux_protocol_port_and_mmio_exits_and_reset() {
    if !kvm_available("long_mode_linux_protocol_port_and_mmio_exits_and_reset") {
        return;
    }
    let (reason, out) = run(tiny(guests::HELLO64));
    assert!(out.contains("cairn-tiny: long mode\n"), "{out}");
    assert!(out.contains("cairn-tiny: zero page ok\n"), "{out}");
    assert!(out.contains("cairn-tiny: mmio ok\n"), "{out}");
    assert_eq!(reason, ExitReason::GuestReset);
    assert_eq!(reason.exit_code(), 0);
}

#[test]
fn bzimage_boots_through_the_linux_64_bit_protocol() {
    if !kvm_available("bzimage_boots_through_the_linux_64_bit_protocol") {
        return;
    }
    let (reason, out) = run(tiny(guests::HELLO64_BZIMAGE));
    assert!(out.contains("cairn-tiny: long mode\n"), "{out}");
    assert!(out.contains("cairn-tiny: zero page ok\n"), "{out}");
    assert!(out.contains("cairn-tiny: mmio ok\n"), "{out}");
    assert_eq!(reason, ExitReason::GuestReset);
}

#[test]
fn pvh_entry_is_used_when_the_note_exists() {
    if !kvm_available("pvh_entry_is_used_when_the_note_exists") {
        return;
    }
    let (reason, out) = run(tiny(guests::PVH32));
    assert!(out.contains("cairn-tiny: pvh ok\n"), "{out}");
    assert_eq!(reason, ExitReason::GuestReset);
}

#[test]
fn real_mode_entry() {
    if !kvm_available("real_mode_entry") {
        return;
    }
    let mut spec = tiny(guests::REAL16);
    spec.image = KernelImage::RealMode {
        image: guests::REAL16.into(),
        load_addr: 0x1000,
        cs: 0x100,
        ip: 0,
    };
    let (reason, out) = run(spec);
    assert!(out.contains("cairn-tiny: real mode\n"), "{out}");
    assert_eq!(reason, ExitReason::GuestReset);
}

#[test]
fn several_vcpus_boot() {
    if !kvm_available("several_vcpus_boot") {
        return;
    }
    let mut spec = tiny(guests::HELLO64);
    spec.vcpu_count = 4;
    let (reason, out) = run(spec);
    assert!(out.contains("cairn-tiny: mmio ok\n"), "{out}");
    assert_eq!(reason, ExitReason::GuestReset);
}

#[test]
fn emulation_failure_is_reported_with_rip() {
    if !kvm_available("emulation_failure_is_reported_with_rip") {
        return;
    }
    let (reason, out) = run(tiny(guests::MMIOFETCH64));
    assert!(out.contains("J\n"), "{out}");
    match &reason {
        ExitReason::EmulationFailure { rip, .. } => assert_eq!(*rip, 0xd0ff_0000),
        other => panic!("expected an emulation failure, got {other:?}"),
    }
    assert_ne!(reason.exit_code(), 0);
    assert!(reason.to_string().contains("RIP 0xd0ff0000"), "{reason}");
}

#[test]
fn halted_guest_pauses_resumes_and_stops() {
    if !kvm_available("halted_guest_pauses_resumes_and_stops") {
        return;
    }
    let (mut rt, out) = boot(tiny(guests::HALT64));
    let reason = rt
        .run_until_exit(Some(Duration::from_millis(1500)))
        .unwrap();
    assert_eq!(
        reason,
        ExitReason::Stopped,
        "a halted guest must not end the VM"
    );
    assert!(out.text().contains("cairn-tiny: halted"), "{}", out.text());
    let m = rt.machine_mut().unwrap();
    m.pause().unwrap();
    m.resume().unwrap();
    rt.shutdown();
}

#[test]
fn pause_stops_the_guest_and_resume_restarts_it() {
    if !kvm_available("pause_stops_the_guest_and_resume_restarts_it") {
        return;
    }
    let mut spec = tiny(guests::TICKER64);
    spec.vcpu_count = 2;
    let (mut rt, out) = boot(spec);
    // Wait for the guest to start ticking.
    let start = std::time::Instant::now();
    while !out.text().contains('.') {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no tick: {}",
            out.text()
        );
        rt.run_until_exit(Some(Duration::from_millis(50))).unwrap();
    }
    let m = rt.machine_mut().unwrap();
    let pause = m.pause().unwrap();
    let ticks = out.text().matches('.').count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        out.text().matches('.').count(),
        ticks,
        "guest ran while paused"
    );
    let resume = rt.machine_mut().unwrap().resume().unwrap();
    let start = std::time::Instant::now();
    while out.text().matches('.').count() == ticks {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "guest did not resume"
        );
        rt.run_until_exit(Some(Duration::from_millis(20))).unwrap();
    }
    eprintln!("pause took {pause:?}, resume took {resume:?}");
    assert!(pause < Duration::from_millis(100), "pause took {pause:?}");
    rt.shutdown();
}

/// Firecracker's CPU template test template: KVM's feature leaf with bit 31 set and bit 11
/// (PV send-IPI) cleared, a leaf KVM lacks, and MSR_STAR's segment selectors.
const CUSTOM_TEMPLATE: &str = r#"{
    "cpuid_modifiers": [
        {"leaf": "0x40000001", "subleaf": "0x0", "flags": 0,
         "modifiers": [{"register": "eax", "bitmap": "0b1xxxxxxxxxxxxxxxxxxx0xxxxxxxxxxx"}]},
        {"leaf": "0x400000f0", "subleaf": "0x0", "flags": 0,
         "modifiers": [{"register": "ebx", "bitmap": "0b101"}]}
    ],
    "msr_modifiers": [
        {"addr": "0xc0000081", "bitmap": "0b0000000000100011_0000000000010000_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}
    ]
}"#;

fn hex_after(out: &str, label: &str) -> u64 {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label} in {out}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn custom_cpu_template_reaches_the_guest() {
    if !kvm_available("custom_cpu_template_reaches_the_guest") {
        return;
    }
    let (reason, plain) = run(tiny(guests::CPUID64));
    assert_eq!(reason, ExitReason::GuestReset, "{plain}");
    let plain_kvm = hex_after(&plain, "cairn-tiny: kvm-features=");
    assert_eq!(hex_after(&plain, "cairn-tiny: star="), 0, "{plain}");

    let mut spec = tiny(guests::CPUID64);
    spec.custom_cpu_template =
        Some(cairn_vmm::config::parse_and_validate(CUSTOM_TEMPLATE.as_bytes()).unwrap());
    let (reason, out) = run(spec);
    assert_eq!(reason, ExitReason::GuestReset, "{out}");
    let kvm = hex_after(&out, "cairn-tiny: kvm-features=");
    assert_eq!(kvm, (plain_kvm | 1 << 31) & !(1 << 11), "{plain}\n{out}");
    assert_eq!(
        hex_after(&out, "cairn-tiny: leaf-400000f0-ebx="),
        0b101,
        "{out}"
    );
    assert_eq!(
        hex_after(&out, "cairn-tiny: star="),
        0x0023_0010_0000_0000,
        "{out}"
    );
}

#[test]
fn a_template_requiring_a_missing_kvm_capability_is_refused() {
    if !kvm_available("a_template_requiring_a_missing_kvm_capability_is_refused") {
        return;
    }
    let template =
        |json: &str| Some(cairn_vmm::config::parse_and_validate(json.as_bytes()).unwrap());
    let mut spec = tiny(guests::CPUID64);
    // 0 is KVM_CAP_IRQCHIP, which cairn needs anyway; "!N" is accepted and changes nothing.
    spec.custom_cpu_template = template(r#"{"kvm_capabilities": ["0", "!1"]}"#);
    let (reason, _) = run(spec);
    assert_eq!(reason, ExitReason::GuestReset);
    let mut spec = tiny(guests::CPUID64);
    spec.custom_cpu_template = template(r#"{"kvm_capabilities": ["4000000"]}"#);
    let err = Runtime::new()
        .unwrap()
        .boot(
            &spec,
            ConsoleIo {
                output: Box::new(Capture::default()),
                input: None,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("lacks capability 4000000"), "{err}");
}

/// T2S and T2CL (Firecracker's T2 with `IA32_ARCH_CAPABILITIES` fixed) boot the guest on an
/// Intel host with Firecracker's T2 CPUID (family 6 model 0x3f: the guest's RDMSR of
/// ARCH_CAPABILITIES goes through KVM); anywhere else the boot is refused, naming the vendor.
#[test]
fn t2s_and_t2cl_boot_on_intel_and_are_refused_elsewhere() {
    if !kvm_available("t2s_and_t2cl_boot_on_intel_and_are_refused_elsewhere") {
        return;
    }
    let intel = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .contains("GenuineIntel");
    for template in [
        cairn_vmm::arch::x86_64::cpuid::CpuTemplate::T2S,
        cairn_vmm::arch::x86_64::cpuid::CpuTemplate::T2CL,
    ] {
        let mut spec = tiny(guests::HELLO64);
        spec.cpu_template = template;
        let mut rt = Runtime::new().unwrap();
        let out = Capture::default();
        let booted = rt.boot(
            &spec,
            ConsoleIo {
                output: Box::new(out.clone()),
                input: None,
            },
        );
        if intel {
            booted.unwrap();
            let reason = rt.run_until_exit(Some(Duration::from_secs(20))).unwrap();
            assert_eq!(reason, ExitReason::GuestReset, "{template:?}");
            assert!(
                out.text().contains("cairn-tiny: long mode\n"),
                "{template:?}"
            );
        } else {
            let err = booted.expect_err("an Intel template booted on a non-Intel host");
            assert!(
                err.to_string().contains("needs an Intel host"),
                "{template:?}: {err}"
            );
        }
    }
}
