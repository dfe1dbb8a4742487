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
    /// `None` only transiently, while the reduce function owns the accumulator.
    pub(crate) state: HashMap<K, Option<T>>,
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
}
