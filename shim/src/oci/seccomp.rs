//! The seccomp filter of a container, from its CRI security context (else the pod's):
//! `RuntimeDefault` (and the legacy `runtime/default`, `docker/default`) is the profile
//! containerd applies by default (`data/seccomp-default.json`, with the rules that depend on
//! the container's capabilities resolved here), `Localhost` (legacy `localhost/<path>`) is an
//! OCI seccomp JSON file on this host, read here and passed in the spec, and `Unconfined` (or
//! nothing) is none. A privileged container has none. The agent's libcontainer installs it.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use oci_spec::runtime::{Capability, LinuxSeccomp, LinuxSeccompBuilder, LinuxSyscall};
use serde::Deserialize;
use vessel_protocols::cri;

use super::SpecError;

/// The default profile, as data (see its `comment`).
const DEFAULT_PROFILE: &str = include_str!("../../data/seccomp-default.json");

/// The largest localhost profile read.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultProfile {
    #[serde(flatten)]
    seccomp: LinuxSeccomp,
    rules: Vec<Rule>,
}

/// A rule of the default profile: an OCI syscall rule, perhaps only with (or without) a
/// capability in the container's bounding set.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(flatten)]
    syscall: LinuxSyscall,
    if_capability: Option<Capability>,
    unless_capability: Option<Capability>,
}

/// Which profile the CRI asks for.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The container's filter; `None` for none.
// `seccomp_profile_path` is deprecated in the CRI but still what older kubelets send.
#[allow(deprecated)]
pub(super) fn profile(
    pod: &cri::PodSandboxConfig,
    container: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    bounding: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if privileged {
        return Ok(None);
    }
    let pod_ctx = pod.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let from_container = container
        .map(|c| {
            choice(
                "linux.security_context",
                c.seccomp.as_ref(),
                &c.seccomp_profile_path,
            )
        })
        .transpose()?
        .flatten();
    let choice = match from_container {
        Some(c) => Some(c),
        None => pod_ctx
            .map(|c| {
                choice(
                    "config.linux.security_context",
                    c.seccomp.as_ref(),
                    &c.seccomp_profile_path,
                )
            })
            .transpose()?
            .flatten(),
    };
    match choice.unwrap_or(Choice::Unconfined) {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => default_profile(bounding).map(Some),
        Choice::Localhost(path) => localhost(&path).map(Some),
    }
}

/// The choice a security context makes, `None` when it makes none.
fn choice(
    at: &str,
    profile: Option<&cri::SecurityProfile>,
    legacy: &str,
) -> Result<Option<Choice>, SpecError> {
    use cri::security_profile::ProfileType;
    if let Some(p) = profile {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Some(Choice::RuntimeDefault)),
            Ok(ProfileType::Unconfined) => Ok(Some(Choice::Unconfined)),
            Ok(ProfileType::Localhost) => Ok(Some(Choice::Localhost(p.localhost_ref.clone()))),
            Err(_) => Err(SpecError::invalid(
                format!("{at}.seccomp.profile_type"),
                format!("unknown value {}", p.profile_type),
            )),
        };
    }
    match legacy {
        "" => Ok(None),
        "unconfined" => Ok(Some(Choice::Unconfined)),
        "runtime/default" | "docker/default" => Ok(Some(Choice::RuntimeDefault)),
        other => match other.strip_prefix("localhost/") {
            Some(path) => Ok(Some(Choice::Localhost(format!(
                "/{}",
                path.trim_start_matches('/')
            )))),
            None => Err(SpecError::invalid(
                format!("{at}.seccomp_profile_path"),
                format!(
                    "{other:?} is not a profile: use runtime/default, docker/default, \
                     unconfined or localhost/<path>"
                ),
            )),
        },
    }
}

/// The default profile for a container with `bounding` capabilities.
fn default_profile(bounding: &HashSet<Capability>) -> Result<LinuxSeccomp, SpecError> {
    // The data is part of the binary (a unit test parses it): an error here is a build defect.
    let parsed: DefaultProfile = serde_json::from_str(DEFAULT_PROFILE)?;
    let syscalls = parsed
        .rules
        .into_iter()
        .filter(|r| r.if_capability.is_none_or(|c| bounding.contains(&c)))
        .filter(|r| r.unless_capability.is_none_or(|c| !bounding.contains(&c)))
        .map(|r| r.syscall)
        .collect();
    let mut seccomp = parsed.seccomp;
    seccomp.set_syscalls(Some(syscalls));
    Ok(seccomp)
}

/// A profile file on this host (kubelet's seccomp dir), in the OCI format.
fn localhost(path: &str) -> Result<LinuxSeccomp, SpecError> {
    let field = "linux.security_context.seccomp.localhost_ref";
    if !Path::new(path).is_absolute() {
        return Err(SpecError::invalid(
            field,
            format!("{path:?} is not absolute"),
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PROFILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| SpecError::invalid(field, format!("read {path}: {e}")))?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(SpecError::invalid(
            field,
            format!("{path} is larger than {MAX_PROFILE_BYTES} bytes"),
        ));
    }
    let seccomp: LinuxSeccomp = serde_json::from_str(&text)
        .map_err(|e| SpecError::invalid(field, format!("{path} is not a seccomp profile: {e}")))?;
    // Built again so an empty profile still carries its default action.
    Ok(LinuxSeccompBuilder::default()
        .default_action(seccomp.default_action())
        .architectures(seccomp.architectures().clone().unwrap_or_default())
        .syscalls(seccomp.syscalls().clone().unwrap_or_default())
        .build()?)
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;

    fn allowed(seccomp: &LinuxSeccomp, name: &str) -> bool {
        seccomp.syscalls().iter().flatten().any(|s| {
            s.names().iter().any(|n| n == name)
                && s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
        })
    }

    fn ctx(profile_type: i32, localhost_ref: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type,
                localhost_ref: localhost_ref.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_follows_the_capabilities() {
        let none = default_profile(&HashSet::new()).unwrap();
        assert!(allowed(&none, "read") && allowed(&none, "clone"));
        assert!(!allowed(&none, "sethostname"));
        let admin = default_profile(&[Capability::SysAdmin].into()).unwrap();
        assert!(allowed(&admin, "sethostname") && allowed(&admin, "mount"));
        // clone3 is ENOSYS without SYS_ADMIN (libcs then use clone), allowed with it.
        assert!(allowed(&admin, "clone3") && !allowed(&none, "clone3"));
    }

    #[test]
    fn choices_by_field_and_legacy_path() {
        use cri::security_profile::ProfileType as P;
        let pod = cri::PodSandboxConfig::default();
        let caps = HashSet::new();
        let some = |c: &cri::LinuxContainerSecurityContext| profile(&pod, Some(c), false, &caps);
        assert!(some(&ctx(P::RuntimeDefault as i32, "")).unwrap().is_some());
        assert!(some(&ctx(P::Unconfined as i32, "")).unwrap().is_none());
        assert!(
            profile(&pod, Some(&ctx(P::RuntimeDefault as i32, "")), true, &caps)
                .unwrap()
                .is_none()
        );
        for legacy in ["runtime/default", "docker/default"] {
            let c = cri::LinuxContainerSecurityContext {
                seccomp_profile_path: legacy.into(),
                ..Default::default()
            };
            assert!(some(&c).unwrap().is_some(), "{legacy}");
        }
        let bad = cri::LinuxContainerSecurityContext {
            seccomp_profile_path: "my-profile".into(),
            ..Default::default()
        };
        let e = some(&bad).unwrap_err();
        assert!(e.to_string().contains("seccomp_profile_path"), "{e}");
        let missing = ctx(P::Localhost as i32, "/nonexistent/profile.json");
        assert!(some(&missing)
            .unwrap_err()
            .to_string()
            .contains("localhost_ref"));
    }

    #[test]
    fn a_localhost_profile_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let c = ctx(
            cri::security_profile::ProfileType::Localhost as i32,
            path.to_str().unwrap(),
        );
        let seccomp = profile(
            &cri::PodSandboxConfig::default(),
            Some(&c),
            false,
            &HashSet::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            seccomp.syscalls().as_ref().unwrap()[0].names(),
            &["sethostname"]
        );
    }
}
