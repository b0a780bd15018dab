use super::*;
use crate::arch::x86_64::boot_params::{e820_map, E820_RESERVED};
use crate::arch::x86_64::layout::{EBDA_START, VMGENID_ADDR, VMGENID_GSI};
use crate::arch::x86_64::mptable;
use cairn_devices::GuestMemoryMmap;

const VMGENID: VmGenIdAcpi = VmGenIdAcpi {
    addr: VMGENID_ADDR,
    gsi: VMGENID_GSI,
};

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Read a table back from guest memory the way a guest does: header first, then its length.
fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let mut header = [0u8; 36];
    mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
    let mut t = vec![0u8; u32_at(&header, 4) as usize];
    mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
    assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
    t
}

#[test]
fn tables_chain_from_the_rsdp_with_valid_checksums() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    for cpus in [1u8, 2, 8, mptable::MAX_SUPPORTED_CPUS] {
        let rsdp_addr = setup_acpi(&mem, cpus, Some(VMGENID), &[(0xd000_0000, 5)]).unwrap();
        assert_eq!(rsdp_addr, RSDP_START);
        assert_eq!(rsdp_addr % 16, 0, "scanned for on 16-byte boundaries");
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(rsdp_addr)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&rsdp), 0, "extended checksum");
        assert_eq!((rsdp[15], u32_at(&rsdp, 20)), (2, 36), "revision, length");

        let xsdt = table_at(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt = table_at(&mem, u64_at(&xsdt, 36));
        let madt = table_at(&mem, u64_at(&xsdt, 44));
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(&madt[..4], b"APIC");

        // FADT: revision 6.5, hardware-reduced, no VGA, the DSDT through X_DSDT only.
        assert_eq!((fadt[8], fadt[131]), (6, 5));
        assert_eq!(fadt.len(), 276);
        assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]), 1 << 2);
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
        assert_eq!(&fadt[268..276], b"CAIRNVMM");
        let dsdt = table_at(&mem, u64_at(&fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");

        // MADT: the LAPIC address, the IOAPIC, then one enabled local APIC per vCPU.
        assert_eq!(u32_at(&madt, 36), APIC_ADDR);
        let entries = &madt[44..];
        assert_eq!(&entries[..2], &[1, 12]);
        assert_eq!(u32_at(entries, 4), IOAPIC_ADDR);
        let lapics = &entries[12..];
        assert_eq!(lapics.len(), 8 * usize::from(cpus));
        for (i, l) in lapics.chunks(8).enumerate() {
            assert_eq!(&l[..4], &[0, 8, i as u8, i as u8]);
            assert_eq!(u32_at(l, 4), 1, "enabled");
        }

        // Everything sits in the reserved system memory, clear of the MP table and the id.
        let tables = build(cpus, Some(VMGENID), &[(0xd000_0000, 5)]).unwrap();
        let mp_end = EBDA_START + mptable::build(cpus, EBDA_START).unwrap().len() as u64;
        assert!(mp_end <= VMGENID_ADDR);
        for w in tables.tables.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0);
        }
        let (last, bytes) = tables.tables.last().unwrap();
        assert!(last + bytes.len() as u64 <= SYSTEM_MEM_END);
        const { assert!(VMGENID_ADDR + 16 <= RSDP_START) };
    }
    let reserved = e820_map(256 << 20)
        .into_iter()
        .find(|e| e.kind == E820_RESERVED)
        .unwrap();
    assert_eq!(
        (reserved.addr, reserved.addr + reserved.size),
        (EBDA_START, SYSTEM_MEM_END)
    );
}

#[test]
fn dsdt_describes_the_vmgenid_device_and_its_ged() {
    let body = dsdt_body(Some(VMGENID), &[]);
    // Device(\_SB.VGEN) with the ids Linux's vmgenid driver matches.
    assert!(find(&body, b"VGEN").is_some());
    assert!(find(&body, b"VMGENCTR\0").is_some());
    assert!(find(&body, b"VM_Gen_Counter\0").is_some());
    // Name(ADDR, Package(2) { low, high }): the id's address, as DWordConst then ZeroOp.
    let addr = find(&body, b"ADDR").unwrap();
    let pkg = &body[addr + 4..];
    assert_eq!(pkg[0], 0x12, "PackageOp");
    assert_eq!(pkg[2], 2, "two elements");
    let mut low = vec![0x0c];
    low.extend_from_slice(&(VMGENID_ADDR as u32).to_le_bytes());
    assert_eq!(&pkg[3..8], low.as_slice());
    assert_eq!(pkg[8], 0x00, "high half is Zero");
    // The GED: ACPI0013, one edge-triggered, active-high Extended Interrupt on the GSI, and an
    // _EVT that notifies VGEN with 0x80.
    assert!(find(&body, b"ACPI0013\0").is_some());
    let mut irq = vec![0x89, 6, 0, 0b0011, 1];
    irq.extend_from_slice(&VMGENID_GSI.to_le_bytes());
    assert!(find(&body, &irq).is_some(), "interrupt descriptor");
    assert!(find(&body, b"_EVT").is_some());
    let notify = find(
        &body,
        &[
            0x86, b'\\', 0x2e, b'_', b'S', b'B', b'_', b'V', b'G', b'E', b'N',
        ],
    );
    assert!(notify.is_some(), "Notify(\\_SB_.VGEN, ...)");
    assert_eq!(
        &body[notify.unwrap() + 11..notify.unwrap() + 13],
        &[0x0a, 0x80]
    );

    // Virtio-mmio devices: LNRO0005 with their window and GSI (Linux maps no GSI on a
    // hardware-reduced platform unless ACPI describes its device).
    let virtio = dsdt_body(None, &[(0xd000_1000, 6)]);
    assert!(find(&virtio, b"V000").is_some());
    assert!(find(&virtio, b"LNRO0005\0").is_some());
    let mut window = vec![0x86, 9, 0, 1];
    window.extend_from_slice(&0xd000_1000u32.to_le_bytes());
    window.extend_from_slice(&0x1000u32.to_le_bytes());
    assert!(find(&virtio, &window).is_some(), "Memory32Fixed");
    assert!(find(&virtio, &[0x89, 6, 0, 0b0011, 1, 6, 0, 0, 0]).is_some());
}

#[test]
fn dsdt_describes_com1_and_the_i8042() {
    // Without COM1 in the DSDT a hardware-reduced Linux guest maps no IRQ 4, its console tty
    // fails to start, and /init's shell exits at once (the kernel panics).
    let body = dsdt_body(None, &[]);
    assert!(find(&body, b"COM1").is_some());
    assert!(find(&body, b"PS2_").is_some());
    // EISAID("PNP0501") and EISAID("PNP0303") as DWordConst.
    assert!(
        find(&body, &[0x0c, 0x41, 0xd0, 0x05, 0x01]).is_some(),
        "PNP0501"
    );
    assert!(
        find(&body, &[0x0c, 0x41, 0xd0, 0x03, 0x03]).is_some(),
        "PNP0303"
    );
    // COM1: IO(Decode16, 0x3f8, 0x3f8, 1, 8) and its GSI 4; the i8042: ports 0x60 and 0x64, GSI 1.
    assert!(find(&body, &[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8]).is_some());
    assert!(find(&body, &[0x89, 6, 0, 0b0011, 1, 4, 0, 0, 0]).is_some());
    assert!(find(&body, &[0x47, 1, 0x60, 0, 0x60, 0, 1, 1]).is_some());
    assert!(find(&body, &[0x47, 1, 0x64, 0, 0x64, 0, 1, 1]).is_some());
    assert!(find(&body, &[0x89, 6, 0, 0b0011, 1, 1, 0, 0, 0]).is_some());
    assert!(
        find(&body, b"VGEN").is_none(),
        "no VMGenID device unless asked"
    );
}

#[test]
fn too_many_tables_for_low_memory_are_refused() {
    // 254 vCPUs is the most an MP table describes; the tables for them still fit.
    assert!(build(
        mptable::MAX_SUPPORTED_CPUS,
        Some(VMGENID),
        &[(0xd000_0000, 5); 18]
    )
    .is_ok());
    let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let err = setup_acpi(&tiny, 1, Some(VMGENID), &[]).unwrap_err();
    assert!(
        err.to_string().contains("cannot write the ACPI tables"),
        "{err}"
    );
}

/// Writes the tables to $CAIRN_ACPI_DUMP_DIR (for `iasl -d`), when set.
#[test]
fn dump_tables_for_iasl() {
    let Some(dir) = std::env::var_os("CAIRN_ACPI_DUMP_DIR") else {
        return;
    };
    let tables = build(2, Some(VMGENID), &[(0xd000_0000, 5), (0xd000_1000, 6)]).unwrap();
    for (_, bytes) in tables.tables.iter().skip(1) {
        let name = String::from_utf8_lossy(&bytes[..4]).to_lowercase();
        std::fs::write(
            std::path::Path::new(&dir).join(format!("{name}.dat")),
            bytes,
        )
        .unwrap();
    }
}
