//! The Linux x86 boot protocol's 64-bit entry (Documentation/arch/x86/boot.rst): the guest
//! starts in long mode with the first GiB identity-mapped, `%rsi` pointing at a
//! `boot_params` ("zero page") that holds the setup header (the bzImage's own, or a minimal
//! one for an ELF vmlinux without a PVH note), the command line, the initramfs, the e820
//! map and the ACPI RSDP. Used for kernels the PVH entry cannot start.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::memory::GuestMemory;

/// Where the zero page goes.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// `boot_flag` and `header` ("HdrS") of a valid setup header.
const BOOT_FLAG: u16 = 0xaa55;
const HDRS: u32 = 0x5372_6448;
/// `type_of_loader`: "undefined" boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags`: the kernel runs at 0x100000 (bzImage).
const LOADED_HIGH: u8 = 0x1;
/// `xloadflags`: the kernel has a 64-bit entry 0x200 bytes into protected-mode code.
pub const XLF_KERNEL_64: u16 = 0x1;
/// The 64-bit entry's offset from the bzImage's load address.
pub const BZIMAGE_ENTRY_64: u64 = 0x200;
/// A relocatable kernel's default alignment.
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    #[error("the memory map has {0} entries, the zero page holds {max}", max = 128)]
    TooManyE820(usize),
    #[error("write the zero page: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// What the zero page tells the kernel.
pub struct BootInfo {
    /// The bzImage's setup header; `None` for an ELF vmlinux.
    pub header: Option<setup_header>,
    pub cmdline: GuestAddress,
    pub cmdline_len: usize,
    pub initrd: Option<(GuestAddress, u64)>,
    pub rsdp: GuestAddress,
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`] for a guest with `memory` as its RAM.
pub fn write_boot_params(memory: &GuestMemory, info: &BootInfo) -> Result<(), LinuxBootError> {
    let mut params = boot_params {
        hdr: info.header.unwrap_or(setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS,
            loadflags: LOADED_HIGH,
            kernel_alignment: KERNEL_ALIGNMENT,
            ..Default::default()
        }),
        acpi_rsdp_addr: info.rsdp.0,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = info.cmdline.0 as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = layout::e820(memory);
    if map.len() > params.e820_table.len() {
        return Err(LinuxBootError::TooManyE820(map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    memory
        .write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(LinuxBootError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn the_zero_page_carries_header_cmdline_initrd_map_and_rsdp() {
        let mem = memory::create(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let info = BootInfo {
            header: None,
            cmdline: GuestAddress(0x2_0000),
            cmdline_len: 42,
            initrd: Some((GuestAddress(0x30_0000), 0x1234)),
            rsdp: GuestAddress(0xe_0000),
        };
        write_boot_params(&mem, &info).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.header }, HDRS);
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ hdr.type_of_loader }, LOADER_UNDEFINED);
        assert_eq!(({ hdr.cmd_line_ptr }, { hdr.cmdline_size }), (0x2_0000, 42));
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0x30_0000, 0x1234)
        );
        assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(params.e820_entries, 3);
        let last = params.e820_table[2];
        assert_eq!(({ last.addr }, { last.size }), (0x10_0000, 0x30_0000));

        // A bzImage's own header is kept, with the loader's fields filled in.
        let own = setup_header {
            header: HDRS,
            version: 0x020f,
            xloadflags: XLF_KERNEL_64,
            ..Default::default()
        };
        let info = BootInfo {
            header: Some(own),
            ..info
        };
        write_boot_params(&mem, &info).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!(
            ({ params.hdr.version }, { params.hdr.type_of_loader }),
            (0x020f, 0xff)
        );
    }
}
