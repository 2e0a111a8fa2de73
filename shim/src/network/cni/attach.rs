//! A pod's attachment to the pod network: ADD runs the list's plugins in order, each given the
//! previous one's result as `prevResult`; DEL runs them in reverse; CHECK (spec 0.4.0 on)
//! asks each, in order, whether what it set up is still there. What ADD used and got is
//! cached on disk (as libcni caches under /var/lib/cni/results), so a DEL after a daemon
//! restart, or after the conf dir changed, runs with the same configuration and result.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::{declared_capabilities, find_plugin, NetworkConfigList};
use super::invoke::{invoke, InvokeError, Target, Verb};
use super::result::CniResult;

/// How long one plugin call may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Plugin(#[from] InvokeError),
    #[error("CNI network {network}: the result of the last plugin: {reason}")]
    Result { network: String, reason: String },
    #[error("CNI network {network}: plugin {plugin:?} not found in the bin dirs")]
    MissingPlugin { network: String, plugin: String },
    #[error("CNI result cache {path}: {reason}")]
    Cache { path: PathBuf, reason: String },
}

/// What ADD used and got, kept until DEL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub network_name: String,
    pub cni_version: String,
    /// The plugins' configuration objects, in list order.
    pub plugins: Vec<Map<String, Value>>,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    /// `runtimeConfig` values by capability name (`portMappings`, `dns`, `bandwidth`).
    pub runtime_config: Map<String, Value>,
    /// The list's `disableCheck`.
    #[serde(default)]
    pub disable_check: bool,
    /// The last plugin's result as it printed it.
    pub result: Value,
}

impl Attachment {
    /// The result, read.
    pub fn result(&self) -> Result<CniResult, AttachError> {
        CniResult::parse(&self.result).map_err(|reason| AttachError::Result {
            network: self.network_name.clone(),
            reason,
        })
    }

    /// One plugin of the cached list for `verb` (DEL, CHECK), given the cached result as
    /// `prevResult` and the runtime config it declared capabilities for.
    async fn call(
        &self,
        conf: &Map<String, Value>,
        verb: Verb,
        target: &Target,
    ) -> Result<Option<Value>, AttachError> {
        let plugin_type = conf.get("type").and_then(Value::as_str).unwrap_or_default();
        let binary =
            find_plugin(&target.path, plugin_type).ok_or_else(|| AttachError::MissingPlugin {
                network: self.network_name.clone(),
                plugin: plugin_type.to_owned(),
            })?;
        let prev = (!self.result.is_null()).then_some(&self.result);
        let input = plugin_input(
            conf,
            &self.network_name,
            &self.cni_version,
            prev,
            &self.runtime_config,
        );
        Ok(invoke(&binary, verb, target, &input, PLUGIN_TIMEOUT).await?)
    }

    fn target(&self, bin_dirs: &[PathBuf]) -> Target {
        Target {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self.args.clone(),
            path: bin_dirs.to_vec(),
        }
    }
}

/// The configuration plugin `conf` is called with: its own object plus the list's name and
/// version, the previous result, and the runtime config it declared capabilities for.
fn plugin_input(
    conf: &Map<String, Value>,
    name: &str,
    version: &str,
    prev: Option<&Value>,
    runtime_config: &Map<String, Value>,
) -> Value {
    let mut input = conf.clone();
    input.insert("name".into(), Value::String(name.into()));
    input.insert("cniVersion".into(), Value::String(version.into()));
    if let Some(prev) = prev {
        input.insert("prevResult".into(), prev.clone());
    }
    // The cached confs passed the list's checks when ADD ran: a bad value means none.
    let declared = declared_capabilities(conf).unwrap_or_default();
    let runtime: Map<String, Value> = runtime_config
        .iter()
        .filter(|(cap, _)| declared.contains(*cap))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !runtime.is_empty() {
        input.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    Value::Object(input)
}

/// ADD: runs every plugin of `list` for `target`. On failure the plugins that ran are undone
/// with DEL, so nothing (addresses, leases, rules) stays.
pub async fn add(
    list: &NetworkConfigList,
    target: &Target,
    runtime_config: Map<String, Value>,
) -> Result<Attachment, AttachError> {
    let mut attachment = Attachment {
        network_name: list.name.clone(),
        cni_version: list.cni_version.clone(),
        plugins: list.plugins.iter().map(|p| p.conf.clone()).collect(),
        container_id: target.container_id.clone(),
        netns: target.netns.clone(),
        ifname: target.ifname.clone(),
        args: target.args.clone(),
        runtime_config,
        disable_check: list.disable_check,
        result: Value::Null,
    };
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let input = plugin_input(
            &plugin.conf,
            &list.name,
            &list.cni_version,
            prev.as_ref(),
            &attachment.runtime_config,
        );
        match invoke(&plugin.binary, Verb::Add, target, &input, PLUGIN_TIMEOUT).await {
            Ok(Some(result)) => prev = Some(result),
            Ok(None) => {}
            Err(e) => {
                attachment.result = prev.unwrap_or(Value::Null);
                if let Err(undo) = del(&attachment, &target.path).await {
                    tracing::warn!(pod_id = %target.container_id, error = %undo, "undo a failed CNI ADD");
                }
                return Err(e.into());
            }
        }
    }
    attachment.result = prev.unwrap_or(Value::Null);
    attachment.result()?;
    Ok(attachment)
}

/// DEL: runs the plugins in reverse with the cached configuration and result. Plugins treat a
/// DEL of what is already gone as success, so this may run again.
pub async fn del(attachment: &Attachment, bin_dirs: &[PathBuf]) -> Result<(), AttachError> {
    let target = attachment.target(bin_dirs);
    let mut first_error = None;
    for conf in attachment.plugins.iter().rev() {
        // Every plugin gets its DEL even when one fails: each releases its own part.
        if let Err(e) = attachment.call(conf, Verb::Del, &target).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// CHECK: each plugin in list order, given the cached result. Not run (`Ok(false)`) for a
/// list of spec 0.3.x, which has no CHECK, or one that disables it.
pub async fn check(attachment: &Attachment, bin_dirs: &[PathBuf]) -> Result<bool, AttachError> {
    if attachment.disable_check || attachment.cni_version.starts_with("0.3.") {
        return Ok(false);
    }
    let target = attachment.target(bin_dirs);
    for conf in &attachment.plugins {
        attachment.call(conf, Verb::Check, &target).await?;
    }
    Ok(true)
}

/// The cache file of one attachment: `<dir>/<network>-<container id>-<ifname>`, as libcni
/// names them.
pub fn cache_path(dir: &Path, attachment: &Attachment) -> PathBuf {
    dir.join(format!(
        "{}-{}-{}",
        attachment.network_name, attachment.container_id, attachment.ifname
    ))
}

/// Writes the cache file (atomically: a torn file would lose the DEL's configuration).
pub fn save(dir: &Path, attachment: &Attachment) -> Result<PathBuf, AttachError> {
    let path = cache_path(dir, attachment);
    let cache = |reason: String| AttachError::Cache {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| cache(e.to_string()))?;
    let json = serde_json::to_vec(attachment).map_err(|e| cache(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).map_err(|e| cache(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| cache(e.to_string()))?;
    Ok(path)
}

/// Reads a cache file.
pub fn load(path: &Path) -> Result<Attachment, AttachError> {
    let cache = |reason: String| AttachError::Cache {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| cache(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| cache(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::network::cni::config;
    use crate::network::netns::NetNs;

    /// A plugin script that appends "<type> <verb> <prevResult's marker>" to `log` and answers
    /// with its own marker (unit tests only: the end-to-end tests run the reference plugins).
    fn plugin(dir: &Path, name: &str, log: &Path, fail_add: bool) {
        let fail = if fail_add {
            r#"[ "$CNI_COMMAND" = ADD ] && { echo '{"code":7,"msg":"no"}'; exit 1; }"#
        } else {
            ""
        };
        let body = format!(
            r#"#!/bin/sh
in=$(cat)
prev=$(printf '%s' "$in" | sed -n 's/.*"prevResult":{{[^}}]*"domain":"\([^"]*\)".*/\1/p')
rc=$(printf '%s' "$in" | grep -c runtimeConfig)
echo "{name} $CNI_COMMAND ${{prev:-none}} $rc" >> {log}
{fail}
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.0.0","dns":{{"domain":"{name}"}}}}'
exit 0
"#,
            log = log.display()
        );
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn list(bin: &Path, types: &[&str]) -> NetworkConfigList {
        let plugins: Vec<String> = types
            .iter()
            .map(|t| {
                format!(
                    r#"{{"type":"{t}","capabilities":{{"portMappings":{}}}}}"#,
                    *t == "b"
                )
            })
            .collect();
        let text = format!(
            r#"{{"cniVersion":"1.0.0","name":"net","plugins":[{}]}}"#,
            plugins.join(",")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10.conflist"), text).unwrap();
        config::load(dir.path(), &[bin.to_owned()]).unwrap()
    }

    fn target(bin: &Path) -> Target {
        Target {
            container_id: "pod1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![],
            path: vec![bin.to_owned()],
        }
    }

    #[tokio::test]
    async fn results_chain_and_del_runs_in_reverse_from_the_cache() {
        let bin = tempfile::tempdir().unwrap();
        let log = bin.path().join("log");
        for name in ["a", "b"] {
            plugin(bin.path(), name, &log, false);
        }
        let mut rc = Map::new();
        rc.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 8080}]),
        );
        let attached = add(&list(bin.path(), &["a", "b"]), &target(bin.path()), rc)
            .await
            .unwrap();
        assert_eq!(attached.result().unwrap().dns.domain, "b");
        let cache = tempfile::tempdir().unwrap();
        let path = save(cache.path(), &attached).unwrap();
        assert!(path.ends_with("net-pod1-eth0"));
        let cached = load(&path).unwrap();
        assert!(check(&cached, &[bin.path().to_owned()]).await.unwrap());
        del(&cached, &[bin.path().to_owned()]).await.unwrap();
        let calls = std::fs::read_to_string(&log).unwrap();
        // Only b declared portMappings; CHECK and DEL get the cached final result, CHECK in
        // list order, DEL in reverse.
        assert_eq!(
            calls,
            "a ADD none 0\nb ADD a 1\na CHECK b 0\nb CHECK b 1\nb DEL b 1\na DEL b 0\n"
        );
        let mut old = cached;
        old.cni_version = "0.3.1".into();
        assert!(
            !check(&old, &[bin.path().to_owned()]).await.unwrap(),
            "0.3.x has no CHECK"
        );
    }

    #[tokio::test]
    async fn a_failed_add_undoes_the_plugins_that_ran() {
        let bin = tempfile::tempdir().unwrap();
        let log = bin.path().join("log");
        plugin(bin.path(), "a", &log, false);
        plugin(bin.path(), "b", &log, true);
        let e = add(
            &list(bin.path(), &["a", "b"]),
            &target(bin.path()),
            Map::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "CNI plugin b ADD failed (code 7): no");
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls, "a ADD none 0\nb ADD a 0\nb DEL a 0\na DEL a 0\n");
    }

    /// The reference bridge and host-local plugins, in a namespace of the test's own (their
    /// bridge and veth never touch the host's): ADD gives the pod's interface an address,
    /// DEL takes it and its lease back.
    #[test]
    fn reference_plugins_attach_and_release_a_pod() {
        let plugins = Path::new("/usr/lib/cni");
        if !nix::unistd::Uid::effective().is_root() || !plugins.join("bridge").is_file() {
            eprintln!("SKIPPED reference_plugins_attach_and_release_a_pod: needs root and /usr/lib/cni (scripts/setup.sh)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("leases");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(
            conf.join("10-test.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"vtest","plugins":[{{"type":"bridge",
                "bridge":"vtest0","isGateway":true,"ipam":{{"type":"host-local",
                "ranges":[[{{"subnet":"10.211.0.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],
                "dataDir":{:?}}}}}]}}"#,
                leases.display().to_string()
            ),
        )
        .unwrap();
        let list = config::load(&conf, &[plugins.to_owned()]).unwrap();
        /// Unpins the test's namespaces even when an assertion fails.
        struct Pinned(Vec<NetNs>);
        impl Drop for Pinned {
            fn drop(&mut self) {
                self.0.iter().for_each(|ns| drop(ns.remove()));
            }
        }
        let host = NetNs::create(&dir.path().join("host")).unwrap();
        let pod = NetNs::create(&dir.path().join("pod")).unwrap();
        let _pinned = Pinned(vec![host.clone(), pod.clone()]);
        let target = Target {
            container_id: "pod1".into(),
            netns: pod.path().to_owned(),
            ifname: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            path: vec![plugins.to_owned()],
        };
        // Plugins start from a thread inside `host`, so they run there.
        let run = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>| {
            host.run(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f)
            })
            .unwrap()
        };
        let mut attached = None;
        run(Box::pin(async {
            attached = Some(add(&list, &target, Map::new()).await.unwrap());
        }));
        let attached = attached.unwrap();
        let result = attached.result().unwrap();
        let ips = result.pod_ips();
        assert_eq!(ips.len(), 1, "{result:?}");
        assert!(
            ips[0].address.to_string().starts_with("10.211.0."),
            "{result:?}"
        );
        let dev = |ns: &NetNs| {
            ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
                .unwrap()
        };
        assert!(
            dev(&pod).contains("eth0:"),
            "the pod's interface is in its netns"
        );
        assert!(
            dev(&host).contains("vtest0:"),
            "the bridge is in the test's netns"
        );
        let lease = leases.join("vtest").join(ips[0].address.addr().to_string());
        assert!(lease.is_file(), "host-local keeps a lease file");
        run(Box::pin(async {
            del(&attached, &[plugins.to_owned()]).await.unwrap();
            // Again: DEL of what is gone succeeds.
            del(&attached, &[plugins.to_owned()]).await.unwrap();
        }));
        assert!(!lease.exists(), "DEL released the lease");
    }
}
