//! Running the vCPUs: one thread each, under the vCPU seccomp filter; a kick signal that
//! interrupts their KVM_RUN for the control socket; counts of their exits by kind; and how
//! the VM ended, which the first vCPU to stop reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::SIGRTMIN;

use crate::api::VmControl;
use crate::seccomp::{self, Role};
use crate::vstate::vcpu::{Exit, Vcpu, VcpuError};

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("install the vCPU kick signal handler: {0}")]
    Signal(std::io::Error),
    #[error("start vCPU thread {id}: {source}")]
    Spawn { id: usize, source: std::io::Error },
}

/// How the VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest powered off (ACPI S5, or KVM's shutdown system event).
    PowerOff,
    /// The guest reset: a triple fault, the i8042 reset line, or KVM's reset system event
    /// (what a guest panic with `reboot=t`/`reboot=k` does).
    Reset,
    /// The guest kernel panicked (it said so through the pvpanic port).
    Panic,
    /// The control socket's `shutdown`.
    Shutdown,
}

/// Does nothing: the signal only has to interrupt a vCPU's KVM_RUN.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick handler. SA_RESTART: another system call a vCPU may be in (a
/// vhost-user message during device activation) carries on; KVM_RUN itself is never
/// restarted and returns EINTR.
pub fn install_kick_handler() -> Result<(), RunnerError> {
    // SAFETY: an all-zero `sigaction` is valid: no handler, an empty mask, no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = kick_handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid sigset_t inside `action`, exclusively borrowed.
    unsafe { libc::sigfillset(&mut action.sa_mask) };
    // SAFETY: `action` is initialised; its handler does nothing (async-signal-safe), and
    // only SIGRTMIN, the kick, changes disposition.
    if unsafe { libc::sigaction(SIGRTMIN(), &action, std::ptr::null_mut()) } < 0 {
        return Err(RunnerError::Signal(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The threads running vCPUs, which a control command kicks out of KVM_RUN.
#[derive(Clone, Default)]
pub struct VcpuThreads(Arc<Mutex<Vec<libc::pthread_t>>>);

impl VcpuThreads {
    /// Called on each vCPU thread before it first enters the guest.
    fn register_current(&self) {
        // SAFETY: pthread_self has no preconditions; it names the calling thread.
        let thread = unsafe { libc::pthread_self() };
        self.0.lock().push(thread);
    }

    /// Called on each vCPU thread before it ends: no kick may name it afterwards.
    fn unregister_current(&self) {
        // SAFETY: pthread_self has no preconditions; it names the calling thread.
        let thread = unsafe { libc::pthread_self() };
        self.0.lock().retain(|&t| t != thread);
    }

    /// Interrupts every running vCPU's KVM_RUN.
    pub fn kick(&self) {
        for &thread in self.0.lock().iter() {
            // SAFETY: a thread unregisters (under this lock) before it ends, so the id names
            // a live thread; the signal's handler does nothing but interrupt KVM_RUN.
            unsafe { libc::pthread_kill(thread, SIGRTMIN()) };
        }
    }
}

/// How many exits of each kind the vCPUs took, for the control socket's `metrics`.
#[derive(Default)]
pub struct ExitCounts {
    io: AtomicU64,
    mmio: AtomicU64,
    interrupted: AtomicU64,
}

impl ExitCounts {
    fn count(&self, exit: Exit) {
        let counter = match exit {
            Exit::Io => &self.io,
            Exit::Mmio => &self.mmio,
            Exit::Interrupted => &self.interrupted,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as a JSON object, for the control socket's `metrics`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "io": self.io.load(Ordering::Relaxed),
            "mmio": self.mmio.load(Ordering::Relaxed),
            "interrupted": self.interrupted.load(Ordering::Relaxed),
        })
    }
}

/// The device lines that end the VM: a power-off, reset or panic written to a port.
pub struct Stops {
    pub power_off: EventFd,
    pub reset: EventFd,
    pub panic: EventFd,
}

/// What every vCPU thread shares.
struct Shared {
    stops: Stops,
    exits: Arc<ExitCounts>,
    control: Option<Arc<VmControl>>,
    threads: VcpuThreads,
}

/// Runs each of `vcpus` on its own thread; the receiver gets how the VM ended (or the
/// error that ended a vCPU), first from whichever vCPU stops first.
pub fn spawn(
    vcpus: Vec<Vcpu>,
    stops: Stops,
    exits: Arc<ExitCounts>,
    control: Option<Arc<VmControl>>,
    threads: VcpuThreads,
) -> Result<mpsc::Receiver<Result<VmEnd, VcpuError>>, RunnerError> {
    let shared = Arc::new(Shared {
        stops,
        exits,
        control,
        threads,
    });
    let (done, ended) = mpsc::channel();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let (shared, done) = (shared.clone(), done.clone());
        // vCPU threads end with the process; they are not joined.
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                shared.threads.register_current();
                seccomp::apply_or_exit(Role::Vcpu);
                let end = run(vcpu, &shared);
                shared.threads.unregister_current();
                let _ = done.send(end);
            })
            .map_err(|source| RunnerError::Spawn { id, source })?;
    }
    Ok(ended)
}

/// Runs one vCPU on the calling thread until the VM ends.
fn run(mut vcpu: Vcpu, shared: &Shared) -> Result<VmEnd, VcpuError> {
    loop {
        let exit = vcpu.run_once()?;
        shared.exits.count(exit);
        if let Some(control) = &shared.control {
            if !control.checkpoint() {
                return Ok(VmEnd::Shutdown);
            }
        }
        match exit {
            Exit::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN) => {
                return Ok(VmEnd::PowerOff)
            }
            Exit::SystemEvent(_) | Exit::Shutdown => return Ok(VmEnd::Reset),
            // A port write may have been the ACPI power-off, the i8042 reset command or
            // a panic report (which comes before the guest's own reset).
            Exit::Io if shared.stops.panic.read().is_ok() => return Ok(VmEnd::Panic),
            Exit::Io if shared.stops.power_off.read().is_ok() => return Ok(VmEnd::PowerOff),
            Exit::Io if shared.stops.reset.read().is_ok() => return Ok(VmEnd::Reset),
            // Only without an in-kernel irqchip does a halt reach the VMM.
            Exit::Halt | Exit::Io | Exit::Mmio | Exit::Interrupted => continue,
        }
    }
}
