//! Tiny kernels, written byte by byte here (no toolchain needed at test time):
//! - a PVH kernel: an ELF64 image whose one loadable segment holds hand-assembled 32-bit code
//!   at 1 MiB, and whose `XEN_ELFNOTE_PHYS32_ENTRY` note points at it, so both vessel-vmm and
//!   QEMU (`-kernel`) boot it the way they boot a PVH vmlinux;
//! - the same ELF without the note, and a bzImage, both entered in 64-bit mode by the Linux
//!   boot protocol, with 64-bit code that checks `%rsi` points at the zero page.

/// Where the code is loaded and entered.
pub const ENTRY: u64 = 0x10_0000;

/// The code: `mov $0x3f8,%dx; mov $'!',%al; out %al,%dx; 1: hlt; jmp 1b` (32-bit): one byte
/// on the serial console, then halt forever.
pub const PRINT_BANG: &[u8] = &[0x66, 0xba, 0xf8, 0x03, 0xb0, 0x21, 0xee, 0xf4, 0xeb, 0xfd];

/// The code: print `!`, then ask the i8042 for a reset (`mov $0xfe,%al; out %al,$0x64`), as
/// a guest with `reboot=k` does.
pub const PRINT_THEN_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x21, 0xee, // print '!'
    0xb0, 0xfe, 0xe6, 0x64, // i8042 reset
    0xf4, 0xeb, 0xfd, // 1: hlt; jmp 1b
];

/// The code: print `!`, then power off through the ACPI sleep control register (port 0x600,
/// SLP_TYP = S5 with SLP_EN): `mov $0x600,%dx; mov $0x34,%al; out %al,%dx`.
pub const PRINT_THEN_POWER_OFF: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x21, 0xee, // print '!'
    0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, // S5
    0xf4, 0xeb, 0xfd, // 1: hlt; jmp 1b
];

/// 64-bit code: if `%rsi` points at a zero page (its setup header's "HdrS" at 0x202), print
/// `!` and power off; else print `?` and reset:
/// `cmpl $0x53726448,0x202(%rsi); jne 1f; <print '!', S5>; 1: <print '?', i8042 reset>`.
pub const CHECK_ZERO_PAGE_THEN_POWER_OFF: &[u8] = &[
    0x81, 0xbe, 0x02, 0x02, 0x00, 0x00, 0x48, 0x64, 0x72, 0x53, // cmpl $"HdrS",0x202(%rsi)
    0x75, 0x11, // jne 1f (17 bytes on)
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x21, 0xee, // print '!'
    0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, // S5
    0xf4, 0xeb, 0xfd, // hlt; jmp .-1
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x3f, 0xee, // 1: print '?'
    0xb0, 0xfe, 0xe6, 0x64, // i8042 reset
    0xf4, 0xeb, 0xfd, // hlt; jmp .-1
];

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const CODE_OFFSET: usize = 0x1000;

/// The ELF image of `code`, with the PVH entry note.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    elf(code, true)
}

/// The ELF image of `code` without a PVH note: a VMM enters it at `e_entry` in 64-bit mode.
pub fn elf64(code: &[u8]) -> Vec<u8> {
    elf(code, false)
}

fn elf(code: &[u8], pvh: bool) -> Vec<u8> {
    let note_offset = EHDR_SIZE + 2 * PHDR_SIZE;
    // Note: namesz, descsz, type (18 = XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", the entry.
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(ENTRY as u32).to_le_bytes());

    let mut elf = Vec::with_capacity(CODE_OFFSET + code.len());
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // ELF64, LE, v1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    elf.extend_from_slice(&(1 + u16::from(pvh)).to_le_bytes()); // program headers
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&[0; 4]); // no sections, no names
    let phdr = |elf: &mut Vec<u8>,
                kind: u32,
                flags: u32,
                offset: usize,
                addr: u64,
                size: usize,
                align: u64| {
        elf.extend_from_slice(&kind.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        elf.extend_from_slice(&(offset as u64).to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes());
        elf.extend_from_slice(&(size as u64).to_le_bytes());
        elf.extend_from_slice(&(size as u64).to_le_bytes());
        elf.extend_from_slice(&align.to_le_bytes());
    };
    phdr(&mut elf, 1, 5, CODE_OFFSET, ENTRY, code.len(), 0x1000); // PT_LOAD, R+X
    if pvh {
        phdr(&mut elf, 4, 4, note_offset, 0, note.len(), 4); // PT_NOTE
        elf.extend_from_slice(&note);
    }
    elf.resize(CODE_OFFSET, 0);
    elf.extend_from_slice(code);
    elf
}

/// A bzImage (boot protocol 2.15, 64-bit entry) whose protected-mode part is 0x200 bytes of
/// zeros (the 32-bit entry, never used) followed by 64-bit `code`, loaded at 1 MiB.
pub fn bzimage(code: &[u8]) -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut payload = vec![0u8; 0x200];
    payload.extend_from_slice(code);
    let mut image = vec![0u8; setup_len];
    let mut put = |at: usize, bytes: &[u8]| image[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, &[SETUP_SECTS]);
    put(0x1f4, &((payload.len() as u32).div_ceil(16)).to_le_bytes()); // syssize
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes()); // version
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &(ENTRY as u32).to_le_bytes()); // code32_start
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(0x238, &4095u32.to_le_bytes()); // cmdline_size
    image.extend_from_slice(&payload);
    image
}
