//! What a job reports: records per operator, exchange and backpressure counters per task, and
//! warnings about input it could not use. Counters are atomics updated once per batch or
//! buffer, readable while the job runs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
}

impl TaskCounters {
    #[inline]
    pub(crate) fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
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
        writeln!(f, "  buffers sent {buffers}, backpressure waits {waits}, buffers reserved {}", self.buffers_reserved)?;
        for w in &self.warnings {
            writeln!(f, "  warning: {} (subtask {}): {}", w.operator, w.subtask, w.message)?;
        }
        Ok(())
    }
}
