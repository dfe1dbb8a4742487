//! The heap backend: each state is one `hashbrown` table per key group of the backend's range
//! (indexed by `key_group - range.start`), holding `(key, namespace, S)` where `S` is a cell
//! (value, reducing, aggregating state), a `Vec` of cells (list) or a map of cells (map state).
//! Entries are found with the hash the handle precomputed, so an access hashes nothing and
//! probes once; the key and namespace are cloned only when an entry is created. A hash is
//! recomputed from the stored key and namespace only when a table grows.
//!
//! A snapshot first freezes a state: it clones each key group's live entries into
//! `Vec<(K, N, persisted S)>`, leaving out expired values. That is the synchronous part; the
//! copies are archived later, off the task's thread. Restores check that every entry's key
//! belongs to the key group it was stored under.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;

use hashbrown::hash_table::{Entry, HashTable, OccupiedEntry};
use hashbrown::HashMap;

use super::descriptors::{AggregateFunction, ReduceFn};
use super::snapshot::{NamedStateBytes, StateKind};
use super::tables::{AggregatingTable, FrozenTable, ListTable, MapTable, ReducingTable, StateTable, ValueTable};
use super::ttl::{Clock, Expiring, Plain, StateTtlConfig, ValueCell};
use super::{key_table_hash, namespace_hash, table_hash, At, Namespace, NsAt, StateKey, StateValue};
use crate::codec::{self, Encoded};
use crate::error::StateError;
use crate::keygroup::{key_group_for_hash, stable_hash, KeyGroupRange};

/// One entry of a per-key-group table.
struct Slot<K, N, S> {
    key: K,
    ns: N,
    state: S,
}

impl<K: Clone, N: Clone, S> Slot<K, N, S> {
    #[inline]
    fn new(at: At<'_, K, N>, state: S) -> Self {
        Self { key: at.key.clone(), ns: at.ns.clone(), state }
    }
}

#[inline]
fn rehash<K: Hash, N: Hash, S>(slot: &Slot<K, N, S>) -> u64 {
    table_hash(&slot.key, &slot.ns)
}

/// One state's entries, one hash table per key group.
struct GroupedTable<K, N, S> {
    max_parallelism: u32,
    key_groups: KeyGroupRange,
    groups: Vec<HashTable<Slot<K, N, S>>>,
}

impl<K: StateKey, N: Namespace, S> GroupedTable<K, N, S> {
    fn new(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        let groups = (0..key_groups.len()).map(|_| HashTable::new()).collect();
        Self { max_parallelism, key_groups, groups }
    }

    #[inline]
    fn entry(&mut self, at: At<'_, K, N>) -> Entry<'_, Slot<K, N, S>> {
        let (key, ns) = (at.key, at.ns);
        self.groups[at.group_index].entry(at.hash(), |s| s.key == *key && s.ns == *ns, rehash)
    }

    #[inline]
    fn find_entry(&mut self, at: At<'_, K, N>) -> Option<OccupiedEntry<'_, Slot<K, N, S>>> {
        let (key, ns) = (at.key, at.ns);
        self.groups[at.group_index].find_entry(at.hash(), |s| s.key == *key && s.ns == *ns).ok()
    }

    #[inline]
    fn remove(&mut self, at: At<'_, K, N>) -> Option<S> {
        self.find_entry(at).map(|o| o.remove().0.state)
    }

    #[inline]
    fn set(&mut self, at: At<'_, K, N>, state: S) {
        match self.entry(at) {
            Entry::Occupied(mut o) => o.get_mut().state = state,
            Entry::Vacant(v) => {
                v.insert(Slot::new(at, state));
            }
        }
    }

    fn len(&self) -> usize {
        self.groups.iter().map(HashTable::len).sum()
    }

    fn clear(&mut self) {
        self.groups.iter_mut().for_each(HashTable::clear);
    }

    fn group_index(&self, key_group: u32) -> usize {
        assert!(self.key_groups.contains(key_group), "key group {key_group} outside {:?}", self.key_groups);
        (key_group - self.key_groups.start) as usize
    }
}

impl<K: StateKey, N: Namespace, C: ValueCell> GroupedTable<K, N, C> {
    /// Reads the live value through `f`; an expired one is removed and, if the visibility
    /// allows, read once.
    #[inline]
    fn read<R>(&mut self, at: At<'_, K, N>, clock: &Clock, f: impl FnOnce(&C::Value) -> R) -> Option<R> {
        let mut o = self.find_entry(at)?;
        if o.get_mut().state.read(clock) {
            return Some(f(o.get().state.value()));
        }
        let (slot, _) = o.remove();
        clock.return_expired.then(|| f(slot.state.value()))
    }

    /// Removes the entry and reads it through `f` if it is live (or, if the visibility allows,
    /// expired but not yet cleaned up): one lookup where `read` then `remove` take two.
    #[inline]
    fn take<R>(&mut self, at: At<'_, K, N>, clock: &Clock, f: impl FnOnce(&C::Value) -> R) -> Option<R> {
        let o = self.find_entry(at)?;
        let (slot, _) = o.remove();
        (!slot.state.is_expired(clock) || clock.return_expired).then(|| f(slot.state.value()))
    }

    /// Folds `input` into the live value, or starts a new value from it.
    #[inline]
    fn upsert<T>(
        &mut self,
        at: At<'_, K, N>,
        clock: &Clock,
        input: T,
        init: impl FnOnce(T) -> C::Value,
        fold: impl FnOnce(&mut C::Value, T),
    ) -> bool {
        match self.entry(at) {
            Entry::Occupied(mut o) => {
                let cell = &mut o.get_mut().state;
                if cell.is_expired(clock) {
                    *cell = C::new(init(input), clock);
                    true
                } else {
                    fold(cell.value_mut(), input);
                    cell.touch(clock);
                    false
                }
            }
            Entry::Vacant(v) => {
                v.insert(Slot::new(at, C::new(init(input), clock)));
                true
            }
        }
    }

    /// Removes the sources' live values, folds them together and then into the target.
    fn merge(
        &mut self,
        target: At<'_, K, N>,
        sources: &[NsAt<'_, N>],
        clock: &Clock,
        mut combine: impl FnMut(&mut C::Value, C::Value),
    ) {
        let mut merged: Option<C::Value> = None;
        for source in sources.iter().filter(|s| s.ns != target.ns) {
            let Some(cell) = self.remove(At { ns: source.ns, ns_hash: source.hash, ..target }) else { continue };
            if cell.is_expired(clock) {
                continue;
            }
            match &mut merged {
                None => merged = Some(cell.into_value()),
                Some(m) => combine(m, cell.into_value()),
            }
        }
        if let Some(m) = merged {
            let _ = self.upsert(target, clock, m, |m| m, combine);
        }
    }
}

/// What a snapshot keeps of a stored `S`: the live part, if any.
pub(crate) trait Persist: 'static {
    type Persisted: StateValue;
    fn persist(&self, clock: &Clock) -> Option<Self::Persisted>;
    fn restore(persisted: Self::Persisted) -> Self;
}

impl<V: StateValue> Persist for Plain<V> {
    type Persisted = V;
    fn persist(&self, _: &Clock) -> Option<V> {
        Some(ValueCell::persist(self))
    }
    fn restore(persisted: V) -> Self {
        ValueCell::restore(persisted)
    }
}

impl<V: StateValue> Persist for Expiring<V> {
    type Persisted = (V, i64);
    fn persist(&self, clock: &Clock) -> Option<(V, i64)> {
        (!self.is_expired(clock)).then(|| ValueCell::persist(self))
    }
    fn restore(persisted: (V, i64)) -> Self {
        ValueCell::restore(persisted)
    }
}

impl<C: ValueCell> Persist for Vec<C> {
    type Persisted = Vec<C::Persisted>;
    fn persist(&self, clock: &Clock) -> Option<Self::Persisted> {
        let live: Vec<_> = self.iter().filter(|c| !c.is_expired(clock)).map(C::persist).collect();
        (!live.is_empty()).then_some(live)
    }
    fn restore(persisted: Self::Persisted) -> Self {
        persisted.into_iter().map(C::restore).collect()
    }
}

impl<UK: StateKey, C: ValueCell> Persist for HashMap<UK, C> {
    type Persisted = Vec<(UK, C::Persisted)>;
    fn persist(&self, clock: &Clock) -> Option<Self::Persisted> {
        let live: Vec<_> =
            self.iter().filter(|(_, c)| !c.is_expired(clock)).map(|(k, c)| (k.clone(), c.persist())).collect();
        (!live.is_empty()).then_some(live)
    }
    fn restore(persisted: Self::Persisted) -> Self {
        persisted.into_iter().map(|(k, p)| (k, C::restore(p))).collect()
    }
}

/// The entries archived for one key group of one state.
type Archived<K, N, P> = Vec<(K, N, P)>;

/// A heap state's live entries at a snapshot, by key group from `first`.
struct FrozenHeap<K, N, P> {
    what: String,
    first: u32,
    groups: Vec<Archived<K, N, P>>,
}

impl<K: StateKey, N: Namespace, P: StateValue> FrozenTable for FrozenHeap<K, N, P> {
    fn encode_group(&self, key_group: u32) -> Result<Option<Encoded>, StateError> {
        let entries = key_group.checked_sub(self.first).and_then(|i| self.groups.get(i as usize));
        match entries {
            Some(entries) if !entries.is_empty() => {
                let expected = entries.len() * std::mem::size_of::<<(K, N, P) as rkyv::Archive>::Archived>();
                codec::encode_sized(entries, expected + expected / 4 + 64, || self.what.clone()).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// A new table: as every state (`StateTable`) and behind the interface of its kind.
pub(crate) type NewTable<T> = (Rc<RefCell<dyn StateTable>>, Rc<RefCell<T>>);

pub(crate) fn new_table<S: StateTable + 'static, T: ?Sized>(
    table: S,
    typed: impl FnOnce(Rc<RefCell<S>>) -> Rc<RefCell<T>>,
) -> NewTable<T> {
    let table = Rc::new(RefCell::new(table));
    (table.clone(), typed(table))
}

/// Makes the heap backend's tables for one key-group range: one per registered state, with
/// plain cells, or with cells that carry their time to live when the state has a TTL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeapTables {
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
}

impl HeapTables {
    fn state<K: StateKey, N: Namespace, S, F>(
        &self,
        name: &str,
        kind: StateKind,
        ttl: Option<StateTtlConfig>,
        function: F,
    ) -> HeapState<K, N, S, F> {
        HeapState::new(name, kind, ttl, self.max_parallelism, self.key_groups, function)
    }

    pub fn value<K: StateKey, N: Namespace, V: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn ValueTable<K, N, V>> {
        let kind = StateKind::Value;
        match ttl {
            None => new_table(self.state::<K, N, Plain<Option<V>>, _>(name, kind, ttl, ()), |t| t as _),
            Some(_) => new_table(self.state::<K, N, Expiring<Option<V>>, _>(name, kind, ttl, ()), |t| t as _),
        }
    }

    pub fn list<K: StateKey, N: Namespace, V: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn ListTable<K, N, V>> {
        let kind = StateKind::List;
        match ttl {
            None => new_table(self.state::<K, N, Vec<Plain<V>>, _>(name, kind, ttl, ()), |t| t as _),
            Some(_) => new_table(self.state::<K, N, Vec<Expiring<V>>, _>(name, kind, ttl, ()), |t| t as _),
        }
    }

    pub fn map<K: StateKey, N: Namespace, UK: StateKey, UV: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn MapTable<K, N, UK, UV>> {
        let kind = StateKind::Map;
        match ttl {
            None => new_table(self.state::<K, N, HashMap<UK, Plain<UV>>, _>(name, kind, ttl, ()), |t| t as _),
            Some(_) => new_table(self.state::<K, N, HashMap<UK, Expiring<UV>>, _>(name, kind, ttl, ()), |t| t as _),
        }
    }

    pub fn reducing<K: StateKey, N: Namespace, V: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
        reduce: ReduceFn<V>,
    ) -> NewTable<dyn ReducingTable<K, N, V>> {
        let kind = StateKind::Reducing;
        match ttl {
            None => new_table(self.state::<K, N, Plain<V>, _>(name, kind, ttl, reduce), |t| t as _),
            Some(_) => new_table(self.state::<K, N, Expiring<V>, _>(name, kind, ttl, reduce), |t| t as _),
        }
    }

    pub fn aggregating<K: StateKey, N: Namespace, IN: 'static, ACC: StateValue, OUT: 'static>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
        aggregate: AggregateFn<IN, ACC, OUT>,
    ) -> NewTable<dyn AggregatingTable<K, N, IN, ACC, OUT>> {
        let kind = StateKind::Aggregating;
        match ttl {
            None => new_table(self.state::<K, N, Plain<ACC>, _>(name, kind, ttl, aggregate), |t| t as _),
            Some(_) => new_table(self.state::<K, N, Expiring<ACC>, _>(name, kind, ttl, aggregate), |t| t as _),
        }
    }
}

/// One registered state of the heap backend; `F` is its function (reduce, aggregate) or `()`.
pub(crate) struct HeapState<K, N, S, F> {
    name: String,
    kind: StateKind,
    ttl: Option<StateTtlConfig>,
    table: GroupedTable<K, N, S>,
    function: F,
}

impl<K: StateKey, N: Namespace, S, F> HeapState<K, N, S, F> {
    pub fn new(
        name: &str,
        kind: StateKind,
        ttl: Option<StateTtlConfig>,
        max_parallelism: u32,
        key_groups: KeyGroupRange,
        function: F,
    ) -> Self {
        let table = GroupedTable::new(max_parallelism, key_groups);
        Self { name: name.to_owned(), kind, ttl, table, function }
    }

    #[inline]
    fn clock(&self, now_ms: i64) -> Clock {
        Clock::new(self.ttl.as_ref(), now_ms)
    }

    fn what(&self) -> String {
        format!("{} state '{}'", self.kind, self.name)
    }
}

impl<K: StateKey, N: Namespace, S: Persist, F: 'static> StateTable for HeapState<K, N, S, F> {
    fn kind(&self) -> StateKind {
        self.kind
    }

    fn value_type(&self) -> &'static str {
        codec::value_type::<Archived<K, N, S::Persisted>>()
    }

    fn num_entries(&self) -> usize {
        self.table.len()
    }

    fn clear_all(&mut self) {
        self.table.clear();
    }

    fn freeze(&self, now_ms: i64) -> Box<dyn FrozenTable> {
        let clock = self.clock(now_ms);
        let groups = self
            .table
            .groups
            .iter()
            .map(|group| {
                group.iter().filter_map(|s| s.state.persist(&clock).map(|p| (s.key.clone(), s.ns.clone(), p))).collect()
            })
            .collect();
        Box::new(FrozenHeap::<K, N, S::Persisted> { what: self.what(), first: self.table.key_groups.start, groups })
    }

    fn restore_group(&mut self, key_group: u32, state: &NamedStateBytes) -> Result<(), StateError> {
        let entries: Archived<K, N, S::Persisted> =
            codec::decode(&state.value_type, state.checksum, &state.bytes, || self.what(), key_group)?;
        let max_parallelism = self.table.max_parallelism;
        let index = self.table.group_index(key_group);
        let group = &mut self.table.groups[index];
        group.reserve(entries.len(), rehash);
        for (key, ns, persisted) in entries {
            let stable = stable_hash(&key);
            let found = key_group_for_hash(stable, max_parallelism);
            if found != key_group {
                return Err(StateError::Corrupt {
                    what: self.what(),
                    key_group,
                    reason: format!("it holds a key of key group {found}"),
                });
            }
            let hash = key_table_hash(stable) ^ namespace_hash(&ns);
            match group.entry(hash, |s| s.key == key && s.ns == ns, rehash) {
                Entry::Occupied(mut o) => o.get_mut().state = S::restore(persisted),
                Entry::Vacant(v) => {
                    v.insert(Slot { key, ns, state: S::restore(persisted) });
                }
            }
        }
        Ok(())
    }
}

impl<K, N, V, C> ValueTable<K, N, V> for HeapState<K, N, C, ()>
where
    K: StateKey,
    N: Namespace,
    V: StateValue,
    C: ValueCell<Value = Option<V>> + Persist,
{
    #[inline]
    fn get(&mut self, at: At<'_, K, N>) -> Option<V> {
        let clock = self.clock(at.now_ms);
        self.table.read(at, &clock, Clone::clone).flatten()
    }

    #[inline]
    fn put(&mut self, at: At<'_, K, N>, value: V) {
        let clock = self.clock(at.now_ms);
        self.table.set(at, C::new(Some(value), &clock));
    }

    #[inline]
    fn update_with(&mut self, at: At<'_, K, N>, f: &mut dyn FnMut(&mut Option<V>)) {
        let clock = self.clock(at.now_ms);
        match self.table.entry(at) {
            Entry::Occupied(mut o) => {
                let cell = &mut o.get_mut().state;
                if cell.is_expired(&clock) {
                    *cell.value_mut() = None;
                }
                f(cell.value_mut());
                if cell.value().is_some() {
                    cell.touch(&clock);
                } else {
                    o.remove();
                }
            }
            Entry::Vacant(v) => {
                let mut value = None;
                f(&mut value);
                if value.is_some() {
                    v.insert(Slot::new(at, C::new(value, &clock)));
                }
            }
        }
    }

    #[inline]
    fn remove(&mut self, at: At<'_, K, N>) {
        self.table.remove(at);
    }

    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]) {
        let clock = self.clock(target.now_ms);
        self.table.merge(target, sources, &clock, |t, s| {
            if t.is_none() {
                *t = s;
            }
        });
    }
}

impl<K, N, V, C> ReducingTable<K, N, V> for HeapState<K, N, C, ReduceFn<V>>
where
    K: StateKey,
    N: Namespace,
    V: StateValue,
    C: ValueCell<Value = V> + Persist,
{
    #[inline]
    fn get(&mut self, at: At<'_, K, N>) -> Option<V> {
        let clock = self.clock(at.now_ms);
        self.table.read(at, &clock, Clone::clone)
    }

    #[inline]
    fn add(&mut self, at: At<'_, K, N>, value: V) -> bool {
        let clock = self.clock(at.now_ms);
        let reduce = &*self.function;
        self.table.upsert(at, &clock, value, |v| v, reduce)
    }

    #[inline]
    fn remove(&mut self, at: At<'_, K, N>) {
        self.table.remove(at);
    }

    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]) {
        let clock = self.clock(target.now_ms);
        let reduce = &*self.function;
        self.table.merge(target, sources, &clock, reduce);
    }
}

/// The aggregate function of an aggregating state.
pub(crate) type AggregateFn<IN, ACC, OUT> = std::rc::Rc<dyn AggregateFunction<IN, ACC, OUT>>;

impl<K, N, IN, ACC, OUT, C> AggregatingTable<K, N, IN, ACC, OUT> for HeapState<K, N, C, AggregateFn<IN, ACC, OUT>>
where
    K: StateKey,
    N: Namespace,
    IN: 'static,
    ACC: StateValue,
    OUT: 'static,
    C: ValueCell<Value = ACC> + Persist,
{
    #[inline]
    fn get(&mut self, at: At<'_, K, N>) -> Option<OUT> {
        let clock = self.clock(at.now_ms);
        let agg = &*self.function;
        self.table.read(at, &clock, |acc| agg.get_result(acc))
    }

    #[inline]
    fn take(&mut self, at: At<'_, K, N>) -> Option<OUT> {
        let clock = self.clock(at.now_ms);
        let agg = &*self.function;
        self.table.take(at, &clock, |acc| agg.get_result(acc))
    }

    #[inline]
    fn add(&mut self, at: At<'_, K, N>, value: &IN) -> bool {
        let clock = self.clock(at.now_ms);
        let agg = &*self.function;
        let init = |value: &IN| {
            let mut acc = agg.create_accumulator();
            agg.add(value, &mut acc);
            acc
        };
        self.table.upsert(at, &clock, value, init, |acc, value| agg.add(value, acc))
    }

    #[inline]
    fn accumulator(&mut self, at: At<'_, K, N>) -> Option<ACC> {
        let clock = self.clock(at.now_ms);
        self.table.read(at, &clock, Clone::clone)
    }

    #[inline]
    fn set_accumulator(&mut self, at: At<'_, K, N>, acc: ACC) {
        let clock = self.clock(at.now_ms);
        self.table.set(at, C::new(acc, &clock));
    }

    #[inline]
    fn remove(&mut self, at: At<'_, K, N>) {
        self.table.remove(at);
    }

    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]) {
        let clock = self.clock(target.now_ms);
        let agg = &*self.function;
        self.table.merge(target, sources, &clock, |a, b| agg.merge(a, b));
    }
}

/// Reads the cells of a list under TTL: live ones (restarted if reads do that) and, if the
/// visibility allows, expired ones, which are removed.
#[inline]
fn read_list<C: ValueCell, R>(cells: &mut Vec<C>, clock: &Clock, mut f: impl FnMut(&C::Value) -> R) -> Vec<R> {
    if !C::EXPIRES {
        return cells.iter().map(|c| f(c.value())).collect();
    }
    let mut out = Vec::with_capacity(cells.len());
    cells.retain_mut(|c| {
        let live = c.read(clock);
        if live || clock.return_expired {
            out.push(f(c.value()));
        }
        live
    });
    out
}

impl<K, N, V, C> ListTable<K, N, V> for HeapState<K, N, Vec<C>, ()>
where
    K: StateKey,
    N: Namespace,
    V: StateValue,
    C: ValueCell<Value = V>,
{
    fn get(&mut self, at: At<'_, K, N>) -> Vec<V> {
        let clock = self.clock(at.now_ms);
        let Some(mut o) = self.table.find_entry(at) else { return Vec::new() };
        let out = read_list(&mut o.get_mut().state, &clock, Clone::clone);
        if o.get().state.is_empty() {
            o.remove();
        }
        out
    }

    fn len(&mut self, at: At<'_, K, N>) -> usize {
        let clock = self.clock(at.now_ms);
        let Some(mut o) = self.table.find_entry(at) else { return 0 };
        let len = read_list(&mut o.get_mut().state, &clock, |_| ()).len();
        if o.get().state.is_empty() {
            o.remove();
        }
        len
    }

    #[inline]
    fn add(&mut self, at: At<'_, K, N>, value: V) -> bool {
        let clock = self.clock(at.now_ms);
        match self.table.entry(at) {
            Entry::Occupied(mut o) => {
                o.get_mut().state.push(C::new(value, &clock));
                false
            }
            Entry::Vacant(v) => {
                v.insert(Slot::new(at, vec![C::new(value, &clock)]));
                true
            }
        }
    }

    fn add_all(&mut self, at: At<'_, K, N>, values: &mut dyn Iterator<Item = V>) {
        let clock = self.clock(at.now_ms);
        let cells: Vec<C> = values.map(|v| C::new(v, &clock)).collect();
        if cells.is_empty() {
            return;
        }
        match self.table.entry(at) {
            Entry::Occupied(mut o) => o.get_mut().state.extend(cells),
            Entry::Vacant(v) => {
                v.insert(Slot::new(at, cells));
            }
        }
    }

    fn replace(&mut self, at: At<'_, K, N>, values: Vec<V>) {
        if values.is_empty() {
            self.table.remove(at);
            return;
        }
        let clock = self.clock(at.now_ms);
        self.table.set(at, values.into_iter().map(|v| C::new(v, &clock)).collect());
    }

    fn remove(&mut self, at: At<'_, K, N>) {
        self.table.remove(at);
    }

    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]) {
        let clock = self.clock(target.now_ms);
        let mut moved: Vec<C> = Vec::new();
        for source in sources.iter().filter(|s| s.ns != target.ns) {
            if let Some(cells) = self.table.remove(At { ns: source.ns, ns_hash: source.hash, ..target }) {
                moved.extend(cells.into_iter().filter(|c| !c.is_expired(&clock)));
            }
        }
        if moved.is_empty() {
            return;
        }
        match self.table.entry(target) {
            Entry::Occupied(mut o) => o.get_mut().state.extend(moved),
            Entry::Vacant(v) => {
                v.insert(Slot::new(target, moved));
            }
        }
    }
}

/// Reads the entries of a map under TTL, as [`read_list`].
fn read_map<UK: StateKey, C: ValueCell, R>(
    map: &mut HashMap<UK, C>,
    clock: &Clock,
    mut f: impl FnMut(&UK, &C::Value) -> R,
) -> Vec<R> {
    if !C::EXPIRES {
        return map.iter().map(|(k, c)| f(k, c.value())).collect();
    }
    let mut out = Vec::with_capacity(map.len());
    map.retain(|k, c| {
        let live = c.read(clock);
        if live || clock.return_expired {
            out.push(f(k, c.value()));
        }
        live
    });
    out
}

impl<K, N, UK, UV, C> HeapState<K, N, HashMap<UK, C>, ()>
where
    K: StateKey,
    N: Namespace,
    UK: StateKey,
    C: ValueCell<Value = UV>,
{
    /// Reads one map entry through `f`, as [`GroupedTable::read`] does a value.
    fn read_entry<R>(&mut self, at: At<'_, K, N>, user_key: &UK, f: impl FnOnce(&UV) -> R) -> Option<R> {
        let clock = self.clock(at.now_ms);
        let mut o = self.table.find_entry(at)?;
        let map = &mut o.get_mut().state;
        let cell = map.get_mut(user_key)?;
        if cell.read(&clock) {
            return Some(f(cell.value()));
        }
        let expired = map.remove(user_key).expect("entry found just above");
        if map.is_empty() {
            o.remove();
        }
        clock.return_expired.then(|| f(expired.value()))
    }

    /// Reads every entry of the map through `f`, removing the map if nothing is left.
    fn read_all<R>(&mut self, at: At<'_, K, N>, f: impl FnMut(&UK, &UV) -> R) -> Vec<R> {
        let clock = self.clock(at.now_ms);
        let Some(mut o) = self.table.find_entry(at) else { return Vec::new() };
        let out = read_map(&mut o.get_mut().state, &clock, f);
        if o.get().state.is_empty() {
            o.remove();
        }
        out
    }
}

impl<K, N, UK, UV, C> MapTable<K, N, UK, UV> for HeapState<K, N, HashMap<UK, C>, ()>
where
    K: StateKey,
    N: Namespace,
    UK: StateKey,
    UV: StateValue,
    C: ValueCell<Value = UV>,
{
    #[inline]
    fn get(&mut self, at: At<'_, K, N>, user_key: &UK) -> Option<UV> {
        self.read_entry(at, user_key, Clone::clone)
    }

    #[inline]
    fn contains(&mut self, at: At<'_, K, N>, user_key: &UK) -> bool {
        self.read_entry(at, user_key, |_| ()).is_some()
    }

    #[inline]
    fn put(&mut self, at: At<'_, K, N>, user_key: UK, value: UV) {
        let clock = self.clock(at.now_ms);
        let cell = C::new(value, &clock);
        match self.table.entry(at) {
            Entry::Occupied(mut o) => {
                o.get_mut().state.insert(user_key, cell);
            }
            Entry::Vacant(v) => {
                let mut map = HashMap::with_capacity(1);
                map.insert(user_key, cell);
                v.insert(Slot::new(at, map));
            }
        }
    }

    fn remove_key(&mut self, at: At<'_, K, N>, user_key: &UK) -> Option<UV> {
        let clock = self.clock(at.now_ms);
        let mut o = self.table.find_entry(at)?;
        let map = &mut o.get_mut().state;
        let removed = map.remove(user_key);
        if map.is_empty() {
            o.remove();
        }
        removed.filter(|c| !c.is_expired(&clock)).map(C::into_value)
    }

    fn entries(&mut self, at: At<'_, K, N>) -> Vec<(UK, UV)> {
        self.read_all(at, |k, v| (k.clone(), v.clone()))
    }

    fn keys(&mut self, at: At<'_, K, N>) -> Vec<UK> {
        self.read_all(at, |k, _| k.clone())
    }

    fn is_empty(&mut self, at: At<'_, K, N>) -> bool {
        self.read_all(at, |_, _| ()).is_empty()
    }

    fn remove(&mut self, at: At<'_, K, N>) {
        self.table.remove(at);
    }
}
