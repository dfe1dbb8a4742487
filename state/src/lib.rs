//! Keyed state for corestream: the key-group machinery that keyed partitioning and state
//! redistribution rely on, the keyed state backends operators keep their per-key state in, and
//! the timer service that fires per-key event-time and processing-time timers.
//!
//! - [`keygroup`]: a stable key hash, key → key group, key group → subtask, and the key-group
//!   range of each subtask. Key groups are the unit of state redistribution.
//! - [`keyed`]: Flink-style keyed state (value, list, map, reducing, aggregating) scoped to the
//!   current key and a namespace, with TTL, and snapshots by key group.
//! - [`timers`]: per-key, per-namespace timers in two time domains, deduplicated, fired in
//!   timestamp order, snapshotted by key group.
//! - [`error`]: [`StateError`], what went wrong with state and what to do.
//!
//! Snapshot bytes are rkyv archives made with `corestream_netstack::record::to_bytes`, each with
//! its type name and checksum; a restore checks both and validates every archive with rkyv's
//! bytecheck before reading it, so damaged bytes are an error, never a panic. [`part`] frames a
//! whole snapshot (keyed state, timers, operator state) for a checkpoint the same way.
//!
//! Architecture Invariant: this crate never depends on `corestream` (the engine).

mod codec;
pub mod error;
pub mod keyed;
pub mod keygroup;
pub mod timers;

pub use codec::part;
pub use error::StateError;
pub use keyed::lsm;
pub use keyed::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, FrozenKeyedState, KeyContext, KeyGroupSnapshot,
    KeyedStateBackend, KeyedStateSnapshot, ListState, ListStateDescriptor, LsmConfig, MapState, MapStateDescriptor,
    NamedStateBytes, Namespace, ReducingState, ReducingStateDescriptor, StateBackendKind, StateKey, StateKind,
    StateTtlConfig, StateValue, TtlUpdateType, TtlVisibility, ValueState, ValueStateDescriptor, VoidNamespace,
};
pub use keygroup::{
    assign_key_group, key_group_for_hash, key_group_range, operator_index_for_key_group, stable_hash, KeyGroupRange,
    StableHasher, DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM,
};
pub use timers::{FrozenTimers, Timer, TimerKeyGroupSnapshot, TimerService, TimerSnapshot};
