//! The pod network's configuration list: the lexically first `.conflist`, `.conf` or `.json`
//! file of the conf dir (a single plugin's `.conf`/`.json` becomes a list of one, as libcni's
//! ConfListFromConf makes it), checked as libcni checks it, with every plugin it names found
//! as an executable in the bin dirs. Errors say which file and what is missing: they are the
//! NetworkReady message kubelet shows.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The CNI spec versions whose configurations and results this runtime speaks.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The largest configuration file read (they are a few hundred bytes).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why there is no usable pod network.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("read CNI conf dir {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no network config (.conflist, .conf or .json) in {0}")]
    Empty(PathBuf),
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: plugin {plugin:?} not found in {dirs}")]
    MissingPlugin {
        path: PathBuf,
        plugin: String,
        dirs: String,
    },
}

/// One plugin of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// `type`: the plugin binary's name.
    pub plugin_type: String,
    /// Where the binary was found.
    pub binary: PathBuf,
    /// The `runtimeConfig` keys it declares (`capabilities` set to true): `portMappings`,
    /// `dns`, `bandwidth`…
    pub capabilities: BTreeSet<String>,
    /// Its configuration object as written (name, cniVersion and prevResult are added at
    /// each call).
    pub conf: Map<String, Value>,
}

/// The pod network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The file it came from.
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    /// `disableCheck`: CHECK is not run for this network.
    pub disable_check: bool,
    pub plugins: Vec<PluginConf>,
}

/// Loads the conf dir's first configuration and finds its plugins in `bin_dirs`.
pub fn load(conf_dir: &Path, bin_dirs: &[PathBuf]) -> Result<NetworkConfigList, ConfError> {
    let path = first_file(conf_dir)?;
    let text = read_limited(&path)?;
    let mut list = parse(&path, &text)?;
    for plugin in &mut list.plugins {
        plugin.binary =
            find_plugin(bin_dirs, &plugin.plugin_type).ok_or_else(|| ConfError::MissingPlugin {
                path: path.clone(),
                plugin: plugin.plugin_type.clone(),
                dirs: bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
    }
    Ok(list)
}

/// The lexically first configuration file of `dir`.
fn first_file(dir: &Path) -> Result<PathBuf, ConfError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfError::ReadDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str());
            matches!(ext, Some("conflist" | "conf" | "json")) && p.is_file()
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| ConfError::Empty(dir.to_owned()))
}

fn read_limited(path: &Path) -> Result<String, ConfError> {
    let read = |source| ConfError::Read {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfError::Invalid {
            path: path.to_owned(),
            reason: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(text)
}

/// Parses and checks a configuration file's text: a list in a `.conflist`, one plugin's
/// configuration in a `.conf` or `.json`.
pub fn parse(path: &Path, text: &str) -> Result<NetworkConfigList, ConfError> {
    let invalid = |reason: String| ConfError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let Value::Object(mut top) = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?
    else {
        return Err(invalid("not a JSON object".into()));
    };
    let plugins = if path.extension().is_some_and(|e| e == "conflist") {
        match top.remove("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list,
            Some(Value::Array(_)) => return Err(invalid("\"plugins\" is empty".into())),
            _ => return Err(invalid("\"plugins\" is missing or not a list".into())),
        }
    } else if top.contains_key("type") {
        vec![Value::Object(top.clone())]
    } else {
        return Err(invalid(
            "no \"type\": one plugin's config needs one (a list belongs in a .conflist)".into(),
        ));
    };
    let name = string_field(&top, "name").map_err(&invalid)?;
    check_name(&name).map_err(&invalid)?;
    let cni_version = string_field(&top, "cniVersion").map_err(&invalid)?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(invalid(format!(
            "cniVersion {cni_version:?} is not supported ({})",
            SUPPORTED_VERSIONS.join(", ")
        )));
    }
    let disable_check = matches!(top.get("disableCheck"), Some(Value::Bool(true)));
    let plugins = plugins
        .into_iter()
        .enumerate()
        .map(|(i, p)| plugin(p).map_err(|reason| invalid(format!("plugins[{i}]: {reason}"))))
        .collect::<Result<_, _>>()?;
    Ok(NetworkConfigList {
        path: path.to_owned(),
        name,
        cni_version,
        disable_check,
        plugins,
    })
}

fn plugin(value: Value) -> Result<PluginConf, String> {
    let Value::Object(conf) = value else {
        return Err("not a JSON object".into());
    };
    let plugin_type = string_field(&conf, "type")?;
    // The type names a binary in the bin dirs, never a path elsewhere.
    if plugin_type == "."
        || plugin_type == ".."
        || !plugin_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!("type {plugin_type:?} is not a plugin name"));
    }
    let capabilities = declared_capabilities(&conf)?;
    Ok(PluginConf {
        plugin_type,
        binary: PathBuf::new(),
        capabilities,
        conf,
    })
}

/// The `runtimeConfig` keys a plugin's configuration declares (`capabilities` set to true).
pub fn declared_capabilities(conf: &Map<String, Value>) -> Result<BTreeSet<String>, String> {
    match conf.get("capabilities") {
        None => Ok(BTreeSet::new()),
        Some(Value::Object(caps)) => Ok(caps
            .iter()
            .filter(|(_, on)| matches!(on, Value::Bool(true)))
            .map(|(name, _)| name.clone())
            .collect()),
        Some(_) => Err("\"capabilities\" is not an object".into()),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("{key:?} is empty")),
        Some(_) => Err(format!("{key:?} is not a string")),
        None => Err(format!("{key:?} is missing")),
    }
}

/// The spec's network name rule: a letter or digit, then letters, digits, `_`, `.` or `-`.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(format!("network name {name:?} is not valid"))
    }
}

/// The first executable file named `plugin` in `dirs`.
pub fn find_plugin(dirs: &[PathBuf], plugin: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(plugin)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"vessel","plugins":[
        {"type":"bridge","bridge":"vessel0","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}},
        {"type":"portmap","capabilities":{"portMappings":true,"other":false}}]}"#;

    fn plugins(dir: &Path, names: &[&str]) {
        for name in names {
            let path = dir.join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn the_shipped_single_node_config_parses() {
        let path = Path::new("deploy/cni/10-vessel.conflist");
        let list = parse(
            path,
            include_str!("../../../../deploy/cni/10-vessel.conflist"),
        )
        .unwrap();
        assert_eq!(list.name, "vessel");
        let types: Vec<&str> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        let caps = declared_capabilities(&list.plugins[1].conf).unwrap();
        assert!(caps.contains("portMappings"));
    }

    #[test]
    fn the_first_file_wins_and_its_plugins_are_found() {
        let conf = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let dirs = [PathBuf::from("/nonexistent"), bin.path().to_owned()];
        let e = load(conf.path(), &dirs).unwrap_err();
        assert!(matches!(e, ConfError::Empty(_)), "{e}");

        std::fs::write(conf.path().join("20-other.conf"), "not json").unwrap();
        std::fs::write(conf.path().join("10-vessel.conflist"), BRIDGE).unwrap();
        std::fs::write(conf.path().join("05-notes.txt"), "ignored").unwrap();
        let e = load(conf.path(), &dirs).unwrap_err().to_string();
        assert!(
            e.contains("10-vessel.conflist: plugin \"bridge\" not found in /nonexistent, "),
            "{e}"
        );

        plugins(bin.path(), &["bridge", "portmap"]);
        let list = load(conf.path(), &dirs).unwrap();
        assert_eq!(
            (list.name.as_str(), list.cni_version.as_str()),
            ("vessel", "1.0.0")
        );
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(list.plugins[0].binary, bin.path().join("bridge"));
        assert_eq!(
            list.plugins[1].capabilities,
            BTreeSet::from(["portMappings".to_string()])
        );
        assert_eq!(list.plugins[0].conf["bridge"], "vessel0");
    }

    #[test]
    fn a_single_plugin_config_becomes_a_list_of_one() {
        let path = Path::new("/x/10-one.conf");
        let list = parse(
            path,
            r#"{"cniVersion":"0.4.0","name":"one","type":"bridge","disableCheck":true}"#,
        )
        .unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].plugin_type, "bridge");
        assert!(list.disable_check);
    }

    #[test]
    fn what_libcni_refuses_is_refused_with_the_reason() {
        let cases = [
            (
                "a.conf",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "no \"type\"",
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "\"plugins\" is empty",
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersion \"9.9.9\"",
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "\"name\" is missing",
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"-n","plugins":[{"type":"x"}]}"#,
                "network name",
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                "plugins[0]: type",
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
                "plugins[0]: \"type\" is missing",
            ),
            ("a.json", "[1]", "not a JSON object"),
        ];
        for (file, text, needle) in cases {
            let e = parse(Path::new(file), text).unwrap_err().to_string();
            assert!(
                e.starts_with(file) && e.contains(needle),
                "{file} {text}: {e}"
            );
        }
    }
}
