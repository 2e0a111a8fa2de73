//! One plugin call, by the CNI spec's protocol: the plugin binary runs with `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` and `CNI_PATH` added to the
//! daemon's environment (each call its own: nothing process-wide changes) and its network
//! configuration on stdin; it prints a result (ADD) or nothing (DEL, CHECK), or an error object
//! and exits non-zero.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::result::PluginError;

/// The most a plugin may print (results are a few KiB).
const MAX_OUTPUT: u64 = 1 << 20;

/// The spec's verbs the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
        }
    }
}

/// Who the call is for: the same for every plugin of the list.
#[derive(Debug, Clone)]
pub struct Target {
    /// `CNI_CONTAINERID`: the pod sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's netns path.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface the plugins make in the netns.
    pub ifname: String,
    /// `CNI_ARGS`, as `KEY=VALUE` pairs joined with `;`.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where plugins find the plugins they delegate to (IPAM).
    pub path: Vec<PathBuf>,
}

/// A failed plugin call.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("CNI plugin {plugin} {verb}: start: {source}")]
    Spawn {
        plugin: String,
        verb: &'static str,
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {verb}: no answer within {secs} s")]
    Timeout {
        plugin: String,
        verb: &'static str,
        secs: u64,
    },
    #[error("CNI plugin {plugin} {verb} failed (code {}): {}{}", .error.code, .error.msg,
        if .error.details.is_empty() { String::new() } else { format!(" ({})", .error.details) })]
    Plugin {
        plugin: String,
        verb: &'static str,
        error: PluginError,
    },
    #[error("CNI plugin {plugin} {verb} exited with {status}: {output}")]
    Exited {
        plugin: String,
        verb: &'static str,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("CNI plugin {plugin} {verb}: {reason}")]
    Output {
        plugin: String,
        verb: &'static str,
        reason: String,
    },
}

/// Runs `binary` for `verb` with `conf` on stdin; returns what it printed (ADD's result),
/// `None` when it printed nothing.
pub async fn invoke(
    binary: &Path,
    verb: Verb,
    target: &Target,
    conf: &Value,
    timeout: Duration,
) -> Result<Option<Value>, InvokeError> {
    let plugin = binary.file_name().map_or_else(
        || binary.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let verb_name = verb.name();
    let spawn = |source| InvokeError::Spawn {
        plugin: plugin.clone(),
        verb: verb_name,
        source,
    };
    let args: Vec<String> = target
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let path = std::env::join_paths(&target.path).unwrap_or_default();
    let mut child = tokio::process::Command::new(binary)
        .env("CNI_COMMAND", verb_name)
        .env("CNI_CONTAINERID", &target.container_id)
        .env("CNI_NETNS", &target.netns)
        .env("CNI_IFNAME", &target.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn)?;
    let input = serde_json::to_vec(conf).unwrap_or_default();
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin may exit without reading its input; what it printed then tells.
            match stdin.write_all(&input).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                _ => {}
            }
        }
        let mut out = Vec::new();
        let mut err = Vec::new();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let read_out = async {
            if let Some(s) = stdout {
                s.take(MAX_OUTPUT).read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let read_err = async {
            if let Some(s) = stderr {
                s.take(MAX_OUTPUT).read_to_end(&mut err).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::try_join!(read_out, read_err)?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(timeout, run).await {
        Ok(done) => done.map_err(spawn)?,
        Err(_) => {
            return Err(InvokeError::Timeout {
                plugin,
                verb: verb_name,
                secs: timeout.as_secs(),
            })
        }
    };
    let empty = out.iter().all(u8::is_ascii_whitespace);
    if !status.success() {
        return Err(match serde_json::from_slice::<PluginError>(&out) {
            Ok(error) if !error.msg.is_empty() => InvokeError::Plugin {
                plugin,
                verb: verb_name,
                error,
            },
            _ => InvokeError::Exited {
                plugin,
                verb: verb_name,
                status,
                output: lossy_tail(if empty { &err } else { &out }),
            },
        });
    }
    if empty {
        return Ok(None);
    }
    serde_json::from_slice(&out)
        .map(Some)
        .map_err(|e| InvokeError::Output {
            plugin,
            verb: verb_name,
            reason: format!("output is not JSON ({e}): {}", lossy_tail(&out)),
        })
}

/// The last 500 bytes of a plugin's output, as text.
fn lossy_tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(500);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A plugin script (unit tests only: the end-to-end tests run the reference plugins).
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn target() -> Target {
        Target {
            container_id: "pod1".into(),
            netns: "/run/netns/pod1".into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAME".into(), "web".into()),
            ],
            path: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
        }
    }

    #[tokio::test]
    async fn the_protocol_env_and_stdin_reach_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let echo = script(
            dir.path(),
            "echo",
            r#"conf=$(cat); printf '{"cniVersion":"1.0.0","dns":{"domain":"%s|%s|%s|%s|%s|%s"},"conf":%s}' \
                "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" "$conf""#,
        );
        let conf = serde_json::json!({"type": "echo", "name": "n"});
        let out = invoke(&echo, Verb::Add, &target(), &conf, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            out["dns"]["domain"],
            "ADD|pod1|/run/netns/pod1|eth0|IgnoreUnknown=1;K8S_POD_NAME=web|/opt/cni/bin:/usr/lib/cni"
        );
        assert_eq!(out["conf"], conf);
        let quiet = script(dir.path(), "quiet", "cat >/dev/null");
        assert_eq!(
            invoke(&quiet, Verb::Del, &target(), &conf, Duration::from_secs(10))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn failures_name_the_plugin_and_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let conf = serde_json::json!({});
        let t = target();
        let secs = Duration::from_secs(10);
        let json = script(
            dir.path(),
            "json",
            r#"echo '{"code":11,"msg":"no IPs left","details":"pool full"}'; exit 1"#,
        );
        let e = invoke(&json, Verb::Add, &t, &conf, secs)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "CNI plugin json ADD failed (code 11): no IPs left (pool full)"
        );
        let plain = script(dir.path(), "plain", "echo boom >&2; exit 3");
        let e = invoke(&plain, Verb::Add, &t, &conf, secs)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("CNI plugin plain ADD exited with exit status: 3: boom"),
            "{e}"
        );
        let slow = script(dir.path(), "slow", "sleep 5");
        let e = invoke(&slow, Verb::Del, &t, &conf, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, InvokeError::Timeout { .. }), "{e}");
        let e = invoke(&dir.path().join("none"), Verb::Add, &t, &conf, secs)
            .await
            .unwrap_err();
        assert!(matches!(e, InvokeError::Spawn { .. }), "{e}");
    }
}
