//! Typed errors of the data plane.

use std::time::Duration;

use thiserror::Error;

use crate::handshake::HandshakeError;
use crate::remote::RegisterError;
use crate::wire::{ErrorCode, FrameError};

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
    /// A [`NetConfig`](crate::transport::NetConfig) setting is out of range.
    #[error("invalid network setting {setting}: {reason}")]
    InvalidConfig { setting: &'static str, reason: String },
    /// Every connection attempt to a peer failed. Retrying may help if the peer is still
    /// starting; otherwise check that it runs and listens on that address.
    #[error("could not connect to {peer} after {attempts} attempts: {last_error}")]
    ConnectFailed { peer: String, attempts: u32, last_error: String },
    /// The peer that should dial this TaskManager did not connect in time.
    #[error("{peer} did not connect within {waited:?}; check that it started and can reach this address")]
    PeerNeverConnected { peer: String, waited: Duration },
    /// A socket operation other than reading or writing frames failed.
    #[error("{operation} for the connection to {peer} failed: {detail}")]
    Socket { peer: String, operation: &'static str, detail: String },
    /// Nothing arrived from the peer for longer than the heartbeat timeout (hung, overloaded
    /// or partitioned), or it stopped accepting bytes for that long.
    #[error("connection to {peer} timed out: nothing received for {silent_for:?}")]
    PeerTimeout { peer: String, silent_for: Duration },
    /// The connection ended before both sides sent CLOSE: the peer process died or the network
    /// reset the connection.
    #[error("connection to {peer} lost: {detail}")]
    PeerLost { peer: String, detail: String },
    /// The peer sent a frame that breaks the protocol; this side sent ERROR and closed.
    #[error("connection to {peer} closed: {error}")]
    Protocol { peer: String, error: FrameError },
    /// The job failed on the peer (it sent ERROR with code 2 for the job): the root cause is
    /// there.
    #[error("the job failed on {peer}: {message}")]
    PeerFailed { peer: String, message: String },
    /// The peer refused this side: it found a protocol error in what this side sent, or the
    /// handshake (or a job's JOB_OPEN) did not match (ERROR with code 1 or 3).
    #[error("{peer} refused the connection ({code:?}): {message}")]
    PeerRefused { peer: String, code: ErrorCode, message: String },
    /// This side refused the peer during the handshake (and told it with ERROR(3)): another
    /// cluster's token, a MAC that does not verify, another protocol version, another heartbeat
    /// interval, an unexpected TaskManager.
    #[error("handshake with {peer} failed: {reason}")]
    HandshakeFailed { peer: String, reason: HandshakeError },
    /// A frame of one job broke the protocol (or the two sides' JOB_OPENs disagree): that job
    /// fails, the connection and its other jobs go on.
    #[error("deployment {deployment:016x} on the connection to {peer}: {error}")]
    JobProtocol { peer: String, deployment: u64, error: FrameError },
    /// One side opened the job on the connection and the other did not deploy it in time (or
    /// the peer said so with ERROR(4)). Retrying may help: the other TaskManager may have been
    /// slow to deploy.
    #[error("deployment {deployment:016x} was not deployed on both ends of the connection to {peer}: {detail}")]
    JobNotDeployed { peer: String, deployment: u64, detail: String },
    /// A job could not be registered on a connection (a mistake in its channels, or the
    /// connection's state).
    #[error("deployment {deployment:016x} cannot use the connection to {peer}: {error}")]
    JobRegistration { peer: String, deployment: u64, error: RegisterError },
    /// The kernel's random source failed (TaskManager id, handshake nonce).
    #[error("the kernel's random number generator failed: {detail}")]
    Random { detail: String },
}

impl NetError {
    /// Whether running the job again, unchanged, could succeed: a peer that was slow to start,
    /// died or was cut off may be back, but a bad setting, a protocol violation, a refused
    /// handshake or a job that failed on the peer will happen again.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            NetError::InvalidConfig { .. }
                | NetError::Protocol { .. }
                | NetError::PeerRefused { .. }
                | NetError::PeerFailed { .. }
                | NetError::HandshakeFailed { .. }
                | NetError::JobProtocol { .. }
                | NetError::JobRegistration { .. }
        )
    }
}

/// Why a record buffer received from another process was refused by
/// [`validate_buffer`](crate::record::validate_buffer). Offsets are byte offsets from the start
/// of the buffer; `record` is the index of the record (0-based) in the buffer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BufferError {
    /// The buffer is shorter than its 8-byte count word.
    #[error("record buffer of {len} bytes is shorter than its 8-byte header")]
    TooShort { len: usize },
    /// The buffer declares no records; empty buffers are never sent.
    #[error("record buffer declares 0 records")]
    Empty,
    /// The buffer does not start on a 16-byte boundary, so its archives cannot be read in place.
    #[error("record buffer starts at an address {address_mod_16} bytes past a 16-byte boundary")]
    Misaligned { address_mod_16: usize },
    /// A reserved header word is not zero.
    #[error("reserved header word at offset {offset} is not zero")]
    ReservedNotZero { offset: usize },
    /// A record header, or the archive it announces, ends past the end of the buffer.
    #[error("record {record} ends at offset {end}, past the end of the {len}-byte buffer")]
    RecordPastEnd { record: u32, end: usize, len: usize },
    /// Bytes follow the last record that are too few to hold another record header.
    #[error("{trailing} stray bytes after the last record at offset {offset}")]
    TrailingBytes { offset: usize, trailing: usize },
    /// The count word disagrees with the records found in the buffer.
    #[error("record buffer declares {declared} records but holds {found}")]
    CountMismatch { declared: u32, found: u32 },
    /// An archive failed rkyv validation (pointer out of bounds, invalid UTF-8, enum tag,
    /// `bool` value, ...): the peer wrote another type, another layout, or garbage.
    #[error("record {record} at offset {offset} is not a valid archive of {type_name}")]
    InvalidArchive { record: u32, offset: usize, type_name: &'static str },
}
