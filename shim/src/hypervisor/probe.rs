//! Decides which VMM and accelerator run pods here, and says why.
//!
//! `/dev/kvm` alone is not enough: some hosts (PVM, or nested setups without vmx/svm) expose a
//! KVM that runs tiny guests but not a Linux kernel. A full guest needs the CPU's hardware
//! virtualization flag too.

use std::path::Path;

use crate::config::{AccelKind, HypervisorConfig, HypervisorKind};

/// What this host's KVM can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmSupport {
    /// /dev/kvm opens and the CPU shows vmx or svm.
    FullGuests,
    /// No usable KVM for Linux guests; the string says why.
    Unusable(String),
}

/// Looks at /dev/kvm and /proc/cpuinfo.
pub fn probe_kvm() -> KvmSupport {
    probe_kvm_at(Path::new("/dev/kvm"), Path::new("/proc/cpuinfo"))
}

fn probe_kvm_at(dev: &Path, cpuinfo: &Path) -> KvmSupport {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return KvmSupport::Unusable(format!("cannot open {}: {e}", dev.display()));
    }
    let flags = std::fs::read_to_string(cpuinfo).unwrap_or_default();
    let has_virt = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_virt {
        KvmSupport::FullGuests
    } else {
        KvmSupport::Unusable(format!(
            "{} exists but {} shows no vmx/svm (para-virtualized or nested KVM that cannot boot Linux guests)",
            dev.display(),
            cpuinfo.display()
        ))
    }
}

/// Which VMM runs pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backend {
    Builtin,
    /// No VM: the pod's agent runs on the host (native handlers; see `super::native`).
    Native,
    /// QEMU; `kvm` false means TCG.
    Qemu {
        kvm: bool,
    },
}

impl Backend {
    /// The name of the backend's VMM among a VM's processes (see [`super::VmRecord`]).
    pub fn vmm_name(self) -> &'static str {
        match self {
            Self::Builtin => super::builtin::VMM,
            Self::Native => super::native::AGENT,
            Self::Qemu { .. } => super::qemu::QEMU,
        }
    }
}

/// The decision and the reason, as logged at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub backend: Backend,
    pub reason: String,
}

/// Applies the config to what the host supports.
pub fn select(config: &HypervisorConfig, kvm: &KvmSupport) -> Selection {
    let (kvm_ok, kvm_why) = match kvm {
        KvmSupport::FullGuests => (true, "KVM runs full guests (vmx/svm present)".to_string()),
        KvmSupport::Unusable(why) => (false, why.clone()),
    };
    let qemu_kvm = match config.accel {
        AccelKind::Kvm => true,
        AccelKind::Tcg => false,
        AccelKind::Auto => kvm_ok,
    };
    let accel_why = match config.accel {
        AccelKind::Auto => format!("accel auto: {kvm_why}"),
        other => format!("accel {other:?} set in config"),
    };
    let accel = if qemu_kvm { "kvm" } else { "tcg" };
    match config.kind {
        HypervisorKind::Qemu => Selection {
            backend: Backend::Qemu { kvm: qemu_kvm },
            reason: format!("hypervisor qemu set in config; -accel {accel} ({accel_why})"),
        },
        HypervisorKind::Builtin => Selection {
            backend: Backend::Builtin,
            reason: "hypervisor builtin set in config".into(),
        },
        // accel = "tcg" asks for QEMU's emulation, which only QEMU has.
        HypervisorKind::Auto if kvm_ok && config.accel != AccelKind::Tcg => Selection {
            backend: Backend::Builtin,
            reason: format!("hypervisor auto: builtin, since {kvm_why}"),
        },
        HypervisorKind::Auto => Selection {
            backend: Backend::Qemu { kvm: qemu_kvm },
            reason: format!(
                "hypervisor auto: qemu, since the built-in VMM needs a KVM that runs full guests; -accel {accel} ({accel_why})"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dev_kvm_is_unusable() {
        let s = probe_kvm_at(Path::new("/nonexistent/kvm"), Path::new("/proc/cpuinfo"));
        assert!(matches!(s, KvmSupport::Unusable(ref why) if why.contains("/nonexistent/kvm")));
    }

    #[test]
    fn cpu_flags_decide() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, "").unwrap();
        let cpuinfo = dir.path().join("cpuinfo");
        std::fs::write(&cpuinfo, "flags\t\t: fpu sse2 lm\n").unwrap();
        assert!(matches!(
            probe_kvm_at(&dev, &cpuinfo),
            KvmSupport::Unusable(_)
        ));
        std::fs::write(&cpuinfo, "flags\t\t: fpu vmx lm\n").unwrap();
        assert_eq!(probe_kvm_at(&dev, &cpuinfo), KvmSupport::FullGuests);
    }

    #[test]
    fn auto_without_kvm_picks_qemu_tcg_with_reason() {
        let cfg = HypervisorConfig::default();
        let s = select(&cfg, &KvmSupport::Unusable("no vmx".into()));
        assert_eq!(s.backend, Backend::Qemu { kvm: false });
        assert!(
            s.reason.contains("tcg") && s.reason.contains("no vmx"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn auto_with_full_kvm_picks_the_builtin_vmm() {
        let s = select(&HypervisorConfig::default(), &KvmSupport::FullGuests);
        assert_eq!(s.backend, Backend::Builtin);
        assert!(s.reason.contains("vmx/svm"), "{}", s.reason);
        let qemu = HypervisorConfig {
            kind: HypervisorKind::Qemu,
            ..Default::default()
        };
        assert_eq!(
            select(&qemu, &KvmSupport::FullGuests).backend,
            Backend::Qemu { kvm: true }
        );
    }

    #[test]
    fn forced_tcg_wins_over_kvm() {
        let cfg = HypervisorConfig {
            accel: AccelKind::Tcg,
            ..Default::default()
        };
        let s = select(&cfg, &KvmSupport::FullGuests);
        assert_eq!(s.backend, Backend::Qemu { kvm: false });
    }
}
