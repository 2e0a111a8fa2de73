//! What changes in the shim's spec when this agent serves a native pod on the host rather
//! than a pod VM. The shim builds one spec for both; in a guest nothing here applies. On the
//! host:
//! - the contract's paths (the rootfs and mount sources in the shared dir) move to where they
//!   are ([`crate::paths::relocate`]);
//! - a process gets no capability this agent lacks: a privileged container's "all
//!   capabilities" means those the runtime has, as containerd's `WithAllCurrentCapabilities`;
//! - a process without an OOM score gets 0, not the agent's (which is shielded as the pod's
//!   infra process);
//! - the open-files limit is capped at this agent's own hard limit, which a runtime without
//!   CAP_SYS_RESOURCE cannot raise (in a VM the limit is the VM's own; on the host a container
//!   inherits the runtime's, as with containerd).

use std::collections::HashSet;

use libcontainer::capabilities::CapabilityExt;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, PosixRlimitBuilder, PosixRlimitType, Process, Spec,
};

/// Adapts a container spec (see the module's doc).
pub fn adapt(spec: &mut Spec) {
    if !crate::paths::on_host() {
        return;
    }
    if let Some(mut root) = spec.root().clone() {
        root.set_path(crate::paths::relocate(root.path()));
        spec.set_root(Some(root));
    }
    if let Some(mounts) = spec.mounts().clone() {
        let mounts = mounts
            .into_iter()
            .map(|mut m| {
                if let Some(source) = m.source().clone() {
                    m.set_source(Some(crate::paths::relocate(&source)));
                }
                m
            })
            .collect();
        spec.set_mounts(Some(mounts));
    }
    if let Some(mut process) = spec.process().clone() {
        adapt_process(&mut process);
        spec.set_process(Some(process));
    }
}

/// Adapts a process (a container's init or an exec): capabilities, limits and OOM score.
pub fn adapt_process(process: &mut Process) {
    if !crate::paths::on_host() {
        return;
    }
    // This agent is shielded from the OOM killer (the pod's infra process); a process the
    // pod gives no score of its own must not inherit that.
    if process.oom_score_adj().is_none() {
        process.set_oom_score_adj(Some(0));
    }
    if let (Some(caps), Ok(ours)) = (
        process.capabilities().clone(),
        caps::read(None, caps::CapSet::Bounding),
    ) {
        process.set_capabilities(Some(within(caps, |c| ours.contains(&c.to_cap()))));
    }
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        cap_open_files(process, hard);
    }
}

/// Keeps in each set only the capabilities `have` accepts.
fn within(caps: LinuxCapabilities, have: impl Fn(&Capability) -> bool) -> LinuxCapabilities {
    let keep = |set: &Option<Capabilities>| -> Option<Capabilities> {
        set.as_ref().map(|s| {
            s.iter()
                .copied()
                .filter(|c| have(c))
                .collect::<HashSet<_>>()
        })
    };
    let mut out = caps.clone();
    out.set_bounding(keep(caps.bounding()));
    out.set_effective(keep(caps.effective()));
    out.set_inheritable(keep(caps.inheritable()));
    out.set_permitted(keep(caps.permitted()));
    out.set_ambient(keep(caps.ambient()));
    out
}

/// Caps the open-files limit at `hard`.
fn cap_open_files(process: &mut Process, hard: u64) {
    let Some(limits) = process.rlimits().clone() else {
        return;
    };
    let capped = limits
        .into_iter()
        .map(|l| {
            if l.typ() != PosixRlimitType::RlimitNofile {
                return l;
            }
            PosixRlimitBuilder::default()
                .typ(l.typ())
                .hard(l.hard().min(hard))
                .soft(l.soft().min(hard))
                .build()
                .unwrap_or(l)
        })
        .collect();
    process.set_rlimits(Some(capped));
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::PosixRlimit;

    #[test]
    fn capabilities_the_runtime_lacks_are_dropped_from_every_set() {
        let all: Capabilities = [
            Capability::SysAdmin,
            Capability::SysResource,
            Capability::Kill,
        ]
        .into_iter()
        .collect();
        let caps = LinuxCapabilities::default();
        let mut caps = caps;
        caps.set_bounding(Some(all.clone()));
        caps.set_effective(Some(all.clone()));
        caps.set_permitted(Some(all));
        caps.set_ambient(None);
        let out = within(caps, |c| *c != Capability::SysResource);
        for set in [out.bounding(), out.effective(), out.permitted()] {
            let set = set.as_ref().unwrap();
            assert!(set.contains(&Capability::SysAdmin) && !set.contains(&Capability::SysResource));
        }
        assert!(out.ambient().is_none());
    }

    #[test]
    fn the_open_files_limit_is_capped() {
        let mut p = Process::default();
        let nofile: PosixRlimit = PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1u64 << 20)
            .soft(1u64 << 20)
            .build()
            .unwrap();
        p.set_rlimits(Some(vec![nofile]));
        cap_open_files(&mut p, 20_000);
        let l = &p.rlimits().as_ref().unwrap()[0];
        assert_eq!((l.hard(), l.soft()), (20_000, 20_000));
    }
}
