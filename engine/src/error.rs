//! Typed errors of the engine: what failed, on what, and what to do about it.

use std::sync::Arc;

use corestream_netstack::{NetError, RecordError};
use thiserror::Error;

/// Why a cluster could not start.
#[derive(Debug, Error)]
pub enum StartupError {
    #[error(
        "RLIMIT_MEMLOCK is {limit_kib} KiB but {executors} io_uring executor(s) (one per slot, and a TaskManager's \
         network executor) need at least {needed_kib} KiB of locked memory; raise it with `ulimit -l {needed_kib}` (or `LimitMEMLOCK=` in a systemd unit, \
         `memlock` in /etc/security/limits.conf), run with CAP_IPC_LOCK, or start fewer slots"
    )]
    MemlockTooLow { limit_kib: u64, needed_kib: u64, executors: u32 },
    #[error(
        "io_uring is disabled on this machine (/proc/sys/kernel/io_uring_disabled = {value}); \
         enable it with `sysctl kernel.io_uring_disabled=0`"
    )]
    IoUringDisabled { value: String },
    #[error("io_uring is not usable here: {message}; corestream needs Linux 5.8+ with io_uring allowed (check seccomp and container policies)")]
    IoUringUnavailable { message: String },
    #[error("invalid cluster configuration: {0}")]
    InvalidConfig(String),
}

/// Why a job failed. Messages are self-contained (they include their cause), so no variant
/// also reports a `source()`: error chains print each reason once.
#[derive(Debug, Error, Clone)]
pub enum JobError {
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("operator '{operator}' (subtask {subtask} of {parallelism}) failed: {message}")]
    OperatorFailed { operator: String, subtask: u32, parallelism: u32, message: String },
    #[error("operator '{operator}' (subtask {subtask}) could not write a record: {cause}")]
    Record { operator: String, subtask: u32, cause: RecordError },
    #[error(transparent)]
    Network(#[from] NetError),
    #[error(
        "not enough free slots: the job needs {needed} slot(s) (its highest parallelism) but {free} of {total} are free; \
         lower the parallelism or start the cluster with more slots"
    )]
    NotEnoughSlots { needed: u32, free: u32, total: u32 },
    #[error("slot {slot} could not start its executor: {message}")]
    SlotStart { slot: u32, message: String },
    #[error("{what} '{path}': {cause}")]
    Io { what: String, path: String, cause: Arc<std::io::Error> },
    #[error("checkpointing failed in {place} (subtask {subtask}): {message}")]
    Checkpoint { place: String, subtask: u32, message: String },
    #[error("job '{job}' finished but its output could not be committed: {message}")]
    Commit { job: String, message: String },
    #[error("the job was cancelled")]
    Cancelled,
    /// The TaskManager's network executor could not take the job's connections (it has
    /// stopped, is overloaded, or has no data plane yet).
    #[error("the data connections of this TaskManager are unavailable: {reason}")]
    DataPlaneUnavailable { reason: String },
}

impl JobError {
    /// Whether running the job again could succeed without changing it (for restart strategies).
    /// A failure of user code, of file I/O or of a checkpoint is, as in Flink (the restart
    /// strategy bounds how often); an invalid job or a record too large for any buffer is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            // Retrying helps only if other jobs may free what this one needs.
            JobError::Network(NetError::InsufficientBuffers { requested, capacity, .. }) => requested <= capacity,
            JobError::NotEnoughSlots { needed, total, .. } => needed <= total,
            JobError::Network(e) => e.is_retryable(),
            JobError::SlotStart { .. } | JobError::DataPlaneUnavailable { .. } => true,
            JobError::OperatorFailed { .. } | JobError::Io { .. } | JobError::Checkpoint { .. } => true,
            JobError::InvalidJob(_) | JobError::Record { .. } | JobError::Commit { .. } | JobError::Cancelled => false,
        }
    }
}

/// A failure inside a task, before it is attributed to an operator name.
#[derive(Debug, Clone)]
pub(crate) enum TaskError {
    User {
        node: usize,
        message: String,
    },
    Record {
        node: usize,
        cause: RecordError,
    },
    Net(NetError),
    Io {
        what: String,
        path: String,
        cause: Arc<std::io::Error>,
    },
    /// Snapshotting, restoring or committing state failed in a node (`None`: in the task
    /// itself, e.g. its channel state).
    Checkpoint {
        node: Option<usize>,
        message: String,
    },
    Cancelled,
}

impl From<NetError> for TaskError {
    fn from(e: NetError) -> Self {
        TaskError::Net(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_a_running_job_are_retried_and_invalid_jobs_are_not() {
        let operator =
            JobError::OperatorFailed { operator: "map".into(), subtask: 0, parallelism: 2, message: "panicked".into() };
        let checkpoint = JobError::Checkpoint { place: "sink".into(), subtask: 1, message: "disk full".into() };
        let io =
            JobError::Io { what: "reading".into(), path: "/x".into(), cause: Arc::new(std::io::Error::other("eio")) };
        for e in [operator, checkpoint, io] {
            assert!(e.is_retryable(), "{e}");
        }
        for e in [JobError::InvalidJob("no such operator".into()), JobError::Cancelled] {
            assert!(!e.is_retryable(), "{e}");
        }
    }
}
