//! A built VM and its run: the device event loop, the control socket and the vCPU threads
//! start, the main thread takes its own seccomp filter, and [`Machine::run`] returns how the
//! guest ended (the first vCPU to stop decides; the process ends the others).

use std::path::PathBuf;
use std::sync::Arc;

use crate::api::{self, MetricsSource, VmControl};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::memory::GuestMemory;
use crate::runner::{self, ExitCounts, RunnerError, Stops, VcpuThreads, VmEnd};
use crate::seccomp::{self, Role, SeccompError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error("control socket {path}: {source}")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("every vCPU thread ended without a status")]
    NoStatus,
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// Everything a VM needs to run, as [`crate::builder::VmBuilder`] left it.
pub struct Machine {
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) stops: Stops,
    pub(crate) events: EventLoop,
    pub(crate) metrics: Vec<(String, MetricsSource)>,
    pub(crate) api_sock: Option<PathBuf>,
    pub(crate) memory_mib: u64,
    /// Kept for the VM's lifetime: the VM's fd and the guest memory mapping.
    pub(crate) _vm: Vm,
    pub(crate) _memory: GuestMemory,
}

impl Machine {
    /// Runs the guest until it stops.
    pub fn run(self) -> Result<VmEnd, MachineError> {
        // Device threads end with the process; the loop is not joined.
        let (_event_thread, _stop_events) = self.events.spawn()?;
        runner::install_kick_handler()?;
        let threads = VcpuThreads::default();
        let exits = Arc::new(ExitCounts::default());
        let control = match &self.api_sock {
            Some(path) => Some(serve_control(
                path,
                Control {
                    vcpus: self.vcpus.len(),
                    memory_mib: self.memory_mib,
                    threads: &threads,
                    exits: &exits,
                },
                self.metrics,
            )?),
            None => None,
        };
        let ended = runner::spawn(self.vcpus, self.stops, exits, control, threads)?;
        seccomp::apply(Role::Main)?;
        Ok(ended.recv().map_err(|_| MachineError::NoStatus)??)
    }
}

/// What the control socket reports on and acts through.
struct Control<'a> {
    vcpus: usize,
    memory_mib: u64,
    threads: &'a VcpuThreads,
    exits: &'a Arc<ExitCounts>,
}

/// Serves the control socket at `path` on its own thread.
fn serve_control(
    path: &std::path::Path,
    vm: Control<'_>,
    metrics: Vec<(String, MetricsSource)>,
) -> Result<Arc<VmControl>, MachineError> {
    let kick = vm.threads.clone();
    let control = Arc::new(VmControl::new(
        vm.vcpus,
        vm.memory_mib,
        Box::new(move || kick.kick()),
    ));
    let counts = vm.exits.clone();
    control.add_metrics("vcpu_exits", Box::new(move || counts.to_json()));
    for (name, source) in metrics {
        control.add_metrics(&name, source);
    }
    api::serve(path, control.clone()).map_err(|source| MachineError::Control {
        path: path.to_owned(),
        source,
    })?;
    Ok(control)
}
