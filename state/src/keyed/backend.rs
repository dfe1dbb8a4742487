//! The keyed state backend of one operator subtask: the registry of named states, the shared
//! current key and time, and snapshot/restore of all states by key group.
//!
//! Registration follows Flink: a name registered again with the same kind, types and TTL gives
//! another handle on the same state; anything else is [`StateError::Incompatible`]. Restore may
//! come before or after registration: states in a snapshot that are not registered yet are kept
//! as bytes and loaded (and type-checked) when their name is registered, and are carried over
//! unchanged into snapshots taken in between.

use std::any::{type_name, Any};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use super::descriptors::ReduceFn;
use super::descriptors::{
    AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, ValueStateDescriptor,
};
use super::handles::{AggregatingState, ListState, MapState, ReducingState, ValueState};
use super::heap::{AggregateFn, HeapTables, NewTable};
use super::lsm::{FrozenFiles, LsmConfig, LsmFilesSnapshot, LsmShared, LsmTables, SharedFileStore, StateInfo};
use super::snapshot::{KeyGroupSnapshot, KeyedStateSnapshot, NamedStateBytes, StateKind};
use super::tables::{AggregatingTable, FrozenTable, ListTable, MapTable, ReducingTable, StateTable, ValueTable};
use super::ttl::StateTtlConfig;
use super::{KeyContext, Namespace, StateKey, StateValue};
use crate::codec;
use crate::error::StateError;
use crate::keygroup::{stable_hash, KeyGroupRange, MAX_MAX_PARALLELISM};

/// Where a backend keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateBackendKind {
    /// In hash tables on the heap, one per state and key group.
    #[default]
    Heap,
    /// In an LSM store on local disk, one column family per state (see `keyed::lsm`).
    Lsm,
}

impl std::fmt::Display for StateBackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateBackendKind::Heap => "heap",
            StateBackendKind::Lsm => "lsm",
        })
    }
}

impl std::str::FromStr for StateBackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "heap" => Ok(Self::Heap),
            "lsm" => Ok(Self::Lsm),
            other => Err(format!("unknown state backend '{other}' (expected heap or lsm)")),
        }
    }
}

/// The table makers of a backend's kind.
enum Tables {
    Heap(HeapTables),
    Lsm(LsmTables),
}

impl Tables {
    fn value<K: StateKey, N: Namespace, V: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn ValueTable<K, N, V>> {
        match self {
            Tables::Heap(t) => t.value(name, ttl),
            Tables::Lsm(t) => t.value(name, ttl),
        }
    }

    fn list<K: StateKey, N: Namespace, V: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn ListTable<K, N, V>> {
        match self {
            Tables::Heap(t) => t.list(name, ttl),
            Tables::Lsm(t) => t.list(name, ttl),
        }
    }

    fn map<K: StateKey, N: Namespace, UK: StateKey, UV: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn MapTable<K, N, UK, UV>> {
        match self {
            Tables::Heap(t) => t.map(name, ttl),
            Tables::Lsm(t) => t.map(name, ttl),
        }
    }

    fn reducing<K: StateKey, N: Namespace, V: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
        reduce: ReduceFn<V>,
    ) -> NewTable<dyn ReducingTable<K, N, V>> {
        match self {
            Tables::Heap(t) => t.reducing(name, ttl, reduce),
            Tables::Lsm(t) => t.reducing(name, ttl, reduce),
        }
    }

    fn aggregating<K: StateKey, N: Namespace, IN: 'static, ACC: StateValue, OUT: 'static>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
        aggregate: AggregateFn<IN, ACC, OUT>,
    ) -> NewTable<dyn AggregatingTable<K, N, IN, ACC, OUT>> {
        match self {
            Tables::Heap(t) => t.aggregating(name, ttl, aggregate),
            Tables::Lsm(t) => t.aggregating(name, ttl, aggregate),
        }
    }
}

/// One registered state.
struct Registered {
    kind: StateKind,
    ttl: Option<StateTtlConfig>,
    /// What it was registered as, for error messages.
    description: String,
    table: Rc<RefCell<dyn StateTable>>,
    /// The same table as `Rc<RefCell<dyn <Kind>Table<..>>>`, for further handles.
    typed: Box<dyn Any>,
}

/// Keyed state of one operator subtask (see the module docs of `keyed`).
pub struct KeyedStateBackend<K> {
    kind: StateBackendKind,
    /// The store of an LSM backend.
    lsm: Option<Rc<LsmShared>>,
    ctx: Rc<KeyContext<K>>,
    states: BTreeMap<String, Registered>,
    /// Restored states not registered yet: name → key group → bytes.
    pending: BTreeMap<String, BTreeMap<u32, NamedStateBytes>>,
    /// States an incremental restore put in the LSM store that are not registered yet, checked
    /// when they are.
    file_states: BTreeMap<String, StateInfo>,
}

fn describe<N, S>(kind: StateKind, ttl: Option<&StateTtlConfig>) -> String {
    let ttl = ttl.map_or(String::new(), |t| format!(" with TTL {t:?}"));
    format!("a {kind} state of {} in namespace {}{ttl}", type_name::<S>(), type_name::<N>())
}

impl<K: StateKey> KeyedStateBackend<K> {
    /// A backend for the key groups `key_groups` of `max_parallelism` (an LSM one with the
    /// default [`LsmConfig`]). Panics if the range does not lie inside `0..max_parallelism` (an
    /// engine bug), or if an LSM backend's store cannot be created (use
    /// [`with_config`](Self::with_config) to get that as an error).
    pub fn new(kind: StateBackendKind, max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        Self::with_config(kind, max_parallelism, key_groups, &LsmConfig::default())
            .unwrap_or_else(|e| panic!("keyed state backend: {e}"))
    }

    /// As [`new`](Self::new), with the LSM backend's settings; an LSM store that cannot be
    /// created (its directory, the disk) is an error.
    pub fn with_config(
        kind: StateBackendKind,
        max_parallelism: u32,
        key_groups: KeyGroupRange,
        lsm: &LsmConfig,
    ) -> Result<Self, StateError> {
        assert!(
            (1..=MAX_MAX_PARALLELISM).contains(&max_parallelism) && key_groups.end <= max_parallelism,
            "key groups {key_groups:?} of max parallelism {max_parallelism}"
        );
        let ctx = Rc::new(KeyContext::new(max_parallelism, key_groups));
        let lsm = match kind {
            StateBackendKind::Heap => None,
            StateBackendKind::Lsm => Some(LsmShared::open(lsm).map_err(|e| StateError::Store {
                what: "the LSM keyed state backend".to_owned(),
                reason: e.to_string(),
            })?),
        };
        Ok(Self { kind, lsm, ctx, states: BTreeMap::new(), pending: BTreeMap::new(), file_states: BTreeMap::new() })
    }

    pub fn kind(&self) -> StateBackendKind {
        self.kind
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.ctx.key_groups
    }

    pub fn max_parallelism(&self) -> u32 {
        self.ctx.max_parallelism
    }

    /// The current key and time, as every handle of this backend sees them.
    pub fn key_context(&self) -> Rc<KeyContext<K>> {
        self.ctx.clone()
    }

    /// Sets the key every state handle is scoped to. Panics if the key's group is outside this
    /// backend's range (the record reached the wrong subtask: an engine bug).
    #[inline]
    pub fn set_current_key(&self, key: K) {
        let hash = stable_hash(&key);
        self.ctx.set_key(key, hash);
    }

    /// As [`set_current_key`](Self::set_current_key), with the key's `stable_hash(&key)`
    /// already computed (checked in debug builds: a different hash would misplace state).
    #[inline]
    pub fn set_current_key_hashed(&self, key: K, hash: u64) {
        self.ctx.set_key(key, hash);
    }

    pub fn current_key(&self) -> Option<K> {
        self.ctx.current_key()
    }

    /// Processing time (ms since the epoch) that TTL uses; the operator sets it per batch.
    #[inline]
    pub fn set_current_time(&self, now_ms: i64) {
        self.ctx.set_time(now_ms);
    }

    /// The tables of the backend this one is.
    fn tables(&self) -> Tables {
        let (max_parallelism, key_groups) = (self.max_parallelism(), self.key_groups());
        match &self.lsm {
            None => Tables::Heap(HeapTables { max_parallelism, key_groups }),
            Some(shared) => Tables::Lsm(LsmTables { max_parallelism, key_groups, shared: shared.clone() }),
        }
    }

    /// The directory of an LSM backend's store.
    pub fn lsm_path(&self) -> Option<std::path::PathBuf> {
        self.lsm.as_ref().map(|s| s.path())
    }

    /// The memory an LSM backend's store takes now (`None` for the heap backend).
    pub fn lsm_memory(&self) -> Option<Result<super::lsm::LsmMemory, StateError>> {
        let what = || "the LSM keyed state backend".to_owned();
        self.lsm.as_ref().map(|s| s.memory().map_err(|e| StateError::Store { what: what(), reason: e.to_string() }))
    }

    pub fn value_state<N: Namespace, V: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<V>,
    ) -> Result<ValueState<K, N, V>, StateError> {
        let (kind, ttl, tables) = (StateKind::Value, desc.ttl, self.tables());
        let description = describe::<N, V>(kind, ttl.as_ref());
        let table = self.register(&desc.name, kind, ttl, description, || tables.value(&desc.name, ttl))?;
        Ok(ValueState::new(self.ctx.clone(), table))
    }

    pub fn list_state<N: Namespace, V: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<V>,
    ) -> Result<ListState<K, N, V>, StateError> {
        let (kind, ttl, tables) = (StateKind::List, desc.ttl, self.tables());
        let description = describe::<N, V>(kind, ttl.as_ref());
        let table = self.register(&desc.name, kind, ttl, description, || tables.list(&desc.name, ttl))?;
        Ok(ListState::new(self.ctx.clone(), table))
    }

    pub fn map_state<N: Namespace, UK: StateKey, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<K, N, UK, UV>, StateError> {
        let (kind, ttl, tables) = (StateKind::Map, desc.ttl, self.tables());
        let description = describe::<N, (UK, UV)>(kind, ttl.as_ref());
        let table = self.register(&desc.name, kind, ttl, description, || tables.map(&desc.name, ttl))?;
        Ok(MapState::new(self.ctx.clone(), table))
    }

    /// The reduce function of the first registration of a name stays in use.
    pub fn reducing_state<N: Namespace, V: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<V>,
    ) -> Result<ReducingState<K, N, V>, StateError> {
        let (kind, ttl, tables) = (StateKind::Reducing, desc.ttl, self.tables());
        let description = describe::<N, V>(kind, ttl.as_ref());
        let reduce = desc.reduce.clone();
        let table = self.register(&desc.name, kind, ttl, description, || tables.reducing(&desc.name, ttl, reduce))?;
        Ok(ReducingState::new(self.ctx.clone(), table))
    }

    /// The aggregate function of the first registration of a name stays in use.
    pub fn aggregating_state<N: Namespace, IN: 'static, ACC: StateValue, OUT: 'static>(
        &mut self,
        desc: &AggregatingStateDescriptor<IN, ACC, OUT>,
    ) -> Result<AggregatingState<K, N, IN, ACC, OUT>, StateError> {
        let (kind, ttl, tables) = (StateKind::Aggregating, desc.ttl, self.tables());
        let description = describe::<N, (IN, ACC, OUT)>(kind, ttl.as_ref());
        let agg = desc.agg.clone();
        let table = self.register(&desc.name, kind, ttl, description, || tables.aggregating(&desc.name, ttl, agg))?;
        Ok(AggregatingState::new(self.ctx.clone(), table))
    }

    /// Returns the table registered under `name`, or creates it with `create` and loads what a
    /// restore kept for it.
    fn register<T: ?Sized + 'static>(
        &mut self,
        name: &str,
        kind: StateKind,
        ttl: Option<StateTtlConfig>,
        description: String,
        create: impl FnOnce() -> (Rc<RefCell<dyn StateTable>>, Rc<RefCell<T>>),
    ) -> Result<Rc<RefCell<T>>, StateError> {
        if let Some(registered) = self.states.get(name) {
            let same = registered.kind == kind && registered.ttl == ttl;
            return match registered.typed.downcast_ref::<Rc<RefCell<T>>>() {
                Some(typed) if same => Ok(typed.clone()),
                _ => Err(StateError::Incompatible {
                    name: name.to_owned(),
                    registered: format!("registered as {}", registered.description),
                    requested: description,
                }),
            };
        }
        let (table, typed) = create();
        if let Some(info) = self.file_states.get(name) {
            let t = table.borrow();
            if t.kind() != info.kind || t.value_type() != info.value_type {
                return Err(StateError::Incompatible {
                    name: name.to_owned(),
                    registered: format!("restored as a {} state archived as {}", info.kind, info.value_type),
                    requested: description,
                });
            }
        }
        self.file_states.remove(name);
        if let Some(groups) = self.pending.get(name) {
            for state in groups.values() {
                check_restorable(&*table.borrow(), state, &description)?;
            }
            for (&key_group, state) in groups {
                table.borrow_mut().restore_group(key_group, state)?;
            }
            self.pending.remove(name);
        }
        let typed_any: Box<dyn Any> = Box::new(typed.clone());
        self.states.insert(name.to_owned(), Registered { kind, ttl, description, table, typed: typed_any });
        Ok(typed)
    }

    /// Consistent snapshot of every state, per key group (live entries only: expired TTL
    /// entries are left out): [`freeze`](Self::freeze), then encode at once.
    pub fn snapshot(&self) -> Result<KeyedStateSnapshot, StateError> {
        self.freeze().encode()
    }

    /// The synchronous part of a snapshot: a copy of every state's live entries, which
    /// [`FrozenKeyedState::encode`] archives later, on any thread, into what
    /// [`snapshot`](Self::snapshot) returns. Changes to the backend after this call are not in it.
    pub fn freeze(&self) -> FrozenKeyedState {
        let now_ms = self.ctx.current_time();
        let states = self
            .states
            .iter()
            .map(|(name, registered)| (name.clone(), registered.kind, registered.table.borrow().freeze(now_ms)))
            .collect();
        let mut pending: BTreeMap<u32, Vec<NamedStateBytes>> = BTreeMap::new();
        for (&key_group, state) in self.pending.values().flatten() {
            pending.entry(key_group).or_default().push(state.clone());
        }
        FrozenKeyedState { max_parallelism: self.max_parallelism(), key_groups: self.key_groups(), states, pending }
    }

    /// The synchronous part of an incremental snapshot for `checkpoint`: `Ok(None)` unless this
    /// is an LSM backend configured for incremental checkpoints (then take [`freeze`](Self::freeze)).
    /// [`FrozenFiles::upload`] is the asynchronous part.
    pub fn freeze_files(&self, checkpoint: u64) -> Result<Option<FrozenFiles>, StateError> {
        let Some(shared) = self.lsm.as_ref().filter(|s| s.config().incremental) else { return Ok(None) };
        let mut states: Vec<StateInfo> = self
            .states
            .iter()
            .map(|(name, r)| StateInfo {
                name: name.clone(),
                kind: r.kind,
                value_type: r.table.borrow().value_type().to_owned(),
            })
            .collect();
        states.extend(self.file_states.values().cloned());
        states.sort_by(|a, b| a.name.cmp(&b.name));
        let mut pending: BTreeMap<u32, Vec<NamedStateBytes>> = BTreeMap::new();
        for (&key_group, state) in self.pending.values().flatten() {
            pending.entry(key_group).or_default().push(state.clone());
        }
        let pending = pending.into_iter().map(|(key_group, states)| KeyGroupSnapshot { key_group, states }).collect();
        let tables = LsmTables {
            max_parallelism: self.max_parallelism(),
            key_groups: self.key_groups(),
            shared: shared.clone(),
        };
        let frozen = shared.freeze_files(checkpoint, &tables, states, pending).map_err(|e| StateError::Store {
            what: format!("the incremental snapshot of checkpoint {checkpoint}"),
            reason: e.to_string(),
        })?;
        Ok(Some(frozen))
    }

    /// Checkpoint `checkpoint` is complete: the files its incremental snapshot used are what
    /// later ones reuse.
    pub fn notify_checkpoint_complete(&self, checkpoint: u64) {
        if let Some(shared) = &self.lsm {
            shared.ledger().lock().unwrap_or_else(|e| e.into_inner()).confirm(checkpoint);
        }
    }

    /// Checkpoint `checkpoint` will never complete: its uploads are never reused.
    pub fn notify_checkpoint_aborted(&self, checkpoint: u64) {
        if let Some(shared) = &self.lsm {
            shared.ledger().lock().unwrap_or_else(|e| e.into_inner()).abort(checkpoint);
        }
    }

    /// Replaces every state with the contents of the incremental `snapshots` restricted to this
    /// backend's key groups (snapshots of other key groups are skipped, so every old subtask's
    /// snapshot may be given after a rescale), downloading their files `from` shared storage.
    /// Only an LSM backend restores them (restoring on the heap backend takes a savepoint).
    ///
    /// Every check (max parallelism, key groups, the kinds and types of registered states) and
    /// every download (sizes and checksums) runs before anything changes; an error names the
    /// file or state at fault and leaves the backend as it was.
    pub fn restore_files(
        &mut self,
        snapshots: &[LsmFilesSnapshot],
        from: &dyn SharedFileStore,
    ) -> Result<(), StateError> {
        let (max_p, range) = (self.max_parallelism(), self.key_groups());
        let Some(shared) = self.lsm.clone() else {
            return Err(StateError::Store {
                what: "the heap keyed state backend".to_owned(),
                reason: "the checkpoint holds incremental snapshots of the LSM backend, which only the LSM backend \
                         restores; run the job with --state-backend lsm, or restore from a savepoint"
                    .to_owned(),
            });
        };
        let mut mine = Vec::new();
        for snapshot in snapshots {
            if snapshot.max_parallelism != max_p {
                return Err(StateError::MaxParallelismMismatch { snapshot: snapshot.max_parallelism, backend: max_p });
            }
            let theirs = snapshot.key_groups();
            if theirs.start >= theirs.end || theirs.end > max_p {
                return Err(StateError::KeyGroupOutOfRange { key_group: theirs.end, max_parallelism: max_p });
            }
            if theirs.start < range.end && range.start < theirs.end {
                mine.push(snapshot);
            }
        }
        let mut seen = HashSet::new();
        for snapshot in &mine {
            for group in snapshot.key_groups().as_range() {
                if range.contains(group) && !seen.insert(group) {
                    return Err(StateError::DuplicateKeyGroup { key_group: group });
                }
            }
        }
        let mut infos: BTreeMap<String, StateInfo> = BTreeMap::new();
        for info in mine.iter().flat_map(|s| &s.states) {
            if let Some(registered) = self.states.get(&info.name) {
                let table = registered.table.borrow();
                if table.kind() != info.kind || table.value_type() != info.value_type {
                    return Err(StateError::Incompatible {
                        name: info.name.clone(),
                        registered: format!("registered as {}", registered.description),
                        requested: format!("restored as a {} state archived as {}", info.kind, info.value_type),
                    });
                }
            }
            if let Some(other) = infos.get(&info.name) {
                if other != info {
                    return Err(StateError::Incompatible {
                        name: info.name.clone(),
                        registered: format!("restored as a {} state archived as {}", other.kind, other.value_type),
                        requested: format!("restored as a {} state archived as {}", info.kind, info.value_type),
                    });
                }
            }
            infos.insert(info.name.clone(), info.clone());
        }
        let pending: Vec<&KeyGroupSnapshot> =
            mine.iter().flat_map(|s| &s.pending).filter(|g| range.contains(g.key_group)).collect();
        for group in &pending {
            self.check_group(group)?;
        }
        let columns: Vec<String> = self.states.keys().cloned().collect();
        shared.restore_files(&mine, range, &columns, from)?;
        self.pending.clear();
        self.file_states = infos.into_iter().filter(|(name, _)| !self.states.contains_key(name)).collect();
        self.load(&pending)
    }

    /// Replaces every state with the contents of `snapshots` (which together must hold each key
    /// group at most once) restricted to this backend's key groups; key groups of other
    /// subtasks are ignored, which is how rescaling redistributes state. States not registered
    /// yet are loaded when they are registered. The snapshots must come from
    /// [`snapshot`](Self::snapshot) of backends with the same types: their archives are checked
    /// by type name and checksum and validated before they are read.
    ///
    /// Checks on kinds, types, checksums and key groups run before anything changes; if loading
    /// fails after that (an entry in the wrong key group), the backend is left empty.
    pub fn restore(&mut self, snapshots: &[KeyedStateSnapshot]) -> Result<(), StateError> {
        let (max_p, range) = (self.max_parallelism(), self.key_groups());
        let mut seen = HashSet::new();
        let mut mine = Vec::new();
        for snapshot in snapshots {
            if snapshot.max_parallelism != max_p {
                return Err(StateError::MaxParallelismMismatch { snapshot: snapshot.max_parallelism, backend: max_p });
            }
            for group in &snapshot.key_groups {
                if group.key_group >= max_p {
                    return Err(StateError::KeyGroupOutOfRange { key_group: group.key_group, max_parallelism: max_p });
                }
                if !seen.insert(group.key_group) {
                    return Err(StateError::DuplicateKeyGroup { key_group: group.key_group });
                }
                if range.contains(group.key_group) {
                    mine.push(group);
                }
            }
        }
        for group in &mine {
            self.check_group(group)?;
        }
        if let Some(shared) = &self.lsm {
            for name in std::mem::take(&mut self.file_states).into_keys() {
                shared
                    .drop_column(&name)
                    .map_err(|e| StateError::Store { what: format!("state '{name}'"), reason: e.to_string() })?;
            }
        }
        self.clear_all();
        let loaded = self.load(&mine);
        if loaded.is_err() {
            self.clear_all();
        }
        loaded
    }

    fn check_group(&self, group: &KeyGroupSnapshot) -> Result<(), StateError> {
        let mut names = HashSet::new();
        for state in &group.states {
            let what = || format!("{} state '{}'", state.kind, state.name);
            if !names.insert(state.name.as_str()) {
                let reason = "the state appears twice".to_owned();
                return Err(StateError::Corrupt { what: what(), key_group: group.key_group, reason });
            }
            if codec::checksum(&state.bytes) != state.checksum {
                let reason = "checksum mismatch".to_owned();
                return Err(StateError::Corrupt { what: what(), key_group: group.key_group, reason });
            }
            if let Some(registered) = self.states.get(&state.name) {
                let description = format!("registered as {}", registered.description);
                check_restorable(&*registered.table.borrow(), state, &description)?;
            }
        }
        Ok(())
    }

    fn load(&mut self, groups: &[&KeyGroupSnapshot]) -> Result<(), StateError> {
        for group in groups {
            for state in &group.states {
                match self.states.get(&state.name) {
                    Some(registered) => registered.table.borrow_mut().restore_group(group.key_group, state)?,
                    None => {
                        self.pending.entry(state.name.clone()).or_default().insert(group.key_group, state.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn clear_all(&mut self) {
        for registered in self.states.values() {
            registered.table.borrow_mut().clear_all();
        }
        self.pending.clear();
    }

    /// Number of `(key, namespace)` entries over all registered states (expired ones that have
    /// not been removed yet included; restored states not registered yet excluded).
    pub fn num_entries(&self) -> usize {
        self.states.values().map(|r| r.table.borrow().num_entries()).sum()
    }
}

/// Every state of a backend as it was at [`KeyedStateBackend::freeze`], owned and sendable: the
/// asynchronous part of a snapshot encodes it.
pub struct FrozenKeyedState {
    max_parallelism: u32,
    key_groups: KeyGroupRange,
    /// (name, kind, live entries) of every registered state.
    states: Vec<(String, StateKind, Box<dyn FrozenTable>)>,
    /// Restored states not registered yet, carried over as they are, by key group.
    pending: BTreeMap<u32, Vec<NamedStateBytes>>,
}

impl std::fmt::Debug for FrozenKeyedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenKeyedState")
            .field("max_parallelism", &self.max_parallelism)
            .field("key_groups", &self.key_groups)
            .field("states", &self.states.iter().map(|(name, _, _)| name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FrozenKeyedState {
    /// The archives of every state, per key group, states by name within a key group.
    pub fn encode(mut self) -> Result<KeyedStateSnapshot, StateError> {
        let mut key_groups = Vec::new();
        for key_group in self.key_groups.as_range() {
            let mut states = Vec::new();
            for (name, kind, table) in &self.states {
                if let Some(encoded) = table.encode_group(key_group)? {
                    states.push(NamedStateBytes {
                        name: name.clone(),
                        kind: *kind,
                        value_type: encoded.value_type,
                        checksum: encoded.checksum,
                        bytes: encoded.bytes,
                    });
                }
            }
            states.extend(self.pending.remove(&key_group).unwrap_or_default());
            states.sort_by(|a, b| a.name.cmp(&b.name));
            if !states.is_empty() {
                key_groups.push(KeyGroupSnapshot { key_group, states });
            }
        }
        Ok(KeyedStateSnapshot { max_parallelism: self.max_parallelism, key_groups })
    }
}

/// Whether `state` (from a snapshot) can be loaded into `table`.
fn check_restorable(table: &dyn StateTable, state: &NamedStateBytes, description: &str) -> Result<(), StateError> {
    if table.kind() == state.kind && table.value_type() == state.value_type {
        return Ok(());
    }
    Err(StateError::Incompatible {
        name: state.name.clone(),
        registered: description.to_owned(),
        requested: format!("restored as a {} state archived as {}", state.kind, state.value_type),
    })
}
