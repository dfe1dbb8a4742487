//! Pooled 32 KB buffers. A [`BufferBuilder`] is a buffer being written by one producer; it
//! becomes a read-only [`Buffer`] when frozen and handed to a channel. Dropping either returns
//! the buffer to its pool, so a buffer is never leaked on any path (sent, cancelled, failed).
//! Buffers start on a 4 KiB boundary, so 16-byte aligned offsets inside them are 16-byte aligned
//! in memory, which lets rkyv archives be read in place.

use std::sync::Arc;

use crate::pool::PoolInner;

/// Size of every network buffer, as in Flink.
pub const BUFFER_SIZE: usize = 32 * 1024;

/// A pooled buffer being filled by its one writer.
pub struct BufferBuilder {
    pool: Arc<PoolInner>,
    index: u32,
    len: u32,
}

impl std::fmt::Debug for BufferBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferBuilder").field("index", &self.index).field("len", &self.len).finish()
    }
}

impl BufferBuilder {
    pub(crate) fn new(pool: Arc<PoolInner>, index: u32) -> Self {
        Self { pool, index, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn remaining(&self) -> usize {
        BUFFER_SIZE - self.len as usize
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.pool.buffer_ptr(self.index)
    }

    /// The written part.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this builder exclusively owns buffer `index` (see pool invariants); the first
        // `len` bytes lie inside it and were initialised by the writer.
        unsafe { std::slice::from_raw_parts(self.pool.buffer_ptr(self.index), self.len as usize) }
    }

    /// The whole buffer, written part included (zeroed or stale bytes beyond `len`).
    pub fn whole_mut(&mut self) -> &mut [u8] {
        let ptr = self.pool.buffer_ptr(self.index);
        // SAFETY: this builder exclusively owns buffer `index`; the region holds BUFFER_SIZE
        // initialised bytes per index (allocated zeroed), so the slice is valid; bytes past `len`
        // may be stale data of an earlier use, which is harmless for u8.
        unsafe { std::slice::from_raw_parts_mut(ptr, BUFFER_SIZE) }
    }

    /// The unwritten part.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let len = self.len as usize;
        &mut self.whole_mut()[len..]
    }

    /// Marks `n` more bytes as written.
    pub fn advance(&mut self, n: usize) {
        assert!(self.len as usize + n <= BUFFER_SIZE, "advance past the end of a buffer");
        self.len += n as u32;
    }

    /// Sets the written length (used by the record writer after padding).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= BUFFER_SIZE, "buffer length {len} past the end");
        self.len = len as u32;
    }

    /// Freezes the buffer for reading; ownership moves to the returned [`Buffer`].
    pub fn freeze(self) -> Buffer {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so moving the Arc out transfers the one reference.
        let pool = unsafe { std::ptr::read(&this.pool) };
        Buffer { pool, index: this.index, len: this.len }
    }
}

impl Drop for BufferBuilder {
    fn drop(&mut self) {
        self.pool.give_back(self.index);
    }
}

/// A filled, read-only pooled buffer.
pub struct Buffer {
    pool: Arc<PoolInner>,
    index: u32,
    len: u32,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("index", &self.index).field("len", &self.len).finish()
    }
}

impl Buffer {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this handle exclusively owns buffer `index`; its first `len` bytes were written
        // by the builder before it was frozen, and nothing writes to it any more.
        unsafe { std::slice::from_raw_parts(self.pool.buffer_ptr(self.index), self.len as usize) }
    }

    /// A `bytes::Bytes` view whose last drop returns the buffer to the pool (for the transport).
    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pool.give_back(self.index);
    }
}
