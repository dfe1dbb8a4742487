//! A deployment's side of checkpoints on a TaskManager: the snapshot writer. Tasks hand their
//! synchronous snapshots to it (never blocking their slot: the queue is bounded, and a full
//! queue declines the checkpoint); a thread of its own (`cs-ckpt-*`) writes and syncs each
//! task's file and tells the control loop, which acknowledges to the job master with the file's
//! handle, or declines the checkpoint when writing failed. The thread ends when the deployment
//! drops the last reporter.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Sender, TrySendError};
use tokio::sync::mpsc;

use super::deployment::DeploymentEvent;
use crate::checkpoint::{CheckpointId, SnapshotReporter, TaskCheckpointMetrics, TaskId, TaskSnapshot, TaskStateHandle};
use crate::rpc::ids::DeploymentKey;

/// Snapshots waiting to be written, per deployment, at most: a few checkpoints of every task.
pub(crate) const WRITE_QUEUE: usize = 256;

/// Writes one task's snapshot of one checkpoint durably and says where it is.
pub(crate) type WriteFn = dyn Fn(CheckpointId, TaskId, &TaskSnapshot) -> Result<TaskStateHandle, String> + Send + Sync;

struct WriteJob {
    task: TaskId,
    checkpoint: CheckpointId,
    snapshot: TaskSnapshot,
    metrics: TaskCheckpointMetrics,
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
    ) -> std::io::Result<Arc<Self>> {
        let (jobs, queue) = bounded::<WriteJob>(WRITE_QUEUE);
        let tx = events.clone();
        std::thread::Builder::new().name(format!("cs-ckpt-{}", &deployment.to_string()[..8])).spawn(move || {
            for job in queue {
                let started = Instant::now();
                let event = match write(job.checkpoint, job.task, &job.snapshot) {
                    Ok(handle) => {
                        let mut metrics = job.metrics;
                        metrics.async_ms = started.elapsed().as_millis() as u64;
                        metrics.state_bytes = handle.size;
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
        snapshot: TaskSnapshot,
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
