//! What a VM is made of, as the builder takes it: kernel, initramfs and command line, memory
//! and vCPUs, the console, and each optional device. `main.rs` fills it from the command
//! line; [`VmConfig::validate`] checks the limits the builder relies on (once, in
//! `VmBuilder::new`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The most vCPUs a VM gets (one xAPIC id each).
pub const MAX_VCPUS: u8 = 64;

/// The most guest RAM (above the hole below 4 GiB, it continues from 4 GiB).
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("memory {0} MiB is outside 2..={MAX_MEMORY_MIB}")]
    Memory(u64),
    #[error("{0} vCPUs is outside 1..={MAX_VCPUS}")]
    Vcpus(u8),
    #[error("tap descriptor {0} is not an open descriptor")]
    TapFd(RawFd),
}

/// The whole VM.
#[derive(Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// Where the serial console is appended; stdout when absent.
    pub console: Option<PathBuf>,
    pub vsock: Option<VsockConfig>,
    pub fs: Option<FsConfig>,
    pub net: Option<NetConfig>,
    pub disk: Option<DiskConfig>,
    /// The control socket; none when absent.
    pub api_sock: Option<PathBuf>,
    /// Whether every thread runs under its seccomp filter.
    pub seccomp: bool,
}

/// virtio-vsock with a hybrid Unix socket on the host side.
#[derive(Debug)]
pub struct VsockConfig {
    pub cid: u64,
    pub uds: PathBuf,
}

/// virtio-fs served by a vhost-user backend.
#[derive(Debug)]
pub struct FsConfig {
    pub socket: PathBuf,
    pub tag: String,
}

/// virtio-net on a tap.
#[derive(Debug)]
pub struct NetConfig {
    pub tap: TapSource,
    pub mac: [u8; 6],
}

/// Where the tap comes from.
#[derive(Debug)]
pub enum TapSource {
    /// Opened (created if missing) by name; `%d` lets the kernel number it.
    Name(String),
    /// Opened by the parent and inherited.
    Fd(OwnedFd),
}

impl TapSource {
    /// Takes ownership of an inherited descriptor, once it is known to be open.
    pub fn inherited(fd: RawFd) -> Result<Self, ConfigError> {
        // SAFETY: F_GETFD only reads the descriptor's flags; it fails on a number that is
        // not an open descriptor, which is what this checks before taking ownership.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(ConfigError::TapFd(fd));
        }
        // SAFETY: the descriptor is open (checked above) and was handed to this process
        // for the VM's tap alone; nothing else here owns or closes it.
        Ok(Self::Fd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// virtio-blk on a file.
#[derive(Debug)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

impl VmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        Ok(())
    }
}

/// A locally administered unicast MAC unique per running VM (CIDs are): 02:76:73 ("vs"),
/// then the CID's low 24 bits.
pub fn default_mac(cid: u64) -> [u8; 6] {
    let c = cid.to_be_bytes();
    [0x02, 0x76, 0x73, c[5], c[6], c[7]]
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text:?} is not a MAC address: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text:?} is not a MAC address: it needs 6 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(memory_mib: u64, vcpus: u8) -> VmConfig {
        VmConfig {
            kernel: "vmlinux".into(),
            initrd: None,
            cmdline: String::new(),
            memory_mib,
            vcpus,
            console: None,
            vsock: None,
            fs: None,
            net: None,
            disk: None,
            api_sock: None,
            seccomp: true,
        }
    }

    #[test]
    fn limits_are_checked() {
        assert!(config(256, 1).validate().is_ok());
        assert!(matches!(
            config(1, 1).validate(),
            Err(ConfigError::Memory(1))
        ));
        assert!(matches!(
            config(256, 0).validate(),
            Err(ConfigError::Vcpus(0))
        ));
        assert!(matches!(
            config(256, 65).validate(),
            Err(ConfigError::Vcpus(65))
        ));
    }

    #[test]
    fn macs_parse_and_default_from_the_cid() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Ok([2, 0, 0, 0, 0, 10]));
        assert!(parse_mac("02:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
        assert_eq!(
            default_mac(0x01_02_03_04),
            [0x02, 0x76, 0x73, 0x02, 0x03, 0x04]
        );
    }

    #[test]
    fn a_closed_descriptor_is_no_tap() {
        assert!(matches!(
            TapSource::inherited(-1),
            Err(ConfigError::TapFd(-1))
        ));
        assert!(matches!(
            TapSource::inherited(999_999),
            Err(ConfigError::TapFd(_))
        ));
    }
}
