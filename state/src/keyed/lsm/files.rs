//! Incremental snapshots of the LSM backend, as Flink's incremental RocksDB snapshots: the
//! synchronous part is the store checkpoint every snapshot takes (flush and hard links); the
//! asynchronous part uploads to the checkpoint storage's shared area only the SST files that
//! the last checkpoint confirmed complete did not already hold, and describes the snapshot as
//! those files (each by its local name, shared name, size and checksum), the store's small
//! private files (manifest, `CURRENT`, options) inline, and each state's kind and types.
//!
//! SST files never change and their local names are never reused by a store, so a local name
//! and size identify a file. The backend keeps an [`UploadLedger`]: the files uploaded for each
//! checkpoint still pending, and those of the newest confirmed one, which the next snapshot
//! reuses instead of uploading again. Only confirmed files are reused (a file of an aborted
//! checkpoint may already be deleted); the checkpoint coordinator keeps a shared file while a
//! retained checkpoint uses it.
//!
//! A restore downloads every file first, checking sizes and checksums, into a staging
//! directory; nothing changes until all are there. At the same key groups the downloaded store
//! becomes the backend's store as it is; at other key groups (a rescale) the entries of this
//! backend's key groups are copied from each downloaded store into a new one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rkyv::{Archive, Deserialize, Serialize};

use super::store::{ReadOnlyStore, Store, StoreError};
use super::{group_start, FrozenStore, LsmConfig};
use crate::error::StateError;
use crate::keyed::snapshot::{KeyGroupSnapshot, StateKind};
use crate::keygroup::KeyGroupRange;

/// A file in a checkpoint storage's shared area.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct SharedFile {
    /// Relative to the checkpoint storage: `shared/<unique name>`.
    pub name: String,
    pub size: u64,
    /// xxh3-64 of the file's bytes.
    pub checksum: u64,
}

/// A shared file as one task's part of a checkpoint uses it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SharedFileRef {
    pub file: SharedFile,
    /// Uploaded for an earlier checkpoint (the coordinator must still have it), not for this one.
    #[serde(default)]
    pub reused: bool,
}

/// Where incremental snapshots put their files and restores get them: the checkpoint
/// storage's shared area (the engine's checkpoint storage implements it).
pub trait SharedFileStore: Send + Sync {
    /// Which shared area this is (equal for two handles on the same area): a snapshot reuses
    /// only files of the area it writes to.
    fn location(&self) -> String;
    /// Copies `local` durably into the shared area under a new, unique name.
    fn upload(&self, local: &Path) -> Result<SharedFile, String>;
    /// Copies `file` to `dest` (which must not exist), checking its size and checksum; the
    /// error names the file.
    fn download(&self, file: &SharedFile, dest: &Path) -> Result<(), String>;
}

/// A shared area in a local directory, for embedding and tests (a job's checkpoints use the
/// engine's checkpoint storage): files are copied in under numbered names and checked by size
/// and xxh3 when copied out.
#[derive(Debug)]
pub struct DirSharedFiles {
    dir: std::path::PathBuf,
    next: std::sync::atomic::AtomicU64,
}

impl DirSharedFiles {
    /// The shared area in `dir` (created if missing).
    pub fn new(dir: impl Into<std::path::PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("shared"))?;
        Ok(Self { dir, next: std::sync::atomic::AtomicU64::new(0) })
    }

    /// Where shared file `file` is.
    pub fn path(&self, file: &SharedFile) -> std::path::PathBuf {
        self.dir.join(&file.name)
    }
}

impl SharedFileStore for DirSharedFiles {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn upload(&self, local: &Path) -> Result<SharedFile, String> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("shared/{n:08}.sst");
        let dest = self.dir.join(&name);
        let bytes = std::fs::read(local).map_err(|e| format!("{}: {e}", local.display()))?;
        std::fs::write(&dest, &bytes).map_err(|e| format!("{}: {e}", dest.display()))?;
        Ok(SharedFile { name, size: bytes.len() as u64, checksum: xxhash_rust::xxh3::xxh3_64(&bytes) })
    }

    fn download(&self, file: &SharedFile, dest: &Path) -> Result<(), String> {
        let path = self.path(file);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.len() as u64 != file.size {
            return Err(format!("{}: {} bytes, {} expected", path.display(), bytes.len(), file.size));
        }
        if xxhash_rust::xxh3::xxh3_64(&bytes) != file.checksum {
            return Err(format!("{}: checksum mismatch", path.display()));
        }
        std::fs::write(dest, bytes).map_err(|e| format!("{}: {e}", dest.display()))
    }
}

/// One SST file of an incremental snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Its name in the store's directory.
    pub local: String,
    pub file: SharedFile,
    pub reused: bool,
}

/// A small file of the store (manifest, `CURRENT`, options), kept in the snapshot itself.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PrivateFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A state (column family) of an incremental snapshot, checked against its registration.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct StateInfo {
    pub name: String,
    pub kind: StateKind,
    pub value_type: String,
}

/// An incremental snapshot of an LSM backend (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LsmFilesSnapshot {
    pub max_parallelism: u32,
    /// The backend's key groups, `start..end`.
    pub key_group_start: u32,
    pub key_group_end: u32,
    /// The engine that wrote the files (`speedb` or `rocksdb`), for messages.
    pub engine: String,
    pub states: Vec<StateInfo>,
    pub files: Vec<SnapshotFile>,
    pub private: Vec<PrivateFile>,
    /// Restored states in key-group form that were not registered yet, carried over.
    pub pending: Vec<KeyGroupSnapshot>,
}

impl crate::codec::part::SizeHint for LsmFilesSnapshot {
    fn archive_size_hint(&self) -> usize {
        let private: usize = self.private.iter().map(|p| p.bytes.len() + p.name.len() + 16).sum();
        let pending: usize = self.pending.iter().flat_map(|g| &g.states).map(|s| s.bytes.len() + 128).sum();
        private + pending + 128 * (self.files.len() + self.states.len()) + 1024
    }
}

impl LsmFilesSnapshot {
    pub fn key_groups(&self) -> KeyGroupRange {
        KeyGroupRange { start: self.key_group_start, end: self.key_group_end }
    }

    /// Every shared file it uses, each with whether it was uploaded for an earlier checkpoint.
    pub fn shared_files(&self) -> impl Iterator<Item = SharedFileRef> + '_ {
        self.files.iter().map(|f| SharedFileRef { file: f.file.clone(), reused: f.reused })
    }

    /// Bytes uploaded for this snapshot (files not reused).
    pub fn uploaded_bytes(&self) -> u64 {
        self.files.iter().filter(|f| !f.reused).map(|f| f.file.size).sum()
    }
}

/// The most checkpoints whose uploads wait for their confirmation at once; older ones are
/// forgotten (their files are uploaded again if needed).
const PENDING_CHECKPOINTS_MAX: usize = 64;

/// Private files larger than this in total fail the snapshot (a manifest is kilobytes).
const PRIVATE_BYTES_MAX: u64 = 64 << 20;

/// Which shared files a backend's next snapshot may reuse: those of the newest checkpoint
/// confirmed complete (or restored from), by local name. Pure bookkeeping.
#[derive(Debug, Default)]
pub struct UploadLedger {
    /// The shared area the confirmed files are in.
    location: String,
    confirmed: HashMap<String, SharedFile>,
    /// Checkpoint → the files its snapshot used, by local name.
    pending: BTreeMap<u64, HashMap<String, SharedFile>>,
}

impl UploadLedger {
    /// The shared copy in shared area `location` of local file `local` of `size` bytes, if a
    /// confirmed checkpoint has it.
    pub fn reusable(&self, location: &str, local: &str, size: u64) -> Option<&SharedFile> {
        self.confirmed.get(local).filter(|f| f.size == size && self.location == location)
    }

    /// The snapshot for `checkpoint` used `files` (reused and uploaded) in shared area
    /// `location`.
    pub fn used(&mut self, checkpoint: u64, location: &str, files: HashMap<String, SharedFile>) {
        if self.location != location {
            self.location = location.to_owned();
            self.confirmed.clear();
            self.pending.clear();
        }
        self.pending.insert(checkpoint, files);
        while self.pending.len() > PENDING_CHECKPOINTS_MAX {
            self.pending.pop_first();
        }
    }

    /// `checkpoint` is complete: its files become the reusable ones; older pending ones will
    /// never be confirmed.
    pub fn confirm(&mut self, checkpoint: u64) {
        // A checkpoint this backend took no incremental snapshot for (a savepoint) changes
        // nothing: the files of older pending checkpoints may still be confirmed.
        if let Some(files) = self.pending.remove(&checkpoint) {
            self.confirmed = files;
            self.pending.retain(|&id, _| id > checkpoint);
        }
    }

    /// `checkpoint` will never complete.
    pub fn abort(&mut self, checkpoint: u64) {
        self.pending.remove(&checkpoint);
    }

    /// The store was restored from shared area `location`: `files` are the reusable ones (those
    /// of the restored checkpoint, or none after a rescale, whose store has new files). A job
    /// that checkpoints into another area uploads its first snapshot whole.
    pub fn restored(&mut self, location: &str, files: HashMap<String, SharedFile>) {
        self.location = location.to_owned();
        self.confirmed = files;
        self.pending.clear();
    }
}

/// The synchronous part of an incremental snapshot: a store checkpoint, the states it holds and
/// the ledger its uploads go to. [`upload`](Self::upload) is the asynchronous part.
pub struct FrozenFiles {
    pub(super) checkpoint: u64,
    pub(super) store: Arc<FrozenStore>,
    pub(super) ledger: Arc<Mutex<UploadLedger>>,
    pub(super) max_parallelism: u32,
    pub(super) key_groups: KeyGroupRange,
    pub(super) states: Vec<StateInfo>,
    pub(super) pending: Vec<KeyGroupSnapshot>,
}

impl std::fmt::Debug for FrozenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenFiles")
            .field("checkpoint", &self.checkpoint)
            .field("key_groups", &self.key_groups)
            .field("states", &self.states)
            .finish_non_exhaustive()
    }
}

fn io_error(what: String, path: &Path, e: impl std::fmt::Display) -> StateError {
    StateError::Store { what, reason: format!("{}: {e}", path.display()) }
}

impl FrozenFiles {
    /// Uploads the SST files no confirmed checkpoint holds and describes the snapshot.
    pub fn upload(self, to: &dyn SharedFileStore) -> Result<LsmFilesSnapshot, StateError> {
        let dir = self.store.dir.path().join("db");
        let what = || format!("the incremental snapshot of checkpoint {}", self.checkpoint);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| io_error(what(), &dir, e))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| io_error(what(), &dir, e))?;
        names.sort();
        let (mut files, mut private, mut private_bytes) = (Vec::new(), Vec::new(), 0u64);
        let mut used = HashMap::new();
        let location = to.location();
        for name in names {
            let path = dir.join(&name);
            let size = std::fs::metadata(&path).map_err(|e| io_error(what(), &path, e))?.len();
            if !name.ends_with(".sst") {
                private_bytes += size;
                if private_bytes > PRIVATE_BYTES_MAX {
                    let reason = format!("its store's files other than SST files pass {PRIVATE_BYTES_MAX} bytes");
                    return Err(StateError::Store { what: what(), reason });
                }
                let bytes = std::fs::read(&path).map_err(|e| io_error(what(), &path, e))?;
                private.push(PrivateFile { name, bytes });
                continue;
            }
            let ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
            let reused = ledger.reusable(&location, &name, size).cloned();
            drop(ledger);
            let (file, reused) = match reused {
                Some(file) => (file, true),
                None => {
                    let file = to.upload(&path).map_err(|reason| StateError::Store {
                        what: format!("uploading {} for {}", path.display(), what()),
                        reason,
                    })?;
                    (file, false)
                }
            };
            used.insert(name.clone(), file.clone());
            files.push(SnapshotFile { local: name, file, reused });
        }
        self.ledger.lock().unwrap_or_else(|e| e.into_inner()).used(self.checkpoint, &location, used);
        Ok(LsmFilesSnapshot {
            max_parallelism: self.max_parallelism,
            key_group_start: self.key_groups.start,
            key_group_end: self.key_groups.end,
            engine: super::ENGINE.to_owned(),
            states: self.states,
            files,
            private,
            pending: self.pending,
        })
    }
}

/// Downloads the files of `snapshot` into `dir` (created), checking each; the error names the
/// file that is missing or damaged.
fn download(snapshot: &LsmFilesSnapshot, dir: &Path, from: &dyn SharedFileStore) -> Result<(), StateError> {
    let what = || "restoring an incremental LSM snapshot".to_owned();
    std::fs::create_dir_all(dir).map_err(|e| io_error(what(), dir, e))?;
    for p in &snapshot.private {
        check_local_name(&p.name)?;
        let path = dir.join(&p.name);
        std::fs::write(&path, &p.bytes).map_err(|e| io_error(what(), &path, e))?;
    }
    for f in &snapshot.files {
        check_local_name(&f.local)?;
        from.download(&f.file, &dir.join(&f.local))
            .map_err(|reason| StateError::Store { what: format!("restoring shared file {}", f.file.name), reason })?;
    }
    Ok(())
}

/// A local file name from a snapshot must be a plain name (no directory, no `..`).
fn check_local_name(name: &str) -> Result<(), StateError> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if plain {
        return Ok(());
    }
    Err(StateError::Store {
        what: "restoring an incremental LSM snapshot".to_owned(),
        reason: format!("it names the file '{}', which is not a plain file name", name.escape_default()),
    })
}

/// Bytes of entries copied per write batch during a rescale.
const COPY_BATCH_BYTES: usize = 4 << 20;

/// A store with the contents of `snapshots` in `key_groups`, in `staging` (a directory that
/// exists and is empty), and the files it shares with a checkpoint (reusable by the next
/// snapshot): every file of the snapshot when one snapshot of exactly these key groups is given,
/// none when entries were copied.
pub(super) fn restore_store(
    snapshots: &[&LsmFilesSnapshot],
    key_groups: KeyGroupRange,
    columns: &[String],
    staging: &Path,
    config: &LsmConfig,
    from: &dyn SharedFileStore,
) -> Result<(Store, HashMap<String, SharedFile>), StateError> {
    let store_error =
        |e: StoreError| StateError::Store { what: "restoring the LSM store".to_owned(), reason: e.to_string() };
    for (i, snapshot) in snapshots.iter().enumerate() {
        download(snapshot, &staging.join(format!("in-{i}")), from)?;
    }
    if let [only] = snapshots {
        if only.key_groups() == key_groups {
            let mut store = Store::open(&staging.join("in-0"), config).map_err(store_error)?;
            for column in columns {
                store.ensure_column(column).map_err(store_error)?;
            }
            let files = only.files.iter().map(|f| (f.local.clone(), f.file.clone())).collect();
            return Ok((store, files));
        }
    }
    let mut store = Store::open(&staging.join("merged"), config).map_err(store_error)?;
    for column in columns {
        store.ensure_column(column).map_err(store_error)?;
    }
    let (from_key, to_key) = (group_start(key_groups.start), group_start(key_groups.end));
    for (i, snapshot) in snapshots.iter().enumerate() {
        let source = ReadOnlyStore::open(&staging.join(format!("in-{i}")), config).map_err(store_error)?;
        for state in &snapshot.states {
            if !source.has_column(&state.name) {
                continue;
            }
            store.ensure_column(&state.name).map_err(store_error)?;
            let (mut batch, mut bytes) = (Vec::new(), 0usize);
            let mut failed = None;
            source
                .scan(&state.name, &from_key, &to_key, |k, v| {
                    bytes += k.len() + v.len();
                    batch.push((k.to_vec(), v.to_vec()));
                    if bytes >= COPY_BATCH_BYTES {
                        if let Err(e) = store.put_all(&state.name, &batch) {
                            failed = Some(e);
                            return false;
                        }
                        batch.clear();
                        bytes = 0;
                    }
                    true
                })
                .map_err(store_error)?;
            if let Some(e) = failed {
                return Err(store_error(e));
            }
            store.put_all(&state.name, &batch).map_err(store_error)?;
        }
        drop(source);
        let _ = std::fs::remove_dir_all(staging.join(format!("in-{i}")));
    }
    Ok((store, HashMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> SharedFile {
        SharedFile { name: format!("shared/{name}"), size, checksum: 7 }
    }

    #[test]
    fn only_files_of_the_confirmed_checkpoint_are_reused() {
        let mut ledger = UploadLedger::default();
        assert!(ledger.reusable("A", "1.sst", 10).is_none());
        ledger.used(1, "A", HashMap::from([("1.sst".to_owned(), file("a", 10))]));
        assert!(ledger.reusable("A", "1.sst", 10).is_none(), "checkpoint 1 is not confirmed yet");
        ledger.confirm(1);
        assert_eq!(ledger.reusable("A", "1.sst", 10), Some(&file("a", 10)));
        assert!(ledger.reusable("A", "1.sst", 11).is_none(), "another size is another file");

        ledger.used(2, "A", HashMap::from([("1.sst".to_owned(), file("a", 10)), ("2.sst".to_owned(), file("b", 5))]));
        ledger.used(3, "A", HashMap::from([("3.sst".to_owned(), file("c", 5))]));
        ledger.abort(2);
        ledger.confirm(2);
        assert!(ledger.reusable("A", "2.sst", 5).is_none(), "an aborted checkpoint's files are never reused");
        assert!(ledger.reusable("A", "1.sst", 10).is_some());
        ledger.confirm(3);
        assert!(ledger.reusable("A", "1.sst", 10).is_none(), "checkpoint 3 no longer had file 1");
        assert_eq!(ledger.reusable("A", "3.sst", 5), Some(&file("c", 5)));
    }

    #[test]
    fn a_confirmation_forgets_older_pending_checkpoints() {
        let mut ledger = UploadLedger::default();
        ledger.used(4, "A", HashMap::from([("4.sst".to_owned(), file("d", 1))]));
        ledger.used(5, "A", HashMap::from([("5.sst".to_owned(), file("e", 1))]));
        ledger.confirm(6);
        assert!(ledger.pending.contains_key(&5), "a savepoint's confirmation (no snapshot of it) forgets nothing");
        ledger.confirm(5);
        ledger.confirm(4);
        assert!(ledger.reusable("A", "4.sst", 1).is_none());
        assert!(ledger.reusable("A", "5.sst", 1).is_some());
        for id in 10..10 + PENDING_CHECKPOINTS_MAX as u64 + 5 {
            ledger.used(id, "A", HashMap::new());
        }
        assert_eq!(ledger.pending.len(), PENDING_CHECKPOINTS_MAX);
        ledger.restored("B", HashMap::from([("9.sst".to_owned(), file("f", 2))]));
        assert!(ledger.reusable("A", "9.sst", 2).is_none(), "files of another shared area are never reused");
        ledger.used(20, "A", HashMap::new());
        ledger.confirm(20);
        assert!(ledger.reusable("B", "9.sst", 2).is_none(), "writing to another area forgets the old one");
        ledger.restored("A", HashMap::from([("9.sst".to_owned(), file("f", 2))]));
        assert!(ledger.pending.is_empty());
        assert!(ledger.reusable("A", "9.sst", 2).is_some());
    }

    #[test]
    fn local_names_must_be_plain() {
        for bad in ["", ".", "..", "../x.sst", "a/b", "x\0"] {
            assert!(check_local_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_local_name("000012.sst").is_ok());
        assert!(check_local_name("MANIFEST-000005").is_ok());
    }
}
