//! Container and pod statistics: CPU and memory from the guest's cgroups (through the agent),
//! the writable layer's usage from the container's overlay upper dir on the host.

use std::path::Path;
use std::sync::Arc;

use vessel_protocols::agent as api;

use super::{Container, ContainerRecord, ContainerState, Containers, RuntimeError};

/// One container's figures.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    pub record: ContainerRecord,
    /// None when the container does not run (no cgroup to read).
    pub guest: Option<api::ContainerStats>,
    pub writable_bytes: u64,
    pub writable_inodes: u64,
}

/// Bytes and inodes below `dir` (not following symlinks).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(md) = entry.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            if md.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += md.len();
            }
        }
    }
    (bytes, inodes)
}

/// Usage figures of containers.
pub struct Stats {
    containers: Arc<Containers>,
}

impl Stats {
    pub(super) fn new(containers: Arc<Containers>) -> Self {
        Self { containers }
    }

    /// One container's figures: the guest's cgroup stats while it runs, and its writable
    /// layer on the host.
    pub async fn container_usage(
        &self,
        container: &Arc<Container>,
    ) -> Result<ContainerUsage, RuntimeError> {
        let record = container.record();
        let guest = if record.state == ContainerState::Running {
            let agent = self.containers.agent(container)?;
            let mut req = api::StatsContainerRequest::new();
            req.container_id = record.id.clone();
            Some(agent.stats_container(req).await?)
        } else {
            None
        };
        let (writable_bytes, writable_inodes) = disk_usage(&record.scratch.join("upper"));
        Ok(ContainerUsage {
            record,
            guest,
            writable_bytes,
            writable_inodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_files_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("b"), [0u8; 20]).unwrap();
        assert_eq!(disk_usage(dir.path()), (120, 3));
        assert_eq!(disk_usage(&dir.path().join("missing")), (0, 0));
    }
}
