//! The job master's side of checkpoints: the I/O edge around the pure
//! [`Coordinator`](crate::checkpoint::coordinator::Coordinator). At the start of each attempt
//! it decides where the job starts from (the latest complete checkpoint after a failure, else
//! what the submission asked for) and loads that checkpoint, checking every file; while the
//! attempt runs it feeds the coordinator the TaskManagers' acknowledgements, declines and task
//! states with the time, and executes its actions: triggers and notifications go to the
//! TaskManagers, the metadata is written (last) and checkpoints are deleted on blocking
//! threads, never on the job master's task. The coordinator's statistics are published in the
//! job's entry for the REST API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::savepoints::SavepointTicket;
use super::state::now_ms;
use super::Jm;
use crate::checkpoint::coordinator::{Action, CheckpointConfig, CheckpointStats, Coordinator};
use crate::checkpoint::metadata::{JobLayout, OperatorInfo, VertexInfo};
use crate::checkpoint::request::{JobCheckpointing, RestoreRequest};
use crate::checkpoint::restore::{load_restore, next_checkpoint_id, retained_metadata, RestoreError, RestoreFrom};
use crate::checkpoint::shared::SharedRegistry;
use crate::checkpoint::storage::{CheckpointStorage, FsCheckpointStorage};
use crate::checkpoint::{CheckpointId, CheckpointNotice, DeploymentCheckpointing, RestoreSource, TaskId};
use crate::rpc::ids::{DeploymentKey, JobId, TaskManagerId};
use crate::rpc::messages::JmMessage;
use crate::runtime::cluster::VertexSummary;

/// Where an attempt starts and how it checkpoints.
pub(crate) struct AttemptCheckpoints {
    /// What the descriptors carry (`None`: no checkpoints and no restore); its `restore` is
    /// the checkpoint the attempt starts from.
    pub deployment: Option<DeploymentCheckpointing>,
    driver: Option<Driver>,
}

/// What the coordinator needs besides its configuration, prepared before deployment.
struct Driver {
    config: CheckpointConfig,
    layout: JobLayout,
    sources: Vec<TaskId>,
    storage: Arc<FsCheckpointStorage>,
    first_id: CheckpointId,
    completed: Vec<crate::checkpoint::coordinator::CompletedCheckpoint>,
    shared: SharedRegistry,
}

/// The vertices a checkpoint of this plan records.
pub(crate) fn vertex_infos(vertices: &[VertexSummary]) -> Vec<VertexInfo> {
    vertices
        .iter()
        .map(|v| VertexInfo {
            name: v.name.clone(),
            parallelism: v.parallelism,
            max_parallelism: v.max_parallelism,
            operators: v
                .nodes
                .iter()
                .zip(&v.uids)
                .map(|(&node, uid)| OperatorInfo { node: node as u32, uid: uid.clone() })
                .collect(),
        })
        .collect()
}

/// Decides and loads where attempt `attempt` starts (blocking file I/O: call it on a blocking
/// thread). After a failure the job restarts from the latest complete checkpoint in its
/// directory; without one, from what it was submitted with. `--resume DIR` of an existing
/// directory that holds no complete checkpoint yet (the first run was stopped before its first
/// checkpoint) starts from the beginning.
pub(crate) fn prepare_attempt(
    job: &str,
    checkpointing: &JobCheckpointing,
    attempt: u32,
    vertices: &[VertexSummary],
) -> Result<AttemptCheckpoints, String> {
    let expected = vertex_infos(vertices);
    let settings = checkpointing.settings.as_ref().filter(|s| s.interval.is_some());
    let own_dir = settings.and(checkpointing.dir.clone());
    let mut candidates: Vec<RestoreFrom> = Vec::new();
    if attempt > 0 {
        if let Some(dir) = &own_dir {
            candidates.push(RestoreFrom::Latest(dir.clone()));
        }
    }
    match &checkpointing.restore {
        Some(RestoreRequest::Resume(dir)) => candidates.push(RestoreFrom::Latest(PathBuf::from(dir))),
        Some(RestoreRequest::FromCheckpoint(path)) => candidates.push(RestoreFrom::Checkpoint(PathBuf::from(path))),
        Some(RestoreRequest::FromSavepoint(path)) => candidates.push(RestoreFrom::Savepoint(PathBuf::from(path))),
        None => {}
    }
    let mut point = None;
    for from in candidates {
        match load_restore(&from, &expected, checkpointing.allow_non_restored) {
            Ok(p) => {
                point = Some(p);
                break;
            }
            // Nothing was checkpointed yet: the beginning is where the job left off.
            Err(RestoreError::NoCheckpoint { dir, incomplete }) if Path::new(&dir).is_dir() => {
                tracing::warn!(
                    %job,
                    dir = %dir.display(),
                    incomplete = incomplete.len(),
                    "no complete checkpoint to restore from; the job starts from the beginning"
                );
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Some(p) = &point {
        for (id, e) in &p.skipped {
            tracing::warn!(%job, checkpoint = id, error = %e, "a newer checkpoint was skipped for the restore");
        }
        tracing::info!(%job, checkpoint = p.metadata.id, dir = %p.dir.display(), "restoring from a checkpoint");
    }
    if let Some(a) = point.as_ref().and_then(|p| p.assignment.as_ref()) {
        tracing::info!(
            %job,
            operators = a.operators.len(),
            dropped = ?a.dropped,
            "restoring into a changed job: state matched by operator id and redistributed"
        );
    }
    let restore = point.as_ref().map(|p| RestoreSource {
        dir: p.dir.clone(),
        id: p.metadata.id,
        assignment: p.assignment.clone(),
    });
    let driver = match (settings, &own_dir) {
        (Some(s), Some(dir)) => {
            let storage = Arc::new(FsCheckpointStorage::create(dir).map_err(|e| e.to_string())?);
            let mut first_id = next_checkpoint_id(&*storage).map_err(|e| e.to_string())?;
            if let Some(p) = point.as_ref().filter(|p| p.dir == *dir) {
                first_id = first_id.max(p.next_id);
            }
            let retained = retained_metadata(&*storage).map_err(|e| e.to_string())?;
            let completed = retained.iter().map(Into::into).collect();
            let shared = SharedRegistry::of_checkpoints(&retained);
            sweep_orphans(job, &storage, &shared, &Default::default());
            let config = CheckpointConfig {
                interval: s.interval.expect("filtered on an interval"),
                timeout: s.timeout,
                min_pause: s.min_pause,
                max_concurrent: s.max_concurrent,
                tolerable_failures: s.tolerable_failures,
                retained: s.retained,
                barrier: s.barrier_options(),
            };
            let sources = vertices
                .iter()
                .enumerate()
                .filter(|(_, v)| v.source)
                .flat_map(|(i, v)| (0..v.parallelism).map(move |subtask| TaskId { vertex: i as u32, subtask }))
                .collect();
            let layout = JobLayout { job: job.to_string(), vertices: expected };
            Some(Driver { config, layout, sources, storage, first_id, completed, shared })
        }
        _ => None,
    };
    let deployment = (driver.is_some() || restore.is_some()).then(|| DeploymentCheckpointing {
        dir: driver.as_ref().map(|d| d.storage.dir().to_path_buf()),
        options: driver.as_ref().map(|d| d.config.barrier).unwrap_or_default(),
        restore,
    });
    Ok(AttemptCheckpoints { deployment, driver })
}

/// Deletes the shared files that neither a complete checkpoint (`shared`) nor `in_use` (those
/// of checkpoints whose metadata is still being written) uses: uploads of checkpoints that never
/// completed (a task that failed after uploading, a job stopped while its writer was
/// uploading). Called before an attempt deploys and after all its parts ended, when nothing of
/// the job is being uploaded.
fn sweep_orphans(
    job: &str,
    storage: &FsCheckpointStorage,
    shared: &SharedRegistry,
    in_use: &std::collections::BTreeSet<String>,
) {
    let listed = match storage.list_shared() {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(%job, error = %e, "could not list the shared checkpoint files");
            return;
        }
    };
    let orphans = shared.orphans(&listed, in_use);
    if orphans.is_empty() {
        return;
    }
    tracing::info!(%job, files = orphans.len(), "deleting shared checkpoint files no complete checkpoint uses");
    if let Err(e) = storage.discard_shared(&orphans) {
        tracing::warn!(%job, error = %e, "could not delete shared checkpoint files");
    }
}

/// What the tracking loop learns from the checkpoint side.
pub(crate) enum Outcome {
    Continue,
    /// Too many checkpoints failed: the attempt fails with this reason.
    FailJob(String),
    /// A stop-with-savepoint's savepoint is complete: the job is cancelled, with this reason.
    Stop(String),
}

/// The savepoint a running attempt is taking.
struct SavepointOp {
    ticket: SavepointTicket,
    /// Its checkpoint id, once triggered.
    id: Option<CheckpointId>,
    destination: PathBuf,
}

/// A running attempt's coordinator and the I/O it asks for.
pub(crate) struct Running {
    coordinator: Coordinator,
    storage: Arc<FsCheckpointStorage>,
    deployment: DeploymentKey,
    members: Vec<TaskManagerId>,
    job: JobId,
    /// Results of metadata writes, from blocking threads.
    written_tx: mpsc::UnboundedSender<(CheckpointId, Result<(), String>)>,
    written_rx: mpsc::UnboundedReceiver<(CheckpointId, Result<(), String>)>,
    /// Triggers start once every task runs.
    all_running: bool,
    savepoint: Option<SavepointOp>,
}

impl AttemptCheckpoints {
    /// Starts the coordinator for the deployed attempt; `None` when the job takes no checkpoints.
    pub(crate) fn start(
        &mut self,
        job: JobId,
        deployment: DeploymentKey,
        members: Vec<TaskManagerId>,
    ) -> Result<Option<Running>, String> {
        let Some(d) = self.driver.take() else { return Ok(None) };
        let coordinator = Coordinator::new(d.config, d.layout, d.sources, d.first_id, d.completed, now_ms())
            .map_err(|e| e.to_string())?
            .with_shared(d.shared);
        let (written_tx, written_rx) = mpsc::unbounded_channel();
        Ok(Some(Running {
            coordinator,
            storage: d.storage,
            deployment,
            members,
            job,
            written_tx,
            written_rx,
            all_running: false,
            savepoint: None,
        }))
    }
}

impl Running {
    /// When the tracking loop must call [`Self::on_tick`].
    pub(crate) fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        if !self.all_running {
            return None;
        }
        let at = self.coordinator.next_wakeup_ms()?;
        let wait = at.saturating_sub(now_ms());
        Some(tokio::time::Instant::now() + std::time::Duration::from_millis(wait))
    }

    /// The next result of a metadata write.
    pub(crate) async fn written(&mut self) -> (CheckpointId, Result<(), String>) {
        match self.written_rx.recv().await {
            Some(r) => r,
            // Never: `self` holds a sender.
            None => std::future::pending().await,
        }
    }

    pub(crate) fn stats(&self) -> CheckpointStats {
        self.coordinator.stats()
    }

    pub(crate) fn set_all_running(&mut self, jm: &Jm) -> Outcome {
        if self.all_running {
            return Outcome::Continue;
        }
        self.all_running = true;
        self.on_tick(jm)
    }

    pub(crate) fn on_tick(&mut self, jm: &Jm) -> Outcome {
        let actions = self.coordinator.on_tick(now_ms());
        self.execute(jm, actions)
    }

    /// Triggers a checkpoint now (`POST /v1/jobs/{id}/checkpoints`), as Flink 1.19's manual
    /// trigger: it ignores the interval and the minimum pause (the periodic schedule is not
    /// moved), and respects `max_concurrent` — with that many in progress it is refused, not
    /// queued. It is refused as well before every task runs (sources without a mailbox yet would
    /// miss the trigger) and once the coordinator stopped (a task finished, the job is failing or
    /// ending). The periodic side runs first at the same instant (expiries, a due trigger), so a
    /// checkpoint past its timeout is aborted and counted before the concurrency is checked.
    pub(crate) fn trigger_now(&mut self, jm: &Jm) -> (Result<CheckpointId, String>, Outcome) {
        if !self.all_running {
            let reason = "not every task of the job runs yet; trigger again once it does".to_string();
            return (Err(reason), Outcome::Continue);
        }
        let now = now_ms();
        let actions = self.coordinator.on_tick(now);
        let first = self.execute(jm, actions);
        match self.coordinator.trigger_now(now) {
            Ok((id, actions)) => {
                let second = self.execute(jm, actions);
                (Ok(id), if matches!(first, Outcome::FailJob(_)) { first } else { second })
            }
            Err(refused) => (Err(refused.to_string()), first),
        }
    }

    /// Takes a savepoint (`POST /v1/jobs/{id}/savepoints` or `/stop`): queued behind a pending
    /// checkpoint, then aligned and canonical whatever the job's options (see
    /// [`Coordinator::request_savepoint`]); one at a time. A refusal fails the request.
    pub(crate) fn request_savepoint(&mut self, jm: &Jm, ticket: SavepointTicket) -> Outcome {
        if !self.all_running {
            ticket.fail("not every task of the job runs yet; request the savepoint again once it does");
            return Outcome::Continue;
        }
        if let Some(op) = &self.savepoint {
            ticket.fail(format!(
                "savepoint request {} is in progress; one savepoint is taken at a time",
                op.ticket.request
            ));
            return Outcome::Continue;
        }
        match self.coordinator.request_savepoint(now_ms()) {
            Err(refused) => {
                ticket.fail(refused.to_string());
                Outcome::Continue
            }
            Ok(actions) => {
                let destination = ticket.destination();
                self.savepoint = Some(SavepointOp { ticket, id: None, destination });
                self.execute(jm, actions)
            }
        }
    }

    pub(crate) fn on_ack(
        &mut self,
        jm: &Jm,
        task: TaskId,
        id: CheckpointId,
        handle: crate::checkpoint::TaskStateHandle,
        metrics: crate::checkpoint::TaskCheckpointMetrics,
    ) -> Outcome {
        let actions = self.coordinator.on_ack(task, id, handle, metrics, now_ms());
        self.execute(jm, actions)
    }

    pub(crate) fn on_decline(&mut self, jm: &Jm, task: TaskId, id: CheckpointId, reason: String) -> Outcome {
        tracing::warn!(job = %self.job, %task, checkpoint = id, %reason, "a task declined a checkpoint");
        let actions = self.coordinator.on_decline(task, id, reason, now_ms());
        self.execute(jm, actions)
    }

    pub(crate) fn on_task_finished(&mut self, jm: &Jm, task: TaskId) -> Outcome {
        let actions = self.coordinator.on_task_finished(task, now_ms());
        self.execute(jm, actions)
    }

    pub(crate) fn on_written(&mut self, jm: &Jm, id: CheckpointId, result: Result<(), String>) -> Outcome {
        match &result {
            Ok(()) => tracing::debug!(job = %self.job, checkpoint = id, "checkpoint complete"),
            Err(e) => {
                tracing::warn!(job = %self.job, checkpoint = id, error = %e, "a checkpoint's metadata could not be written")
            }
        }
        let actions = self.coordinator.on_metadata_written(id, result, now_ms());
        self.execute(jm, actions)
    }

    /// The attempt ended: pending checkpoints are discarded; a metadata write in flight still
    /// completes its checkpoint (its files stay, and a later restore may use it).
    pub(crate) async fn stop(mut self, jm: &Jm) -> CheckpointStats {
        let actions = self.coordinator.stop(now_ms());
        self.execute(jm, actions);
        self.sweep_shared().await;
        self.coordinator.stats()
    }

    /// Deletes the shared files no completed or finalizing checkpoint uses: every part has
    /// reported its end, which it does only after its snapshot writer stopped, so these are
    /// uploads for checkpoints that will never complete. Awaited before the attempt ends, so
    /// that it never sees the uploads of the next attempt.
    async fn sweep_shared(&self) {
        let (storage, job) = (self.storage.clone(), self.job.to_string());
        let keep = self.coordinator.shared().clone();
        let in_use = self.coordinator.pending_shared();
        let swept = tokio::task::spawn_blocking(move || sweep_orphans(&job, &storage, &keep, &in_use));
        if let Err(e) = swept.await {
            tracing::warn!(job = %self.job, error = %e, "the sweep of shared checkpoint files failed");
        }
    }

    fn execute(&mut self, jm: &Jm, actions: Vec<Action>) -> Outcome {
        let mut outcome = Outcome::Continue;
        for action in actions {
            match action {
                Action::Trigger { id, timestamp_ms, options, .. } => {
                    tracing::debug!(job = %self.job, checkpoint = id, savepoint = options.savepoint, "triggering a checkpoint");
                    if let Some(op) = self.savepoint.as_mut().filter(|_| options.savepoint) {
                        op.id = Some(id);
                        op.ticket.triggered(id);
                    }
                    for tm in &self.members {
                        let message = JmMessage::TriggerCheckpoint {
                            deployment: self.deployment,
                            checkpoint_id: id,
                            timestamp_ms,
                            options,
                        };
                        jm.send(*tm, message);
                    }
                }
                Action::WriteMetadata(metadata) if metadata.savepoint => {
                    let (storage, tx) = (self.storage.clone(), self.written_tx.clone());
                    let destination = self
                        .savepoint
                        .as_ref()
                        .filter(|op| op.id == Some(metadata.id))
                        .map(|op| op.destination.clone());
                    tokio::task::spawn_blocking(move || {
                        let result = match destination {
                            Some(dest) => storage.finalize_savepoint(&metadata, &dest).map_err(|e| e.to_string()),
                            None => Err("no savepoint request waits for it".to_string()),
                        };
                        let _ = tx.send((metadata.id, result));
                    });
                }
                Action::WriteMetadata(metadata) => {
                    let (storage, tx) = (self.storage.clone(), self.written_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let result = storage.write_metadata(&metadata).map_err(|e| e.to_string());
                        let _ = tx.send((metadata.id, result));
                    });
                }
                Action::Notify(notice) => {
                    if let CheckpointNotice::Aborted(id) = notice {
                        tracing::debug!(job = %self.job, checkpoint = id, "checkpoint aborted");
                    }
                    for tm in &self.members {
                        jm.send(*tm, JmMessage::NotifyCheckpoint { deployment: self.deployment, notice });
                    }
                }
                Action::Discard { id } => self.delete(move |s| s.discard(id), format!("checkpoint {id}")),
                Action::DiscardFile(handle) => {
                    let what = handle.file.clone();
                    self.delete(move |s| s.discard_file(&handle), what)
                }
                Action::Subsume { ids } => {
                    for id in ids {
                        self.delete(move |s| s.discard(id), format!("subsumed checkpoint {id}"));
                    }
                }
                Action::DiscardShared { files } => {
                    let what = format!("{} shared files", files.len());
                    self.delete(move |s| s.discard_shared(&files), what)
                }
                Action::FailJob { reason } => outcome = Outcome::FailJob(reason),
                Action::SavepointCompleted { id } => {
                    if let Some(op) = self.savepoint.take_if(|op| op.id == Some(id)) {
                        let location = op.destination.display().to_string();
                        if op.ticket.stop && !matches!(outcome, Outcome::FailJob(_)) {
                            outcome = Outcome::Stop(format!("the job was stopped with savepoint {location}"));
                        }
                        op.ticket.complete(&op.destination);
                    }
                }
                Action::SavepointFailed { id, reason } => {
                    if let Some(op) = self.savepoint.take_if(|op| op.id.is_none_or(|own| own == id)) {
                        op.ticket.fail(format!("savepoint {id} failed: {reason}"));
                    }
                }
            }
        }
        outcome
    }

    /// Deletes on a blocking thread; a failure is logged (the files stay, nothing else breaks).
    fn delete(
        &self,
        f: impl FnOnce(&FsCheckpointStorage) -> Result<(), crate::checkpoint::storage::StorageError> + Send + 'static,
        what: String,
    ) {
        let storage = self.storage.clone();
        let job = self.job;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = f(&storage) {
                tracing::warn!(%job, %what, error = %e, "could not delete checkpoint files");
            }
        });
    }
}
