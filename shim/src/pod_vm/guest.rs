//! What a pod VM's agent says about itself (GetGuestDetails): its version and the contract
//! capabilities it implements. A pod keeps the guest image it booted with across a node
//! upgrade, so a newer shim may drive an older agent: it asks once, at start and at
//! adoption, and refuses only the requests that need a capability the agent lacks.

use std::collections::BTreeSet;

use vessel_protocols::agent as api;
use vessel_protocols::guest::Capability;
use vessel_protocols::ttrpc;

use super::agent_client::{AgentClient, AgentError};

/// The longest agent version kept (and quoted in errors and pod status).
const MAX_VERSION_CHARS: usize = 64;

/// The guest agent's version and capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInfo {
    pub agent_version: String,
    pub capabilities: BTreeSet<Capability>,
}

/// A request the pod's guest agent cannot serve.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} needs guest capability {capability:?}, which the agent of this pod's VM (version \
     {agent_version}) lacks: its guest image predates it; recreate the pod to boot the current one"
)]
pub struct Unsupported {
    pub what: String,
    pub capability: &'static str,
    pub agent_version: String,
}

impl GuestInfo {
    /// Asks the agent. An agent without GetGuestDetails counts as one without capabilities.
    pub async fn query(agent: &AgentClient) -> Result<Self, AgentError> {
        match agent
            .get_guest_details(api::GetGuestDetailsRequest::new())
            .await
        {
            Ok(details) => Ok(Self::from_details(&details)),
            Err(e) if e.code() == Some(ttrpc::Code::UNIMPLEMENTED) => Ok(Self {
                agent_version: "unknown".into(),
                capabilities: BTreeSet::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// The capabilities named in a reply; names from a newer contract are left out. The guest
    /// is untrusted: only known names and a short version string are kept.
    pub fn from_details(details: &api::GuestDetails) -> Self {
        Self {
            agent_version: details
                .agent_version
                .chars()
                .take(MAX_VERSION_CHARS)
                .collect(),
            capabilities: details
                .capabilities
                .iter()
                .filter_map(|name| Capability::from_name(name))
                .collect(),
        }
    }

    /// The capabilities this shim knows that the agent lacks.
    pub fn missing(&self) -> Vec<Capability> {
        Capability::ALL
            .into_iter()
            .filter(|c| !self.capabilities.contains(c))
            .collect()
    }

    /// Ok when the agent has `capability`; else an error that says what needs it and why.
    pub fn require(&self, capability: Capability, what: &str) -> Result<(), Unsupported> {
        if self.capabilities.contains(&capability) {
            return Ok(());
        }
        Err(Unsupported {
            what: what.to_owned(),
            capability: capability.name(),
            agent_version: self.agent_version.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(capabilities: &[&str]) -> api::GuestDetails {
        let mut d = api::GuestDetails::new();
        d.agent_version = "0.1.0".into();
        d.capabilities = capabilities.iter().map(|c| c.to_string()).collect();
        d
    }

    #[test]
    fn an_agent_that_reports_nothing_lacks_every_capability() {
        let old = GuestInfo::from_details(&details(&[]));
        assert_eq!(old.missing(), Capability::ALL.to_vec());
        let e = old
            .require(Capability::PodPidNamespace, "container c1 in pod p1")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("container c1 in pod p1 needs guest capability \"pod-pid-namespace\""),
            "{e}"
        );
        assert!(e.contains("version 0.1.0"), "{e}");
    }

    #[test]
    fn unknown_names_are_ignored_and_known_ones_granted() {
        let new = GuestInfo::from_details(&details(&[
            "pod-pid-namespace",
            "pod-network",
            "streams",
            "pod-sysctls",
            "from-the-future",
        ]));
        assert!(new.missing().is_empty());
        new.require(Capability::PodPidNamespace, "x").unwrap();
        new.require(Capability::PodNetwork, "x").unwrap();
        new.require(Capability::Streams, "x").unwrap();
        new.require(Capability::PodSysctls, "x").unwrap();
        assert_eq!(new.capabilities.len(), 4);
        let mut long = details(&[]);
        long.agent_version = "9".repeat(10_000);
        assert_eq!(
            GuestInfo::from_details(&long).agent_version.len(),
            MAX_VERSION_CHARS
        );
    }
}
