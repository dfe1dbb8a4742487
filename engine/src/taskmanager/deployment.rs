//! One deployment on a TaskManager: a thread of its own builds this process's share of the job
//! from the registry, checks the plan's fingerprint against the JobManager's, starts the slot
//! threads, reports task states as they change (polled every [`STATE_POLL`], never by the
//! slots), and when every local task has ended reports the part's outcome with its counters and
//! accumulators. What the sinks staged is handed back to the control loop, which commits or
//! discards it when the JobManager says so.
//!
//! An embedded cluster's job arrives prepared, in memory ([`InlineJob`]): the control loop
//! deploys it at once ([`start_inline`]) and hands the
//! [`JobHandle`](crate::runtime::job::JobHandle) to the job's owner, who
//! joins it and commits what its sinks staged, as the embedding API promises. A task of the
//! control loop watches it through its counters ([`JobView`]) and reports its states; its part
//! ends when its slots are free again (the owner joined or dropped the handle), as a process's
//! part ends after its deployment thread joined it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corestream_netstack::handshake::TmId;
use tokio::sync::mpsc;

use crate::checkpoint::{BarrierOptions, CheckpointId, CheckpointNotice, ControlMessage, TaskId};
use crate::config::Distribution;
use crate::error::JobError;
use crate::graph::execution::SlotSplit;
use crate::registry::{JobContext, JobRegistry};
use crate::rpc::ids::DeploymentKey;
use crate::rpc::messages::{
    ConnectionReport, DeploymentDescriptor, LatencyReport, OperatorReport, PartOutcome, PartReport, TaskReport,
    TaskState, TaskStateUpdate, WarningReport,
};
use crate::runtime::cluster::{LocalCluster, PartPlacement, TaskMailbox};
use crate::runtime::job::{JobShared, JobView, StagedOutputs};
use crate::runtime::metrics::{JobResult, TaskPhase};
use crate::runtime::mini::InlineJob;

/// How often a running deployment's task states are compared with what was last reported.
pub(crate) const STATE_POLL: Duration = Duration::from_millis(50);

/// How often a running part sends its counters to the JobManager.
pub(crate) const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// What a deployment thread tells the control loop.
pub(crate) enum DeploymentEvent {
    /// Additions to the job's signals.
    Signals {
        deployment: DeploymentKey,
        adds: std::collections::BTreeMap<String, u64>,
    },
    /// Counters so far, sent every [`METRICS_INTERVAL`] while the part runs.
    Metrics {
        deployment: DeploymentKey,
        report: Box<PartReport>,
    },
    States {
        deployment: DeploymentKey,
        updates: Vec<TaskStateUpdate>,
    },
    Ended {
        deployment: DeploymentKey,
        outcome: PartOutcome,
        staged: Option<StagedOutputs>,
    },
    /// A task's state for a checkpoint is written.
    CheckpointAck {
        deployment: DeploymentKey,
        task: TaskId,
        checkpoint_id: CheckpointId,
        handle: crate::checkpoint::TaskStateHandle,
        metrics: crate::checkpoint::TaskCheckpointMetrics,
    },
    /// A task could not take its part of a checkpoint.
    CheckpointDecline {
        deployment: DeploymentKey,
        task: TaskId,
        checkpoint_id: CheckpointId,
        reason: String,
    },
}

/// Shared between the control loop and one deployment thread.
pub(crate) struct DeploymentControl {
    /// The job's signals in this process.
    pub signals: crate::registry::JobSignals,
    /// Set when the JobManager (or the loss of it) cancels the deployment, possibly before its
    /// tasks started.
    pub cancelled: AtomicBool,
    pub canceller: Mutex<Option<Arc<JobShared>>>,
    /// The control mailboxes of the deployment's tasks here, once deployed (empty without
    /// checkpoints).
    pub mailboxes: Mutex<Vec<TaskMailbox>>,
}

impl DeploymentControl {
    pub(crate) fn new() -> Self {
        Self {
            signals: crate::registry::JobSignals::remote(),
            cancelled: AtomicBool::new(false),
            canceller: Mutex::new(None),
            mailboxes: Mutex::new(Vec::new()),
        }
    }

    fn set_mailboxes(&self, mailboxes: &[TaskMailbox]) {
        *self.mailboxes.lock().unwrap_or_else(|e| e.into_inner()) = mailboxes.to_vec();
    }

    /// Starts checkpoint `checkpoint_id` at this deployment's source tasks here; returns the
    /// tasks that could not take the trigger, with the reason.
    pub(crate) fn trigger(
        &self,
        checkpoint_id: CheckpointId,
        timestamp_ms: i64,
        options: BarrierOptions,
    ) -> Vec<(TaskId, String)> {
        let mailboxes = self.mailboxes.lock().unwrap_or_else(|e| e.into_inner());
        mailboxes
            .iter()
            .filter(|m| m.source)
            .filter_map(|m| {
                let message = ControlMessage::Trigger { checkpoint_id, timestamp_ms, options };
                m.mailbox.send(message).err().map(|e| (m.task, e.to_string()))
            })
            .collect()
    }

    /// Tells every task of this deployment here that a checkpoint completed or was aborted.
    pub(crate) fn notify(&self, notice: CheckpointNotice) {
        let mailboxes = self.mailboxes.lock().unwrap_or_else(|e| e.into_inner());
        for m in mailboxes.iter() {
            if let Err(e) = m.mailbox.send(ControlMessage::Notify(notice)) {
                // A later completion covers this one for two-phase-commit sinks.
                tracing::warn!(task = %m.task, ?notice, error = %e, "a checkpoint notification was dropped");
            }
        }
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(job) = self.canceller.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            job.cancel();
        }
    }
}

fn phase_state(phase: TaskPhase) -> TaskState {
    match phase {
        TaskPhase::Deploying => TaskState::Deploying,
        TaskPhase::Running => TaskState::Running,
        TaskPhase::Finished => TaskState::Finished,
        TaskPhase::Failed => TaskState::Failed,
        TaskPhase::Cancelled => TaskState::Cancelled,
    }
}

/// Runs one deployment to its end on the calling thread (a thread of its own).
pub(crate) fn run(
    cluster: LocalCluster,
    registry: JobRegistry,
    descriptor: DeploymentDescriptor,
    control: Arc<DeploymentControl>,
    events: mpsc::Sender<DeploymentEvent>,
) {
    let deployment = descriptor.deployment;
    let send = |event: DeploymentEvent| {
        // The control loop only goes away when the TaskManager stops; nothing is left to tell.
        let _ = events.blocking_send(event);
    };
    let failed = |message: String, retryable: bool| DeploymentEvent::Ended {
        deployment,
        outcome: PartOutcome::Failed { message, retryable },
        staged: None,
    };
    let (handle, parts, drained) = match start(&cluster, &registry, &descriptor, &control.signals, &events) {
        Ok(started) => started,
        Err(e) => {
            send(failed(e.to_string(), e.is_retryable()));
            return;
        }
    };
    let canceller = handle.canceller();
    control.set_mailboxes(&handle.view().mailboxes);
    *control.canceller.lock().unwrap_or_else(|e| e.into_inner()) = Some(canceller.clone());
    if control.cancelled.load(Ordering::Acquire) {
        canceller.cancel();
    }
    let mut reported: Vec<(u32, u32, TaskPhase)> = Vec::new();
    let mut last_metrics = std::time::Instant::now();
    loop {
        let finished = handle.is_finished();
        let phases = handle.task_phases();
        let updates: Vec<TaskStateUpdate> = phases
            .iter()
            .filter(|p| !reported.contains(p))
            .map(|&(vertex, subtask, phase)| TaskStateUpdate { vertex, subtask, state: phase_state(phase) })
            .collect();
        if !updates.is_empty() {
            send(DeploymentEvent::States { deployment, updates });
            reported = phases;
        }
        let adds = control.signals.take_pending();
        if !adds.is_empty() {
            send(DeploymentEvent::Signals { deployment, adds });
        }
        if finished {
            break;
        }
        if last_metrics.elapsed() >= METRICS_INTERVAL {
            last_metrics = std::time::Instant::now();
            let mut report = part_report(&handle.snapshot());
            report.latency.clear();
            send(DeploymentEvent::Metrics { deployment, report: Box::new(report) });
        }
        std::thread::sleep(STATE_POLL);
    }
    let outcome = match handle.join_staged() {
        Ok((result, staged)) if result.status == crate::runtime::metrics::JobStatus::Finished => match parts.finish() {
            Ok(accumulators) => {
                let mut report = part_report(&result);
                report.accumulators = accumulators;
                DeploymentEvent::Ended {
                    deployment,
                    outcome: PartOutcome::Finished(Box::new(report)),
                    staged: Some(staged),
                }
            }
            Err(message) => failed(format!("computing the job's results: {message}"), false),
        },
        Ok(_) => DeploymentEvent::Ended { deployment, outcome: PartOutcome::Cancelled, staged: None },
        Err(JobError::Cancelled) => {
            DeploymentEvent::Ended { deployment, outcome: PartOutcome::Cancelled, staged: None }
        }
        Err(e) if control.cancelled.load(Ordering::Acquire) => {
            tracing::debug!(%deployment, error = %e, "error while the deployment was being cancelled");
            DeploymentEvent::Ended { deployment, outcome: PartOutcome::Cancelled, staged: None }
        }
        Err(e) => failed(e.to_string(), e.is_retryable()),
    };
    if let Some(drained) = drained {
        drained.wait(deployment);
    }
    send(outcome);
}

/// Deploys an embedded job on the calling control loop and hands its handle to the job's owner,
/// who starts its slot threads; a task watches it until its slots are free again. A failure to deploy goes to the owner (as
/// the error its `execute` returns) and ends the part.
pub(crate) fn start_inline(
    cluster: &LocalCluster,
    d: &DeploymentDescriptor,
    inline: InlineJob,
    control: Arc<DeploymentControl>,
    events: mpsc::Sender<DeploymentEvent>,
) {
    let deployment = d.deployment;
    let checkpoints = d
        .checkpointing
        .as_ref()
        .map(|c| super::checkpoints::part_checkpoints(c, deployment, events.clone()))
        .transpose();
    let drained = checkpoints.as_ref().ok().and_then(|c| c.as_ref()).and_then(|c| c.drained.clone());
    let started = match (inline.take_prepared(), d.participants.get(d.index as usize), checkpoints) {
        (_, _, Err(e)) => Err(e),
        (Some(prepared), Some(me), Ok(checkpoints)) => cluster.deploy_unlaunched(
            prepared,
            PartPlacement { slots: Some(&me.slots), checkpoints: checkpoints.as_ref(), ..Default::default() },
        ),
        (None, _, _) => Err(JobError::InvalidJob(format!("job '{}' was deployed already", d.job_type))),
        (_, None, _) => {
            Err(JobError::InvalidJob(format!("deployment names participant {} of {}", d.index, d.participants.len())))
        }
    };
    match started {
        Ok(mut handle) => {
            let (released_tx, released) = tokio::sync::oneshot::channel();
            let resource_manager = inline.take_release_hook();
            handle.on_slots_released(Box::new(move || {
                if let Some(release) = resource_manager {
                    release();
                }
                let _ = released_tx.send(());
            }));
            let view = handle.view();
            control.set_mailboxes(&view.mailboxes);
            *control.canceller.lock().unwrap_or_else(|e| e.into_inner()) = Some(view.shared.clone());
            if control.cancelled.load(Ordering::Acquire) {
                view.shared.cancel();
            }
            tokio::spawn(watch_inline(deployment, view, released, control, events, drained));
            inline.reply(Ok(handle));
        }
        Err(e) => {
            let outcome = PartOutcome::Failed { message: e.to_string(), retryable: e.is_retryable() };
            inline.reply(Err(e));
            tokio::spawn(async move {
                let _ = events.send(DeploymentEvent::Ended { deployment, outcome, staged: None }).await;
            });
        }
    }
}

/// Reports an embedded job's task states while it runs (and its counters every
/// [`METRICS_INTERVAL`]), then its part's outcome once `released` says its slots are free.
async fn watch_inline(
    deployment: DeploymentKey,
    view: Arc<JobView>,
    mut released: tokio::sync::oneshot::Receiver<()>,
    control: Arc<DeploymentControl>,
    events: mpsc::Sender<DeploymentEvent>,
    drained: Option<Arc<super::checkpoints::WriterDrained>>,
) {
    // The job master recorded every task as deploying; only changes are news.
    let mut reported: Vec<(u32, u32, TaskPhase)> =
        view.task_phases().into_iter().map(|(vertex, subtask, _)| (vertex, subtask, TaskPhase::Deploying)).collect();
    let mut last_metrics = std::time::Instant::now();
    let report_states = |reported: &mut Vec<(u32, u32, TaskPhase)>| {
        let phases = view.task_phases();
        let updates: Vec<TaskStateUpdate> = phases
            .iter()
            .filter(|p| !reported.contains(p))
            .map(|&(vertex, subtask, phase)| TaskStateUpdate { vertex, subtask, state: phase_state(phase) })
            .collect();
        *reported = phases;
        (!updates.is_empty()).then_some(DeploymentEvent::States { deployment, updates })
    };
    loop {
        if let Some(states) = report_states(&mut reported) {
            let _ = events.send(states).await;
        }
        if last_metrics.elapsed() >= METRICS_INTERVAL {
            last_metrics = std::time::Instant::now();
            let mut report = part_report(&view.snapshot());
            report.latency.clear();
            let _ = events.send(DeploymentEvent::Metrics { deployment, report: Box::new(report) }).await;
        }
        tokio::select! {
            _ = &mut released => break,
            _ = tokio::time::sleep(STATE_POLL) => {}
        }
    }
    if let Some(states) = report_states(&mut reported) {
        let _ = events.send(states).await;
    }
    let outcome = match view.outcome() {
        Ok(result) if result.status == crate::runtime::metrics::JobStatus::Finished => {
            PartOutcome::Finished(Box::new(part_report(&result)))
        }
        Ok(_) | Err(JobError::Cancelled) => PartOutcome::Cancelled,
        Err(e) if control.cancelled.load(Ordering::Acquire) => {
            tracing::debug!(%deployment, error = %e, "error while the deployment was being cancelled");
            PartOutcome::Cancelled
        }
        Err(e) => PartOutcome::Failed { message: e.to_string(), retryable: e.is_retryable() },
    };
    if let Some(drained) = drained {
        drained.wait_async(deployment).await;
    }
    let _ = events.send(DeploymentEvent::Ended { deployment, outcome, staged: None }).await;
}

/// Builds and deploys this TaskManager's share.
fn start(
    cluster: &LocalCluster,
    registry: &JobRegistry,
    d: &DeploymentDescriptor,
    signals: &crate::registry::JobSignals,
    events: &mpsc::Sender<DeploymentEvent>,
) -> Result<
    (crate::runtime::job::JobHandle, crate::registry::JobParts, Option<Arc<super::checkpoints::WriterDrained>>),
    JobError,
> {
    let job_type = registry.lookup(&d.job_type).map_err(JobError::InvalidJob)?;
    let me = d.participants.get(d.index as usize).ok_or_else(|| {
        JobError::InvalidJob(format!("deployment names participant {} of {}", d.index, d.participants.len()))
    })?;
    let split = SlotSplit::from_counts(&d.participants.iter().map(|p| p.job_slots.len() as u32).collect::<Vec<_>>());
    let peers: Vec<SocketAddr> = d.participants.iter().map(|p| p.data_address).collect();
    let distribution =
        Distribution::with_split(d.index, split, peers).map_err(|e| JobError::InvalidJob(e.to_string()))?;
    let mut env = cluster.environment();
    if let Some(p) = d.parallelism {
        env.set_parallelism(p);
    }
    let checkpoints = d.checkpointing.as_ref().is_some_and(|c| c.dir.is_some());
    let context = JobContext { args: &d.args, planning: false, signals: signals.clone(), checkpoints };
    let parts =
        (job_type.build)(&mut env, &context).map_err(|e| JobError::InvalidJob(format!("job '{}': {e}", d.job_type)))?;
    if checkpoints {
        env.check_sources_rewind()?;
    }
    let ids: Vec<TmId> = d.participants.iter().map(|p| TmId(p.tm.0)).collect();
    let checkpoints = d
        .checkpointing
        .as_ref()
        .map(|c| super::checkpoints::part_checkpoints(c, d.deployment, events.clone()))
        .transpose()?;
    let placement = PartPlacement {
        distribution: Some(&distribution),
        slots: Some(&me.slots),
        fingerprint: Some(d.fingerprint),
        peers: Some((d.deployment.0, &ids)),
        checkpoints: checkpoints.as_ref(),
    };
    let handle = env.execute_part(&d.job_type, placement)?;
    let drained = checkpoints.as_ref().and_then(|c| c.drained.clone());
    Ok((handle, parts, drained))
}

/// The part's counters as the control plane carries them.
pub(crate) fn part_report(result: &JobResult) -> PartReport {
    let operators = result
        .operators
        .iter()
        .map(|o| OperatorReport {
            node: o.node as u32,
            name: o.name.clone(),
            parallelism: o.parallelism,
            subtasks: o
                .per_subtask
                .iter()
                .enumerate()
                .filter(|(_, (i, o))| *i > 0 || *o > 0)
                .map(|(s, (i, o))| (s as u32, *i, *o))
                .collect(),
            late_records_dropped: o.late_records_dropped,
        })
        .collect();
    let tasks = result
        .tasks
        .iter()
        .map(|t| TaskReport {
            task: t.task.clone(),
            subtask: t.subtask,
            slot: t.slot,
            buffers_in: t.buffers_in,
            buffers_out: t.buffers_out,
            bytes_out: t.bytes_out,
            flushes_full: t.flushes_full,
            flushes_idle: t.flushes_idle,
            flushes_timeout: t.flushes_timeout,
            flushes_final: t.flushes_final,
            backpressure_waits: t.backpressure_waits,
            backpressure_ns: t.backpressure_time.as_nanos().min(u64::MAX as u128) as u64,
            credit_stalls: t.credit_stalls,
        })
        .collect();
    let warnings = result
        .warnings
        .iter()
        .map(|w| WarningReport {
            operator: w.operator.clone(),
            subtask: w.subtask,
            count: w.count,
            message: w.message.clone(),
        })
        .collect();
    let latency = result
        .latency
        .iter()
        .filter_map(|l| {
            let histogram_v2 = crate::registry::encode_histogram(&l.histogram).ok()?;
            Some(LatencyReport {
                sink: l.sink.clone(),
                sink_node: l.sink_node as u32,
                source_subtask: l.source_subtask,
                histogram_v2,
            })
        })
        .collect();
    let connections = result
        .network
        .iter()
        .map(|c| ConnectionReport {
            peer: c.peer.clone(),
            frames_in: c.stats.frames_in,
            frames_out: c.stats.frames_out,
            buffers_in: c.stats.buffers_in,
            buffers_out: c.stats.buffers_out,
            bytes_in: c.stats.bytes_in,
            bytes_out: c.stats.bytes_out,
            credit_announcements: c.stats.credit_announcements,
            remote_credit_stalls: c.remote_credit_stalls,
        })
        .collect();
    PartReport {
        wall_time_ns: result.wall_time.as_nanos().min(u64::MAX as u128) as u64,
        operators,
        tasks,
        warnings,
        latency,
        connections,
        pool_peak_in_use: result.pool_peak_in_use,
        buffers_reserved: result.buffers_reserved,
        accumulators: Default::default(),
    }
}
