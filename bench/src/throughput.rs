//! Throughput benchmarks as jobs: `passthrough` (sequence → map → filter → discard, all in one
//! chain) and `keyed-sum` (sequence → hash exchange → running sum per key → discard). Each run
//! reports events per second over the job's wall time, measured by the job itself.

use std::time::Duration;

use corestream::{JobError, JobHandle, JobResult, StreamEnvironment};

use crate::examples::key_of;

/// The outcome of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub name: String,
    pub parallelism: u32,
    pub events: u64,
    /// Records that reached the sink (the check).
    pub count: u64,
    pub wall_time: Duration,
    pub result: JobResult,
}

impl BenchReport {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.wall_time.as_secs_f64().max(1e-9)
    }
}

/// Map of the passthrough benchmark: (v mod 1000) × 908 / 1000 in integer arithmetic.
#[inline]
pub fn passthrough_map(v: u64) -> i64 {
    (v % 1000) as i64 * 908 / 1000
}

/// Declares the passthrough job on `env`.
pub fn passthrough_job(env: &StreamEnvironment, events: u64) {
    env.from_sequence(0..events).map(passthrough_map).filter(|v| *v >= 0).discard();
}

/// Declares the keyed-sum job on `env`.
pub fn keyed_sum_job(env: &StreamEnvironment, events: u64, keys: u64) {
    env.from_sequence(0..events)
        .map(move |v| (key_of(v, keys), v))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1.wrapping_add(b.1)))
        .name("Running Sum")
        .discard();
}

/// Starts the passthrough job in `env` (a cluster's environment, configured by the caller).
pub fn start_passthrough(env: StreamEnvironment, events: u64) -> Result<JobHandle, JobError> {
    passthrough_job(&env, events);
    env.execute_async("passthrough")
}

/// Starts the keyed-sum job in `env` (configured by the caller).
pub fn start_keyed_sum(env: StreamEnvironment, events: u64, keys: u64) -> Result<JobHandle, JobError> {
    keyed_sum_job(&env, events, keys);
    env.execute_async("keyed-sum")
}

/// Turns a benchmark job's result into a report.
pub fn report(name: &str, parallelism: u32, events: u64, result: JobResult) -> BenchReport {
    let count = result.operators.iter().filter(|o| o.name.starts_with("Sink")).map(|o| o.records_in).sum();
    BenchReport { name: name.to_string(), parallelism, events, count, wall_time: result.wall_time, result }
}

/// Joins a benchmark job and turns its result into a report.
pub fn finish(name: &str, parallelism: u32, events: u64, handle: JobHandle) -> Result<BenchReport, JobError> {
    Ok(report(name, parallelism, events, handle.join()?))
}

/// Key of event `v` in the window benchmark: (v × 7919) mod K.
#[inline]
pub fn window_key(v: u64, keys: u64) -> u64 {
    v.wrapping_mul(7919) % keys
}

/// Event time of event `v` in the window benchmark: v / 10 milliseconds.
#[inline]
pub fn window_time(v: u64) -> i64 {
    (v / 10) as i64
}

/// Counts records per window (the aggregate of the window benchmark), whatever their type.
#[derive(Debug, Clone, Copy)]
pub struct CountAgg;

impl<T> corestream::AggregateFunction<T, u64, u64> for CountAgg {
    fn create_accumulator(&self) -> u64 {
        0
    }
    #[inline]
    fn add(&self, _value: &T, acc: &mut u64) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: &mut u64, b: u64) {
        *a += b;
    }
}

/// Sums the window counts it receives into a shared total (the window benchmark's check).
#[derive(Debug)]
pub struct SumSink {
    total: std::sync::Arc<std::sync::atomic::AtomicU64>,
    local: u64,
}

impl corestream::Sink<(u64, i64, u64)> for SumSink {
    fn write_batch(&mut self, batch: &mut Vec<(u64, i64, u64)>) -> Result<(), corestream::SinkError> {
        self.local += batch.drain(..).map(|r| r.2).sum::<u64>();
        Ok(())
    }
    fn finish(&mut self) -> Result<(), corestream::SinkError> {
        self.total.fetch_add(self.local, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// How the window benchmark's sequence is split over the source subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceSplit {
    /// Subtask i emits i, i + p, …: the subtasks advance through event time together.
    Interleaved,
    /// Subtask i emits the i-th contiguous range: at parallelism 2 the second half of event
    /// time waits in state for the first half's watermark.
    Contiguous,
}

/// Declares the window benchmark on `env`: a sequence of N events, keyed by
/// (v × 7919) mod K, at event time v / 10 ms with monotonic watermarks, counted per key and
/// window; the sink adds the counts into `total`.
pub fn window_job(
    env: &StreamEnvironment,
    events: u64,
    keys: u64,
    assigner: corestream::WindowAssigner,
    split: SequenceSplit,
    total: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let source = match split {
        SequenceSplit::Interleaved => env.from_sequence_interleaved(0..events),
        SequenceSplit::Contiguous => env.from_sequence(0..events),
    };
    source
        .map(move |v| (window_key(v, keys), window_time(v)))
        .assign_timestamps_and_watermarks(
            corestream::WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &(u64, i64)| r.1),
        )
        .key_by(|r: &(u64, i64)| r.0)
        .window(assigner)
        .aggregate_process(
            CountAgg,
            |ctx: &corestream::WindowContext<'_, u64>, n: u64, out: &mut Vec<(u64, i64, u64)>| {
                out.push((*ctx.key, ctx.window.start, n))
            },
        )
        .name("Window Count")
        .add_sink("Sink: sum of counts", move |_| Ok(SumSink { total: total.clone(), local: 0 }));
}

/// The sum of all window counts the window benchmark must produce: every event counts once
/// per window it belongs to.
pub fn window_expected_total(events: u64, assigner: corestream::WindowAssigner) -> u64 {
    match assigner {
        corestream::WindowAssigner::Sliding { size, slide, .. } if size % slide == 0 => events * (size / slide) as u64,
        corestream::WindowAssigner::Sliding { .. } => {
            let mut windows = Vec::new();
            (0..events)
                .map(|v| {
                    windows.clear();
                    assigner.assign(window_time(v), &mut windows);
                    windows.len() as u64
                })
                .sum()
        }
        _ => events,
    }
}

/// Starts the window benchmark in `env` (configured by the caller); returns the job and the
/// shared total its sink fills.
pub fn start_window(
    env: StreamEnvironment,
    events: u64,
    keys: u64,
    assigner: corestream::WindowAssigner,
    split: SequenceSplit,
) -> Result<(JobHandle, std::sync::Arc<std::sync::atomic::AtomicU64>), JobError> {
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    window_job(&env, events, keys, assigner, split, total.clone());
    Ok((env.execute_async("window")?, total))
}

/// Peak resident memory of this process in bytes (`VmHWM`), where Linux reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
