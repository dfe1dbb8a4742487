//! The checkpoint coordinator's decisions, as Flink's `CheckpointCoordinator`,
//! `CheckpointRequestDecider`, `CheckpointFailureManager` and `CheckpointSubsumeHelper` make
//! them: when to trigger, when a checkpoint is complete, expired or declined, what to notify,
//! which checkpoints to keep and which to delete, when the job must fail.
//!
//! [`Coordinator`] is a pure state machine: no I/O, no clock, no executor. The job master
//! feeds it events with the time they happened (`now_ms`, milliseconds since the Unix epoch:
//! only differences and the recorded times depend on it) and executes the [`Action`]s it
//! returns: sending triggers and notices, writing the metadata, deleting files. It asks
//! [`Coordinator::next_wakeup_ms`] when to call [`Coordinator::on_tick`] again.
//!
//! Invariants: ids are never reused (a restored job starts after every id in storage); at most
//! `max_concurrent` checkpoints are pending; a checkpoint is complete only when every task
//! acknowledged and its metadata was written; the newest completed checkpoint is never
//! deleted; a file or directory is deleted only when it belongs to a checkpoint of this
//! coordinator that is not (or no longer) wanted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::metadata::{CheckpointMetadata, JobLayout, TaskEntry, TaskStateHandle, METADATA_FORMAT};
use super::shared::SharedRegistry;
use super::{BarrierOptions, CheckpointId, CheckpointNotice, TaskCheckpointMetrics, TaskId};

/// How many checkpoints [`CheckpointStats::history`] keeps (Flink's `web.checkpoints.history`
/// is 10).
pub const HISTORY_LEN: usize = 10;

/// The longest `retained`: every retained checkpoint stays on disk.
pub const RETAINED_MAX: u32 = 1000;

/// The most checkpoints pending at once.
pub const MAX_CONCURRENT_MAX: u32 = 100;

/// When and how checkpoints are taken. Durations are whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// Time between two periodic triggers.
    #[serde(with = "millis")]
    pub interval: Duration,
    /// A checkpoint not complete this long after its trigger is aborted (a failure).
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// A periodic checkpoint is triggered at least this long after the last completion.
    #[serde(with = "millis")]
    pub min_pause: Duration,
    pub max_concurrent: u32,
    /// Consecutive failed checkpoints the job survives; one more fails it.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept on disk; older ones are deleted.
    pub retained: u32,
    pub barrier: BarrierOptions,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl CheckpointConfig {
    /// Checkpoints every `interval` with Flink's defaults: timeout 10 min, no minimum pause,
    /// one at a time, no tolerated failure, one retained.
    pub fn with_interval(interval: Duration) -> Self {
        Self {
            interval,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: 0,
            retained: 1,
            barrier: BarrierOptions::default(),
        }
    }

    /// Refuses values no job can run with, naming the setting.
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        let bad = |what: String| Err(CoordinatorError::Config(what));
        if self.interval < Duration::from_millis(1) {
            return bad(format!("the checkpoint interval must be at least 1 ms (it is {:?})", self.interval));
        }
        if self.timeout < Duration::from_millis(1) {
            return bad(format!("the checkpoint timeout must be at least 1 ms (it is {:?})", self.timeout));
        }
        if !(1..=MAX_CONCURRENT_MAX).contains(&self.max_concurrent) {
            return bad(format!(
                "max concurrent checkpoints must be 1 to {MAX_CONCURRENT_MAX} (it is {})",
                self.max_concurrent
            ));
        }
        if !(1..=RETAINED_MAX).contains(&self.retained) {
            return bad(format!("retained checkpoints must be 1 to {RETAINED_MAX} (it is {})", self.retained));
        }
        Ok(())
    }
}

/// A completed checkpoint the coordinator keeps track of (for retention and statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedCheckpoint {
    pub id: CheckpointId,
    pub trigger_ms: u64,
    pub completed_ms: u64,
    pub state_bytes: u64,
}

impl From<&CheckpointMetadata> for CompletedCheckpoint {
    fn from(m: &CheckpointMetadata) -> Self {
        Self { id: m.id, trigger_ms: m.trigger_ms, completed_ms: m.completed_ms, state_bytes: m.state_bytes }
    }
}

/// What the job master must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `TriggerCheckpoint` to these source tasks.
    Trigger { id: CheckpointId, timestamp_ms: i64, options: BarrierOptions, sources: Vec<TaskId> },
    /// Every task acknowledged: write this metadata (last, synced), then call
    /// [`Coordinator::on_metadata_written`].
    WriteMetadata(Box<CheckpointMetadata>),
    /// Tell every task still running.
    Notify(CheckpointNotice),
    /// Delete the directory of an aborted or expired checkpoint.
    Discard { id: CheckpointId },
    /// Delete one task file that no checkpoint will use (an acknowledgement from an unknown
    /// task, or a second, different file for the same task).
    DiscardFile(TaskStateHandle),
    /// Retention: delete these completed checkpoints (never the newest).
    Subsume { ids: Vec<CheckpointId> },
    /// Delete these shared files (`shared/<file>`): no retained or pending checkpoint uses them.
    DiscardShared { files: Vec<String> },
    /// More consecutive checkpoints failed than tolerated.
    FailJob { reason: String },
    /// Savepoint `id` is complete: its metadata was written (where the job master put it).
    SavepointCompleted { id: CheckpointId },
    /// Savepoint `id` will never complete.
    SavepointFailed { id: CheckpointId, reason: String },
}

/// Why a checkpoint was not triggered on request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerRefused {
    #[error("the job's checkpointing has stopped (the job is ending or failed)")]
    Stopped,
    #[error("{0} has finished; checkpoints are taken only while every task runs")]
    TaskFinished(TaskId),
    #[error("{pending} checkpoints are in progress, the most allowed at once (execution.checkpointing.max-concurrent-checkpoints)")]
    TooManyPending { pending: u32 },
    #[error("savepoint {0} is in progress; one savepoint is taken at a time")]
    SavepointInProgress(CheckpointId),
    #[error("a savepoint is already requested; one savepoint is taken at a time")]
    SavepointQueued,
}

/// Why a coordinator cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid checkpoint configuration: {0}")]
    Config(String),
    #[error("invalid job layout for checkpoints: {0}")]
    Layout(String),
}

/// Why a checkpoint ended without completing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AbortReason {
    Expired { after_ms: u64 },
    Declined { task: TaskId, reason: String },
    TaskFinished { task: TaskId },
    Subsumed { by: CheckpointId },
    MetadataFailed { reason: String },
    Stopped,
}

impl AbortReason {
    /// Whether it counts against `tolerable_failures` (as Flink's failure manager: expiry,
    /// declines and failed writes do; subsumption and the job's own end do not).
    fn counts(&self) -> bool {
        matches!(self, Self::Expired { .. } | Self::Declined { .. } | Self::MetadataFailed { .. })
    }
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Expired { after_ms } => write!(f, "expired after {after_ms} ms before every task acknowledged"),
            Self::Declined { task, reason } => write!(f, "declined by {task}: {reason}"),
            Self::TaskFinished { task } => write!(f, "{task} finished before acknowledging"),
            Self::Subsumed { by } => write!(f, "subsumed by checkpoint {by}"),
            Self::MetadataFailed { reason } => write!(f, "writing its metadata failed: {reason}"),
            Self::Stopped => f.write_str("the job's checkpointing stopped"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStatus {
    InProgress,
    Completed,
    Failed,
}

/// One task's acknowledgement, for statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAckStats {
    pub task: TaskId,
    pub ack_ms: u64,
    pub file_bytes: u64,
    pub metrics: TaskCheckpointMetrics,
}

/// One checkpoint, as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub id: CheckpointId,
    pub status: CheckpointStatus,
    /// Triggered through the REST API rather than by the interval.
    pub manual: bool,
    /// A savepoint (canonical format, moved out of the checkpoint storage when complete).
    #[serde(default)]
    pub savepoint: bool,
    pub trigger_ms: u64,
    pub latest_ack_ms: Option<u64>,
    /// When it completed or failed.
    pub end_ms: Option<u64>,
    /// From the trigger to the end (or to the latest acknowledgement, in progress).
    pub duration_ms: u64,
    pub tasks_total: u32,
    pub tasks_acknowledged: u32,
    /// Bytes of the acknowledged task files.
    pub state_bytes: u64,
    /// Bytes of shared files (incremental snapshots) uploaded for this checkpoint.
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Bytes of every shared file the acknowledged tasks' state uses.
    #[serde(default)]
    pub shared_bytes: u64,
    /// Bytes of in-flight data persisted (unaligned).
    pub channel_bytes: u64,
    /// The longest alignment, synchronous and asynchronous part of any task.
    pub alignment_ms_max: u64,
    pub sync_ms_max: u64,
    pub async_ms_max: u64,
    /// CPU time every acknowledged task spent on it, in microseconds.
    pub cpu_us: u64,
    pub unaligned: bool,
    pub failure: Option<AbortReason>,
    pub tasks: Vec<TaskAckStats>,
}

/// Counts since the coordinator started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCounts {
    pub triggered: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Acknowledgements the coordinator did not use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredAcks {
    /// A second acknowledgement of the same task for the same checkpoint.
    pub duplicate: u64,
    /// From a task that is not part of the job.
    pub unknown_task: u64,
    /// For a checkpoint of this coordinator that had already ended.
    pub late: u64,
    /// For a checkpoint this coordinator never triggered.
    pub unknown_checkpoint: u64,
}

/// The statistics of a job's checkpoints (serde, for the REST API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStats {
    pub counts: CheckpointCounts,
    pub latest_completed: Option<CheckpointSummary>,
    pub latest_failed: Option<CheckpointSummary>,
    /// The last [`HISTORY_LEN`] checkpoints, newest first, in progress ones included.
    pub history: Vec<CheckpointSummary>,
    pub ignored_acks: IgnoredAcks,
    pub consecutive_failures: u32,
    /// The completed checkpoints on disk, oldest first.
    pub retained: Vec<CompletedCheckpoint>,
    /// Periodic triggers have stopped (a task finished, the job failed or stops).
    pub stopped: bool,
}

#[derive(Debug, Clone)]
struct Ack {
    handle: TaskStateHandle,
    metrics: TaskCheckpointMetrics,
    ack_ms: u64,
}

#[derive(Debug)]
struct Pending {
    id: CheckpointId,
    trigger_ms: u64,
    deadline_ms: u64,
    manual: bool,
    savepoint: bool,
    awaiting: BTreeSet<TaskId>,
    acks: BTreeMap<TaskId, Ack>,
    /// Every task acknowledged; the metadata is being written (it no longer expires).
    finalizing: Option<u64>,
}

impl Pending {
    fn summary(&self, status: CheckpointStatus, end_ms: Option<u64>, tasks_total: u32) -> CheckpointSummary {
        let latest_ack_ms = self.acks.values().map(|a| a.ack_ms).max();
        let metric =
            |f: fn(&TaskCheckpointMetrics) -> u64| self.acks.values().map(|a| f(&a.metrics)).max().unwrap_or(0);
        let last = end_ms.or(latest_ack_ms).unwrap_or(self.trigger_ms);
        CheckpointSummary {
            id: self.id,
            status,
            manual: self.manual,
            savepoint: self.savepoint,
            trigger_ms: self.trigger_ms,
            latest_ack_ms,
            end_ms,
            duration_ms: last.saturating_sub(self.trigger_ms),
            tasks_total,
            tasks_acknowledged: self.acks.len() as u32,
            state_bytes: self.acks.values().map(|a| a.handle.size).sum(),
            uploaded_bytes: self.acks.values().map(|a| a.handle.uploaded_bytes()).sum(),
            shared_bytes: self.acks.values().map(|a| a.handle.shared_bytes()).sum(),
            channel_bytes: self.acks.values().map(|a| a.metrics.channel_bytes).sum(),
            alignment_ms_max: metric(|m| m.alignment_ms),
            sync_ms_max: metric(|m| m.sync_ms),
            async_ms_max: metric(|m| m.async_ms),
            cpu_us: self.acks.values().map(|a| a.metrics.cpu_us).sum(),
            unaligned: self.acks.values().any(|a| a.metrics.unaligned),
            failure: None,
            tasks: self
                .acks
                .iter()
                .map(|(&task, a)| TaskAckStats {
                    task,
                    ack_ms: a.ack_ms,
                    file_bytes: a.handle.size,
                    metrics: a.metrics,
                })
                .collect(),
        }
    }
}

/// The checkpoint coordinator of one job attempt (see the module documentation).
#[derive(Debug)]
pub struct Coordinator {
    config: CheckpointConfig,
    layout: JobLayout,
    tasks: BTreeSet<TaskId>,
    sources: Vec<TaskId>,
    /// The first id this coordinator triggers: ids below it belong to earlier attempts.
    first_id: CheckpointId,
    next_id: CheckpointId,
    pending: BTreeMap<CheckpointId, Pending>,
    /// Oldest first.
    completed: VecDeque<CompletedCheckpoint>,
    /// The newest id that completed while this coordinator ran (failures of older ones do
    /// not count, as in Flink).
    last_completed_id: Option<CheckpointId>,
    last_completion_ms: Option<u64>,
    next_periodic_ms: u64,
    consecutive_failures: u32,
    finished: Option<TaskId>,
    stopped: bool,
    job_failed: bool,
    counts: CheckpointCounts,
    ignored: IgnoredAcks,
    history: VecDeque<CheckpointSummary>,
    /// The shared files of completed checkpoints (incremental snapshots).
    shared: SharedRegistry,
    /// A savepoint was requested and waits for room under the concurrency limit.
    savepoint_queued: bool,
}

impl Coordinator {
    /// A coordinator for a job with `layout` (every task of every vertex must acknowledge),
    /// whose checkpoints are injected at `sources`, started at `now_ms` (the first periodic
    /// trigger is due one interval later). `first_id` is the first id to use (after a
    /// restore: after every id in the storage); `completed` are the completed checkpoints
    /// already in storage, oldest first, which retention counts.
    pub fn new(
        config: CheckpointConfig,
        layout: JobLayout,
        sources: Vec<TaskId>,
        first_id: CheckpointId,
        completed: Vec<CompletedCheckpoint>,
        now_ms: u64,
    ) -> Result<Self, CoordinatorError> {
        config.validate()?;
        let layout_error = |what: String| Err(CoordinatorError::Layout(what));
        if layout.vertices.is_empty() {
            return layout_error("the job has no vertices".into());
        }
        if let Some(v) = layout.vertices.iter().find(|v| v.parallelism == 0) {
            return layout_error(format!("vertex '{}' has parallelism 0", v.name));
        }
        let tasks: BTreeSet<TaskId> = layout.tasks().collect();
        if sources.is_empty() {
            return layout_error("no source task to inject barriers at".into());
        }
        if let Some(s) = sources.iter().find(|s| !tasks.contains(s)) {
            return layout_error(format!("source {s} is not a task of the job"));
        }
        if first_id == 0 {
            return layout_error("checkpoint ids start at 1".into());
        }
        if let Some(c) = completed.iter().find(|c| c.id >= first_id) {
            return layout_error(format!("completed checkpoint {} is not before the first id {first_id}", c.id));
        }
        if completed.windows(2).any(|w| w[0].id >= w[1].id) {
            return layout_error("the completed checkpoints are not in ascending order".into());
        }
        let mut sources = sources;
        sources.sort_unstable();
        sources.dedup();
        Ok(Self {
            next_periodic_ms: now_ms.saturating_add(config.interval.as_millis() as u64),
            config,
            layout,
            tasks,
            sources,
            first_id,
            next_id: first_id,
            pending: BTreeMap::new(),
            completed: completed.into(),
            last_completed_id: None,
            last_completion_ms: None,
            consecutive_failures: 0,
            finished: None,
            stopped: false,
            job_failed: false,
            counts: CheckpointCounts::default(),
            ignored: IgnoredAcks::default(),
            history: VecDeque::new(),
            shared: SharedRegistry::default(),
            savepoint_queued: false,
        })
    }

    /// The coordinator with the shared files the completed checkpoints in storage use (after
    /// a restart), so that retention deletes them when their last checkpoint goes.
    pub fn with_shared(mut self, shared: SharedRegistry) -> Self {
        self.shared = shared;
        self
    }

    /// The shared files of completed checkpoints it knows.
    pub fn shared(&self) -> &SharedRegistry {
        &self.shared
    }

    /// Shared files named by pending checkpoints' acknowledgements.
    pub fn pending_shared(&self) -> BTreeSet<String> {
        self.pending
            .values()
            .flat_map(|p| p.acks.values())
            .flat_map(|a| &a.handle.shared)
            .map(|r| r.file.name.clone())
            .collect()
    }

    /// Of `handle`'s shared files, those uploaded for its checkpoint that nothing else uses:
    /// what to delete when the acknowledgement is not used.
    fn unused_uploads(&self, handle: &TaskStateHandle) -> Vec<String> {
        let in_use = self.pending_shared();
        handle
            .shared
            .iter()
            .filter(|r| !r.reused && !self.shared.contains(&r.file.name) && !in_use.contains(&r.file.name))
            .map(|r| r.file.name.clone())
            .collect()
    }

    /// Deletes the shared files no retained or pending checkpoint uses any more.
    fn release_shared(&mut self, actions: &mut Vec<Action>) {
        let oldest = self.completed.front().map(|c| c.id);
        let files = self.shared.release(oldest, &self.pending_shared());
        if !files.is_empty() {
            actions.push(Action::DiscardShared { files });
        }
    }

    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    /// Triggers a periodic checkpoint if one is due and allowed; expires pending checkpoints
    /// past their timeout.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.poll(now_ms, &mut actions);
        actions
    }

    /// Triggers a checkpoint now (the REST API's): the minimum pause does not apply, the
    /// concurrency limit does.
    pub fn trigger_now(&mut self, now_ms: u64) -> Result<(CheckpointId, Vec<Action>), TriggerRefused> {
        let mut actions = Vec::new();
        self.expire(now_ms, &mut actions);
        self.refusal()?;
        let id = self.trigger(now_ms, true, false, &mut actions);
        Ok((id, actions))
    }

    /// Requests a savepoint: triggered now if the concurrency limit allows, else as soon as a
    /// pending checkpoint ends (before any periodic one; the minimum pause does not apply). Its
    /// [`Action::Trigger`] has `options.savepoint` set; it ends with
    /// [`Action::SavepointCompleted`] or [`Action::SavepointFailed`]. One at a time.
    pub fn request_savepoint(&mut self, now_ms: u64) -> Result<Vec<Action>, TriggerRefused> {
        if let Some(p) = self.pending.values().find(|p| p.savepoint) {
            return Err(TriggerRefused::SavepointInProgress(p.id));
        }
        if self.savepoint_queued {
            return Err(TriggerRefused::SavepointQueued);
        }
        match self.refusal() {
            Err(TriggerRefused::TooManyPending { .. }) | Ok(()) => {}
            Err(e) => return Err(e),
        }
        self.savepoint_queued = true;
        let mut actions = Vec::new();
        self.poll(now_ms, &mut actions);
        Ok(actions)
    }

    /// A task's acknowledgement of checkpoint `id` with the handle of what it wrote.
    pub fn on_ack(
        &mut self,
        task: TaskId,
        id: CheckpointId,
        handle: TaskStateHandle,
        metrics: TaskCheckpointMetrics,
        now_ms: u64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        self.expire(now_ms, &mut actions);
        self.acknowledge(task, id, handle, metrics, now_ms, &mut actions);
        self.poll(now_ms, &mut actions);
        actions
    }

    /// A task could not take its part of checkpoint `id`: the checkpoint is aborted.
    pub fn on_decline(&mut self, task: TaskId, id: CheckpointId, reason: String, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.expire(now_ms, &mut actions);
        if self.tasks.contains(&task) && self.pending.get(&id).is_some_and(|p| p.finalizing.is_none()) {
            self.abort(id, AbortReason::Declined { task, reason }, now_ms, &mut actions);
        }
        self.poll(now_ms, &mut actions);
        actions
    }

    /// The outcome of an [`Action::WriteMetadata`].
    pub fn on_metadata_written(&mut self, id: CheckpointId, result: Result<(), String>, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(completed_ms) = self.pending.get(&id).and_then(|p| p.finalizing) else {
            return actions;
        };
        match result {
            Err(reason) => self.abort(id, AbortReason::MetadataFailed { reason }, now_ms, &mut actions),
            Ok(()) if self.pending.get(&id).is_some_and(|p| p.savepoint) => {
                self.complete_savepoint(id, completed_ms, &mut actions)
            }
            Ok(()) => match self.completed.back() {
                Some(newest) if newest.id > id => {
                    let by = newest.id;
                    self.abort(id, AbortReason::Subsumed { by }, now_ms, &mut actions);
                }
                _ => self.complete(id, completed_ms, now_ms, &mut actions),
            },
        }
        self.poll(now_ms, &mut actions);
        actions
    }

    /// A task finished (a bounded input ended): no checkpoint is triggered any more, and the
    /// pending ones it has not acknowledged are aborted.
    pub fn on_task_finished(&mut self, task: TaskId, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.tasks.contains(&task) {
            return actions;
        }
        self.finished.get_or_insert(task);
        let waiting: Vec<CheckpointId> = self
            .pending
            .values()
            .filter(|p| p.finalizing.is_none() && p.awaiting.contains(&task))
            .map(|p| p.id)
            .collect();
        for id in waiting {
            self.abort(id, AbortReason::TaskFinished { task }, now_ms, &mut actions);
        }
        actions
    }

    /// The job attempt ends (failed, cancelled or finished): pending checkpoints are
    /// discarded, except those whose metadata is being written (they complete or fail through
    /// [`Self::on_metadata_written`]), and nothing is triggered any more.
    pub fn stop(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.stopped = true;
        let open: Vec<CheckpointId> = self.pending.values().filter(|p| p.finalizing.is_none()).map(|p| p.id).collect();
        for id in open {
            self.abort(id, AbortReason::Stopped, now_ms, &mut actions);
        }
        if std::mem::take(&mut self.savepoint_queued) {
            let reason = TriggerRefused::Stopped.to_string();
            actions.push(Action::SavepointFailed { id: self.next_id, reason });
        }
        actions
    }

    /// When [`Self::on_tick`] has something to do: the next periodic trigger or the earliest
    /// expiry; `None` when neither can happen.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        let expiry = self.pending.values().filter(|p| p.finalizing.is_none()).map(|p| p.deadline_ms).min();
        let trigger = self.refusal().is_ok().then(|| self.periodic_due_ms());
        expiry.into_iter().chain(trigger).min()
    }

    /// The ids of the completed checkpoints retained, oldest first.
    pub fn retained(&self) -> Vec<CheckpointId> {
        self.completed.iter().map(|c| c.id).collect()
    }

    pub fn stats(&self) -> CheckpointStats {
        let total = self.tasks.len() as u32;
        let mut history: Vec<CheckpointSummary> = self
            .pending
            .values()
            .map(|p| p.summary(CheckpointStatus::InProgress, None, total))
            .chain(self.history.iter().cloned())
            .collect();
        history.sort_by_key(|s| std::cmp::Reverse(s.id));
        history.truncate(HISTORY_LEN);
        let latest = |status| self.history.iter().filter(|s| s.status == status).max_by_key(|s| s.id).cloned();
        CheckpointStats {
            counts: CheckpointCounts { in_progress: self.pending.len() as u64, ..self.counts },
            latest_completed: latest(CheckpointStatus::Completed),
            latest_failed: latest(CheckpointStatus::Failed),
            history,
            ignored_acks: self.ignored,
            consecutive_failures: self.consecutive_failures,
            retained: self.completed.iter().copied().collect(),
            stopped: self.refusal().is_err(),
        }
    }

    fn refusal(&self) -> Result<(), TriggerRefused> {
        if self.stopped || self.job_failed {
            return Err(TriggerRefused::Stopped);
        }
        if let Some(task) = self.finished {
            return Err(TriggerRefused::TaskFinished(task));
        }
        if self.pending.len() as u32 >= self.config.max_concurrent {
            return Err(TriggerRefused::TooManyPending { pending: self.pending.len() as u32 });
        }
        Ok(())
    }

    /// The interval's next trigger, held back by the minimum pause after the last completion.
    fn periodic_due_ms(&self) -> u64 {
        let pause_end = self.last_completion_ms.map(|t| t.saturating_add(self.config.min_pause.as_millis() as u64));
        self.next_periodic_ms.max(pause_end.unwrap_or(0))
    }

    fn poll(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.expire(now_ms, actions);
        match self.refusal() {
            Ok(()) if self.savepoint_queued => {
                self.savepoint_queued = false;
                self.trigger(now_ms, true, true, actions);
            }
            Ok(()) if now_ms >= self.periodic_due_ms() => {
                self.trigger(now_ms, false, false, actions);
            }
            Ok(()) | Err(TriggerRefused::TooManyPending { .. }) => {}
            Err(e) if self.savepoint_queued => {
                self.savepoint_queued = false;
                actions.push(Action::SavepointFailed { id: self.next_id, reason: e.to_string() });
            }
            Err(_) => {}
        }
    }

    fn expire(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let expired: Vec<(CheckpointId, u64)> = self
            .pending
            .values()
            .filter(|p| p.finalizing.is_none() && now_ms >= p.deadline_ms)
            .map(|p| (p.id, now_ms.saturating_sub(p.trigger_ms)))
            .collect();
        for (id, after_ms) in expired {
            self.abort(id, AbortReason::Expired { after_ms }, now_ms, actions);
        }
    }

    fn trigger(&mut self, now_ms: u64, manual: bool, savepoint: bool, actions: &mut Vec<Action>) -> CheckpointId {
        let id = self.next_id;
        self.next_id += 1;
        if !manual {
            self.next_periodic_ms = now_ms.saturating_add(self.config.interval.as_millis() as u64);
        }
        self.counts.triggered += 1;
        self.pending.insert(
            id,
            Pending {
                id,
                trigger_ms: now_ms,
                deadline_ms: now_ms.saturating_add(self.config.timeout.as_millis() as u64),
                manual,
                savepoint,
                awaiting: self.tasks.clone(),
                acks: BTreeMap::new(),
                finalizing: None,
            },
        );
        actions.push(Action::Trigger {
            id,
            timestamp_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
            options: BarrierOptions { savepoint, ..self.config.barrier },
            sources: self.sources.clone(),
        });
        id
    }

    fn acknowledge(
        &mut self,
        task: TaskId,
        id: CheckpointId,
        handle: TaskStateHandle,
        metrics: TaskCheckpointMetrics,
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let Some(pending) = self.pending.get_mut(&id) else {
            if id < self.first_id || id >= self.next_id {
                self.ignored.unknown_checkpoint += 1;
                tracing::warn!(checkpoint = id, %task, "acknowledgement for a checkpoint this job attempt never triggered");
            } else if self.completed.iter().any(|c| c.id == id) {
                self.ignored.duplicate += 1;
            } else {
                self.ignored.late += 1;
                tracing::debug!(checkpoint = id, %task, "late acknowledgement of an ended checkpoint; its files are deleted");
                actions.push(Action::Discard { id });
            }
            let files = self.unused_uploads(&handle);
            if !files.is_empty() {
                actions.push(Action::DiscardShared { files });
            }
            return;
        };
        let unknown = !self.tasks.contains(&task);
        if unknown || pending.acks.contains_key(&task) {
            let first = pending.acks.get(&task).map(|a| a.handle.file.clone());
            let same_file = pending.acks.values().any(|a| a.handle.file == handle.file);
            if unknown {
                self.ignored.unknown_task += 1;
                tracing::warn!(checkpoint = id, %task, "acknowledgement from a task that is not part of the job");
            } else {
                self.ignored.duplicate += 1;
            }
            let files = self.unused_uploads(&handle);
            if !files.is_empty() {
                actions.push(Action::DiscardShared { files });
            }
            if !same_file && first.as_ref() != Some(&handle.file) {
                actions.push(Action::DiscardFile(handle));
            }
            return;
        }
        let gone: Vec<String> = handle
            .shared
            .iter()
            .filter(|r| r.reused && !self.shared.contains(&r.file.name))
            .map(|r| r.file.name.clone())
            .collect();
        pending.awaiting.remove(&task);
        pending.acks.insert(task, Ack { handle, metrics, ack_ms: now_ms });
        if let Some(file) = gone.first() {
            let reason = format!(
                "its state reuses the shared file {file} of an earlier checkpoint, which no retained checkpoint has any \
                 more (it was deleted before the task learned of a newer checkpoint); the next checkpoint uploads afresh"
            );
            self.abort(id, AbortReason::Declined { task, reason }, now_ms, actions);
            return;
        }
        let Some(pending) = self.pending.get_mut(&id) else { return };
        if pending.awaiting.is_empty() && pending.finalizing.is_none() {
            pending.finalizing = Some(now_ms);
            let tasks: Vec<TaskEntry> = pending
                .acks
                .iter()
                .map(|(&task, a)| TaskEntry { task, handle: a.handle.clone(), metrics: a.metrics })
                .collect();
            let meta = CheckpointMetadata {
                format: METADATA_FORMAT,
                job: self.layout.job.clone(),
                vertices: self.layout.vertices.clone(),
                id,
                trigger_ms: pending.trigger_ms,
                completed_ms: now_ms.max(pending.trigger_ms),
                mode: self.config.barrier.mode,
                savepoint: pending.savepoint,
                unaligned: tasks.iter().any(|t| t.metrics.unaligned),
                state_bytes: tasks.iter().map(|t| t.handle.size).sum(),
                tasks,
            };
            actions.push(Action::WriteMetadata(Box::new(meta)));
        }
    }

    fn complete(&mut self, id: CheckpointId, completed_ms: u64, now_ms: u64, actions: &mut Vec<Action>) {
        let Some(pending) = self.pending.remove(&id) else { return };
        let files = pending.acks.values().flat_map(|a| &a.handle.shared).map(|r| r.file.name.as_str());
        self.shared.register(id, files);
        let summary = pending.summary(CheckpointStatus::Completed, Some(completed_ms), self.tasks.len() as u32);
        self.completed.push_back(CompletedCheckpoint {
            id,
            trigger_ms: pending.trigger_ms,
            completed_ms,
            state_bytes: summary.state_bytes,
        });
        self.record(summary);
        self.counts.completed += 1;
        self.consecutive_failures = 0;
        self.last_completed_id = Some(id);
        self.last_completion_ms = Some(now_ms);
        if !self.stopped {
            actions.push(Action::Notify(CheckpointNotice::Complete(id)));
        }
        let older: Vec<CheckpointId> =
            self.pending.values().filter(|p| p.id < id && p.finalizing.is_none()).map(|p| p.id).collect();
        for old in older {
            self.abort(old, AbortReason::Subsumed { by: id }, now_ms, actions);
        }
        let ids: Vec<CheckpointId> = self.completed.iter().map(|c| c.id).collect();
        let (_, delete) = retain(&ids, self.config.retained);
        if !delete.is_empty() {
            self.completed.retain(|c| !delete.contains(&c.id));
            actions.push(Action::Subsume { ids: delete });
        }
        self.release_shared(actions);
    }

    /// A savepoint is not a checkpoint the job restarts from: it is neither retained nor
    /// subsumes anything, and its files are not shared; the tasks are told of its completion
    /// (sinks commit what precedes it).
    fn complete_savepoint(&mut self, id: CheckpointId, completed_ms: u64, actions: &mut Vec<Action>) {
        let Some(pending) = self.pending.remove(&id) else { return };
        let summary = pending.summary(CheckpointStatus::Completed, Some(completed_ms), self.tasks.len() as u32);
        self.record(summary);
        self.counts.completed += 1;
        actions.push(Action::SavepointCompleted { id });
        if !self.stopped {
            actions.push(Action::Notify(CheckpointNotice::Complete(id)));
        }
    }

    fn abort(&mut self, id: CheckpointId, reason: AbortReason, now_ms: u64, actions: &mut Vec<Action>) {
        let Some(pending) = self.pending.remove(&id) else { return };
        if pending.savepoint {
            actions.push(Action::SavepointFailed { id, reason: reason.to_string() });
        }
        let mut summary = pending.summary(CheckpointStatus::Failed, Some(now_ms), self.tasks.len() as u32);
        tracing::warn!(checkpoint = id, "checkpoint {id} aborted: {reason}");
        actions.push(Action::Discard { id });
        let uploads: BTreeSet<String> = pending.acks.values().flat_map(|a| self.unused_uploads(&a.handle)).collect();
        if !uploads.is_empty() {
            let uploads = uploads.into_iter().collect();
            actions.push(Action::DiscardShared { files: uploads });
        }
        self.release_shared(actions);
        if !self.stopped {
            actions.push(Action::Notify(CheckpointNotice::Aborted(id)));
        }
        self.counts.failed += 1;
        // A failed savepoint never counts against the tolerated failures (as in Flink).
        let counts = !pending.savepoint && reason.counts() && self.last_completed_id.is_none_or(|last| id > last);
        summary.failure = Some(reason.clone());
        self.record(summary);
        if !counts {
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures > self.config.tolerable_failures && !self.job_failed && !self.stopped {
            self.job_failed = true;
            actions.push(Action::FailJob {
                reason: format!(
                    "checkpoint {id} failed ({reason}): {} consecutive failed checkpoint(s), more than the {} tolerated \
                     (execution.checkpointing.tolerable-failed-checkpoints)",
                    self.consecutive_failures, self.config.tolerable_failures
                ),
            });
        }
    }

    fn record(&mut self, summary: CheckpointSummary) {
        self.history.push_back(summary);
        // The latest completed and the latest failed stay reachable beyond the history.
        while self.history.len() > HISTORY_LEN {
            let newest_completed = self.history.iter().rposition(|s| s.status == CheckpointStatus::Completed);
            let newest_failed = self.history.iter().rposition(|s| s.status == CheckpointStatus::Failed);
            let Some(drop) = (0..self.history.len()).find(|&i| Some(i) != newest_completed && Some(i) != newest_failed)
            else {
                break;
            };
            self.history.remove(drop);
        }
    }
}

/// Retention: of `completed` (ascending ids), which to keep (the newest `n`, at least one) and
/// which to delete.
pub fn retain(completed: &[CheckpointId], n: u32) -> (Vec<CheckpointId>, Vec<CheckpointId>) {
    let keep_from = completed.len().saturating_sub((n as usize).max(1));
    (completed[keep_from..].to_vec(), completed[..keep_from].to_vec())
}

/// What a restore makes of one candidate checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T, E, R> {
    /// Complete and every file verified: restore from it.
    Valid(T),
    /// Damaged or incomplete: skip it and try the previous one.
    Invalid(E),
    /// Valid but not for this job (other vertices or parallelism): stop, do not fall back.
    Refused(R),
}

/// The outcome of [`choose_restore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreChoice<T, E, R> {
    pub chosen: Option<(CheckpointId, T)>,
    pub refused: Option<(CheckpointId, R)>,
    /// The candidates skipped before the choice, newest first.
    pub skipped: Vec<(CheckpointId, E)>,
}

/// Restores from the newest valid candidate: `candidates` newest first, each judged lazily
/// (the iterator is advanced only until a valid or refused one).
pub fn choose_restore<T, E, R>(
    candidates: impl IntoIterator<Item = (CheckpointId, Verdict<T, E, R>)>,
) -> RestoreChoice<T, E, R> {
    let mut choice = RestoreChoice { chosen: None, refused: None, skipped: Vec::new() };
    for (id, verdict) in candidates {
        match verdict {
            Verdict::Valid(t) => {
                choice.chosen = Some((id, t));
                break;
            }
            Verdict::Refused(e) => {
                choice.refused = Some((id, e));
                break;
            }
            Verdict::Invalid(e) => choice.skipped.push((id, e)),
        }
    }
    choice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::task_file;
    use crate::checkpoint::metadata::tests::layout;
    use crate::checkpoint::CheckpointMode;

    /// Completed ids, retained count, kept, deleted.
    type RetainCase = (&'static [u64], u32, &'static [u64], &'static [u64]);
    /// A coordinator's arguments and what its refusal must say.
    type LayoutCase = (JobLayout, Vec<TaskId>, u64, Vec<CompletedCheckpoint>, &'static str);

    const T0: u64 = 1_000_000;
    const SEC: u64 = 1000;

    fn t(vertex: u32, subtask: u32) -> TaskId {
        TaskId { vertex, subtask }
    }

    fn config() -> CheckpointConfig {
        CheckpointConfig::with_interval(Duration::from_secs(1))
    }

    /// A job of a source vertex (parallelism 2) and a sink vertex (parallelism 1).
    fn coordinator(config: CheckpointConfig) -> Coordinator {
        Coordinator::new(config, layout(&[2, 1]), vec![t(0, 0), t(0, 1)], 1, Vec::new(), T0).unwrap()
    }

    fn all_tasks() -> [TaskId; 3] {
        [t(0, 0), t(0, 1), t(1, 0)]
    }

    fn handle(id: CheckpointId, task: TaskId) -> TaskStateHandle {
        TaskStateHandle {
            file: task_file(id, task),
            size: 10 + u64::from(task.subtask),
            checksum: 1,
            shared: Vec::new(),
            nodes: None,
        }
    }

    fn ack(c: &mut Coordinator, task: TaskId, id: CheckpointId, now: u64) -> Vec<Action> {
        c.on_ack(task, id, handle(id, task), TaskCheckpointMetrics { sync_ms: 2, ..Default::default() }, now)
    }

    /// Every task acknowledges `id` at `now`; returns the actions of the last one.
    fn ack_all(c: &mut Coordinator, id: CheckpointId, now: u64) -> Vec<Action> {
        all_tasks().into_iter().map(|task| ack(c, task, id, now)).last().unwrap()
    }

    fn triggered(actions: &[Action]) -> Vec<CheckpointId> {
        actions.iter().filter_map(|a| if let Action::Trigger { id, .. } = a { Some(*id) } else { None }).collect()
    }

    fn notices(actions: &[Action]) -> Vec<CheckpointNotice> {
        actions.iter().filter_map(|a| if let Action::Notify(n) = a { Some(*n) } else { None }).collect()
    }

    fn discarded(actions: &[Action]) -> Vec<CheckpointId> {
        actions.iter().filter_map(|a| if let Action::Discard { id } = a { Some(*id) } else { None }).collect()
    }

    fn fails_job(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::FailJob { .. }))
    }

    /// Runs checkpoint `id` to completion at `now`: acks, metadata written.
    fn complete(c: &mut Coordinator, id: CheckpointId, now: u64) -> Vec<Action> {
        let acks = ack_all(c, id, now);
        assert!(acks.iter().any(|a| matches!(a, Action::WriteMetadata(m) if m.id == id)), "{acks:?}");
        c.on_metadata_written(id, Ok(()), now)
    }

    /// `task`'s acknowledgement of `id` using shared files `(name, reused)`.
    fn ack_shared(
        c: &mut Coordinator,
        task: TaskId,
        id: CheckpointId,
        files: &[(&str, bool)],
        now: u64,
    ) -> Vec<Action> {
        use crate::checkpoint::metadata::{SharedFile, SharedFileRef};
        let mut h = handle(id, task);
        h.shared = files
            .iter()
            .map(|&(name, reused)| SharedFileRef {
                file: SharedFile { name: format!("shared/{name}"), size: 100, checksum: 3 },
                reused,
            })
            .collect();
        c.on_ack(task, id, h, TaskCheckpointMetrics::default(), now)
    }

    /// Checkpoint `id` completes; the sink task's state uses `files`.
    fn complete_shared(c: &mut Coordinator, id: CheckpointId, files: &[(&str, bool)], now: u64) -> Vec<Action> {
        ack(c, t(0, 0), id, now);
        ack(c, t(0, 1), id, now);
        let acks = ack_shared(c, t(1, 0), id, files, now);
        assert!(acks.iter().any(|a| matches!(a, Action::WriteMetadata(m) if m.id == id)), "{acks:?}");
        c.on_metadata_written(id, Ok(()), now)
    }

    fn shared_discarded(actions: &[Action]) -> Vec<String> {
        let files =
            actions.iter().filter_map(|a| if let Action::DiscardShared { files } = a { Some(files) } else { None });
        files.flatten().map(|f| f.trim_start_matches("shared/").to_owned()).collect()
    }

    fn savepoint_triggers(actions: &[Action]) -> Vec<CheckpointId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Trigger { id, options, .. } if options.savepoint => Some(*id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_savepoint_waits_for_a_pending_checkpoint_and_is_neither_retained_nor_subsuming() {
        let mut c = coordinator(CheckpointConfig { retained: 1, ..config() });
        c.on_tick(T0 + SEC);
        complete(&mut c, 1, T0 + SEC);
        assert_eq!(triggered(&c.on_tick(T0 + 2 * SEC)), [2]);
        let queued = c.request_savepoint(T0 + 2 * SEC).unwrap();
        assert!(triggered(&queued).is_empty(), "checkpoint 2 is pending (one at a time): the savepoint waits");
        assert_eq!(c.request_savepoint(T0 + 2 * SEC), Err(TriggerRefused::SavepointQueued));
        // Checkpoint 2 completes: the savepoint goes first, whatever the minimum pause.
        let acks = ack_all(&mut c, 2, T0 + 2 * SEC);
        assert!(triggered(&acks).is_empty());
        let actions = c.on_metadata_written(2, Ok(()), T0 + 2 * SEC);
        assert_eq!(savepoint_triggers(&actions), [3]);
        assert_eq!(c.request_savepoint(T0 + 2 * SEC), Err(TriggerRefused::SavepointInProgress(3)));
        let acks = ack_all(&mut c, 3, T0 + 2 * SEC);
        let Some(Action::WriteMetadata(meta)) = acks.iter().find(|a| matches!(a, Action::WriteMetadata(_))) else {
            panic!("{acks:?}")
        };
        assert!(meta.savepoint);
        let actions = c.on_metadata_written(3, Ok(()), T0 + 2 * SEC);
        assert!(actions.contains(&Action::SavepointCompleted { id: 3 }), "{actions:?}");
        assert_eq!(notices(&actions), [CheckpointNotice::Complete(3)], "sinks commit what precedes the savepoint");
        assert!(!actions.iter().any(|a| matches!(a, Action::Subsume { .. })), "{actions:?}");
        assert_eq!(c.retained(), [2], "the savepoint is not a retained checkpoint");
        let stats = c.stats();
        assert!(stats.history[0].savepoint && stats.history[0].id == 3);
        // The next periodic checkpoint follows the interval as before.
        assert_eq!(triggered(&c.on_tick(T0 + 3 * SEC)), [4]);
    }

    #[test]
    fn a_failed_savepoint_is_reported_and_never_counts_against_the_tolerated_failures() {
        let mut c = coordinator(CheckpointConfig { tolerable_failures: 0, ..config() });
        let actions = c.request_savepoint(T0).unwrap();
        assert_eq!(savepoint_triggers(&actions), [1]);
        let actions = c.on_decline(t(1, 0), 1, "disk full".into(), T0 + 1);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::SavepointFailed { id: 1, reason } if reason.contains("disk full"))),
            "{actions:?}"
        );
        assert!(!fails_job(&actions));
        assert_eq!(discarded(&actions), [1]);
        assert_eq!(c.stats().consecutive_failures, 0);
        // A savepoint whose metadata could not be moved into place fails too.
        let id = savepoint_triggers(&c.request_savepoint(T0 + 2).unwrap())[0];
        ack_all(&mut c, id, T0 + 2);
        let actions = c.on_metadata_written(id, Err("no space".into()), T0 + 2);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::SavepointFailed { reason, .. } if reason.contains("no space"))));
        // A queued savepoint fails when the job stops.
        c.on_tick(T0 + SEC);
        c.request_savepoint(T0 + SEC).unwrap();
        let actions = c.stop(T0 + SEC);
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::SavepointFailed { .. })).count(), 1, "{actions:?}");
        assert_eq!(c.request_savepoint(T0 + SEC), Err(TriggerRefused::Stopped));
    }

    #[test]
    fn a_shared_file_is_deleted_when_its_last_retained_checkpoint_goes() {
        let mut c = coordinator(config());
        c.on_tick(T0 + SEC);
        assert!(shared_discarded(&complete_shared(&mut c, 1, &[("a", false), ("b", false)], T0 + SEC)).is_empty());
        c.on_tick(T0 + 2 * SEC);
        let actions = complete_shared(&mut c, 2, &[("a", true), ("c", false)], T0 + 2 * SEC);
        assert_eq!(discarded(&actions), Vec::<CheckpointId>::new());
        assert!(actions.iter().any(|a| matches!(a, Action::Subsume { ids } if ids == &[1])));
        assert_eq!(shared_discarded(&actions), ["b"], "checkpoint 2 no longer uses b");
        assert!(c.shared().contains("shared/a") && c.shared().contains("shared/c"));
    }

    #[test]
    fn an_aborted_checkpoint_deletes_its_uploads_but_not_what_it_reused() {
        let mut c = coordinator(config());
        c.on_tick(T0 + SEC);
        complete_shared(&mut c, 1, &[("a", false)], T0 + SEC);
        c.on_tick(T0 + 2 * SEC);
        ack_shared(&mut c, t(1, 0), 2, &[("a", true), ("n", false)], T0 + 2 * SEC);
        let actions = c.on_decline(t(0, 0), 2, "disk full".into(), T0 + 2 * SEC);
        assert_eq!(discarded(&actions), [2]);
        assert_eq!(shared_discarded(&actions), ["n"]);
        assert!(c.shared().contains("shared/a"));
        let late = ack_shared(&mut c, t(0, 1), 2, &[("m", false), ("a", true)], T0 + 2 * SEC);
        assert_eq!(shared_discarded(&late), ["m"], "a late acknowledgement's uploads go too");
    }

    #[test]
    fn a_file_a_pending_checkpoint_uses_outlives_its_retained_checkpoint() {
        let mut c = coordinator(CheckpointConfig { max_concurrent: 2, ..config() });
        c.on_tick(T0 + SEC);
        complete_shared(&mut c, 1, &[("a", false)], T0 + SEC);
        c.on_tick(T0 + 2 * SEC);
        c.trigger_now(T0 + 2 * SEC).unwrap();
        ack_shared(&mut c, t(1, 0), 3, &[("a", true)], T0 + 2 * SEC);
        let actions = complete_shared(&mut c, 2, &[("b", false)], T0 + 2 * SEC);
        assert!(shared_discarded(&actions).is_empty(), "checkpoint 3 still uses a: {actions:?}");
        ack(&mut c, t(0, 0), 3, T0 + 2 * SEC);
        ack(&mut c, t(0, 1), 3, T0 + 2 * SEC);
        let actions = c.on_metadata_written(3, Ok(()), T0 + 2 * SEC);
        assert_eq!(shared_discarded(&actions), ["b"]);
        assert!(c.shared().contains("shared/a"));
    }

    #[test]
    fn reusing_a_deleted_file_fails_the_checkpoint() {
        let mut c = coordinator(config());
        c.on_tick(T0 + SEC);
        complete_shared(&mut c, 1, &[("a", false)], T0 + SEC);
        c.on_tick(T0 + 2 * SEC);
        complete_shared(&mut c, 2, &[("b", false)], T0 + 2 * SEC);
        assert!(!c.shared().contains("shared/a"));
        c.on_tick(T0 + 3 * SEC);
        let actions = ack_shared(&mut c, t(1, 0), 3, &[("a", true), ("n", false)], T0 + 3 * SEC);
        assert_eq!(discarded(&actions), [3]);
        assert_eq!(shared_discarded(&actions), ["n"]);
        assert_eq!(notices(&actions), [CheckpointNotice::Aborted(3)]);
        let failure = c.stats().history.iter().find(|h| h.id == 3).and_then(|h| h.failure.clone()).unwrap();
        assert!(failure.to_string().contains("shared/a"), "{failure}");
    }

    #[test]
    fn periodic_trigger_at_each_interval() {
        let mut c = coordinator(config());
        assert_eq!(c.next_wakeup_ms(), Some(T0 + SEC));
        assert!(c.on_tick(T0 + SEC - 1).is_empty());
        let actions = c.on_tick(T0 + SEC);
        assert_eq!(
            actions,
            [Action::Trigger {
                id: 1,
                timestamp_ms: (T0 + SEC) as i64,
                options: BarrierOptions::default(),
                sources: vec![t(0, 0), t(0, 1)]
            }]
        );
        complete(&mut c, 1, T0 + SEC + 100);
        assert_eq!(c.next_wakeup_ms(), Some(T0 + 2 * SEC));
        assert!(c.on_tick(T0 + 2 * SEC - 1).is_empty());
        assert_eq!(triggered(&c.on_tick(T0 + 2 * SEC)), [2]);
    }

    #[test]
    fn a_late_tick_triggers_once_and_restarts_the_interval() {
        let mut c = coordinator(config());
        assert_eq!(triggered(&c.on_tick(T0 + 5 * SEC)), [1]);
        complete(&mut c, 1, T0 + 5 * SEC);
        assert!(c.on_tick(T0 + 5 * SEC + 1).is_empty());
        assert_eq!(c.next_wakeup_ms(), Some(T0 + 6 * SEC));
    }

    #[test]
    fn min_pause_counts_from_the_last_completion() {
        let mut c = coordinator(CheckpointConfig { min_pause: Duration::from_millis(800), ..config() });
        c.on_tick(T0 + SEC);
        let actions = complete(&mut c, 1, T0 + 1_900);
        assert!(triggered(&actions).is_empty());
        assert_eq!(c.next_wakeup_ms(), Some(T0 + 2_700));
        assert!(c.on_tick(T0 + 2_000).is_empty(), "the interval is due but the pause is not over");
        assert!(c.on_tick(T0 + 2_699).is_empty());
        assert_eq!(triggered(&c.on_tick(T0 + 2_700)), [2]);
    }

    #[test]
    fn a_manual_trigger_ignores_the_pause_but_not_the_concurrency_limit() {
        let mut c = coordinator(CheckpointConfig { min_pause: Duration::from_secs(60), ..config() });
        c.on_tick(T0 + SEC);
        assert_eq!(c.trigger_now(T0 + SEC + 1).unwrap_err(), TriggerRefused::TooManyPending { pending: 1 });
        complete(&mut c, 1, T0 + SEC + 2);
        let (id, actions) = c.trigger_now(T0 + SEC + 3).unwrap();
        assert_eq!((id, triggered(&actions)), (2, vec![2]));
        complete(&mut c, 2, T0 + SEC + 4);
        assert!(c.stats().history[0].manual);
        assert!(!c.stats().history[1].manual);
    }

    #[test]
    fn at_most_max_concurrent_pending() {
        let mut c = coordinator(CheckpointConfig { max_concurrent: 2, ..config() });
        assert_eq!(triggered(&c.on_tick(T0 + SEC)), [1]);
        assert_eq!(triggered(&c.on_tick(T0 + 2 * SEC)), [2]);
        assert!(c.on_tick(T0 + 3 * SEC).is_empty(), "two pending");
        assert_eq!(c.next_wakeup_ms(), Some(T0 + SEC + 600 * SEC), "only the expiry of checkpoint 1");
        let actions = complete(&mut c, 1, T0 + 3 * SEC + 10);
        assert_eq!(triggered(&actions), [3], "the overdue periodic trigger runs once a slot is free");
        assert_eq!(c.stats().counts.in_progress, 2);
    }

    #[test]
    fn one_at_a_time_by_default() {
        let mut c = coordinator(config());
        c.on_tick(T0 + SEC);
        for k in 2..10 {
            assert!(c.on_tick(T0 + k * SEC).is_empty());
        }
        assert_eq!(triggered(&complete(&mut c, 1, T0 + 10 * SEC)), [2]);
    }

    #[test]
    fn completion_needs_every_task_and_then_the_metadata() {
        let mut c = coordinator(config());
        c.on_tick(T0 + SEC);
        assert!(ack(&mut c, t(0, 0), 1, T0 + SEC + 5).is_empty());
        assert!(ack(&mut c, t(1, 0), 1, T0 + SEC + 7).is_empty());
        assert_eq!(c.stats().history[0].tasks_acknowledged, 2);
        let actions = ack(&mut c, t(0, 1), 1, T0 + SEC + 9);
        let [Action::WriteMetadata(meta)] = &actions[..] else { panic!("{actions:?}") };
        assert_eq!(meta.id, 1);
        assert_eq!((meta.trigger_ms, meta.completed_ms), (T0 + SEC, T0 + SEC + 9));
        assert_eq!(meta.tasks.iter().map(|e| e.task).collect::<Vec<_>>(), all_tasks());
        assert_eq!(meta.state_bytes, 10 + 11 + 10);
        assert_eq!(meta.vertices, layout(&[2, 1]).vertices);
        assert_eq!(meta.check(1), Ok(()), "the metadata is consistent");
        assert_eq!(c.stats().counts.completed, 0, "not complete before the metadata is written");
        assert!(c.on_tick(T0 + 700 * SEC).is_empty(), "writing metadata does not expire");
        let actions = c.on_metadata_written(1, Ok(()), T0 + 700 * SEC);
        assert_eq!(notices(&actions), [CheckpointNotice::Complete(1)]);
        let stats = c.stats();
        assert_eq!(stats.counts.completed, 1);
        let latest = stats.latest_completed.unwrap();
        assert_eq!((latest.id, latest.duration_ms, latest.sync_ms_max), (1, 9, 2));
        assert_eq!(c.retained(), [1]);
    }

    #[test]
    fn a_timed_out_checkpoint_is_aborted_and_counts_as_a_failure() {
        let mut c = coordinator(CheckpointConfig { tolerable_failures: 1, ..config() });
        c.on_tick(T0 + SEC);
        ack(&mut c, t(0, 0), 1, T0 + SEC + 1);
        assert!(c.on_tick(T0 + 601 * SEC - 1).is_empty());
        let actions = c.on_tick(T0 + 601 * SEC);
        assert_eq!(discarded(&actions), [1]);
        assert_eq!(notices(&actions), [CheckpointNotice::Aborted(1)]);
        assert!(!fails_job(&actions), "one failure is tolerated");
        assert_eq!(triggered(&actions), [2], "the next one starts");
        let stats = c.stats();
        assert_eq!((stats.counts.failed, stats.consecutive_failures), (1, 1));
        assert_eq!(stats.latest_failed.unwrap().failure, Some(AbortReason::Expired { after_ms: 600 * SEC }));
    }

    #[test]
    fn a_decline_aborts() {
        let mut c = coordinator(CheckpointConfig { tolerable_failures: 5, ..config() });
        c.on_tick(T0 + SEC);
        ack(&mut c, t(0, 0), 1, T0 + SEC + 1);
        let actions = c.on_decline(t(1, 0), 1, "disk full".into(), T0 + SEC + 2);
        assert_eq!(discarded(&actions), [1]);
        assert_eq!(notices(&actions), [CheckpointNotice::Aborted(1)]);
        let failure = c.stats().latest_failed.unwrap().failure.unwrap();
        assert_eq!(failure.to_string(), "declined by task 1/0: disk full");
        assert!(c.on_decline(t(1, 0), 1, "again".into(), T0 + SEC + 3).is_empty(), "already aborted");
        assert!(c.on_decline(t(7, 0), 2, "who?".into(), T0 + SEC + 3).is_empty(), "not a task of the job");
    }

    #[test]
    fn tolerable_failures_then_the_job_fails() {
        let mut c = coordinator(CheckpointConfig { tolerable_failures: 2, ..config() });
        let mut now = T0 + SEC;
        let mut reason = None;
        for id in 1..=3 {
            assert_eq!(triggered(&c.on_tick(now)), [id]);
            let actions = c.on_decline(t(0, 0), id, "no".into(), now + 1);
            assert_eq!(fails_job(&actions), id == 3, "checkpoint {id}: {actions:?}");
            reason =
                actions.into_iter().find_map(|a| if let Action::FailJob { reason } = a { Some(reason) } else { None });
            now += SEC;
        }
        let reason = reason.unwrap();
        assert!(reason.starts_with("checkpoint 3 failed (declined by task 0/0: no)"), "{reason}");
        assert!(reason.contains("3 consecutive failed checkpoint(s), more than the 2 tolerated"), "{reason}");
        assert!(c.on_tick(now + 10 * SEC).is_empty(), "nothing is triggered after the job failed");
        assert_eq!(c.trigger_now(now + 10 * SEC).unwrap_err(), TriggerRefused::Stopped);
        assert_eq!(c.next_wakeup_ms(), None);
    }

    #[test]
    fn a_completion_resets_the_failure_count() {
        let mut c = coordinator(CheckpointConfig { tolerable_failures: 1, ..config() });
        c.on_tick(T0 + SEC);
        assert!(!fails_job(&c.on_decline(t(0, 0), 1, "no".into(), T0 + SEC)));
        c.on_tick(T0 + 2 * SEC);
        complete(&mut c, 2, T0 + 2 * SEC);
        assert_eq!(c.stats().consecutive_failures, 0);
        c.on_tick(T0 + 3 * SEC);
        assert!(!fails_job(&c.on_decline(t(0, 0), 3, "no".into(), T0 + 3 * SEC)));
        c.on_tick(T0 + 4 * SEC);
        assert!(fails_job(&c.on_decline(t(0, 0), 4, "no".into(), T0 + 4 * SEC)));
    }

    #[test]
    fn failures_of_checkpoints_older_than_the_last_completed_do_not_count() {
        let mut c = coordinator(CheckpointConfig { max_concurrent: 2, ..config() });
        c.on_tick(T0 + SEC);
        c.on_tick(T0 + 2 * SEC);
        ack_all(&mut c, 1, T0 + 2 * SEC);
        complete(&mut c, 2, T0 + 2 * SEC + 1);
        let actions = c.on_metadata_written(1, Err("EIO".into()), T0 + 2 * SEC + 2);
        assert_eq!(discarded(&actions), [1]);
        assert!(!fails_job(&actions));
        assert_eq!(c.stats().consecutive_failures, 0);
    }

    #[test]
    fn a_failed_metadata_write_is_a_failed_checkpoint() {
        let mut c = coordinator(CheckpointConfig { tolerable_failures: 3, ..config() });
        c.on_tick(T0 + SEC);
        ack_all(&mut c, 1, T0 + SEC);
        let actions = c.on_metadata_written(1, Err("No space left on device".into()), T0 + SEC + 1);
        assert_eq!(discarded(&actions), [1]);
        assert_eq!(notices(&actions), [CheckpointNotice::Aborted(1)]);
        let stats = c.stats();
        assert_eq!((stats.counts.failed, stats.counts.completed, stats.consecutive_failures), (1, 0, 1));
        assert!(c.retained().is_empty());
        assert!(c.on_metadata_written(1, Ok(()), T0 + SEC + 2).is_empty(), "no longer pending");
    }

    #[test]
    fn duplicate_unknown_and_late_acks_are_ignored() {
        let mut c = coordinator(CheckpointConfig { max_concurrent: 3, ..config() });
        c.on_tick(T0 + SEC);
        assert!(ack(&mut c, t(0, 0), 1, T0 + SEC).is_empty());
        assert!(ack(&mut c, t(0, 0), 1, T0 + SEC).is_empty(), "a duplicate of the same file deletes nothing");
        let other = TaskStateHandle {
            file: "chk-1/task-0-0-b.state".into(),
            size: 1,
            checksum: 2,
            shared: Vec::new(),
            nodes: None,
        };
        let actions = c.on_ack(t(0, 0), 1, other.clone(), TaskCheckpointMetrics::default(), T0 + SEC);
        assert_eq!(actions, [Action::DiscardFile(other)], "a second, different file is deleted");
        let actions = ack(&mut c, t(5, 0), 1, T0 + SEC);
        assert_eq!(actions, [Action::DiscardFile(handle(1, t(5, 0)))], "a task of no vertex");
        let actions = ack(&mut c, t(1, 3), 1, T0 + SEC);
        assert_eq!(actions, [Action::DiscardFile(handle(1, t(1, 3)))], "a subtask beyond the parallelism");
        assert!(ack(&mut c, t(0, 0), 9, T0 + SEC).is_empty(), "never triggered: nothing of it is ours to delete");
        c.on_decline(t(0, 1), 1, "no".into(), T0 + SEC);
        assert_eq!(ack(&mut c, t(1, 0), 1, T0 + SEC), [Action::Discard { id: 1 }], "late: its directory goes again");
        let stats = c.stats();
        assert_eq!(stats.ignored_acks, IgnoredAcks { duplicate: 2, unknown_task: 2, late: 1, unknown_checkpoint: 1 });
    }

    #[test]
    fn a_late_duplicate_of_a_completed_checkpoint_deletes_nothing() {
        let mut c = coordinator(config());
        c.on_tick(T0 + SEC);
        complete(&mut c, 1, T0 + SEC);
        assert!(ack(&mut c, t(0, 0), 1, T0 + SEC + 1).is_empty());
        assert_eq!(c.stats().ignored_acks.duplicate, 1);
    }

    #[test]
    fn acks_for_ids_of_an_earlier_attempt_are_never_acted_on() {
        let restored = vec![CompletedCheckpoint { id: 4, trigger_ms: 1, completed_ms: 2, state_bytes: 3 }];
        let mut c = Coordinator::new(config(), layout(&[2, 1]), vec![t(0, 0)], 5, restored, T0).unwrap();
        assert!(ack(&mut c, t(0, 0), 4, T0).is_empty());
        assert!(ack(&mut c, t(0, 0), 3, T0).is_empty());
        assert_eq!(c.stats().ignored_acks.unknown_checkpoint, 2);
        assert_eq!(triggered(&c.on_tick(T0 + SEC)), [5], "ids continue after the restored ones");
    }

    #[test]
    fn a_newer_completed_checkpoint_subsumes_older_pending_ones() {
        let mut c = coordinator(CheckpointConfig { max_concurrent: 3, tolerable_failures: 0, ..config() });
        c.on_tick(T0 + SEC);
        c.on_tick(T0 + 2 * SEC);
        c.on_tick(T0 + 3 * SEC);
        ack(&mut c, t(0, 0), 1, T0 + 3 * SEC);
        ack_all(&mut c, 2, T0 + 3 * SEC);
        let actions = c.on_metadata_written(2, Ok(()), T0 + 3 * SEC + 1);
        assert_eq!(notices(&actions), [CheckpointNotice::Complete(2), CheckpointNotice::Aborted(1)]);
        assert_eq!(discarded(&actions), [1]);
        assert!(!fails_job(&actions), "subsumption is not a failure");
        assert_eq!(c.stats().counts.in_progress, 1, "3 is newer and still pending");
        assert_eq!(c.stats().latest_failed.unwrap().failure, Some(AbortReason::Subsumed { by: 2 }));
    }

    #[test]
    fn metadata_that_lands_after_a_newer_completion_is_discarded() {
        let mut c = coordinator(CheckpointConfig { max_concurrent: 2, ..config() });
        c.on_tick(T0 + SEC);
        c.on_tick(T0 + 2 * SEC);
        ack_all(&mut c, 1, T0 + 2 * SEC);
        complete(&mut c, 2, T0 + 2 * SEC + 1);
        let actions = c.on_metadata_written(1, Ok(()), T0 + 2 * SEC + 2);
        assert_eq!(discarded(&actions), [1]);
        assert!(!notices(&actions).contains(&CheckpointNotice::Complete(1)));
        assert_eq!(c.retained(), [2]);
    }

    #[test]
    fn retention_keeps_the_last_n_and_never_the_newest() {
        let cases: &[RetainCase] = &[
            (&[], 1, &[], &[]),
            (&[1], 1, &[1], &[]),
            (&[1, 2, 3], 1, &[3], &[1, 2]),
            (&[1, 2, 3], 2, &[2, 3], &[1]),
            (&[1, 2, 3], 5, &[1, 2, 3], &[]),
            (&[4, 9], 0, &[9], &[4]),
        ];
        for &(ids, n, keep, delete) in cases {
            assert_eq!(retain(ids, n), (keep.to_vec(), delete.to_vec()), "retain({ids:?}, {n})");
        }
    }

    #[test]
    fn completion_subsumes_completed_checkpoints_beyond_retention() {
        let restored = vec![
            CompletedCheckpoint { id: 2, trigger_ms: 1, completed_ms: 2, state_bytes: 3 },
            CompletedCheckpoint { id: 3, trigger_ms: 1, completed_ms: 2, state_bytes: 3 },
        ];
        let config = CheckpointConfig { retained: 2, ..config() };
        let mut c = Coordinator::new(config, layout(&[2, 1]), vec![t(0, 0)], 4, restored, T0).unwrap();
        c.on_tick(T0 + SEC);
        let actions = complete(&mut c, 4, T0 + SEC);
        assert!(actions.contains(&Action::Subsume { ids: vec![2] }), "{actions:?}");
        assert_eq!(c.retained(), [3, 4]);
        c.on_tick(T0 + 2 * SEC);
        c.on_decline(t(0, 0), 5, "no".into(), T0 + 2 * SEC);
        assert_eq!(c.retained(), [3, 4], "a failure deletes no completed checkpoint");
    }

    #[test]
    fn a_finished_task_stops_triggers_and_aborts_what_it_had_not_acknowledged() {
        let mut c = coordinator(CheckpointConfig { max_concurrent: 2, ..config() });
        c.on_tick(T0 + SEC);
        c.on_tick(T0 + 2 * SEC);
        ack(&mut c, t(0, 1), 1, T0 + 2 * SEC);
        let actions = c.on_task_finished(t(0, 1), T0 + 2 * SEC + 1);
        assert_eq!(discarded(&actions), [2]);
        assert!(!fails_job(&actions));
        assert_eq!(c.stats().consecutive_failures, 0, "not a failure");
        assert!(c.on_tick(T0 + 9 * SEC).is_empty());
        assert_eq!(c.trigger_now(T0 + 9 * SEC).unwrap_err(), TriggerRefused::TaskFinished(t(0, 1)));
        ack(&mut c, t(0, 0), 1, T0 + 9 * SEC);
        let actions = ack(&mut c, t(1, 0), 1, T0 + 9 * SEC);
        assert!(matches!(&actions[..], [Action::WriteMetadata(_)]), "1 can still complete: {actions:?}");
        assert!(c.on_task_finished(t(9, 9), T0).is_empty());
    }

    #[test]
    fn stop_discards_pending_checkpoints_but_lets_a_metadata_write_finish() {
        let mut c = coordinator(CheckpointConfig { max_concurrent: 2, ..config() });
        c.on_tick(T0 + SEC);
        c.on_tick(T0 + 2 * SEC);
        ack_all(&mut c, 1, T0 + 2 * SEC);
        let actions = c.stop(T0 + 2 * SEC);
        assert_eq!(actions, [Action::Discard { id: 2 }], "no notice: the tasks are gone");
        assert!(!fails_job(&actions));
        let actions = c.on_metadata_written(1, Ok(()), T0 + 3 * SEC);
        assert!(notices(&actions).is_empty());
        assert_eq!(c.retained(), [1]);
        assert!(c.on_tick(T0 + 100 * SEC).is_empty());
        assert_eq!(c.next_wakeup_ms(), None);
    }

    #[test]
    fn the_barrier_options_and_mode_reach_triggers_and_metadata() {
        let barrier = BarrierOptions {
            mode: CheckpointMode::AtLeastOnce,
            unaligned: false,
            aligned_timeout: Some(Duration::from_millis(5)),
            savepoint: false,
        };
        let mut c = coordinator(CheckpointConfig { barrier, ..config() });
        let actions = c.on_tick(T0 + SEC);
        assert!(matches!(&actions[0], Action::Trigger { options, .. } if *options == barrier));
        ack(&mut c, t(0, 0), 1, T0 + SEC);
        ack(&mut c, t(0, 1), 1, T0 + SEC);
        let unaligned = TaskCheckpointMetrics { unaligned: true, ..Default::default() };
        let actions = c.on_ack(t(1, 0), 1, handle(1, t(1, 0)), unaligned, T0 + SEC);
        let [Action::WriteMetadata(meta)] = &actions[..] else { panic!("{actions:?}") };
        assert_eq!(meta.mode, CheckpointMode::AtLeastOnce);
        assert!(meta.unaligned, "one task took it unaligned");
    }

    #[test]
    fn history_is_bounded_newest_first_and_keeps_the_latest_of_each_outcome() {
        let mut c = coordinator(CheckpointConfig { tolerable_failures: 100, ..config() });
        let mut now = T0 + SEC;
        c.on_tick(now);
        complete(&mut c, 1, now);
        for id in 2..=30 {
            now += SEC;
            assert_eq!(triggered(&c.on_tick(now)), [id]);
            c.on_decline(t(0, 0), id, "no".into(), now);
        }
        now += SEC;
        c.on_tick(now);
        let stats = c.stats();
        assert_eq!(stats.history.len(), HISTORY_LEN);
        assert_eq!(stats.history.iter().map(|s| s.id).collect::<Vec<_>>(), (22..=31).rev().collect::<Vec<_>>());
        assert_eq!(stats.history[0].status, CheckpointStatus::InProgress);
        assert_eq!(stats.latest_completed.as_ref().unwrap().id, 1, "the latest completed outlives the history");
        assert_eq!(stats.latest_failed.as_ref().unwrap().id, 30);
        assert_eq!(
            stats.counts,
            CheckpointCounts { triggered: 31, in_progress: 1, completed: 1, failed: 29 },
            "counts are not bounded by the history"
        );
        assert!(c.history.len() <= HISTORY_LEN);
        let json = serde_json::to_string(&stats).unwrap();
        assert_eq!(serde_json::from_str::<CheckpointStats>(&json).unwrap(), stats);
    }

    #[test]
    fn invalid_configurations_and_layouts_are_refused() {
        let zero = CheckpointConfig { interval: Duration::ZERO, ..config() };
        let none = CheckpointConfig { max_concurrent: 0, ..config() };
        let retained = CheckpointConfig { retained: 0, ..config() };
        for (cfg, needle) in [(zero, "interval"), (none, "max concurrent"), (retained, "retained")] {
            let err = Coordinator::new(cfg, layout(&[1]), vec![t(0, 0)], 1, Vec::new(), T0).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let cases: Vec<LayoutCase> = vec![
            (layout(&[]), vec![t(0, 0)], 1, vec![], "no vertices"),
            (layout(&[1, 0]), vec![t(0, 0)], 1, vec![], "parallelism 0"),
            (layout(&[1]), vec![], 1, vec![], "no source"),
            (layout(&[1]), vec![t(0, 1)], 1, vec![], "source task 0/1 is not a task"),
            (layout(&[1]), vec![t(0, 0)], 0, vec![], "start at 1"),
            (
                layout(&[1]),
                vec![t(0, 0)],
                3,
                vec![CompletedCheckpoint { id: 3, trigger_ms: 0, completed_ms: 0, state_bytes: 0 }],
                "not before the first id 3",
            ),
        ];
        for (layout, sources, first, completed, needle) in cases {
            let err = Coordinator::new(config(), layout, sources, first, completed, T0).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn config_serializes_durations_as_milliseconds() {
        let json = serde_json::to_value(config()).unwrap();
        assert_eq!(json["interval"], 1000);
        assert_eq!(json["timeout"], 600_000);
        assert_eq!(serde_json::from_value::<CheckpointConfig>(json).unwrap(), config());
    }

    #[test]
    fn choose_restore_takes_the_newest_valid_and_stops_judging() {
        let mut judged = Vec::new();
        let verdicts: Vec<(u64, Verdict<_, _, ()>)> = vec![
            (9, Verdict::Invalid("corrupt")),
            (8, Verdict::Invalid("truncated")),
            (7, Verdict::Valid("seven")),
            (6, Verdict::Valid("six")),
        ];
        let choice = choose_restore(verdicts.into_iter().inspect(|(id, _)| judged.push(*id)));
        assert_eq!(choice.chosen, Some((7, "seven")));
        assert_eq!(choice.skipped, [(9, "corrupt"), (8, "truncated")]);
        assert_eq!(choice.refused, None);
        assert_eq!(judged, [9, 8, 7], "checkpoint 6 is never read");

        let refused = choose_restore(vec![
            (3, Verdict::Invalid("bad")),
            (2, Verdict::Refused("other job")),
            (1, Verdict::Valid(())),
        ]);
        assert_eq!((refused.chosen, refused.refused), (None, Some((2, "other job"))));
        let none = choose_restore(vec![(1, Verdict::<(), _, ()>::Invalid("bad"))]);
        assert_eq!((none.chosen, none.skipped.len()), (None, 1));
        assert_eq!(choose_restore(Vec::<(u64, Verdict<(), (), ()>)>::new()).chosen, None);
    }
}
