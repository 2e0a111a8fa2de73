//! A pod VM's size from what kubelet sends at RunPodSandbox: `linux.resources` is the sum of
//! the containers' limits, so guest RAM = memory limit + the guest's own base, and vCPUs =
//! ceil(CPU quota / period), at least 1 and at most the host's CPUs. A pod without a limit
//! gets the configured default; one above the configured maxima is refused.

use serde::{Deserialize, Serialize};
use vessel_protocols::cri;

use crate::config::HypervisorConfig;
use crate::runtime::RuntimeError;

const MIB: i64 = 1 << 20;
/// The CFS period when a quota comes without one.
const DEFAULT_CPU_PERIOD: i64 = 100_000;

/// A pod VM's size and how it was derived, as persisted with the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSize {
    pub memory_mib: u32,
    pub vcpus: u32,
    /// The guest RAM the pod's containers may use together (the VM's less the guest's base);
    /// `None` for a pod of the default size, whose containers asked for no limit.
    pub containers_memory_mib: Option<u32>,
    /// How the figures came about, for the pod's verbose status.
    pub memory_from: String,
    pub vcpus_from: String,
}

/// The size of the VM of a pod with `config`, on a host with `host_cpus` CPUs.
pub fn vm_size(
    config: &cri::PodSandboxConfig,
    hv: &HypervisorConfig,
    host_cpus: u32,
) -> Result<VmSize, RuntimeError> {
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let limit = resources.map_or(0, |r| r.memory_limit_in_bytes);
    let (memory_mib, containers_memory_mib, memory_from) = if limit > 0 {
        let containers = div_ceil(limit, MIB);
        let total = containers + i64::from(hv.guest_base_mib);
        if total > i64::from(hv.max_memory_mib) {
            return Err(RuntimeError::invalid(
                "linux.resources.memory_limit_in_bytes",
                format!(
                    "{limit} plus the guest's base of {} MiB needs a VM of {total} MiB, above hypervisor.max_memory_mib {} MiB",
                    hv.guest_base_mib, hv.max_memory_mib
                ),
            ));
        }
        let containers = u32::try_from(containers).unwrap_or(u32::MAX);
        (
            containers + hv.guest_base_mib,
            Some(containers),
            format!(
                "linux.resources.memory_limit_in_bytes {limit} ({containers} MiB) + hypervisor.guest_base_mib {}",
                hv.guest_base_mib
            ),
        )
    } else {
        (
            hv.memory_mib,
            None,
            "no memory limit: hypervisor.memory_mib".to_owned(),
        )
    };
    let quota = resources.map_or(0, |r| r.cpu_quota);
    let (vcpus, vcpus_from) = if quota > 0 {
        let (wanted, period) = cpus_for(quota, resources.map_or(0, |r| r.cpu_period));
        if wanted > i64::from(hv.max_vcpus) {
            return Err(RuntimeError::invalid(
                "linux.resources.cpu_quota",
                format!(
                    "{quota} per period {period} asks for {wanted} CPUs, above hypervisor.max_vcpus {}",
                    hv.max_vcpus
                ),
            ));
        }
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX).max(1);
        let vcpus = wanted.min(host_cpus.max(1));
        let capped = if vcpus < wanted {
            format!(", capped at the host's {host_cpus} CPUs")
        } else {
            String::new()
        };
        (
            vcpus,
            format!(
                "ceil(linux.resources.cpu_quota {quota} / cpu_period {period}) = {wanted}{capped}"
            ),
        )
    } else {
        (
            hv.vcpus.min(host_cpus.max(1)),
            "no CPU quota: hypervisor.vcpus".to_owned(),
        )
    };
    Ok(VmSize {
        memory_mib,
        vcpus,
        containers_memory_mib,
        memory_from,
        vcpus_from,
    })
}

/// The whole CPUs a positive CFS quota per `period` (the default period when 0) asks for,
/// and the period it was read against.
fn cpus_for(quota: i64, period: i64) -> (i64, i64) {
    let period = if period > 0 {
        period
    } else {
        DEFAULT_CPU_PERIOD
    };
    (div_ceil(quota, period), period)
}

/// `a / b` rounded up, for positive `a` and `b`, without overflow near `i64::MAX`.
fn div_ceil(a: i64, b: i64) -> i64 {
    (a - 1) / b + 1
}

/// This host's online CPUs (not the daemon's own affinity or cgroup quota, which a service
/// manager may have narrowed).
pub fn host_cpus() -> u32 {
    use procfs::Current;
    procfs::CpuInfo::current()
        .ok()
        .and_then(|info| u32::try_from(info.num_cores()).ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

impl VmSize {
    /// Refuses container resources that no longer fit this VM (FailedPrecondition naming its
    /// size): a memory limit above what the VM holds for containers, or a CPU quota above its
    /// vCPUs. Growing the VM (memory and CPU hot-plug) is a later step.
    pub fn check_fits(&self, r: &cri::LinuxContainerResources) -> Result<(), RuntimeError> {
        let room = i64::from(self.containers_memory_mib.unwrap_or(self.memory_mib)) * MIB;
        if r.memory_limit_in_bytes > room {
            return Err(RuntimeError::FailedPrecondition(format!(
                "linux.memory_limit_in_bytes {} does not fit the pod's VM of {} MiB and {} vCPUs ({} MiB for containers); memory hot-plug is not supported yet",
                r.memory_limit_in_bytes,
                self.memory_mib,
                self.vcpus,
                room / MIB
            )));
        }
        if r.cpu_quota > 0 {
            let (wanted, period) = cpus_for(r.cpu_quota, r.cpu_period);
            if wanted > i64::from(self.vcpus) {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "linux.cpu_quota {} per period {period} asks for {wanted} CPUs; the pod's VM of {} MiB has {} vCPUs; CPU hot-plug is not supported yet",
                    r.cpu_quota, self.memory_mib, self.vcpus
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(memory: i64, quota: i64, period: i64) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: memory,
                    cpu_quota: quota,
                    cpu_period: period,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn limits_size_the_vm() {
        let hv = HypervisorConfig::default();
        let s = vm_size(&pod(2 << 30, 200_000, 100_000), &hv, 8).unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (2048 + hv.guest_base_mib, 2));
        assert_eq!(s.containers_memory_mib, Some(2048));
        assert!(s.memory_from.contains("2147483648"), "{}", s.memory_from);
        // Half a CPU is one vCPU; a partial MiB rounds up; a quota without period uses 100 ms.
        let s = vm_size(&pod(MIB + 1, 50_000, 0), &hv, 8).unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (2 + hv.guest_base_mib, 1));
        // More CPUs than the host has: capped, and said so.
        let s = vm_size(&pod(0, 1_600_000, 100_000), &hv, 2).unwrap();
        assert_eq!(s.vcpus, 2);
        assert!(s.vcpus_from.contains("capped"), "{}", s.vcpus_from);
        assert_eq!(s.memory_mib, hv.memory_mib);
    }

    #[test]
    fn absurd_values_are_refused_not_wrapped() {
        let hv = HypervisorConfig::default();
        let e = vm_size(&pod(i64::MAX, 0, 0), &hv, 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_memory_mib"), "{e}");
        let e = vm_size(&pod(0, i64::MAX, 1), &hv, 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_vcpus"), "{e}");
        assert!(host_cpus() >= 1);
    }

    #[test]
    fn no_limits_give_the_default_size() {
        let hv = HypervisorConfig::default();
        let s = vm_size(&cri::PodSandboxConfig::default(), &hv, 8).unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (hv.memory_mib, hv.vcpus));
        assert_eq!(s.containers_memory_mib, None);
    }

    #[test]
    fn above_the_maxima_is_invalid_argument() {
        let hv = HypervisorConfig {
            max_memory_mib: 1024,
            max_vcpus: 2,
            ..Default::default()
        };
        let e = vm_size(&pod(2 << 30, 0, 0), &hv, 8)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory_limit_in_bytes") && e.contains("1024"),
            "{e}"
        );
        let e = vm_size(&pod(0, 300_000, 100_000), &hv, 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpu_quota") && e.contains("max_vcpus"), "{e}");
    }

    #[test]
    fn updates_must_fit_the_vm() {
        let hv = HypervisorConfig::default();
        let s = vm_size(&pod(512 * MIB, 100_000, 100_000), &hv, 8).unwrap();
        let fits = cri::LinuxContainerResources {
            memory_limit_in_bytes: 512 * MIB,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        s.check_fits(&fits).unwrap();
        let e = s
            .check_fits(&cri::LinuxContainerResources {
                memory_limit_in_bytes: 1 << 30,
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("640 MiB") || e.contains(&format!("{} MiB", s.memory_mib)),
            "{e}"
        );
        let e = s
            .check_fits(&cri::LinuxContainerResources {
                cpu_quota: 150_000,
                cpu_period: 100_000,
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 vCPUs"), "{e}");
    }
}
