//! Loading the guest: the kernel through linux-loader (an ELF vmlinux, started at its PVH
//! entry note when it has one, else at its 64-bit entry; or a bzImage, at its 64-bit
//! entry), the initramfs at the top of low RAM, and the command line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{self, HIMEM_START};
use super::linux::{BZIMAGE_ENTRY_64, XLF_KERNEL_64};
use crate::memory::GuestMemory;

/// Where the command line goes, and its longest accepted length.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("load kernel {path}: {source}")]
    Kernel {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {0} is a bzImage without a 64-bit entry (boot protocol 2.12, XLF_KERNEL_64)")]
    NoEntry64(String),
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM above the kernel")]
    InitrdTooBig { path: String, size: u64 },
    #[error("load initramfs {path}: {source}")]
    Initrd {
        path: String,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line: {0}")]
    Cmdline(String),
}

/// Where and how the kernel starts.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// The 32-bit PVH entry: the start info's address in `%ebx`.
    Pvh(GuestAddress),
    /// The 64-bit Linux entry: the zero page's address in `%rsi`; `header` is a bzImage's
    /// setup header.
    Linux64 {
        addr: GuestAddress,
        header: Option<setup_header>,
    },
}

/// What was loaded, for the entry state and the boot information.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    pub entry: Entry,
    pub kernel_end: u64,
    pub initrd: Option<(GuestAddress, u64)>,
    /// The command line's length, its NUL included.
    pub cmdline_len: usize,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Loads `kernel` (and `initrd`, page-aligned at the top of the RAM below the MMIO hole)
/// and `cmdline`.
pub fn load(
    memory: &GuestMemory,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<Loaded, LoaderError> {
    let name = kernel.display().to_string();
    let open_err = |source| LoaderError::Open {
        what: "kernel",
        path: name.clone(),
        source,
    };
    let mut file = File::open(kernel).map_err(open_err)?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC;
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;
    let kernel_err = |source| LoaderError::Kernel {
        path: name.clone(),
        source,
    };
    let (entry, result) = if is_elf {
        let result = Elf::load(memory, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(kernel_err)?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => Entry::Pvh(addr),
            _ => Entry::Linux64 {
                addr: result.kernel_load,
                header: None,
            },
        };
        (entry, result)
    } else {
        let result = BzImage::load(memory, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(kernel_err)?;
        (bzimage_entry(&name, &result)?, result)
    };
    let initrd = match initrd {
        Some(path) => Some(load_initrd(
            memory,
            layout::low_ram_end(memory),
            result.kernel_end,
            path,
        )?),
        None => None,
    };
    let mut line = Cmdline::new(CMDLINE_MAX).map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    line.insert_str(cmdline)
        .map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    load_cmdline(memory, GuestAddress(CMDLINE_ADDR), &line)
        .map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    Ok(Loaded {
        entry,
        kernel_end: result.kernel_end,
        initrd,
        cmdline_len: cmdline.len() + 1,
    })
}

/// A bzImage's 64-bit entry, 0x200 bytes into its protected-mode code, if it has one.
fn bzimage_entry(name: &str, result: &KernelLoaderResult) -> Result<Entry, LoaderError> {
    let header = result
        .setup_header
        .filter(|h| h.version >= 0x020c && h.xloadflags & XLF_KERNEL_64 != 0)
        .ok_or_else(|| LoaderError::NoEntry64(name.to_owned()))?;
    Ok(Entry::Linux64 {
        addr: GuestAddress(result.kernel_load.0 + BZIMAGE_ENTRY_64),
        header: Some(header),
    })
}

fn load_initrd(
    memory: &GuestMemory,
    ram: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<(GuestAddress, u64), LoaderError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|source| LoaderError::Open {
        what: "initramfs",
        path: name.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| LoaderError::Open {
            what: "initramfs",
            path: name.clone(),
            source,
        })?
        .len();
    let addr = ram
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end)
        .ok_or(LoaderError::InitrdTooBig {
            path: name.clone(),
            size,
        })?;
    memory
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| LoaderError::Initrd { path: name, source })?;
    Ok((GuestAddress(addr), size))
}
