//! Helpers for the end-to-end checkpoint tests: an embedded cluster running registered jobs,
//! submission with checkpoints, waiting for a terminal state, and reading the completed
//! checkpoints' metadata from the checkpoint directory.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corestream::checkpoint::metadata::CheckpointMetadata;
use corestream::checkpoint::request::{CheckpointRequest, RestoreRequest};
use corestream::checkpoint::storage::{CheckpointStorage, FsCheckpointStorage};
use corestream::checkpoint::CheckpointMode;
use corestream::conf::{FixedDelaySettings, RestartSettings};
use corestream::jobmanager::api::{ClusterApi, JobExecutionResult, JobState, SubmitRequest};
use corestream::rpc::messages::Accumulator;

/// How long any one job of these tests may run before the test gives up.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// A job's checkpoint settings for a test: every `interval_ms`, into `dir`, keeping every
/// completed checkpoint (so the test can read them all).
pub fn checkpoints(dir: &Path, interval_ms: u64, mode: CheckpointMode, unaligned: bool) -> CheckpointRequest {
    CheckpointRequest {
        interval_ms: Some(interval_ms),
        dir: Some(dir.display().to_string()),
        mode: Some(mode),
        unaligned: Some(unaligned),
        retained: Some(1000),
        timeout_ms: Some(60_000),
        ..Default::default()
    }
}

/// Restart parameters for the tests: fixed-delay, up to 10 restarts, 10 ms apart.
pub fn restarts() -> RestartSettings {
    RestartSettings {
        fixed_delay: FixedDelaySettings { attempts: 10, delay: Duration::from_millis(10) },
        ..Default::default()
    }
}

/// Submits `job` by name (restart strategy `fixed-delay`).
pub fn submit(
    api: &Arc<dyn ClusterApi>,
    job: &str,
    args: &[String],
    parallelism: u32,
    checkpoints: Option<CheckpointRequest>,
    restore: Option<RestoreRequest>,
) -> String {
    let request = SubmitRequest {
        job: job.into(),
        args: args.to_vec(),
        parallelism: Some(parallelism),
        checkpoints,
        restore,
        restart_strategy: Some("fixed-delay".into()),
        ..Default::default()
    };
    api.submit(request).unwrap_or_else(|e| panic!("submitting {job}: {e}")).jobid.to_string()
}

/// Waits until the job is terminal and returns its result.
pub fn wait_terminal(api: &Arc<dyn ClusterApi>, id: &str) -> JobExecutionResult {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let r = api.execution_result(id).expect("the job is known");
        if r.state.is_terminal() {
            return r;
        }
        if Instant::now() > deadline {
            let details = api
                .job(id)
                .map(|d| format!("{:?} attempts {}, failure {:?}", d.overview.state, d.overview.attempts, d.failure));
            panic!("job {id} did not end within {JOB_TIMEOUT:?}: {details:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `cond` holds (polling), or panics naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A finished job's accumulator `name` as a count.
pub fn count(result: &JobExecutionResult, name: &str) -> u64 {
    let outcome = result.result.as_ref().expect("a terminal job has an outcome");
    match outcome.accumulators.get(name) {
        Some(Accumulator::Count(n)) => *n,
        other => panic!("accumulator {name}: {other:?} (all: {:?})", outcome.accumulators),
    }
}

/// Asserts the job finished, showing why not.
pub fn assert_finished(api: &Arc<dyn ClusterApi>, id: &str, result: &JobExecutionResult) {
    if result.state != JobState::Finished {
        let details = api.job(id).ok();
        panic!(
            "job {id} ended {:?}: {:?}; exceptions: {:?}",
            result.state,
            result.result.as_ref().and_then(|o| o.failure.clone()),
            details.map(|d| d.exceptions)
        );
    }
}

/// Every completed checkpoint's metadata in `dir`, oldest first.
pub fn completed(dir: &Path) -> Vec<CheckpointMetadata> {
    let Ok(storage) = FsCheckpointStorage::open(dir) else { return Vec::new() };
    storage.list().expect("listing checkpoints").into_iter().filter_map(|id| storage.read_metadata(id).ok()).collect()
}

/// The files of `dir`'s shared area (incremental snapshots) that no complete checkpoint in
/// `dir` uses.
pub fn unreferenced_shared(dir: &Path) -> Vec<String> {
    let Ok(storage) = FsCheckpointStorage::open(dir) else { return Vec::new() };
    let used: std::collections::HashSet<String> = completed(dir)
        .iter()
        .flat_map(|m| m.tasks.iter().flat_map(|t| t.handle.shared.iter().map(|r| r.file.name.clone())))
        .collect();
    storage.list_shared().expect("listing shared files").into_iter().filter(|f| !used.contains(f)).collect()
}

/// Bytes of in-flight data (channel state) one checkpoint persisted over all its tasks.
pub fn channel_bytes(meta: &CheckpointMetadata) -> u64 {
    meta.tasks.iter().map(|t| t.metrics.channel_bytes).sum()
}

/// A paced, rewindable source: subtask `s` emits `record(s, seq)` for `seq` in `0..end`, at
/// most `rate` records per second (0: unpaced) and `chunk` per batch; its position is the next
/// `seq`, and a restored instance paces from its restored position.
pub struct PacedSource<T> {
    subtask: u32,
    next: u64,
    end: u64,
    rate: u64,
    chunk: u64,
    started: Instant,
    /// `next` when this instance started (a restored one starts past 0).
    first: u64,
    record: fn(u32, u64) -> T,
}

impl<T> PacedSource<T> {
    pub fn new(subtask: u32, end: u64, rate: u64, chunk: u64, record: fn(u32, u64) -> T) -> Self {
        Self { subtask, next: 0, end, rate, chunk, started: Instant::now(), first: 0, record }
    }
}

impl<T: 'static> corestream::SourceFunction<T> for PacedSource<T> {
    const REWINDABLE: bool = true;

    fn next_batch(
        &mut self,
        out: &mut Vec<T>,
        max_records: usize,
    ) -> Result<corestream::SourceStatus, corestream::SourceError> {
        if self.next >= self.end {
            return Ok(corestream::SourceStatus::Finished);
        }
        let mut n = (max_records as u64).min(self.chunk).min(self.end - self.next);
        if self.rate > 0 {
            let due = self.started.elapsed().as_micros() as u64 * self.rate / 1_000_000;
            let allowed = (self.first + due).saturating_sub(self.next);
            if allowed == 0 {
                let at = self.started + Duration::from_micros((self.next - self.first + 1) * 1_000_000 / self.rate);
                return Ok(corestream::SourceStatus::IdleUntil(at));
            }
            n = n.min(allowed);
        }
        let s = self.subtask;
        out.extend((self.next..self.next + n).map(|seq| (self.record)(s, seq)));
        self.next += n;
        Ok(if self.next >= self.end { corestream::SourceStatus::Finished } else { corestream::SourceStatus::More })
    }

    fn snapshot_state(&mut self) -> Result<Vec<u8>, corestream::SourceError> {
        Ok(self.next.to_le_bytes().to_vec())
    }

    fn restore_state(&mut self, position: &[u8]) -> Result<(), corestream::SourceError> {
        let bytes: [u8; 8] = position.try_into().map_err(|_| format!("a position of {} bytes", position.len()))?;
        self.next = u64::from_le_bytes(bytes);
        self.first = self.next;
        self.started = Instant::now();
        Ok(())
    }
}
