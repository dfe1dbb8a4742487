//! The dispatcher: the [`ClusterApi`] over the JobManager's state. Submitting checks the job
//! type and its arguments by building the job on a planning cluster, records the job and
//! starts its job master; every other operation reads the tables or sends the job master an
//! event. Nothing here waits for a TaskManager; a checkpoint trigger hands its caller the
//! job master's future answer ([`PendingTrigger`]) instead of waiting for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::api::{
    ApiError, ApiErrorCode, CheckpointConfigInfo, CheckpointDetails, CheckpointingStatistics, ClusterApi,
    ClusterOverview, JobDetails, JobExecutionResult, JobOverview, JobState, JobTypeInfo, PendingTrigger, SavepointInfo,
    SavepointRequest, SavepointStatus, SavepointTriggerResponse, SlotInfo, SubmitRequest, SubmitResponse, SubtaskInfo,
    TaskCounts, TaskManagerInfo, VertexInfo, CHECKPOINT_HISTORY_MAX,
};
use super::checkpoint_stats::config_view;
use super::job_master::{self, Inline, JobEvent};
use super::state::{now_ms, JobEntry, TmEntry};
use super::{Jm, NoRestart, RestartChoice};
use crate::checkpoint::request::{parse_restart_strategy, resolve, JobCheckpointing};
use crate::checkpoint::CheckpointId;
use crate::rpc::ids::{JobId, TaskManagerId, TriggerId};
use crate::rpc::messages::TaskState;
use crate::runtime::cluster::PlanSummary;
use crate::runtime::mini::InlineJob;

/// Events a job master's inbox holds at most.
const INBOX: usize = 4096;
/// Arguments of one submission, at most.
const ARGS_MAX: usize = 256;
/// Bytes of one argument, at most.
const ARG_BYTES_MAX: usize = 4096;
/// Ended jobs the dispatcher remembers, at most; the oldest are forgotten first.
const ENDED_JOBS_MAX: usize = 1000;
/// Parallelism of a submission, at most.
const PARALLELISM_MAX: u32 = 4096;

pub(crate) struct Dispatcher {
    jm: Arc<Jm>,
    runtime: tokio::runtime::Handle,
}

impl Dispatcher {
    pub(crate) fn new(jm: Arc<Jm>, runtime: tokio::runtime::Handle) -> Self {
        Self { jm, runtime }
    }
}

fn parse_job(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|e: crate::rpc::ids::IdError| ApiError::bad_request(e.to_string()))
}

fn tm_info(t: &TmEntry) -> TaskManagerInfo {
    let r = &t.registration;
    TaskManagerInfo {
        id: r.id,
        hostname: r.hostname.clone(),
        pid: r.pid,
        data_address: r.data_address.to_string(),
        slots_total: t.slot_jobs.len() as u32,
        slots_free: t.free_slots().len() as u32,
        slots: r
            .slots
            .iter()
            .map(|s| SlotInfo { index: s.index, cpu: s.cpu, job: t.slot_jobs.get(s.index as usize).copied().flatten() })
            .collect(),
        network_buffers: r.network_buffers,
        last_heartbeat_ms_ago: t.last_heartbeat.elapsed().as_millis() as u64,
        registered_at_ms: t.registered_at_ms,
        data_plane: t.data_plane.clone(),
    }
}

fn counts(j: &JobEntry) -> TaskCounts {
    let mut c = TaskCounts { total: j.tasks.len() as u32, ..Default::default() };
    for (_, _, s) in j.tasks.values() {
        match s {
            TaskState::Deploying => c.deploying += 1,
            TaskState::Running => c.running += 1,
            TaskState::Finished => c.finished += 1,
            TaskState::Failed => c.failed += 1,
            TaskState::Cancelled => c.cancelled += 1,
        }
    }
    c
}

fn overview(id: JobId, j: &JobEntry) -> JobOverview {
    let duration = j.ended.unwrap_or_else(Instant::now).saturating_duration_since(j.started);
    JobOverview {
        jid: id,
        name: j.job_type.clone(),
        args: j.args.clone(),
        state: j.state,
        start_time: j.start_ms,
        end_time: j.end_ms,
        duration_ms: duration.as_millis() as u64,
        attempts: j.attempts,
        tasks: counts(j),
    }
}

fn vertices(j: &JobEntry) -> Vec<VertexInfo> {
    let duration_ns =
        j.ended.unwrap_or_else(Instant::now).saturating_duration_since(j.started).as_nanos().max(1) as f64;
    j.vertices
        .iter()
        .enumerate()
        .map(|(vi, v)| {
            let (head, last) = (v.nodes[0] as u32, *v.nodes.last().expect("a vertex has a node") as u32);
            let mut records_in = 0;
            let mut records_out = 0;
            let mut waiting_ns = 0u64;
            for report in j.metrics.values() {
                for o in &report.operators {
                    if o.node == head {
                        records_in += o.subtasks.iter().map(|s| s.1).sum::<u64>();
                    }
                    if o.node == last {
                        records_out += o.subtasks.iter().map(|s| s.2).sum::<u64>();
                    }
                }
                waiting_ns += report.tasks.iter().filter(|t| t.task == v.name).map(|t| t.backpressure_ns).sum::<u64>();
            }
            let subtasks: Vec<SubtaskInfo> = j
                .tasks
                .range((vi as u32, 0)..(vi as u32 + 1, 0))
                .map(|(&(_, subtask), &(tm, slot, state))| SubtaskInfo { subtask, taskmanager: tm, slot, state })
                .collect();
            VertexInfo {
                id: vi as u32,
                name: v.name.clone(),
                parallelism: v.parallelism,
                records_in,
                records_out,
                backpressure_ratio: (waiting_ns as f64 / (duration_ns * f64::from(v.parallelism.max(1)))).min(1.0),
                subtasks,
            }
        })
        .collect()
}

impl Dispatcher {
    /// Records a job and starts its job master.
    fn start_job(
        &self,
        id: JobId,
        job_type: String,
        args: Vec<String>,
        parallelism: u32,
        (restarts, checkpointing): (Box<dyn job_master::Restarts>, JobCheckpointing),
        inline: Option<Inline>,
    ) {
        let (inbox_tx, inbox) = mpsc::channel::<JobEvent>(INBOX);
        {
            let mut state = self.jm.lock();
            let seq = state.seq();
            state.jobs.insert(
                id,
                JobEntry {
                    job_type: job_type.clone(),
                    args,
                    parallelism,
                    state: JobState::Created,
                    start_ms: now_ms(),
                    end_ms: None,
                    started: Instant::now(),
                    ended: None,
                    attempts: 0,
                    failure: None,
                    exceptions: Default::default(),
                    all_running_after: None,
                    plan: String::new(),
                    vertices: Vec::new(),
                    tasks: BTreeMap::new(),
                    metrics: BTreeMap::new(),
                    outcome: None,
                    inbox: inbox_tx,
                    checkpointing,
                    checkpoint_stats: Default::default(),
                    savepoints: Default::default(),
                    seq,
                },
            );
            let ended: Vec<(u64, JobId)> =
                state.jobs.iter().filter(|(_, j)| j.state.is_terminal()).map(|(id, j)| (j.seq, *id)).collect();
            if ended.len() > ENDED_JOBS_MAX {
                let mut ended = ended;
                ended.sort();
                for (_, old) in ended.iter().take(ended.len() - ENDED_JOBS_MAX) {
                    state.jobs.remove(old);
                }
            }
        }
        if inline.is_some() {
            tracing::debug!(job = %id, %job_type, parallelism, "embedded job submitted");
        } else {
            tracing::info!(job = %id, %job_type, parallelism, "job submitted");
        }
        self.runtime.spawn(job_master::run(self.jm.clone(), id, inbox, restarts, inline));
    }

    /// Runs an embedded job, prepared by its submitter and handed to the TaskManager in memory
    /// (see [`crate::runtime::mini`]). It is never restarted: its closures may not run twice.
    pub(crate) fn submit_inline(&self, id: JobId, parallelism: u32, plan: PlanSummary, job: InlineJob) {
        let name = job.name().to_string();
        let checkpointing = JobCheckpointing { settings: None, dir: None, restore: None, allow_non_restored: false };
        self.start_job(
            id,
            name,
            Vec::new(),
            parallelism,
            (Box::new(NoRestart), checkpointing),
            Some(Inline { plan, job }),
        );
    }
}

impl ClusterApi for Dispatcher {
    fn overview(&self) -> ClusterOverview {
        let state = self.jm.lock();
        ClusterOverview {
            version: env!("CARGO_PKG_VERSION").to_string(),
            taskmanagers: state.tms.len() as u32,
            slots_total: state.tms.values().map(|t| t.slot_jobs.len() as u32).sum(),
            slots_available: state.tms.values().map(|t| t.free_slots().len() as u32).sum(),
            jobs_running: state.jobs.values().filter(|j| !j.state.is_terminal()).count() as u32,
            jobs_finished: state.count_jobs(JobState::Finished),
            jobs_cancelled: state.count_jobs(JobState::Cancelled),
            jobs_failed: state.count_jobs(JobState::Failed),
        }
    }

    fn task_managers(&self) -> Vec<TaskManagerInfo> {
        self.jm.lock().tms_in_order().into_iter().map(tm_info).collect()
    }

    fn task_manager(&self, id: &str) -> Result<TaskManagerInfo, ApiError> {
        let tm: TaskManagerId =
            id.parse().map_err(|e: crate::rpc::ids::IdError| ApiError::bad_request(e.to_string()))?;
        let state = self.jm.lock();
        state.tms.get(&tm).map(tm_info).ok_or_else(|| ApiError::not_found(format!("no TaskManager {tm} is registered")))
    }

    fn job_types(&self) -> Vec<JobTypeInfo> {
        self.jm
            .registry
            .types()
            .map(|t| JobTypeInfo { name: t.name.clone(), about: t.about.clone(), usage: t.usage.clone() })
            .collect()
    }

    fn submit(&self, request: SubmitRequest) -> Result<SubmitResponse, ApiError> {
        if request.args.len() > ARGS_MAX {
            return Err(ApiError::bad_request(format!(
                "{} arguments: at most {ARGS_MAX} are accepted",
                request.args.len()
            )));
        }
        if let Some((i, a)) = request.args.iter().enumerate().find(|(_, a)| a.len() > ARG_BYTES_MAX) {
            return Err(ApiError::bad_request(format!(
                "argument {i} has {} bytes: at most {ARG_BYTES_MAX} are accepted",
                a.len()
            )));
        }
        let parallelism = match request.parallelism {
            Some(0) => return Err(ApiError::bad_request("parallelism must be at least 1")),
            Some(p) if p > PARALLELISM_MAX => {
                return Err(ApiError::bad_request(format!("parallelism {p} is above the limit of {PARALLELISM_MAX}")))
            }
            Some(p) => p,
            None => self.jm.slot_counts().0.max(1),
        };
        let mut checkpointing =
            resolve(&self.jm.settings.checkpoint, request.checkpoints.as_ref(), request.restore.as_ref())
                .map_err(ApiError::bad_request)?;
        if request.allow_non_restored_state && checkpointing.restore.is_none() {
            return Err(ApiError::bad_request(
                "allow_non_restored_state needs a restore (from a checkpoint or savepoint)",
            ));
        }
        checkpointing.allow_non_restored = request.allow_non_restored_state;
        let requested = request
            .restart_strategy
            .as_deref()
            .map(parse_restart_strategy)
            .transpose()
            .map_err(ApiError::bad_request)?;
        job_master::validate(&self.jm, &request.job, &request.args, (parallelism, checkpointing.enabled()))
            .map_err(ApiError::bad_request)?;
        let id = JobId::random();
        let restarts = (self.jm.settings.restarts)(RestartChoice { requested, checkpointing: checkpointing.enabled() });
        self.start_job(id, request.job, request.args, parallelism, (restarts, checkpointing), None);
        Ok(SubmitResponse { jobid: id })
    }

    fn jobs(&self) -> Vec<JobOverview> {
        let state = self.jm.lock();
        let mut jobs: Vec<(&JobId, &JobEntry)> = state.jobs.iter().collect();
        jobs.sort_by_key(|(_, j)| j.seq);
        jobs.into_iter().map(|(id, j)| overview(*id, j)).collect()
    }

    fn job(&self, id: &str) -> Result<JobDetails, ApiError> {
        let job = parse_job(id)?;
        let state = self.jm.lock();
        let j = known(&state.jobs, job)?;
        Ok(JobDetails {
            overview: overview(job, j),
            parallelism: j.parallelism,
            vertices: vertices(j),
            failure: j.failure.clone(),
            exceptions: j.exceptions.iter().cloned().collect(),
            plan: j.plan.clone(),
        })
    }

    fn execution_result(&self, id: &str) -> Result<JobExecutionResult, ApiError> {
        let job = parse_job(id)?;
        let state = self.jm.lock();
        let j = known(&state.jobs, job)?;
        Ok(JobExecutionResult { jid: job, state: j.state, result: j.outcome.clone() })
    }

    fn cancel(&self, id: &str) -> Result<(), ApiError> {
        let job = parse_job(id)?;
        let inbox = {
            let state = self.jm.lock();
            let j = known(&state.jobs, job)?;
            if j.state.is_terminal() {
                return Err(ApiError::new(
                    ApiErrorCode::Conflict,
                    format!("job {job} has already ended ({:?})", j.state),
                ));
            }
            j.inbox.clone()
        };
        if let Err(mpsc::error::TrySendError::Full(event)) = inbox.try_send(JobEvent::Cancel) {
            self.runtime.spawn(async move {
                let _ = inbox.send(event).await;
            });
        }
        Ok(())
    }

    fn checkpoints(&self, id: &str) -> Result<CheckpointingStatistics, ApiError> {
        let job = parse_job(id)?;
        let state = self.jm.lock();
        let j = known(&state.jobs, job)?;
        Ok(j.checkpoint_stats.view(&j.vertices))
    }

    fn checkpoint_config(&self, id: &str) -> Result<CheckpointConfigInfo, ApiError> {
        let job = parse_job(id)?;
        let state = self.jm.lock();
        let j = known(&state.jobs, job)?;
        Ok(config_view(&j.checkpointing))
    }

    fn checkpoint(&self, id: &str, checkpoint: CheckpointId) -> Result<CheckpointDetails, ApiError> {
        let job = parse_job(id)?;
        let state = self.jm.lock();
        let j = known(&state.jobs, job)?;
        j.checkpoint_stats.details(checkpoint, &j.vertices).ok_or_else(|| {
            let held = match j.checkpoint_stats.history_ids() {
                (Some(oldest), Some(newest)) => format!("its history holds checkpoints {oldest} to {newest}"),
                _ => "it has no checkpoint yet".to_string(),
            };
            let takes = if j.checkpointing.enabled() { "" } else { " (it takes no checkpoints)" };
            ApiError::not_found(format!(
                "job {job} has no checkpoint {checkpoint} in its history{takes}: {held}, the newest {} at most, \
                 besides the latest completed and failed",
                CHECKPOINT_HISTORY_MAX
            ))
        })
    }

    fn trigger_checkpoint(&self, id: &str) -> Result<PendingTrigger, ApiError> {
        let job = parse_job(id)?;
        let inbox = {
            let state = self.jm.lock();
            let j = known(&state.jobs, job)?;
            if j.state.is_terminal() {
                return Err(ApiError::new(
                    ApiErrorCode::Conflict,
                    format!("job {job} has already ended ({:?}): no checkpoint can be triggered", j.state),
                ));
            }
            if !j.checkpointing.enabled() {
                return Err(ApiError::new(
                    ApiErrorCode::Conflict,
                    format!(
                        "job {job} takes no checkpoints: submit it with a checkpoint interval and directory \
                         (`checkpoints.interval_ms` and `checkpoints.dir`)"
                    ),
                ));
            }
            j.inbox.clone()
        };
        let (reply, answer) = oneshot::channel();
        match inbox.try_send(JobEvent::TriggerCheckpoint { reply }) {
            Ok(()) => Ok(PendingTrigger::new(job.to_string(), answer)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError::new(
                ApiErrorCode::Unavailable,
                format!("the job master of job {job} has {INBOX} events queued; trigger the checkpoint again later"),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::new(
                ApiErrorCode::Conflict,
                format!("job {job} has ended: no checkpoint can be triggered"),
            )),
        }
    }

    fn trigger_savepoint(
        &self,
        id: &str,
        request: SavepointRequest,
        stop: bool,
    ) -> Result<SavepointTriggerResponse, ApiError> {
        let job = parse_job(id)?;
        let target = self.savepoint_target(&request)?;
        let what = if stop { "stop-with-savepoint" } else { "savepoint" };
        let request_id = TriggerId::random();
        let inbox = {
            let mut state = self.jm.lock();
            let j = state.jobs.get_mut(&job).ok_or_else(|| ApiError::not_found(format!("no job {job}")))?;
            if j.state.is_terminal() {
                return Err(ApiError::new(
                    ApiErrorCode::Conflict,
                    format!("job {job} has already ended ({:?}): no {what} can be taken", j.state),
                ));
            }
            if !j.checkpointing.enabled() {
                return Err(ApiError::new(
                    ApiErrorCode::Conflict,
                    format!(
                        "job {job} takes no checkpoints: a savepoint is taken by its checkpoint coordinator and \
                         written through its checkpoint storage; submit it with a checkpoint interval and directory"
                    ),
                ));
            }
            super::savepoints::record(
                &mut j.savepoints,
                SavepointInfo {
                    request_id: request_id.to_string(),
                    status: SavepointStatus::InProgress,
                    stop,
                    target_directory: target.display().to_string(),
                    checkpoint_id: None,
                    location: None,
                    failure: None,
                    trigger_ms: now_ms(),
                    end_ms: None,
                },
            );
            j.inbox.clone()
        };
        // Sent without the lock: a ticket that cannot be delivered is dropped here, which marks
        // its request failed (and takes the lock).
        let ticket = super::savepoints::SavepointTicket::new(self.jm.clone(), job, request_id, target, stop);
        match inbox.try_send(JobEvent::TriggerSavepoint(ticket)) {
            Ok(()) => {
                tracing::info!(%job, request = %request_id, "{what} requested");
                Ok(SavepointTriggerResponse { request_id: request_id.to_string() })
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError::new(
                ApiErrorCode::Unavailable,
                format!("the job master of job {job} has {INBOX} events queued; request the {what} again later"),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(ApiError::new(ApiErrorCode::Conflict, format!("job {job} has ended: no {what} can be taken")))
            }
        }
    }

    fn savepoint(&self, id: &str, request_id: &str) -> Result<SavepointInfo, ApiError> {
        let job = parse_job(id)?;
        let request: TriggerId =
            request_id.parse().map_err(|e: crate::rpc::ids::IdError| ApiError::bad_request(e.to_string()))?;
        let state = self.jm.lock();
        let j = known(&state.jobs, job)?;
        let request_id = request.to_string();
        j.savepoints.iter().find(|r| r.request_id == request_id).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "job {job} has no savepoint request {request} (it keeps its newest {})",
                super::savepoints::SAVEPOINT_REQUESTS_MAX
            ))
        })
    }
}

impl Dispatcher {
    /// The directory a savepoint request goes to: the request's, else the cluster's default.
    fn savepoint_target(&self, request: &SavepointRequest) -> Result<std::path::PathBuf, ApiError> {
        let target = match request.target_directory.as_deref().map(str::trim) {
            Some("") => return Err(ApiError::bad_request("target_directory is empty")),
            Some(dir) => std::path::PathBuf::from(dir),
            None => self.jm.settings.checkpoint.savepoint_dir.clone().ok_or_else(|| {
                ApiError::bad_request(
                    "no target directory: name one (target_directory; `corestream savepoint JOB_ID DIR`) or set \
                     execution.checkpointing.savepoint-dir",
                )
            })?,
        };
        if !target.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "target_directory {}: give an absolute path (the JobManager writes there)",
                target.display()
            )));
        }
        Ok(target)
    }
}

/// The entry of `job`, or the API's "not found" naming it.
fn known(jobs: &std::collections::HashMap<JobId, JobEntry>, job: JobId) -> Result<&JobEntry, ApiError> {
    jobs.get(&job).ok_or_else(|| ApiError::not_found(format!("no job {job}")))
}
