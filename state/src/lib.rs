//! Keyed state for corestream. This part is the key-group machinery that keyed
//! partitioning and, later, state redistribution rely on: a stable key hash, key → key group,
//! key group → subtask, and the key-group range of each subtask.
//!
//! Architecture Invariant: this crate never depends on `corestream` (the engine).

pub mod keygroup;

pub use keygroup::{
    assign_key_group, key_group_for_hash, key_group_range, operator_index_for_key_group, stable_hash,
    KeyGroupRange, StableHasher, DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM,
};
