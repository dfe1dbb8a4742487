//! Results through the exchange: keyed totals at every parallelism, each partitioning scheme,
//! unions, and the plan's chaining.

use std::collections::HashMap;

use corestream::{JobError, RuntimeMode};
use corestream_bench::examples::{key_of, reference_sum_by_key, sum_by_key};
use corestream_tests::cluster;

#[test]
fn keyed_sum_of_ten_million_records_is_identical_at_every_parallelism() {
    let records = 10_000_000;
    let keys = 10_000;
    let expected = reference_sum_by_key(records, keys);
    let cluster = cluster(4);
    for p in [1, 2, 4] {
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let totals = sum_by_key(&mut env, records, keys);
        let handle = env.execute_async("sum-by-key").unwrap();
        let mut got: Vec<(u64, u64)> = totals.collect();
        let result = handle.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, expected, "parallelism {p}");
        assert_eq!(result.records_in("Sum"), records);
        assert_eq!(cluster.pool().in_use(), 0, "every buffer is back after the job");
    }
}

#[test]
fn streaming_reduce_emits_every_update() {
    let cluster = cluster(2);
    let env = cluster.environment();
    let out = env
        .from_iter((0..1000u64).map(|i| (i % 3, 1u64)))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1 + b.1))
        .collect();
    let handle = env.execute_async("running").unwrap();
    let updates: Vec<(u64, u64)> = out.collect();
    handle.join().unwrap();
    assert_eq!(updates.len(), 1000);
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (k, c) in updates {
        let prev = last.insert(k, c).unwrap_or(0);
        assert_eq!(c, prev + 1, "each update of key {k} counts one more");
    }
    assert_eq!(last, HashMap::from([(0, 334), (1, 333), (2, 333)]));
}

fn per_subtask_in(result: &corestream::JobResult, name: &str) -> Vec<u64> {
    result.operator(name).unwrap().per_subtask.iter().map(|s| s.0).collect()
}

#[test]
fn rebalance_spreads_evenly_and_broadcast_copies_everywhere() {
    let cluster = cluster(3);
    let env = cluster.environment();
    let source = env.from_sequence(0..9000).set_parallelism(1);
    source.clone().rebalance().map(|v| v).name("Spread").set_parallelism(3).discard();
    source.broadcast().map(|v| v).name("Everywhere").set_parallelism(3).discard();
    let result = env.execute("partitioning").unwrap();
    assert_eq!(per_subtask_in(&result, "Spread"), vec![3000, 3000, 3000]);
    assert_eq!(per_subtask_in(&result, "Everywhere"), vec![9000, 9000, 9000]);
}

#[test]
fn rescale_feeds_local_subsets_and_forward_keeps_subtasks() {
    let cluster = cluster(4);
    let env = cluster.environment();
    env.from_sequence(0..8000)
        .set_parallelism(2)
        .rescale()
        .map(|v| v)
        .name("Rescaled")
        .set_parallelism(4)
        .forward()
        .map(|v| v)
        .name("Forwarded")
        .disable_chaining()
        .set_parallelism(4)
        .discard();
    let result = env.execute("rescale").unwrap();
    assert_eq!(per_subtask_in(&result, "Rescaled"), vec![2000, 2000, 2000, 2000]);
    assert_eq!(per_subtask_in(&result, "Forwarded"), per_subtask_in(&result, "Rescaled"));
}

#[test]
fn hash_partitioning_puts_each_key_on_one_subtask() {
    let cluster = cluster(4);
    let mut env = cluster.environment();
    env.set_parallelism(4);
    let out = env
        .from_sequence(0..40_000)
        .map(|v| (key_of(v, 100), 1u64))
        .key_by(|r: &(u64, u64)| r.0)
        .into_stream()
        .map(|r| r.0)
        .name("Keyed Map")
        .map(|k| (k, 0u64))
        .collect();
    let handle = env.execute_async("hash").unwrap();
    let keys: Vec<(u64, u64)> = out.collect();
    let result = handle.join().unwrap();
    assert_eq!(keys.len(), 40_000);
    let subtasks = per_subtask_in(&result, "Keyed Map");
    assert!(subtasks.iter().all(|n| *n > 0), "keys spread over all subtasks: {subtasks:?}");
}

#[test]
fn union_merges_streams_of_different_parallelism() {
    let cluster = cluster(2);
    let env = cluster.environment();
    let a = env.from_sequence(0..1000).set_parallelism(2);
    let b = env.from_iter(1000..1500u64);
    let out = a.union([b]).map(|v| v * 2).collect();
    let handle = env.execute_async("union").unwrap();
    let mut got: Vec<u64> = out.collect();
    handle.join().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..1500u64).map(|v| v * 2).collect::<Vec<_>>());
}

#[test]
fn plan_shows_chains_and_exchanges() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    env.from_sequence(0..10)
        .map(|v| v + 1)
        .filter(|v| *v > 0)
        .key_by(|v: &u64| *v)
        .reduce(|a, b| a + b)
        .map(|v| v)
        .name("After")
        .start_new_chain()
        .discard();
    let plan = env.explain().unwrap();
    assert!(plan.contains("Source: sequence -> Map -> Filter"), "{plan}");
    assert!(plan.contains("--HASH--> Task 1"), "{plan}");
    assert!(plan.contains("Task 1 [parallelism 2, max parallelism 128]: Keyed Reduce\n"), "{plan}");
    assert!(plan.contains("After -> Sink: discard"), "{plan}");
}

#[test]
fn chained_operators_never_serialize() {
    let cluster = cluster(1);
    let env = cluster.environment();
    env.from_sequence(0..100_000).map(|v| v + 1).filter(|v| v % 2 == 0).discard();
    let result = env.execute("chained").unwrap();
    assert_eq!(result.tasks.len(), 1);
    assert_eq!(result.tasks[0].buffers_out, 0, "one chain: no buffer crosses an exchange");
    assert_eq!(result.records_in("Sink"), 50_000);
}

#[test]
fn batch_mode_emits_one_result_per_key() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_runtime_mode(RuntimeMode::Batch);
    let out = env
        .from_sequence(0..10_000)
        .map(|v| (v % 7, 1u64))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1 + b.1))
        .collect();
    let handle = env.execute_async("batch").unwrap();
    let mut got: Vec<(u64, u64)> = out.collect();
    handle.join().unwrap();
    got.sort_unstable();
    let expected: Vec<(u64, u64)> = (0..7).map(|k| (k, (0..10_000u64).filter(|v| v % 7 == k).count() as u64)).collect();
    assert_eq!(got, expected);
}

#[test]
fn records_larger_than_a_buffer_are_refused_with_their_size() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    env.from_iter([vec![1u8; 100], vec![2u8; 50_000]]).rebalance().map(|v| v.len()).discard();
    let err = env.execute("too-large").unwrap_err();
    match &err {
        JobError::Record { operator, .. } => assert_eq!(operator, "Source: iterator"),
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("does not fit a network buffer") && msg.contains("50"), "{msg}");
    assert_eq!(cluster.pool().in_use(), 0);
}

#[test]
fn batches_of_large_records_wait_for_credit_instead_of_failing() {
    // 1024 records of 2 KB are 2 MB per batch: far more than a task may hold, so the output
    // parks what does not fit and resumes when credit returns.
    let cluster = cluster(2);
    let env = cluster.environment();
    let payload = |i: u64| vec![(i % 251) as u8; 2000 + (i % 7) as usize];
    let out = env
        .from_generator(20_000, payload)
        .set_parallelism(1)
        .rebalance()
        .map(|v: Vec<u8>| (v.len() as u64, v[0] as u64))
        .set_parallelism(2)
        .key_by(|r: &(u64, u64)| r.1)
        .reduce(|a, b| (a.0 + b.0, a.1))
        .collect();
    let handle = env.execute_async("large-records").unwrap();
    let updates: Vec<(u64, u64)> = out.collect();
    let result = handle.join().unwrap();
    assert_eq!(updates.len(), 20_000);
    let stats = cluster.pool().stats();
    assert!(stats.peak_in_use <= result.buffers_reserved, "{stats:?} vs {}", result.buffers_reserved);
    let total: u64 = (0..20_000u64).map(|i| 2000 + i % 7).sum();
    let mut finals: HashMap<u64, u64> = HashMap::new();
    for (len, key) in updates {
        let e = finals.entry(key).or_insert(0);
        *e = (*e).max(len);
    }
    assert_eq!(finals.values().sum::<u64>(), total);
}

#[test]
fn broadcast_of_large_records_resumes_mid_record() {
    let cluster = cluster(4);
    let env = cluster.environment();
    env.from_generator(3000, |i| vec![i as u8; 3000])
        .set_parallelism(1)
        .broadcast()
        .map(|v| v.len())
        .name("Copies")
        .set_parallelism(4)
        .discard();
    let result = env.execute("broadcast-large").unwrap();
    assert_eq!(per_subtask_in(&result, "Copies"), vec![3000, 3000, 3000, 3000]);
}

#[test]
fn one_stream_keyed_two_ways_routes_each_by_its_own_key() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2).set_runtime_mode(RuntimeMode::Batch);
    let source = env.from_sequence(0..10_000).map(|v| (v % 10, v % 3)).disable_chaining();
    let by_first = source.clone().key_by(|r: &(u64, u64)| r.0).reduce(|a, _| a).map(|r| r.0).collect();
    let by_second = source.key_by(|r: &(u64, u64)| r.1).reduce(|a, _| a).map(|r| r.1).collect();
    let handle = env.execute_async("two-keys").unwrap();
    let reader = std::thread::spawn(move || by_second.collect::<Vec<u64>>());
    let mut first: Vec<u64> = by_first.collect();
    let mut second = reader.join().unwrap();
    handle.join().unwrap();
    first.sort_unstable();
    second.sort_unstable();
    assert_eq!(first, (0..10).collect::<Vec<_>>(), "one final record per key of the first key");
    assert_eq!(second, vec![0, 1, 2], "one final record per key of the second key");
}

#[test]
fn watermarks_wait_behind_parked_records() {
    // Each first-level window result is 40 records of 3 KB: the output of a firing parks most
    // of them, and the watermark the window operator forwards right after must wait behind
    // them, or the second-level windows would fire early and drop the parked records as late.
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    let ten_ms = std::time::Duration::from_millis(10);
    let out = env
        .from_sequence(0..20_000)
        .map(|v| (v % 10, (v / 100) as i64))
        .assign_timestamps_and_watermarks(
            corestream::WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &(u64, i64)| r.1),
        )
        .key_by(|r: &(u64, i64)| r.0)
        .window(corestream::WindowAssigner::tumbling_event_time(ten_ms))
        .aggregate_process(
            corestream_bench::throughput::CountAgg,
            |ctx: &corestream::WindowContext<'_, u64>, _n: u64, out: &mut Vec<(u64, i64, Vec<u8>)>| {
                for i in 0..40u8 {
                    out.push((*ctx.key, ctx.window.start, vec![i; 3000]));
                }
            },
        )
        .with_timestamps(|r: &(u64, i64, Vec<u8>)| r.1 + 9)
        .key_by(|r: &(u64, i64, Vec<u8>)| r.0)
        .window(corestream::WindowAssigner::tumbling_event_time(ten_ms))
        .aggregate_process(
            corestream_bench::throughput::CountAgg,
            |ctx: &corestream::WindowContext<'_, u64>, n: u64, out: &mut Vec<(u64, i64, u64)>| {
                out.push((*ctx.key, ctx.window.start, n))
            },
        )
        .collect();
    let handle = env.execute_async("parked-watermarks").unwrap();
    let got: Vec<(u64, i64, u64)> = out.collect();
    let result = handle.join().unwrap();
    assert_eq!(got.len(), 20 * 10, "one result per key and window: {} results", got.len());
    let short: Vec<_> = got.iter().filter(|r| r.2 != 40).collect();
    assert!(short.is_empty(), "windows that lost records: {short:?}");
    let stats = cluster.pool().stats();
    assert!(stats.peak_in_use <= result.buffers_reserved, "{stats:?} vs {}", result.buffers_reserved);
}
