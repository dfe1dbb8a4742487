//! A doorbell wakes one task from any thread: producers ring their consumer's bell after they
//! queue a buffer, consumers ring their producer's bell after they grant credit, and the job
//! rings every bell on cancellation. A ring that finds the task awake costs two atomic
//! operations; only a ring that finds it parked wakes its executor (an eventfd write in
//! glommio). Rings are never lost: the flag is checked again after the waker is registered.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// A wake-up flag with a registered waker.
#[derive(Debug, Default)]
pub struct Doorbell {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Doorbell {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the task waiting on this bell, or makes its next wait return at once.
    pub fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Consumes a pending ring without waiting.
    pub fn take_ring(&self) -> bool {
        self.rung.swap(false, Ordering::AcqRel)
    }

    /// Drops the registered waker: called when the task that waits on this bell has ended, so
    /// the bell (which may outlive the task) does not keep the task's executor alive.
    pub fn clear_waker(&self) {
        drop(self.waker.take());
    }

    /// Waits until the bell is rung (returns at once if it was rung since the last wait).
    pub fn wait(&self) -> Wait<'_> {
        Wait { bell: self }
    }
}

/// Future returned by [`Doorbell::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    bell: &'a Doorbell,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.bell.take_ring() {
            return Poll::Ready(());
        }
        self.bell.waker.register(cx.waker());
        if self.bell.take_ring() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
