//! The idle timeout of a streaming connection (kubelet's `StreamIdleTimeout`): a connection on
//! which no frame or message moved either way for that long is closed, so a client that
//! stalls or vanishes without a word does not hold a session, its process and its agent
//! stream forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When a connection last moved a frame.
#[derive(Clone)]
pub struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: Arc<AtomicU64>,
}

impl Activity {
    /// Tracks a connection: `gone` is cancelled once it has been idle for `timeout`.
    pub fn watch(timeout: Duration, gone: CancellationToken) -> Self {
        let activity = Activity {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        };
        let watched = activity.clone();
        tokio::spawn(async move {
            let check = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = gone.cancelled() => return,
                    () = tokio::time::sleep(check) => {}
                }
                if watched.idle() >= timeout {
                    tracing::info!(?timeout, "streaming connection idle: closed");
                    gone.cancel();
                    return;
                }
            }
        });
        activity
    }

    /// A frame moved.
    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let gone = CancellationToken::new();
        let activity = Activity::watch(Duration::from_secs(10), gone.clone());
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            activity.touch();
        }
        assert!(!gone.is_cancelled(), "touched every 5 s of 10");
        tokio::time::sleep(Duration::from_secs(13)).await;
        assert!(gone.is_cancelled());
    }
}
