//! Typed errors of keyed state and timers: what was wrong, on which state or key group, and what
//! to do about it. None of them goes away by retrying the same operation
//! ([`StateError::is_retryable`] says so for a restart strategy).

use thiserror::Error;

/// Errors of keyed state backends and timer services.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StateError {
    /// A state name was registered again with another kind, other types or another TTL, or a
    /// snapshot holds a state under this name with another kind or types.
    #[error(
        "state '{name}' is {registered}, but was requested as {requested}; \
         a name keeps its kind, types and TTL for the lifetime of the job (use another name)"
    )]
    Incompatible { name: String, registered: String, requested: String },
    /// The snapshot was taken with another max parallelism, which fixes the key groups.
    #[error(
        "snapshot taken with max parallelism {snapshot} cannot be restored into a backend with \
         max parallelism {backend}; max parallelism fixes the key groups and must stay the same across restores"
    )]
    MaxParallelismMismatch { snapshot: u32, backend: u32 },
    /// The snapshot names a key group that does not exist under its max parallelism.
    #[error(
        "snapshot holds key group {key_group}, outside 0..{max_parallelism}; \
         the snapshot is corrupt or belongs to another job"
    )]
    KeyGroupOutOfRange { key_group: u32, max_parallelism: u32 },
    /// Two of the snapshots given to one restore hold the same key group.
    #[error(
        "key group {key_group} appears in more than one snapshot; restore every key group from exactly one snapshot"
    )]
    DuplicateKeyGroup { key_group: u32 },
    /// State could not be serialized for a snapshot.
    #[error("{what} could not be serialized: {reason}")]
    Serialization { what: String, reason: String },
    /// Snapshot bytes failed a check on restore (checksum, key group of an entry, duplicates).
    #[error("{what} in key group {key_group} is corrupt: {reason}; restore from another checkpoint")]
    Corrupt { what: String, key_group: u32, reason: String },
    /// A framed snapshot part ([`crate::part`]) failed a check on restore.
    #[error("a snapshot part holding {type_name} is invalid: {reason}; restore from another checkpoint")]
    InvalidPart { type_name: String, reason: String },
    /// The LSM backend's local store failed (disk full, I/O error, a damaged local file).
    #[error("{what}: {reason}")]
    Store { what: String, reason: String },
}

impl StateError {
    /// Whether retrying the same operation could succeed (never, for these errors: each one is
    /// about the job's definition or the snapshot's contents).
    pub fn is_retryable(&self) -> bool {
        false
    }
}
