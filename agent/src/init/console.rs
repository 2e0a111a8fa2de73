//! The console: standard streams on `/dev/console`, and tracing to stderr in plain text.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::time::{clock_gettime, ClockId};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The guest's console device (the kernel runs with `console=ttyS0`).
pub const CONSOLE: &str = "/dev/console";

/// Filter used when neither the kernel command line nor `VESSEL_LOG` sets one.
pub const DEFAULT_LOG_FILTER: &str = "info,libcgroups::v2::util=error";

/// Timestamps as seconds since boot (`CLOCK_BOOTTIME`), like the kernel's own lines, so
/// the agent's, the helper's and the kernel's messages line up on the console.
struct BootTime;

impl FormatTime for BootTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        match clock_gettime(ClockId::CLOCK_BOOTTIME) {
            Ok(t) => write!(w, "[{:5}.{:06}]", t.tv_sec(), t.tv_nsec() / 1000),
            Err(_) => write!(w, "[?]"),
        }
    }
}

/// Points stdin, stdout and stderr at `/dev/console`.
pub fn reopen_stdio() -> io::Result<()> {
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE)?;
    let fd = console.as_raw_fd();
    for target in 0..=2 {
        if fd != target {
            nix::unistd::dup2(fd, target).map_err(io::Error::from)?;
        }
    }
    if fd <= 2 {
        // The console landed on a standard stream itself: keep it open.
        let _ = console.into_raw_fd();
    }
    Ok(())
}

/// Installs the global tracing subscriber: plain text on stderr, with `filter`
/// (an `EnvFilter` directive; an invalid one falls back to the default).
pub fn init_logging(filter: &str) {
    init_logging_to(filter, io::stderr);
}

/// Like [`init_logging`], with another destination.
pub fn init_logging_to<W>(filter: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let env_filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("vessel-agent: invalid log filter {filter:?} ({e}); using {DEFAULT_LOG_FILTER}");
        EnvFilter::new(DEFAULT_LOG_FILTER)
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(false)
        .with_timer(BootTime)
        .with_writer(writer)
        .try_init();
}
