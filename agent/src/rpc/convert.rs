//! Protocol messages → domain types, at the edge (the core never sees generated types).

use vessel_protocols::agent as api;

use super::error::Result;
use crate::container::ExitInfo;
use crate::container::Stats;
use crate::storage::StorageSpec;

pub fn storage(s: &api::Storage) -> Result<StorageSpec> {
    let relocate = |p: &str| {
        crate::paths::relocate(std::path::Path::new(p))
            .to_string_lossy()
            .into_owned()
    };
    Ok(StorageSpec::new(
        &s.driver,
        &relocate(&s.source),
        &relocate(&s.mount_point),
        s.options.clone(),
        s.read_only,
    )?)
}

pub fn storages(list: &[api::Storage]) -> Result<Vec<StorageSpec>> {
    list.iter().map(storage).collect()
}

pub fn wait_response(e: ExitInfo) -> api::WaitProcessResponse {
    let mut r = api::WaitProcessResponse::new();
    r.status = e.status;
    r.signal = e.signal;
    r.exited_at_ns = e.exited_at_ns;
    r.oom_killed = e.oom_killed;
    r
}

pub fn stats(s: Stats, timestamp_ns: i64) -> api::ContainerStats {
    let mut r = api::ContainerStats::new();
    r.timestamp_ns = timestamp_ns;
    r.cpu_usage_ns = s.cpu_usage_ns;
    r.cpu_user_ns = s.cpu_user_ns;
    r.cpu_system_ns = s.cpu_system_ns;
    r.memory_usage_bytes = s.memory_usage_bytes;
    r.memory_working_set_bytes = s.memory_working_set_bytes;
    r.memory_limit_bytes = s.memory_limit_bytes;
    r.memory_rss_bytes = s.memory_rss_bytes;
    r.page_faults = s.page_faults;
    r.major_page_faults = s.major_page_faults;
    r.pids = s.pids;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_conversion_validates() {
        let mut s = api::Storage::new();
        s.driver = "virtiofs".into();
        s.source = "shared".into();
        s.mount_point = "/run/vessel/shared".into();
        let spec = storage(&s).unwrap();
        assert_eq!(spec.mount_point.to_str(), Some("/run/vessel/shared"));
        s.driver = "9p".into();
        assert!(storage(&s).is_err());
    }

    #[test]
    fn wait_response_fields() {
        let r = wait_response(ExitInfo {
            status: 137,
            signal: 9,
            exited_at_ns: 5,
            oom_killed: true,
        });
        assert_eq!(
            (r.status, r.signal, r.exited_at_ns, r.oom_killed),
            (137, 9, 5, true)
        );
    }
}
