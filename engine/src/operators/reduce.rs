//! Keyed running reduce. State is one value per key on this subtask (the subtask owns the key
//! groups its keys hash to). In streaming mode every input emits the key's new value; in batch
//! mode the final value of each key is emitted once, when the input ends, in bounded steps so
//! the output stays under backpressure.

use std::hash::Hash;

use corestream_netstack::Data;
use hashbrown::HashMap;

use super::Operator;
use crate::config::RuntimeMode;

pub(crate) struct ReduceOp<T, K, KF, RF> {
    pub(crate) key: std::sync::Arc<KF>,
    pub(crate) reduce: std::sync::Arc<RF>,
    pub(crate) mode: RuntimeMode,
    pub(crate) state: HashMap<K, T>,
    pub(crate) draining: Option<Vec<T>>,
}

impl<T, K, KF, RF> ReduceOp<T, K, KF, RF> {
    pub(crate) fn new(key: std::sync::Arc<KF>, reduce: std::sync::Arc<RF>, mode: RuntimeMode) -> Self {
        Self { key, reduce, mode, state: HashMap::new(), draining: None }
    }
}

impl<T, K, KF, RF> Operator<T, T> for ReduceOp<T, K, KF, RF>
where
    T: Data + Clone,
    K: Hash + Eq + 'static,
    KF: Fn(&T) -> K + 'static,
    RF: Fn(T, T) -> T + 'static,
{
    #[inline]
    fn process(&mut self, record: T, out: &mut Vec<T>) {
        let key = (self.key)(&record);
        let emit = self.mode == RuntimeMode::Streaming;
        match self.state.entry(key) {
            hashbrown::hash_map::Entry::Occupied(slot) => {
                let reduce = &*self.reduce;
                let updated = slot.replace_entry_with(|_, acc| Some(reduce(acc, record)));
                if let (true, hashbrown::hash_map::Entry::Occupied(slot)) = (emit, updated) {
                    out.push(slot.get().clone());
                }
            }
            hashbrown::hash_map::Entry::Vacant(slot) => {
                if emit {
                    out.push(record.clone());
                }
                slot.insert(record);
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<T>, max_records: usize) -> bool {
        if self.mode == RuntimeMode::Streaming {
            return true;
        }
        let pending = self.draining.get_or_insert_with(|| self.state.drain().map(|(_, v)| v).collect());
        let take = pending.len().min(max_records.max(1));
        out.extend(pending.drain(pending.len() - take..));
        pending.is_empty()
    }
}
