//! Seccomp filters, one per kind of thread: each thread installs its own at start (filters
//! are per thread and inherited by threads it creates), allowing only the system calls that
//! kind of thread makes. A vCPU thread, the one that runs guest code, may not open files or
//! sockets or start threads, and its one ioctl is KVM_RUN. The binary turns filtering on with [`enable`]; the library's own tests
//! run unfiltered. A call outside the list raises SIGSYS; the handler names the call and
//! ends the process (status 1), so a missing entry is found at once, not guessed at.
//!
//! The filters are compiled to BPF by seccompiler; the lists are ours, made by reading what
//! each thread does and checked with `strace -f` over the VMM's tests.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("build the {role:?} seccomp filter: {source}")]
    Build {
        role: Role,
        source: seccompiler::BackendError,
    },
    #[error("compile the {role:?} seccomp filter: {source}")]
    Compile {
        role: Role,
        source: seccompiler::BackendError,
    },
    #[error("install the {role:?} seccomp filter: {source}")]
    Install {
        role: Role,
        source: seccompiler::Error,
    },
    #[error("SIGSYS handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
}

/// The kinds of thread in the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The main thread once the VM runs: it waits for a vCPU to report the VM's end.
    Main,
    /// A vCPU: KVM_RUN, and the port/MMIO device emulation its exits run.
    Vcpu,
    /// The device event loop: queue notifications, block I/O, entropy, the tap, the vsock
    /// device's sockets, backend calls.
    EventLoop,
    /// The control socket.
    Api,
}

/// What every Rust thread here needs: memory, locks, signals, time, logging, ending.
const BASE: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Eventfds (ioeventfd/irqfd, the stop and reset lines) and the vhost-user messages of
/// device activation, which the vCPU's MMIO write of DRIVER_OK runs.
const VCPU: &[i64] = &[libc::SYS_read, libc::SYS_sendmsg, libc::SYS_recvmsg];

/// Device I/O: queue notifications, block reads and writes, entropy, the tap, and the
/// vsock device's host sockets (accepting hybrid clients, connecting guest connections to
/// `<uds>_<port>`, its nested epoll set).
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_shutdown,
    // The hybrid socket's file is removed when the vsock device goes.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

const API: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_poll,
];

vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);

/// Rules allowing a call only when its argument `arg` is one of `values`.
fn arg_in(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|&value| {
            SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                value,
            )?])
        })
        .collect()
}

/// The system calls `role` may make, each with its argument rules (none: any arguments).
fn rules(role: Role) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let lists: &[&[i64]] = match role {
        Role::Main => &[BASE],
        Role::Vcpu => &[BASE, VCPU],
        Role::EventLoop => &[BASE, EVENT_LOOP],
        Role::Api => &[BASE, API],
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = lists
        .iter()
        .flat_map(|list| list.iter())
        .map(|&call| (call, Vec::new()))
        .collect();
    // ioctls: a vCPU's one is KVM_RUN.
    match role {
        Role::Vcpu => {
            rules.insert(libc::SYS_ioctl, arg_in(1, &[KVM_RUN()])?);
        }
        Role::EventLoop => {
            // The vsock device makes its sockets non-blocking.
            rules.insert(libc::SYS_ioctl, arg_in(1, &[libc::FIONBIO])?);
        }
        _ => {}
    }
    // fcntl: the standard library checks a descriptor is open before closing it
    // (F_GETFD); cloning one (an eventfd handed to a device, a socket) is F_DUPFD_CLOEXEC.
    let mut fcntl = vec![libc::F_GETFD as u64];
    if role != Role::Main && role != Role::EventLoop {
        fcntl.push(libc::F_DUPFD_CLOEXEC as u64);
    }
    rules.insert(libc::SYS_fcntl, arg_in(1, &fcntl)?);
    Ok(rules)
}

/// The BPF filter of `role`; calls outside it get `mismatch`.
pub fn filter(role: Role, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let rules = rules(role).map_err(|source| SeccompError::Build { role, source })?;
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|source| SeccompError::Build { role, source })?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|source| SeccompError::Build { role, source })?;
    BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile { role, source })
}

/// The compiled filters, one per role (in [`Role::index`] order), once the binary enabled
/// filtering.
static FILTERS: OnceLock<Vec<BpfProgram>> = OnceLock::new();

const ROLES: [Role; 4] = [Role::Main, Role::Vcpu, Role::EventLoop, Role::Api];

impl Role {
    /// Its place in [`ROLES`].
    fn index(self) -> usize {
        match self {
            Role::Main => 0,
            Role::Vcpu => 1,
            Role::EventLoop => 2,
            Role::Api => 3,
        }
    }
}

/// Compiles every role's filter (once, so no thread compiles its own on its way to work),
/// makes every thread that starts from now on (and calls [`apply`]) install its filter, and
/// installs the SIGSYS handler that reports a blocked call.
pub fn enable() -> Result<(), SeccompError> {
    let filters = ROLES
        .iter()
        .map(|&role| filter(role, SeccompAction::Trap))
        .collect::<Result<Vec<_>, _>>()?;
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(SeccompError::Handler)?;
    let _ = FILTERS.set(filters);
    Ok(())
}

/// Installs `role`'s filter on the calling thread, if the binary enabled filtering.
pub fn apply(role: Role) -> Result<(), SeccompError> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    let bpf = &filters[role.index()];
    seccompiler::apply_filter(bpf).map_err(|source| SeccompError::Install { role, source })
}

/// Installs `role`'s filter or ends the process: a thread must not run unfiltered when
/// filtering was asked for.
pub fn apply_or_exit(role: Role) {
    if let Err(e) = apply(role) {
        tracing::error!(error = %e, "seccomp");
        eprintln!("vessel-vmm: {e}");
        std::process::exit(1);
    }
}

/// SIGSYS from a seccomp trap: writes the blocked system call's number and ends the
/// process with status 1. Only async-signal-safe calls (write, _exit) are made.
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // The kernel's siginfo for SIGSYS holds, after signo, errno and code (16 bytes with
    // padding), the calling address (8 bytes) and then the system call number (int).
    const SYSCALL_OFFSET: usize = 24;
    // SAFETY: the kernel passes a valid siginfo_t (128 bytes) to an SA_SIGINFO handler, and
    // for SIGSYS the int at this offset is `si_syscall`; it is read unaligned-safely.
    let call = unsafe {
        std::ptr::read_unaligned(info.cast::<u8>().add(SYSCALL_OFFSET).cast::<libc::c_int>())
    };
    let mut msg = *b"vessel-vmm: seccomp blocked system call 0000000000\n";
    let digits = msg.len() - 11;
    let mut n = call.unsigned_abs();
    let mut first = digits + 9;
    for i in (0..10).rev() {
        msg[digits + i] = b'0' + (n % 10) as u8;
        if n % 10 != 0 || n >= 10 {
            first = digits + i;
        }
        n /= 10;
    }
    // Drop the leading zeros: shift the number left over them.
    msg.copy_within(first.., digits);
    let len = msg.len() - (first - digits);
    // SAFETY: write and _exit are async-signal-safe; `msg` is a live stack buffer of the
    // given length.
    unsafe {
        libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), len);
        libc::_exit(1);
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    /// Runs `body` on a new thread under `role`'s filter, with blocked calls failing with
    /// EPERM instead of trapping.
    fn under<T: Send + 'static>(role: Role, body: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            let bpf = filter(role, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            seccompiler::apply_filter(&bpf).unwrap();
            body()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn every_role_compiles() {
        for (i, role) in ROLES.into_iter().enumerate() {
            assert_eq!(role.index(), i);
            assert!(!filter(role, SeccompAction::Trap).unwrap().is_empty());
        }
    }

    #[test]
    fn a_vcpu_thread_cannot_open_files_sockets_or_threads() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (opened, socket, spawned, signalled) = under(Role::Vcpu, move || {
            let opened = File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            let socket = std::os::unix::net::UnixStream::connect("/nonexistent")
                .map_err(|e| e.raw_os_error());
            let spawned = std::thread::Builder::new().spawn(|| ()).is_ok();
            (opened.err(), socket.err(), spawned, event.write(1).is_ok())
        });
        assert_eq!(opened, Some(Some(libc::EPERM)));
        assert_eq!(socket, Some(Some(libc::EPERM)));
        assert!(!spawned);
        assert!(signalled, "eventfd writes (irqfd, ioeventfd) stay allowed");
    }

    #[test]
    fn a_vcpu_thread_may_only_run_kvm_run() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&event);
        let (tiocgwinsz, kvm_run) = under(Role::Vcpu, move || {
            let mut size = [0u16; 4];
            // SAFETY: TIOCGWINSZ writes a winsize (8 bytes) into `size`; on an eventfd it
            // fails, which is all the test needs, and the filter should stop it first.
            let tty = unsafe { libc::ioctl(raw, libc::TIOCGWINSZ, size.as_mut_ptr()) };
            let tty_err = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: KVM_RUN takes no argument; on an eventfd the kernel refuses it.
            let run = unsafe { libc::ioctl(raw, KVM_RUN() as _, 0) };
            let run_err = std::io::Error::last_os_error().raw_os_error();
            ((tty, tty_err), (run, run_err))
        });
        assert_eq!(tiocgwinsz, (-1, Some(libc::EPERM)));
        assert_eq!(kvm_run.0, -1);
        assert_ne!(kvm_run.1, Some(libc::EPERM), "KVM_RUN passes the filter");
    }

    #[test]
    fn the_event_loop_cannot_start_threads_open_files_or_listen() {
        let (spawned, opened, listener) = under(Role::EventLoop, || {
            let spawned = std::thread::Builder::new().spawn(|| ()).is_ok();
            let opened = File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            let listener = std::os::unix::net::UnixListener::bind("/tmp/vessel-seccomp-test")
                .map_err(|e| e.raw_os_error());
            (spawned, opened.err(), listener.err())
        });
        assert!(!spawned);
        assert_eq!(opened, Some(Some(libc::EPERM)));
        assert_eq!(listener, Some(Some(libc::EPERM)), "bind is not allowed");
    }
}
