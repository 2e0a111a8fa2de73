//! Check, GetGuestDetails (the agent's version and capabilities, the guest's kernel, memory
//! and CPUs), SetGuestDateTime.

use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use vessel_protocols::agent as api;
use vessel_protocols::guest::Capability;

use super::error::{GuestError, Result};
use super::AgentService;

/// The parts of the guest contract this agent implements beyond the first one, reported in
/// GetGuestDetails so that a newer shim knows what it may ask of this guest image.
pub const CAPABILITIES: [Capability; 4] = Capability::ALL;

pub async fn check(_: &AgentService, _: api::CheckRequest) -> Result<api::CheckResponse> {
    let mut r = api::CheckResponse::new();
    r.status = api::check_response::ServingStatus::SERVING.into();
    Ok(r)
}

pub async fn guest_details(
    _: &AgentService,
    _: api::GetGuestDetailsRequest,
) -> Result<api::GuestDetails> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| GuestError::Read { path, source })
    };
    let mut d = api::GuestDetails::new();
    d.agent_version = env!("CARGO_PKG_VERSION").to_string();
    d.kernel_release = read("/proc/sys/kernel/osrelease")?.trim().to_string();
    d.mem_total_bytes = mem_total_bytes(&read("/proc/meminfo")?);
    d.online_cpus = count_cpus(&read("/sys/devices/system/cpu/online")?);
    d.uptime_seconds = uptime_seconds(&read("/proc/uptime")?);
    d.capabilities = CAPABILITIES.iter().map(|c| c.name().to_owned()).collect();
    Ok(d)
}

pub async fn set_date_time(
    _: &AgentService,
    req: api::SetGuestDateTimeRequest,
) -> Result<api::Empty> {
    if !(0..1_000_000_000).contains(&req.nsec) || req.sec < 0 {
        return Err(GuestError::InvalidTime {
            sec: req.sec,
            nsec: req.nsec,
        }
        .into());
    }
    if crate::paths::on_host() {
        // A native pod's agent shares the host's clock: never set it.
        tracing::debug!("clock left alone: the agent runs on the host");
        return Ok(api::Empty::new());
    }
    let ts = TimeSpec::new(req.sec as _, req.nsec as _);
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(GuestError::SetClock)?;
    tracing::info!(sec = req.sec, "guest clock set");
    Ok(api::Empty::new())
}

/// `MemTotal:  123 kB` of /proc/meminfo, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Counts a CPU list such as `0-3,5,7-8`.
pub fn count_cpus(list: &str) -> u32 {
    list.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => u32::from(part.parse::<u32>().is_ok()),
        })
        .sum()
}

/// First field of /proc/uptime.
pub fn uptime_seconds(uptime: &str) -> f64 {
    uptime
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::error::AgentError;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            mem_total_bytes("MemTotal:        2014732 kB\nMemFree: 1 kB\n"),
            2014732 * 1024
        );
        assert_eq!(mem_total_bytes("nothing"), 0);
        assert_eq!(count_cpus("0\n"), 1);
        assert_eq!(count_cpus("0-3,5,7-8\n"), 7);
        assert_eq!(count_cpus(""), 0);
        assert_eq!(uptime_seconds("12.34 40.00\n"), 12.34);
    }

    fn service() -> AgentService {
        AgentService::new(false, crate::init::reaper::Reaper::new())
    }

    #[tokio::test]
    async fn rejects_bad_time() {
        let mut req = api::SetGuestDateTimeRequest::new();
        req.sec = 1;
        req.nsec = 1_000_000_000;
        assert!(matches!(
            set_date_time(&service(), req).await,
            Err(AgentError::Guest(GuestError::InvalidTime { .. }))
        ));
    }

    #[tokio::test]
    async fn details_report_version_and_capabilities() {
        let d = guest_details(&service(), api::GetGuestDetailsRequest::new())
            .await
            .unwrap();
        assert_eq!(d.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            d.capabilities,
            ["pod-pid-namespace", "pod-network", "streams", "pod-sysctls"]
        );
        assert!(d.online_cpus >= 1);
    }

    #[tokio::test]
    async fn check_says_serving() {
        let reply = check(&service(), api::CheckRequest::new()).await.unwrap();
        assert_eq!(
            reply.status.enum_value(),
            Ok(api::check_response::ServingStatus::SERVING)
        );
    }
}
