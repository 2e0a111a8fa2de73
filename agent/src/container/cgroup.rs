//! A container's cgroup v2 directory: statistics, resource updates, OOM kill counting and
//! signalling every member.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcgroups::stats::parse_single_value;
use libcgroups::v2::manager::Manager;
use oci_spec::runtime::LinuxResources;

use super::error::{ContainerError, Result, SpecError};
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

    /// A flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`); empty when the
    /// kernel lacks it.
    fn keyed(&self, file: &str) -> HashMap<String, u64> {
        std::fs::read_to_string(self.dir.join(file))
            .map(|content| flat_keyed(&content))
            .unwrap_or_default()
    }

    /// A one-value file, parsed by libcgroups; `max` (no limit), a missing file and garbage
    /// read as 0.
    fn value(&self, file: &str) -> u64 {
        parse_single_value(&self.dir.join(file))
            .ok()
            .filter(|&v| v != u64::MAX)
            .unwrap_or(0)
    }

    /// Current statistics; files the kernel lacks count as zero.
    pub fn stats(&self) -> Stats {
        let cpu = self.keyed("cpu.stat");
        let mem = self.keyed("memory.stat");
        let current = self.value("memory.current");
        let inactive_file = mem.get("inactive_file").copied().unwrap_or(0);
        Stats {
            cpu_usage_ns: cpu.get("usage_usec").copied().unwrap_or(0) * 1000,
            cpu_user_ns: cpu.get("user_usec").copied().unwrap_or(0) * 1000,
            cpu_system_ns: cpu.get("system_usec").copied().unwrap_or(0) * 1000,
            memory_usage_bytes: current,
            memory_working_set_bytes: current.saturating_sub(inactive_file),
            memory_limit_bytes: self.value("memory.max"),
            memory_rss_bytes: mem.get("anon").copied().unwrap_or(0),
            page_faults: mem.get("pgfault").copied().unwrap_or(0),
            major_page_faults: mem.get("pgmajfault").copied().unwrap_or(0),
            pids: self.value("pids.current"),
        }
    }

    /// The `oom_kill` count of `memory.events` (0 when unreadable).
    pub fn oom_kills(&self) -> u64 {
        self.keyed("memory.events")
            .get("oom_kill")
            .copied()
            .unwrap_or(0)
    }

    /// Applies OCI resources (cpu, memory, pids, cpuset, io…) with libcgroups' v2 manager.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let failed = |e: &dyn std::error::Error| ContainerError::CgroupUpdate {
            path: self.rel.display().to_string(),
            cause: crate::error::chain(e),
        };
        let manager =
            Manager::new(PathBuf::from(CGROUP_ROOT), self.rel.clone()).map_err(|e| failed(&e))?;
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        manager.apply(&opt).map_err(|e| failed(&e))
    }

    /// Pids of the cgroup's members (this cgroup only).
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
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

/// Parses `key value` lines, skipping any that are not. (libcgroups 0.7 has this parser but
/// keeps it crate-private, and its manager's `stats()` fails as a whole when one controller
/// file is missing, such as `memory.swap.current` without swap accounting.)
fn flat_keyed(content: &str) -> HashMap<String, u64> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let key = it.next()?;
            let value = it.next()?.parse().ok()?;
            Some((key.to_owned(), value))
        })
        .collect()
}

/// Parses the `resources_json` of UpdateContainer.
pub fn parse_resources(json: &[u8]) -> Result<LinuxResources, SpecError> {
    serde_json::from_slice(json).map_err(|source| SpecError::Json {
        field: "resources_json",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_STAT: &str = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n";
    const MEMORY_STAT: &str =
        "anon 4096\nfile 8192\ninactive_file 2048\npgfault 33\npgmajfault 2\nbogus\n";

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
            Err(SpecError::Json {
                field: "resources_json",
                ..
            })
        ));
        let r = parse_resources(
            br#"{"memory":{"limit":1048576},"cpu":{"quota":50000,"period":100000}}"#,
        )
        .unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(1 << 20));
    }
}
