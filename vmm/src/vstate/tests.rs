//! `Persist` round trips for the VM's in-kernel state and for a vCPU, on /dev/kvm: set values a
//! fresh VM would not have, save, restore into a new VM, save again and compare. What moves by
//! itself between the two saves (the TSC, kvmclock, the PIT's load time) is checked to have moved
//! forward by less than a minute, then left out of the comparison.

use std::sync::Arc;

use kvm_bindings::{
    kvm_ioapic_state, kvm_ioapic_state__bindgen_ty_1, kvm_irqchip, kvm_msr_entry, kvm_pic_state,
    Msrs, KVM_MP_STATE_HALTED,
};
use kvm_ioctls::Kvm;
use vm_memory::GuestAddress;

use cairn_devices::bus::Bus;
use cairn_devices::GuestMemoryMmap;
use cairn_snapshot::Persist;
use cairn_tests::kvm_available;

use crate::arch::x86_64::msr::{
    MSR_IA32_SYSENTER_CS, MSR_IA32_TSC, MSR_IA32_TSC_ADJUST, MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_ASYNC_PF_INT, MSR_LSTAR, MSR_MTRR_PHYS_BASE0,
};

/// Linux's vector for async page fault "page ready" (HYPERVISOR_CALLBACK_VECTOR).
const ASYNC_PF_VECTOR: u64 = 0xf3;
/// MSR_KVM_ASYNC_PF_EN: a 64-byte area at 0x5000, enabled, delivered as an interrupt.
const ASYNC_PF_EN: u64 = 0x5000 | 1 | (1 << 3);
/// MSRs set where the host's KVM lists them: IA32_TSC_ADJUST, the first variable MTRR's base
/// (write-back at 1 MiB). Not AMD's VIRT_SPEC_CTRL: the development host's KVM lists it and
/// accepts a write but reads 0 back.
const OPTIONAL_MSR_VALUES: [(u32, u64); 2] = [
    (MSR_IA32_TSC_ADJUST, 0x1234),
    (MSR_MTRR_PHYS_BASE0, 0x10_0006),
];
use crate::arch::x86_64::regs::set_lint;
use crate::vstate::vcpu::{ExitSignal, Vcpu};
use crate::vstate::vcpu_state::{VcpuConstructorArgs, VcpuState};
use crate::vstate::vm::{Vm, VmConstructorArgs, VmState};

const GUEST_TSC: u64 = 1 << 40;
const GUEST_CLOCK_NS: u64 = 1_000_000_000_000;
const LSTAR: u64 = 0xffff_ffff_8100_0040;
const PIT_COUNT: u32 = 0x1234;
const IOAPIC_PIN: usize = 4;
/// Masked, fixed delivery, vector 0x34.
const IOAPIC_ENTRY: u64 = (1 << 16) | 0x34;
const APIC_TPR: usize = 0x80;
const APIC_LVTT: usize = 0x320;
/// Masked, vector 0xec.
const LVTT: u32 = (1 << 16) | 0xec;
const ONE_MINUTE_NS: u64 = 60_000_000_000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn new_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Vm {
    let mut vm = Vm::new(kvm).unwrap();
    vm.set_up(mem, false).unwrap();
    vm
}

fn vcpu_args<'a>(vm: &'a Vm, mem: &GuestMemoryMmap) -> VcpuConstructorArgs<'a> {
    VcpuConstructorArgs {
        vm,
        index: 0,
        pio: Arc::new(Bus::new()),
        mmio: Arc::new(Bus::new()),
        mem: mem.clone(),
        exit: Arc::new(ExitSignal::new().unwrap()),
    }
}

fn pic(chip: &kvm_irqchip) -> kvm_pic_state {
    // SAFETY: only called on PIC chips, for which KVM fills the `pic` member; it is plain data.
    unsafe { chip.chip.pic }
}

fn ioapic(chip: &kvm_irqchip) -> kvm_ioapic_state {
    // SAFETY: only called on the IOAPIC chip, for which KVM fills the `ioapic` member.
    unsafe { chip.chip.ioapic }
}

fn redirection(chip: &kvm_irqchip, pin: usize) -> u64 {
    // SAFETY: every redirection entry is a plain 64-bit value; `bits` views all of it.
    unsafe { ioapic(chip).redirtbl[pin].bits }
}

fn lapic_reg(lapic: &kvm_bindings::kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| lapic.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(lapic: &mut kvm_bindings::kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

/// The names of the fields of `a` and `b` (two states) that encode differently.
macro_rules! differing_fields {
    ($a:expr, $b:expr, $($field:ident),+) => {{
        let mut differ: Vec<&str> = vec![];
        $(
            if postcard::to_allocvec(&$a.$field).unwrap() != postcard::to_allocvec(&$b.$field).unwrap() {
                differ.push(stringify!($field));
            }
        )+
        differ
    }};
}

/// Give the VM's PIC, IOAPIC, PIT and clock values a fresh VM does not have.
fn set_vm_values(vm: &Vm) {
    let fd = vm.fd();
    let mut master = kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_PIC_MASTER,
        ..Default::default()
    };
    fd.get_irqchip(&mut master).unwrap();
    master.chip.pic = kvm_pic_state {
        imr: 0xfa,
        irq_base: 0x20,
        ..pic(&master)
    };
    fd.set_irqchip(&master).unwrap();

    let mut chip = kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip).unwrap();
    let mut state = ioapic(&chip);
    state.redirtbl[IOAPIC_PIN] = kvm_ioapic_state__bindgen_ty_1 { bits: IOAPIC_ENTRY };
    chip.chip.ioapic = state;
    fd.set_irqchip(&chip).unwrap();

    // Channel 2 (the speaker gate) counts without raising interrupts, so nothing else moves.
    let mut pit = fd.get_pit2().unwrap();
    pit.channels[2].count = PIT_COUNT;
    pit.channels[2].mode = 0;
    fd.set_pit2(&pit).unwrap();

    let clock = kvm_bindings::kvm_clock_data {
        clock: GUEST_CLOCK_NS,
        ..Default::default()
    };
    fd.set_clock(&clock).unwrap();
}

/// `again` (saved after a restore of `saved`) equals `saved`, once the time that passed in
/// between is checked and taken out.
fn assert_vm_states_match(saved: &VmState, again: &VmState) {
    let moved = again.clock.clock.wrapping_sub(saved.clock.clock);
    assert!(
        again.clock.clock >= saved.clock.clock && moved < ONE_MINUTE_NS,
        "kvmclock went from {} to {} ns",
        saved.clock.clock,
        again.clock.clock
    );
    let timeless = |s: &VmState| {
        let mut s = s.clone();
        s.clock = Default::default();
        for ch in &mut s.pit.channels {
            ch.count_load_time = 0;
        }
        s
    };
    let (a, b) = (timeless(saved), timeless(again));
    let differ = differing_fields!(a, b, pic_master, pic_slave, ioapic, pit, clock);
    assert!(differ.is_empty(), "VM state differs in {differ:?}");
}

#[test]
fn vm_state_round_trips_through_a_new_vm() {
    if !kvm_available("vm_state_round_trips_through_a_new_vm") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let mem = mem();
    let vm = new_vm(&kvm, &mem);
    set_vm_values(&vm);

    let saved = vm.save().unwrap();
    assert_eq!(pic(&saved.pic_master).imr, 0xfa);
    assert_eq!(pic(&saved.pic_master).irq_base, 0x20);
    assert_eq!(redirection(&saved.ioapic, IOAPIC_PIN), IOAPIC_ENTRY);
    assert_eq!(saved.pit.channels[2].count, PIT_COUNT);
    assert!(saved.clock.clock >= GUEST_CLOCK_NS);

    // Through the state file's encoding, into a new VM.
    let bytes = postcard::to_allocvec(&saved).unwrap();
    let decoded: VmState = postcard::from_bytes(&bytes).unwrap();
    let args = VmConstructorArgs {
        vm: Vm::new(&kvm).unwrap(),
        mem: &mem,
        track_dirty_pages: true,
    };
    let restored = Vm::restore(args, &decoded).unwrap();
    assert!(restored.dirty_tracking());
    assert_eq!(restored.slots(), vm.slots());
    assert_vm_states_match(&saved, &restored.save().unwrap());
}

/// Give the vCPU registers, an MSR, the TSC, debug registers, XCR0, its LAPIC, MP state and
/// events values a fresh vCPU does not have.
fn set_vcpu_values(kvm: &Kvm, vcpu: &Vcpu) -> u64 {
    let fd = vcpu.fd();
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    fd.set_cpuid2(&cpuid).unwrap();

    let mut regs = fd.get_regs().unwrap();
    regs.rax = 0x1111;
    regs.rbx = 0x2222;
    regs.r15 = 0xdead_beef;
    regs.rsp = 0x8000;
    regs.rip = 0x1000;
    regs.rflags = 0x246;
    fd.set_regs(&regs).unwrap();

    let mut debug = fd.get_debug_regs().unwrap();
    debug.db[0] = 0x1000;
    debug.db[1] = 0x2000;
    fd.set_debug_regs(&debug).unwrap();

    // XCR0 = x87 | SSE, where the host's XSAVE has SSE state.
    let sse_state = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 0xd && e.index == 0 && e.eax & 2 != 0);
    let xcr0 = if sse_state { 3 } else { 1 };
    let mut xcrs = fd.get_xcrs().unwrap();
    xcrs.xcrs[0].value = xcr0;
    fd.set_xcrs(&xcrs).unwrap();

    let mut values = vec![
        (MSR_IA32_TSC, GUEST_TSC),
        (MSR_IA32_SYSENTER_CS, 0x10),
        (MSR_LSTAR, LSTAR),
        // Async page faults delivered as interrupts, with Linux's vector: the vector must survive.
        (MSR_KVM_ASYNC_PF_INT, ASYNC_PF_VECTOR),
        (MSR_KVM_ASYNC_PF_EN, ASYNC_PF_EN),
    ];
    // Guest state beyond the basics, where this host's KVM has it.
    let listed = kvm.get_msr_index_list().unwrap();
    values.extend(
        OPTIONAL_MSR_VALUES
            .iter()
            .filter(|(index, _)| listed.as_slice().contains(index)),
    );
    let msrs: Vec<_> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&msrs).unwrap();
    assert_eq!(fd.set_msrs(&msrs).unwrap(), values.len());

    let mut lapic = fd.get_lapic().unwrap();
    set_lint(&mut lapic);
    set_lapic_reg(&mut lapic, APIC_TPR, 0x20);
    set_lapic_reg(&mut lapic, APIC_LVTT, LVTT);
    fd.set_lapic(&lapic).unwrap();

    let mut events = fd.get_vcpu_events().unwrap();
    events.nmi.masked = 1;
    fd.set_vcpu_events(&events).unwrap();

    fd.set_mp_state(kvm_bindings::kvm_mp_state {
        mp_state: KVM_MP_STATE_HALTED,
    })
    .unwrap();
    xcr0
}

fn msr(state: &VcpuState, index: u32) -> Option<u64> {
    state.msrs.iter().find(|m| m.index == index).map(|m| m.data)
}

/// `again` (saved after a restore of `saved`) equals `saved`, once the TSC's progress in
/// between is checked and taken out.
fn assert_vcpu_states_match(saved: &VcpuState, again: &VcpuState) {
    let (t0, t1) = (msr(saved, MSR_IA32_TSC), msr(again, MSR_IA32_TSC));
    let (Some(t0), Some(t1)) = (t0, t1) else {
        panic!("TSC not saved: {t0:?} then {t1:?}");
    };
    // At most a minute, at the TSC's rate (or 10 GHz if KVM does not say).
    let khz = u64::from(saved.tsc_khz.unwrap_or(10_000_000));
    assert!(
        t1 >= t0 && t1 - t0 < khz * 60_000,
        "the TSC went from {t0:#x} to {t1:#x}"
    );
    let timeless = |s: &VcpuState| -> Vec<(u32, u64)> {
        s.msrs
            .iter()
            .filter(|m| m.index != MSR_IA32_TSC)
            .map(|m| (m.index, m.data))
            .collect()
    };
    assert_eq!(timeless(saved), timeless(again), "MSRs differ");
    let differ = differing_fields!(
        saved,
        again,
        cpuid,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        mp_state,
        vcpu_events,
        tsc_khz
    );
    assert!(differ.is_empty(), "vCPU state differs in {differ:?}");
}

#[test]
fn vcpu_state_round_trips_through_a_new_vm() {
    if !kvm_available("vcpu_state_round_trips_through_a_new_vm") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let mem = mem();
    let vm = new_vm(&kvm, &mem);
    let vcpu = Vcpu::new(
        &vm,
        0,
        Arc::new(Bus::new()),
        Arc::new(Bus::new()),
        mem.clone(),
        Arc::new(ExitSignal::new().unwrap()),
    )
    .unwrap();
    let xcr0 = set_vcpu_values(&kvm, &vcpu);

    let saved = vcpu.save().unwrap();
    assert_eq!(
        (saved.regs.rax, saved.regs.r15, saved.regs.rip),
        (0x1111, 0xdead_beef, 0x1000)
    );
    assert_eq!(saved.debug_regs.db[..2], [0x1000, 0x2000]);
    assert_eq!(saved.xcrs.xcrs[0].value, xcr0);
    assert_eq!(msr(&saved, MSR_LSTAR), Some(LSTAR));
    assert_eq!(msr(&saved, MSR_IA32_SYSENTER_CS), Some(0x10));
    assert_eq!(msr(&saved, MSR_KVM_ASYNC_PF_INT), Some(ASYNC_PF_VECTOR));
    assert_eq!(msr(&saved, MSR_KVM_ASYNC_PF_EN), Some(ASYNC_PF_EN));
    let listed = kvm.get_msr_index_list().unwrap();
    for (index, value) in OPTIONAL_MSR_VALUES {
        if listed.as_slice().contains(&index) {
            assert_eq!(msr(&saved, index), Some(value), "MSR {index:#x}");
        }
    }
    assert!(msr(&saved, MSR_IA32_TSC).is_some_and(|t| t >= GUEST_TSC));
    assert_eq!(lapic_reg(&saved.lapic, APIC_TPR), 0x20);
    assert_eq!(lapic_reg(&saved.lapic, APIC_LVTT), LVTT);
    assert_eq!(saved.sregs.cr8, 2, "CR8 mirrors the LAPIC's TPR");
    assert_eq!(saved.mp_state.mp_state, KVM_MP_STATE_HALTED);
    assert_eq!(saved.vcpu_events.nmi.masked, 1);

    // Through the state file's encoding, into a new VM.
    let bytes = postcard::to_allocvec(&saved).unwrap();
    let decoded: VcpuState = postcard::from_bytes(&bytes).unwrap();
    let vm2 = new_vm(&kvm, &mem);
    let restored = Vcpu::restore(vcpu_args(&vm2, &mem), &decoded).unwrap();
    assert_eq!(restored.index(), 0);
    assert_vcpu_states_match(&saved, &restored.save().unwrap());
}

/// The state of a vCPU given [`set_vcpu_values`], in a VM of its own.
fn saved_vcpu_state(kvm: &Kvm, mem: &GuestMemoryMmap) -> VcpuState {
    let vm = new_vm(kvm, mem);
    let vcpu = Vcpu::new(
        &vm,
        0,
        Arc::new(Bus::new()),
        Arc::new(Bus::new()),
        mem.clone(),
        Arc::new(ExitSignal::new().unwrap()),
    )
    .unwrap();
    set_vcpu_values(kvm, &vcpu);
    vcpu.save().unwrap()
}

#[test]
fn a_vcpu_state_with_an_unknown_msr_is_refused_with_its_index() {
    if !kvm_available("a_vcpu_state_with_an_unknown_msr_is_refused_with_its_index") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let mem = mem();
    let mut state = saved_vcpu_state(&kvm, &mem);
    // Not an MSR on any x86 CPU: KVM refuses it (unless the host sets kvm.ignore_msrs).
    state.msrs.push(kvm_msr_entry {
        index: 0x4b56_4dff,
        data: 1,
        ..Default::default()
    });
    let vm = new_vm(&kvm, &mem);
    match Vcpu::restore(vcpu_args(&vm, &mem), &state) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("vCPU 0") && msg.contains("0x4b564dff"),
                "{msg}"
            );
        }
        Ok(_) => assert!(ignore_msrs(), "KVM accepted MSR 0x4b564dff"),
    }
}

#[test]
fn a_vcpu_state_kvm_refuses_is_refused_naming_the_vcpu_and_the_step() {
    if !kvm_available("a_vcpu_state_kvm_refuses_is_refused_naming_the_vcpu_and_the_step") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let mem = mem();
    let mut state = saved_vcpu_state(&kvm, &mem);
    // XCR0 without x87 state is invalid.
    state.xcrs.xcrs[0].value = 0;
    let vm = new_vm(&kvm, &mem);
    let msg = Vcpu::restore(vcpu_args(&vm, &mem), &state)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.starts_with("vCPU 0: KVM_SET_XCRS failed"),
        "got {msg:?}"
    );
}

/// Whether the host's KVM accepts unknown MSRs (the `kvm.ignore_msrs` module parameter).
fn ignore_msrs() -> bool {
    std::fs::read_to_string("/sys/module/kvm/parameters/ignore_msrs").is_ok_and(|v| v.trim() == "Y")
}
