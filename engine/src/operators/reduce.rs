//! Keyed running reduce. State is one value per key on this subtask (the subtask owns the key
//! groups its keys hash to). In streaming mode every input emits the key's new value; in batch
//! mode the final value of each key is emitted once, when the input ends, in bounded steps so
//! the output stays under backpressure.
//!
//! The values live in a plain hash map rather than the keyed state backend (one probe, no key
//! context per record); its snapshot is nevertheless keyed state: a `keyed-state` part holding
//! the value state `reduce` by key group, as a backend would write it, so it is redistributed
//! by key group like every keyed operator's.

use corestream_netstack::Data;
use corestream_state::{KeyGroupRange, KeyedStateSnapshot, StateError, StateKey};
use hashbrown::{HashMap, HashSet};

use super::keyed_core::KEYED_STATE_PART;
use super::state_parts::{self, PartError};
use super::Operator;
use crate::checkpoint::{CheckpointId, OperatorStateParts, PartLayout, PendingParts, StateHookError};
use crate::config::RuntimeMode;

/// The name of the value state the reduce's snapshot holds.
const REDUCE_STATE: &str = "reduce";

pub(crate) struct ReduceOp<T, K, KF, RF> {
    pub(crate) key: std::sync::Arc<KF>,
    pub(crate) reduce: std::sync::Arc<RF>,
    pub(crate) mode: RuntimeMode,
    /// `None` only transiently, while the reduce function owns the accumulator.
    pub(crate) state: HashMap<K, Option<T>>,
    pub(crate) draining: Option<Vec<T>>,
    pub(crate) max_parallelism: u32,
    pub(crate) key_groups: KeyGroupRange,
}

impl<T, K, KF, RF> ReduceOp<T, K, KF, RF> {
    pub(crate) fn new(
        key: std::sync::Arc<KF>,
        reduce: std::sync::Arc<RF>,
        mode: RuntimeMode,
        max_parallelism: u32,
        key_groups: KeyGroupRange,
    ) -> Self {
        Self { key, reduce, mode, state: HashMap::new(), draining: None, max_parallelism, key_groups }
    }
}

impl<T, K, KF, RF> ReduceOp<T, K, KF, RF>
where
    T: Data + Clone,
    K: StateKey,
{
    fn snapshot(&self, into: &mut PendingParts) -> Result<(), PartError> {
        let entries: Vec<(K, T)> =
            self.state.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone()))).collect();
        let max_parallelism = self.max_parallelism;
        state_parts::put_deferred(into, KEYED_STATE_PART, PartLayout::KeyGroups, move || {
            KeyedStateSnapshot::of_values(REDUCE_STATE, max_parallelism, entries.iter().map(|(k, v)| (k, v)))
        });
        Ok(())
    }

    /// Replaces the values with those of every `keyed-state` part in this subtask's key
    /// groups, all checked before anything changes.
    fn restore(&mut self, from: &OperatorStateParts) -> Result<(), PartError> {
        let snapshots: Vec<KeyedStateSnapshot> = state_parts::get_all(from, KEYED_STATE_PART, PartLayout::KeyGroups)?;
        let fail = |e: StateError| PartError::state(KEYED_STATE_PART, e);
        let mut seen = HashSet::new();
        let mut restored = HashMap::new();
        for snapshot in &snapshots {
            if snapshot.max_parallelism != self.max_parallelism {
                let (snapshot, backend) = (snapshot.max_parallelism, self.max_parallelism);
                return Err(fail(StateError::MaxParallelismMismatch { snapshot, backend }));
            }
            for group in &snapshot.key_groups {
                if !seen.insert(group.key_group) {
                    return Err(fail(StateError::DuplicateKeyGroup { key_group: group.key_group }));
                }
            }
            let values = snapshot.values::<K, T>(REDUCE_STATE, self.key_groups).map_err(fail)?;
            restored.extend(values.into_iter().map(|(k, v)| (k, Some(v))));
        }
        self.state = restored;
        self.draining = None;
        Ok(())
    }
}

impl<T, K, KF, RF> Operator<T, T> for ReduceOp<T, K, KF, RF>
where
    T: Data + Clone,
    K: StateKey,
    KF: Fn(&T) -> K + 'static,
    RF: Fn(T, T) -> T + 'static,
{
    #[inline]
    fn process(&mut self, record: T, out: &mut Vec<T>) {
        let key = (self.key)(&record);
        let emit = self.mode == RuntimeMode::Streaming;
        if let Some(slot) = self.state.get_mut(&key) {
            let acc = slot.take().expect("accumulator present between records");
            let reduced = (self.reduce)(acc, record);
            if emit {
                out.push(reduced.clone());
            }
            *slot = Some(reduced);
        } else {
            if emit {
                out.push(record.clone());
            }
            self.state.insert(key, Some(record));
        }
    }

    fn finish(&mut self, out: &mut Vec<T>, max_records: usize) -> bool {
        if self.mode == RuntimeMode::Streaming {
            return true;
        }
        let pending = self.draining.get_or_insert_with(|| self.state.drain().filter_map(|(_, v)| v).collect());
        let take = pending.len().min(max_records.max(1));
        out.extend(pending.drain(pending.len() - take..));
        pending.is_empty()
    }

    fn snapshot_state(&mut self, _checkpoint: CheckpointId, into: &mut PendingParts) -> Result<(), StateHookError> {
        Ok(self.snapshot(into)?)
    }

    fn restore_state(&mut self, from: &OperatorStateParts) -> Result<(), StateHookError> {
        Ok(self.restore(from)?)
    }
}
