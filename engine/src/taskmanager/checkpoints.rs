//! A deployment's side of checkpoints on a TaskManager: the snapshot writer. Tasks hand their
//! synchronous snapshots to it (never blocking their slot: the queue is bounded, and a full
//! queue declines the checkpoint); a thread of its own (`cs-ckpt-*`) encodes the parts the
//! tasks left to encode (frozen keyed state and timers), writes and syncs each task's file and
//! tells the control loop, which acknowledges to the job master with the file's handle, or
//! declines the checkpoint when encoding or writing failed. The thread ends when the deployment
//! drops the last reporter; a part reports its end only after that ([`WriterDrained`]), so the
//! job master knows that nothing of the part is still being uploaded when it cleans up the
//! shared files. It also reads the state a restored part's tasks start from.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Sender, TrySendError};
use tokio::sync::mpsc;

use super::deployment::DeploymentEvent;
use crate::checkpoint::assign::Assignment;
use crate::checkpoint::metadata::CheckpointMetadata;
use crate::checkpoint::redistribute::redistribute;
use crate::checkpoint::storage::{CheckpointStorage, FsCheckpointStorage, StorageError};
use crate::checkpoint::{
    thread_cpu_time, CheckpointId, DeploymentCheckpointing, OperatorStateParts, PendingSnapshot, SnapshotReporter,
    TaskCheckpointMetrics, TaskId, TaskSnapshot, TaskStateHandle, TaskStateLoader,
};
use crate::error::JobError;
use crate::rpc::ids::DeploymentKey;
use crate::runtime::cluster::PartCheckpoints;

/// Snapshots waiting to be written, per deployment, at most: a few checkpoints of every task.
pub(crate) const WRITE_QUEUE: usize = 256;

/// Completes one task's snapshot of one checkpoint (its deferred parts, their uploads), writes it
/// durably and says where it is and which shared files it uses.
pub(crate) type WriteFn =
    dyn Fn(CheckpointId, TaskId, PendingSnapshot) -> Result<TaskStateHandle, String> + Send + Sync;

struct WriteJob {
    task: TaskId,
    checkpoint: CheckpointId,
    snapshot: PendingSnapshot,
    metrics: TaskCheckpointMetrics,
}

/// Set when a deployment's snapshot writer has ended: every snapshot it was given is written
/// (or declined) and acknowledged.
#[derive(Debug, Default)]
pub(crate) struct WriterDrained {
    done: std::sync::atomic::AtomicBool,
}

/// The longest a part's end waits for its snapshot writer (uploads of a large state).
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl WriterDrained {
    pub(crate) fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Blocks until the writer has ended (at most [`DRAIN_WAIT`]).
    pub(crate) fn wait(&self, deployment: DeploymentKey) {
        let started = Instant::now();
        while !self.is_done() {
            if started.elapsed() > DRAIN_WAIT {
                tracing::warn!(%deployment, "the snapshot writer is still busy; the part reports its end without it");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// As [`wait`](Self::wait), on an async task.
    pub(crate) async fn wait_async(&self, deployment: DeploymentKey) {
        let started = Instant::now();
        while !self.is_done() {
            if started.elapsed() > DRAIN_WAIT {
                tracing::warn!(%deployment, "the snapshot writer is still busy; the part reports its end without it");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// The [`SnapshotReporter`] of one deployment's tasks.
pub(crate) struct DeploymentReporter {
    deployment: DeploymentKey,
    jobs: Sender<WriteJob>,
    events: mpsc::Sender<DeploymentEvent>,
}

impl DeploymentReporter {
    /// Starts the deployment's writer thread.
    pub(crate) fn start(
        deployment: DeploymentKey,
        write: Arc<WriteFn>,
        events: mpsc::Sender<DeploymentEvent>,
        drained: Arc<WriterDrained>,
    ) -> std::io::Result<Arc<Self>> {
        let (jobs, queue) = bounded::<WriteJob>(WRITE_QUEUE);
        let tx = events.clone();
        std::thread::Builder::new().name(format!("cs-ckpt-{}", &deployment.to_string()[..8])).spawn(move || {
            struct Done(Arc<WriterDrained>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.done.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            let _done = Done(drained);
            for job in queue {
                let (started, started_cpu) = (Instant::now(), thread_cpu_time());
                let written = write(job.checkpoint, job.task, job.snapshot);
                let event = match written {
                    Ok(handle) => {
                        let mut metrics = job.metrics;
                        metrics.async_ms = started.elapsed().as_millis() as u64;
                        metrics.cpu_us += thread_cpu_time().saturating_sub(started_cpu).as_micros() as u64;
                        metrics.state_bytes = handle.size;
                        metrics.uploaded_bytes = handle.uploaded_bytes();
                        metrics.shared_bytes = handle.shared_bytes();
                        DeploymentEvent::CheckpointAck {
                            deployment,
                            task: job.task,
                            checkpoint_id: job.checkpoint,
                            handle,
                            metrics,
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(%deployment, task = %job.task, checkpoint = job.checkpoint, %reason, "could not write a checkpoint's state");
                        DeploymentEvent::CheckpointDecline {
                            deployment,
                            task: job.task,
                            checkpoint_id: job.checkpoint,
                            reason: format!("writing the state of {} failed: {reason}", job.task),
                        }
                    }
                };
                // The control loop only goes away when the TaskManager stops.
                if tx.blocking_send(event).is_err() {
                    break;
                }
            }
        })?;
        Ok(Arc::new(Self { deployment, jobs, events }))
    }

    fn decline_now(&self, task: TaskId, checkpoint_id: CheckpointId, reason: String) {
        let event = DeploymentEvent::CheckpointDecline { deployment: self.deployment, task, checkpoint_id, reason };
        if let Err(e) = self.events.try_send(event) {
            // The checkpoint then expires at its timeout, which the coordinator counts as failed.
            tracing::warn!(deployment = %self.deployment, %task, checkpoint_id, error = %e, "a decline could not be queued");
        }
    }
}

impl SnapshotReporter for DeploymentReporter {
    fn snapshot_taken(
        &self,
        task: TaskId,
        checkpoint: CheckpointId,
        snapshot: PendingSnapshot,
        metrics: TaskCheckpointMetrics,
    ) {
        match self.jobs.try_send(WriteJob { task, checkpoint, snapshot, metrics }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.decline_now(
                task,
                checkpoint,
                format!("{WRITE_QUEUE} snapshots are already waiting to be written on this TaskManager"),
            ),
            Err(TrySendError::Disconnected(_)) => {
                self.decline_now(task, checkpoint, "the TaskManager's snapshot writer has stopped".into())
            }
        }
    }

    fn declined(&self, task: TaskId, checkpoint: CheckpointId, reason: String) {
        self.decline_now(task, checkpoint, reason);
    }
}

/// Reads restored task state from a checkpoint's files, by the handles in its metadata: each
/// task its own file, or, for a changed job, the parts of every old subtask of the operators
/// its vertex takes, redistributed to its subtask (see [`crate::checkpoint::assign`]).
struct MetadataLoader {
    storage: FsCheckpointStorage,
    metadata: CheckpointMetadata,
    assignment: Option<Assignment>,
}

impl MetadataLoader {
    fn error(&self, subtask: u32, message: String) -> JobError {
        JobError::Checkpoint {
            place: format!("checkpoint {} in {}", self.metadata.id, self.storage.location()),
            subtask,
            message,
        }
    }

    /// The file of `task` of the checkpoint, with its parts told where the shared files are.
    fn read(&self, task: TaskId, subtask: u32) -> Result<Option<TaskSnapshot>, JobError> {
        let Some(entry) = self.metadata.tasks.iter().find(|e| e.task == task) else { return Ok(None) };
        let mut snapshot =
            self.storage.read_task_state(&entry.handle).map_err(|e| self.error(subtask, e.to_string()))?;
        for (_, parts) in &mut snapshot.nodes {
            parts.shared_root = Some(self.storage.dir().to_path_buf());
        }
        Ok(Some(snapshot))
    }
}

impl TaskStateLoader for MetadataLoader {
    fn load(&self, task: TaskId) -> Result<Option<TaskSnapshot>, JobError> {
        let Some(assignment) = &self.assignment else { return self.read(task, task.subtask) };
        let Some(&(new_parallelism, max_parallelism)) = assignment.new_parallelism.get(task.vertex as usize) else {
            return Ok(None);
        };
        let mut olds: std::collections::BTreeMap<u32, Vec<TaskSnapshot>> = Default::default();
        let mut snapshot = TaskSnapshot::default();
        for m in assignment.operators.iter().filter(|m| m.new_vertex == task.vertex) {
            let old = match olds.entry(m.old_vertex) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let old_parallelism = assignment.old_parallelism.get(m.old_vertex as usize).copied().unwrap_or(0);
                    let read = (0..old_parallelism)
                        .map(|s| self.read(TaskId { vertex: m.old_vertex, subtask: s }, task.subtask))
                        .map(|r| r.map(Option::unwrap_or_default))
                        .collect::<Result<Vec<_>, _>>()?;
                    e.insert(read)
                }
            };
            let parts: Vec<OperatorStateParts> =
                old.iter().map(|s| s.node(m.old_node as usize).cloned().unwrap_or_default()).collect();
            let mut mine = redistribute(&parts, new_parallelism, max_parallelism)
                .map_err(|e| self.error(task.subtask, format!("operator '{}': {e}", m.uid)))?
                .swap_remove(task.subtask as usize);
            mine.shared_root = Some(self.storage.dir().to_path_buf());
            snapshot.put_node(m.new_node as usize, mine);
        }
        Ok((!snapshot.is_empty()).then_some(snapshot))
    }
}

/// What a part's tasks need for checkpoints, from the deployment's descriptor: the snapshot
/// writer (when the job takes checkpoints) and the loader of restored state (when it starts
/// from one).
pub(crate) fn part_checkpoints(
    spec: &DeploymentCheckpointing,
    deployment: DeploymentKey,
    events: mpsc::Sender<DeploymentEvent>,
) -> Result<PartCheckpoints, JobError> {
    let storage_error = |e: StorageError| JobError::Checkpoint {
        place: "the checkpoint storage".into(),
        subtask: 0,
        message: e.to_string(),
    };
    let mut drained = None;
    let reporter: Arc<dyn SnapshotReporter> = match &spec.dir {
        Some(dir) => {
            let storage = FsCheckpointStorage::create(dir).map_err(storage_error)?;
            let write: Arc<WriteFn> = Arc::new(move |id, task, snapshot: PendingSnapshot| {
                let (snapshot, shared) = snapshot.complete_with(&storage)?;
                let mut handle = storage.write_task_state(id, task, &snapshot).map_err(|e| e.to_string())?;
                handle.shared = shared;
                Ok(handle)
            });
            let done = Arc::new(WriterDrained::default());
            drained = Some(done.clone());
            DeploymentReporter::start(deployment, write, events, done).map_err(|e| JobError::Checkpoint {
                place: "this TaskManager".into(),
                subtask: 0,
                message: format!("cannot start the snapshot writer thread: {e}"),
            })?
        }
        None => Arc::new(NoCheckpoints),
    };
    let restore = match &spec.restore {
        Some(source) => {
            let storage = FsCheckpointStorage::open(&source.dir).map_err(storage_error)?;
            let metadata = storage.read_metadata(source.id).map_err(storage_error)?;
            let assignment = source.assignment.clone();
            Some(Arc::new(MetadataLoader { storage, metadata, assignment }) as Arc<dyn TaskStateLoader>)
        }
        None => None,
    };
    Ok(PartCheckpoints { options: spec.options, reporter, restore, drained })
}

/// The reporter of a job that takes no checkpoints (it only restored from one): any snapshot
/// is declined.
struct NoCheckpoints;

impl SnapshotReporter for NoCheckpoints {
    fn snapshot_taken(&self, task: TaskId, checkpoint: CheckpointId, _: PendingSnapshot, _: TaskCheckpointMetrics) {
        tracing::warn!(%task, checkpoint, "a snapshot of a job without checkpoints was dropped");
    }

    fn declined(&self, _: TaskId, _: CheckpointId, _: String) {}
}
