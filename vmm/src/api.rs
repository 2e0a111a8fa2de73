//! The control socket of a running VM: a Unix socket taking one command per line, `pause`,
//! `resume`, `shutdown`, `info` or `metrics` (the counters of the vCPUs and devices), and
//! answering each with one JSON line (`{"ok":true,...}` or `{"ok":false,"error":"..."}`, built
//! with serde). [`VmControl`] is the state the vCPU loop consults after every exit; a command that changes it kicks the vCPUs out of KVM_RUN with a signal.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde_json::{json, Value};

/// What the vCPUs should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Paused,
    ShuttingDown,
}

/// The `info` answer.
#[derive(Serialize)]
struct Info {
    ok: bool,
    state: RunState,
    memory_mib: u64,
    vcpus: usize,
    uptime_ms: u128,
}

#[derive(Debug)]
struct Inner {
    wanted: RunState,
    /// How many vCPUs have seen a pause and are parked.
    parked: usize,
    /// How many vCPUs have seen the shutdown and left their loops.
    stopped: usize,
}

/// A source of counters for `metrics`: returns a JSON object.
pub type MetricsSource = Box<dyn Fn() -> Value + Send + Sync>;

/// Shared between the control socket and the vCPU loop.
pub struct VmControl {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Interrupts every vCPU's KVM_RUN (each then calls [`VmControl::checkpoint`]).
    kick: Box<dyn Fn() + Send + Sync>,
    vcpus: usize,
    memory_mib: u64,
    started: Instant,
    metrics: Mutex<Vec<(String, MetricsSource)>>,
}

impl VmControl {
    /// Control of a VM with `vcpus` vCPU threads, each calling [`VmControl::checkpoint`].
    pub fn new(vcpus: usize, memory_mib: u64, kick: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                wanted: RunState::Running,
                parked: 0,
                stopped: 0,
            }),
            changed: Condvar::new(),
            kick,
            vcpus,
            memory_mib,
            started: Instant::now(),
            metrics: Mutex::new(Vec::new()),
        }
    }

    /// Adds `source`'s counters to `metrics`, under `name`.
    pub fn add_metrics(&self, name: &str, source: MetricsSource) {
        self.metrics.lock().push((name.to_owned(), source));
    }

    /// The `metrics` answer.
    fn metrics(&self) -> Value {
        let sources = self.metrics.lock();
        let metrics: serde_json::Map<String, Value> = sources
            .iter()
            .map(|(name, source)| (name.clone(), source()))
            .collect();
        json!({
            "ok": true,
            "uptime_ms": self.started.elapsed().as_millis(),
            "metrics": metrics,
        })
    }

    /// Called by each vCPU loop after every exit: parks while paused; returns false once
    /// the VM is to shut down.
    pub fn checkpoint(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.wanted == RunState::Paused {
            inner.parked += 1;
            self.changed.notify_all();
            while inner.wanted == RunState::Paused {
                self.changed.wait(&mut inner);
            }
            inner.parked -= 1;
        }
        if inner.wanted == RunState::ShuttingDown {
            inner.stopped += 1;
            self.changed.notify_all();
            return false;
        }
        true
    }

    /// After a shutdown: kicks the vCPUs until each has left its loop (a kick that lands
    /// just before a vCPU enters KVM_RUN is lost, and an idle guest may not exit for long),
    /// for at most 5 s.
    pub fn kick_until_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut inner = self.inner.lock();
        while inner.stopped < self.vcpus && Instant::now() < deadline {
            drop(inner);
            (self.kick)();
            inner = self.inner.lock();
            self.changed.wait_for(&mut inner, Duration::from_millis(10));
        }
    }

    fn all_parked(&self, inner: &Inner) -> bool {
        inner.parked >= self.vcpus
    }

    /// Pauses the vCPUs and waits until all are parked (kicking them out of the guest).
    pub fn pause(&self) -> Result<(), String> {
        let mut inner = self.inner.lock();
        match inner.wanted {
            RunState::ShuttingDown => return Err("the VM is shutting down".into()),
            RunState::Paused if self.all_parked(&inner) => return Ok(()),
            _ => inner.wanted = RunState::Paused,
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.all_parked(&inner) {
            drop(inner);
            (self.kick)();
            inner = self.inner.lock();
            if self.all_parked(&inner) {
                break;
            }
            if Instant::now() >= deadline {
                return Err("the vCPUs did not stop within 5 s".into());
            }
            self.changed.wait_for(&mut inner, Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn resume(&self) -> Result<(), String> {
        let mut inner = self.inner.lock();
        if inner.wanted == RunState::ShuttingDown {
            return Err("the VM is shutting down".into());
        }
        inner.wanted = RunState::Running;
        self.changed.notify_all();
        Ok(())
    }

    /// Asks the vCPU loops to end (the VMM then exits 0).
    pub fn shutdown(&self) {
        self.inner.lock().wanted = RunState::ShuttingDown;
        self.changed.notify_all();
        (self.kick)();
    }

    pub fn state(&self) -> RunState {
        self.inner.lock().wanted
    }

    /// The `info` answer.
    fn info(&self) -> Value {
        json!(Info {
            ok: true,
            state: self.state(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            uptime_ms: self.started.elapsed().as_millis(),
        })
    }

    /// Answers one command line with one JSON document.
    pub fn handle(&self, line: &str) -> String {
        let done = |r: Result<(), String>| match r {
            Ok(()) => json!({"ok": true, "state": self.state()}),
            Err(e) => json!({"ok": false, "error": e}),
        };
        let reply = match line.trim() {
            "info" => self.info(),
            "metrics" => self.metrics(),
            "pause" => done(self.pause()),
            "resume" => done(self.resume()),
            "shutdown" => {
                self.shutdown();
                done(Ok(()))
            }
            other => json!({"ok": false, "error": format!("unknown command {other:?}")}),
        };
        reply.to_string()
    }
}

/// Serves `control` on a Unix socket at `path` (a stale file there is replaced), one
/// connection at a time, on its own thread.
pub fn serve(path: &Path, control: std::sync::Arc<VmControl>) -> std::io::Result<JoinHandle<()>> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("vmm-api".into())
        .spawn(move || {
            crate::seccomp::apply_or_exit(crate::seccomp::Role::Api);
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(&control, stream) {
                    tracing::warn!(error = %e, "control socket client");
                }
                if control.state() == RunState::ShuttingDown {
                    control.kick_until_stopped();
                    return;
                }
            }
        })
}

fn answer(control: &VmControl, stream: UnixStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let reply = control.handle(&line?);
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\n")?;
        if control.state() == RunState::ShuttingDown {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A fake vCPU: a thread calling `checkpoint` in a loop, counting its "exits".
    fn vcpu(control: &Arc<VmControl>, exits: &Arc<AtomicUsize>) -> JoinHandle<()> {
        let (control, exits) = (control.clone(), exits.clone());
        std::thread::spawn(move || {
            while control.checkpoint() {
                exits.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    #[test]
    fn pause_parks_the_vcpu_resume_releases_it_shutdown_ends_it() {
        let control = Arc::new(VmControl::new(1, 64, Box::new(|| {})));
        let exits = Arc::new(AtomicUsize::new(0));
        let thread = vcpu(&control, &exits);
        assert!(control.handle("info").contains(r#""state":"running""#));
        assert_eq!(control.handle("pause"), r#"{"ok":true,"state":"paused"}"#);
        let parked_at = exits.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            exits.load(Ordering::SeqCst),
            parked_at,
            "no progress while paused"
        );
        assert_eq!(control.handle("resume"), r#"{"ok":true,"state":"running"}"#);
        let deadline = Instant::now() + Duration::from_secs(5);
        while exits.load(Ordering::SeqCst) == parked_at {
            assert!(Instant::now() < deadline, "never resumed");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every reply is JSON, whatever the command line holds.
        let unknown: Value = serde_json::from_str(&control.handle(r#"bogus "x" \"#)).unwrap();
        assert_eq!(unknown["ok"], false);
        assert_eq!(unknown["error"], r#"unknown command "bogus \"x\" \\""#);
        control.add_metrics("vcpu_exits", Box::new(|| json!({"io": 3})));
        control.add_metrics("net0", Box::new(|| json!({"rx_frames": 1})));
        let metrics: Value = serde_json::from_str(&control.handle("metrics")).unwrap();
        assert_eq!(
            metrics["metrics"],
            json!({"vcpu_exits": {"io": 3}, "net0": {"rx_frames": 1}}),
        );
        let info: Value = serde_json::from_str(&control.handle("info")).unwrap();
        assert_eq!(info["vcpus"], 1);
        assert_eq!(
            control.handle("shutdown"),
            r#"{"ok":true,"state":"shutting-down"}"#
        );
        thread.join().unwrap();
        assert!(control.handle("pause").contains(r#""ok":false"#));
    }

    #[test]
    fn the_socket_answers_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let control = Arc::new(VmControl::new(1, 64, Box::new(|| {})));
        let exits = Arc::new(AtomicUsize::new(0));
        let thread = vcpu(&control, &exits);
        let server = serve(&path, control.clone()).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"info\npause\nshutdown\n").unwrap();
        let replies: Vec<String> = BufReader::new(client).lines().map(|l| l.unwrap()).collect();
        assert_eq!(replies.len(), 3, "{replies:?}");
        assert!(replies[0].contains(r#""memory_mib":64"#), "{replies:?}");
        assert!(replies[1].contains("paused"), "{replies:?}");
        assert!(replies[2].contains("shutting-down"), "{replies:?}");
        server.join().unwrap();
        thread.join().unwrap();
    }
}
