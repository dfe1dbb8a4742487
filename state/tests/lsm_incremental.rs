//! Incremental snapshots of the LSM backend: the second snapshot uploads only the files the
//! first confirmed one did not have, a restore at the same key groups or split across two
//! backends gives the same state, the heap backend refuses them, and a missing or damaged file
//! is an error naming it that leaves the backend as it was.

use std::path::PathBuf;

use corestream_state::lsm::{DirSharedFiles, LsmFilesSnapshot, SharedFile};
use corestream_state::{
    KeyGroupRange, KeyedStateBackend, ListStateDescriptor, LsmConfig, MapStateDescriptor, StateBackendKind,
    ValueStateDescriptor,
};

const MAX_P: u32 = 128;
const ALL: KeyGroupRange = KeyGroupRange { start: 0, end: MAX_P };

/// A shared area in a fresh directory, and the number of files in it.
struct DirStore {
    files: DirSharedFiles,
    _dir: tempfile::TempDir,
}

impl DirStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self { files: DirSharedFiles::new(dir.path()).unwrap(), _dir: dir }
    }

    fn path(&self, file: &SharedFile) -> PathBuf {
        self.files.path(file)
    }

    fn count(&self) -> usize {
        std::fs::read_dir(self._dir.path().join("shared")).map_or(0, |d| d.count())
    }
}

impl std::ops::Deref for DirStore {
    type Target = DirSharedFiles;
    fn deref(&self) -> &DirSharedFiles {
        &self.files
    }
}

fn lsm(range: KeyGroupRange) -> KeyedStateBackend<u64> {
    KeyedStateBackend::with_config(StateBackendKind::Lsm, MAX_P, range, &LsmConfig::default()).unwrap()
}

/// Writes `keys` into value, list and map states.
fn fill(b: &mut KeyedStateBackend<u64>, keys: std::ops::Range<u64>) {
    let mut v = b.value_state::<(), u64>(&ValueStateDescriptor::new("v")).unwrap();
    let mut l = b.list_state::<(), u64>(&ListStateDescriptor::new("l")).unwrap();
    let mut m = b.map_state::<(), u32, String>(&MapStateDescriptor::new("m")).unwrap();
    for k in keys {
        b.set_current_key(k);
        v.update(k * 3);
        l.add(k);
        m.put(k as u32, format!("value {k}"));
    }
}

/// Every key of `keys` this backend owns has the state [`fill`] wrote; returns how many.
fn check(b: &mut KeyedStateBackend<u64>, keys: std::ops::Range<u64>) -> usize {
    let v = b.value_state::<(), u64>(&ValueStateDescriptor::new("v")).unwrap();
    let l = b.list_state::<(), u64>(&ListStateDescriptor::new("l")).unwrap();
    let m = b.map_state::<(), u32, String>(&MapStateDescriptor::new("m")).unwrap();
    let mut owned = 0;
    for k in keys {
        if !b.key_groups().contains(corestream_state::assign_key_group(&k, MAX_P)) {
            continue;
        }
        owned += 1;
        b.set_current_key(k);
        assert_eq!(v.value(), Some(k * 3), "key {k}");
        assert_eq!(l.get(), vec![k], "key {k}");
        assert_eq!(m.get(&(k as u32)), Some(format!("value {k}")), "key {k}");
    }
    owned
}

fn snapshot(b: &KeyedStateBackend<u64>, checkpoint: u64, to: &DirSharedFiles) -> LsmFilesSnapshot {
    b.freeze_files(checkpoint).unwrap().expect("an incremental LSM backend").upload(to).unwrap()
}

#[test]
fn a_second_snapshot_uploads_only_new_files_and_restores_whole_or_split() {
    let shared = DirStore::new();
    let mut b = lsm(ALL);
    fill(&mut b, 0..20_000);
    let first = snapshot(&b, 1, &shared);
    assert!(!first.files.is_empty() && first.files.iter().all(|f| !f.reused));
    assert_eq!(first.uploaded_bytes(), first.files.iter().map(|f| f.file.size).sum::<u64>());
    b.notify_checkpoint_complete(1);

    fill(&mut b, 20_000..21_000);
    let second = snapshot(&b, 2, &shared);
    let reused: Vec<_> = second.files.iter().filter(|f| f.reused).collect();
    assert!(!reused.is_empty(), "the files of checkpoint 1 are reused");
    assert!(
        second.uploaded_bytes() < first.uploaded_bytes() / 4,
        "{} of {}",
        second.uploaded_bytes(),
        first.uploaded_bytes()
    );
    for f in &reused {
        assert!(first.files.iter().any(|g| g.file == f.file), "{f:?} was uploaded for checkpoint 1");
    }
    for f in &second.files {
        let before = first.files.iter().find(|g| g.local == f.local);
        assert_eq!(f.reused, before.is_some(), "{}: reused exactly when checkpoint 1 had it", f.local);
    }
    let uploaded = shared.count();

    let mut whole = lsm(ALL);
    whole.restore_files(std::slice::from_ref(&second), &*shared).unwrap();
    assert_eq!(check(&mut whole, 0..21_000), 21_000);
    let again = snapshot(&whole, 3, &shared);
    assert!(again.files.iter().all(|f| f.reused), "a restored store reuses the files it was restored from");
    assert_eq!(shared.count(), uploaded);
    let elsewhere = DirStore::new();
    let mut moved = lsm(ALL);
    moved.restore_files(std::slice::from_ref(&second), &*shared).unwrap();
    let first_there = snapshot(&moved, 3, &elsewhere);
    assert!(first_there.files.iter().all(|f| !f.reused), "checkpoints into another area upload every file");
    assert_eq!(elsewhere.count(), first_there.files.len());

    let halves = [KeyGroupRange { start: 0, end: 50 }, KeyGroupRange { start: 50, end: MAX_P }];
    let mut total = 0;
    for range in halves {
        let mut half = lsm(range);
        half.restore_files(std::slice::from_ref(&second), &*shared).unwrap();
        total += check(&mut half, 0..21_000);
        let theirs = snapshot(&half, 3, &shared);
        assert!(theirs.files.iter().all(|f| !f.reused), "a rescaled store has new files");
    }
    assert_eq!(total, 21_000);
}

#[test]
fn the_heap_backend_refuses_an_incremental_snapshot() {
    let shared = DirStore::new();
    let mut b = lsm(ALL);
    fill(&mut b, 0..100);
    let s = snapshot(&b, 1, &shared);
    let mut heap = KeyedStateBackend::<u64>::new(StateBackendKind::Heap, MAX_P, ALL);
    let e = heap.restore_files(&[s], &*shared).unwrap_err().to_string();
    assert!(e.contains("--state-backend lsm"), "{e}");
}

#[test]
fn a_missing_or_damaged_file_is_named_and_changes_nothing() {
    let shared = DirStore::new();
    let mut b = lsm(ALL);
    fill(&mut b, 0..5_000);
    let s = snapshot(&b, 1, &shared);
    let victim = &s.files[0].file;

    let mut r = lsm(ALL);
    fill(&mut r, 0..10);
    let bytes = std::fs::read(shared.path(victim)).unwrap();
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(shared.path(victim), &damaged).unwrap();
    let e = r.restore_files(std::slice::from_ref(&s), &*shared).unwrap_err().to_string();
    assert!(e.contains(&victim.name), "{e}");
    assert_eq!(check(&mut r, 0..10), 10, "the backend is unchanged");

    std::fs::remove_file(shared.path(victim)).unwrap();
    let e = r.restore_files(std::slice::from_ref(&s), &*shared).unwrap_err().to_string();
    assert!(e.contains(&victim.name), "{e}");
    assert_eq!(check(&mut r, 0..10), 10, "the backend is unchanged");

    std::fs::write(shared.path(victim), &bytes).unwrap();
    r.restore_files(std::slice::from_ref(&s), &*shared).unwrap();
    assert_eq!(check(&mut r, 0..5_000), 5_000);
}
