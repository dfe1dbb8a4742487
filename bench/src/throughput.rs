//! Throughput benchmarks as jobs: `passthrough` (sequence → map → filter → discard, all in one
//! chain) and `keyed-sum` (sequence → hash exchange → running sum per key → discard). Each run
//! reports events per second over the job's wall time, measured by the job itself.

use std::time::Duration;

use corestream::{JobError, JobHandle, JobResult, LocalCluster, StreamEnvironment};

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

/// Starts the passthrough job.
pub fn start_passthrough(cluster: &LocalCluster, events: u64, parallelism: u32) -> Result<JobHandle, JobError> {
    let mut env = cluster.environment();
    env.set_parallelism(parallelism);
    passthrough_job(&env, events);
    env.execute_async("passthrough")
}

/// Starts the keyed-sum job.
pub fn start_keyed_sum(cluster: &LocalCluster, events: u64, keys: u64, parallelism: u32) -> Result<JobHandle, JobError> {
    let mut env = cluster.environment();
    env.set_parallelism(parallelism);
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
