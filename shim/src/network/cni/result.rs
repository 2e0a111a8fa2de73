//! What a plugin answers: an ADD's result (spec 0.3.x, 0.4.0 and 1.0.0 share its shape; 1.0.0
//! drops each IP's `version`) read into one form, and the error object of a failed call. The
//! raw result is kept too: it is the next plugin's `prevResult`, passed on unchanged.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An ADD's result.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

/// An interface the plugins made; `sandbox` (the netns path) is set for the pod's own.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub sandbox: String,
}

/// An address, with the index of its interface in `interfaces`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// The error object a failing plugin prints.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct PluginError {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl CniResult {
    /// Reads a result; `Err` says what does not fit.
    pub fn parse(raw: &Value) -> Result<Self, String> {
        Self::deserialize(raw).map_err(|e| e.to_string())
    }

    /// The addresses on the interface inside the pod's netns (`sandbox` set), or, where the
    /// result names no interfaces, every address.
    pub fn pod_ips(&self) -> Vec<&IpConfig> {
        self.ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self
                    .interfaces
                    .get(i)
                    .is_some_and(|it| !it.sandbox.is_empty()),
                None => true,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_every_supported_version_read_alike() {
        let v1 = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "vessel0", "mac": "aa:bb:cc:00:00:01"},
                {"name": "veth1", "mac": "aa:bb:cc:00:00:02"},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/run/netns/p"}
            ],
            "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let v04 = serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/run/netns/p"}],
            "ips": [
                {"version": "4", "address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 0},
                {"version": "6", "address": "fd00::5/64", "interface": 0}
            ]
        });
        let r1 = CniResult::parse(&v1).unwrap();
        let r04 = CniResult::parse(&v04).unwrap();
        assert_eq!(r1.pod_ips().len(), 1);
        assert_eq!(r1.pod_ips()[0].address.to_string(), "10.88.0.5/16");
        assert_eq!(r1.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r04.pod_ips().len(), 2);
        assert_eq!(r04.pod_ips()[1].address.addr().to_string(), "fd00::5");
        let bad = serde_json::json!({"ips": [{"address": "10.88.0.500/16"}]});
        assert!(CniResult::parse(&bad).is_err());
    }
}
