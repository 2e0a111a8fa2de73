//! Validation and adjustment of what the shim sends: ids, the OCI spec (namespaces,
//! cgroups path, PATH) and OCI processes for exec.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxBuilder, LinuxNamespace, LinuxNamespaceType, Process, Spec};
use vessel_protocols::guest::{check_id, container_cgroup, POD_PID_NAMESPACE};

use super::error::{Result, SpecError};
use super::guest_devices;

/// `PATH` when the process environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Namespaces a container spec must have its own (or, for pid, the pod's): without them a
/// container would share the agent's.
const REQUIRED_NAMESPACES: [LinuxNamespaceType; 2] =
    [LinuxNamespaceType::Pid, LinuxNamespaceType::Mount];

/// Checks an id by the guest contract's rule; the error names `field`.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), SpecError> {
    check_id(id).map_err(|reason| SpecError::Id {
        field,
        id: id.to_string(),
        reason,
    })
}

/// Parses the OCI spec JSON.
pub fn parse_spec(json: &[u8]) -> Result<Spec, SpecError> {
    serde_json::from_slice(json).map_err(|source| SpecError::Json {
        field: "spec_json",
        source,
    })
}

/// Parses an OCI process JSON (exec).
pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
    let p: Process = serde_json::from_slice(json).map_err(|source| SpecError::Json {
        field: "process_json",
        source,
    })?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::Empty("process_json: args"));
    }
    if !p.cwd().is_absolute() {
        return Err(SpecError::RelativeCwd(p.cwd().clone()));
    }
    Ok(p)
}

/// The rootfs of `spec` as a guest path (a relative `root.path` is below `bundle`).
pub fn rootfs(spec: &Spec, bundle: &Path) -> Result<PathBuf, SpecError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or(SpecError::Missing("spec_json: root"))?;
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

/// Readies a container spec the shim built for libcontainer and returns its cgroup path:
/// the process must have args; `PATH` is defaulted; the cgroups path defaults to the
/// contract's; the namespaces are the shim's, checked, with the contract's pod pid
/// namespace resolved through `pod_pid_ns` (the pod's pause process).
pub fn prepare(
    spec: &mut Spec,
    id: &str,
    pod_pid_ns: impl FnOnce() -> Result<PathBuf>,
) -> Result<String> {
    let mut process = spec
        .process()
        .clone()
        .ok_or(SpecError::Missing("spec_json: process"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::Empty("spec_json: process.args").into());
    }
    ensure_path(&mut process);
    spec.set_process(Some(process));

    let mut linux = match spec.linux().clone() {
        Some(l) => l,
        None => LinuxBuilder::default()
            .build()
            .map_err(|source| SpecError::Build {
                what: "default linux section".into(),
                source,
            })?,
    };
    let cgroup = cgroup_path(linux.cgroups_path().as_deref(), id);
    linux.set_cgroups_path(Some(PathBuf::from(&cgroup)));
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    resolve_namespaces(&mut namespaces, pod_pid_ns)?;
    linux.set_namespaces(Some(namespaces));
    if guest_devices::allows_every_device(&linux) {
        guest_devices::add_all(&mut linux, Path::new("/dev"))?;
    }
    spec.set_linux(Some(linux));
    Ok(cgroup)
}

/// Checks the namespaces the shim chose: a pid and a mount namespace, never a network one
/// (containers share the guest's, which is the pod's), and no path but the contract's
/// [`POD_PID_NAMESPACE`] for pid, which becomes the pause process's namespace.
fn resolve_namespaces(
    list: &mut [LinuxNamespace],
    pod_pid_ns: impl FnOnce() -> Result<PathBuf>,
) -> Result<()> {
    let invalid = |why: String| Err(SpecError::Namespaces(why).into());
    if list
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Network)
    {
        return invalid("a container has the pod's network namespace, never its own".into());
    }
    for typ in REQUIRED_NAMESPACES {
        // A native pod's container may share the host's pid namespace (CRI hostPID): the
        // agent serving it runs in that namespace.
        let optional = typ == LinuxNamespaceType::Pid && crate::paths::on_host();
        if !optional && !list.iter().any(|ns| ns.typ() == typ) {
            return invalid(format!("no {typ:?} namespace"));
        }
    }
    let mut pod_pid_ns = Some(pod_pid_ns);
    for ns in list.iter_mut() {
        let Some(path) = ns.path().clone() else {
            continue;
        };
        if ns.typ() != LinuxNamespaceType::Pid || path != Path::new(POD_PID_NAMESPACE) {
            return invalid(format!(
                "{:?} namespace path {}: only {POD_PID_NAMESPACE} may be joined",
                ns.typ(),
                path.display()
            ));
        }
        if let Some(resolve) = pod_pid_ns.take() {
            ns.set_path(Some(resolve()?));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::ContainerError;
    use vessel_protocols::ttrpc::Code;

    #[test]
    fn ids() {
        for ok in ["a", "c-1", "x.y_z", "..."] {
            validate_id("container_id", ok).unwrap();
        }
        validate_id("id", &"a".repeat(128)).unwrap();
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"a".repeat(129)] {
            let e = validate_id("container_id", bad).unwrap_err();
            assert_eq!(e.code(), Code::INVALID_ARGUMENT);
            assert!(e.to_string().starts_with("container_id "), "{e}");
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
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert!(e.to_string().starts_with("spec_json: "), "{e}");
    }

    fn own() -> Result<PathBuf> {
        panic!("no pod pid namespace asked for")
    }

    #[test]
    fn prepare_resolves_the_pod_pid_namespace_and_defaults_cgroup_and_path() {
        let json = spec_json(&format!(
            r#""namespaces":[{{"type":"pid","path":"{POD_PID_NAMESPACE}"}},{{"type":"mount"}}]"#
        ));
        let mut spec = parse_spec(json.as_bytes()).unwrap();
        let cg = prepare(&mut spec, "c1", || Ok("/proc/7/ns/pid".into())).unwrap();
        assert_eq!(cg, "/vessel/c1");
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/vessel/c1"))
        );
        let ns = linux.namespaces().as_ref().unwrap();
        assert_eq!(ns.len(), 2, "{ns:?}");
        let pid = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Pid)
            .unwrap();
        assert_eq!(pid.path().as_deref(), Some(Path::new("/proc/7/ns/pid")));
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
    }

    #[test]
    fn namespaces_outside_the_contract_are_refused() {
        for namespaces in [
            r#"{"type":"pid"},{"type":"mount"},{"type":"network"}"#,
            r#"{"type":"mount"}"#,
            r#"{"type":"pid","path":"/proc/1/ns/pid"},{"type":"mount"}"#,
            r#"{"type":"pid"},{"type":"mount","path":"/proc/1/ns/mnt"}"#,
        ] {
            let json = spec_json(&format!(r#""namespaces":[{namespaces}]"#));
            let mut spec = parse_spec(json.as_bytes()).unwrap();
            let e = prepare(&mut spec, "c1", own).unwrap_err();
            assert!(
                matches!(&e, ContainerError::Spec(SpecError::Namespaces(_))),
                "{namespaces}: {e}"
            );
            assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        }
    }

    #[test]
    fn prepare_keeps_given_path_and_cgroup() {
        let json = spec_json(
            r#""cgroupsPath":"/kubepods/pod1/c1","namespaces":[{"type":"pid"},{"type":"mount"}]"#,
        )
        .replace("\"A=1\"", "\"PATH=/bin\"");
        let mut spec = parse_spec(json.as_bytes()).unwrap();
        assert_eq!(prepare(&mut spec, "c1", own).unwrap(), "/kubepods/pod1/c1");
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
