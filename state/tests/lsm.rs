//! The LSM backend's own guarantees, beyond the behaviour it shares with the heap backend (the
//! unit tests and the model test run on both): its memory stays inside the slot's budget while
//! its state outgrows it, a snapshot is the state at its synchronous part whatever is written
//! after, its files go when the backend goes, and a store that cannot be created is an error
//! naming the directory.

use corestream_state::{
    KeyGroupRange, KeyedStateBackend, ListStateDescriptor, LsmConfig, StateBackendKind, StateError,
    ValueStateDescriptor,
};

const MAX_P: u32 = 128;
const ALL: KeyGroupRange = KeyGroupRange { start: 0, end: MAX_P };

fn lsm(config: &LsmConfig) -> KeyedStateBackend<u64> {
    KeyedStateBackend::with_config(StateBackendKind::Lsm, MAX_P, ALL, config).unwrap()
}

#[test]
fn state_larger_than_the_memory_budget_stays_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = LsmConfig { local_dir: Some(dir.path().to_owned()), memory_per_slot: 8 << 20, ..LsmConfig::default() };
    let mut b = lsm(&config);
    let mut v = b.value_state::<(), Vec<u8>>(&ValueStateDescriptor::new("v")).unwrap();
    let keys = 200_000u64;
    for k in 0..keys {
        b.set_current_key(k);
        v.update(incompressible(k));
    }
    for k in (0..keys).step_by(997) {
        b.set_current_key(k);
        assert_eq!(v.value(), Some(incompressible(k)), "key {k}");
    }
    let memory = b.lsm_memory().unwrap().unwrap();
    assert!(memory.memtables <= (config.memory_per_slot / 4) as u64, "memtables {memory:?}");
    assert!(memory.slot_block_cache <= (config.memory_per_slot / 2) as u64, "block cache {memory:?}");
    let on_disk: u64 = walk(&b.lsm_path().unwrap()).iter().sum();
    assert!(on_disk > (config.memory_per_slot as u64), "the state ({on_disk} bytes on disk) outgrew the budget");
}

/// 200 bytes that LZ4 cannot shrink, different for every key.
fn incompressible(key: u64) -> Vec<u8> {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..200)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn walk(dir: &std::path::Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            sizes.extend(walk(&entry.path()));
        } else {
            sizes.push(meta.len());
        }
    }
    sizes
}

#[test]
fn a_snapshot_holds_the_state_at_its_synchronous_part() {
    let mut b = lsm(&LsmConfig::default());
    let mut v = b.value_state::<(), u64>(&ValueStateDescriptor::new("v")).unwrap();
    let mut l = b.list_state::<(), u64>(&ListStateDescriptor::new("l")).unwrap();
    for k in 0..1000u64 {
        b.set_current_key(k);
        v.update(k);
        l.add(k);
    }
    let frozen = b.freeze();
    for k in 0..1000u64 {
        b.set_current_key(k);
        v.update(k + 1);
        l.add(k + 1);
    }
    let snapshot = frozen.encode().unwrap();
    let mut r = lsm(&LsmConfig::default());
    r.restore(std::slice::from_ref(&snapshot)).unwrap();
    let v = r.value_state::<(), u64>(&ValueStateDescriptor::new("v")).unwrap();
    let l = r.list_state::<(), u64>(&ListStateDescriptor::new("l")).unwrap();
    for k in 0..1000u64 {
        r.set_current_key(k);
        assert_eq!(v.value(), Some(k));
        assert_eq!(l.get(), vec![k]);
    }
}

#[test]
fn the_store_and_its_checkpoints_are_removed_with_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let config = LsmConfig { local_dir: Some(dir.path().to_owned()), ..LsmConfig::default() };
    let mut b = lsm(&config);
    let mut v = b.value_state::<(), u64>(&ValueStateDescriptor::new("v")).unwrap();
    b.set_current_key(1);
    v.update(1);
    let snapshot = b.snapshot().unwrap();
    assert_eq!(snapshot.key_groups.len(), 1);
    let entries = || std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries(), 1, "only the store's directory is left once the snapshot is encoded");
    drop(v);
    drop(b);
    assert_eq!(entries(), 0, "the store's directory goes with the backend");
}

#[test]
fn a_store_that_cannot_be_created_is_an_error_naming_the_directory() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let config = LsmConfig { local_dir: Some(file.path().to_owned()), ..LsmConfig::default() };
    let Err(e) = KeyedStateBackend::<u64>::with_config(StateBackendKind::Lsm, MAX_P, ALL, &config) else {
        panic!("a file is not a directory");
    };
    assert!(matches!(e, StateError::Store { .. }), "{e:?}");
    assert!(e.to_string().contains(&file.path().display().to_string()), "{e}");
}
