//! The host side of virtio-net: a tap interface opened with a virtio-net header in front of
//! every frame (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, header size [`VNET_HDR_LEN`], no
//! offloads), non-blocking. One `read` returns one frame with its header, one `write` sends
//! one. [`Tap::from_fd`] takes a tap fd opened by someone else (the shim), or a packet socket
//! with the same framing (SOCK_SEQPACKET or SOCK_DGRAM: the tests' stand-in for a tap).
//! The fd is closed when the [`Tap`] is dropped, which removes a non-persistent interface.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use super::VNET_HDR_LEN;

use self::ioctls::{TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ};

/// The tun ioctl numbers (`linux/if_tun.h`).
mod ioctls {
    use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

    const TUNTAP: u32 = 0x54;
    ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);
    ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, libc::c_uint);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, libc::c_int);
}

/// The flags every tap here is opened with.
const TAP_FLAGS: libc::c_short = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
/// The longest interface name, without its terminating NUL.
const NAME_MAX: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?}: at most 15 bytes, no NUL, '/' or whitespace")]
    Name(String),
    #[error("tap {name}: open /dev/net/tun: {source}")]
    OpenTun {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name}: TUNSETIFF: {source}")]
    SetIff {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name}: TUNGETIFF: {source}")]
    GetIff {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name}: opened without IFF_TAP, IFF_NO_PI and IFF_VNET_HDR (flags {flags:#x})")]
    Flags { name: String, flags: u16 },
    #[error("tap {name}: set the vnet header size: {source}")]
    VnetHdrSize {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name}: set offloads: {source}")]
    Offload {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name}: set O_NONBLOCK: {source}")]
    NonBlocking { name: String, source: nix::Error },
    #[error("fd {0} is neither a tap nor a SOCK_SEQPACKET/SOCK_DGRAM socket")]
    NotATap(RawFd),
}

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: the name and the flags member of the
/// union; the rest of the union is padding here.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40, "sizeof(struct ifreq)");

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            flags,
            _union_rest: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn name(&self) -> String {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_MAX);
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }
}

/// A tap interface (or a packet socket framed like one), non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating it if needed) the tap interface `name`; a name with `%d` lets the
    /// kernel pick the number, and [`Tap::name`] tells which.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.len() > NAME_MAX
            || name
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            return Err(TapError::Name(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                source,
            })?;
        let name = set_iff(&file, name, TAP_FLAGS).map_err(|source| TapError::SetIff {
            name: name.to_owned(),
            source,
        })?;
        let tap = Self { file, name };
        tap.configure()?;
        tracing::debug!(tap = %tap.name, "tap opened");
        Ok(tap)
    }

    /// Takes an already-open fd: a tap, which must have been opened with IFF_TAP, IFF_NO_PI
    /// and IFF_VNET_HDR (its header size and offloads are set here), or a SOCK_SEQPACKET or
    /// SOCK_DGRAM socket whose every message is one frame with its header, used as is.
    /// Either way the fd is made non-blocking.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let file = File::from(fd);
        let mut req = IfReq::new("", 0);
        // On a fd that is not a tun device the kernel returns an error and writes nothing.
        // SAFETY: `file` is an open fd we own; TUNGETIFF writes at most one `struct ifreq`
        // (40 bytes, the size of `IfReq`) into `req`, exclusively borrowed for the call.
        let ret = unsafe { ioctl_with_mut_ref(&file, TUNGETIFF(), &mut req) };
        let tap = if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOTTY) && err.raw_os_error() != Some(libc::EINVAL)
            {
                return Err(TapError::GetIff {
                    name: format!("fd {raw}"),
                    source: err,
                });
            }
            match getsockopt(&file, sockopt::SockType) {
                Ok(SockType::SeqPacket | SockType::Datagram) => Self {
                    file,
                    name: format!("fd {raw}"),
                },
                _ => return Err(TapError::NotATap(raw)),
            }
        } else {
            let name = req.name();
            if req.flags & TAP_FLAGS != TAP_FLAGS {
                return Err(TapError::Flags {
                    name,
                    flags: req.flags as u16,
                });
            }
            let tap = Self { file, name };
            tap.configure()?;
            tap
        };
        set_nonblocking(&tap.file).map_err(|source| TapError::NonBlocking {
            name: tap.name.clone(),
            source,
        })?;
        tracing::debug!(tap = %tap.name, "tap taken from fd");
        Ok(tap)
    }

    /// Gives up the descriptor (to pass it to a VMM process); the interface lives as long as
    /// some copy of it is open.
    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }

    /// The interface's name, or `fd N` for a packet socket.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame with its virtio-net header into `buf`; a frame longer than `buf` is
    /// cut short. `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame that begins with its virtio-net header.
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }

    /// The virtio-net header size and the offloads (none) of a real tap.
    fn configure(&self) -> Result<(), TapError> {
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: `self.file` is an open tun fd; TUNSETVNETHDRSZ reads one c_int through
        // the pointer, which points at `size`, alive for the call.
        if unsafe { ioctl_with_ref(&self.file, TUNSETVNETHDRSZ(), &size) } < 0 {
            return Err(TapError::VnetHdrSize {
                name: self.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `self.file` is an open tun fd; TUNSETOFFLOAD takes its argument by value
        // and touches no memory of ours.
        if unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), 0) } < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Attaches `file` (an open /dev/net/tun) to the interface `name` with `flags`; returns
/// the interface's name as the kernel chose it.
fn set_iff(file: &File, name: &str, flags: libc::c_short) -> std::io::Result<String> {
    let mut req = IfReq::new(name, flags);
    // `name` fits in the request with its NUL (the callers check).
    // SAFETY: `file` is an open /dev/net/tun fd; TUNSETIFF reads and writes back one
    // `struct ifreq` (40 bytes, the size of `IfReq`) in `req`, exclusively borrowed.
    if unsafe { ioctl_with_mut_ref(file, TUNSETIFF(), &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(req.name())
}

fn set_nonblocking(file: &File) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Opens /dev/net/tun attached to `name` with `flags` and nothing else set (for tests of
/// [`Tap::from_fd`]).
#[cfg(test)]
pub(crate) fn open_raw_tap(name: &str, flags: libc::c_short) -> std::io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    set_iff(&file, name, flags)?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use nix::sys::socket::{socketpair, AddressFamily, SockFlag};

    use super::*;

    fn pair(kind: SockType) -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC).unwrap()
    }

    #[test]
    fn a_packet_socket_is_taken_as_is_and_made_non_blocking() {
        let (ours, theirs) = pair(SockType::SeqPacket);
        let raw = ours.as_raw_fd();
        let tap = Tap::from_fd(ours).unwrap();
        assert_eq!(tap.name(), format!("fd {raw}"));
        assert_eq!(tap.as_raw_fd(), raw);
        let mut buf = [0u8; 64];
        assert_eq!(
            tap.read_frame(&mut buf).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        let peer = File::from(theirs);
        (&peer).write_all(b"one frame").unwrap();
        (&peer).write_all(b"two").unwrap();
        assert_eq!(tap.read_frame(&mut buf).unwrap(), 9);
        assert_eq!(tap.read_frame(&mut buf).unwrap(), 3);
        assert_eq!(tap.write_frame(b"back").unwrap(), 4);
        assert_eq!((&peer).read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"back");
        // A datagram socket works too.
        let (ours, _theirs) = pair(SockType::Datagram);
        assert!(Tap::from_fd(ours).is_ok());
    }

    #[test]
    fn other_fds_and_bad_names_are_refused() {
        let (stream, _peer) = pair(SockType::Stream);
        let raw = stream.as_raw_fd();
        let err = Tap::from_fd(stream).unwrap_err();
        assert!(matches!(err, TapError::NotATap(fd) if fd == raw), "{err}");
        let file = File::open("/dev/null").unwrap();
        assert!(matches!(
            Tap::from_fd(file.into()),
            Err(TapError::NotATap(_))
        ));
        for name in ["a-name-too-long-", "a/b", "a b", "nul\0"] {
            let err = Tap::open(name).unwrap_err();
            assert!(matches!(err, TapError::Name(_)), "{name:?}: {err}");
            assert!(err.to_string().contains(&format!("{name:?}")));
        }
    }
}
