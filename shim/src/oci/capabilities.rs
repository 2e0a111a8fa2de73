//! The capabilities of a container process: every capability when privileged, else
//! containerd's default set with the CRI `add_capabilities` and `drop_capabilities` applied
//! (`ALL` in either; names with or without `CAP_`), in containerd's order: add ALL, drop
//! ALL, add each, drop each.
//!
//! Only the bounding, effective and permitted sets are filled. Inheritable and ambient stay
//! unset: oci-spec's builder and `Default` fill them with a default set, and libcontainer then
//! fails `capset` when the process lacks those in its bounding set.

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxCapabilities};
use vessel_protocols::cri;

use super::SpecError;

/// containerd's default capabilities of an unprivileged container (`oci.defaultUnixCaps`).
pub const DEFAULT: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the guest kernel knows (Linux 5.9+: up to CAP_CHECKPOINT_RESTORE).
pub const ALL: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

const FIELD: &str = "linux.security_context.capabilities";

/// The capabilities of a container: all when `privileged`, else the defaults adjusted by
/// the security context's add/drop lists.
pub(super) fn for_container(
    privileged: bool,
    ctx: Option<&cri::LinuxContainerSecurityContext>,
) -> Result<LinuxCapabilities, SpecError> {
    if privileged {
        return Ok(to_oci(ALL.into_iter().collect()));
    }
    let mut set: HashSet<Capability> = DEFAULT.into_iter().collect();
    if let Some(caps) = ctx.and_then(|c| c.capabilities.as_ref()) {
        apply(&mut set, caps)?;
    }
    Ok(to_oci(set))
}

fn apply(set: &mut HashSet<Capability>, caps: &cri::Capability) -> Result<(), SpecError> {
    let add = parse_list("add_capabilities", &caps.add_capabilities)?;
    let drop = parse_list("drop_capabilities", &caps.drop_capabilities)?;
    if add.iter().any(Option::is_none) {
        set.extend(ALL);
    }
    if drop.iter().any(Option::is_none) {
        set.clear();
    }
    set.extend(add.iter().flatten());
    for c in drop.iter().flatten() {
        set.remove(c);
    }
    Ok(())
}

/// Each name as a capability; `None` for `ALL`.
fn parse_list(list: &str, names: &[String]) -> Result<Vec<Option<Capability>>, SpecError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            parse(name).ok_or_else(|| {
                SpecError::invalid(
                    format!("{FIELD}.{list}[{i}]"),
                    format!("unknown capability {name:?}"),
                )
            })
        })
        .collect()
}

/// `Some(None)` for `ALL`, `Some(Some(cap))` for a capability (`CAP_` optional, any case).
fn parse(name: &str) -> Option<Option<Capability>> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Some(None);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse::<Capability>().ok().map(Some)
}

/// Bounding, effective and permitted = `set`; inheritable and ambient unset.
fn to_oci(set: HashSet<Capability>) -> LinuxCapabilities {
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_caps(add: &[&str], drop: &[&str]) -> Result<HashSet<Capability>, SpecError> {
        let ctx = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: Vec::new(),
            }),
            ..Default::default()
        };
        let caps = for_container(false, Some(&ctx))?;
        Ok(caps.bounding().clone().unwrap())
    }

    fn set(caps: &[Capability]) -> HashSet<Capability> {
        caps.iter().copied().collect()
    }

    #[test]
    fn add_and_drop() {
        let default = set(&DEFAULT);
        let with = |c| {
            let mut s = default.clone();
            s.insert(c);
            s
        };
        let without = |c| {
            let mut s = default.clone();
            s.remove(&c);
            s
        };
        let cases: Vec<(&[&str], &[&str], HashSet<Capability>)> = vec![
            (&[], &[], default.clone()),
            (&["NET_ADMIN"], &[], with(Capability::NetAdmin)),
            (&["CAP_SYS_ADMIN"], &[], with(Capability::SysAdmin)),
            (&["cap_sys_time"], &[], with(Capability::SysTime)),
            (&[], &["NET_RAW"], without(Capability::NetRaw)),
            (&[], &["CAP_KILL"], without(Capability::Kill)),
            (&[], &["ALL"], HashSet::new()),
            (
                &["NET_BIND_SERVICE"],
                &["ALL"],
                set(&[Capability::NetBindService]),
            ),
            (&["ALL"], &[], set(&ALL)),
            (&["all"], &["CHOWN"], {
                let mut s = set(&ALL);
                s.remove(&Capability::Chown);
                s
            }),
            (&["ALL"], &["ALL"], HashSet::new()),
            // An individual drop wins over an individual add.
            (&["NET_ADMIN"], &["NET_ADMIN"], default.clone()),
        ];
        for (add, drop, want) in cases {
            assert_eq!(
                with_caps(add, drop).unwrap(),
                want,
                "add {add:?} drop {drop:?}"
            );
        }
    }

    #[test]
    fn unknown_names_are_errors_naming_the_entry() {
        let e = with_caps(&["CHOWN", "FLY"], &[]).unwrap_err();
        assert!(
            matches!(&e, SpecError::Invalid { field, .. }
                if field == "linux.security_context.capabilities.add_capabilities[1]"),
            "{e}"
        );
        let e = with_caps(&[], &["CAP_"]).unwrap_err();
        assert!(e.to_string().contains("drop_capabilities[0]"), "{e}");
    }

    #[test]
    fn privileged_gets_everything_and_ignores_drops() {
        let ctx = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let caps = for_container(true, Some(&ctx)).unwrap();
        assert_eq!(caps.bounding().clone().unwrap(), set(&ALL));
        assert_eq!(caps.permitted().clone().unwrap(), set(&ALL));
    }

    #[test]
    fn inheritable_and_ambient_stay_unset() {
        for privileged in [false, true] {
            let caps = for_container(privileged, None).unwrap();
            assert!(caps.inheritable().is_none());
            assert!(caps.ambient().is_none());
            assert_eq!(caps.effective(), caps.bounding());
            let json = serde_json::to_string(&caps).unwrap();
            assert!(
                !json.contains("inheritable") && !json.contains("ambient"),
                "{json}"
            );
        }
    }

    #[test]
    fn all_lists_every_capability_once() {
        assert_eq!(set(&ALL).len(), ALL.len());
        assert!(set(&DEFAULT).is_subset(&set(&ALL)));
        // Every name the JSON form knows parses.
        for cap in ALL {
            let name = serde_json::to_value(cap).unwrap();
            assert_eq!(parse(name.as_str().unwrap()), Some(Some(cap)));
        }
    }
}
