//! The guest console as the agent's start signal.
//!
//! vhost-device-vsock 0.3 (the QEMU backend's vsock device) loses its vring worker thread when
//! a host CONNECT reaches it after the guest mapped memory but before the guest set up the
//! vsock rings: walking the not-yet-ready RX ring fails, the error ends the worker, and every
//! later CONNECT waits unanswered in the listen backlog. So the first CONNECT is sent only once
//! the agent wrote [`AGENT_READY_LINE`] to the console, when the rings exist. The line is only
//! a hint about timing: a guest that writes it early harms nothing but its own boot.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use vessel_protocols::guest::AGENT_READY_LINE;

/// How often the console is read while waiting.
const POLL: Duration = Duration::from_millis(10);
/// Most bytes read per poll; the guest chooses how much it writes.
const CHUNK: u64 = 64 * 1024;

/// Why the ready line was not seen.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleWaitError {
    #[error("the VM exited: {0}")]
    VmExited(String),
    #[error("the agent did not write {AGENT_READY_LINE:?} to the console")]
    Deadline,
}

/// Scans a growing file for a marker, reading each byte once; keeps only the marker's length
/// of the previous read, so a marker split across reads is found and memory stays bounded.
struct MarkerScan<'a> {
    marker: &'a [u8],
    offset: u64,
    carry: Vec<u8>,
}

impl<'a> MarkerScan<'a> {
    fn new(marker: &'a str) -> Self {
        Self {
            marker: marker.as_bytes(),
            offset: 0,
            carry: Vec::new(),
        }
    }

    /// Reads what was appended to `path` since the last call (up to [`CHUNK`] bytes); true
    /// once the marker was seen. A missing file is not an error: the VMM may not have made it.
    fn poll(&mut self, path: &Path) -> bool {
        let Ok(mut file) = std::fs::File::open(path) else {
            return false;
        };
        let mut fresh = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.take(CHUNK).read_to_end(&mut fresh).is_err()
        {
            return false;
        }
        self.offset += fresh.len() as u64;
        self.carry.extend_from_slice(&fresh);
        if self
            .carry
            .windows(self.marker.len())
            .any(|w| w == self.marker)
        {
            return true;
        }
        let keep = self.marker.len().saturating_sub(1);
        let drop = self.carry.len().saturating_sub(keep);
        self.carry.drain(..drop);
        false
    }
}

/// Waits until the console at `path` shows the agent's ready line, the VM exits (`alive`
/// returns a reason) or `deadline` passes.
pub async fn wait_agent_ready_line(
    path: &Path,
    deadline: Instant,
    mut alive: impl FnMut() -> Option<String>,
) -> Result<(), ConsoleWaitError> {
    let mut scan = MarkerScan::new(AGENT_READY_LINE);
    loop {
        // Read until caught up: a console that grew by more than one chunk is scanned now.
        loop {
            let before = scan.offset;
            if scan.poll(path) {
                return Ok(());
            }
            if scan.offset - before < CHUNK {
                break;
            }
        }
        if let Some(reason) = alive() {
            return Err(ConsoleWaitError::VmExited(reason));
        }
        if Instant::now() >= deadline {
            return Err(ConsoleWaitError::Deadline);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    #[test]
    fn finds_a_marker_split_across_reads() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("console");
        let mut scan = MarkerScan::new("vessel-agent: ready");
        assert!(!scan.poll(&f), "no file yet");
        append(&f, b"[ 0.1] boot\nvessel-ag");
        assert!(!scan.poll(&f));
        assert!(scan.carry.len() < "vessel-agent: ready".len());
        append(&f, b"ent: ready\n");
        assert!(scan.poll(&f));
    }

    #[test]
    fn a_large_console_is_read_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("console");
        let mut junk = vec![b'x'; 3 * CHUNK as usize];
        junk.extend_from_slice(b"\nvessel-agent: ready\n");
        append(&f, &junk);
        let mut scan = MarkerScan::new("vessel-agent: ready");
        let mut polls = 0;
        while !scan.poll(&f) {
            polls += 1;
            assert!(scan.carry.len() <= CHUNK as usize + 32);
            assert!(polls < 10);
        }
        assert_eq!(polls, 3);
    }

    #[tokio::test]
    async fn waits_for_the_line_or_stops_at_exit_or_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("console");
        append(&f, b"booting\n");
        let deadline = Instant::now() + Duration::from_millis(50);
        let err = wait_agent_ready_line(&f, deadline, || None).await;
        assert!(matches!(err, Err(ConsoleWaitError::Deadline)), "{err:?}");
        let far = Instant::now() + Duration::from_secs(30);
        let err = wait_agent_ready_line(&f, far, || Some("gone".into())).await;
        assert!(matches!(err, Err(ConsoleWaitError::VmExited(_))), "{err:?}");
        append(&f, format!("{AGENT_READY_LINE}\n").as_bytes());
        wait_agent_ready_line(&f, far, || None).await.unwrap();
    }
}
