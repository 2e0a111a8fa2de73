//! A container in the runtime: its record, its CRI log and the tasks that follow it (log
//! pumps, exit watcher).

use parking_lot::Mutex;

use crate::image::LayerLease;
use crate::logs::LogFile;

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
    /// Keeps the image layers under the rootfs from garbage collection.
    _layers: Option<LayerLease>,
}

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

    /// Waits until the container is recorded as exited, up to `timeout`.
    pub async fn wait_exited(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.exited.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
