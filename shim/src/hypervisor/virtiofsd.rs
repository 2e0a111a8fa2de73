//! virtiofsd, the vhost-user-fs backend every pod VM's shared dir is served by, whichever
//! VMM runs the guest.

use std::path::Path;

use super::{HypervisorError, VmConfig, VmProcesses};

/// The helper's name in logs and VM records.
pub const VIRTIOFSD: &str = "virtiofsd";

/// The vhost-user socket virtiofsd listens on, in the pod's runtime dir.
pub fn socket(config: &VmConfig) -> std::path::PathBuf {
    config.run_dir.join("fs.sock")
}

/// virtiofsd's arguments: serve `config`'s shared dir on [`socket`].
pub fn args(config: &VmConfig) -> Vec<String> {
    vec![
        "--socket-path".into(),
        socket(config).display().to_string(),
        "--shared-dir".into(),
        config.shared_dir.display().to_string(),
        "--cache".into(),
        "auto".into(),
        "--announce-submounts".into(),
    ]
}

/// Starts virtiofsd (`binary`) among `processes` and waits for its socket.
pub async fn start(
    processes: &mut VmProcesses,
    binary: &Path,
    config: &VmConfig,
) -> Result<(), HypervisorError> {
    processes
        .spawn(VIRTIOFSD, binary, &args(config), Some(&socket(config)))
        .await
}
