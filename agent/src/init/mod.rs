//! PID 1 duties: the root and API filesystems, the console, kernel modules, the command
//! line, child reaping and power-off. Outside PID 1 (dev runs on a host) only logging is set
//! up and the agent becomes a child subreaper, so container processes are still its own.

pub mod cmdline;
pub mod console;
pub mod host;
pub mod modprobe;
pub mod modules;
pub mod mounts;
pub mod power;
pub mod reaper;

use std::path::Path;

use cmdline::Cmdline;

/// Environment variable with the log filter for dev runs (and the libcontainer helper).
pub const LOG_ENV: &str = "VESSEL_LOG";

/// What boot found out.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The agent runs as the guest's init.
    pub pid1: bool,
}

/// Does the init duties (as PID 1) and sets up logging. Returns only when the agent should
/// go on to serve; `vessel.floor` powers off here.
pub fn boot() -> Boot {
    let pid1 = std::process::id() == 1;
    if !pid1 {
        let log_filter =
            std::env::var(LOG_ENV).unwrap_or_else(|_| console::DEFAULT_LOG_FILTER.into());
        console::init_logging(&log_filter);
        become_subreaper();
        return Boot { pid1 };
    }

    let pivot = mounts::make_root_pivotable();
    let proc_mounted = mounts::mount_proc();
    let cmdline = Cmdline::read();
    if cmdline.floor {
        eprintln!("vessel-agent: floor");
        power::power_off(true);
    }
    let mut console_err = None;
    let failed_mounts = mounts::mount_early(|| console_err = console::reopen_stdio().err());
    let log_filter = cmdline
        .log
        .clone()
        .unwrap_or_else(|| console::DEFAULT_LOG_FILTER.into());
    console::init_logging(&log_filter);
    std::env::set_var(LOG_ENV, &log_filter);

    if let Err(e) = pivot {
        tracing::error!(error = %e, "cannot make the root pivotable; containers may fail to start");
    }
    if let Err(e) = proc_mounted {
        tracing::error!(error = %e, "mount /proc failed");
    }
    if let Some(e) = console_err {
        tracing::warn!(error = %e, "cannot reopen stdio on {}", console::CONSOLE);
    }
    for (target, e) in failed_mounts {
        tracing::error!(target, error = %e, "early mount failed");
    }
    let enabled = mounts::enable_controllers(Path::new(mounts::CGROUP_ROOT));
    tracing::debug!(?enabled, "cgroup controllers delegated");
    let failed = modules::load_listed();
    modprobe::create_static_nodes();
    if failed > 0 {
        tracing::warn!(failed, "some kernel modules failed to load");
    }
    Boot { pid1 }
}

fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only and touches no
    // memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot become child subreaper; container exits may be missed"
        );
    }
}
