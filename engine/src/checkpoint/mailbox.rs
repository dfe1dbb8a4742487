//! A task's control mailbox: how the job master (through its TaskManager) reaches a running
//! task to trigger a checkpoint at a source or to tell every task that a checkpoint completed
//! or was aborted. Senders are on other threads; the task drains the mailbox when its doorbell
//! wakes it or between batches (one atomic load), never per record. The queue is bounded: a
//! task that does not drain it makes the sender's trigger fail, which the coordinator counts as
//! a failed checkpoint instead of queueing without limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use corestream_netstack::Doorbell;

use super::{BarrierOptions, CheckpointId, CheckpointNotice};

/// A message for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage {
    /// Sources only: snapshot the position and send barriers for this checkpoint.
    Trigger {
        checkpoint_id: CheckpointId,
        timestamp_ms: i64,
        options: BarrierOptions,
    },
    Notify(CheckpointNotice),
}

/// The mailbox was full; the message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the task's control mailbox is full ({capacity} messages)")]
pub struct MailboxFull {
    pub capacity: usize,
}

/// Bounded queue of control messages for one task, ringing its doorbell on every send.
pub struct ControlMailbox {
    queue: Mutex<VecDeque<ControlMessage>>,
    pending: AtomicBool,
    capacity: usize,
    bell: Arc<Doorbell>,
}

impl std::fmt::Debug for ControlMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlMailbox").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl ControlMailbox {
    /// Messages a mailbox holds at most by default: a few checkpoints' triggers and
    /// notifications.
    pub const DEFAULT_CAPACITY: usize = 64;

    pub fn new(bell: Arc<Doorbell>, capacity: usize) -> Self {
        Self { queue: Mutex::new(VecDeque::new()), pending: AtomicBool::new(false), capacity: capacity.max(1), bell }
    }

    /// Queues `message` and wakes the task.
    pub fn send(&self, message: ControlMessage) -> Result<(), MailboxFull> {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= self.capacity {
                return Err(MailboxFull { capacity: self.capacity });
            }
            queue.push_back(message);
            self.pending.store(true, Ordering::Release);
        }
        self.bell.ring();
        Ok(())
    }

    /// Whether messages wait (one atomic load: the task checks it between batches).
    #[inline]
    pub fn has_mail(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes every waiting message, oldest first.
    pub fn drain(&self, into: &mut Vec<ControlMessage>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        into.extend(queue.drain(..));
        self.pending.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_out_in_order_and_the_bound_holds() {
        let mailbox = ControlMailbox::new(Arc::new(Doorbell::new()), 2);
        assert!(!mailbox.has_mail());
        mailbox.send(ControlMessage::Notify(CheckpointNotice::Complete(1))).unwrap();
        mailbox.send(ControlMessage::Notify(CheckpointNotice::Aborted(2))).unwrap();
        assert_eq!(
            mailbox.send(ControlMessage::Notify(CheckpointNotice::Complete(3))),
            Err(MailboxFull { capacity: 2 })
        );
        assert!(mailbox.has_mail());
        let mut out = Vec::new();
        mailbox.drain(&mut out);
        assert_eq!(
            out,
            vec![
                ControlMessage::Notify(CheckpointNotice::Complete(1)),
                ControlMessage::Notify(CheckpointNotice::Aborted(2))
            ]
        );
        assert!(!mailbox.has_mail());
        mailbox.send(ControlMessage::Notify(CheckpointNotice::Complete(3))).unwrap();
    }
}
