//! A container in the runtime: its record, its CRI log, the tasks that follow it (log
//! pumps, exit watcher) and the attached clients its output also goes to.

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::image::LayerLease;
use crate::logs::{LogFile, Stream};

use crate::runtime::{ContainerRecord, ContainerState};

pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    /// Held by Start, Stop and Remove of this container.
    pub lifecycle: tokio::sync::Mutex<()>,
    record: Mutex<ContainerRecord>,
    pub log: Option<std::sync::Arc<LogFile>>,
    /// Notified when the exit watcher recorded the exit.
    pub exited: tokio::sync::watch::Sender<bool>,
    /// The log pumps, handed to the exit watcher so an exit is recorded after the last output.
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Attached clients (CRI Attach): each gets the output the log pumps read.
    attached: Mutex<Attached>,
    /// Keeps the image layers under the rootfs from garbage collection.
    _layers: Option<LayerLease>,
}

/// The attached clients, and whether the container's output has ended (a client attaching
/// after that gets a closed channel at once).
#[derive(Default)]
struct Attached {
    clients: Vec<mpsc::Sender<(Stream, Bytes)>>,
    ended: bool,
}

/// Output chunks an attached client may be behind by; one further behind is detached, so
/// the CRI log never waits for a slow client.
const ATTACH_BACKLOG: usize = 256;

impl Container {
    pub(super) fn new(
        record: ContainerRecord,
        log: Option<std::sync::Arc<LogFile>>,
        layers: Option<LayerLease>,
    ) -> Self {
        let done = record.state == ContainerState::Exited;
        Self {
            id: record.id.clone(),
            sandbox_id: record.sandbox_id.clone(),
            lifecycle: tokio::sync::Mutex::new(()),
            record: Mutex::new(record),
            log,
            exited: tokio::sync::watch::channel(done).0,
            pumps: Mutex::new(Vec::new()),
            attached: Mutex::new(Attached::default()),
            _layers: layers,
        }
    }

    pub(super) fn set_pumps(&self, pumps: Vec<tokio::task::JoinHandle<()>>) {
        *self.pumps.lock() = pumps;
    }

    pub(super) fn take_pumps(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut *self.pumps.lock())
    }

    pub fn record(&self) -> ContainerRecord {
        self.record.lock().clone()
    }

    pub fn state(&self) -> ContainerState {
        self.record.lock().state
    }

    /// Applies `f` to the record and returns the new value (the caller persists it).
    pub(super) fn update(&self, f: impl FnOnce(&mut ContainerRecord)) -> ContainerRecord {
        let mut record = self.record.lock();
        f(&mut record);
        record.clone()
    }

    /// A new attached client: the output read from now on, until the container's output
    /// ends or the client falls [`ATTACH_BACKLOG`] chunks behind (the channel then closes).
    pub fn subscribe(&self) -> mpsc::Receiver<(Stream, Bytes)> {
        let (tx, rx) = mpsc::channel(ATTACH_BACKLOG);
        let mut attached = self.attached.lock();
        if !attached.ended {
            attached.clients.push(tx);
        }
        rx
    }

    /// Hands a chunk of output to the attached clients (the log pump, after the CRI log),
    /// without waiting for any.
    pub(super) fn fan_out(&self, stream: Stream, data: &Bytes) {
        let mut attached = self.attached.lock();
        attached.clients.retain(|client| {
            let kept = client.try_send((stream, data.clone())).is_ok();
            if !kept && !client.is_closed() {
                tracing::info!(container_id = %self.id, "attached client too slow for the output: detached");
            }
            kept
        });
    }

    /// Closes every attached client's output: the container's output has ended.
    pub(super) fn detach_all(&self) {
        let mut attached = self.attached.lock();
        attached.ended = true;
        attached.clients.clear();
    }

    /// Waits until the container is recorded as exited, up to `timeout`.
    pub async fn wait_exited(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.exited.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
