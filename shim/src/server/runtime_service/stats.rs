//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats.

use std::sync::Arc;

use vessel_protocols::cri;

use super::convert::{container_stats, labels_match};
use crate::runtime::{ContainerState, Runtime, RuntimeError};

pub async fn container(
    rt: &Arc<Runtime>,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, RuntimeError> {
    let c = rt.containers.get(&req.container_id)?;
    let usage = rt.stats.container_usage(&c).await?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(container_stats(&usage)),
    })
}

pub async fn list_containers(
    rt: &Arc<Runtime>,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, RuntimeError> {
    let filter = req.filter.unwrap_or_default();
    let mut stats = Vec::new();
    for c in rt.containers.list() {
        let r = c.record();
        let keep = (filter.id.is_empty() || r.id.starts_with(&filter.id))
            && (filter.pod_sandbox_id.is_empty()
                || r.sandbox_id.starts_with(&filter.pod_sandbox_id))
            && labels_match(&filter.label_selector, &r.config.labels)
            && r.state == ContainerState::Running;
        if keep {
            // A container that exits meanwhile is skipped, not an error of the whole list.
            if let Ok(usage) = rt.stats.container_usage(&c).await {
                stats.push(container_stats(&usage));
            }
        }
    }
    Ok(cri::ListContainerStatsResponse { stats })
}

async fn pod_stats(rt: &Arc<Runtime>, pod_id: &str) -> Result<cri::PodSandboxStats, RuntimeError> {
    let record = rt.pods.get(pod_id)?.record();
    let mut containers = Vec::new();
    for c in rt.containers.of_pod(pod_id) {
        if c.state() == ContainerState::Running {
            if let Ok(usage) = rt.stats.container_usage(&c).await {
                containers.push(container_stats(&usage));
            }
        }
    }
    let now = crate::runtime::now_ns();
    // The VM's host cgroup holds what the pod costs the host: the vCPUs running the guest's
    // containers, the guest RAM they touched, and the VMM and helpers themselves (the
    // overhead). Its figures are the pod's; the containers' own sums are the floor.
    let host = record
        .vm
        .as_ref()
        .and_then(|vm| vm.vm.config.cgroup.as_ref())
        .map(|c| c.usage())
        .unwrap_or_default();
    let at_least = |own: Option<u64>, sum: Option<cri::UInt64Value>| match (own, sum) {
        (Some(own), Some(sum)) => Some(cri::UInt64Value {
            value: own.max(sum.value),
        }),
        (Some(own), None) => Some(cri::UInt64Value { value: own }),
        (None, sum) => sum,
    };
    let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| -> Option<cri::UInt64Value> {
        Some(cri::UInt64Value {
            value: containers.iter().filter_map(f).sum(),
        })
    };
    let cpu = cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: at_least(
            host.cpu_ns,
            sum(&|c| {
                c.cpu
                    .as_ref()?
                    .usage_core_nano_seconds
                    .as_ref()
                    .map(|v| v.value)
            }),
        ),
        usage_nano_cores: None,
    };
    let memory = cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: at_least(
            host.working_set_bytes,
            sum(&|c| {
                c.memory
                    .as_ref()?
                    .working_set_bytes
                    .as_ref()
                    .map(|v| v.value)
            }),
        ),
        usage_bytes: at_least(
            host.memory_bytes,
            sum(&|c| c.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value)),
        ),
        rss_bytes: sum(&|c| c.memory.as_ref()?.rss_bytes.as_ref().map(|v| v.value)),
        page_faults: sum(&|c| c.memory.as_ref()?.page_faults.as_ref().map(|v| v.value)),
        major_page_faults: sum(&|c| {
            c.memory
                .as_ref()?
                .major_page_faults
                .as_ref()
                .map(|v| v.value)
        }),
        available_bytes: None,
    };
    Ok(cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: record.id.clone(),
            metadata: record.config.metadata.clone(),
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network: None,
            process: (host.processes > 0).then_some(cri::ProcessUsage {
                timestamp: now,
                process_count: Some(cri::UInt64Value {
                    value: host.processes,
                }),
            }),
            containers,
        }),
        windows: None,
    })
}

pub async fn pod(
    rt: &Arc<Runtime>,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, RuntimeError> {
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(pod_stats(rt, &req.pod_sandbox_id).await?),
    })
}

pub async fn list_pods(
    rt: &Arc<Runtime>,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, RuntimeError> {
    let filter = req.filter.unwrap_or_default();
    let mut stats = Vec::new();
    for p in rt.pods.list() {
        let r = p.record();
        if (filter.id.is_empty() || r.id.starts_with(&filter.id))
            && labels_match(&filter.label_selector, &r.config.labels)
            && p.is_ready()
        {
            if let Ok(s) = pod_stats(rt, &r.id).await {
                stats.push(s);
            }
        }
    }
    Ok(cri::ListPodSandboxStatsResponse { stats })
}
