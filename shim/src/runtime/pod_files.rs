//! The pod's /etc files (hosts, resolv.conf, hostname), written once into the shared dir when
//! the pod starts and bind-mounted into every container of the pod.

use std::net::IpAddr;
use std::path::Path;

use vessel_protocols::cri;

use super::RuntimeError;
use crate::oci::{pod_hostname, GUEST_SHARED_DIR};

/// Where the files live, relative to the shared dir.
pub(super) const POD_FILES: &str = ".pod";

/// Guest paths of the pod's /etc files.
pub(super) struct PodFiles {
    pub hosts: String,
    pub resolv_conf: String,
    pub hostname: String,
}

/// The pod's resolv.conf lines.
pub(super) fn dns_lines(config: &cri::PodSandboxConfig) -> Vec<String> {
    let Some(dns) = &config.dns_config else {
        return Vec::new();
    };
    let mut lines: Vec<String> = dns
        .servers
        .iter()
        .map(|s| format!("nameserver {s}"))
        .collect();
    if !dns.searches.is_empty() {
        lines.push(format!("search {}", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        lines.push(format!("options {}", dns.options.join(" ")));
    }
    lines
}

/// Writes the files into `shared` (the pod's shared dir on the host).
pub(super) fn write(
    shared: &Path,
    pod: &cri::PodSandboxConfig,
    pod_ips: &[IpAddr],
) -> Result<(), RuntimeError> {
    let dir = shared.join(POD_FILES);
    let io = |e: std::io::Error| {
        RuntimeError::Internal(format!("write pod files in {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let hostname = pod_hostname(pod);
    let mut hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string();
    // The pod's own name resolves to its pod IPs, as kubelet's hosts file has it; to
    // 127.0.1.1 when the pod has no network.
    if pod_ips.is_empty() {
        hosts.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for ip in pod_ips {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    let resolv: String = dns_lines(pod).iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("hosts"), hosts).map_err(io)?;
    std::fs::write(dir.join("resolv.conf"), resolv).map_err(io)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n")).map_err(io)
}

/// Guest paths of the files [`write`] made.
pub(super) fn guest_paths() -> PodFiles {
    let guest = |name: &str| format!("{GUEST_SHARED_DIR}/{POD_FILES}/{name}");
    PodFiles {
        hosts: guest("hosts"),
        resolv_conf: guest("resolv.conf"),
        hostname: guest("hostname"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            hostname: "web-0".into(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["ns.svc".into(), "svc".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn dns_config_becomes_resolv_conf_lines() {
        assert_eq!(
            dns_lines(&config()),
            [
                "nameserver 10.0.0.10",
                "search ns.svc svc",
                "options ndots:5"
            ]
        );
    }

    #[test]
    fn files_are_written_where_the_guest_paths_point() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &config(), &[]).unwrap();
        let on_host =
            |name: &str| std::fs::read_to_string(dir.path().join(POD_FILES).join(name)).unwrap();
        assert_eq!(on_host("hostname"), "web-0\n");
        assert!(on_host("hosts").contains("127.0.1.1\tweb-0"));
        let ips = ["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        write(dir.path(), &config(), &ips).unwrap();
        let hosts = on_host("hosts");
        assert!(
            hosts.contains("10.88.0.5\tweb-0\nfd00::5\tweb-0\n"),
            "{hosts}"
        );
        assert!(!hosts.contains("127.0.1.1"), "{hosts}");
        assert_eq!(
            on_host("resolv.conf"),
            "nameserver 10.0.0.10\nsearch ns.svc svc\noptions ndots:5\n"
        );
        assert_eq!(
            guest_paths().hosts,
            format!("{GUEST_SHARED_DIR}/.pod/hosts")
        );
    }
}
