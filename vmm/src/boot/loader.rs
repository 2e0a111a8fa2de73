//! Loading the guest: the kernel (an ELF vmlinux with a PVH entry note, through
//! linux-loader), the initramfs above it, and the command line.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::pvh::HIMEM_START;
use crate::vstate::memory::GuestMemory;

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
    #[error("kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry(String),
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

/// What was loaded, for the entry state and the start info.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    /// The PVH (32-bit) entry point.
    pub entry: GuestAddress,
    pub kernel_end: u64,
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Loads `kernel` (and `initrd`, page-aligned at the top of RAM below `ram`) and `cmdline`.
pub fn load(
    memory: &GuestMemory,
    ram: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<Loaded, LoaderError> {
    let name = kernel.display().to_string();
    let mut file = File::open(kernel).map_err(|source| LoaderError::Open {
        what: "kernel",
        path: name.clone(),
        source,
    })?;
    let result =
        Elf::load(memory, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            LoaderError::Kernel {
                path: name.clone(),
                source,
            }
        })?;
    let PvhBootCapability::PvhEntryPresent(entry) = result.pvh_boot_cap else {
        return Err(LoaderError::NoPvhEntry(name));
    };
    let initrd = match initrd {
        Some(path) => Some(load_initrd(memory, ram, result.kernel_end, path)?),
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
