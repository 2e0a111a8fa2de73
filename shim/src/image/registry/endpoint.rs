//! `[registry]` of the daemon config, as containerd and CRI-O users write it: mirrors per
//! registry host (tried in order, the host itself last) and hosts reached over plain http.
//!
//! ```toml
//! [registry]
//! insecure = ["registry.lan:5000"]
//! [registry.mirrors."docker.io"]
//! endpoint = ["http://127.0.0.1:5000", "https://mirror.gcr.io"]
//! ```
//! A mirror key `"*"` applies to every registry without mirrors of its own. An endpoint with
//! `http://` is plain http, one with `https://` TLS; without a scheme it is https unless the
//! host is listed in `insecure` or is a loopback address (as containerd does for localhost).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[registry]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registry hosts (`host[:port]`) spoken to over plain http.
    pub insecure: Vec<String>,
    /// Mirrors by registry host (`docker.io`, `registry.k8s.io`, or `*`).
    pub mirrors: BTreeMap<String, MirrorConfig>,
}

/// `[registry.mirrors."<host>"]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Mirror URLs or hosts, tried in order before the registry itself.
    pub endpoint: Vec<String>,
}

/// One place a pull may fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    pub plain_http: bool,
    /// A mirror rather than the image's own registry.
    pub mirror: bool,
}

impl Endpoint {
    /// `http://host` or `https://host`, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

impl RegistryConfig {
    /// Checks every endpoint; the error names the mirror key and position.
    pub fn validate(&self) -> Result<(), String> {
        for (registry, mirror) in &self.mirrors {
            for (i, endpoint) in mirror.endpoint.iter().enumerate() {
                split_endpoint(endpoint).map_err(|reason| {
                    format!("registry.mirrors.{registry:?}.endpoint[{i}] {endpoint:?}: {reason}")
                })?;
            }
        }
        for (i, host) in self.insecure.iter().enumerate() {
            if host.is_empty() || host.contains('/') {
                return Err(format!(
                    "registry.insecure[{i}] {host:?}: expected host[:port] without a scheme or path"
                ));
            }
        }
        Ok(())
    }

    /// The endpoints that serve `registry`, in the order to try them. Entries that fail to
    /// parse (caught by [`RegistryConfig::validate`] at load) are skipped.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mirrors = self
            .mirrors
            .get(registry)
            .or_else(|| self.mirrors.get("*"))
            .map(|m| m.endpoint.as_slice())
            .unwrap_or_default();
        let mut out: Vec<Endpoint> = mirrors
            .iter()
            .filter_map(|e| split_endpoint(e).ok())
            .map(|(scheme, host)| Endpoint {
                plain_http: self.plain_http(scheme, host),
                host: host.to_owned(),
                mirror: host != registry,
            })
            .collect();
        if !out.iter().any(|e| e.host == registry) {
            out.push(Endpoint {
                host: registry.to_owned(),
                plain_http: self.plain_http(None, registry),
                mirror: false,
            });
        }
        out
    }

    fn plain_http(&self, scheme: Option<&str>, host: &str) -> bool {
        match scheme {
            Some("http") => true,
            Some(_) => false,
            None => self.insecure.iter().any(|h| h == host) || is_loopback(host),
        }
    }
}

/// Splits `[scheme://]host[:port]` into its scheme and host.
fn split_endpoint(endpoint: &str) -> Result<(Option<&str>, &str), &'static str> {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
        Some(_) => return Err("the scheme must be http or https"),
        None => (None, endpoint),
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() {
        return Err("no host");
    }
    if host.contains('/') {
        return Err("a path after the host is not supported");
    }
    Ok((scheme, host))
}

/// Whether `host[:port]` is this machine's loopback (`localhost`, `127.0.0.0/8`, `[::1]`).
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> RegistryConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn mirrors_come_first_then_the_registry() {
        let c = config(
            r#"
            insecure = ["reg.lan:5000"]
            [mirrors."docker.io"]
            endpoint = ["http://127.0.0.1:5001", "mirror.example", "https://m2.example:8443/"]
            [mirrors."*"]
            endpoint = ["http://catchall:5000"]
            "#,
        );
        c.validate().unwrap();
        let hosts: Vec<(String, bool, bool)> = c
            .endpoints("docker.io")
            .into_iter()
            .map(|e| (e.host, e.plain_http, e.mirror))
            .collect();
        assert_eq!(
            hosts,
            [
                ("127.0.0.1:5001".into(), true, true),
                ("mirror.example".into(), false, true),
                ("m2.example:8443".into(), false, true),
                ("docker.io".into(), false, false),
            ]
        );
        let other = c.endpoints("quay.io");
        assert_eq!(other[0].host, "catchall:5000");
        assert_eq!(other[1].host, "quay.io");
        let insecure = c.endpoints("reg.lan:5000");
        assert!(insecure.last().unwrap().plain_http);
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        let c = RegistryConfig::default();
        for host in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            let e = c.endpoints(host);
            assert_eq!(e.len(), 1);
            assert!(e[0].plain_http, "{host}");
            assert!(!e[0].mirror);
        }
        assert!(!c.endpoints("registry.k8s.io")[0].plain_http);
    }

    #[test]
    fn bad_endpoints_are_named() {
        let c = config(
            r#"
            [mirrors."docker.io"]
            endpoint = ["ok.example", "ftp://x"]
            "#,
        );
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("registry.mirrors.\"docker.io\".endpoint[1]"),
            "{err}"
        );
        assert!(err.contains("http or https"), "{err}");
        let c = config(r#"mirrors."docker.io".endpoint = ["https://m.example/v2/prefix"]"#);
        assert!(c.validate().unwrap_err().contains("path"));
        let c = config(r#"insecure = ["http://x"]"#);
        assert!(c.validate().unwrap_err().contains("registry.insecure[0]"));
    }
}
