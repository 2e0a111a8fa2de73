//! The container's seccomp filter for the processes exec'd into it. libcontainer 0.7 builds an
//! exec'd process's spec without the container's `linux.seccomp` (its tenant builder keeps only
//! namespaces, cgroup path, personality and time offsets), so `kubectl exec` would run
//! unfiltered; runc filters exec'd processes as it does the container's own. This executor,
//! which libcontainer runs in the new process just before it execs the command, installs the
//! filter first.

use std::path::Path;

use libcontainer::workload::{
    default::DefaultExecutor, Executor, ExecutorError, ExecutorValidationError,
};
use oci_spec::runtime::{LinuxSeccomp, Spec};

/// Runs the command like libcontainer's default executor, under `seccomp` when there is one.
#[derive(Clone)]
pub struct FilteredExec {
    seccomp: Option<LinuxSeccomp>,
}

impl FilteredExec {
    /// The filter of the container whose bundle is `bundle` (none when its spec has none or
    /// cannot be read: the tenant then fails or runs as libcontainer would have run it).
    pub fn for_bundle(bundle: &Path) -> Self {
        let seccomp = Spec::load(bundle.join("config.json"))
            .ok()
            .and_then(|s| s.linux().as_ref().and_then(|l| l.seccomp().clone()));
        FilteredExec { seccomp }
    }
}

impl Executor for FilteredExec {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(seccomp) = &self.seccomp {
            // seccomp(2) needs CAP_SYS_ADMIN or no_new_privs, and the process has dropped its
            // capabilities by now: without the capability it gets no_new_privs (an exec'd
            // process under a filter cannot gain privileges through set-uid files).
            let admin = caps::has_cap(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_ADMIN,
            )
            .unwrap_or(false);
            if !admin {
                nix::sys::prctl::set_no_new_privs()
                    .map_err(|e| ExecutorError::Other(format!("set no_new_privs: {e}")))?;
            }
            libcontainer::seccomp::initialize_seccomp(seccomp)
                .map_err(|e| ExecutorError::Other(format!("install the seccomp filter: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
