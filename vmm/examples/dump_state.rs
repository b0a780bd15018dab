//! Prints what a checkpoint's state file says about each vCPU's interrupts and timer, or with
//! `--all` every saved MSR and the raw registers and events (a debugging aid; see
//! docs/checkpoints.md, "Verifying memory").
//!
//! `cargo run --release -p cairn-vmm --example dump_state -- [--all] STATE_FILE...`

use cairn_vmm::checkpoint::state::read_state;
use cairn_vmm::vstate::vcpu_state::VcpuState;

fn reg(lapic: &[i8], off: usize) -> u32 {
    u32::from_le_bytes([
        lapic[off] as u8,
        lapic[off + 1] as u8,
        lapic[off + 2] as u8,
        lapic[off + 3] as u8,
    ])
}

/// The vectors set in the 256-bit register array at `base` (ISR, IRR: eight 32-bit registers
/// 16 bytes apart).
fn vectors(lapic: &[i8], base: usize) -> Vec<String> {
    (0..256)
        .filter(|v| reg(lapic, base + (v / 32) * 16) & (1 << (v % 32)) != 0)
        .map(|v| format!("{v:#x}"))
        .collect()
}

fn summary(v: &VcpuState) -> String {
    let l = &v.lapic.regs;
    let msr = |a: u32| {
        v.msrs
            .iter()
            .find(|m| m.index == a)
            .map_or("-".to_string(), |m| format!("{:#x}", m.data))
    };
    let e = &v.vcpu_events;
    format!(
        "rip={:#x} rflags={:#x} mp_state={} | lapic svr={:#x} tpr={:#x} isr=[{}] irr=[{}] lvtt={:#x} \
         | tsc={} tsc_deadline={} pv_eoi={} | events irq(injected={} nr={:#x} shadow={}) \
         nmi(pending={} masked={}) exception(injected={} pending={})",
        v.regs.rip,
        v.regs.rflags,
        v.mp_state.mp_state,
        reg(l, 0xf0),
        reg(l, 0x80),
        vectors(l, 0x100).join(" "),
        vectors(l, 0x200).join(" "),
        reg(l, 0x320),
        msr(0x10),
        msr(0x6e0),
        msr(0x4b56_4d04),
        e.interrupt.injected,
        e.interrupt.nr,
        e.interrupt.shadow,
        e.nmi.pending,
        e.nmi.masked,
        e.exception.injected,
        e.exception.pending,
    )
}

fn main() {
    let mut all = false;
    for arg in std::env::args().skip(1) {
        if arg == "--all" {
            all = true;
            continue;
        }
        let state = match read_state(std::path::Path::new(&arg)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{arg}: {e}");
                continue;
            }
        };
        for (i, v) in state.vcpus.iter().enumerate() {
            println!("{arg} vcpu {i}: {}", summary(v));
            if all {
                for m in &v.msrs {
                    println!("  msr {:#x} = {:#x}", m.index, m.data);
                }
                println!("  regs {:?}", v.regs);
                println!("  sregs {:?}", v.sregs);
                println!("  events {:?}", v.vcpu_events);
            }
        }
    }
}
