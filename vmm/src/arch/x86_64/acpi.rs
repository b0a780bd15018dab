//! ACPI tables for x86_64 guests, the shape Firecracker (v1.8+) builds: a hardware-reduced
//! platform with an RSDP, an XSDT, a FADT, a MADT (every vCPU's local APIC and the IOAPIC) and a
//! DSDT that describes COM1, the i8042, the virtio-mmio devices, the VM generation ID device and
//! the Generic Event Device (GED) that notifies it. The virtio-mmio devices stay on the kernel
//! command line too, and the MP table stays, for kernels built without ACPI.
//!
//! Everything lives in the reserved low memory between the EBDA and 1 MiB: the RSDP at
//! [`RSDP_START`] (where a BIOS would put it, so kernels that scan for it find it), the other
//! tables right after it, and the generation id itself at [`VMGENID_ADDR`].

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{
    APIC_ADDR, COM1_IRQ, COM1_PORT, I8042_PORT, IOAPIC_ADDR, MMIO_DEVICE_SIZE, RSDP_START,
    SYSTEM_MEM_END,
};

const OEM_ID: [u8; 6] = *b"CAIRN ";
const OEM_REVISION: u32 = 1;
/// FADT "hypervisor vendor identity" (ACPI 6.x), as Firecracker's `FIRECKVM`.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"CAIRNVMM";
/// IA-PC boot architecture flag: no VGA (so the kernel does not probe for it).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// Tables after the RSDP start on this alignment.
const TABLE_ALIGN: u64 = 16;
/// `Notify` value for "the generation id changed" (the spec's 0x80).
const VMGENID_NOTIFY: u8 = 0x80;

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit below 1 MiB.
    #[error("ACPI tables need {0:#x} bytes from {RSDP_START:#x}: more than fit below {SYSTEM_MEM_END:#x}")]
    TooLarge(u64),
    /// Guest memory refused a table.
    #[error("cannot write the ACPI tables: {0}")]
    Write(#[from] GuestMemoryError),
}

/// Where the VM generation id lives and which GSI notifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmGenIdAcpi {
    /// Guest physical address of the 16-byte id.
    pub addr: u64,
    /// GSI the GED turns into `Notify(\_SB.VGEN, 0x80)`.
    pub gsi: u32,
}

/// The tables, each with the guest address it is built for. The RSDP comes first.
#[derive(Debug)]
pub struct AcpiTables {
    /// `(guest address, bytes)`, RSDP first, then XSDT, FADT, MADT, DSDT.
    pub tables: Vec<(u64, Vec<u8>)>,
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn align(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// A virtio-mmio device as the DSDT describes it (Firecracker's `LNRO0005` devices). A
/// hardware-reduced platform has no legacy PIC, so Linux maps a GSI only for a device that ACPI
/// describes: without these, the command line's `virtio_mmio.device=` IRQs do not exist there.
fn virtio_aml(index: usize, base: u64, irq: u32, body: &mut Vec<u8>) {
    let path = format!("_SB_.V{index:03}");
    let uid = index;
    let one = aml::One {};
    let mem = aml::Memory32Fixed::new(true, base as u32, MMIO_DEVICE_SIZE as u32);
    let int = aml::Interrupt::new(true, true, false, false, irq);
    let crs = aml::ResourceTemplate::new(vec![&mem, &int]);
    aml::Device::new(
        aml::Path::new(&path),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CCA".into(), &one),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(body);
}

/// COM1 (`PNP0501`) and the i8042 (`PNP0303`), as Firecracker's DSDT has them. On a
/// hardware-reduced platform Linux has no legacy PIC and maps no ISA IRQ by default: the 8250
/// driver's built-in COM1 at IRQ 4 then fails its `request_irq` when `/init` opens the console,
/// the tty is marked for I/O errors, and init's shell reads EOF and exits ("Attempted to kill
/// init! exitcode=0x00000000"). Described here, `8250_pnp` binds COM1 with its GSI mapped.
fn legacy_aml(body: &mut Vec<u8>) {
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_irq, &com1_io]);
    let zero = aml::Zero {};
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &zero),
            &aml::Name::new("_DDN".into(), &"COM1"),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(body);
    let kbd_data = aml::IO::new(I8042_PORT, I8042_PORT, 1, 1);
    let kbd_cmd = aml::IO::new(I8042_PORT + 4, I8042_PORT + 4, 1, 1);
    let kbd_irq = aml::Interrupt::new(
        true,
        true,
        false,
        false,
        cairn_devices::legacy::i8042::I8042_KBD_IRQ,
    );
    let kbd_crs = aml::ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    let present = 0x0fu8;
    aml::Device::new(
        "_SB_.PS2_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Method::new("_STA".into(), 0, false, vec![&aml::Return::new(&present)]),
            &aml::Name::new("_CRS".into(), &kbd_crs),
        ],
    )
    .to_aml_bytes(body);
}

/// The DSDT body: COM1 and the i8042, the virtio-mmio devices `(base, irq)`, the VMGenID device and the GED that
/// notifies it (Firecracker's AML).
pub fn dsdt_body(vmgenid: Option<VmGenIdAcpi>, virtio: &[(u64, u32)]) -> Vec<u8> {
    let mut body = Vec::new();
    legacy_aml(&mut body);
    for (i, (base, irq)) in virtio.iter().enumerate() {
        virtio_aml(i, *base, *irq, &mut body);
    }
    let Some(g) = vmgenid else {
        return body;
    };
    // The spec's ADDR is a package of two integers: the low and high 32 bits of the address.
    let (low, high) = (g.addr as u32, (g.addr >> 32) as u32);
    let addr = aml::Package::new(vec![&low, &high]);
    aml::Device::new(
        "_SB_.VGEN".into(),
        vec![
            &aml::Name::new("_HID".into(), &"VMGENCTR"),
            &aml::Name::new("_CID".into(), &"VM_Gen_Counter"),
            &aml::Name::new("_DDN".into(), &"VM_Gen_Counter"),
            &aml::Name::new("ADDR".into(), &addr),
        ],
    )
    .to_aml_bytes(&mut body);
    let irq = aml::Interrupt::new(true, true, false, false, g.gsi);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let gsi = g.gsi as u8;
    let notify_value = VMGENID_NOTIFY;
    let target = aml::Path::new("\\_SB_.VGEN");
    let notify = aml::Notify::new(&target, &notify_value);
    let is_vmgenid = aml::Equal::new(&aml::Arg(0), &gsi);
    let on_vmgenid = aml::If::new(&is_vmgenid, vec![&notify]);
    aml::Device::new(
        "_SB_.GED_".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_CRS".into(), &crs),
            &aml::Method::new("_EVT".into(), 1, true, vec![&on_vmgenid]),
        ],
    )
    .to_aml_bytes(&mut body);
    body
}

fn dsdt(vmgenid: Option<VmGenIdAcpi>, virtio: &[(u64, u32)]) -> Vec<u8> {
    let body = dsdt_body(vmgenid, virtio);
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"CAIRNDSD", OEM_REVISION);
    sdt.append_slice(&body);
    sdt.update_checksum();
    sdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"CAIRNFAC", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    to_bytes(&fadt.finalize())
}

fn madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"CAIRNAPI",
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDR),
    );
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    for cpu in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    to_bytes(&madt)
}

/// Build every table for `num_cpus` vCPUs and the virtio-mmio devices `(base, irq)`, addressed
/// from [`RSDP_START`] on.
pub fn build(
    num_cpus: u8,
    vmgenid: Option<VmGenIdAcpi>,
    virtio: &[(u64, u32)],
) -> Result<AcpiTables, AcpiError> {
    let rsdp_len = Rsdp::len() as u64;
    let madt = madt(num_cpus);
    let dsdt = dsdt(vmgenid, virtio);
    let fadt_len = FADTBuilder::new(OEM_ID, *b"CAIRNFAC", OEM_REVISION)
        .length
        .get() as u64;
    // XSDT: header + two 64-bit entries (FADT, MADT).
    let xsdt_len = 36 + 2 * 8;
    let xsdt_addr = align(RSDP_START + rsdp_len);
    let fadt_addr = align(xsdt_addr + xsdt_len);
    let madt_addr = align(fadt_addr + fadt_len);
    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > SYSTEM_MEM_END {
        return Err(AcpiError::TooLarge(end - RSDP_START));
    }
    let fadt = fadt(dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, *b"CAIRNXSD", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        tables: vec![
            (RSDP_START, rsdp),
            (xsdt_addr, xsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (dsdt_addr, dsdt),
        ],
    })
}

/// Write the tables into guest memory; returns the RSDP's address.
pub fn setup_acpi<M: GuestMemoryBackend>(
    mem: &M,
    num_cpus: u8,
    vmgenid: Option<VmGenIdAcpi>,
    virtio: &[(u64, u32)],
) -> Result<u64, AcpiError> {
    let tables = build(num_cpus, vmgenid, virtio)?;
    for (addr, bytes) in &tables.tables {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }
    Ok(RSDP_START)
}

#[cfg(test)]
#[path = "acpi_tests.rs"]
mod tests;
