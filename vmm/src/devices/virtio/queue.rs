//! What a request-response virtio device (rng, block) holds once activated: its virtqueue
//! with the guest memory and interrupt it serves through, and the one pass every such device
//! makes over it: take each available chain, let the device handle it, return it as used,
//! raise the interrupt if the driver wants one.

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{ActivateError, VirtioInterrupt, INTERRUPT_USED_RING};
use crate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("virtqueue: {0:?}")]
    Queue(virtio_queue::Error),
    #[error("raise the used-ring interrupt: {0}")]
    Interrupt(std::io::Error),
}

/// An activated device's request queue.
pub struct ActiveQueue {
    pub memory: GuestMemory,
    pub interrupt: Arc<VirtioInterrupt>,
    pub queue: Queue,
}

impl ActiveQueue {
    /// The queue of a one-queue device, from what the transport hands `activate`.
    pub fn activate(
        device: &str,
        memory: GuestMemory,
        interrupt: Arc<VirtioInterrupt>,
        mut queues: Vec<Queue>,
    ) -> Result<Self, ActivateError> {
        let Some(queue) = queues.pop() else {
            return Err(ActivateError::Device(format!(
                "{device} needs its request queue"
            )));
        };
        Ok(Self {
            memory,
            interrupt,
            queue,
        })
    }

    /// Hands every available chain to `handle`, which returns the bytes it wrote into the
    /// chain; returns the chains as used and raises the interrupt if the driver wants one.
    /// Returns how many were served; an error from `handle` ends the pass at once.
    pub fn serve<E: From<QueueError>>(
        &mut self,
        mut handle: impl FnMut(&GuestMemory, DescriptorChain<&GuestMemory>) -> Result<u32, E>,
    ) -> Result<usize, E> {
        let mut served = Vec::new();
        for chain in self.queue.iter(&self.memory).map_err(QueueError::Queue)? {
            let head = chain.head_index();
            served.push((head, handle(&self.memory, chain)?));
        }
        for &(head, written) in &served {
            self.queue
                .add_used(&self.memory, head, written)
                .map_err(QueueError::Queue)?;
        }
        if !served.is_empty()
            && self
                .queue
                .needs_notification(&self.memory)
                .map_err(QueueError::Queue)?
        {
            self.interrupt
                .trigger(INTERRUPT_USED_RING)
                .map_err(QueueError::Interrupt)?;
        }
        Ok(served.len())
    }
}
