//! A container's cgroup (v2, or v1 on a host that a native pod's agent runs on): statistics, resource updates, OOM kill counting and
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

/// Which cgroup layout the host has: the unified (v2) hierarchy, as in every pod VM, or
/// one v1 hierarchy per controller, as on the hybrid and legacy hosts a native pod's agent
/// may run on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// The cgroup's own dir in the unified hierarchy.
    V2 { dir: PathBuf },
    /// The root under which each controller's hierarchy is mounted (`<root>/memory`, …).
    V1 { root: PathBuf },
}

/// A container's cgroup, on whichever layout the host has.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Relative to the hierarchy root, e.g. `/vessel/c1`.
    rel: PathBuf,
    layout: Layout,
}

/// cpuacct.stat counts in USER_HZ ticks, which Linux fixes at 100 per second.
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;
/// v1's `memory.limit_in_bytes` without a limit: the largest page-aligned i64.
const V1_NO_LIMIT: u64 = 0x7FFF_FFFF_FFFF_F000;

impl Cgroup {
    pub fn new(rel: &str) -> Self {
        let rel = PathBuf::from(rel);
        let v1 = !matches!(
            libcgroups::common::get_cgroup_setup(),
            Ok(libcgroups::common::CgroupSetup::Unified) | Err(_)
        );
        let layout = if v1 {
            Layout::V1 {
                root: PathBuf::from(CGROUP_ROOT),
            }
        } else {
            Layout::V2 {
                dir: Path::new(CGROUP_ROOT).join(rel.strip_prefix("/").unwrap_or(&rel)),
            }
        };
        Cgroup { rel, layout }
    }

    /// The path of `file` of `controller` (v1 hierarchy name; v2 has one dir for all).
    fn file(&self, controller: &str, file: &str) -> PathBuf {
        match &self.layout {
            Layout::V2 { dir } => dir.join(file),
            Layout::V1 { root } => root
                .join(controller)
                .join(self.rel.strip_prefix("/").unwrap_or(&self.rel))
                .join(file),
        }
    }

    /// A flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`); empty when the
    /// kernel lacks it.
    fn keyed(&self, controller: &str, file: &str) -> HashMap<String, u64> {
        std::fs::read_to_string(self.file(controller, file))
            .map(|content| flat_keyed(&content))
            .unwrap_or_default()
    }

    /// A one-value file, parsed by libcgroups; `max` (no limit), a missing file and garbage
    /// read as 0.
    fn value(&self, controller: &str, file: &str) -> u64 {
        parse_single_value(&self.file(controller, file))
            .ok()
            .filter(|&v| v != u64::MAX)
            .unwrap_or(0)
    }

    /// Current statistics; files the kernel lacks count as zero.
    pub fn stats(&self) -> Stats {
        match self.layout {
            Layout::V2 { .. } => self.stats_v2(),
            Layout::V1 { .. } => self.stats_v1(),
        }
    }

    fn stats_v2(&self) -> Stats {
        let cpu = self.keyed("cpu", "cpu.stat");
        let mem = self.keyed("memory", "memory.stat");
        let current = self.value("memory", "memory.current");
        Stats {
            cpu_usage_ns: get(&cpu, "usage_usec") * 1000,
            cpu_user_ns: get(&cpu, "user_usec") * 1000,
            cpu_system_ns: get(&cpu, "system_usec") * 1000,
            memory_usage_bytes: current,
            memory_working_set_bytes: current.saturating_sub(get(&mem, "inactive_file")),
            memory_limit_bytes: self.value("memory", "memory.max"),
            memory_rss_bytes: get(&mem, "anon"),
            page_faults: get(&mem, "pgfault"),
            major_page_faults: get(&mem, "pgmajfault"),
            pids: self.value("pids", "pids.current"),
        }
    }

    /// The v1 files: `total_*` of memory.stat count the cgroup's children too, as v2 does.
    fn stats_v1(&self) -> Stats {
        let cpu = self.keyed("cpuacct", "cpuacct.stat");
        let mem = self.keyed("memory", "memory.stat");
        let usage = self.value("memory", "memory.usage_in_bytes");
        let limit = self.value("memory", "memory.limit_in_bytes");
        Stats {
            cpu_usage_ns: self.value("cpuacct", "cpuacct.usage"),
            cpu_user_ns: get(&cpu, "user") * NS_PER_USER_HZ_TICK,
            cpu_system_ns: get(&cpu, "system") * NS_PER_USER_HZ_TICK,
            memory_usage_bytes: usage,
            memory_working_set_bytes: usage.saturating_sub(get(&mem, "total_inactive_file")),
            memory_limit_bytes: if limit >= V1_NO_LIMIT { 0 } else { limit },
            memory_rss_bytes: get(&mem, "total_rss"),
            page_faults: get(&mem, "total_pgfault"),
            major_page_faults: get(&mem, "total_pgmajfault"),
            pids: self.value("pids", "pids.current"),
        }
    }

    /// How many times the kernel's OOM killer killed a member (0 when unreadable): the
    /// `oom_kill` count of v2's `memory.events` or of v1's `memory.oom_control`.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.layout {
            Layout::V2 { .. } => "memory.events",
            Layout::V1 { .. } => "memory.oom_control",
        };
        self.keyed("memory", file)
            .get("oom_kill")
            .copied()
            .unwrap_or(0)
    }

    /// Applies OCI resources (cpu, memory, pids, cpuset, io…) with libcgroups' manager for
    /// the layout.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let failed = |e: &dyn std::error::Error| ContainerError::CgroupUpdate {
            path: self.rel.display().to_string(),
            cause: crate::error::chain(e),
        };
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        match self.layout {
            Layout::V2 { .. } => Manager::new(PathBuf::from(CGROUP_ROOT), self.rel.clone())
                .map_err(|e| failed(&e))?
                .apply(&opt)
                .map_err(|e| failed(&e)),
            Layout::V1 { .. } => libcgroups::v1::manager::Manager::new(&self.rel)
                .map_err(|e| failed(&e))?
                .apply(&opt)
                .map_err(|e| failed(&e)),
        }
    }

    /// Pids of the cgroup's members (this cgroup only).
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.file("pids", "cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `signal` to every member; SIGKILL uses `cgroup.kill` where the kernel has it.
    pub fn signal_all(&self, signal: i32) -> Result<()> {
        if signal == libc::SIGKILL
            && matches!(self.layout, Layout::V2 { .. })
            && std::fs::write(self.file("", "cgroup.kill"), "1").is_ok()
        {
            return Ok(());
        }
        for pid in self.pids() {
            super::signal::send_signal(pid, signal)?;
        }
        Ok(())
    }
}

/// A flat-keyed file's value of `k`, 0 when absent.
fn get(map: &HashMap<String, u64>, k: &str) -> u64 {
    map.get(k).copied().unwrap_or(0)
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
            layout: Layout::V2 {
                dir: d.to_path_buf(),
            },
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
        let cg = Cgroup::new("/vessel/c1");
        assert_eq!(
            cg.file("memory", "memory.stat"),
            match cg.layout {
                Layout::V2 { .. } => PathBuf::from("/sys/fs/cgroup/vessel/c1/memory.stat"),
                Layout::V1 { .. } => PathBuf::from("/sys/fs/cgroup/memory/vessel/c1/memory.stat"),
            }
        );
    }

    #[test]
    fn v1_stats_from_fake_controller_dirs() {
        let root = tempfile::tempdir().unwrap();
        let dir = |c: &str| {
            let d = root.path().join(c).join("x");
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let cpu = dir("cpuacct");
        std::fs::write(cpu.join("cpuacct.usage"), "1500000\n").unwrap();
        std::fs::write(cpu.join("cpuacct.stat"), "user 3\nsystem 1\n").unwrap();
        let mem = dir("memory");
        std::fs::write(mem.join("memory.usage_in_bytes"), "10000\n").unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            mem.join("memory.stat"),
            "cache 1\ntotal_inactive_file 2048\ntotal_rss 4096\ntotal_pgfault 33\ntotal_pgmajfault 2\n",
        )
        .unwrap();
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(dir("pids").join("pids.current"), "3\n").unwrap();
        let cg = Cgroup {
            rel: PathBuf::from("/x"),
            layout: Layout::V1 {
                root: root.path().to_path_buf(),
            },
        };
        let s = cg.stats();
        assert_eq!(s.cpu_usage_ns, 1_500_000);
        assert_eq!((s.cpu_user_ns, s.cpu_system_ns), (30_000_000, 10_000_000));
        assert_eq!(s.memory_usage_bytes, 10000);
        assert_eq!(s.memory_working_set_bytes, 10000 - 2048);
        assert_eq!(s.memory_limit_bytes, 0, "no limit reads as 0");
        assert_eq!(s.memory_rss_bytes, 4096);
        assert_eq!((s.page_faults, s.major_page_faults, s.pids), (33, 2, 3));
        assert_eq!(cg.oom_kills(), 2);
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
