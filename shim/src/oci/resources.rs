//! CRI `LinuxContainerResources` ↔ OCI `LinuxResources`, as containerd's `WithResources`
//! maps them, with the values checked first (errors name the CRI field). Both directions:
//! CreateContainer and UpdateContainerResources go CRI → OCI; ContainerStatus reports the
//! OCI resources back as CRI.
//!
//! `oom_score_adj` is not a cgroup setting: it goes to the process (see `process.rs`).

use std::collections::HashMap;

use oci_spec::runtime::{
    LinuxCpu, LinuxHugepageLimit, LinuxHugepageLimitBuilder, LinuxMemory, LinuxResources,
};
use vessel_protocols::cri;

use super::SpecError;

/// The smallest memory limit accepted: below it a container cannot even start.
pub const MIN_MEMORY_LIMIT: i64 = 4 << 20;
/// CFS period bounds, µs (the kernel's).
pub const CPU_PERIOD_RANGE: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
/// The smallest CFS quota, µs (the kernel's).
pub const MIN_CPU_QUOTA: i64 = 1_000;
/// cgroup v1 cpu.shares bounds (kubelet's MinShares..MaxShares).
pub const CPU_SHARES_RANGE: std::ops::RangeInclusive<i64> = 2..=262_144;
/// The largest cpu or memory node number accepted in a cpuset list.
const MAX_CPUSET_ID: u32 = 8191;

/// The OCI resources of `r`; validation errors name the field relative to the resources
/// message (`cpu_period`, `hugepage_limits[0].page_size`, …).
pub fn cri_to_oci_resources(r: &cri::LinuxContainerResources) -> Result<LinuxResources, SpecError> {
    convert(r)
}

/// The CRI resources of `r` (oom_score_adj, which the OCI resources do not hold, is 0).
pub fn oci_to_cri_resources(r: &LinuxResources) -> cri::LinuxContainerResources {
    let cpu = r.cpu().clone().unwrap_or_default();
    let memory = r.memory().unwrap_or_default();
    cri::LinuxContainerResources {
        cpu_period: cpu.period().map_or(0, |p| p as i64),
        cpu_quota: cpu.quota().unwrap_or(0),
        cpu_shares: cpu.shares().map_or(0, |s| s as i64),
        cpuset_cpus: cpu.cpus().clone().unwrap_or_default(),
        cpuset_mems: cpu.mems().clone().unwrap_or_default(),
        memory_limit_in_bytes: memory.limit().unwrap_or(0),
        memory_swap_limit_in_bytes: memory.swap().unwrap_or(0),
        oom_score_adj: 0,
        hugepage_limits: r
            .hugepage_limits()
            .iter()
            .flatten()
            .map(|h| cri::HugepageLimit {
                page_size: h.page_size().clone(),
                limit: h.limit().max(0) as u64,
            })
            .collect(),
        unified: r.unified().clone().unwrap_or_default(),
    }
}

pub(super) fn convert(r: &cri::LinuxContainerResources) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    let cpu = cpu(r)?;
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    let memory = memory(r)?;
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }
    if !r.hugepage_limits.is_empty() {
        out.set_hugepage_limits(Some(hugepages(&r.hugepage_limits)?));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(unified(&r.unified)?));
    }
    Ok(out)
}

fn cpu(r: &cri::LinuxContainerResources) -> Result<LinuxCpu, SpecError> {
    let mut cpu = LinuxCpu::default();
    if r.cpu_shares != 0 {
        if !CPU_SHARES_RANGE.contains(&r.cpu_shares) {
            return Err(out_of(
                "cpu_shares",
                r.cpu_shares,
                &format!("{CPU_SHARES_RANGE:?}"),
            ));
        }
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if r.cpu_period != 0 {
        if !CPU_PERIOD_RANGE.contains(&r.cpu_period) {
            return Err(out_of(
                "cpu_period",
                r.cpu_period,
                &format!("{CPU_PERIOD_RANGE:?} µs"),
            ));
        }
        cpu.set_period(Some(r.cpu_period as u64));
    }
    match r.cpu_quota {
        0 => {}
        // -1: no limit (cgroup "max"), as runc and the kernel take it.
        -1 => {
            cpu.set_quota(Some(-1));
        }
        q if q < 0 => return Err(out_of("cpu_quota", q, "-1 (unlimited) or ≥ 1000 µs")),
        q if q < MIN_CPU_QUOTA => return Err(out_of("cpu_quota", q, "≥ 1000 µs")),
        q if r.cpu_period == 0 => {
            return Err(SpecError::invalid(
                "cpu_quota",
                format!("{q} given without cpu_period (1000..=1000000 µs)"),
            ))
        }
        q => {
            cpu.set_quota(Some(q));
        }
    }
    if !r.cpuset_cpus.is_empty() {
        parse_cpuset("cpuset_cpus", &r.cpuset_cpus)?;
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        parse_cpuset("cpuset_mems", &r.cpuset_mems)?;
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    Ok(cpu)
}

/// Memory limit and swap. Without a swap limit, swap = limit (no swap), as containerd does.
fn memory(r: &cri::LinuxContainerResources) -> Result<LinuxMemory, SpecError> {
    let mut memory = LinuxMemory::default();
    let limit = r.memory_limit_in_bytes;
    if limit < 0 {
        return Err(out_of(
            "memory_limit_in_bytes",
            limit,
            "0 (none) or ≥ 4 MiB",
        ));
    }
    if limit > 0 {
        if limit < MIN_MEMORY_LIMIT {
            return Err(out_of("memory_limit_in_bytes", limit, "≥ 4 MiB (4194304)"));
        }
        memory.set_limit(Some(limit));
        memory.set_swap(Some(limit));
    }
    match r.memory_swap_limit_in_bytes {
        0 => {}
        -1 => {
            memory.set_swap(Some(-1));
        }
        s if s < 0 => {
            return Err(out_of(
                "memory_swap_limit_in_bytes",
                s,
                "-1 (unlimited) or ≥ 0",
            ))
        }
        s if limit > 0 && s < limit => {
            return Err(SpecError::invalid(
                "memory_swap_limit_in_bytes",
                format!("{s} is below memory_limit_in_bytes {limit} (it counts memory + swap)"),
            ))
        }
        s => {
            memory.set_swap(Some(s));
        }
    }
    Ok(memory)
}

fn hugepages(limits: &[cri::HugepageLimit]) -> Result<Vec<LinuxHugepageLimit>, SpecError> {
    limits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if !valid_page_size(&h.page_size) {
                return Err(SpecError::invalid(
                    format!("hugepage_limits[{i}].page_size"),
                    format!("{:?} is not a page size like 2MB or 1GB", h.page_size),
                ));
            }
            let limit = i64::try_from(h.limit).map_err(|_| {
                SpecError::invalid(
                    format!("hugepage_limits[{i}].limit"),
                    format!("{} is too large", h.limit),
                )
            })?;
            Ok(LinuxHugepageLimitBuilder::default()
                .page_size(h.page_size.clone())
                .limit(limit)
                .build()?)
        })
        .collect()
}

/// `<number><KB|MB|GB|TB|PB>` (the cgroup hugetlb file suffix, e.g. `hugetlb.2MB.max`).
fn valid_page_size(size: &str) -> bool {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB" | "TB" | "PB")
}

/// cgroup v2 files by name. Each key names a file in the container's cgroup directory, so it
/// must be a plain `controller.setting` name (no `/`, no `..`).
fn unified(map: &HashMap<String, String>) -> Result<HashMap<String, String>, SpecError> {
    for (key, value) in map {
        let plain = key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        let shaped = key
            .split_once('.')
            .is_some_and(|(controller, setting)| !controller.is_empty() && !setting.is_empty());
        if !plain || !shaped || key.contains("..") {
            return Err(SpecError::invalid(
                format!("unified[{key}]"),
                "not a cgroup file name like memory.high",
            ));
        }
        if value.contains('\0') {
            return Err(SpecError::invalid(
                format!("unified[{key}]"),
                "value holds a NUL byte",
            ));
        }
    }
    Ok(map.clone())
}

/// Checks a cpuset list (`0-3,5,7-8`) and returns its ids.
pub(super) fn parse_cpuset(field: &str, list: &str) -> Result<Vec<u32>, SpecError> {
    let bad = |why: String| SpecError::invalid(field, format!("{list:?}: {why}"));
    let id = |s: &str| -> Result<u32, SpecError> {
        let n: u32 = s
            .parse()
            .map_err(|_| bad(format!("{s:?} is not a number")))?;
        if n > MAX_CPUSET_ID {
            return Err(bad(format!("{n} is above {MAX_CPUSET_ID}")));
        }
        Ok(n)
    };
    let mut ids = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (id(lo)?, id(hi)?);
                if lo > hi {
                    return Err(bad(format!("range {lo}-{hi} runs backwards")));
                }
                ids.extend(lo..=hi);
            }
            None => ids.push(id(part)?),
        }
    }
    Ok(ids)
}

fn out_of(field: &str, value: i64, range: &str) -> SpecError {
    SpecError::invalid(field, format!("{value} is out of range (want {range})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            memory_swap_limit_in_bytes: 512 << 20,
            oom_score_adj: 0,
            cpuset_cpus: "0-3,5".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 21,
            }],
            unified: HashMap::from([("memory.high".to_string(), "200M".to_string())]),
        }
    }

    #[test]
    fn maps_every_field() {
        let oci = cri_to_oci_resources(&full()).unwrap();
        let cpu = oci.cpu().as_ref().unwrap();
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.cpus().as_deref(), Some("0-3,5"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
        let mem = oci.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(256 << 20));
        assert_eq!(mem.swap(), Some(512 << 20));
        let huge = &oci.hugepage_limits().as_ref().unwrap()[0];
        assert_eq!((huge.page_size().as_str(), huge.limit()), ("2MB", 4 << 21));
        assert_eq!(oci.unified().as_ref().unwrap()["memory.high"], "200M");
        let json = serde_json::to_string(&oci).unwrap();
        assert!(json.contains("\"hugepageLimits\""), "{json}");
    }

    #[test]
    fn round_trips() {
        let cases = [
            full(),
            cri::LinuxContainerResources::default(),
            cri::LinuxContainerResources {
                cpu_quota: -1,
                memory_swap_limit_in_bytes: -1,
                ..Default::default()
            },
            cri::LinuxContainerResources {
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                memory_swap_limit_in_bytes: 64 << 20,
                ..Default::default()
            },
        ];
        for cri in cases {
            let back = oci_to_cri_resources(&cri_to_oci_resources(&cri).unwrap());
            assert_eq!(back, cri);
        }
    }

    #[test]
    fn empty_resources_set_nothing() {
        let oci = cri_to_oci_resources(&Default::default()).unwrap();
        assert_eq!(oci, LinuxResources::default());
    }

    #[test]
    fn memory_limit_alone_disables_swap() {
        let r = cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        let mem = cri_to_oci_resources(&r).unwrap().memory().unwrap();
        assert_eq!(mem.swap(), Some(64 << 20));
    }

    #[test]
    fn invalid_values_name_the_field() {
        type Edit = fn(&mut cri::LinuxContainerResources);
        let cases: [(&str, Edit); 16] = [
            ("cpu_period", |r| r.cpu_period = -1),
            ("cpu_period", |r| r.cpu_period = 999),
            ("cpu_period", |r| r.cpu_period = 1_000_001),
            ("cpu_quota", |r| r.cpu_quota = -2),
            ("cpu_quota", |r| r.cpu_quota = 10),
            ("cpu_quota", |r| r.cpu_period = 0),
            ("cpu_shares", |r| r.cpu_shares = -5),
            ("cpu_shares", |r| r.cpu_shares = 1 << 20),
            ("memory_limit_in_bytes", |r| r.memory_limit_in_bytes = -1),
            ("memory_limit_in_bytes", |r| r.memory_limit_in_bytes = 4096),
            ("memory_swap_limit_in_bytes", |r| {
                r.memory_swap_limit_in_bytes = 1 << 20
            }),
            ("memory_swap_limit_in_bytes", |r| {
                r.memory_swap_limit_in_bytes = -7
            }),
            ("cpuset_cpus", |r| r.cpuset_cpus = "0-".into()),
            ("cpuset_mems", |r| r.cpuset_mems = "a".into()),
            ("hugepage_limits[0].page_size", |r| {
                r.hugepage_limits[0].page_size = "2M".into()
            }),
            ("hugepage_limits[0].limit", |r| {
                r.hugepage_limits[0].limit = u64::MAX
            }),
        ];
        for (field, edit) in cases {
            let mut r = full();
            edit(&mut r);
            let e = cri_to_oci_resources(&r).unwrap_err();
            assert!(
                matches!(&e, SpecError::Invalid { field: f, .. } if f == field),
                "want {field}: {e}"
            );
        }
    }

    #[test]
    fn unified_keys_must_be_cgroup_file_names() {
        for ok in [
            "memory.high",
            "cpu.max",
            "io.weight",
            "hugetlb.2MB.max",
            "memory.oom.group",
        ] {
            let r = cri::LinuxContainerResources {
                unified: HashMap::from([(ok.to_string(), "1".to_string())]),
                ..Default::default()
            };
            cri_to_oci_resources(&r).unwrap();
        }
        for bad in [
            "../../etc/x",
            "memory",
            ".high",
            "memory.",
            "a/b.c",
            "x..y",
            "",
        ] {
            let r = cri::LinuxContainerResources {
                unified: HashMap::from([(bad.to_string(), "1".to_string())]),
                ..Default::default()
            };
            let e = cri_to_oci_resources(&r).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid unified[{bad}]")),
                "{e}"
            );
        }
    }

    #[test]
    fn cpuset_lists() {
        let cases: [(&str, Option<Vec<u32>>); 9] = [
            ("0", Some(vec![0])),
            ("0-3,5", Some(vec![0, 1, 2, 3, 5])),
            ("1,3-4", Some(vec![1, 3, 4])),
            (" 2-3", None),
            ("3-1", None),
            ("0,,1", None),
            ("1-2-3", None),
            ("x", None),
            ("99999", None),
        ];
        for (list, want) in cases {
            assert_eq!(parse_cpuset("cpuset_cpus", list).ok(), want, "{list:?}");
        }
    }

    #[test]
    fn page_sizes() {
        for ok in ["2MB", "1GB", "64KB"] {
            assert!(valid_page_size(ok), "{ok}");
        }
        for bad in ["", "MB", "2M", "2mb", "-2MB", "2 MB"] {
            assert!(!valid_page_size(bad), "{bad}");
        }
    }
}
