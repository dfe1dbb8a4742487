//! The one module that names the LSM engine: Speedb (the `speedb` crate, the default) or the
//! maintained `rocksdb` crate (`--no-default-features --features rocksdb`). Only the RocksDB API
//! the two crates share is used, so switching is a feature flag; the two cannot be linked into
//! one binary (their C++ symbols clash), hence the `compile_error!` when both are enabled.
//!
//! A [`Store`] is one database on local disk: a column family per state, writes without a
//! write-ahead log (a checkpoint is the durability; a crash loses the local directory, which a
//! restore rebuilds), an associative merge operator that appends list elements, and a block
//! cache shared by every store on the same slot thread ([`LsmConfig::memory_per_slot`]).
//! [`Store::checkpoint`] flushes the memtables and hard-links the live files into a new
//! directory, which [`ReadOnlyStore`] opens on another thread to read a snapshot.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

#[cfg(all(feature = "speedb", feature = "rocksdb"))]
compile_error!("the `speedb` and `rocksdb` features of corestream-state exclude each other: enable one");
#[cfg(not(any(feature = "speedb", feature = "rocksdb")))]
compile_error!("corestream-state needs an LSM engine: enable the `speedb` (default) or the `rocksdb` feature");

#[cfg(all(feature = "rocksdb", not(feature = "speedb")))]
use rocksdb as engine;
#[cfg(feature = "speedb")]
use speedb as engine;

use engine::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, MemtableFactory,
    MergeOperands, Options, ReadOptions, SliceTransform, WriteOptions, DB,
};

use super::LsmConfig;

/// The engine compiled in, for logs and benchmark reports.
#[cfg(feature = "speedb")]
pub const ENGINE: &str = "speedb";
#[cfg(all(feature = "rocksdb", not(feature = "speedb")))]
pub const ENGINE: &str = "rocksdb";

/// The name the list merge operator is registered under (stored in the database's options file;
/// a database written with one operator must be opened with the same).
const APPEND_OPERATOR: &str = "corestream.append";

/// A failed store operation, with the directory it concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} on the LSM state store at {path}: {reason}")]
pub struct StoreError {
    pub op: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Merge operator of list state: a list's value is its elements' frames one after the other, so
/// appending is concatenating (associative, hence also a valid partial merge).
fn append(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(existing.unwrap_or_default());
    for operand in operands {
        out.extend_from_slice(operand);
    }
    Some(out)
}

/// Length of a key's hashed prefix: key group (2 bytes) ‖ key length (u32, big-endian) ‖ key,
/// the start of every entry key (see the layout in `lsm/mod.rs`). The memtable hashes it, so
/// one key's entries (its namespaces, list and map entries) sit in one small sorted bucket
/// instead of one skip list over everything, and the table files' filters cover it.
fn key_prefix_len(key: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(key.get(2..6)?.try_into().ok()?) as usize;
    let end = 6usize.checked_add(len)?;
    (end <= key.len()).then_some(end)
}

fn key_prefix(key: &[u8]) -> &[u8] {
    &key[..key_prefix_len(key).unwrap_or(key.len())]
}

fn has_key_prefix(key: &[u8]) -> bool {
    key_prefix_len(key).is_some()
}

/// Buckets of a memtable's hash table (8 bytes each).
const MEMTABLE_BUCKETS: usize = 1 << 14;

thread_local! {
    /// The block cache of the stores on this thread (a slot's thread): capacity and cache.
    static SLOT_CACHE: RefCell<Option<(usize, Cache)>> = const { RefCell::new(None) };
}

/// The block cache of the calling thread's slot, created at the first store with `capacity`
/// bytes; later stores on the thread share it (its capacity stays the first one's).
fn slot_cache(capacity: usize) -> Cache {
    SLOT_CACHE
        .with(|cell| cell.borrow_mut().get_or_insert_with(|| (capacity, Cache::new_lru_cache(capacity))).1.clone())
}

/// Block cache usage (bytes) of the calling thread's slot, if it has opened a store.
pub fn slot_cache_usage() -> Option<usize> {
    SLOT_CACHE.with(|cell| cell.borrow().as_ref().map(|(_, cache)| cache.get_usage()))
}

/// Block cache of a checkpoint opened to be read once (its blocks are not kept).
const CHECKPOINT_CACHE_BYTES: usize = 8 << 20;

/// The database options of a store (`cache`: its slot's block cache) and of a checkpoint read.
fn options(config: &LsmConfig, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    // Index and filter blocks live in the block cache (so the slot's memory budget holds them),
    // partitioned into blocks of data-block size under a small top level that stays pinned: a
    // whole filter of a large SST (1–2 MB at a million keys) is bigger than a cache shard holds,
    // so unpartitioned it was read from the file and checksummed again for every `get`.
    table.set_cache_index_and_filter_blocks(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_block_based_table_factory(&table);
    opts.set_merge_operator_associative(APPEND_OPERATOR, append);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_write_buffer_size(config.state_memtable_bytes());
    opts.set_db_write_buffer_size(config.store_memtable_bytes());
    opts.set_max_write_buffer_number(2);
    opts.set_atomic_flush(true);
    opts.set_allow_concurrent_memtable_write(false);
    opts.set_inplace_update_support(true);
    opts.set_prefix_extractor(SliceTransform::create("corestream.key", key_prefix, Some(has_key_prefix)));
    opts.set_memtable_factory(MemtableFactory::HashSkipList {
        bucket_count: MEMTABLE_BUCKETS,
        height: 4,
        branching_factor: 4,
    });
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(2);
    opts
}

fn fail(op: &'static str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError { op, path: path.to_owned(), reason: e.to_string() }
}

/// One database of an LSM keyed state backend, used from one thread.
pub struct Store {
    db: DB,
    path: PathBuf,
    opts: Options,
    write: WriteOptions,
    read: ReadOptions,
}

impl Store {
    /// Opens (creating it if needed) the database in `path`, with every column family it has
    /// (a restored database has one per state).
    pub fn open(path: &Path, config: &LsmConfig) -> Result<Self, StoreError> {
        let cache = slot_cache(config.block_cache_bytes());
        let opts = options(config, &cache);
        let db = if path.join("CURRENT").exists() {
            let columns = DB::list_cf(&opts, path).map_err(|e| fail("listing column families", path, e))?;
            let descriptors: Vec<_> = columns
                .iter()
                .map(|name| ColumnFamilyDescriptor::new(name.as_str(), options(config, &cache)))
                .collect();
            DB::open_cf_descriptors(&opts, path, descriptors).map_err(|e| fail("opening", path, e))?
        } else {
            DB::open(&opts, path).map_err(|e| fail("opening", path, e))?
        };
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        let mut read = ReadOptions::default();
        read.set_verify_checksums(true);
        Ok(Self { db, path: path.to_owned(), opts, write, read })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates column family `name` unless it exists.
    pub fn ensure_column(&mut self, name: &str) -> Result<(), StoreError> {
        if self.db.cf_handle(name).is_none() {
            self.db.create_cf(name, &self.opts).map_err(|e| fail("creating a column family", &self.path, e))?;
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&engine::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| fail("finding a column family", &self.path, format!("no column '{name}'")))
    }

    /// Calls `f` with the value of `key` in `column`, if any.
    pub fn get<R>(&self, column: &str, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, StoreError> {
        let cf = self.cf(column)?;
        let value = self.db.get_pinned_cf_opt(cf, key, &self.read).map_err(|e| fail("reading", &self.path, e))?;
        Ok(value.map(|v| f(&v)))
    }

    pub fn put(&self, column: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let cf = self.cf(column)?;
        self.db.put_cf_opt(cf, key, value, &self.write).map_err(|e| fail("writing", &self.path, e))
    }

    /// Appends `operand` to the list value of `key` (the merge operator concatenates).
    pub fn append(&self, column: &str, key: &[u8], operand: &[u8]) -> Result<(), StoreError> {
        let cf = self.cf(column)?;
        self.db.merge_cf_opt(cf, key, operand, &self.write).map_err(|e| fail("appending", &self.path, e))
    }

    pub fn delete(&self, column: &str, key: &[u8]) -> Result<(), StoreError> {
        let cf = self.cf(column)?;
        self.db.delete_cf_opt(cf, key, &self.write).map_err(|e| fail("deleting", &self.path, e))
    }

    /// Deletes every key of `from..to`, a range inside one key's entries (as
    /// [`scan_key`](Self::scan_key)). Point deletes, not a range tombstone: a range tombstone
    /// would hide later writes that the memtable applies in place (in-place updates keep the
    /// sequence number of the entry they overwrite).
    pub fn delete_within_key(&self, column: &str, from: &[u8], to: &[u8]) -> Result<(), StoreError> {
        let mut keys = Vec::new();
        self.scan_key(column, from, to, |k, _| {
            keys.push(k.to_vec());
            true
        })?;
        let cf = self.cf(column)?;
        let mut batch = engine::WriteBatch::default();
        for key in &keys {
            batch.delete_cf(cf, key);
        }
        self.db.write_opt(batch, &self.write).map_err(|e| fail("deleting", &self.path, e))
    }

    /// Writes every `(key, value)` of `entries` into `column` at once.
    pub fn put_all(&self, column: &str, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let cf = self.cf(column)?;
        let mut batch = engine::WriteBatch::default();
        for (key, value) in entries {
            batch.put_cf(cf, key, value);
        }
        self.db.write_opt(batch, &self.write).map_err(|e| fail("writing", &self.path, e))
    }

    /// Removes column family `name` if it exists.
    pub fn drop_column(&mut self, name: &str) -> Result<(), StoreError> {
        if self.db.cf_handle(name).is_some() {
            self.db.drop_cf(name).map_err(|e| fail("dropping a column family", &self.path, e))?;
        }
        Ok(())
    }

    /// Empties column family `name` (drops and creates it again).
    pub fn clear_column(&mut self, name: &str) -> Result<(), StoreError> {
        self.db.drop_cf(name).map_err(|e| fail("dropping a column family", &self.path, e))?;
        self.db.create_cf(name, &self.opts).map_err(|e| fail("creating a column family", &self.path, e))
    }

    /// Calls `f` with every entry of `from..to` in key order while it returns true. The range
    /// lies inside one key's entries (`from` starts with its whole hashed prefix), which the
    /// memtable finds in one bucket.
    pub fn scan_key(
        &self,
        column: &str,
        from: &[u8],
        to: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        debug_assert!(has_key_prefix(from), "a scan inside one key starts with its prefix");
        scan(&self.db, &self.path, column, from, to, Scan::WithinKey, f)
    }

    /// As [`scan_key`](Self::scan_key) over any range, in total order: the memtable sorts
    /// every bucket for it, so this is for tests and diagnostics, not the data path.
    pub fn scan_all(
        &self,
        column: &str,
        from: &[u8],
        to: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        scan(&self.db, &self.path, column, from, to, Scan::TotalOrder, f)
    }

    /// Flushes the memtables and hard-links the database's live files into `dir` (which must not
    /// exist): a consistent copy that [`ReadOnlyStore::open`] reads while this store goes on.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        let checkpoint = engine::checkpoint::Checkpoint::new(&self.db).map_err(|e| fail("checkpointing", dir, e))?;
        checkpoint.create_checkpoint(dir).map_err(|e| fail("checkpointing", dir, e))
    }

    /// Bytes held by the memtables of every column family.
    pub fn memtable_bytes(&self) -> Result<u64, StoreError> {
        const PROPERTY: &str = "rocksdb.cur-size-all-mem-tables";
        let read = |v: Result<Option<u64>, engine::Error>| v.map_err(|e| fail("reading a property", &self.path, e));
        let mut total = read(self.db.property_int_value(PROPERTY))?.unwrap_or(0);
        for name in DB::list_cf(&self.opts, &self.path).map_err(|e| fail("listing column families", &self.path, e))? {
            if let Some(cf) = self.db.cf_handle(&name) {
                total += read(self.db.property_int_value_cf(cf, PROPERTY))?.unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// How a scan crosses keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Inside one key's prefix; read blocks stay in the cache.
    WithinKey,
    /// Across keys, in total order; read blocks stay in the cache.
    TotalOrder,
    /// Across keys, in total order, each block read once (a checkpoint read for a snapshot).
    Once,
}

fn scan(
    db: &DB,
    path: &Path,
    column: &str,
    from: &[u8],
    to: &[u8],
    how: Scan,
    mut f: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StoreError> {
    let cf = db.cf_handle(column).ok_or_else(|| fail("scanning", path, format!("no column '{column}'")))?;
    let mut read = ReadOptions::default();
    read.set_verify_checksums(true);
    read.fill_cache(how != Scan::Once);
    if how == Scan::WithinKey {
        read.set_prefix_same_as_start(true);
    } else {
        read.set_total_order_seek(true);
    }
    read.set_iterate_upper_bound(to.to_vec());
    let mut it = db.raw_iterator_cf_opt(cf, read);
    it.seek(from);
    while it.valid() {
        let (Some(key), Some(value)) = (it.key(), it.value()) else { break };
        if !f(key, value) {
            return Ok(());
        }
        it.next();
    }
    it.status().map_err(|e| fail("scanning", path, e))
}

/// A checkpoint of a [`Store`], opened read-only (on any thread).
pub struct ReadOnlyStore {
    db: DB,
    path: PathBuf,
}

impl ReadOnlyStore {
    pub fn open(path: &Path, config: &LsmConfig) -> Result<Self, StoreError> {
        let cache = Cache::new_lru_cache(CHECKPOINT_CACHE_BYTES);
        let opts = options(config, &cache);
        let columns = DB::list_cf(&opts, path).map_err(|e| fail("listing column families", path, e))?;
        let descriptors: Vec<_> =
            columns.iter().map(|name| ColumnFamilyDescriptor::new(name.as_str(), options(config, &cache))).collect();
        let db = DB::open_cf_descriptors_read_only(&opts, path, descriptors, false)
            .map_err(|e| fail("opening a checkpoint", path, e))?;
        Ok(Self { db, path: path.to_owned() })
    }

    /// Whether the checkpoint has column family `name`.
    pub fn has_column(&self, name: &str) -> bool {
        self.db.cf_handle(name).is_some()
    }

    /// As [`Store::scan_all`], reading each block once (not kept in the cache).
    pub fn scan(
        &self,
        column: &str,
        from: &[u8],
        to: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        scan(&self.db, &self.path, column, from, to, Scan::Once, f)
    }
}
