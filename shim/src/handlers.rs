//! Runtime handlers: the names kubelet's RuntimeClasses (and crictl's `--runtime`) ask for,
//! each of a kind. `vm` runs the pod in a microVM on the selected hypervisor; `native` runs
//! it on the host, its containers beside the node's processes, for the pods a VM cannot
//! hold (hostNetwork, hostIPC: kube-proxy, CNI agents, node exporters). Nothing is ever
//! downgraded: a pod sent to a `vm` handler that asks for the host's namespaces is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a handler runs pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    /// A microVM per pod.
    Vm,
    /// Host containers in the pod's namespaces, served by a host agent per pod.
    Native,
}

/// One `[handlers.<name>]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Handler {
    pub kind: HandlerKind,
}

/// The handlers served when the config names none: `kata` (microVM, the default) and `runc`
/// (native).
pub fn defaults() -> BTreeMap<String, Handler> {
    BTreeMap::from([
        (
            "kata".to_owned(),
            Handler {
                kind: HandlerKind::Vm,
            },
        ),
        (
            "runc".to_owned(),
            Handler {
                kind: HandlerKind::Native,
            },
        ),
    ])
}

/// The default handler's name when the config names none.
pub const DEFAULT_HANDLER: &str = "kata";

/// Resolves a requested handler name (empty: `default`) to its name and kind; `Err` says why
/// it is unknown, listing what is served.
pub fn resolve<'a>(
    handlers: &'a BTreeMap<String, Handler>,
    default: &'a str,
    requested: &'a str,
) -> Result<(&'a str, HandlerKind), String> {
    let name = if requested.is_empty() {
        default
    } else {
        requested
    };
    match handlers.get(name) {
        Some(h) => Ok((name, h.kind)),
        None => Err(format!(
            "unknown runtime handler {name:?} (this runtime serves {})",
            handlers
                .keys()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Checks a handler table and its default: names must be usable in a RuntimeClass.
pub fn validate(handlers: &BTreeMap<String, Handler>, default: &str) -> Result<(), String> {
    if let Some(bad) = handlers.keys().find(|name| {
        name.is_empty()
            || name.len() > 63
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    }) {
        return Err(format!(
            "handler name {bad:?} is not a DNS label (1-63 of a-z, 0-9, '-', '.')"
        ));
    }
    if !handlers.contains_key(default) {
        return Err(format!("default_handler {default:?} is not in [handlers]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_handler_is_the_default_and_unknown_ones_are_named() {
        let h = defaults();
        assert_eq!(resolve(&h, "kata", ""), Ok(("kata", HandlerKind::Vm)));
        assert_eq!(resolve(&h, "runc", ""), Ok(("runc", HandlerKind::Native)));
        assert_eq!(
            resolve(&h, "kata", "runc"),
            Ok(("runc", HandlerKind::Native))
        );
        let e = resolve(&h, "kata", "gvisor").unwrap_err();
        assert!(
            e.contains("\"gvisor\"") && e.contains("\"kata\", \"runc\""),
            "{e}"
        );
    }

    #[test]
    fn bad_tables_are_refused() {
        let h = defaults();
        validate(&h, "kata").unwrap();
        assert!(validate(&h, "x").unwrap_err().contains("default_handler"));
        let mut bad = defaults();
        bad.insert(
            "Bad Name".into(),
            Handler {
                kind: HandlerKind::Vm,
            },
        );
        assert!(validate(&bad, "kata").unwrap_err().contains("Bad Name"));
    }
}
