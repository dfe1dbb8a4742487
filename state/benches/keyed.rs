//! Keyed state hot paths: per-record window aggregation over 10 000 keys (set the key, set the
//! window namespace, add), and per-key read-modify-write without namespaces.

use corestream_state::{
    stable_hash, AggregateFunction, AggregatingStateDescriptor, KeyGroupRange, KeyedStateBackend,
    ReducingStateDescriptor, StateBackendKind, ValueStateDescriptor,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const KEYS: u64 = 10_000;
const RECORDS: u64 = 1 << 20;

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

fn backend() -> KeyedStateBackend<u64> {
    KeyedStateBackend::new(StateBackendKind::Heap, 128, KeyGroupRange { start: 0, end: 128 })
}

/// Keys in a scrambled order, as a hash exchange delivers them.
fn keys() -> Vec<u64> {
    (0..RECORDS).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % KEYS).collect()
}

fn keyed_state(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("keyed_state");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(20);

    group.bench_function("window_count_aggregating_add", |b| {
        let mut backend = backend();
        let mut state = backend
            .aggregating_state::<(i64, i64), u64, u64, u64>(&AggregatingStateDescriptor::new("count", Count))
            .unwrap();
        b.iter(|| {
            for &key in &keys {
                backend.set_current_key_hashed(key, stable_hash(&key));
                state.set_namespace((0, 1000));
                state.add(&key);
            }
        });
    });

    group.bench_function("value_update_with", |b| {
        let mut backend = backend();
        let mut state = backend.value_state::<(), u64>(&ValueStateDescriptor::new("sum")).unwrap();
        b.iter(|| {
            for &key in &keys {
                backend.set_current_key(key);
                state.update_with(|v| *v = Some(v.unwrap_or(0) + key));
            }
        });
    });

    group.bench_function("reducing_add", |b| {
        let mut backend = backend();
        let mut state =
            backend.reducing_state::<(), u64>(&ReducingStateDescriptor::new_in_place("sum", |a, v| *a += v)).unwrap();
        b.iter(|| {
            for &key in &keys {
                backend.set_current_key(key);
                state.add(key);
            }
        });
    });
    // The floor: one std-style hash map, no key groups, handles or dynamic calls.
    group.bench_function("hashbrown_map_baseline", |b| {
        let mut map: hashbrown::HashMap<(u64, (i64, i64)), u64> = hashbrown::HashMap::new();
        b.iter(|| {
            for &key in &keys {
                *map.entry((key, (0, 1000))).or_insert(0) += 1;
            }
        });
    });
    group.finish();
}

criterion_group!(benches, keyed_state);
criterion_main!(benches);
