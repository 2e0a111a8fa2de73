//! The agent's options on the kernel command line (`/proc/cmdline`).
//!
//! - `vessel.log=<filter>`: the tracing filter (e.g. `debug`, `vessel_agent=trace`).
//! - `vessel.floor`: benchmark floor: print `vessel-agent: floor` and power off at once.

/// Path of the kernel command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// What the kernel command line asks of the agent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `vessel.log=<filter>`.
    pub log: Option<String>,
    /// `vessel.floor` is present.
    pub floor: bool,
}

impl Cmdline {
    /// Parses a command line; unknown words are ignored.
    pub fn parse(line: &str) -> Self {
        let mut out = Cmdline::default();
        for word in line.split_whitespace() {
            if word == "vessel.floor" {
                out.floor = true;
            } else if let Some(level) = word.strip_prefix("vessel.log=") {
                if !level.is_empty() {
                    out.log = Some(level.to_string());
                }
            }
        }
        out
    }

    /// Reads and parses `/proc/cmdline`; an unreadable file gives the defaults.
    pub fn read() -> Self {
        std::fs::read_to_string(PROC_CMDLINE)
            .map(|s| Cmdline::parse(&s))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_and_floor() {
        let c = Cmdline::parse("console=ttyS0 reboot=t vessel.log=debug quiet vessel.floor\n");
        assert_eq!(c.log.as_deref(), Some("debug"));
        assert!(c.floor);
    }

    #[test]
    fn defaults_and_lookalikes() {
        let c = Cmdline::parse("console=ttyS0 vessel.floorx vessel.log= xvessel.log=trace");
        assert_eq!(c, Cmdline::default());
    }
}
