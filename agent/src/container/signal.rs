//! Signals to container processes: kill(2) with a raw signal number, refusing the pids
//! that would reach the agent's own group or every process.

use super::error::{ContainerError, Result};

/// kill(2) with a raw signal number (real-time signals included).
pub fn send_signal(pid: i32, signal: i32) -> Result<()> {
    if pid <= 0 {
        // kill(0) or kill(-1) would hit the agent's own group or every process.
        return Err(ContainerError::UnsafePid(pid));
    }
    if !(1..=libc::SIGRTMAX()).contains(&signal) {
        return Err(ContainerError::InvalidSignal(signal.into()));
    }
    // SAFETY: kill(2) takes two integers and accesses no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        // Gone between our check and the signal: as good as delivered.
        return Ok(());
    }
    Err(ContainerError::Kill {
        pid,
        signal,
        source: err,
    })
}
