//! Paths of the tiny guests built from `guests/*.S`.

/// Long mode via the Linux 64-bit boot protocol: prints markers (zero page, MMIO read), resets.
pub const HELLO64: &str = concat!(env!("OUT_DIR"), "/hello64.elf");
/// Prints CPUID 0x40000001 EAX, CPUID 0x400000f0 EBX and MSR_STAR in hex, then resets.
pub const CPUID64: &str = concat!(env!("OUT_DIR"), "/cpuid64.elf");
/// Prints a marker, then `cli; hlt` forever.
pub const HALT64: &str = concat!(env!("OUT_DIR"), "/halt64.elf");
/// The anchors' benchmark guest: touches all RAM, then rewrites 16 MiB forever printing '.'.
pub const TICKER64: &str = concat!(env!("OUT_DIR"), "/ticker64.elf");
/// The ticker with a 1 MiB window: dirties 1 MiB per pass.
pub const DIRTY1M: &str = concat!(env!("OUT_DIR"), "/dirty1m.elf");
/// The ticker with a 256 MiB window (needs more than 258 MiB of RAM).
pub const DIRTY256M: &str = concat!(env!("OUT_DIR"), "/dirty256m.elf");
/// The ticker with a 1 GiB window (needs more than 1027 MiB of RAM).
pub const DIRTY1G: &str = concat!(env!("OUT_DIR"), "/dirty1g.elf");
/// Jumps into MMIO: ends in a KVM emulation failure.
pub const MMIOFETCH64: &str = concat!(env!("OUT_DIR"), "/mmiofetch64.elf");
/// An ELF with a PVH note: checks the start-info magic in 32-bit mode, resets.
pub const PVH32: &str = concat!(env!("OUT_DIR"), "/pvh32.elf");
/// A flat real-mode binary for load address 0x1000, entry 0x0100:0x0000.
pub const REAL16: &str = concat!(env!("OUT_DIR"), "/real16.bin");
/// hello64 wrapped as a bzImage (Linux boot protocol 2.12, 64-bit entry at payload + 0x200).
pub const HELLO64_BZIMAGE: &str = concat!(env!("OUT_DIR"), "/hello64.bzimage");
