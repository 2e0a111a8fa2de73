//! Where the agent keeps its own files: bundles, console sockets, libcontainer's state, the
//! pause process's root and memory-backed volumes. In a guest that is `/run/vessel`; an
//! agent serving a native pod on the host (`init::host`) keeps them in the pod's runtime dir
//! instead, a short dir named by [`ROOT_ENV`] (socket paths must fit in 108 bytes), with the
//! pod's shared dir named by [`SHARED_ENV`]; the helpers it re-executes (libcontainer)
//! inherit both.

use std::path::{Path, PathBuf};

/// Environment variable naming the agent's root; unset: [`GUEST_ROOT`].
pub const ROOT_ENV: &str = "VESSEL_AGENT_ROOT";

/// Environment variable naming the pod's shared dir on the host (set with [`ROOT_ENV`]).
pub const SHARED_ENV: &str = "VESSEL_AGENT_SHARED";

/// The root inside a pod VM.
pub const GUEST_ROOT: &str = "/run/vessel";

/// The agent's root dir.
pub fn root() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(GUEST_ROOT))
}

/// Whether this agent serves a native pod on the host (its root was set), not a pod VM.
pub fn on_host() -> bool {
    std::env::var_os(ROOT_ENV).is_some_and(|v| !v.is_empty())
}

/// A path of the guest contract (`/run/vessel/shared/…`, `/run/vessel/ephemeral/…`) as this
/// agent sees it: unchanged in a guest, moved below [`root`] on the host. The shim builds one
/// spec for both; this is where a native pod's differs.
pub fn relocate(path: &Path) -> PathBuf {
    if !on_host() {
        return path.to_path_buf();
    }
    if let Ok(rest) = path.strip_prefix(vessel_protocols::guest::GUEST_SHARED_DIR) {
        // `init::host` always sets the shared dir along with the root.
        let shared =
            std::env::var_os(SHARED_ENV).map_or_else(|| root().join("shared"), PathBuf::from);
        return shared.join(rest);
    }
    match path.strip_prefix(GUEST_ROOT) {
        Ok(rest) => root().join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// Container bundles (`<id>/config.json`).
pub fn bundles() -> PathBuf {
    root().join("bundles")
}

/// Console sockets of terminals being set up.
pub fn consoles() -> PathBuf {
    root().join("consoles")
}

/// libcontainer's state root.
pub fn libcontainer() -> PathBuf {
    root().join("libcontainer")
}

/// The empty dir the pod's pause process makes its root.
pub fn pause() -> PathBuf {
    root().join("pause")
}

/// Where memory-backed pod volumes (tmpfs) are mounted, one dir each.
pub fn ephemeral() -> PathBuf {
    root().join("ephemeral")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_root_is_the_default() {
        if std::env::var_os(ROOT_ENV).is_none() {
            assert_eq!(bundles(), PathBuf::from("/run/vessel/bundles"));
            assert_eq!(ephemeral(), PathBuf::from("/run/vessel/ephemeral"));
        }
    }
}
