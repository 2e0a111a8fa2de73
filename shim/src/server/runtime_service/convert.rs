//! Runtime records → CRI messages (the one place that builds CRI status objects).

use std::collections::HashMap;

use vessel_protocols::cri;

use crate::runtime::{ContainerRecord, ContainerUsage, PodState, SandboxRecord};

pub fn pod_state(state: PodState) -> cri::PodSandboxState {
    match state {
        PodState::Ready => cri::PodSandboxState::SandboxReady,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub fn pod_sandbox(r: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: pod_state(r.state) as i32,
        created_at: r.created_at_ns,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

pub fn pod_sandbox_status(r: &SandboxRecord) -> cri::PodSandboxStatus {
    let options = r
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: pod_state(r.state) as i32,
        created_at: r.created_at_ns,
        network: Some(crate::runtime::pod_network_status(r.network.as_ref())),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options }),
        }),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

fn image_spec(r: &ContainerRecord) -> cri::ImageSpec {
    let mut spec = r.config.image.clone().unwrap_or_default();
    spec.image = r.image.clone();
    spec
}

/// What CRI's `image_ref` reports: the image's repo digest, as containerd does (kubectl shows
/// it as imageID), else its id. `image_id` is always the id.
fn image_ref(r: &ContainerRecord) -> String {
    r.repo_digest.clone().unwrap_or_else(|| r.image_ref.clone())
}

pub fn container(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: r.config.metadata.clone(),
        image: Some(image_spec(r)),
        image_ref: image_ref(r),
        state: r.state.to_cri() as i32,
        created_at: r.created_at_ns,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        image_id: r.image_ref.clone(),
    }
}

pub fn container_status(r: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: r.state.to_cri() as i32,
        created_at: r.created_at_ns,
        started_at: r.started_at_ns,
        finished_at: r.finished_at_ns,
        exit_code: r.exit_code,
        image: Some(image_spec(r)),
        image_ref: image_ref(r),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        mounts: r.config.mounts.clone(),
        log_path: r
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: r.config.linux.as_ref().and_then(|l| {
            l.resources.clone().map(|linux| cri::ContainerResources {
                linux: Some(linux),
                ..Default::default()
            })
        }),
        image_id: r.image_ref.clone(),
        user: None,
    }
}

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

pub fn container_stats(u: &ContainerUsage) -> cri::ContainerStats {
    let r = &u.record;
    let now = crate::runtime::now_ns();
    let (cpu, memory) = match &u.guest {
        Some(g) => (
            Some(cri::CpuUsage {
                timestamp: g.timestamp_ns,
                usage_core_nano_seconds: u64v(g.cpu_usage_ns),
                usage_nano_cores: None,
            }),
            Some(cri::MemoryUsage {
                timestamp: g.timestamp_ns,
                working_set_bytes: u64v(g.memory_working_set_bytes),
                available_bytes: (g.memory_limit_bytes > 0)
                    .then(|| {
                        g.memory_limit_bytes
                            .saturating_sub(g.memory_working_set_bytes)
                    })
                    .and_then(u64v),
                usage_bytes: u64v(g.memory_usage_bytes),
                rss_bytes: u64v(g.memory_rss_bytes),
                page_faults: u64v(g.page_faults),
                major_page_faults: u64v(g.major_page_faults),
            }),
        ),
        None => (None, None),
    };
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        }),
        cpu,
        memory,
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: r.scratch.join("upper").display().to_string(),
            }),
            used_bytes: u64v(u.writable_bytes),
            inodes_used: u64v(u.writable_inodes),
        }),
        swap: None,
    }
}

/// Every selector label must be present with the same value.
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selector() {
        let labels: HashMap<String, String> =
            [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        assert!(labels_match(&HashMap::new(), &labels));
        assert!(labels_match(&[("a".into(), "1".into())].into(), &labels));
        assert!(!labels_match(&[("a".into(), "2".into())].into(), &labels));
        assert!(!labels_match(&[("c".into(), "1".into())].into(), &labels));
    }
}
