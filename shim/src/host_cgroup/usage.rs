//! What a pod's host cgroup reports (its subtree's): CPU time, memory in use and its working set, the
//! number of processes, and the OOM killer's kills, from v1 or v2 files alike.

use std::path::Path;

use super::hierarchy::Hierarchy;
use super::HostCgroup;

/// The cgroup's figures; a figure no hierarchy offers is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupUsage {
    pub cpu_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Memory in use less inactive file pages (what kubelet evicts by).
    pub working_set_bytes: Option<u64>,
    pub processes: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

pub(super) fn read(cg: &HostCgroup) -> CgroupUsage {
    let mut usage = CgroupUsage::default();
    for h in &cg.hierarchies {
        let dir = cg.dir(h);
        if h.is_unified() {
            usage.cpu_ns = usage
                .cpu_ns
                .or_else(|| keyed(&dir.join("cpu.stat"), "usage_usec").map(|us| us * 1000));
            if usage.memory_bytes.is_none() {
                if let Some(current) = read_u64(&dir.join("memory.current")) {
                    let inactive = keyed(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
                    usage.memory_bytes = Some(current);
                    usage.working_set_bytes = Some(current.saturating_sub(inactive));
                }
            }
        } else if h.has("cpuacct") {
            usage.cpu_ns = read_u64(&dir.join("cpuacct.usage")).or(usage.cpu_ns);
        } else if h.has("memory") {
            if let Some(current) = read_u64(&dir.join("memory.usage_in_bytes")) {
                let inactive = keyed(&dir.join("memory.stat"), "total_inactive_file").unwrap_or(0);
                usage.memory_bytes = Some(current);
                usage.working_set_bytes = Some(current.saturating_sub(inactive));
            }
        }
        // The whole subtree (a native pod's processes sit in leaves below its cgroup), in the
        // hierarchy that holds the most (a v1 hierarchy may lack some).
        let processes = super::subtree(&dir)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|procs| procs.lines().count() as u64)
            .sum();
        usage.processes = usage.processes.max(processes);
    }
    usage
}

/// The OOM killer's kills of the cgroup's processes, where `h` counts them.
pub(super) fn oom_kills(h: &Hierarchy, dir: &Path) -> Option<u64> {
    if h.is_unified() {
        keyed(&dir.join("memory.events"), "oom_kill")
    } else if h.has("memory") {
        keyed(&dir.join("memory.oom_control"), "oom_kill")
    } else {
        None
    }
}
