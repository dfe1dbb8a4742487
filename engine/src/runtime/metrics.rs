//! What a job reports: records per operator, exchange and backpressure counters per task,
//! latency-marker histograms per sink and source subtask, traffic per connection to another
//! TaskManager process, and warnings about input it could not
//! use. Counters are atomics updated once per batch or buffer, readable while the job runs;
//! latency histograms sit behind a mutex taken once per marker, never per record.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Exchange and scheduling counters of one task.
#[derive(Debug, Default)]
pub struct TaskCounters {
    pub buffers_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub buffers_in: AtomicU64,
    pub flushes_full: AtomicU64,
    pub flushes_idle: AtomicU64,
    pub flushes_timeout: AtomicU64,
    /// Flushes forced by an event or the end of input, which must follow the records before it.
    pub flushes_final: AtomicU64,
    /// Times the task stopped because its output had no room (no credit, or a full sink).
    pub backpressure_waits: AtomicU64,
    pub backpressure_ns: AtomicU64,
    /// Times a producer was left with finished buffers and no credit.
    pub credit_stalls: AtomicU64,
    /// The task's [`TaskPhase`], as a number.
    pub phase: std::sync::atomic::AtomicU8,
}

/// Where a task is in its life, as its TaskManager reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskPhase {
    Deploying = 0,
    Running = 1,
    Finished = 2,
    Failed = 3,
    Cancelled = 4,
}

impl TaskCounters {
    pub(crate) fn set_phase(&self, phase: TaskPhase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub fn phase(&self) -> TaskPhase {
        match self.phase.load(Ordering::Acquire) {
            0 => TaskPhase::Deploying,
            1 => TaskPhase::Running,
            2 => TaskPhase::Finished,
            3 => TaskPhase::Failed,
            _ => TaskPhase::Cancelled,
        }
    }
}

impl TaskCounters {
    #[inline]
    pub(crate) fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// A histogram of latency-marker ages in nanoseconds: three significant figures, growing to
/// whatever the largest age needs.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("three significant figures are within hdrhistogram's 0..=5")
}

/// The ages of the latency markers one sink subtask received, by the source subtask that
/// emitted them (few source subtasks, so a short vector beats a map).
#[derive(Debug, Default)]
pub(crate) struct LatencyHistograms {
    by_source: Mutex<Vec<(u32, Histogram<u64>)>>,
}

impl LatencyHistograms {
    pub(crate) fn record(&self, source_subtask: u32, age_ns: u64) {
        let mut by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let index = match by_source.iter().position(|(s, _)| *s == source_subtask) {
            Some(i) => i,
            None => {
                by_source.push((source_subtask, latency_histogram()));
                by_source.len() - 1
            }
        };
        let histogram = &mut by_source[index].1;
        // `record` grows the histogram; `saturating_record` would clamp to its current range.
        if histogram.record(age_ns).is_err() {
            histogram.saturating_record(age_ns);
        }
    }

    /// Adds this subtask's histograms into `into`, by source subtask.
    pub(crate) fn merge_into(&self, into: &mut Vec<(u32, Histogram<u64>)>) {
        let by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        for (source, h) in by_source.iter() {
            match into.iter_mut().find(|(s, _)| s == source) {
                Some((_, merged)) => {
                    if let Err(e) = merged.add(h) {
                        tracing::warn!(source_subtask = source, "latency histograms not merged: {e}");
                    }
                }
                None => into.push((*source, h.clone())),
            }
        }
    }
}

/// Latency of the markers of one source subtask at one sink, over the sink's subtasks: the time
/// from the source's emission to the sink's receipt, on the host's monotonic clock (valid when
/// source and sink run on one host).
#[derive(Debug, Clone)]
pub struct LatencySummary {
    /// The sink operator's name and graph node.
    pub sink: String,
    pub sink_node: usize,
    pub source_subtask: u32,
    /// Markers received.
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub p99_9: Duration,
    pub max: Duration,
    /// The histogram the figures come from (nanoseconds), for merging results of several
    /// processes.
    pub histogram: Histogram<u64>,
}

impl LatencySummary {
    pub fn new(sink: String, sink_node: usize, source_subtask: u32, histogram: Histogram<u64>) -> Self {
        let at = |q: f64| Duration::from_nanos(histogram.value_at_quantile(q));
        Self {
            sink,
            sink_node,
            source_subtask,
            count: histogram.len(),
            p50: at(0.5),
            p99: at(0.99),
            p99_9: at(0.999),
            max: Duration::from_nanos(histogram.max()),
            histogram,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Every source ended and every record was processed.
    Finished,
    /// The job was cancelled by its owner.
    Cancelled,
}

/// Records of one operator, summed over its subtasks.
#[derive(Debug, Clone)]
pub struct OperatorSummary {
    pub node: usize,
    pub name: String,
    pub parallelism: u32,
    pub records_in: u64,
    pub records_out: u64,
    /// Records of event-time windows that arrived after their windows' allowed lateness and
    /// had no late side output to go to.
    pub late_records_dropped: u64,
    /// (records in, records out) of each subtask.
    pub per_subtask: Vec<(u64, u64)>,
}

/// Counters of one subtask of one chain.
#[derive(Debug, Clone)]
pub struct TaskSummary {
    pub task: String,
    pub subtask: u32,
    pub slot: u32,
    pub buffers_in: u64,
    pub buffers_out: u64,
    pub bytes_out: u64,
    pub flushes_full: u64,
    pub flushes_idle: u64,
    pub flushes_timeout: u64,
    pub flushes_final: u64,
    pub backpressure_waits: u64,
    pub backpressure_time: Duration,
    pub credit_stalls: u64,
}

/// Traffic of one connection to another TaskManager process, as this process saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionSummary {
    /// The peer, e.g. `TaskManager 1 (127.0.0.1:41235)`.
    pub peer: String,
    /// Frames, buffers and bytes each way, and the credit announced to the peer's producers.
    pub stats: corestream_netstack::SessionStats,
    /// Times a local producer on a channel to this peer was left with a backlog and no credit.
    pub remote_credit_stalls: u64,
}

/// Input a source could not use; never dropped silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobWarning {
    pub operator: String,
    pub subtask: u32,
    pub count: u64,
    pub message: String,
}

/// The outcome of a job.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job_name: String,
    pub status: JobStatus,
    pub wall_time: Duration,
    pub operators: Vec<OperatorSummary>,
    pub tasks: Vec<TaskSummary>,
    pub warnings: Vec<JobWarning>,
    /// Latency markers per sink and source subtask; empty unless latency tracking is on.
    pub latency: Vec<LatencySummary>,
    /// Connections to other TaskManager processes; empty when the job ran in one process.
    pub network: Vec<ConnectionSummary>,
    /// Most buffers of the TaskManager's pool in use at once since the TaskManager started (the
    /// pool's high-water mark, which covers every job it ran so far, this one included).
    pub pool_peak_in_use: u64,
    pub buffers_reserved: u32,
    pub plan: String,
}

impl JobResult {
    /// The first operator whose name starts with `prefix`.
    pub fn operator(&self, prefix: &str) -> Option<&OperatorSummary> {
        self.operators.iter().find(|o| o.name.starts_with(prefix))
    }

    /// Records that entered operators whose name starts with `prefix` (0 if none).
    pub fn records_in(&self, prefix: &str) -> u64 {
        self.operator(prefix).map_or(0, |o| o.records_in)
    }

    /// Backpressure waits summed over the subtasks of chains whose name contains `name`.
    pub fn backpressure_waits(&self, name: &str) -> u64 {
        self.tasks.iter().filter(|t| t.task.contains(name)).map(|t| t.backpressure_waits).sum()
    }
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "job '{}' {:?} in {:.3} s", self.job_name, self.status, self.wall_time.as_secs_f64())?;
        writeln!(f, "  {:<40} {:>5} {:>14} {:>14}", "operator", "par", "records in", "records out")?;
        for o in &self.operators {
            writeln!(f, "  {:<40} {:>5} {:>14} {:>14}", o.name, o.parallelism, o.records_in, o.records_out)?;
        }
        let waits: u64 = self.tasks.iter().map(|t| t.backpressure_waits).sum();
        let buffers: u64 = self.tasks.iter().map(|t| t.buffers_out).sum();
        writeln!(
            f,
            "  buffers sent {buffers}, backpressure waits {waits}, buffers reserved {}",
            self.buffers_reserved
        )?;
        if self.pool_peak_in_use > 0 {
            writeln!(f, "  pool peak in use {} buffer(s)", self.pool_peak_in_use)?;
        }
        for c in &self.network {
            writeln!(
                f,
                "  network {}: out {} frame(s), {} buffer(s), {} byte(s); in {} frame(s), {} buffer(s), {} byte(s); \
                 {} credit announcement(s), {} remote credit stall(s)",
                c.peer,
                c.stats.frames_out,
                c.stats.buffers_out,
                c.stats.bytes_out,
                c.stats.frames_in,
                c.stats.buffers_in,
                c.stats.bytes_in,
                c.stats.credit_announcements,
                c.remote_credit_stalls
            )?;
        }
        for l in &self.latency {
            writeln!(
                f,
                "  latency {} <- source subtask {}: {} markers, p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
                l.sink, l.source_subtask, l.count, l.p50, l.p99, l.p99_9, l.max
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {} (subtask {}): {}", w.operator, w.subtask, w.message)?;
        }
        Ok(())
    }
}
