//! A container's cgroup v2 directory: statistics, resource updates, OOM kill counting and
//! signalling every member.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcgroups::v2::manager::Manager;
use oci_spec::runtime::LinuxResources;

use crate::error::{AgentError, Result};
use crate::init::mounts::CGROUP_ROOT;

/// Resource usage of one cgroup, in the units of the agent API.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_working_set_bytes: u64,
    pub memory_limit_bytes: u64,
    pub memory_rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids: u64,
}

/// A cgroup v2 directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Relative to the hierarchy root, e.g. `/vessel/c1`.
    rel: PathBuf,
    dir: PathBuf,
}

impl Cgroup {
    pub fn new(rel: &str) -> Self {
        let rel = PathBuf::from(rel);
        let dir = Path::new(CGROUP_ROOT).join(rel.strip_prefix("/").unwrap_or(&rel));
        Cgroup { rel, dir }
    }

    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(file)).ok()
    }

    /// Current statistics; files the kernel lacks count as zero.
    pub fn stats(&self) -> Stats {
        let cpu_stat = self.read("cpu.stat").unwrap_or_default();
        let memory_stat = self.read("memory.stat").unwrap_or_default();
        let cpu = flat_keyed(&cpu_stat);
        let mem = flat_keyed(&memory_stat);
        let current = single_value(&self.read("memory.current").unwrap_or_default());
        let inactive_file = mem.get("inactive_file").copied().unwrap_or(0);
        Stats {
            cpu_usage_ns: cpu.get("usage_usec").copied().unwrap_or(0) * 1000,
            cpu_user_ns: cpu.get("user_usec").copied().unwrap_or(0) * 1000,
            cpu_system_ns: cpu.get("system_usec").copied().unwrap_or(0) * 1000,
            memory_usage_bytes: current,
            memory_working_set_bytes: current.saturating_sub(inactive_file),
            memory_limit_bytes: single_value(&self.read("memory.max").unwrap_or_default()),
            memory_rss_bytes: mem.get("anon").copied().unwrap_or(0),
            page_faults: mem.get("pgfault").copied().unwrap_or(0),
            major_page_faults: mem.get("pgmajfault").copied().unwrap_or(0),
            pids: single_value(&self.read("pids.current").unwrap_or_default()),
        }
    }

    /// The `oom_kill` count of `memory.events` (0 when unreadable).
    pub fn oom_kills(&self) -> u64 {
        let content = self.read("memory.events").unwrap_or_default();
        flat_keyed(&content).get("oom_kill").copied().unwrap_or(0)
    }

    /// Applies OCI resources (cpu, memory, pids, cpuset, io…) with libcgroups' v2 manager.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let manager = Manager::new(PathBuf::from(CGROUP_ROOT), self.rel.clone())
            .map_err(|e| AgentError::internal("cgroup manager", e))?;
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        manager.apply(&opt).map_err(|e| {
            AgentError::Internal(format!(
                "update cgroup {}: {}",
                self.rel.display(),
                crate::error::chain(&e)
            ))
        })
    }

    /// Pids of the cgroup's members (this cgroup only).
    pub fn pids(&self) -> Vec<i32> {
        self.read("cgroup.procs")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `signal` to every member; SIGKILL uses `cgroup.kill` where the kernel has it.
    pub fn signal_all(&self, signal: i32) -> Result<()> {
        if signal == libc::SIGKILL && std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return Ok(());
        }
        for pid in self.pids() {
            super::signal::send_signal(pid, signal)?;
        }
        Ok(())
    }
}

/// Parses `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`).
pub fn flat_keyed(content: &str) -> HashMap<&str, u64> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let key = it.next()?;
            let value = it.next()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// Parses a one-value file; `max` (no limit) and garbage read as 0.
pub fn single_value(content: &str) -> u64 {
    content.trim().parse().unwrap_or(0)
}

/// Parses the `resources_json` of UpdateContainer.
pub fn parse_resources(json: &[u8]) -> Result<LinuxResources> {
    serde_json::from_slice(json)
        .map_err(|e| AgentError::InvalidArgument(format!("resources_json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_STAT: &str = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n";
    const MEMORY_STAT: &str =
        "anon 4096\nfile 8192\ninactive_file 2048\npgfault 33\npgmajfault 2\nbogus\n";

    #[test]
    fn parses_stat_files() {
        let cpu = flat_keyed(CPU_STAT);
        assert_eq!(cpu["usage_usec"], 1500);
        assert_eq!(cpu["system_usec"], 500);
        let mem = flat_keyed(MEMORY_STAT);
        assert_eq!(mem["inactive_file"], 2048);
        assert!(!mem.contains_key("bogus"));
        assert_eq!(single_value("max\n"), 0);
        assert_eq!(single_value("1048576\n"), 1 << 20);
    }

    #[test]
    fn stats_from_a_fake_cgroup_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("cpu.stat"), CPU_STAT).unwrap();
        std::fs::write(d.join("memory.stat"), MEMORY_STAT).unwrap();
        std::fs::write(d.join("memory.current"), "10000\n").unwrap();
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("pids.current"), "3\n").unwrap();
        std::fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        let cg = Cgroup {
            rel: PathBuf::from("/x"),
            dir: d.to_path_buf(),
        };
        let s = cg.stats();
        assert_eq!(s.cpu_usage_ns, 1_500_000);
        assert_eq!(s.cpu_user_ns, 1_000_000);
        assert_eq!(s.cpu_system_ns, 500_000);
        assert_eq!(s.memory_usage_bytes, 10000);
        assert_eq!(s.memory_working_set_bytes, 10000 - 2048);
        assert_eq!(s.memory_limit_bytes, 0);
        assert_eq!(s.memory_rss_bytes, 4096);
        assert_eq!((s.page_faults, s.major_page_faults, s.pids), (33, 2, 3));
        assert_eq!(cg.oom_kills(), 1);
    }

    #[test]
    fn cgroup_dir_is_below_the_root() {
        assert_eq!(
            Cgroup::new("/vessel/c1").dir(),
            Path::new("/sys/fs/cgroup/vessel/c1")
        );
    }

    #[test]
    fn bad_resources_json_is_invalid_argument() {
        assert!(matches!(
            parse_resources(b"[1"),
            Err(AgentError::InvalidArgument(_))
        ));
        let r = parse_resources(
            br#"{"memory":{"limit":1048576},"cpu":{"quota":50000,"period":100000}}"#,
        )
        .unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(1 << 20));
    }
}
