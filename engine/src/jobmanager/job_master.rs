//! One job master per job: it runs the job's attempts. Each attempt takes the slots the job
//! needs from the resource manager's table (waiting at most `slot.request.timeout`), asks
//! their TaskManagers to reserve them, computes the plan's fingerprint over that split, sends
//! every TaskManager its deployment descriptor, and tracks task states. When every part has
//! finished it tells every TaskManager to commit what its sinks staged; when a part fails or a
//! TaskManager is lost it cancels the other parts, has their staged output discarded, frees
//! the slots and asks the restart strategy whether and when to run again. Until checkpoints
//! exist a restart reruns the job from its beginning. Each failed attempt goes into the job's
//! exception history (`GET /v1/jobs/{id}`) with the time the job master learned of it — for a
//! lost TaskManager, the moment the JobManager removed it — and the TaskManager to blame.
//!
//! An embedded job ([`Inline`]) goes through the same steps with three differences: its plan
//! comes from its submitter (no build by name), it does not wait for slots (its submitter gets
//! [`JobError::NotEnoughSlots`] at once, as embedding always did), and it has no commit round:
//! its owner joins the handle the TaskManager gave it and commits what its sinks staged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::api::{ApiError, ApiErrorCode, JobException, JobOutcome, JobState, OperatorCounts, PartSummary};
use super::checkpoints::{prepare_attempt, Outcome as CkOutcome, Running};
use super::scheduler::FreeSlots;
use super::state::now_ms;
use super::Jm;
use crate::checkpoint::{CheckpointId, TaskId};
use crate::error::JobError;
use crate::graph::execution::SlotSplit;
use crate::registry::{merge_accumulators, JobContext, JobSignals};
use crate::rpc::ids::{DeploymentKey, JobId, TaskManagerId};
use crate::rpc::messages::{
    Accumulators, DeploymentDescriptor, JmMessage, PartOutcome, PartReport, Participant, TaskState, TmMessage,
};

/// What reaches a job master.
#[derive(Debug)]
pub(crate) enum JobEvent {
    /// A message from a TaskManager about this job.
    Tm { tm: TaskManagerId, message: TmMessage },
    /// A TaskManager was removed (heartbeat timeout or closed connection).
    TmLost { tm: TaskManagerId, reason: String },
    /// The user cancelled the job.
    Cancel,
    /// Trigger a checkpoint now (`POST /v1/jobs/{id}/checkpoints`). Answered while an attempt
    /// runs; dropped (which its requester reads as "not running") in every other phase.
    TriggerCheckpoint { reply: tokio::sync::oneshot::Sender<Result<CheckpointId, ApiError>> },
    /// Take a savepoint (`POST /v1/jobs/{id}/savepoints` or `/stop`). Taken while an attempt
    /// runs; dropped in every other phase, which fails the request.
    TriggerSavepoint(super::savepoints::SavepointTicket),
}

/// The restart strategy of one job, as the job master consults it: `Ok(delay)` runs again
/// after `delay`, `Err(reason)` gives up.
pub trait Restarts: Send {
    fn on_failure(&mut self, now_ms: u64, retryable: bool) -> Result<Duration, String>;
}

/// How long TaskManagers may take to confirm a slot reservation, and parts to stop after a
/// cancellation, and TaskManagers to report a commit.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// An embedded job as its job master holds it.
pub(crate) struct Inline {
    /// Its plan over one TaskManager, computed by its submitter.
    pub plan: crate::runtime::cluster::PlanSummary,
    pub job: crate::runtime::mini::InlineJob,
}

/// How an attempt ended.
enum AttemptEnd {
    Finished(JobOutcome),
    Failed(Failure),
    Cancelled,
}

/// Why an attempt failed, as the job master first learned of it.
struct Failure {
    message: String,
    /// Whether running again could succeed (the restart strategy reads it).
    retryable: bool,
    /// When the job master learned of it (milliseconds since the Unix epoch).
    at_ms: u64,
    /// The TaskManager that was lost or whose part failed, if one is to blame.
    taskmanager: Option<TaskManagerId>,
}

impl Failure {
    fn now(message: impl Into<String>, retryable: bool) -> Self {
        Self { message: message.into(), retryable, at_ms: now_ms(), taskmanager: None }
    }

    fn on(self, tm: TaskManagerId) -> Self {
        Self { taskmanager: Some(tm), ..self }
    }
}

/// Failures a job's details keep, at most (the newest; Flink's `web.exception-history-size`).
pub(crate) const EXCEPTIONS_MAX: usize = 16;

/// Adds `exception` to a job's history, forgetting the oldest beyond [`EXCEPTIONS_MAX`].
pub(crate) fn remember(history: &mut VecDeque<JobException>, exception: JobException) {
    history.push_back(exception);
    while history.len() > EXCEPTIONS_MAX {
        history.pop_front();
    }
}

/// One TaskManager's part of an attempt.
struct Part {
    tm: TaskManagerId,
    slots: Vec<u32>,
    offered: bool,
    ended: Option<PartOutcome>,
    committed: bool,
}

pub(crate) async fn run(
    jm: Arc<Jm>,
    job: JobId,
    mut inbox: mpsc::Receiver<JobEvent>,
    mut restarts: Box<dyn Restarts>,
    inline: Option<Inline>,
) {
    let mut attempt = 0u32;
    loop {
        jm.update_job(job, |j| {
            j.attempts = attempt + 1;
            j.tasks.clear();
            j.metrics.clear();
            j.all_running_after = None;
        });
        let end = run_attempt(&jm, job, attempt, &mut inbox, inline.as_ref()).await;
        let (state, failure, outcome) = match end {
            AttemptEnd::Finished(outcome) => (JobState::Finished, None, Some(outcome)),
            AttemptEnd::Cancelled => (JobState::Cancelled, None, None),
            AttemptEnd::Failed(failure) => {
                let Failure { message, retryable, at_ms, taskmanager } = failure;
                jm.update_job(job, |j| {
                    let exception =
                        JobException { timestamp: at_ms, attempt: attempt + 1, message: message.clone(), taskmanager };
                    remember(&mut j.exceptions, exception);
                });
                match restarts.on_failure(now_ms(), retryable) {
                    Ok(delay) => {
                        tracing::warn!(%job, attempt, error = %message, ?delay, "job attempt failed; restarting");
                        jm.update_job(job, |j| {
                            j.state = JobState::Restarting;
                            j.failure = Some(message.clone());
                        });
                        if wait_or_cancel(&mut inbox, delay).await {
                            (JobState::Cancelled, Some(message), None)
                        } else {
                            attempt += 1;
                            continue;
                        }
                    }
                    Err(reason) => {
                        tracing::info!(%job, error = %message, %reason, "job failed");
                        (JobState::Failed, Some(format!("{message} ({reason})")), None)
                    }
                }
            }
        };
        if let Some(inline) = inline.as_ref().filter(|_| state != JobState::Finished) {
            // Its submitter is still waiting if the job ended before it was deployed.
            inline.job.reply(Err(match (&failure, state) {
                (_, JobState::Cancelled) => JobError::Cancelled,
                (Some(f), _) => JobError::InvalidJob(format!("job '{}' could not be deployed: {f}", inline.job.name())),
                (None, _) => JobError::InvalidJob(format!("job '{}' ended before it was deployed", inline.job.name())),
            }));
        }
        let failure_text = failure.clone();
        jm.update_job(job, move |j| {
            j.state = state;
            j.end_ms = Some(now_ms());
            j.ended = Some(Instant::now());
            if failure_text.is_some() {
                j.failure = failure_text;
            }
            let duration_ms = j.started.elapsed().as_millis() as u64;
            j.outcome = Some(outcome.unwrap_or_else(|| JobOutcome {
                state,
                duration_ms,
                failure: j.failure.clone(),
                operators: Vec::new(),
                accumulators: Default::default(),
                warnings: Vec::new(),
                network: Vec::new(),
                parts: Vec::new(),
                all_running_ms: None,
            }));
            let all_running_ms = j.all_running_after.map(|d| d.as_secs_f64() * 1e3);
            if let Some(o) = j.outcome.as_mut() {
                o.state = state;
                o.duration_ms = duration_ms;
                o.all_running_ms = all_running_ms;
            }
        });
        jm.forget_routes(job);
        return;
    }
}

/// Waits `delay`; true if the job was cancelled meanwhile.
async fn wait_or_cancel(inbox: &mut mpsc::Receiver<JobEvent>, delay: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + delay;
    loop {
        match tokio::time::timeout_at(deadline, inbox.recv()).await {
            Err(_) => return false,
            Ok(Some(JobEvent::Cancel)) | Ok(None) => return true,
            Ok(Some(_)) => {}
        }
    }
}

async fn run_attempt(
    jm: &Arc<Jm>,
    job: JobId,
    attempt: u32,
    inbox: &mut mpsc::Receiver<JobEvent>,
    inline: Option<&Inline>,
) -> AttemptEnd {
    let Some((job_type, args, parallelism, checkpoints)) =
        jm.with_job(job, |j| (j.job_type.clone(), j.args.clone(), j.parallelism, j.checkpointing.enabled()))
    else {
        return AttemptEnd::Failed(Failure::now("the job vanished from the dispatcher", false));
    };
    jm.update_job(job, |j| j.state = JobState::Created);
    let needed = match inline {
        Some(inline) => inline.plan.slots_needed,
        None => match jm.plan(&job_type, &args, (parallelism, checkpoints), &SlotSplit::even(parallelism.max(1), 1)) {
            Ok(plan) => plan.slots_needed,
            Err(message) => return AttemptEnd::Failed(Failure::now(message, false)),
        },
    };

    // Slots: wait until enough are free, then take them in the table.
    let slot_wait = if inline.is_some() { Duration::ZERO } else { jm.settings.slot_request_timeout };
    let deadline = tokio::time::Instant::now() + slot_wait;
    let chosen: Vec<FreeSlots> = loop {
        let notified = jm.slots_changed.notified();
        if let Some(chosen) = jm.take_slots(job, needed) {
            break chosen;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                let (free, total) = jm.slot_counts();
                if let Some(inline) = inline {
                    inline.job.reply(Err(JobError::NotEnoughSlots { needed, free, total }));
                }
                return AttemptEnd::Failed(Failure::now(
                    format!(
                        "could not get {needed} slot(s) within slot.request.timeout ({:?}): {free} of {total} slot(s) \
                         are free on {} TaskManager(s)",
                        jm.settings.slot_request_timeout,
                        jm.tm_count()
                    ),
                    true,
                ));
            }
            event = inbox.recv() => if matches!(event, Some(JobEvent::Cancel) | None) {
                return AttemptEnd::Cancelled;
            },
        }
    };
    let allocation = jm.new_allocation(job);
    let mut parts: Vec<Part> = chosen
        .iter()
        .map(|c| Part { tm: c.tm, slots: c.slots.clone(), offered: false, ended: None, committed: false })
        .collect();
    for p in &parts {
        jm.send(p.tm, JmMessage::RequestSlots { allocation, job, slots: p.slots.clone() });
    }
    let confirm_deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    while parts.iter().any(|p| !p.offered) {
        let event = match tokio::time::timeout_at(confirm_deadline, inbox.recv()).await {
            Err(_) => {
                return abandon(
                    jm,
                    job,
                    allocation,
                    &parts,
                    Failure::now("TaskManagers did not confirm the slot reservation in time", true),
                )
            }
            Ok(None) | Ok(Some(JobEvent::Cancel)) => {
                release(jm, job, allocation, &parts);
                return AttemptEnd::Cancelled;
            }
            Ok(Some(e)) => e,
        };
        match event {
            JobEvent::Tm { tm, message: TmMessage::SlotsOffered { allocation: a, .. } } if a == allocation => {
                if let Some(p) = parts.iter_mut().find(|p| p.tm == tm) {
                    p.offered = true;
                }
            }
            JobEvent::Tm { tm, message: TmMessage::SlotsRefused { allocation: a, reason } } if a == allocation => {
                return abandon(
                    jm,
                    job,
                    allocation,
                    &parts,
                    Failure::now(format!("TaskManager {} refused slots: {reason}", jm.tm_name(tm)), true).on(tm),
                );
            }
            JobEvent::TmLost { tm, reason } if parts.iter().any(|p| p.tm == tm) => {
                return abandon(jm, job, allocation, &parts, Failure::now(reason, true).on(tm));
            }
            _ => {}
        }
    }

    // The plan over this split, and the descriptors.
    let split = SlotSplit::from_counts(&parts.iter().map(|p| p.slots.len() as u32).collect::<Vec<_>>());
    let planned = match inline {
        Some(inline) => Ok(inline.plan.clone()),
        None => jm.plan(&job_type, &args, (parallelism, checkpoints), &split),
    };
    let plan = match planned {
        Ok(plan) => plan,
        Err(message) => {
            release(jm, job, allocation, &parts);
            return AttemptEnd::Failed(Failure::now(message, false));
        }
    };
    // Where this attempt starts from, and its checkpoints (files are read off this task).
    let (ck_name, ck_spec, ck_vertices) = (
        inline.map_or_else(|| job_type.clone(), |i| i.job.name().to_string()),
        jm.with_job(job, |j| j.checkpointing.clone()),
        plan.vertices.clone(),
    );
    let Some(ck_spec) = ck_spec else {
        release(jm, job, allocation, &parts);
        return AttemptEnd::Failed(Failure::now("the job vanished from the dispatcher", false));
    };
    let prepared =
        tokio::task::spawn_blocking(move || prepare_attempt(&ck_name, &ck_spec, attempt, &ck_vertices)).await;
    let mut attempt_checkpoints = match prepared {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(message)) => {
            release(jm, job, allocation, &parts);
            return AttemptEnd::Failed(Failure::now(message, false));
        }
        Err(e) => {
            release(jm, job, allocation, &parts);
            return AttemptEnd::Failed(Failure::now(format!("preparing the job's checkpoints: {e}"), true));
        }
    };
    if let Some(restore) = attempt_checkpoints.deployment.as_ref().and_then(|d| d.restore.as_ref()) {
        jm.update_job(job, |j| j.checkpoint_stats.restored(restore.id, &restore.dir, now_ms()));
    }
    let mut participants = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let Some(data_address) = jm.data_address(p.tm) else {
            let gone = Failure::now(format!("TaskManager {} is gone", jm.tm_name(p.tm)), true).on(p.tm);
            return abandon(jm, job, allocation, &parts, gone);
        };
        participants.push(Participant {
            tm: p.tm,
            data_address,
            job_slots: split.local(i as u32),
            slots: p.slots.clone(),
        });
    }
    let deployment = DeploymentKey::random();
    jm.route_deployment(deployment, job);
    jm.update_job(job, |j| {
        j.plan = plan.text.clone();
        j.vertices = plan.vertices.clone();
        j.state = JobState::Running;
        for (vi, v) in plan.vertices.iter().enumerate() {
            for subtask in 0..v.parallelism {
                let owner = split.owner(subtask);
                let p = &participants[owner as usize];
                let slot = p.slots[(subtask - p.job_slots.start) as usize];
                j.tasks.insert((vi as u32, subtask), (p.tm, slot, TaskState::Deploying));
            }
        }
    });
    for (i, p) in participants.iter().enumerate() {
        let descriptor = DeploymentDescriptor {
            deployment,
            job_id: job,
            job_type: job_type.clone(),
            args: args.clone(),
            parallelism: Some(parallelism),
            attempt,
            fingerprint: plan.fingerprint,
            participants: participants.clone(),
            index: i as u32,
            allocation,
            checkpointing: attempt_checkpoints.deployment.clone(),
            inline: inline.map(|i| i.job.clone()),
        };
        jm.send(p.tm, JmMessage::Deploy(Box::new(descriptor)));
    }
    if inline.is_some() {
        tracing::debug!(%job, %deployment, "embedded job deployed");
    } else {
        tracing::info!(%job, %deployment, attempt, taskmanagers = parts.len(), "job deployed");
    }

    // Track the parts.
    let mut failure: Option<Failure> = None;
    let mut cancelled = false;
    let mut signals: BTreeMap<String, u64> = BTreeMap::new();
    let members: Vec<TaskManagerId> = parts.iter().map(|p| p.tm).collect();
    let broadcast = |signals: &BTreeMap<String, u64>| {
        for tm in &members {
            jm.send(*tm, JmMessage::Signals { deployment, totals: signals.clone() });
        }
    };
    let mut checkpoints = match attempt_checkpoints.start(job, deployment, members.clone()) {
        Ok(c) => c,
        Err(message) => {
            failure = Some(Failure::now(format!("the job's checkpoints cannot start: {message}"), false));
            cancel_parts(jm, &parts, deployment, &message);
            None
        }
    };
    loop {
        if parts.iter().all(|p| p.ended.is_some()) {
            break;
        }
        let next = match checkpoints.as_mut() {
            None => Next::Event(inbox.recv().await),
            Some(c) => {
                let wake = c.next_wakeup();
                tokio::select! {
                    event = inbox.recv() => Next::Event(event),
                    (id, result) = c.written() => Next::Written(id, result),
                    _ = sleep_until(wake) => Next::Tick,
                }
            }
        };
        let event = match next {
            Next::Event(Some(event)) => event,
            Next::Event(None) => break,
            Next::Written(id, result) => {
                if let Some(c) = checkpoints.as_mut() {
                    let outcome = c.on_written(jm, id, result);
                    publish_stats(jm, job, c);
                    on_outcome(jm, job, &parts, deployment, outcome, &mut failure, &mut cancelled);
                }
                continue;
            }
            Next::Tick => {
                if let Some(c) = checkpoints.as_mut() {
                    let outcome = c.on_tick(jm);
                    publish_stats(jm, job, c);
                    on_outcome(jm, job, &parts, deployment, outcome, &mut failure, &mut cancelled);
                }
                continue;
            }
        };
        match event {
            JobEvent::TriggerCheckpoint { reply } => {
                let (answer, outcome) = trigger_now(jm, job, checkpoints.as_mut(), (cancelled, failure.is_some()));
                if let Ok(id) = &answer {
                    tracing::info!(%job, checkpoint = id, "checkpoint triggered on request");
                }
                let _ = reply.send(answer);
                on_outcome(jm, job, &parts, deployment, outcome, &mut failure, &mut cancelled);
            }
            JobEvent::TriggerSavepoint(ticket) => match checkpoints.as_mut() {
                _ if cancelled || failure.is_some() => {
                    let what = if cancelled { "being cancelled" } else { "failing" };
                    ticket.fail(format!("job {job} is {what}: no savepoint was taken"));
                }
                None => ticket.fail(format!("job {job} runs without a checkpoint coordinator: no savepoint was taken")),
                Some(c) => {
                    let outcome = c.request_savepoint(jm, ticket);
                    publish_stats(jm, job, c);
                    on_outcome(jm, job, &parts, deployment, outcome, &mut failure, &mut cancelled);
                }
            },
            JobEvent::Cancel => {
                if !cancelled {
                    cancelled = true;
                    jm.update_job(job, |j| j.state = JobState::Cancelling);
                    cancel_parts(jm, &parts, deployment, "the job was cancelled");
                }
            }
            JobEvent::TmLost { tm, reason } => {
                if let Some(p) = parts.iter_mut().find(|p| p.tm == tm && p.ended.is_none()) {
                    p.ended = Some(PartOutcome::Failed { message: reason.clone(), retryable: true });
                    if failure.is_none() && !cancelled {
                        failure = Some(Failure::now(reason.clone(), true).on(tm));
                        cancel_parts(jm, &parts, deployment, &reason);
                    }
                }
            }
            JobEvent::Tm { tm, message } => match message {
                TmMessage::TaskStates { deployment: d, updates } if d == deployment => {
                    let mut all_running = false;
                    let finished: Vec<TaskId> = updates
                        .iter()
                        .filter(|u| u.state == TaskState::Finished)
                        .map(|u| TaskId { vertex: u.vertex, subtask: u.subtask })
                        .collect();
                    jm.update_job(job, |j| {
                        for u in updates {
                            if let Some(t) = j.tasks.get_mut(&(u.vertex, u.subtask)) {
                                t.2 = u.state;
                            }
                        }
                        all_running = j.tasks.values().all(|t| t.2 != TaskState::Deploying);
                        if all_running && j.all_running_after.is_none() {
                            j.all_running_after = Some(j.started.elapsed());
                        }
                    });
                    if let Some(c) = checkpoints.as_mut() {
                        for task in finished {
                            let outcome = c.on_task_finished(jm, task);
                            on_outcome(jm, job, &parts, deployment, outcome, &mut failure, &mut cancelled);
                        }
                        if all_running {
                            let outcome = c.set_all_running(jm);
                            on_outcome(jm, job, &parts, deployment, outcome, &mut failure, &mut cancelled);
                        }
                        publish_stats(jm, job, c);
                    }
                    if all_running && !signals.contains_key(JobSignals::ALL_RUNNING) {
                        if inline.is_some() {
                            tracing::debug!(%job, %deployment, "all tasks running");
                        } else {
                            tracing::info!(%job, %deployment, "all tasks running");
                        }
                        signals.insert(JobSignals::ALL_RUNNING.to_string(), 1);
                        broadcast(&signals);
                    }
                }
                TmMessage::Signals { deployment: d, adds } if d == deployment => {
                    for (name, n) in adds {
                        if signals.len() > JobSignals::NAMES_MAX && !signals.contains_key(&name) {
                            tracing::warn!(%job, name, "a job signal past the limit of names was ignored");
                            continue;
                        }
                        *signals.entry(name).or_default() += n;
                    }
                    broadcast(&signals);
                }
                TmMessage::AcknowledgeCheckpoint { deployment: d, task, checkpoint_id, handle, metrics }
                    if d == deployment =>
                {
                    if let Some(c) = checkpoints.as_mut() {
                        let outcome = c.on_ack(jm, task, checkpoint_id, handle, metrics);
                        publish_stats(jm, job, c);
                        on_outcome(jm, job, &parts, deployment, outcome, &mut failure, &mut cancelled);
                    }
                }
                TmMessage::DeclineCheckpoint { deployment: d, task, checkpoint_id, reason } if d == deployment => {
                    if let Some(c) = checkpoints.as_mut() {
                        let outcome = c.on_decline(jm, task, checkpoint_id, reason);
                        publish_stats(jm, job, c);
                        on_outcome(jm, job, &parts, deployment, outcome, &mut failure, &mut cancelled);
                    }
                }
                TmMessage::Metrics { deployment: d, report } if d == deployment => jm.update_job(job, |j| {
                    j.metrics.insert(tm, *report);
                }),
                TmMessage::PartEnded { deployment: d, outcome } if d == deployment => {
                    let Some(p) = parts.iter_mut().find(|p| p.tm == tm) else { continue };
                    jm.release_tm_slots(job, tm);
                    if let PartOutcome::Failed { message, retryable } = &outcome {
                        if failure.is_none() && !cancelled {
                            let name = jm.tm_name(tm);
                            failure =
                                Some(Failure::now(format!("{message} (on TaskManager {name})"), *retryable).on(tm));
                        }
                    }
                    if let PartOutcome::Finished(report) = &outcome {
                        jm.update_job(job, |j| {
                            j.metrics.insert(tm, (**report).clone());
                        });
                    }
                    p.ended = Some(outcome);
                    if failure.is_some() {
                        let reason = failure.as_ref().map(|f| f.message.clone()).unwrap_or_default();
                        cancel_parts(jm, &parts, deployment, &reason);
                    }
                }
                _ => {}
            },
        }
    }
    if let Some(c) = checkpoints.take() {
        let stats = c.stop(jm).await;
        jm.update_job(job, |j| {
            j.checkpoint_stats.publish(stats);
            j.checkpoint_stats.end_attempt();
        });
    }
    let all_finished = parts.iter().all(|p| matches!(p.ended, Some(PartOutcome::Finished(_))));
    if cancelled || failure.is_some() || !all_finished {
        for p in &parts {
            if matches!(p.ended, Some(PartOutcome::Finished(_))) {
                jm.send(p.tm, JmMessage::Discard { deployment });
            }
        }
        jm.release_all(job, allocation);
        return match (cancelled, failure) {
            (true, _) => AttemptEnd::Cancelled,
            (false, Some(failure)) => AttemptEnd::Failed(failure),
            (false, None) => AttemptEnd::Failed(Failure::now("a part of the job was cancelled", true)),
        };
    }

    // Every part finished: commit everywhere (an embedded job's owner commits its own).
    if inline.is_none() {
        for p in &parts {
            jm.send(p.tm, JmMessage::Commit { deployment });
        }
    }
    let commit_deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    let mut commit_error = None;
    while inline.is_none() && parts.iter().any(|p| !p.committed) {
        match tokio::time::timeout_at(commit_deadline, inbox.recv()).await {
            Err(_) => {
                commit_error = Some("TaskManagers did not confirm the commit in time".to_string());
                break;
            }
            Ok(None) => break,
            Ok(Some(JobEvent::Tm { tm, message: TmMessage::Committed { deployment: d, error } }))
                if d == deployment =>
            {
                if let Some(p) = parts.iter_mut().find(|p| p.tm == tm) {
                    p.committed = true;
                }
                if let Some(e) = error {
                    commit_error.get_or_insert(format!("TaskManager {}: {e}", jm.tm_name(tm)));
                }
            }
            Ok(Some(JobEvent::TmLost { tm, reason })) => {
                if let Some(p) = parts.iter_mut().find(|p| p.tm == tm && !p.committed) {
                    p.committed = true;
                    commit_error.get_or_insert(format!("lost before it committed: {reason}"));
                }
            }
            Ok(Some(_)) => {}
        }
    }
    jm.release_all(job, allocation);
    if let Some(message) = commit_error {
        return AttemptEnd::Failed(Failure::now(
            format!("the job finished but its output could not be committed: {message}"),
            false,
        ));
    }
    let reports: Vec<(TaskManagerId, PartReport)> = parts
        .iter()
        .filter_map(|p| match &p.ended {
            Some(PartOutcome::Finished(r)) => Some((p.tm, (**r).clone())),
            _ => None,
        })
        .collect();
    match merge_outcome(jm, &plan.vertices, &reports) {
        Ok(outcome) => AttemptEnd::Finished(outcome),
        Err(message) => AttemptEnd::Failed(Failure::now(message, false)),
    }
}

/// What the tracking loop waits for next.
enum Next {
    Event(Option<JobEvent>),
    Written(CheckpointId, Result<(), String>),
    Tick,
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Acts on what the checkpoint side says: fails the attempt (too many failed checkpoints), or
/// cancels the job once a stop-with-savepoint's savepoint is complete.
fn on_outcome(
    jm: &Jm,
    job: JobId,
    parts: &[Part],
    deployment: DeploymentKey,
    outcome: CkOutcome,
    failure: &mut Option<Failure>,
    cancelled: &mut bool,
) {
    match outcome {
        CkOutcome::FailJob(reason) if failure.is_none() && !*cancelled => {
            tracing::warn!(%deployment, %reason, "failing the job: too many failed checkpoints");
            *failure = Some(Failure::now(reason.clone(), true));
            cancel_parts(jm, parts, deployment, &reason);
        }
        CkOutcome::Stop(reason) if failure.is_none() && !*cancelled => {
            tracing::info!(%job, %reason, "stopping the job");
            *cancelled = true;
            jm.update_job(job, |j| j.state = JobState::Cancelling);
            cancel_parts(jm, parts, deployment, &reason);
        }
        _ => {}
    }
}

fn publish_stats(jm: &Jm, job: JobId, c: &Running) {
    let stats = c.stats();
    jm.update_job(job, |j| j.checkpoint_stats.publish(stats));
}

/// Triggers a checkpoint now, for `POST /v1/jobs/{id}/checkpoints`: refused while the attempt
/// is being cancelled or failing, for an attempt without a coordinator, and as the
/// coordinator refuses it (see [`Running::trigger_now`]).
fn trigger_now(
    jm: &Jm,
    job: JobId,
    checkpoints: Option<&mut Running>,
    (cancelled, failing): (bool, bool),
) -> (Result<CheckpointId, ApiError>, CkOutcome) {
    let conflict = |message: String| (Err(ApiError::new(ApiErrorCode::Conflict, message)), CkOutcome::Continue);
    if cancelled || failing {
        let what = if cancelled { "being cancelled" } else { "failing" };
        return conflict(format!("job {job} is {what}: no checkpoint was triggered"));
    }
    let Some(c) = checkpoints else {
        return conflict(format!("job {job} runs without a checkpoint coordinator: no checkpoint was triggered"));
    };
    let (result, outcome) = c.trigger_now(jm);
    publish_stats(jm, job, c);
    let result = result.map_err(|reason| {
        ApiError::new(ApiErrorCode::Conflict, format!("job {job}: no checkpoint was triggered: {reason}"))
    });
    (result, outcome)
}

fn cancel_parts(jm: &Jm, parts: &[Part], deployment: DeploymentKey, reason: &str) {
    for p in parts.iter().filter(|p| p.ended.is_none()) {
        jm.send(p.tm, JmMessage::Cancel { deployment, reason: reason.to_string() });
    }
}

fn release(jm: &Jm, job: JobId, allocation: u64, parts: &[Part]) {
    for p in parts {
        jm.send(p.tm, JmMessage::FreeSlots { allocation });
    }
    jm.release_all(job, allocation);
}

fn abandon(jm: &Jm, job: JobId, allocation: u64, parts: &[Part], failure: Failure) -> AttemptEnd {
    release(jm, job, allocation, parts);
    AttemptEnd::Failed(failure)
}

/// The job's outcome from every part's report: records per operator summed over the parts,
/// accumulators merged, warnings and connections listed.
fn merge_outcome(
    jm: &Jm,
    vertices: &[crate::runtime::cluster::VertexSummary],
    reports: &[(TaskManagerId, PartReport)],
) -> Result<JobOutcome, String> {
    let mut operators: BTreeMap<u32, OperatorCounts> = BTreeMap::new();
    let mut accumulators = Accumulators::new();
    let mut warnings = Vec::new();
    let mut network = Vec::new();
    for (tm, r) in reports {
        for o in &r.operators {
            let entry = operators.entry(o.node).or_insert_with(|| OperatorCounts {
                name: o.name.clone(),
                parallelism: o.parallelism,
                records_in: 0,
                records_out: 0,
            });
            for (_, i, out) in &o.subtasks {
                entry.records_in += i;
                entry.records_out += out;
            }
        }
        merge_accumulators(&mut accumulators, &r.accumulators)?;
        warnings.extend(r.warnings.iter().map(|w| format!("{} (subtask {}): {}", w.operator, w.subtask, w.message)));
        let name = jm.tm_name(*tm);
        network.extend(r.connections.iter().map(|c| {
            format!(
                "TaskManager {name} <-> {}: {} buffers / {:.1} MB out, {} buffers / {:.1} MB in, {} remote credit stalls",
                c.peer,
                c.buffers_out,
                c.bytes_out as f64 / 1e6,
                c.buffers_in,
                c.bytes_in as f64 / 1e6,
                c.remote_credit_stalls
            )
        }));
    }
    let _ = vertices;
    let parts = reports
        .iter()
        .map(|(tm, r)| PartSummary {
            taskmanager: *tm,
            wall_time_ns: r.wall_time_ns,
            pool_peak_in_use: r.pool_peak_in_use,
            buffers_reserved: r.buffers_reserved,
            connections: r.connections.clone(),
        })
        .collect();
    Ok(JobOutcome {
        parts,
        state: JobState::Finished,
        duration_ms: 0,
        failure: None,
        operators: operators.into_values().collect(),
        accumulators,
        warnings,
        network,
        all_running_ms: None,
    })
}

/// Checks a submission: the job type exists and builds with these arguments.
pub(crate) fn validate(
    jm: &Jm,
    job_type: &str,
    args: &[String],
    (parallelism, checkpoints): (u32, bool),
) -> Result<(), String> {
    jm.plan(job_type, args, (parallelism, checkpoints), &SlotSplit::even(parallelism.max(1), 1)).map(|_| ())
}

/// Builds the job on a planning cluster (see [`crate::registry`]).
pub(crate) fn plan_job(
    jm: &Jm,
    job_type: &str,
    args: &[String],
    (parallelism, checkpoints): (u32, bool),
    split: &SlotSplit,
) -> Result<crate::runtime::cluster::PlanSummary, String> {
    let job = jm.registry.lookup(job_type)?;
    let planner = crate::runtime::cluster::LocalCluster::planner(jm.settings.cluster.clone(), parallelism.max(1));
    let mut env = planner.environment();
    env.set_parallelism(parallelism.max(1));
    let signals = crate::registry::JobSignals::local();
    (job.build)(&mut env, &JobContext { args, planning: true, signals, checkpoints })
        .map_err(|e| format!("job '{job_type}': {e}"))?;
    if checkpoints {
        // A source that cannot rewind is refused at submission, not when the job is deployed.
        env.check_sources_rewind().map_err(|e| format!("job '{job_type}': {e}"))?;
    }
    env.plan_summary(job_type, split).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exception(attempt: u32) -> JobException {
        JobException {
            timestamp: 1_000 + u64::from(attempt),
            attempt,
            message: format!("failure {attempt}"),
            taskmanager: None,
        }
    }

    #[test]
    fn the_history_keeps_the_newest_failures_in_order() {
        let mut history = VecDeque::new();
        for attempt in 1..=3 {
            remember(&mut history, exception(attempt));
        }
        assert_eq!(history.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2, 3]);
        for attempt in 4..=40 {
            remember(&mut history, exception(attempt));
        }
        assert_eq!(history.len(), EXCEPTIONS_MAX);
        assert_eq!(history.front().map(|e| e.attempt), Some(40 - EXCEPTIONS_MAX as u32 + 1));
        assert_eq!(history.back().map(|e| e.attempt), Some(40));
    }

    #[test]
    fn a_failure_is_dated_when_it_is_noticed_and_names_its_task_manager() {
        let before = now_ms();
        let tm = TaskManagerId::random();
        let f = Failure::now("lost", true).on(tm);
        assert!(f.at_ms >= before && f.at_ms <= now_ms());
        assert_eq!((f.message.as_str(), f.retryable, f.taskmanager), ("lost", true, Some(tm)));
        assert_eq!(Failure::now("x", false).taskmanager, None);
    }
}
