//! Keyed state, as in Flink: every value lives under the *current key* of its operator subtask
//! and a *namespace* (the window for window state, [`VoidNamespace`] otherwise). A
//! [`KeyedStateBackend`] serves one keyed operator subtask and its contiguous key-group range;
//! the operator sets the current key once per record ([`KeyedStateBackend::set_current_key`],
//! shared with every handle through [`KeyContext`]) and reads or writes state through typed
//! handles ([`ValueState`], [`ListState`], [`MapState`], [`ReducingState`],
//! [`AggregatingState`]) registered by name with a descriptor. Everything here lives on the
//! operator's slot thread (`Rc`/`RefCell`, no locks).
//!
//! Layers. A handle turns its call into one dynamic call on an object-safe per-kind table trait
//! (`tables.rs`) with the current key, its key-group index, the namespace and a hash of both
//! precomputed (the key's stable hash once per key, the namespace's once per `set_namespace`).
//! The heap backend (`heap.rs`) implements those traits with one `hashbrown` table per key
//! group, so every access is one probe and no hashing, and a snapshot or a rescale takes whole
//! key groups. TTL (`ttl.rs`) is a choice of the stored cell type: states without TTL store
//! bare values and pay nothing for it.
//!
//! Other backends. An LSM backend implements the same table traits over byte keys
//! `key group (big-endian u16) ‖ key ‖ namespace [‖ user key]` and rkyv-archived values, so a
//! key group is a contiguous key range (snapshot and rescale by range), and list elements or map
//! entries are separate keys (merge operands for `add`); the handles and the engine do not change.
//! Snapshots have two parts. [`KeyedStateBackend::freeze`] is the synchronous one: each table
//! clones its live entries into owned vectors by key group (`StateTable::freeze`), which costs
//! a flat copy and no serialization; [`FrozenKeyedState::encode`] archives them later, on any
//! thread. Copy-on-write tables (a snapshot pins a version, a write after it copies the entry it
//! touches, as Flink's `CopyOnWriteStateMap`) would make the synchronous part O(1) at the cost
//! of a version check on every access; the LSM backend gets a short synchronous part from a
//! memtable flush and a hard-link checkpoint. Both fit behind `StateTable::freeze` without
//! touching the handles.
//!
//! Invariants (unit- and property-tested): a handle sees only the entries of the current key and
//! its namespace; an expired TTL entry is never returned under `NeverReturnExpired` and never
//! written to a snapshot; restoring a snapshot into a fresh backend gives exactly the snapshot's
//! contents, restricted to the backend's key groups.

mod backend;
mod descriptors;
mod handles;
mod heap;
pub mod lsm;
mod snapshot;
mod tables;
mod ttl;

#[cfg(test)]
#[path = "tests.rs"]
#[allow(clippy::duplicate_mod, reason = "the same tests, compiled again to run on the LSM backend")]
mod lsm_tests;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::hash::Hash;

use corestream_netstack::Data;

use crate::keygroup::{key_group_for_hash, stable_hash, KeyGroupRange};

pub use backend::{FrozenKeyedState, KeyedStateBackend, StateBackendKind};
pub use descriptors::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor,
    ValueStateDescriptor,
};
pub use handles::{AggregatingState, ListState, MapState, ReducingState, ValueState};
pub use lsm::LsmConfig;
pub use snapshot::{KeyGroupSnapshot, KeyedStateSnapshot, NamedStateBytes, StateKind};
pub use ttl::{StateTtlConfig, TtlUpdateType, TtlVisibility};

/// A key of keyed state (and of map state entries).
pub trait StateKey: Data + Hash + Eq + Clone {}
impl<T: Data + Hash + Eq + Clone> StateKey for T {}

/// A namespace of keyed state: the window for window state, [`VoidNamespace`] otherwise.
pub trait Namespace: Data + Hash + Eq + Clone {
    /// The namespace a new handle starts in: `Some(())` for [`VoidNamespace`], so plain keyed
    /// state needs no `set_namespace`; `None` for every other type, whose handles must be given
    /// a namespace before their first access.
    fn default_namespace() -> Option<Self> {
        (&() as &dyn Any).downcast_ref::<Self>().cloned()
    }
}
impl<T: Data + Hash + Eq + Clone> Namespace for T {}

/// The namespace of state that is not window state.
pub type VoidNamespace = ();

/// A value kept in keyed state.
pub trait StateValue: Data + Clone {}
impl<T: Data + Clone> StateValue for T {}

/// The current key of one backend, shared with every state handle it created.
pub struct KeyContext<K> {
    key: RefCell<Option<K>>,
    /// `stable_hash` of the current key. The only per-key value stored besides the key: the key
    /// group and table hash are derived from it on each access, because reading several
    /// just-stored fields back with one wide load defeats store-to-load forwarding (measured:
    /// it tripled the cost of a state access).
    key_hash: Cell<u64>,
    now_ms: Cell<i64>,
    max_parallelism: u32,
    key_groups: KeyGroupRange,
}

impl<K: StateKey> KeyContext<K> {
    pub(crate) fn new(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        Self { key: RefCell::new(None), key_hash: Cell::new(0), now_ms: Cell::new(0), max_parallelism, key_groups }
    }

    /// The current key (a clone), `None` before the first `set_current_key`.
    pub fn current_key(&self) -> Option<K> {
        self.key.borrow().clone()
    }

    /// The key group of the current key (meaningless before the first key is set).
    #[inline]
    pub fn current_key_group(&self) -> u32 {
        key_group_for_hash(self.key_hash.get(), self.max_parallelism)
    }

    /// Processing time (ms since the epoch) that TTL checks use.
    pub fn current_time(&self) -> i64 {
        self.now_ms.get()
    }

    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.key_groups
    }

    #[inline]
    pub(crate) fn set_key(&self, key: K, hash: u64) {
        debug_assert_eq!(hash, stable_hash(&key), "set_current_key_hashed needs the key's stable_hash");
        let key_group = key_group_for_hash(hash, self.max_parallelism);
        if !self.key_groups.contains(key_group) {
            key_group_outside(key_group, self.key_groups);
        }
        let Ok(mut slot) = self.key.try_borrow_mut() else { key_set_during_access() };
        *slot = Some(key);
        self.key_hash.set(hash);
    }

    pub(crate) fn set_time(&self, now_ms: i64) {
        self.now_ms.set(now_ms);
    }
}

#[cold]
#[track_caller]
fn key_group_outside(key_group: u32, range: KeyGroupRange) -> ! {
    panic!(
        "key of key group {key_group} given to a keyed state backend of key groups {}..{}: \
         the record was routed to the wrong subtask (engine bug)",
        range.start, range.end
    )
}

#[cold]
#[track_caller]
fn key_set_during_access() -> ! {
    panic!("set_current_key called from inside a state access (e.g. an update_with closure)")
}

/// The key's part of a table hash. Inside one key group the top bits of stable hashes are
/// nearly equal (they pick the key group), and hashbrown takes its 7-bit tags from the top:
/// rotating moves well-mixed middle bits there.
#[inline]
fn key_table_hash(stable: u64) -> u64 {
    stable.rotate_left(32)
}

/// The namespace's part of a table hash.
#[inline]
pub(crate) fn namespace_hash<N: Hash>(ns: &N) -> u64 {
    stable_hash(ns)
}

/// Hash of an entry in a per-key-group table; the same value [`At::hash`] gives.
#[inline]
pub(crate) fn table_hash<K: Hash, N: Hash>(key: &K, ns: &N) -> u64 {
    key_table_hash(stable_hash(key)) ^ namespace_hash(ns)
}

/// One state access: current key, namespace, their hashes and the time.
pub(crate) struct At<'a, K, N> {
    pub key: &'a K,
    pub ns: &'a N,
    pub group_index: usize,
    pub key_hash: u64,
    pub ns_hash: u64,
    pub now_ms: i64,
}

impl<K, N> Clone for At<'_, K, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, N> Copy for At<'_, K, N> {}

impl<K, N> At<'_, K, N> {
    #[inline]
    pub fn hash(&self) -> u64 {
        self.key_hash ^ self.ns_hash
    }
}

/// A namespace with its hash (the sources of a merge).
pub(crate) struct NsAt<'a, N> {
    pub ns: &'a N,
    pub hash: u64,
}

/// The key context and namespace of one handle.
pub(crate) struct Scope<K, N> {
    ctx: std::rc::Rc<KeyContext<K>>,
    ns: Option<N>,
    ns_hash: u64,
}

impl<K: StateKey, N: Namespace> Scope<K, N> {
    pub fn new(ctx: std::rc::Rc<KeyContext<K>>) -> Self {
        let ns = N::default_namespace();
        let ns_hash = ns.as_ref().map_or(0, namespace_hash);
        Self { ctx, ns, ns_hash }
    }

    #[inline]
    pub fn set_namespace(&mut self, ns: N) {
        if self.ns.as_ref() == Some(&ns) {
            return;
        }
        self.ns_hash = namespace_hash(&ns);
        self.ns = Some(ns);
    }

    #[inline]
    pub fn namespace(&self) -> &N {
        match &self.ns {
            Some(ns) => ns,
            None => no_namespace::<N>(),
        }
    }

    /// Runs `f` with the current key and namespace.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(At<'_, K, N>) -> R) -> R {
        self.at(self.namespace(), self.ns_hash, f)
    }

    /// Runs `f` with the current key and `ns` (not the handle's namespace).
    pub fn with_namespace<R>(&self, ns: &N, f: impl FnOnce(At<'_, K, N>) -> R) -> R {
        self.at(ns, namespace_hash(ns), f)
    }

    #[inline]
    fn at<R>(&self, ns: &N, ns_hash: u64, f: impl FnOnce(At<'_, K, N>) -> R) -> R {
        let key = self.ctx.key.borrow();
        let Some(key) = key.as_ref() else { no_current_key() };
        let at = At {
            key,
            ns,
            group_index: (self.ctx.current_key_group() - self.ctx.key_groups.start) as usize,
            key_hash: key_table_hash(self.ctx.key_hash.get()),
            ns_hash,
            now_ms: self.ctx.now_ms.get(),
        };
        f(at)
    }

    /// The namespaces of a merge with their hashes.
    pub fn hashed<'n>(namespaces: &'n [N]) -> Vec<NsAt<'n, N>> {
        namespaces.iter().map(|ns| NsAt { ns, hash: namespace_hash(ns) }).collect()
    }
}

#[cold]
#[track_caller]
fn no_current_key() -> ! {
    panic!("keyed state accessed before set_current_key")
}

#[cold]
#[track_caller]
fn no_namespace<N>() -> ! {
    panic!("keyed state with namespace {} accessed before set_namespace", std::any::type_name::<N>())
}
