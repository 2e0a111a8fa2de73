//! The device event loop: one thread waits (epoll) on every device's eventfds, such as queue
//! notifications, and on other descriptors devices serve (a tap), and calls the handler
//! registered for each; a stop eventfd ends it.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// What runs when an eventfd fires.
pub type Handler = Box<dyn FnMut() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("start the event loop thread: {0}")]
    Spawn(std::io::Error),
}

/// What a handler waits on.
enum Source {
    /// An eventfd, level-triggered; drained before the handler runs.
    Event(EventFd),
    /// Another descriptor, which the handler reads itself.
    Fd,
}

/// How a descriptor other than an eventfd is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Once per change to readable: the handler must read until the descriptor would block
    /// (or keep what is left for a later call).
    Edge,
    /// Whenever it is readable: the handler must make it not readable, or the loop spins.
    Level,
}

/// Eventfds and their handlers, not yet running.
pub struct EventLoop {
    epoll: Epoll,
    handlers: Vec<(Source, Handler)>,
    stop: EventFd,
}

impl EventLoop {
    pub fn new() -> Result<Self, EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, u64::MAX),
            )
            .map_err(EventLoopError::Epoll)?;
        Ok(Self {
            epoll,
            handlers: Vec::new(),
            stop,
        })
    }

    /// Calls `handler` (after draining `fd`) whenever `fd` is signalled.
    pub fn add(&mut self, fd: EventFd, handler: Handler) -> Result<(), EventLoopError> {
        let index = self.handlers.len() as u64;
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, index),
            )
            .map_err(EventLoopError::Epoll)?;
        self.handlers.push((Source::Event(fd), handler));
        Ok(())
    }

    /// Calls `handler` when `fd` is readable, as `trigger` says. The descriptor's owner keeps
    /// it open while the loop runs.
    pub fn add_readable(
        &mut self,
        fd: RawFd,
        trigger: Trigger,
        handler: Handler,
    ) -> Result<(), EventLoopError> {
        let index = self.handlers.len() as u64;
        let events = match trigger {
            Trigger::Edge => EventSet::IN | EventSet::EDGE_TRIGGERED,
            Trigger::Level => EventSet::IN,
        };
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, index))
            .map_err(EventLoopError::Epoll)?;
        self.handlers.push((Source::Fd, handler));
        Ok(())
    }

    /// Runs the loop on its own thread; writing the returned eventfd stops it.
    pub fn spawn(self) -> Result<(JoinHandle<()>, EventFd), EventLoopError> {
        let stop = self.stop.try_clone().map_err(EventLoopError::EventFd)?;
        let thread = std::thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || {
                crate::seccomp::apply_or_exit(crate::seccomp::Role::EventLoop);
                self.run()
            })
            .map_err(EventLoopError::Spawn)?;
        Ok((thread, stop))
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); self.handlers.len() + 1];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "device event loop: epoll_wait");
                    return;
                }
            };
            for event in &events[..n] {
                let Some((source, handler)) = self.handlers.get_mut(event.data() as usize) else {
                    return; // the stop eventfd
                };
                if let Source::Event(fd) = source {
                    let _ = fd.read(); // level-triggered: drain before handling
                }
                handler();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn each_eventfd_reaches_its_handler_until_stopped() {
        let mut events = EventLoop::new().unwrap();
        let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let fds: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        for (i, fd) in fds.iter().enumerate() {
            let counts = counts.clone();
            events
                .add(
                    fd.try_clone().unwrap(),
                    Box::new(move || {
                        counts[i].fetch_add(1, Ordering::SeqCst);
                    }),
                )
                .unwrap();
        }
        let (thread, stop) = events.spawn().unwrap();
        fds[1].write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while counts[1].load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Handled once (the eventfd was drained), and only by its own handler.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(counts[1].load(Ordering::SeqCst), 1);
        assert_eq!(counts[0].load(Ordering::SeqCst), 0);
        stop.write(1).unwrap();
        thread.join().unwrap();
    }
}
