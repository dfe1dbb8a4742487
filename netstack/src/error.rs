//! Typed errors of the data plane.

use thiserror::Error;

/// Errors from writing a record into a buffer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The record's archive does not fit an empty 32 KB buffer. Records never span buffers;
    /// split large values into several records.
    #[error(
        "record of {size_bytes} bytes (archived) does not fit a network buffer \
         ({max_bytes} bytes usable); records never span buffers, split the value into smaller records"
    )]
    TooLarge { size_bytes: usize, max_bytes: usize },
    /// The record could not be serialized for a reason other than its size.
    #[error("record could not be serialized: {reason}")]
    Serialize { reason: String },
}

/// Errors of the buffer pool and channels.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NetError {
    /// A job asked for more buffers than the pool has unreserved.
    #[error(
        "insufficient network buffers: the job needs {requested} buffers of 32 KB but only \
         {available} of {capacity} are free; raise the pool size (network_buffers) or lower the parallelism"
    )]
    InsufficientBuffers { requested: u32, available: u32, capacity: u32 },
    /// The pool had no free buffer although the reservations promised one.
    #[error("network buffer pool exhausted ({capacity} buffers in use)")]
    PoolExhausted { capacity: u32 },
}
