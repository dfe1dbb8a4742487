//! The object-safe interface between state handles and a backend: one trait per state kind,
//! each call scoped by an [`At`] (current key, its key-group index, namespace, hashes, time), plus
//! [`StateTable`], what the backend itself needs of every state (snapshot, restore, size), and
//! [`FrozenTable`], a state's live entries copied at a snapshot and encoded later.
//! A backend implements these for its storage; handles hold `Rc<RefCell<dyn …>>` and make one
//! dynamic call per access.
//!
//! Contract for every implementation: reads and writes touch only the entry of `(at.key, at.ns)`;
//! TTL follows `ttl.rs` (expired values are absent to writes, removed when found); a collection
//! (list, map) that becomes empty is removed, so an empty state and an absent one are the same.

use super::snapshot::{NamedStateBytes, StateKind};
use super::{At, NsAt};
use crate::codec::Encoded;
use crate::error::StateError;

/// What the backend needs of every registered state, whatever its kind.
pub(crate) trait StateTable {
    fn kind(&self) -> StateKind;
    /// The type a snapshot of this state archives (checked on restore).
    fn value_type(&self) -> &'static str;
    /// Number of `(key, namespace)` entries, expired or not.
    fn num_entries(&self) -> usize;
    fn clear_all(&mut self);
    /// A copy of the live entries at `now_ms`, to be encoded by key group on any thread.
    fn freeze(&self, now_ms: i64) -> Box<dyn FrozenTable>;
    /// Loads one state's entries of `key_group` from an archive made by `snapshot_group` of a
    /// table of the same type (its type name and checksum are checked). Entries already present
    /// for the same `(key, namespace)` are overwritten.
    fn restore_group(&mut self, key_group: u32, state: &NamedStateBytes) -> Result<(), StateError>;
}

/// One state's live entries as they were at a snapshot, owned and sendable.
pub(crate) trait FrozenTable: Send {
    /// Archive of the entries of `key_group`; `None` if it has none.
    fn encode_group(&self, key_group: u32) -> Result<Option<Encoded>, StateError>;
}

pub(crate) trait ValueTable<K, N, V>: StateTable {
    fn get(&mut self, at: At<'_, K, N>) -> Option<V>;
    fn put(&mut self, at: At<'_, K, N>, value: V);
    /// Calls `f` exactly once with the current value (`None` if absent or expired) and stores
    /// what it leaves (`None` removes the entry).
    fn update_with(&mut self, at: At<'_, K, N>, f: &mut dyn FnMut(&mut Option<V>));
    fn remove(&mut self, at: At<'_, K, N>);
    /// Keeps the target's value if it has one, else takes the first source's; removes sources.
    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]);
}

pub(crate) trait ListTable<K, N, V>: StateTable {
    fn get(&mut self, at: At<'_, K, N>) -> Vec<V>;
    fn len(&mut self, at: At<'_, K, N>) -> usize;
    /// Returns true when the state did not exist before.
    fn add(&mut self, at: At<'_, K, N>, value: V) -> bool;
    fn add_all(&mut self, at: At<'_, K, N>, values: &mut dyn Iterator<Item = V>);
    fn replace(&mut self, at: At<'_, K, N>, values: Vec<V>);
    fn remove(&mut self, at: At<'_, K, N>);
    /// Appends the sources' elements (in order) to the target's; removes sources.
    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]);
}

pub(crate) trait MapTable<K, N, UK, UV>: StateTable {
    fn get(&mut self, at: At<'_, K, N>, user_key: &UK) -> Option<UV>;
    fn contains(&mut self, at: At<'_, K, N>, user_key: &UK) -> bool;
    fn put(&mut self, at: At<'_, K, N>, user_key: UK, value: UV);
    fn remove_key(&mut self, at: At<'_, K, N>, user_key: &UK) -> Option<UV>;
    fn entries(&mut self, at: At<'_, K, N>) -> Vec<(UK, UV)>;
    fn keys(&mut self, at: At<'_, K, N>) -> Vec<UK>;
    fn is_empty(&mut self, at: At<'_, K, N>) -> bool;
    fn remove(&mut self, at: At<'_, K, N>);
}

pub(crate) trait ReducingTable<K, N, V>: StateTable {
    fn get(&mut self, at: At<'_, K, N>) -> Option<V>;
    /// Returns true when the state did not exist (or had expired) before.
    fn add(&mut self, at: At<'_, K, N>, value: V) -> bool;
    fn remove(&mut self, at: At<'_, K, N>);
    /// Reduces the sources' values into the target; removes sources.
    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]);
}

pub(crate) trait AggregatingTable<K, N, IN, ACC, OUT>: StateTable {
    fn get(&mut self, at: At<'_, K, N>) -> Option<OUT>;
    /// The result, removing the state (one access where `get` then `remove` take two).
    fn take(&mut self, at: At<'_, K, N>) -> Option<OUT>;
    /// Returns true when the state did not exist (or had expired) before.
    fn add(&mut self, at: At<'_, K, N>, value: &IN) -> bool;
    fn accumulator(&mut self, at: At<'_, K, N>) -> Option<ACC>;
    fn set_accumulator(&mut self, at: At<'_, K, N>, acc: ACC);
    fn remove(&mut self, at: At<'_, K, N>);
    /// Merges the sources' accumulators into the target; removes sources.
    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]);
}
