//! The LSM backend: each state is a column family of one database per keyed operator subtask
//! (`store.rs`, the only module that names the engine), on local disk, so state larger than
//! memory stays on disk and only the slot's block cache and memtables take memory.
//!
//! Keys are `key group (u16, big-endian) ‖ key length (u32) ‖ key ‖ namespace length (u32) ‖
//! namespace [‖ suffix]`, key and namespace as rkyv archives: a key group is a contiguous key
//! range (a snapshot or a rescale reads whole ranges), and the entries of one `(key, namespace)`
//! are contiguous. Values are rkyv archives of what the heap backend's snapshot holds per entry,
//! so both backends write the same snapshot format and restore each other's snapshots:
//! - value, reducing, aggregating: one entry per `(key, namespace)`, the cell (with its expiry
//!   time under TTL);
//! - list: a marker entry (suffix `0`) that says the list exists, and the elements (suffix `1`)
//!   as length-prefixed archives that `add` appends through the store's merge operator without
//!   reading them; `add` reads only the marker to say whether the list is new;
//! - map: one entry per user key (suffix: the user key's archive), so a map is read or cleared
//!   by prefix.
//!
//! Reads and writes are synchronous on the slot's thread, as in Flink's RocksDB backend: a read
//! that misses the memtables and the block cache waits for the disk. A snapshot's synchronous
//! part is a store checkpoint (flush and hard links, shared by every state of the backend). A
//! full snapshot's asynchronous part opens that checkpoint read-only on the writer's thread and
//! archives each key group as the heap backend does (entries whose TTL has expired left out);
//! an incremental one (`files`, the default for checkpoints) uploads the checkpoint's new SST
//! files instead.
//!
//! A failing store operation inside a state access (the disk, not the data) panics with the
//! store's error: the task fails and restarts from its last checkpoint, as a Flink task does on
//! a RocksDB exception. Snapshot and restore return the error instead.

mod files;
mod store;

use std::cell::{Cell, Ref, RefCell};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use corestream_netstack::record::to_bytes;
use corestream_netstack::Data;

use super::descriptors::ReduceFn;
use super::heap::{new_table, AggregateFn, NewTable};
use super::snapshot::{NamedStateBytes, StateKind};
use super::tables::{AggregatingTable, FrozenTable, ListTable, MapTable, ReducingTable, StateTable, ValueTable};
use super::ttl::{Clock, Expiring, Plain, StateTtlConfig, ValueCell};
use super::{At, Namespace, NsAt, StateKey, StateValue};
use crate::codec::{self, Encoded};
use crate::error::StateError;
use crate::keygroup::{assign_key_group, KeyGroupRange};

pub use files::{
    DirSharedFiles, FrozenFiles, LsmFilesSnapshot, PrivateFile, SharedFile, SharedFileRef, SharedFileStore,
    SnapshotFile, StateInfo, UploadLedger,
};
pub use store::{slot_cache_usage, StoreError, ENGINE};
use store::{ReadOnlyStore, Store};

/// Where the LSM backend keeps its files and how much memory a slot gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmConfig {
    /// Directory for the stores' files (a fresh subdirectory per backend, removed with it);
    /// `None`: the system's temporary directory.
    pub local_dir: Option<PathBuf>,
    /// Memory of one slot's stores: half is the block cache the slot's stores share; a store
    /// flushes its largest memtable once its memtables pass an eighth (a state's memtable
    /// alone at a sixteenth), so with the one being flushed they stay near a quarter.
    pub memory_per_slot: usize,
    /// Checkpoints upload only the store's new files (see `files`); otherwise each checkpoint
    /// writes every key group in the heap backend's format (a full snapshot).
    pub incremental: bool,
}

impl Default for LsmConfig {
    fn default() -> Self {
        Self { local_dir: None, memory_per_slot: 256 << 20, incremental: true }
    }
}

impl LsmConfig {
    fn block_cache_bytes(&self) -> usize {
        (self.memory_per_slot / 2).max(1 << 20)
    }

    /// What one store's memtables may hold before it flushes the largest.
    fn store_memtable_bytes(&self) -> usize {
        (self.memory_per_slot / 8).max(1 << 20)
    }

    /// What one state's memtable holds before it is flushed.
    fn state_memtable_bytes(&self) -> usize {
        (self.memory_per_slot / 16).max(512 << 10)
    }
}

/// Memory an LSM backend's store takes (see [`LsmConfig::memory_per_slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsmMemory {
    /// Bytes in this store's memtables.
    pub memtables: u64,
    /// Bytes in the block cache of the slot's stores.
    pub slot_block_cache: u64,
}

/// What every table of one backend shares: the store and its latest checkpoint.
pub(crate) struct LsmShared {
    /// Declared first: the database closes before its directory is removed.
    store: RefCell<Store>,
    config: LsmConfig,
    /// Writes since the store was opened; a checkpoint is reused while none happened.
    writes: Cell<u64>,
    /// The last checkpoint while a snapshot still reads it, and the write count it was taken at.
    frozen: RefCell<Option<(u64, Weak<FrozenStore>)>>,
    /// Which shared files the next incremental snapshot may reuse.
    ledger: Arc<Mutex<UploadLedger>>,
    /// The directory of a store made by a restore (the store lives there, not in `dir`).
    restored: RefCell<Option<tempfile::TempDir>>,
    dir: tempfile::TempDir,
}

impl LsmShared {
    /// A new, empty store in a fresh directory under the configured one.
    pub fn open(config: &LsmConfig) -> Result<Rc<Self>, StoreError> {
        let parent = config.local_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new().prefix("corestream-lsm-").tempdir_in(&parent).map_err(|e| StoreError {
            op: "creating a directory",
            path: parent.clone(),
            reason: e.to_string(),
        })?;
        let store = Store::open(&dir.path().join("db"), config)?;
        Ok(Rc::new(Self {
            store: RefCell::new(store),
            config: config.clone(),
            writes: Cell::new(0),
            frozen: RefCell::new(None),
            ledger: Arc::default(),
            restored: RefCell::new(None),
            dir,
        }))
    }

    fn store(&self) -> Ref<'_, Store> {
        self.store.borrow()
    }

    fn wrote(&self) {
        self.writes.set(self.writes.get() + 1);
    }

    fn ensure_column(&self, name: &str) {
        self.store.borrow_mut().ensure_column(name).unwrap_or_else(|e| store_failed(&e));
    }

    /// A checkpoint of the store as it is now (the last one if nothing was written since and a
    /// snapshot still reads it).
    fn freeze(&self) -> Result<Arc<FrozenStore>, StoreError> {
        let writes = self.writes.get();
        if let Some((at, frozen)) = &*self.frozen.borrow() {
            if let Some(frozen) = frozen.upgrade().filter(|_| *at == writes) {
                return Ok(frozen);
            }
        }
        let parent = self.dir.path().parent().unwrap_or(self.dir.path()).to_owned();
        let dir = tempfile::Builder::new()
            .prefix("corestream-lsm-checkpoint-")
            .tempdir_in(&parent)
            .map_err(|e| StoreError { op: "creating a directory", path: parent, reason: e.to_string() })?;
        self.store().checkpoint(&dir.path().join("db"))?;
        let frozen = Arc::new(FrozenStore { db: OnceLock::new(), config: self.config.clone(), dir });
        *self.frozen.borrow_mut() = Some((writes, Arc::downgrade(&frozen)));
        Ok(frozen)
    }

    pub fn config(&self) -> &LsmConfig {
        &self.config
    }

    /// The synchronous part of an incremental snapshot for `checkpoint` of `states`.
    pub fn freeze_files(
        &self,
        checkpoint: u64,
        tables: &LsmTables,
        states: Vec<StateInfo>,
        pending: Vec<super::snapshot::KeyGroupSnapshot>,
    ) -> Result<FrozenFiles, StoreError> {
        Ok(FrozenFiles {
            checkpoint,
            store: self.freeze()?,
            ledger: self.ledger.clone(),
            max_parallelism: tables.max_parallelism,
            key_groups: tables.key_groups,
            states,
            pending,
        })
    }

    pub fn ledger(&self) -> &Mutex<UploadLedger> {
        &self.ledger
    }

    /// Replaces the store with the contents of incremental `snapshots` in `key_groups`, with a
    /// column family for each of `columns` (see `files`). On error the store is unchanged.
    pub fn restore_files(
        &self,
        snapshots: &[&LsmFilesSnapshot],
        key_groups: KeyGroupRange,
        columns: &[String],
        from: &dyn SharedFileStore,
    ) -> Result<(), StateError> {
        let parent = self.dir.path().parent().unwrap_or(self.dir.path()).to_owned();
        let staging = tempfile::Builder::new().prefix("corestream-lsm-restore-").tempdir_in(&parent).map_err(|e| {
            StateError::Store {
                what: "restoring the LSM store".to_owned(),
                reason: format!("{}: {e}", parent.display()),
            }
        })?;
        let (store, files) = files::restore_store(snapshots, key_groups, columns, staging.path(), &self.config, from)?;
        *self.store.borrow_mut() = store;
        *self.restored.borrow_mut() = Some(staging);
        *self.frozen.borrow_mut() = None;
        self.wrote();
        self.ledger.lock().unwrap_or_else(|e| e.into_inner()).restored(&from.location(), files);
        Ok(())
    }

    /// Removes column family `name` (a restored state that a later restore replaced).
    pub fn drop_column(&self, name: &str) -> Result<(), StoreError> {
        self.store.borrow_mut().drop_column(name)?;
        self.wrote();
        Ok(())
    }

    /// The directory of the store's files.
    pub fn path(&self) -> PathBuf {
        self.store().path().to_owned()
    }

    /// Memory the store takes now: its memtables and its slot's block cache (shared with the
    /// slot's other stores).
    pub fn memory(&self) -> Result<LsmMemory, StoreError> {
        Ok(LsmMemory {
            memtables: self.store().memtable_bytes()?,
            slot_block_cache: slot_cache_usage().unwrap_or(0) as u64,
        })
    }
}

/// A checkpoint of a store, read by the asynchronous part of a snapshot and removed when the
/// last frozen table reading it is dropped.
pub(crate) struct FrozenStore {
    /// Declared first: the database closes before its directory is removed.
    db: OnceLock<Result<ReadOnlyStore, StoreError>>,
    config: LsmConfig,
    dir: tempfile::TempDir,
}

impl FrozenStore {
    fn read(&self) -> Result<&ReadOnlyStore, StoreError> {
        self.db
            .get_or_init(|| ReadOnlyStore::open(&self.dir.path().join("db"), &self.config))
            .as_ref()
            .map_err(Clone::clone)
    }
}

#[cold]
#[track_caller]
fn store_failed(e: &StoreError) -> ! {
    panic!("keyed state: {e}; the task fails and restarts from its last checkpoint")
}

#[cold]
#[track_caller]
fn corrupt(what: &str, reason: &str) -> ! {
    panic!("keyed state: {what} holds a corrupt entry in its LSM store: {reason}")
}

fn archive<T: Data>(value: &T, what: &str) -> Vec<u8> {
    to_bytes(value).unwrap_or_else(|e| panic!("keyed state: {what}: a value could not be serialized: {e}"))
}

fn unarchive<T: Data>(bytes: &[u8], what: &str) -> T {
    codec::read_validated::<T>(bytes).unwrap_or_else(|reason| corrupt(what, &reason))
}

/// The first key of `key_group`'s range (the key group's bytes).
fn group_start(key_group: u32) -> [u8; 2] {
    u16::try_from(key_group).expect("key groups are below 2^15").to_be_bytes()
}

/// The least key greater than every key starting with `prefix`.
fn successor(prefix: &[u8]) -> Vec<u8> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return next;
        }
    }
    vec![u8::MAX]
}

fn push_part(buf: &mut Vec<u8>, part: &[u8]) {
    buf.extend_from_slice(&u32::try_from(part.len()).expect("a key part below 4 GiB").to_be_bytes());
    buf.extend_from_slice(part);
}

/// An entry key split into its parts.
struct EntryKey<'a> {
    key: &'a [u8],
    ns: &'a [u8],
    /// Length of `key group ‖ key ‖ namespace` with their lengths.
    prefix_len: usize,
}

fn split_key(bytes: &[u8]) -> Option<EntryKey<'_>> {
    let part = |at: usize| -> Option<(&[u8], usize)> {
        let len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let end = (at + 4).checked_add(len)?;
        Some((bytes.get(at + 4..end)?, end))
    };
    let (key, ns_at) = part(2)?;
    let (ns, prefix_len) = part(ns_at)?;
    Some(EntryKey { key, ns, prefix_len })
}

/// Builds entry keys, keeping the archives of the last key and namespace it saw.
struct KeyCoder<K, N> {
    key: Option<(K, Vec<u8>)>,
    ns: Option<(N, Vec<u8>)>,
    buf: Vec<u8>,
}

impl<K: StateKey, N: Namespace> KeyCoder<K, N> {
    fn new() -> Self {
        Self { key: None, ns: None, buf: Vec::new() }
    }

    /// `key group ‖ key ‖ namespace`, in a buffer the caller may append a suffix to.
    fn prefix(&mut self, key_group: u32, key: &K, ns: &N, what: &str) -> &mut Vec<u8> {
        if self.key.as_ref().is_none_or(|(k, _)| k != key) {
            self.key = Some((key.clone(), archive(key, what)));
        }
        if self.ns.as_ref().is_none_or(|(n, _)| n != ns) {
            self.ns = Some((ns.clone(), archive(ns, what)));
        }
        let (Some((_, k)), Some((_, n))) = (&self.key, &self.ns) else { unreachable!("both set above") };
        self.buf.clear();
        self.buf.extend_from_slice(&group_start(key_group));
        push_part(&mut self.buf, k);
        push_part(&mut self.buf, n);
        &mut self.buf
    }
}

/// How one state kind lays a `(key, namespace)`'s state out as store entries, and what of it a
/// snapshot archives (the heap backend's persisted form, so the snapshots are the same).
pub(crate) trait Layout: 'static {
    type Persisted: StateValue;
    /// The live part of one `(key, namespace)`'s entries (`(suffix, value)` in key order), or
    /// `None` if nothing in it is live.
    fn gather(entries: &[(&[u8], &[u8])], clock: &Clock, what: &str) -> Option<Self::Persisted>;
    /// The entries (`(suffix, value)`) that hold `persisted`.
    fn spread(persisted: Self::Persisted, what: &str) -> Vec<(Vec<u8>, Vec<u8>)>;
}

/// A single cell per `(key, namespace)` (value, reducing and aggregating state).
pub(crate) struct CellLayout<C>(PhantomData<fn() -> C>);

impl<C: ValueCell> Layout for CellLayout<C> {
    type Persisted = C::Persisted;
    fn gather(entries: &[(&[u8], &[u8])], clock: &Clock, what: &str) -> Option<C::Persisted> {
        let (_, value) = entries.iter().find(|(suffix, _)| suffix.is_empty())?;
        let cell = C::restore(unarchive::<C::Persisted>(value, what));
        (!cell.is_expired(clock)).then(|| cell.persist())
    }
    fn spread(persisted: C::Persisted, what: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![(Vec::new(), archive(&persisted, what))]
    }
}

const LIST_MARKER: u8 = 0;
const LIST_ELEMENTS: u8 = 1;

/// List elements, framed: length (u32, little-endian) then the element cell's archive.
fn push_frame(out: &mut Vec<u8>, element: &[u8]) {
    out.extend_from_slice(&u32::try_from(element.len()).expect("an element below 4 GiB").to_le_bytes());
    out.extend_from_slice(element);
}

fn frames<'a>(mut bytes: &'a [u8], what: &str) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else { corrupt(what, "a list frame is cut short") };
        let len = u32::from_le_bytes(*len) as usize;
        let Some((element, rest)) = rest.split_at_checked(len) else { corrupt(what, "a list element is cut short") };
        out.push(element);
        bytes = rest;
    }
    out
}

/// A list per `(key, namespace)`: a marker and the framed elements.
pub(crate) struct ListLayout<C>(PhantomData<fn() -> C>);

impl<C: ValueCell> Layout for ListLayout<C> {
    type Persisted = Vec<C::Persisted>;
    fn gather(entries: &[(&[u8], &[u8])], clock: &Clock, what: &str) -> Option<Vec<C::Persisted>> {
        let (_, value) = entries.iter().find(|(suffix, _)| *suffix == [LIST_ELEMENTS])?;
        let live: Vec<_> = frames(value, what)
            .into_iter()
            .map(|f| C::restore(unarchive::<C::Persisted>(f, what)))
            .filter(|c| !c.is_expired(clock))
            .map(|c| c.persist())
            .collect();
        (!live.is_empty()).then_some(live)
    }
    fn spread(persisted: Vec<C::Persisted>, what: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut elements = Vec::new();
        for p in &persisted {
            push_frame(&mut elements, &archive(p, what));
        }
        vec![(vec![LIST_MARKER], Vec::new()), (vec![LIST_ELEMENTS], elements)]
    }
}

/// A map per `(key, namespace)`: one entry per user key.
pub(crate) struct MapLayout<UK, C>(PhantomData<fn() -> (UK, C)>);

impl<UK: StateKey, C: ValueCell> Layout for MapLayout<UK, C> {
    type Persisted = Vec<(UK, C::Persisted)>;
    fn gather(entries: &[(&[u8], &[u8])], clock: &Clock, what: &str) -> Option<Self::Persisted> {
        let live: Vec<_> = entries
            .iter()
            .filter_map(|(suffix, value)| {
                let cell = C::restore(unarchive::<C::Persisted>(value, what));
                (!cell.is_expired(clock)).then(|| (unarchive::<UK>(suffix, what), cell.persist()))
            })
            .collect();
        (!live.is_empty()).then_some(live)
    }
    fn spread(persisted: Self::Persisted, what: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        persisted.into_iter().map(|(uk, p)| (archive(&uk, what), archive(&p, what))).collect()
    }
}

/// Makes the LSM backend's tables: one column family per registered state, all in the
/// backend's store.
#[derive(Clone)]
pub(crate) struct LsmTables {
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
    pub shared: Rc<LsmShared>,
}

impl LsmTables {
    fn state<K: StateKey, N: Namespace, L, F>(
        &self,
        name: &str,
        kind: StateKind,
        ttl: Option<StateTtlConfig>,
        function: F,
    ) -> LsmState<K, N, L, F> {
        self.shared.ensure_column(name);
        LsmState {
            name: name.to_owned(),
            what: format!("{kind} state '{name}'"),
            kind,
            ttl,
            max_parallelism: self.max_parallelism,
            key_groups: self.key_groups,
            shared: self.shared.clone(),
            keys: KeyCoder::new(),
            function,
            layout: PhantomData,
        }
    }

    pub fn value<K: StateKey, N: Namespace, V: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn ValueTable<K, N, V>> {
        let kind = StateKind::Value;
        match ttl {
            None => new_table(self.state::<K, N, CellLayout<Plain<Option<V>>>, _>(name, kind, ttl, ()), |t| t as _),
            Some(_) => {
                new_table(self.state::<K, N, CellLayout<Expiring<Option<V>>>, _>(name, kind, ttl, ()), |t| t as _)
            }
        }
    }

    pub fn list<K: StateKey, N: Namespace, V: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn ListTable<K, N, V>> {
        let kind = StateKind::List;
        match ttl {
            None => new_table(self.state::<K, N, ListLayout<Plain<V>>, _>(name, kind, ttl, ()), |t| t as _),
            Some(_) => new_table(self.state::<K, N, ListLayout<Expiring<V>>, _>(name, kind, ttl, ()), |t| t as _),
        }
    }

    pub fn map<K: StateKey, N: Namespace, UK: StateKey, UV: StateValue>(
        &self,
        name: &str,
        ttl: Option<StateTtlConfig>,
    ) -> NewTable<dyn MapTable<K, N, UK, UV>> {
        let kind = StateKind::Map;
        match ttl {
            None => new_table(self.state::<K, N, MapLayout<UK, Plain<UV>>, _>(name, kind, ttl, ()), |t| t as _),
            Some(_) => new_table(self.state::<K, N, MapLayout<UK, Expiring<UV>>, _>(name, kind, ttl, ()), |t| t as _),
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
            None => new_table(self.state::<K, N, CellLayout<Plain<V>>, _>(name, kind, ttl, reduce), |t| t as _),
            Some(_) => new_table(self.state::<K, N, CellLayout<Expiring<V>>, _>(name, kind, ttl, reduce), |t| t as _),
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
            None => new_table(self.state::<K, N, CellLayout<Plain<ACC>>, _>(name, kind, ttl, aggregate), |t| t as _),
            Some(_) => {
                new_table(self.state::<K, N, CellLayout<Expiring<ACC>>, _>(name, kind, ttl, aggregate), |t| t as _)
            }
        }
    }
}

/// One registered state of the LSM backend: `L` its layout, `F` its function (reduce,
/// aggregate) or `()`.
pub(crate) struct LsmState<K, N, L, F> {
    name: String,
    what: String,
    kind: StateKind,
    ttl: Option<StateTtlConfig>,
    max_parallelism: u32,
    key_groups: KeyGroupRange,
    shared: Rc<LsmShared>,
    keys: KeyCoder<K, N>,
    function: F,
    layout: PhantomData<fn() -> L>,
}

impl<K: StateKey, N: Namespace, L, F> LsmState<K, N, L, F> {
    #[inline]
    fn clock(&self, now_ms: i64) -> Clock {
        Clock::new(self.ttl.as_ref(), now_ms)
    }

    /// The key of `at`'s entry with `suffix` appended.
    #[inline]
    fn key(&mut self, at: At<'_, K, N>, suffix: &[u8]) -> Vec<u8> {
        let key_group = self.key_groups.start + at.group_index as u32;
        let buf = self.keys.prefix(key_group, at.key, at.ns, &self.what);
        buf.extend_from_slice(suffix);
        buf.clone()
    }

    fn raw_get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.shared.store().get(&self.name, key, f).unwrap_or_else(|e| store_failed(&e))
    }

    fn raw_put(&self, key: &[u8], value: &[u8]) {
        self.shared.store().put(&self.name, key, value).unwrap_or_else(|e| store_failed(&e));
        self.shared.wrote();
    }

    fn raw_append(&self, key: &[u8], operand: &[u8]) {
        self.shared.store().append(&self.name, key, operand).unwrap_or_else(|e| store_failed(&e));
        self.shared.wrote();
    }

    fn raw_delete(&self, key: &[u8]) {
        self.shared.store().delete(&self.name, key).unwrap_or_else(|e| store_failed(&e));
        self.shared.wrote();
    }

    fn delete_prefix(&self, prefix: &[u8]) {
        self.shared
            .store()
            .delete_within_key(&self.name, prefix, &successor(prefix))
            .unwrap_or_else(|e| store_failed(&e));
        self.shared.wrote();
    }

    /// Calls `f` with `(user key suffix, value)` of every entry under `prefix`.
    fn scan_prefix(&self, prefix: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> bool) {
        let n = prefix.len();
        self.shared
            .store()
            .scan_key(&self.name, prefix, &successor(prefix), |k, v| f(&k[n..], v))
            .unwrap_or_else(|e| store_failed(&e));
    }
}

impl<K: StateKey, N: Namespace, L: Layout, F: 'static> StateTable for LsmState<K, N, L, F> {
    fn kind(&self) -> StateKind {
        self.kind
    }

    fn value_type(&self) -> &'static str {
        codec::value_type::<Vec<(K, N, L::Persisted)>>()
    }

    /// Counts by scanning the column (the store keeps no count): tests and diagnostics only.
    fn num_entries(&self) -> usize {
        let mut count = 0;
        let mut last: Vec<u8> = Vec::new();
        self.shared
            .store()
            .scan_all(&self.name, &[0], &[u8::MAX], |k, _| {
                if let Some(entry) = split_key(k) {
                    let prefix = &k[..entry.prefix_len];
                    if prefix != last.as_slice() {
                        count += 1;
                        last = prefix.to_vec();
                    }
                }
                true
            })
            .unwrap_or_else(|e| store_failed(&e));
        count
    }

    fn clear_all(&mut self) {
        self.shared.store.borrow_mut().clear_column(&self.name).unwrap_or_else(|e| store_failed(&e));
        self.shared.wrote();
    }

    fn freeze(&self, now_ms: i64) -> Box<dyn FrozenTable> {
        Box::new(FrozenLsm::<K, N, L> {
            store: self.shared.freeze(),
            column: self.name.clone(),
            what: self.what.clone(),
            clock: self.clock(now_ms),
            types: PhantomData,
        })
    }

    fn restore_group(&mut self, key_group: u32, state: &NamedStateBytes) -> Result<(), StateError> {
        let entries: Vec<(K, N, L::Persisted)> =
            codec::decode(&state.value_type, state.checksum, &state.bytes, || self.what.clone(), key_group)?;
        let store_error = |e: StoreError| StateError::Store { what: self.what.clone(), reason: e.to_string() };
        for (key, ns, persisted) in entries {
            let found = assign_key_group(&key, self.max_parallelism);
            if found != key_group {
                return Err(StateError::Corrupt {
                    what: self.what.clone(),
                    key_group,
                    reason: format!("it holds a key of key group {found}"),
                });
            }
            let prefix = self.keys.prefix(key_group, &key, &ns, &self.what).clone();
            let store = self.shared.store();
            store.delete_within_key(&self.name, &prefix, &successor(&prefix)).map_err(store_error)?;
            for (suffix, value) in L::spread(persisted, &self.what) {
                let mut entry = prefix.clone();
                entry.extend_from_slice(&suffix);
                store.put(&self.name, &entry, &value).map_err(store_error)?;
            }
        }
        self.shared.wrote();
        Ok(())
    }
}

/// One state's entries at a snapshot: a checkpoint of the store and the state's column in it.
struct FrozenLsm<K, N, L> {
    store: Result<Arc<FrozenStore>, StoreError>,
    column: String,
    what: String,
    clock: Clock,
    types: Types<K, N, L>,
}

type Types<K, N, L> = PhantomData<fn() -> (K, N, L)>;

impl<K: StateKey, N: Namespace, L: Layout> FrozenTable for FrozenLsm<K, N, L> {
    fn encode_group(&self, key_group: u32) -> Result<Option<Encoded>, StateError> {
        let store_error = |e: &StoreError| StateError::Store { what: self.what.clone(), reason: e.to_string() };
        let store = self.store.as_ref().map_err(store_error)?.read().map_err(|e| store_error(&e))?;
        if !store.has_column(&self.column) {
            return Ok(None);
        }
        let what = &self.what;
        let mut out: Vec<(K, N, L::Persisted)> = Vec::new();
        let mut group: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut prefix: Vec<u8> = Vec::new();
        let mut flush = |prefix: &[u8], group: &mut Vec<(Vec<u8>, Vec<u8>)>| {
            if group.is_empty() {
                return;
            }
            let entries: Vec<(&[u8], &[u8])> = group.iter().map(|(s, v)| (s.as_slice(), v.as_slice())).collect();
            if let Some(persisted) = L::gather(&entries, &self.clock, what) {
                let entry = split_key(prefix).unwrap_or_else(|| corrupt(what, "a key without its parts"));
                out.push((unarchive::<K>(entry.key, what), unarchive::<N>(entry.ns, what), persisted));
            }
            group.clear();
        };
        let mut bad_key = false;
        store
            .scan(&self.column, &group_start(key_group), &group_start(key_group + 1), |k, v| {
                let Some(entry) = split_key(k) else {
                    bad_key = true;
                    return false;
                };
                let this = &k[..entry.prefix_len];
                if this != prefix.as_slice() {
                    flush(&prefix, &mut group);
                    prefix = this.to_vec();
                }
                group.push((k[entry.prefix_len..].to_vec(), v.to_vec()));
                true
            })
            .map_err(|e| store_error(&e))?;
        if bad_key {
            let reason = "a key that does not split into key and namespace".to_owned();
            return Err(StateError::Corrupt { what: self.what.clone(), key_group, reason });
        }
        flush(&prefix, &mut group);
        if out.is_empty() {
            return Ok(None);
        }
        codec::encode(&out, || self.what.clone()).map(Some)
    }
}

/// Cell access shared by value, reducing and aggregating state.
impl<K: StateKey, N: Namespace, C: ValueCell, F> LsmState<K, N, CellLayout<C>, F> {
    fn load(&mut self, at: At<'_, K, N>) -> Option<(Vec<u8>, C)> {
        let key = self.key(at, &[]);
        let what = &self.what;
        let cell = self.raw_get(&key, |b| C::restore(unarchive::<C::Persisted>(b, what)))?;
        Some((key, cell))
    }

    fn save(&self, key: &[u8], cell: &C) {
        self.raw_put(key, &archive(&cell.persist(), &self.what));
    }

    /// As the heap's `read`: the live value through `f`; an expired one is removed and, if the
    /// visibility allows, read once.
    fn read<R>(&mut self, at: At<'_, K, N>, clock: &Clock, f: impl FnOnce(&C::Value) -> R) -> Option<R> {
        let (key, mut cell) = self.load(at)?;
        if C::EXPIRES {
            if cell.is_expired(clock) {
                self.raw_delete(&key);
                return clock.return_expired.then(|| f(cell.value()));
            }
            if clock.update_on_read {
                cell.touch(clock);
                self.save(&key, &cell);
            }
        }
        Some(f(cell.value()))
    }

    fn take<R>(&mut self, at: At<'_, K, N>, clock: &Clock, f: impl FnOnce(&C::Value) -> R) -> Option<R> {
        let (key, cell) = self.load(at)?;
        self.raw_delete(&key);
        (!cell.is_expired(clock) || clock.return_expired).then(|| f(cell.value()))
    }

    fn set(&mut self, at: At<'_, K, N>, cell: &C) {
        let key = self.key(at, &[]);
        self.save(&key, cell);
    }

    fn remove_cell(&mut self, at: At<'_, K, N>) {
        let key = self.key(at, &[]);
        self.raw_delete(&key);
    }

    fn upsert<T>(
        &mut self,
        at: At<'_, K, N>,
        clock: &Clock,
        input: T,
        init: impl FnOnce(T) -> C::Value,
        fold: impl FnOnce(&mut C::Value, T),
    ) -> bool {
        match self.load(at) {
            Some((key, mut cell)) if !cell.is_expired(clock) => {
                fold(cell.value_mut(), input);
                cell.touch(clock);
                self.save(&key, &cell);
                false
            }
            _ => {
                self.set(at, &C::new(init(input), clock));
                true
            }
        }
    }

    fn merge_cells(
        &mut self,
        target: At<'_, K, N>,
        sources: &[NsAt<'_, N>],
        clock: &Clock,
        mut combine: impl FnMut(&mut C::Value, C::Value),
    ) {
        let mut merged: Option<C::Value> = None;
        for source in sources.iter().filter(|s| s.ns != target.ns) {
            let Some((key, cell)) = self.load(At { ns: source.ns, ns_hash: source.hash, ..target }) else { continue };
            self.raw_delete(&key);
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

impl<K, N, V, C> ValueTable<K, N, V> for LsmState<K, N, CellLayout<C>, ()>
where
    K: StateKey,
    N: Namespace,
    V: StateValue,
    C: ValueCell<Value = Option<V>>,
{
    fn get(&mut self, at: At<'_, K, N>) -> Option<V> {
        let clock = self.clock(at.now_ms);
        self.read(at, &clock, Clone::clone).flatten()
    }

    fn put(&mut self, at: At<'_, K, N>, value: V) {
        let clock = self.clock(at.now_ms);
        self.set(at, &C::new(Some(value), &clock));
    }

    fn update_with(&mut self, at: At<'_, K, N>, f: &mut dyn FnMut(&mut Option<V>)) {
        let clock = self.clock(at.now_ms);
        match self.load(at) {
            Some((key, mut cell)) => {
                if cell.is_expired(&clock) {
                    *cell.value_mut() = None;
                }
                f(cell.value_mut());
                if cell.value().is_some() {
                    cell.touch(&clock);
                    self.save(&key, &cell);
                } else {
                    self.raw_delete(&key);
                }
            }
            None => {
                let mut value = None;
                f(&mut value);
                if value.is_some() {
                    self.set(at, &C::new(value, &clock));
                }
            }
        }
    }

    fn remove(&mut self, at: At<'_, K, N>) {
        self.remove_cell(at);
    }

    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]) {
        let clock = self.clock(target.now_ms);
        self.merge_cells(target, sources, &clock, |t, s| {
            if t.is_none() {
                *t = s;
            }
        });
    }
}

impl<K, N, V, C> ReducingTable<K, N, V> for LsmState<K, N, CellLayout<C>, ReduceFn<V>>
where
    K: StateKey,
    N: Namespace,
    V: StateValue,
    C: ValueCell<Value = V>,
{
    fn get(&mut self, at: At<'_, K, N>) -> Option<V> {
        let clock = self.clock(at.now_ms);
        self.read(at, &clock, Clone::clone)
    }

    fn add(&mut self, at: At<'_, K, N>, value: V) -> bool {
        let clock = self.clock(at.now_ms);
        let reduce = self.function.clone();
        self.upsert(at, &clock, value, |v| v, &*reduce)
    }

    fn remove(&mut self, at: At<'_, K, N>) {
        self.remove_cell(at);
    }

    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]) {
        let clock = self.clock(target.now_ms);
        let reduce = self.function.clone();
        self.merge_cells(target, sources, &clock, &*reduce);
    }
}

impl<K, N, IN, ACC, OUT, C> AggregatingTable<K, N, IN, ACC, OUT>
    for LsmState<K, N, CellLayout<C>, AggregateFn<IN, ACC, OUT>>
where
    K: StateKey,
    N: Namespace,
    IN: 'static,
    ACC: StateValue,
    OUT: 'static,
    C: ValueCell<Value = ACC>,
{
    fn get(&mut self, at: At<'_, K, N>) -> Option<OUT> {
        let clock = self.clock(at.now_ms);
        let agg = self.function.clone();
        self.read(at, &clock, |acc| agg.get_result(acc))
    }

    fn take(&mut self, at: At<'_, K, N>) -> Option<OUT> {
        let clock = self.clock(at.now_ms);
        let agg = self.function.clone();
        self.take(at, &clock, |acc| agg.get_result(acc))
    }

    fn add(&mut self, at: At<'_, K, N>, value: &IN) -> bool {
        let clock = self.clock(at.now_ms);
        let agg = self.function.clone();
        let init = |value: &IN| {
            let mut acc = agg.create_accumulator();
            agg.add(value, &mut acc);
            acc
        };
        self.upsert(at, &clock, value, init, |acc, value| agg.add(value, acc))
    }

    fn accumulator(&mut self, at: At<'_, K, N>) -> Option<ACC> {
        let clock = self.clock(at.now_ms);
        self.read(at, &clock, Clone::clone)
    }

    fn set_accumulator(&mut self, at: At<'_, K, N>, acc: ACC) {
        let clock = self.clock(at.now_ms);
        self.set(at, &C::new(acc, &clock));
    }

    fn remove(&mut self, at: At<'_, K, N>) {
        self.remove_cell(at);
    }

    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]) {
        let clock = self.clock(target.now_ms);
        let agg = self.function.clone();
        self.merge_cells(target, sources, &clock, |a, b| agg.merge(a, b));
    }
}

impl<K: StateKey, N: Namespace, C: ValueCell> LsmState<K, N, ListLayout<C>, ()> {
    /// The keys of the list's marker and elements.
    fn list_keys(&mut self, at: At<'_, K, N>) -> (Vec<u8>, Vec<u8>) {
        let marker = self.key(at, &[LIST_MARKER]);
        let mut elements = marker.clone();
        *elements.last_mut().expect("the marker's suffix") = LIST_ELEMENTS;
        (marker, elements)
    }

    fn load_list(&self, elements: &[u8]) -> Vec<C> {
        let what = &self.what;
        self.raw_get(elements, |b| frames(b, what).into_iter().map(|f| C::restore(unarchive(f, what))).collect())
            .unwrap_or_default()
    }

    fn encode_cells<'c>(&self, cells: impl IntoIterator<Item = &'c C>) -> Vec<u8> {
        let mut out = Vec::new();
        for cell in cells {
            push_frame(&mut out, &archive(&cell.persist(), &self.what));
        }
        out
    }

    /// Appends framed cells, creating the list's marker if it has none; true if it had none.
    fn append_cells(&mut self, at: At<'_, K, N>, framed: &[u8]) -> bool {
        let (marker, elements) = self.list_keys(at);
        let created = self.raw_get(&marker, |_| ()).is_none();
        if created {
            self.raw_put(&marker, &[]);
        }
        self.raw_append(&elements, framed);
        created
    }

    fn drop_list(&mut self, at: At<'_, K, N>) {
        let (marker, elements) = self.list_keys(at);
        self.raw_delete(&elements);
        self.raw_delete(&marker);
    }

    /// Reads the list under TTL as the heap's `read_list`, writing back what the read changed.
    fn read_list<R>(&mut self, at: At<'_, K, N>, mut f: impl FnMut(&C::Value) -> R) -> Vec<R> {
        let clock = self.clock(at.now_ms);
        let (_, elements) = self.list_keys(at);
        let mut cells = self.load_list(&elements);
        if !C::EXPIRES {
            return cells.iter().map(|c| f(c.value())).collect();
        }
        let before = cells.len();
        let mut out = Vec::with_capacity(cells.len());
        cells.retain_mut(|c| {
            let live = c.read(&clock);
            if live || clock.return_expired {
                out.push(f(c.value()));
            }
            live
        });
        if cells.is_empty() {
            if before > 0 {
                self.drop_list(at);
            }
        } else if cells.len() < before || clock.update_on_read {
            let framed = self.encode_cells(&cells);
            self.raw_put(&elements, &framed);
        }
        out
    }
}

impl<K, N, V, C> ListTable<K, N, V> for LsmState<K, N, ListLayout<C>, ()>
where
    K: StateKey,
    N: Namespace,
    V: StateValue,
    C: ValueCell<Value = V>,
{
    fn get(&mut self, at: At<'_, K, N>) -> Vec<V> {
        self.read_list(at, Clone::clone)
    }

    fn len(&mut self, at: At<'_, K, N>) -> usize {
        if !C::EXPIRES {
            let (_, elements) = self.list_keys(at);
            let what = &self.what;
            return self.raw_get(&elements, |b| frames(b, what).len()).unwrap_or(0);
        }
        self.read_list(at, |_| ()).len()
    }

    fn add(&mut self, at: At<'_, K, N>, value: V) -> bool {
        let clock = self.clock(at.now_ms);
        let framed = self.encode_cells([&C::new(value, &clock)]);
        self.append_cells(at, &framed)
    }

    fn add_all(&mut self, at: At<'_, K, N>, values: &mut dyn Iterator<Item = V>) {
        let clock = self.clock(at.now_ms);
        let cells: Vec<C> = values.map(|v| C::new(v, &clock)).collect();
        if cells.is_empty() {
            return;
        }
        let framed = self.encode_cells(&cells);
        self.append_cells(at, &framed);
    }

    fn replace(&mut self, at: At<'_, K, N>, values: Vec<V>) {
        if values.is_empty() {
            self.drop_list(at);
            return;
        }
        let clock = self.clock(at.now_ms);
        let cells: Vec<C> = values.into_iter().map(|v| C::new(v, &clock)).collect();
        let framed = self.encode_cells(&cells);
        let (marker, elements) = self.list_keys(at);
        self.raw_put(&marker, &[]);
        self.raw_put(&elements, &framed);
    }

    fn remove(&mut self, at: At<'_, K, N>) {
        self.drop_list(at);
    }

    fn merge(&mut self, target: At<'_, K, N>, sources: &[NsAt<'_, N>]) {
        let clock = self.clock(target.now_ms);
        let mut moved: Vec<C> = Vec::new();
        for source in sources.iter().filter(|s| s.ns != target.ns) {
            let at = At { ns: source.ns, ns_hash: source.hash, ..target };
            let (_, elements) = self.list_keys(at);
            let cells = self.load_list(&elements);
            if !cells.is_empty() {
                moved.extend(cells.into_iter().filter(|c| !c.is_expired(&clock)));
            }
            self.drop_list(at);
        }
        if !moved.is_empty() {
            let framed = self.encode_cells(&moved);
            self.append_cells(target, &framed);
        }
    }
}

impl<K: StateKey, N: Namespace, UK: StateKey, C: ValueCell> LsmState<K, N, MapLayout<UK, C>, ()> {
    /// Reads one entry through `f`, as the heap's `read_entry`.
    fn read_entry<R>(&mut self, at: At<'_, K, N>, user_key: &UK, f: impl FnOnce(&C::Value) -> R) -> Option<R> {
        let clock = self.clock(at.now_ms);
        let key = self.key(at, &archive(user_key, &self.what));
        let what = &self.what;
        let mut cell = self.raw_get(&key, |b| C::restore(unarchive::<C::Persisted>(b, what)))?;
        if C::EXPIRES {
            if cell.is_expired(&clock) {
                self.raw_delete(&key);
                return clock.return_expired.then(|| f(cell.value()));
            }
            if clock.update_on_read {
                cell.touch(&clock);
                self.raw_put(&key, &archive(&cell.persist(), &self.what));
            }
        }
        Some(f(cell.value()))
    }

    /// Reads every entry through `f` (as the heap's `read_all`), removing expired ones; `first`
    /// stops after the first live one.
    fn read_all<R>(&mut self, at: At<'_, K, N>, first: bool, mut f: impl FnMut(&UK, &C::Value) -> R) -> Vec<R> {
        let clock = self.clock(at.now_ms);
        let prefix = self.key(at, &[]);
        let what = self.what.clone();
        let mut out = Vec::new();
        let mut expired: Vec<Vec<u8>> = Vec::new();
        let mut touched: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.scan_prefix(&prefix, |suffix, value| {
            let mut cell = C::restore(unarchive::<C::Persisted>(value, &what));
            let live = cell.read(&clock);
            if live || clock.return_expired {
                out.push(f(&unarchive::<UK>(suffix, &what), cell.value()));
            }
            if !live {
                expired.push(suffix.to_vec());
            } else if C::EXPIRES && clock.update_on_read {
                touched.push((suffix.to_vec(), archive(&cell.persist(), &what)));
            }
            !(first && live)
        });
        for suffix in expired {
            self.raw_delete(&[prefix.as_slice(), &suffix].concat());
        }
        for (suffix, value) in touched {
            self.raw_put(&[prefix.as_slice(), &suffix].concat(), &value);
        }
        out
    }
}

impl<K, N, UK, UV, C> MapTable<K, N, UK, UV> for LsmState<K, N, MapLayout<UK, C>, ()>
where
    K: StateKey,
    N: Namespace,
    UK: StateKey,
    UV: StateValue,
    C: ValueCell<Value = UV>,
{
    fn get(&mut self, at: At<'_, K, N>, user_key: &UK) -> Option<UV> {
        self.read_entry(at, user_key, Clone::clone)
    }

    fn contains(&mut self, at: At<'_, K, N>, user_key: &UK) -> bool {
        self.read_entry(at, user_key, |_| ()).is_some()
    }

    fn put(&mut self, at: At<'_, K, N>, user_key: UK, value: UV) {
        let clock = self.clock(at.now_ms);
        let key = self.key(at, &archive(&user_key, &self.what));
        let value = archive(&C::new(value, &clock).persist(), &self.what);
        self.raw_put(&key, &value);
    }

    fn remove_key(&mut self, at: At<'_, K, N>, user_key: &UK) -> Option<UV> {
        let clock = self.clock(at.now_ms);
        let key = self.key(at, &archive(user_key, &self.what));
        let what = &self.what;
        let cell = self.raw_get(&key, |b| C::restore(unarchive::<C::Persisted>(b, what)))?;
        self.raw_delete(&key);
        (!cell.is_expired(&clock)).then(|| cell.into_value())
    }

    fn entries(&mut self, at: At<'_, K, N>) -> Vec<(UK, UV)> {
        self.read_all(at, false, |k, v| (k.clone(), v.clone()))
    }

    fn keys(&mut self, at: At<'_, K, N>) -> Vec<UK> {
        self.read_all(at, false, |k, _| k.clone())
    }

    fn is_empty(&mut self, at: At<'_, K, N>) -> bool {
        self.read_all(at, true, |_, _| ()).is_empty()
    }

    fn remove(&mut self, at: At<'_, K, N>) {
        let prefix = self.key(at, &[]);
        self.delete_prefix(&prefix);
    }
}
