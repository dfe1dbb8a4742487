//! Job lifecycle: failures name the operator and leave the process usable, cancellation is
//! clean, slots are named threads, several jobs share a cluster, invalid jobs are refused.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corestream::runtime::metrics::JobStatus;
use corestream::{ClusterConfig, JobError, LocalCluster};
use corestream_tests::cluster;

#[test]
fn a_panicking_function_fails_the_job_naming_the_operator_then_the_next_job_runs() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    env.from_sequence(0..1_000_000)
        .map(|v| v * 2)
        .key_by(|v: &u64| *v % 10)
        .into_stream()
        .map(|v| {
            if v == 777_776 {
                panic!("bad record {v}");
            }
            v
        })
        .name("Explode")
        .discard();
    let err = env.execute("failing").unwrap_err();
    match &err {
        JobError::OperatorFailed { operator, subtask, parallelism, message } => {
            assert_eq!(operator, "Explode");
            assert!(*subtask < 2);
            assert_eq!(*parallelism, 2);
            assert!(message.contains("bad record 777776"), "{message}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("operator 'Explode'"));
    assert_eq!(cluster.pool().in_use(), 0, "a failed job returns every buffer");

    let env = cluster.environment();
    env.from_sequence(0..1000).map(|v| v + 1).discard();
    let result = env.execute("next").unwrap();
    assert_eq!(result.records_in("Sink"), 1000);
}

#[test]
fn a_panicking_source_generator_is_named_too() {
    let cluster = cluster(1);
    let env = cluster.environment();
    env.from_generator(100, |i| if i == 50 { panic!("generator broke") } else { i }).discard();
    match env.execute("source-panic").unwrap_err() {
        JobError::OperatorFailed { operator, message, .. } => {
            assert_eq!(operator, "Source: generator");
            assert!(message.contains("generator broke"));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn cancelling_an_unbounded_job_joins_every_thread_and_returns_every_buffer() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    env.generate_unbounded(|i| (i % 100, i)).key_by(|r: &(u64, u64)| r.0).reduce(|a, b| (a.0, a.1 + b.1)).discard();
    let handle = env.execute_async("unbounded").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!handle.is_finished(), "an unbounded job runs until cancelled");
    let running = handle.snapshot();
    assert!(running.records_in("Keyed Reduce") > 0, "records flow while it runs");
    handle.cancel();
    let result = handle.join().unwrap();
    assert_eq!(result.status, JobStatus::Cancelled);
    assert_eq!(cluster.pool().in_use(), 0, "every buffer is back in the pool");
    let stats = cluster.pool().stats();
    assert!(stats.peak_in_use <= result.buffers_reserved, "{stats:?} vs {}", result.buffers_reserved);
    assert_eq!(stats.reserved, 0, "the job's reservation is released");
}

#[test]
fn dropping_a_handle_cancels_the_job() {
    let cluster = cluster(1);
    let env = cluster.environment();
    env.generate_unbounded(|i| i).discard();
    let handle = env.execute_async("dropped").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(handle);
    assert_eq!(cluster.pool().in_use(), 0);
    let env = cluster.environment();
    env.from_sequence(0..10).discard();
    env.execute("after").unwrap();
}

#[test]
fn slots_are_threads_named_cs_slot_n() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let names = seen.clone();
    env.from_sequence(0..10_000)
        .map(move |v| {
            names.lock().unwrap().insert(std::thread::current().name().unwrap_or("?").to_string());
            v
        })
        .discard();
    env.execute("names").unwrap();
    let seen: Vec<String> = seen.lock().unwrap().iter().cloned().collect();
    assert_eq!(seen, vec!["cs-slot-0".to_string(), "cs-slot-1".to_string()]);
    assert_eq!(cluster.slot_cpus().len(), 2);
    assert!(cluster.slot_cpus().iter().all(|c| c.is_some()), "slots are pinned");
}

#[test]
fn two_jobs_run_at_once_on_disjoint_slots() {
    let cluster = cluster(2);
    let mut a = cluster.environment();
    a.set_parallelism(1);
    a.generate_unbounded(|i| i).discard();
    let first = a.execute_async("first").unwrap();
    let mut b = cluster.environment();
    b.set_parallelism(1);
    b.from_sequence(0..100_000).map(|v| v * 3).discard();
    let second = b.execute("second").unwrap();
    assert_eq!(second.records_in("Sink"), 100_000);
    let mut c = cluster.environment();
    c.set_parallelism(1);
    c.from_sequence(0..10).discard();
    first.cancel();
    first.join().unwrap();
    c.execute("third").unwrap();
}

#[test]
fn a_job_needing_more_slots_than_free_is_refused() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(3);
    env.from_sequence(0..10).discard();
    match env.execute("too-wide").unwrap_err() {
        JobError::NotEnoughSlots { needed: 3, free: 2, total: 2 } => {}
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn a_job_needing_more_buffers_than_the_pool_has_is_refused() {
    let cluster =
        LocalCluster::start(ClusterConfig { slots: Some(2), network_buffers: Some(16), ..Default::default() }).unwrap();
    let mut env = cluster.environment();
    env.set_parallelism(2);
    env.from_sequence(0..10).rebalance().map(|v| v).discard();
    let err = env.execute("hungry").unwrap_err();
    assert!(matches!(err, JobError::Network(_)), "{err:?}");
    assert!(err.to_string().contains("insufficient network buffers"), "{err}");
    assert!(!err.is_retryable(), "the job can never fit this pool");
}

#[test]
fn the_default_pool_fits_a_keyed_exchange_at_full_parallelism_on_many_slots() {
    for slots in [24, 64] {
        let credit = corestream_netstack::CreditConfig::default();
        let buffers = corestream::config::auto_network_buffers(slots, &credit);
        let keyed_exchange = slots * (5 * slots + 40);
        assert!(buffers >= 2 * keyed_exchange, "{slots} slots: pool {buffers} < two exchanges");
    }
    let cluster = cluster(24);
    let mut env = cluster.environment();
    env.set_parallelism(24);
    env.from_sequence(0..100_000).key_by(|v: &u64| *v % 100).reduce(|a, b| a + b).discard();
    assert_eq!(env.execute("wide").unwrap().records_in("Keyed Reduce"), 100_000);
}

#[test]
fn invalid_credit_settings_are_refused_at_start() {
    let mut config = ClusterConfig { slots: Some(1), ..Default::default() };
    config.credit.exclusive_per_channel = 0;
    let err = LocalCluster::start(config).unwrap_err().to_string();
    assert!(err.contains("exclusive_per_channel"), "{err}");
}

#[test]
fn invalid_graphs_are_refused_with_a_reason() {
    let cluster = cluster(2);
    let env = cluster.environment();
    env.from_sequence(0..10).set_parallelism(1).forward().map(|v| v).set_parallelism(2).discard();
    let msg = env.execute("forward").unwrap_err().to_string();
    assert!(msg.contains("forward partitioning") && msg.contains("rebalance()"), "{msg}");

    let env = cluster.environment();
    let _ = env.from_sequence(0..10).map(|v| v);
    let msg = env.execute("no-sink").unwrap_err().to_string();
    assert!(msg.contains("no sink"), "{msg}");

    let env = cluster.environment();
    env.from_iter(0..10u64).set_parallelism(2).discard();
    let msg = env.execute("iter").unwrap_err().to_string();
    assert!(msg.contains("not a parallel operator"), "{msg}");

    let mut env = cluster.environment();
    env.set_max_parallelism(1);
    env.from_sequence(0..10).set_parallelism(2).discard();
    let msg = env.execute("maxp").unwrap_err().to_string();
    assert!(msg.contains("above its max parallelism"), "{msg}");

    let env = cluster.environment();
    env.from_sequence(0..10).map(|v| v).set_parallelism(1).rebalance().set_parallelism(2).map(|v| v).discard();
    let msg = env.execute("after-partitioning").unwrap_err().to_string();
    assert!(msg.contains("set_parallelism after a partitioning call (rebalance)"), "{msg}");

    let env = cluster.environment();
    let _out = env.from_sequence(0..10).collect();
    let msg = env.execute("blocking-collect").unwrap_err().to_string();
    assert!(msg.contains("execute_async"), "{msg}");
}

struct PanickyReadiness {
    polls: usize,
}

impl corestream::Sink<u64> for PanickyReadiness {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), corestream::SinkError> {
        batch.clear();
        Ok(())
    }

    fn poll_ready(&mut self) -> bool {
        self.polls += 1;
        assert!(self.polls < 200, "readiness check broke");
        true
    }
}

#[test]
fn panics_are_blamed_on_their_own_operator_even_when_tasks_share_a_slot() {
    let cluster = cluster(1);
    for _ in 0..10 {
        let env = cluster.environment();
        env.from_sequence(0..100_000_000)
            .map(|v| v + 1)
            .name("Innocent Map")
            .rebalance()
            .add_sink("Panicky Sink", |_ctx| Ok(PanickyReadiness { polls: 0 }));
        match env.execute("blame").unwrap_err() {
            JobError::OperatorFailed { operator, message, .. } => {
                assert_eq!(operator, "Panicky Sink");
                assert!(message.contains("readiness check broke"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let env = cluster.environment();
    env.from_sequence(0..10_000)
        .map(|v| v + 1)
        .name("Innocent Map")
        .key_by(|v: &u64| if *v == 5000 { panic!("key selector broke") } else { *v % 7 })
        .reduce(|a, b| a + b)
        .name("Keyed Sum")
        .discard();
    match env.execute("key-selector").unwrap_err() {
        JobError::OperatorFailed { operator, message, .. } => {
            assert_eq!(operator, "Keyed Sum", "a key selector belongs to the keyed operator");
            assert!(message.contains("key selector broke"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn streams_of_different_environments_cannot_be_joined() {
    let cluster = cluster(1);
    let a = cluster.environment();
    let b = cluster.environment();
    let mine = a.from_generator(3, |i| format!("a{i}"));
    let theirs = b.from_generator(3, |i| format!("b{i}"));
    mine.union([theirs]).discard();
    let msg = a.execute("cross-env").unwrap_err().to_string();
    assert!(msg.contains("different environments"), "{msg}");
}

#[test]
fn cancelling_then_dropping_the_collect_stream_ends_cancelled_not_failed() {
    let cluster = cluster(2);
    for run in 0..20 {
        let mut env = cluster.environment();
        env.set_parallelism(2);
        let mut records = env.generate_unbounded(|i| i).map(|i| i + 1).collect();
        let handle = env.execute_async("cancel then drop").unwrap();
        let first: Vec<u64> = records.by_ref().take(10).collect();
        assert_eq!(first.len(), 10, "run {run}: records flow before the cancel");
        handle.cancel();
        drop(records);
        let result = handle.join().unwrap_or_else(|e| panic!("run {run}: a cancelled job failed: {e}"));
        assert_eq!(result.status, JobStatus::Cancelled, "run {run}");
        assert_eq!(cluster.pool().in_use(), 0, "run {run}");
    }
}

#[test]
fn a_failure_before_the_cancel_is_still_reported() {
    let cluster = cluster(1);
    let env = cluster.environment();
    env.generate_unbounded(|i| i)
        .map(|i| {
            if i == 1000 {
                panic!("record {i} is bad");
            }
            i
        })
        .name("Fails")
        .discard();
    let handle = env.execute_async("fails first").unwrap();
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.cancel();
    let err = handle.join().unwrap_err();
    assert!(err.to_string().contains("record 1000 is bad"), "{err}");
}
