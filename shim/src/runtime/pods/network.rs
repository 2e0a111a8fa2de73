//! A pod's network, as containerd's CRI plugin makes it: a namespace pinned under the state
//! dir, created before the VM, and the pod's CNI attachment there (ADD with the pod's
//! identity in `CNI_ARGS`, its host ports, DNS and bandwidth as `runtimeConfig`), cached so DEL
//! runs with the same configuration after a daemon restart. StopPodSandbox runs DEL,
//! RemovePodSandbox unpins the namespace; a failed RunPodSandbox undoes both; an adopted pod
//! gets a CNI CHECK.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use vessel_protocols::cri;

use crate::network::cni::attach::{self, AttachError};
use crate::network::cni::invoke::Target;
use crate::network::cni::result::CniResult;
use crate::network::netns::{NetNs, NetnsError};
use crate::network::CniConfig;
use crate::pod_vm::{VmNetwork, VmRoute};

/// The pod interface's name in the pod's namespace.
pub const POD_IFNAME: &str = "eth0";

/// Where pods' networks are made.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    pub cni: CniConfig,
    /// Pinned namespaces, one per pod (`<state>/netns`).
    pub netns_dir: PathBuf,
    /// CNI attachment caches (`<root>/cni/results`, which outlives a reboot as libcni's).
    pub cache_dir: PathBuf,
}

/// The pod annotations kubelet's bandwidth limits come in (bits per second, as quantities).
const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error("the pod network is not ready: {0}")]
    NotReady(String),
    #[error("invalid config.annotations[{annotation:?}] {value:?}: {reason}")]
    Bandwidth {
        annotation: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("pod network namespace: {0}")]
    Netns(#[from] NetnsError),
    #[error("pod network: {0}")]
    Cni(#[from] AttachError),
}

/// What a pod's record keeps of its network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodNetworkRecord {
    /// The pinned namespace; unpinned by RemovePodSandbox.
    pub netns: PathBuf,
    /// The CNI attachment cache, until DEL ran.
    pub attachment: Option<PathBuf>,
    /// The pod's addresses, the first one being the pod IP.
    pub ips: Vec<String>,
}

/// `CNI_ARGS`: the reference plugins refuse unknown keys without `IgnoreUnknown`.
fn cni_args(pod_id: &str, meta: &cri::PodSandboxMetadata) -> Vec<(String, String)> {
    [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", meta.namespace.as_str()),
        ("K8S_POD_NAME", meta.name.as_str()),
        ("K8S_POD_INFRA_CONTAINER_ID", pod_id),
        ("K8S_POD_UID", meta.uid.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A Kubernetes quantity in bits per second (`10M`, `1Gi`, `500k`, `1e6`…), as kubelet's
/// bandwidth annotations give it, between 1 kbit and 1 Pbit as kubelet requires.
fn bandwidth(annotation: &'static str, value: &str) -> Result<u64, PodNetworkError> {
    let invalid = |reason| PodNetworkError::Bandwidth {
        annotation,
        value: value.to_owned(),
        reason,
    };
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid("not a quantity"))?;
    let factor = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| invalid("not a quantity"))?;
            10f64.powi(exp)
        }
        _ => return Err(invalid("not a quantity")),
    };
    let bits = (number * factor).ceil();
    if bits < 1e3 {
        return Err(invalid("below 1k bits per second"));
    }
    if bits > 1e15 {
        return Err(invalid("above 1P bits per second"));
    }
    Ok(bits as u64)
}

/// `runtimeConfig` by capability: host ports, DNS and bandwidth, as containerd passes them
/// (no burst limit: containerd's).
fn runtime_config(config: &cri::PodSandboxConfig) -> Result<Map<String, Value>, PodNetworkError> {
    let mut rc = Map::new();
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol,
                "hostIP": p.host_ip,
            })
        })
        .collect();
    if !ports.is_empty() {
        rc.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(dns) = &config.dns_config {
        rc.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    let mut limits = Map::new();
    for (annotation, rate, burst) in [
        (INGRESS_BANDWIDTH, "ingressRate", "ingressBurst"),
        (EGRESS_BANDWIDTH, "egressRate", "egressBurst"),
    ] {
        if let Some(value) = config.annotations.get(annotation) {
            limits.insert(rate.into(), json!(bandwidth(annotation, value)?));
            limits.insert(burst.into(), json!(u32::MAX));
        }
    }
    if !limits.is_empty() {
        rc.insert("bandwidth".into(), Value::Object(limits));
    }
    Ok(rc)
}

/// The guest's side of a CNI result: the pod interface's addresses and the routes, a route
/// without a gateway taking that of the first address of its family.
pub fn vm_network(netns: &Path, result: &CniResult) -> VmNetwork {
    let ips = result.pod_ips();
    let gateway_for = |dst: &ipnet::IpNet| {
        ips.iter()
            .filter(|ip| ip.address.addr().is_ipv4() == dst.addr().is_ipv4())
            .find_map(|ip| ip.gateway)
    };
    VmNetwork {
        netns: netns.to_owned(),
        ifname: POD_IFNAME.into(),
        addresses: ips.iter().map(|ip| ip.address).collect(),
        routes: result
            .routes
            .iter()
            .map(|r| VmRoute {
                dest: Some(r.dst),
                gateway: r.gw.or_else(|| gateway_for(&r.dst)),
            })
            .collect(),
    }
}

/// Pins the pod's namespace and attaches it to the pod network. On failure nothing of
/// either is left.
pub async fn attach(
    settings: &NetworkSettings,
    pod_id: &str,
    config: &cri::PodSandboxConfig,
) -> Result<(PodNetworkRecord, VmNetwork), PodNetworkError> {
    let runtime_config = runtime_config(config)?;
    let list = settings
        .cni
        .load()
        .map_err(|e| PodNetworkError::NotReady(e.to_string()))?;
    let netns = NetNs::create(&settings.netns_dir.join(pod_id))?;
    let meta = config.metadata.clone().unwrap_or_default();
    let target = Target {
        container_id: pod_id.to_owned(),
        netns: netns.path().to_owned(),
        ifname: POD_IFNAME.into(),
        args: cni_args(pod_id, &meta),
        path: settings.cni.bin_dirs.clone(),
    };
    let attached = async {
        let attachment = attach::add(&list, &target, runtime_config).await?;
        let result = attachment.result()?;
        match attach::save(&settings.cache_dir, &attachment) {
            Ok(cache) => Ok((cache, result)),
            Err(e) => {
                let _ = attach::del(&attachment, &settings.cni.bin_dirs).await;
                Err(e)
            }
        }
    };
    match attached.await {
        Ok((cache, result)) => {
            let ips: Vec<String> = result
                .pod_ips()
                .iter()
                .map(|ip| ip.address.addr().to_string())
                .collect();
            tracing::info!(pod_id, network = %list.name, ?ips, "pod attached to the pod network");
            let vm = vm_network(netns.path(), &result);
            let record = PodNetworkRecord {
                netns: netns.path().to_owned(),
                attachment: Some(cache),
                ips,
            };
            Ok((record, vm))
        }
        Err(e) => {
            if let Err(undo) = netns.remove() {
                tracing::warn!(pod_id, error = %undo, "unpin the namespace of a failed attach");
            }
            Err(e.into())
        }
    }
}

/// CNI DEL from the cache, then the cache is deleted. Done already (no cache) is fine, so
/// this may run again after a failure or a restart.
pub async fn detach(
    settings: &NetworkSettings,
    pod_id: &str,
    record: &PodNetworkRecord,
) -> Result<(), PodNetworkError> {
    let Some(cache) = &record.attachment else {
        return Ok(());
    };
    if !cache.exists() {
        return Ok(());
    }
    let attachment = attach::load(cache)?;
    attach::del(&attachment, &settings.cni.bin_dirs).await?;
    if let Err(e) = std::fs::remove_file(cache) {
        tracing::warn!(pod_id, cache = %cache.display(), error = %e, "remove the CNI cache");
    }
    tracing::info!(pod_id, "pod detached from the pod network");
    Ok(())
}

/// CHECK of an adopted pod's attachment after a daemon restart. What it finds is logged: the
/// pod keeps running either way (kubelet decides about pods, not the runtime).
pub async fn check(settings: &NetworkSettings, pod_id: &str, record: &PodNetworkRecord) {
    let Some(cache) = &record.attachment else {
        return;
    };
    let checked = async {
        let attachment = attach::load(cache)?;
        attach::check(&attachment, &settings.cni.bin_dirs).await
    };
    match checked.await {
        Ok(true) => tracing::debug!(pod_id, "CNI CHECK passed"),
        Ok(false) => {}
        Err(e) => tracing::warn!(pod_id, error = %e, "CNI CHECK of an adopted pod failed"),
    }
}

/// Unpins the pod's namespace (RemovePodSandbox).
pub fn unpin(record: &PodNetworkRecord) -> Result<(), PodNetworkError> {
    Ok(NetNs::at(&record.netns).remove()?)
}

/// The pod IP and the others, as PodSandboxStatus reports them.
pub fn status(record: Option<&PodNetworkRecord>) -> cri::PodSandboxNetworkStatus {
    let ips = record.map(|r| r.ips.as_slice()).unwrap_or_default();
    cri::PodSandboxNetworkStatus {
        ip: ips.first().cloned().unwrap_or_default(),
        additional_ips: ips
            .iter()
            .skip(1)
            .map(|ip| cri::PodIp { ip: ip.clone() })
            .collect(),
    }
}

/// The pod's addresses for its /etc/hosts.
pub fn host_entries(record: Option<&PodNetworkRecord>) -> Vec<IpAddr> {
    record
        .map(|r| r.ips.iter().filter_map(|ip| ip.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_identity_host_ports_and_dns_are_passed() {
        let meta = cri::PodSandboxMetadata {
            name: "web".into(),
            namespace: "prod".into(),
            uid: "u1".into(),
            attempt: 0,
        };
        let args = cni_args("p1", &meta);
        assert_eq!(args[0], ("IgnoreUnknown".into(), "1".into()));
        assert!(args.contains(&("K8S_POD_INFRA_CONTAINER_ID".into(), "p1".into())));
        assert!(args.contains(&("K8S_POD_UID".into(), "u1".into())));
        let config = cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
                cri::PortMapping {
                    container_port: 80,
                    ..Default::default()
                },
            ],
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.0.0.10".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let rc = runtime_config(&config).unwrap();
        assert_eq!(
            rc["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""}]),
            "only mapped ports"
        );
        assert_eq!(rc["dns"]["servers"], json!(["10.0.0.10"]));
        assert!(runtime_config(&cri::PodSandboxConfig::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bandwidth_annotations_become_rates_and_bad_ones_are_named() {
        let mut config = cri::PodSandboxConfig::default();
        config
            .annotations
            .insert(INGRESS_BANDWIDTH.into(), "10M".into());
        config
            .annotations
            .insert(EGRESS_BANDWIDTH.into(), "1Mi".into());
        let rc = runtime_config(&config).unwrap();
        assert_eq!(
            rc["bandwidth"],
            json!({"ingressRate": 10_000_000u64, "ingressBurst": u32::MAX,
                   "egressRate": 1_048_576u64, "egressBurst": u32::MAX})
        );
        assert_eq!(bandwidth(INGRESS_BANDWIDTH, "1.5k").unwrap(), 1500);
        assert_eq!(bandwidth(INGRESS_BANDWIDTH, "2e6").unwrap(), 2_000_000);
        for bad in ["", "fast", "10X", "999", "2P", "-1M"] {
            let err = bandwidth(EGRESS_BANDWIDTH, bad).unwrap_err().to_string();
            assert!(err.contains("kubernetes.io/egress-bandwidth"), "{err}");
        }
    }

    #[test]
    fn routes_without_a_gateway_take_the_addresses_one() {
        let result: CniResult = serde_json::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "vessel0"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [
                {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1},
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 1}
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "10.9.0.0/16", "gw": "10.88.0.9"}]
        }))
        .unwrap();
        let net = vm_network(Path::new("/run/vessel/netns/p1"), &result);
        assert_eq!(net.addresses.len(), 2);
        let gateways: Vec<String> = net
            .routes
            .iter()
            .map(|r| r.gateway.unwrap().to_string())
            .collect();
        assert_eq!(gateways, ["10.88.0.1", "fd00::1", "10.88.0.9"]);
        let status = status(Some(&PodNetworkRecord {
            netns: "/x".into(),
            attachment: None,
            ips: vec!["10.88.0.5".into(), "fd00::5".into()],
        }));
        assert_eq!(status.ip, "10.88.0.5");
        assert_eq!(status.additional_ips[0].ip, "fd00::5");
    }
}
