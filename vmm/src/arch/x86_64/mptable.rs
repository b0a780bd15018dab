//! The Intel MultiProcessor table (MP spec 1.4), so that a guest without ACPI finds every vCPU,
//! the IOAPIC and the legacy IRQ routing. Entries are serialised by hand, byte by byte.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX};

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

/// Most vCPUs an MP table can describe (APIC ids are 8-bit and one id goes to the IOAPIC).
pub const MAX_SUPPORTED_CPUS: u8 = 254;

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for an MP table.
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_SUPPORTED_CPUS})")]
    TooManyCpus(u8),
    /// The table does not fit in guest memory.
    #[error("cannot write the MP table: {0}")]
    Write(#[from] GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Build the MP floating pointer and configuration table for `num_cpus` vCPUs, to live at
/// `base`. Returns the bytes (floating pointer first).
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_SUPPORTED_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[3, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[4, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = (MPC_HEADER_SIZE + entries.len()) as u16;
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"CAIRN   ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended length + checksum + reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&((base + MPF_SIZE as u64) as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(4); // spec revision
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0u8; 5]);
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Write the MP table for `num_cpus` vCPUs at the start of the EBDA.
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 8, MAX_SUPPORTED_CPUS] {
            let t = build(cpus, EBDA_START).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..MPF_SIZE]), 0);
            let table = &t[MPF_SIZE..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, cpus as usize + 1 + 1 + 24 + 2);
            // Processor entries come first; the first is the BSP.
            assert_eq!(table[MPC_HEADER_SIZE], 0);
            assert_eq!(table[MPC_HEADER_SIZE + 3], CPU_ENABLED | CPU_BSP);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + MPF_SIZE as u64);
        }
        assert!(build(0, EBDA_START).is_err());
        assert!(build(255, EBDA_START).is_err());
    }

    #[test]
    fn fits_below_640k() {
        let t = build(MAX_SUPPORTED_CPUS, EBDA_START).unwrap();
        assert!(EBDA_START + (t.len() as u64) < super::super::layout::HIMEM_START);
    }
}
