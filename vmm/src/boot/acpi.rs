//! ACPI tables for a hardware-reduced microVM, built with the acpi_tables crate: RSDP →
//! XSDT → FADT (hardware-reduced, sleep control/status registers on the power-off port) and
//! MADT (one local APIC per vCPU, the IOAPIC); the FADT's DSDT describes COM1, the pvpanic
//! port and every virtio-mmio device with its registers and interrupt, since the guest kernel has no
//! virtio-mmio command-line devices (see DESIGN.md).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::acpi::SLEEP_CONTROL_PORT;
use crate::devices::legacy::{COM1_IRQ, COM1_PORT, PVPANIC_HID, PVPANIC_PORT};
use crate::memory::GuestMemory;

/// Where the RSDP goes (the BIOS read-only area a kernel scans) and the tables after it.
pub const RSDP_ADDR: u64 = 0xe_0000;
const TABLES_ADDR: u64 = RSDP_ADDR + 0x100;
/// The IOAPIC's MMIO window and the LAPIC base, as KVM's in-kernel irqchip places them.
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;

const OEM_ID: [u8; 6] = *b"VESSEL";
const OEM_TABLE_ID: [u8; 8] = *b"VESSELVM";
const OEM_REVISION: u32 = 1;

/// A virtio-mmio device for the DSDT: its register window and interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u32,
    pub len: u32,
    pub irq: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("write ACPI table {table} at {addr:#x}: {source}")]
    Write {
        table: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("{0} vCPUs do not fit the MADT (at most 255)")]
    TooManyVcpus(u8),
}

/// SLP_TYP of the S5 (soft off) state, as [`crate::devices::acpi::SleepControl`] expects it.
const S5_SLP_TYP: u8 = 5;

/// The DSDT: COM1 and the virtio-mmio devices under `\_SB`, and the S5 sleep type.
fn dsdt(devices: &[MmioDevice]) -> Sdt {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let (io, irq) = (
        aml::IO::new(COM1_PORT as u16, COM1_PORT as u16, 1, 8),
        aml::Interrupt::new(true, true, false, false, COM1_IRQ),
    );
    let resources = aml::ResourceTemplate::new(vec![&io, &irq]);
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &resources),
    );
    aml::Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut table);
    let io = aml::IO::new(PVPANIC_PORT as u16, PVPANIC_PORT as u16, 1, 1);
    let resources = aml::ResourceTemplate::new(vec![&io]);
    let (hid, crs) = (
        aml::Name::new("_HID".into(), &PVPANIC_HID),
        aml::Name::new("_CRS".into(), &resources),
    );
    aml::Device::new("_SB_.PEVT".into(), vec![&hid, &crs]).to_aml_bytes(&mut table);
    // \_S5_: the SLP_TYP a guest writes to the sleep control register to power off. Without
    // it Linux has no ACPI power-off and halts instead.
    let s5 = aml::Package::new(vec![&S5_SLP_TYP]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut table);
    for (i, device) in devices.iter().enumerate() {
        let (window, irq) = (
            aml::Memory32Fixed::new(true, device.base, device.len),
            aml::Interrupt::new(true, true, false, false, device.irq),
        );
        let resources = aml::ResourceTemplate::new(vec![&window, &irq]);
        let index = i as u32;
        let (hid, uid, cca, crs) = (
            aml::Name::new("_HID".into(), &"LNRO0005"),
            aml::Name::new("_UID".into(), &index),
            aml::Name::new("_CCA".into(), &aml::ONE),
            aml::Name::new("_CRS".into(), &resources),
        );
        let path = format!("_SB_.V{i:03X}");
        aml::Device::new(path.as_str().into(), vec![&hid, &uid, &cca, &crs])
            .to_aml_bytes(&mut table);
    }
    table.update_checksum();
    table
}

/// FADT IA-PC boot architecture flags (ACPI 6.4, table 5.11).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// The FADT: hardware-reduced, the power-off port as sleep control and status register, no
/// legacy devices to probe.
fn fadt(dsdt_addr: u64) -> impl Aml {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    let sleep = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        SLEEP_CONTROL_PORT,
    );
    fadt.sleep_control_reg = sleep;
    fadt.sleep_status_reg = sleep;
    // Nothing of the legacy PC to probe for: without these flags Linux probes VGA and
    // pokes the CMOS RTC's ports until it gives up (seconds under nested virtualization).
    fadt.iapc_boot_arch =
        (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"VESSELVM").into();
    fadt.finalize()
}

/// The MADT: a local APIC per vCPU and the IOAPIC (GSI base 0).
fn madt(vcpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    madt
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// Writes the tables for `vcpus` vCPUs and `devices` into guest memory; returns the RSDP's
/// address (for the PVH start info's `rsdp_paddr`).
pub fn write_tables(
    memory: &GuestMemory,
    vcpus: u8,
    devices: &[MmioDevice],
) -> Result<GuestAddress, AcpiError> {
    if vcpus == u8::MAX {
        return Err(AcpiError::TooManyVcpus(vcpus));
    }
    let mut next = TABLES_ADDR;
    let mut place = |table: &'static str, data: &[u8]| -> Result<u64, AcpiError> {
        let addr = next;
        memory
            .write_slice(data, GuestAddress(addr))
            .map_err(|source| AcpiError::Write {
                table,
                addr,
                source,
            })?;
        next = (addr + data.len() as u64 + 7) & !7;
        Ok(addr)
    };
    let dsdt_addr = place("DSDT", dsdt(devices).as_slice())?;
    let fadt_addr = place("FADT", &bytes(&fadt(dsdt_addr)))?;
    let madt_addr = place("MADT", &bytes(&madt(vcpus)))?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place("XSDT", &bytes(&xsdt))?;
    memory
        .write_slice(
            &bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
            GuestAddress(RSDP_ADDR),
        )
        .map_err(|source| AcpiError::Write {
            table: "RSDP",
            addr: RSDP_ADDR,
            source,
        })?;
    Ok(GuestAddress(RSDP_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// A table at `addr` with its signature checked and its bytes summing to zero.
    fn table(mem: &GuestMemory, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, 36);
        assert_eq!(&header[..4], signature);
        let data = read(mem, addr, u32_at(&header, 4) as usize);
        let sum = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        assert_eq!(sum, 0, "{} checksum", String::from_utf8_lossy(signature));
        data
    }

    #[test]
    fn tables_chain_from_the_rsdp_and_describe_the_devices() {
        let mem = memory::create(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let devices = [
            MmioDevice {
                base: 0xd000_0000,
                len: 0x1000,
                irq: 5,
            },
            MmioDevice {
                base: 0xd000_1000,
                len: 0x1000,
                irq: 6,
            },
        ];
        let rsdp_addr = write_tables(&mem, 2, &devices).unwrap();
        let rsdp = read(&mem, rsdp_addr.0, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|at| u64_at(&xsdt, at))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(&mem, entries[0], b"FACP");
        assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "hardware-reduced");
        // Sleep control register: a byte of I/O space at the power-off port.
        assert_eq!((fadt[244], fadt[245]), (1, 8));
        assert_eq!(u64_at(&fadt, 248), SLEEP_CONTROL_PORT);
        // IAPC_BOOT_ARCH at offset 109: no VGA, no MSI, no CMOS RTC.
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]), 0b10_1100);
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        let text = String::from_utf8_lossy(&dsdt);
        assert!(
            text.contains("LNRO0005") && text.contains("V001"),
            "{text:?}"
        );
        assert!(
            text.contains("PEVT") && text.contains(PVPANIC_HID),
            "{text:?}"
        );
        assert!(dsdt.windows(4).any(|w| w == 0xd000_1000u32.to_le_bytes()));
        // Name(_S5_, Package(1) { 5 }): NameOp, the name, PackageOp, its length, one
        // element, BytePrefix 5.
        let s5 = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01, 0x0a, 0x05];
        assert!(
            dsdt.windows(s5.len()).any(|w| w == s5),
            "no _S5_: {dsdt:x?}"
        );
        let madt = table(&mem, entries[1], b"APIC");
        // Two local APICs (type 0) and an IOAPIC (type 1) after the 44-byte header.
        let kinds: Vec<u8> = {
            let (mut at, mut kinds) = (44, Vec::new());
            while at < madt.len() {
                kinds.push(madt[at]);
                at += madt[at + 1] as usize;
            }
            kinds
        };
        assert_eq!(kinds, [0, 0, 1]);
    }

    #[test]
    fn tables_need_room_in_guest_memory() {
        let mem = memory::create(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = write_tables(&mem, 1, &[]).unwrap_err();
        assert!(err.to_string().contains("DSDT"), "{err}");
    }
}
