//! Latency markers: off by default; when on, every source subtask's markers cross operators and
//! a rebalance exchange and reach the sink, which reports their ages per source subtask; idle
//! sources keep marking; markers never change or count as records; a zero interval is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corestream::{JobError, JobResult, Sink, SinkError, StreamEnvironment};
use corestream_tests::cluster;

const RECORDS: u64 = 400_000;

/// Adds every record into a shared total.
struct SumSink(Arc<AtomicU64>);

impl Sink<u64> for SumSink {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), SinkError> {
        let sum: u64 = batch.drain(..).sum();
        self.0.fetch_add(sum, Ordering::Relaxed);
        Ok(())
    }
}

/// source(p=2) → map → rebalance → sink(p=2); the map sleeps 1 ms every 500 records, so the
/// job runs for about half a second. Returns the result and the sum the sink saw.
fn run_source_map_rebalance_sink(configure: impl FnOnce(&mut StreamEnvironment)) -> Result<(JobResult, u64), JobError> {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    configure(&mut env);
    let total = Arc::new(AtomicU64::new(0));
    let sink_total = total.clone();
    env.from_sequence(0..RECORDS)
        .map(|v: u64| {
            if v.is_multiple_of(500) {
                std::thread::sleep(Duration::from_millis(1));
            }
            v * 2
        })
        .rebalance()
        .add_sink("Sink: sum", move |_| Ok(SumSink(sink_total.clone())));
    let result = env.execute("latency markers")?;
    Ok((result, total.load(Ordering::Relaxed)))
}

fn expected_sum() -> u64 {
    (0..RECORDS).map(|v| v * 2).sum()
}

#[test]
fn latency_tracking_is_off_by_default() {
    let (result, sum) =
        run_source_map_rebalance_sink(|env| assert_eq!(env.config().latency_tracking_interval, None)).unwrap();
    assert!(result.latency.is_empty(), "{:?}", result.latency);
    assert_eq!(sum, expected_sum());
    assert!(!result.to_string().contains("latency Sink"), "{result}");
}

#[test]
fn sinks_report_marker_latency_per_source_subtask_without_touching_records() {
    let (result, sum) = run_source_map_rebalance_sink(|env| {
        env.set_latency_tracking_interval(Duration::from_millis(10));
    })
    .unwrap();
    assert_eq!(sum, expected_sum(), "markers changed the records");
    assert_eq!(result.records_in("Sink: sum"), RECORDS, "markers counted as records");
    assert_eq!(result.records_in("Map"), RECORDS);
    let subtasks: Vec<u32> = result.latency.iter().map(|l| l.source_subtask).collect();
    assert_eq!(subtasks, vec![0, 1], "{:?}", result.latency);
    for l in &result.latency {
        assert_eq!(l.sink, "Sink: sum");
        assert!(l.count > 0, "{l:?}");
        assert_eq!(l.count, l.histogram.len());
        assert!(l.p50 <= l.p99 && l.p99 <= l.p99_9 && l.p99_9 <= l.max, "{l:?}");
        assert!(l.max >= Duration::from_micros(1) && l.max < Duration::from_secs(5), "{l:?}");
    }
    let markers: u64 = result.latency.iter().map(|l| l.count).sum();
    // About 50 intervals per source subtask; a generous bound on both sides.
    assert!((4..=2 * 2 * 200).contains(&markers), "{markers} markers in {:?}", result.wall_time);
    let shown = result.to_string();
    println!("{shown}");
    assert!(shown.contains("latency Sink: sum <- source subtask 1"), "{shown}");
}

#[test]
fn an_idle_source_keeps_emitting_markers() {
    let cluster = cluster(1);
    let mut env = cluster.environment();
    env.set_latency_tracking_interval(Duration::from_millis(20));
    let (tx, stream) = env.from_channel::<u64>(16);
    stream.map(|v| v + 1).discard();
    let job = env.execute_async("idle source").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tx.send(7).unwrap();
    drop(tx);
    let result = job.join().unwrap();
    assert_eq!(result.records_in("Sink: discard"), 1);
    assert_eq!(result.latency.len(), 1, "{:?}", result.latency);
    let l = &result.latency[0];
    assert_eq!((l.sink.as_str(), l.source_subtask), ("Sink: discard", 0));
    // 300 ms idle at one marker per 20 ms: about 15.
    assert!(l.count >= 5, "only {} markers from an idle source", l.count);
}

#[test]
fn a_zero_interval_is_refused_naming_the_setting() {
    let cluster = cluster(1);
    let mut env = cluster.environment();
    env.set_latency_tracking_interval(Duration::ZERO);
    env.from_sequence(0..10).discard();
    let explained = env.explain().unwrap_err();
    assert!(explained.to_string().contains("latency_tracking_interval"), "{explained}");
    match env.execute("zero interval") {
        Err(JobError::InvalidJob(message)) => {
            assert!(message.contains("latency_tracking_interval") && message.contains("positive"), "{message}")
        }
        other => panic!("expected an invalid-job error, got {other:?}"),
    }
}
