//! Keyed state operations per second on one core, the heap backend beside the LSM backend (its
//! engine, Speedb or RocksDB, printed), in one process: rounds alternate between the backends
//! and each figure is the median of the rounds, with the LSM/heap ratio.
//!
//! `cargo bench -p corestream-state --bench backends [-- KEYS [ROUNDS [MEMORY_MIB]]]`
//! (defaults: 1 000 000 keys, 3 rounds, 256 MiB per slot for the LSM backend). Every operation
//! touches a key chosen in a scrambled order, as a hash exchange delivers them: `put` writes a
//! 64-byte value per key, `get` reads them back, `update_with` reads and writes one counter,
//! `window_add` adds to a per-key window aggregate (set the key, the namespace, add), and
//! `list_add` appends to a per-key list.
//!
//! Then snapshots and restores of the `put` state (KEYS values of 64 bytes), each the median of
//! the rounds: a full snapshot (freeze and encode every key group) and its restore on each
//! backend, and on the LSM backend an incremental snapshot into a local shared area (the first,
//! which uploads every file; a second after 1 % of the keys changed, which uploads the new files
//! only) and the restore of the second (download every file and open the store).

use std::time::{Duration, Instant};

use corestream_state::lsm::DirSharedFiles;
use corestream_state::{
    lsm, stable_hash, AggregateFunction, AggregatingStateDescriptor, KeyGroupRange, KeyedStateBackend,
    ListStateDescriptor, LsmConfig, StateBackendKind, ValueStateDescriptor,
};

struct Count;

impl AggregateFunction<u64, u64, u64> for Count {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: &u64, acc: &mut u64) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: &mut u64, b: u64) {
        *a += b;
    }
}

const OPS: [&str; 5] = ["put", "get", "update_with", "window_add", "list_add"];

/// Operations per second of each of [`OPS`] on a fresh backend of `kind`.
fn round(kind: StateBackendKind, keys: &[u64], config: &LsmConfig) -> [f64; 5] {
    let mut b: KeyedStateBackend<u64> =
        KeyedStateBackend::with_config(kind, 128, KeyGroupRange { start: 0, end: 128 }, config).expect("backend");
    let mut values = b.value_state::<(), [u64; 8]>(&ValueStateDescriptor::new("values")).unwrap();
    let mut counters = b.value_state::<(), u64>(&ValueStateDescriptor::new("counters")).unwrap();
    let mut windows =
        b.aggregating_state::<(i64, i64), u64, u64, u64>(&AggregatingStateDescriptor::new("windows", Count)).unwrap();
    let mut lists = b.list_state::<(), u64>(&ListStateDescriptor::new("lists")).unwrap();
    let mut rates = [0.0; 5];
    let mut time = |i: usize, f: &mut dyn FnMut(u64)| {
        let start = Instant::now();
        for &key in keys {
            f(key);
        }
        rates[i] = keys.len() as f64 / start.elapsed().as_secs_f64();
    };
    time(0, &mut |key| {
        b.set_current_key_hashed(key, stable_hash(&key));
        values.update([key; 8]);
    });
    let mut found = 0u64;
    time(1, &mut |key| {
        b.set_current_key_hashed(key, stable_hash(&key));
        found += values.value().map_or(0, |v| v[0] & 1);
    });
    std::hint::black_box(found);
    time(2, &mut |key| {
        b.set_current_key_hashed(key, stable_hash(&key));
        counters.update_with(|c| *c = Some(c.unwrap_or(0) + 1));
    });
    time(3, &mut |key| {
        b.set_current_key_hashed(key, stable_hash(&key));
        windows.set_namespace((0, 10_000));
        windows.add(&key);
    });
    time(4, &mut |key| {
        b.set_current_key_hashed(key, stable_hash(&key));
        lists.add(key);
    });
    rates
}
/// Seconds and bytes of one snapshot or restore.
#[derive(Default, Clone, Copy)]
struct Step {
    secs: f64,
    bytes: u64,
}

const STEPS: [&str; 6] = [
    "heap full snapshot",
    "heap full restore",
    "lsm full snapshot",
    "lsm full restore",
    "lsm incremental snapshot, first",
    "lsm incremental snapshot, 1 % changed",
];

fn values(kind: StateBackendKind, keys: &[u64], config: &LsmConfig) -> KeyedStateBackend<u64> {
    let mut b: KeyedStateBackend<u64> =
        KeyedStateBackend::with_config(kind, 128, KeyGroupRange { start: 0, end: 128 }, config).expect("backend");
    let mut values = b.value_state::<(), [u64; 8]>(&ValueStateDescriptor::new("values")).unwrap();
    for &key in keys {
        b.set_current_key_hashed(key, stable_hash(&key));
        values.update([key; 8]);
    }
    b
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

/// The snapshot and restore steps of [`STEPS`] and the incremental restore.
fn snapshots(keys: &[u64], config: &LsmConfig) -> ([Step; 6], Step) {
    let mut steps = [Step::default(); 6];
    for (i, kind) in [StateBackendKind::Heap, StateBackendKind::Lsm].into_iter().enumerate() {
        let b = values(kind, keys, config);
        let (snapshot, secs) = timed(|| b.snapshot().expect("snapshot"));
        steps[2 * i] = Step { secs, bytes: snapshot.size_bytes() as u64 };
        let mut r = values(kind, &[], config);
        let ((), secs) = timed(|| r.restore(std::slice::from_ref(&snapshot)).expect("restore"));
        steps[2 * i + 1] = Step { secs, bytes: snapshot.size_bytes() as u64 };
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let shared = DirSharedFiles::new(dir.path()).expect("a shared area");
    let mut b = values(StateBackendKind::Lsm, keys, config);
    let (first, secs) = timed(|| b.freeze_files(1).unwrap().expect("incremental").upload(&shared).unwrap());
    steps[4] = Step { secs, bytes: first.uploaded_bytes() };
    b.notify_checkpoint_complete(1);
    let changed: Vec<u64> = keys.iter().copied().step_by(100).collect();
    let mut values_state = b.value_state::<(), [u64; 8]>(&ValueStateDescriptor::new("values")).unwrap();
    for &key in &changed {
        b.set_current_key_hashed(key, stable_hash(&key));
        values_state.update([key + 1; 8]);
    }
    let (second, secs) = timed(|| b.freeze_files(2).unwrap().expect("incremental").upload(&shared).unwrap());
    steps[5] = Step { secs, bytes: second.uploaded_bytes() };
    let mut r = values(StateBackendKind::Lsm, &[], config);
    let ((), secs) = timed(|| r.restore_files(std::slice::from_ref(&second), &shared).expect("restore"));
    let restore = Step { secs, bytes: second.files.iter().map(|f| f.file.size).sum() };
    (steps, restore)
}

fn median_step(v: &[Step]) -> Step {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    v[v.len() / 2]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let arg = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let (keys, rounds, memory_mib) = (arg(0, 1_000_000), arg(1, 3).max(1), arg(2, 256));
    let config = LsmConfig { memory_per_slot: (memory_mib as usize) << 20, ..LsmConfig::default() };
    let order: Vec<u64> = (0..keys).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % keys).collect();
    println!("keyed state, {keys} keys, {rounds} rounds, heap vs lsm ({}, {memory_mib} MiB per slot)", lsm::ENGINE);
    let mut heap = vec![Vec::new(); OPS.len()];
    let mut lsm = vec![Vec::new(); OPS.len()];
    for r in 0..rounds {
        let kinds = if r % 2 == 0 {
            [StateBackendKind::Heap, StateBackendKind::Lsm]
        } else {
            [StateBackendKind::Lsm, StateBackendKind::Heap]
        };
        for kind in kinds {
            let rates = round(kind, &order, &config);
            let into = if kind == StateBackendKind::Heap { &mut heap } else { &mut lsm };
            for (i, rate) in rates.into_iter().enumerate() {
                into[i].push(rate);
            }
        }
    }
    println!("{:<12} {:>16} {:>16} {:>10}", "operation", "heap M ops/s", "lsm M ops/s", "lsm/heap");
    for (i, op) in OPS.iter().enumerate() {
        let (h, l) = (median(heap[i].clone()), median(lsm[i].clone()));
        println!("{op:<12} {:>16.2} {:>16.3} {:>10.3}", h / 1e6, l / 1e6, l / h);
    }

    let mut steps = vec![Vec::new(); STEPS.len() + 1];
    for _ in 0..rounds {
        let (these, restore) = snapshots(&order, &config);
        for (i, step) in these.into_iter().chain([restore]).enumerate() {
            steps[i].push(step);
        }
    }
    println!("\nsnapshots and restores of {keys} values of 64 bytes (medians of {rounds} rounds)");
    println!("{:<40} {:>10} {:>12}", "step", "ms", "MiB");
    let names = STEPS.iter().copied().chain(["lsm incremental restore (download, open)"]);
    for (name, runs) in names.zip(&steps) {
        let step = median_step(runs);
        let ms = Duration::from_secs_f64(step.secs).as_secs_f64() * 1e3;
        println!("{name:<40} {ms:>10.1} {:>12.2}", step.bytes as f64 / (1u64 << 20) as f64);
    }
}
