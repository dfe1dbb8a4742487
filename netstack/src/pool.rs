//! The bounded pool of 32 KB network buffers, one per TaskManager. All buffers are carved from
//! one 4 KiB-aligned region allocated at start-up (so the transport can register it with
//! io_uring once). Free buffers are kept on a LIFO stack so the hottest buffer, likely still in
//! cache, is reused first and untouched pages of the region stay unbacked.
//!
//! Jobs reserve the buffers they can hold at most before they are deployed
//! ([`BufferPool::reserve`]); a job whose worst case does not fit is refused with a clear error
//! instead of deadlocking later. Invariant: `free + in_use == capacity` at every instant, and a
//! buffer index is owned by exactly one handle ([`BufferBuilder`] or [`Buffer`](crate::Buffer)) or by the free
//! stack, never by two.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::buffer::{BufferBuilder, BUFFER_SIZE};
use crate::error::NetError;

const REGION_ALIGN_BYTES: usize = 4096;

pub(crate) struct PoolInner {
    base: *mut u8,
    capacity: u32,
    free: Mutex<Vec<u32>>,
    reserved: AtomicU32,
    peak_in_use: AtomicU32,
    taken_total: AtomicU32,
}

// SAFETY: `base` points to a region owned by the pool for its whole life; each buffer index is
// handed to exactly one owner at a time (the free stack is behind a mutex), so no two threads
// ever access the same bytes concurrently through the pool.
unsafe impl Send for PoolInner {}
// SAFETY: see `Send`; shared access only reads `base` and uses the mutex and atomics.
unsafe impl Sync for PoolInner {}

impl PoolInner {
    pub(crate) fn buffer_ptr(&self, index: u32) -> *mut u8 {
        debug_assert!(index < self.capacity);
        // SAFETY: index < capacity, so the offset stays inside the allocated region.
        unsafe { self.base.add(index as usize * BUFFER_SIZE) }
    }

    pub(crate) fn give_back(&self, index: u32) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        assert!(free.len() < self.capacity as usize, "buffer {index} returned twice to the pool");
        free.push(index);
    }

    fn layout(capacity: u32) -> Layout {
        Layout::from_size_align(capacity as usize * BUFFER_SIZE, REGION_ALIGN_BYTES).expect("buffer region layout")
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated in `BufferPool::new` with this exact layout, and the pool
        // is dropped only when no buffer handle (each holds an Arc) remains.
        unsafe { dealloc(self.base, Self::layout(self.capacity)) };
    }
}

/// Counters of a pool at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub capacity: u32,
    pub in_use: u32,
    pub peak_in_use: u32,
    pub reserved: u32,
}

/// A bounded pool of 32 KB buffers shared by every slot of a TaskManager.
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool").field("stats", &self.stats()).finish()
    }
}

impl BufferPool {
    /// Allocates a pool of `capacity` buffers (at least one).
    pub fn new(capacity: u32) -> Self {
        let capacity = capacity.max(1);
        let layout = PoolInner::layout(capacity);
        // SAFETY: the layout has a non-zero size (capacity >= 1). Zeroed memory keeps every byte
        // initialised; for a region this large the allocator maps fresh zero pages, so nothing
        // is touched (or resident) until a buffer is first written.
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let free = (0..capacity).rev().collect();
        Self {
            inner: Arc::new(PoolInner {
                base,
                capacity,
                free: Mutex::new(free),
                reserved: AtomicU32::new(0),
                peak_in_use: AtomicU32::new(0),
                taken_total: AtomicU32::new(0),
            }),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.inner.capacity
    }

    /// Takes a free buffer, or `None` when every buffer is in use.
    pub fn try_take(&self) -> Option<BufferBuilder> {
        let (index, in_use) = {
            let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
            let index = free.pop()?;
            (index, self.inner.capacity - free.len() as u32)
        };
        self.inner.peak_in_use.fetch_max(in_use, Ordering::Relaxed);
        self.inner.taken_total.fetch_add(1, Ordering::Relaxed);
        Some(BufferBuilder::new(self.inner.clone(), index))
    }

    /// Takes a free buffer; an empty pool is an error because reservations guarantee one.
    pub fn take(&self) -> Result<BufferBuilder, NetError> {
        self.try_take().ok_or(NetError::PoolExhausted { capacity: self.inner.capacity })
    }

    /// Number of buffers currently owned outside the pool.
    pub fn in_use(&self) -> u32 {
        let free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner()).len() as u32;
        self.inner.capacity - free
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            capacity: self.inner.capacity,
            in_use: self.in_use(),
            peak_in_use: self.inner.peak_in_use.load(Ordering::Relaxed),
            reserved: self.inner.reserved.load(Ordering::Relaxed),
        }
    }

    /// Reserves `buffers` for a job; the reservation is released when dropped.
    pub fn reserve(&self, buffers: u32) -> Result<PoolReservation, NetError> {
        let capacity = self.inner.capacity;
        self.inner
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                reserved.checked_add(buffers).filter(|total| *total <= capacity)
            })
            .map_err(|reserved| NetError::InsufficientBuffers {
                requested: buffers,
                available: capacity - reserved,
                capacity,
            })?;
        Ok(PoolReservation { pool: self.clone(), buffers })
    }
}

/// Buffers promised to one job; dropping it returns the promise (not buffers) to the pool.
#[derive(Debug)]
pub struct PoolReservation {
    pool: BufferPool,
    buffers: u32,
}

impl PoolReservation {
    pub fn buffers(&self) -> u32 {
        self.buffers
    }
}

impl Drop for PoolReservation {
    fn drop(&mut self) {
        self.pool.inner.reserved.fetch_sub(self.buffers, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_return_keep_the_count() {
        let pool = BufferPool::new(4);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!(pool.in_use(), 2);
        drop(a);
        let frozen = b.freeze();
        assert_eq!(pool.in_use(), 1);
        drop(frozen);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.stats().peak_in_use, 2);
    }

    #[test]
    fn exhausted_pool_says_so() {
        let pool = BufferPool::new(1);
        let _a = pool.take().unwrap();
        assert!(pool.try_take().is_none());
        assert_eq!(pool.take().unwrap_err(), NetError::PoolExhausted { capacity: 1 });
    }

    #[test]
    fn reservations_are_bounded_and_released() {
        let pool = BufferPool::new(10);
        let r = pool.reserve(7).unwrap();
        let err = pool.reserve(4).unwrap_err();
        assert_eq!(err, NetError::InsufficientBuffers { requested: 4, available: 3, capacity: 10 });
        assert!(err.to_string().contains("needs 4 buffers"));
        drop(r);
        assert!(pool.reserve(10).is_ok());
    }

    #[test]
    fn buffers_are_aligned_and_distinct() {
        let pool = BufferPool::new(3);
        let bufs: Vec<_> = (0..3).map(|_| pool.take().unwrap()).collect();
        let mut addrs: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize).collect();
        assert!(addrs.iter().all(|a| a % 16 == 0));
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 3);
    }

    #[test]
    fn bytes_view_returns_the_buffer_on_drop() {
        let pool = BufferPool::new(2);
        let mut b = pool.take().unwrap();
        b.spare_mut()[..3].copy_from_slice(b"abc");
        b.advance(3);
        let bytes = b.freeze().into_bytes();
        let slice = bytes.slice(1..);
        drop(bytes);
        assert_eq!(pool.in_use(), 1);
        assert_eq!(&slice[..], b"bc");
        drop(slice);
        assert_eq!(pool.in_use(), 0);
    }
}
