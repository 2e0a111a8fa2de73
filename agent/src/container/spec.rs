//! Validation and adjustment of what the shim sends: ids, the OCI spec (namespaces,
//! cgroups path, PATH) and OCI processes for exec.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Process, Spec,
};
use vessel_protocols::guest::{check_id, container_cgroup};

use super::guest_devices;
use crate::error::{AgentError, Result};

/// `PATH` when the process environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Namespaces every container gets (network never: containers share the pod's, which is
/// the guest's).
const OWN_NAMESPACES: [LinuxNamespaceType; 4] = [
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
];

/// Checks an id by the guest contract's rule; the error names `field`.
pub fn validate_id(field: &str, id: &str) -> Result<()> {
    check_id(id).map_err(|reason| AgentError::InvalidArgument(format!("{field} {id:?} {reason}")))
}

/// Parses the OCI spec JSON.
pub fn parse_spec(json: &[u8]) -> Result<Spec> {
    serde_json::from_slice(json).map_err(|e| AgentError::InvalidArgument(format!("spec_json: {e}")))
}

/// Parses an OCI process JSON (exec).
pub fn parse_process(json: &[u8]) -> Result<Process> {
    let p: Process = serde_json::from_slice(json)
        .map_err(|e| AgentError::InvalidArgument(format!("process_json: {e}")))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(AgentError::InvalidArgument(
            "process_json: args is empty".into(),
        ));
    }
    if !p.cwd().is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "process_json: cwd {:?} is not absolute",
            p.cwd()
        )));
    }
    Ok(p)
}

/// The rootfs of `spec` as a guest path (a relative `root.path` is below `bundle`).
pub fn rootfs(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument("spec_json: root is missing".into()))?;
    Ok(bundle.join(root.path()))
}

/// The `PATH` value of an environment list.
pub fn path_env(env: &[String]) -> Option<&str> {
    env.iter().find_map(|e| e.strip_prefix("PATH="))
}

/// Makes sure `env` has a `PATH` (libcontainer refuses to exec without one).
pub fn ensure_path(process: &mut Process) {
    let mut env = process.env().clone().unwrap_or_default();
    if path_env(&env).is_none() {
        env.push(format!("PATH={DEFAULT_PATH}"));
        process.set_env(Some(env));
    }
}

/// Adjusts a container spec for the guest and returns its cgroup path:
/// the process must have args; `PATH` is defaulted; the cgroups path defaults to
/// `/vessel/<id>`; the network namespace is dropped and pid, mount, ipc and uts are added;
/// `pid_ns`, when given, is the pid namespace to join (a pod sharing one).
pub fn prepare(spec: &mut Spec, id: &str, pid_ns: Option<&Path>) -> Result<String> {
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| AgentError::InvalidArgument("spec_json: process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(AgentError::InvalidArgument(
            "spec_json: process.args is empty".into(),
        ));
    }
    ensure_path(&mut process);
    spec.set_process(Some(process));

    let mut linux = match spec.linux().clone() {
        Some(l) => l,
        None => LinuxBuilder::default()
            .build()
            .map_err(|e| AgentError::internal("default linux section", e))?,
    };
    let cgroup = cgroup_path(linux.cgroups_path().as_deref(), id);
    linux.set_cgroups_path(Some(PathBuf::from(&cgroup)));
    let namespaces = namespaces(linux.namespaces().clone().unwrap_or_default(), pid_ns)?;
    linux.set_namespaces(Some(namespaces));
    if guest_devices::allows_every_device(&linux) {
        guest_devices::add_all(&mut linux, Path::new("/dev"))?;
    }
    spec.set_linux(Some(linux));
    Ok(cgroup)
}

/// The cgroup (v2, relative to `/sys/fs/cgroup`) of a container: the spec's when it is a
/// plain path, else `/vessel/<id>` (systemd-style `slice:prefix:name` paths mean nothing
/// without systemd).
pub fn cgroup_path(from_spec: Option<&Path>, id: &str) -> String {
    match from_spec.and_then(Path::to_str) {
        Some(p) if !p.is_empty() && !p.contains(':') => {
            if p.starts_with('/') {
                p.to_string()
            } else {
                format!("/{p}")
            }
        }
        _ => container_cgroup(id),
    }
}

fn namespaces(mut list: Vec<LinuxNamespace>, pid_ns: Option<&Path>) -> Result<Vec<LinuxNamespace>> {
    list.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
    for typ in OWN_NAMESPACES {
        if !list.iter().any(|ns| ns.typ() == typ) {
            let ns = LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(|e| AgentError::internal("namespace", e))?;
            list.push(ns);
        }
    }
    if let Some(path) = pid_ns {
        for ns in list
            .iter_mut()
            .filter(|ns| ns.typ() == LinuxNamespaceType::Pid)
        {
            if ns.path().is_none() {
                ns.set_path(Some(path.to_path_buf()));
            }
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "c-1", "x.y_z", "..."] {
            validate_id("container_id", ok).unwrap();
        }
        validate_id("id", &"a".repeat(128)).unwrap();
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"a".repeat(129)] {
            let e = validate_id("container_id", bad).unwrap_err();
            assert!(
                matches!(&e, AgentError::InvalidArgument(m) if m.contains("container_id")),
                "{e}"
            );
        }
    }

    fn spec_json(extra_linux: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"/r"}},
               "process":{{"cwd":"/","args":["sh"],"env":["A=1"],"user":{{"uid":0,"gid":0}}}},
               "linux":{{{extra_linux}}}}}"#
        )
    }

    #[test]
    fn bad_spec_names_the_field() {
        let e = parse_spec(b"{nope").unwrap_err();
        assert!(matches!(&e, AgentError::InvalidArgument(m) if m.starts_with("spec_json: ")));
    }

    #[test]
    fn prepare_fixes_namespaces_cgroup_and_path() {
        let json = spec_json(
            r#""namespaces":[{"type":"network","path":"/var/run/netns/x"},{"type":"pid"}]"#,
        );
        let mut spec = parse_spec(json.as_bytes()).unwrap();
        let cg = prepare(&mut spec, "c1", Some(Path::new("/proc/7/ns/pid"))).unwrap();
        assert_eq!(cg, "/vessel/c1");
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/vessel/c1"))
        );
        let ns = linux.namespaces().as_ref().unwrap();
        let types: Vec<_> = ns.iter().map(|n| n.typ()).collect();
        assert!(!types.contains(&LinuxNamespaceType::Network));
        for t in OWN_NAMESPACES {
            assert_eq!(types.iter().filter(|x| **x == t).count(), 1, "{t:?}");
        }
        let pid = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Pid)
            .unwrap();
        assert_eq!(pid.path().as_deref(), Some(Path::new("/proc/7/ns/pid")));
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
    }

    #[test]
    fn prepare_keeps_given_path_and_cgroup() {
        let json =
            spec_json(r#""cgroupsPath":"/kubepods/pod1/c1""#).replace("\"A=1\"", "\"PATH=/bin\"");
        let mut spec = parse_spec(json.as_bytes()).unwrap();
        assert_eq!(prepare(&mut spec, "c1", None).unwrap(), "/kubepods/pod1/c1");
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(path_env(&env), Some("/bin"));
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(cgroup_path(None, "a"), "/vessel/a");
        assert_eq!(cgroup_path(Some(Path::new("k/b")), "a"), "/k/b");
        assert_eq!(
            cgroup_path(Some(Path::new("system.slice:cri:a")), "a"),
            "/vessel/a"
        );
    }

    #[test]
    fn process_needs_args_and_absolute_cwd() {
        assert!(parse_process(br#"{"cwd":"/","args":[],"user":{"uid":0,"gid":0}}"#).is_err());
        assert!(parse_process(br#"{"cwd":"tmp","args":["ls"],"user":{"uid":0,"gid":0}}"#).is_err());
        parse_process(br#"{"cwd":"/","args":["ls"],"user":{"uid":0,"gid":0}}"#).unwrap();
    }
}
