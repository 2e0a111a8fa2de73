//! virtiofsd, the vhost-user-fs backend every pod VM's shared dir is served by, whichever
//! VMM runs the guest.

use std::path::Path;

use super::{ChildProcess, HypervisorError, VmConfig};

/// The helper's name in logs and VM records.
pub const VIRTIOFSD: &str = "virtiofsd";

/// The vhost-user socket virtiofsd listens on, in the pod's runtime dir.
pub fn socket(config: &VmConfig) -> std::path::PathBuf {
    config.run_dir.join("fs.sock")
}

/// Spawns virtiofsd (`binary`) serving `config`'s shared dir on [`socket`], its output in
/// `log`; the caller waits for the socket.
pub fn spawn(
    binary: &Path,
    config: &VmConfig,
    log: &Path,
) -> Result<ChildProcess, HypervisorError> {
    ChildProcess::spawn(
        VIRTIOFSD,
        binary,
        &[
            "--socket-path".into(),
            socket(config).display().to_string(),
            "--shared-dir".into(),
            config.shared_dir.display().to_string(),
            "--cache".into(),
            "auto".into(),
            "--announce-submounts".into(),
        ],
        log,
    )
}
