//! How a pod VM ended, from its VMM's exit and the guest console.
//!
//! The backends signal a guest kernel panic through a pvpanic device (the guest's pvpanic
//! driver writes to it from its panic notifier): vessel-vmm then exits 3, QEMU (with
//! `-action panic=exit-failure`) 1. A panic before the driver loaded, or of a VM whose VMM
//! was not this daemon's child (adopted after a restart), shows only on the console; so a
//! reset, a stop or an unknown end whose console tail holds the kernel's panic line is a
//! panic too. The guest writes its console, so it could fake that line: it gains nothing by
//! it, since it can panic for real.

use super::Exited;

/// What the kernel prints first when it panics.
const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// How a pod VM's VMM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    PowerOff,
    /// The guest reset: a triple fault or a reboot request.
    Reset,
    /// The guest powered off or reset (QEMU with `-no-reboot` exits alike for both).
    Stopped,
    /// The guest kernel panicked; the console's panic line when there is one.
    Panic(Option<String>),
    /// A signal killed the VMM (e.g. SIGKILL from outside, or its own crash).
    Killed(Exited),
    /// The VMM itself failed with this status (its log says why).
    Failed(i32),
    /// The VMM is gone and nothing says how (it was not this daemon's child).
    Unknown,
    /// The host's OOM killer killed the VMM: the VM's host cgroup (this path) or a parent
    /// (the pod's) reached its memory limit.
    OutOfMemory { cgroup: String },
}

impl VmExit {
    /// Refines the exit with the tail of the guest console: an end that could have been a
    /// panic is one when the console shows the kernel's panic line.
    pub fn with_console(self, console_tail: &str) -> Self {
        let line = console_tail
            .lines()
            .rev()
            .find(|l| l.contains(PANIC_MARKER))
            .map(|l| l[l.find(PANIC_MARKER).unwrap_or(0)..].trim_end().to_owned());
        match (self, line) {
            (Self::Reset | Self::Stopped | Self::Unknown | Self::Panic(None), Some(line)) => {
                Self::Panic(Some(line))
            }
            (exit, _) => exit,
        }
    }

    /// Whether the guest kernel panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Self::Panic(_))
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PowerOff => f.write_str("the guest powered off"),
            Self::Reset => f.write_str("the guest reset"),
            Self::Stopped => f.write_str("the guest powered off or reset"),
            Self::Panic(Some(line)) => write!(f, "the guest kernel panicked ({line})"),
            Self::Panic(None) => f.write_str("the guest kernel panicked"),
            Self::Killed(how) => write!(f, "the VMM was {how}"),
            Self::Failed(code) => write!(f, "the VMM failed with exit status {code}"),
            Self::Unknown => f.write_str("the VMM is gone (its exit status is unknown)"),
            Self::OutOfMemory { cgroup } => write!(
                f,
                "the host's OOM killer killed the VMM (OOMKilled): its cgroup {cgroup} reached the pod's memory limit"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "[    2.646450] sysrq: Trigger a crash\n\
        [    2.646989] Kernel panic - not syncing: sysrq triggered crash\n\
        [    2.650243]  sysrq_handle_crash+0x16/0x20\n";

    #[test]
    fn the_console_turns_an_ambiguous_end_into_a_panic() {
        let panic = VmExit::Panic(Some(
            "Kernel panic - not syncing: sysrq triggered crash".into(),
        ));
        for exit in [
            VmExit::Reset,
            VmExit::Stopped,
            VmExit::Unknown,
            VmExit::Panic(None),
        ] {
            assert_eq!(exit.with_console(CONSOLE), panic);
        }
        assert!(
            panic.to_string().contains("sysrq triggered crash"),
            "{panic}"
        );
    }

    #[test]
    fn clear_ends_stay_what_they_were() {
        let killed = VmExit::Killed(Exited::Signal(9));
        assert_eq!(killed.clone().with_console(CONSOLE), killed);
        assert_eq!(killed.to_string(), "the VMM was killed by SIGKILL");
        assert_eq!(VmExit::PowerOff.with_console(CONSOLE), VmExit::PowerOff);
        assert_eq!(VmExit::Reset.with_console("booted\n"), VmExit::Reset);
        assert!(!VmExit::Reset.is_panic());
    }
}
