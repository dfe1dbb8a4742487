//! A fake JobManager behind the REST API: a [`ClusterApi`] with a job table and scripted job
//! types, for the tests of the REST server, the REST client and the command-line client
//! (`tools/tests/client_cli.rs` includes this file by path).
//!
//! Job types: `sum-by-key` (takes `--keys N` and `--records N`, refuses anything else; ends
//! FINISHED on the third look at its result, with operators, accumulators, warnings and network
//! lines), `fail` (ends FAILED on the first look), `forever` (runs until cancelled), and `panic`
//! (its submission panics inside the dispatcher). A parallelism over 8 is refused as 503 (not
//! enough slots). Everything else is an unknown job type.
//!
//! Checkpoints: `forever` takes them (two completed, 1 and 2, and one failed, 3; a trigger
//! while it runs adds an in-progress one with the next id, which completes on the next look at
//! its details); the other job types take none (zero counts, triggers refused with 409).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use corestream::jobmanager::api::{
    ApiError, ApiErrorCode, CheckpointConfigInfo, CheckpointCountsInfo, CheckpointDetails, CheckpointInfo,
    CheckpointStatusInfo, CheckpointSummaryInfo, CheckpointType, CheckpointingStatistics, ClusterApi, ClusterOverview,
    JobDetails, JobExecutionResult, JobOutcome, JobOverview, JobState, JobTypeInfo, LatestCheckpoints, MinAvgMax,
    OperatorCounts, PendingTrigger, RetainedCheckpointInfo, SavepointInfo, SavepointRequest, SavepointStatus,
    SavepointTriggerResponse, SlotInfo, SubmitRequest, SubmitResponse, SubtaskCheckpointInfo, SubtaskCheckpointStatus,
    SubtaskInfo, TaskCounts, TaskManagerInfo, VertexCheckpointInfo, VertexInfo,
};
use corestream::rpc::ids::{JobId, TaskManagerId};
use corestream::rpc::messages::{Accumulator, TaskState};

pub const SLOTS: u32 = 8;

/// The fake TaskManager's id.
pub fn tm_id() -> TaskManagerId {
    "7a000000000000000000000000000001".parse().unwrap()
}

#[derive(Debug, Clone)]
struct FakeJob {
    id: JobId,
    name: String,
    args: Vec<String>,
    parallelism: u32,
    state: JobState,
    looks: u32,
    start_time: u64,
    /// Its checkpoints, oldest first (`forever` only).
    checkpoints: Vec<CheckpointInfo>,
    /// Its savepoint requests, each complete at once (`forever` only).
    savepoints: Vec<SavepointInfo>,
}

#[derive(Debug, Default)]
pub struct FakeCluster {
    jobs: Mutex<BTreeMap<JobId, FakeJob>>,
    /// Calls that reached `submit` or `cancel`, accepted or not.
    mutations: Mutex<u32>,
}

impl FakeCluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many submissions and cancellations reached the dispatcher.
    pub fn mutations(&self) -> u32 {
        *self.mutations.lock().unwrap()
    }

    pub fn job_count(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    pub fn state_of(&self, id: JobId) -> Option<JobState> {
        self.jobs.lock().unwrap().get(&id).map(|j| j.state)
    }

    fn find(&self, id: &str) -> Result<FakeJob, ApiError> {
        let id: JobId = id.parse().map_err(|e| ApiError::bad_request(format!("{e}")))?;
        self.jobs.lock().unwrap().get(&id).cloned().ok_or_else(|| ApiError::not_found(format!("no job {id}")))
    }

    fn overview_of(job: &FakeJob) -> JobOverview {
        let ended = job.state.is_terminal();
        let p = job.parallelism;
        JobOverview {
            jid: job.id,
            name: job.name.clone(),
            args: job.args.clone(),
            state: job.state,
            start_time: job.start_time,
            end_time: ended.then_some(job.start_time + 1500),
            duration_ms: 1500,
            attempts: 1,
            tasks: TaskCounts {
                total: 2 * p,
                running: if ended { 0 } else { 2 * p },
                finished: if job.state == JobState::Finished { 2 * p } else { 0 },
                cancelled: if job.state == JobState::Cancelled { 2 * p } else { 0 },
                failed: if job.state == JobState::Failed { 1 } else { 0 },
                ..Default::default()
            },
        }
    }

    fn outcome_of(job: &FakeJob) -> JobOutcome {
        let mut accumulators = BTreeMap::new();
        accumulators.insert("records".to_string(), Accumulator::Count(1000));
        accumulators.insert("total".to_string(), Accumulator::Sum(-12_345_678_901_234_567_890_i128));
        accumulators.insert("keys".to_string(), Accumulator::Lines(vec!["a".into(), "b".into()]));
        JobOutcome {
            parts: Vec::new(),
            all_running_ms: None,
            state: job.state,
            duration_ms: 1500,
            failure: match job.state {
                JobState::Failed => Some("the source failed: boom".to_string()),
                _ => None,
            },
            operators: vec![
                OperatorCounts {
                    name: "Source: sequence".into(),
                    parallelism: job.parallelism,
                    records_in: 0,
                    records_out: 1000,
                },
                OperatorCounts {
                    name: "Keyed Reduce".into(),
                    parallelism: job.parallelism,
                    records_in: 1000,
                    records_out: 10,
                },
            ],
            accumulators,
            warnings: vec!["3 records skipped by Map".to_string()],
            network: vec!["tm 7a000000 -> tm 7b000000: 12 buffers, 384 KiB".to_string()],
        }
    }
}

impl ClusterApi for FakeCluster {
    fn overview(&self) -> ClusterOverview {
        let jobs = self.jobs.lock().unwrap();
        let count = |s: JobState| jobs.values().filter(|j| j.state == s).count() as u32;
        ClusterOverview {
            version: "fake".into(),
            taskmanagers: 1,
            slots_total: SLOTS,
            slots_available: SLOTS,
            jobs_running: count(JobState::Running),
            jobs_finished: count(JobState::Finished),
            jobs_cancelled: count(JobState::Cancelled),
            jobs_failed: count(JobState::Failed),
        }
    }

    fn task_managers(&self) -> Vec<TaskManagerInfo> {
        vec![TaskManagerInfo {
            id: tm_id(),
            hostname: "localhost".into(),
            pid: 4242,
            data_address: "127.0.0.1:6124".into(),
            slots_total: SLOTS,
            slots_free: SLOTS,
            slots: (0..SLOTS).map(|index| SlotInfo { index, cpu: Some(index as usize), job: None }).collect(),
            network_buffers: 2048,
            last_heartbeat_ms_ago: 120,
            registered_at_ms: 1_700_000_000_000,
            data_plane: None,
        }]
    }

    fn task_manager(&self, id: &str) -> Result<TaskManagerInfo, ApiError> {
        self.task_managers()
            .into_iter()
            .find(|tm| tm.id.to_string() == id)
            .ok_or_else(|| ApiError::not_found(format!("no TaskManager {id}")))
    }

    fn job_types(&self) -> Vec<JobTypeInfo> {
        ["sum-by-key", "fail", "forever", "panic"]
            .into_iter()
            .map(|name| JobTypeInfo {
                name: name.into(),
                about: format!("the {name} job"),
                usage: format!("{name} [--keys N]"),
            })
            .collect()
    }

    fn submit(&self, request: SubmitRequest) -> Result<SubmitResponse, ApiError> {
        *self.mutations.lock().unwrap() += 1;
        match request.job.as_str() {
            "sum-by-key" => {
                let mut args = request.args.iter();
                while let Some(arg) = args.next() {
                    match arg.as_str() {
                        "--keys" | "--records" | "-p" => {
                            let value = args
                                .next()
                                .ok_or_else(|| ApiError::bad_request(format!("sum-by-key: {arg} needs a value")))?;
                            value.parse::<u64>().map_err(|_| {
                                ApiError::bad_request(format!("sum-by-key: {arg} {value}: not a number"))
                            })?;
                        }
                        other => return Err(ApiError::bad_request(format!("sum-by-key: unknown argument `{other}`"))),
                    }
                }
            }
            "fail" | "forever" => {}
            "panic" => panic!("the dispatcher tripped over job type `panic`"),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown job type `{other}`; known: sum-by-key, fail, forever, panic"
                )))
            }
        }
        let parallelism = request.parallelism.unwrap_or(2);
        if parallelism == 0 {
            return Err(ApiError::bad_request("parallelism 0: it must be at least 1"));
        }
        if parallelism > SLOTS {
            return Err(ApiError::new(
                ApiErrorCode::Unavailable,
                format!("parallelism {parallelism} needs more slots than the cluster's {SLOTS}"),
            ));
        }
        let id = JobId::random();
        let mut job = FakeJob {
            id,
            name: request.job,
            args: request.args,
            parallelism,
            state: JobState::Running,
            looks: 0,
            start_time: 1_700_000_000_000,
            checkpoints: Vec::new(),
            savepoints: Vec::new(),
        };
        if job.name == "forever" {
            job.checkpoints = vec![
                checkpoint(1, CheckpointStatusInfo::Completed, false),
                checkpoint(2, CheckpointStatusInfo::Completed, true),
                checkpoint(3, CheckpointStatusInfo::Failed, false),
            ];
        }
        self.jobs.lock().unwrap().insert(id, job);
        Ok(SubmitResponse { jobid: id })
    }

    fn jobs(&self) -> Vec<JobOverview> {
        self.jobs.lock().unwrap().values().map(Self::overview_of).collect()
    }

    fn job(&self, id: &str) -> Result<JobDetails, ApiError> {
        let job = self.find(id)?;
        let subtask_state = match job.state {
            JobState::Finished => TaskState::Finished,
            JobState::Cancelled => TaskState::Cancelled,
            JobState::Failed => TaskState::Failed,
            _ => TaskState::Running,
        };
        let vertex = |id: u32, name: &str, records_in: u64, records_out: u64, backpressure_ratio: f64| VertexInfo {
            id,
            name: name.to_string(),
            parallelism: job.parallelism,
            records_in,
            records_out,
            backpressure_ratio,
            subtasks: (0..job.parallelism)
                .map(|subtask| SubtaskInfo { subtask, taskmanager: tm_id(), slot: subtask, state: subtask_state })
                .collect(),
        };
        Ok(JobDetails {
            overview: Self::overview_of(&job),
            parallelism: job.parallelism,
            vertices: vec![
                vertex(0, "Source: sequence -> Map", 0, 1000, 0.25),
                vertex(1, "Keyed Reduce -> Sink", 1000, 10, 0.0),
            ],
            failure: (job.state == JobState::Failed).then(|| "the source failed: boom".to_string()),
            exceptions: Vec::new(),
            plan: "Source: sequence -> Map (2) --hash--> Keyed Reduce -> Sink (2)".into(),
        })
    }

    fn execution_result(&self, id: &str) -> Result<JobExecutionResult, ApiError> {
        let parsed = self.find(id)?.id;
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs.get_mut(&parsed).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        job.looks += 1;
        match (job.name.as_str(), job.state) {
            ("sum-by-key", JobState::Running) if job.looks >= 3 => job.state = JobState::Finished,
            ("fail", JobState::Running) => job.state = JobState::Failed,
            (_, JobState::Cancelling) => job.state = JobState::Cancelled,
            _ => {}
        }
        Ok(JobExecutionResult {
            jid: job.id,
            state: job.state,
            result: job.state.is_terminal().then(|| Self::outcome_of(job)),
        })
    }

    fn cancel(&self, id: &str) -> Result<(), ApiError> {
        *self.mutations.lock().unwrap() += 1;
        let parsed = self.find(id)?.id;
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs.get_mut(&parsed).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        if job.state.is_terminal() {
            return Err(ApiError::new(ApiErrorCode::Conflict, format!("job {id} has already ended ({:?})", job.state)));
        }
        job.state = JobState::Cancelling;
        Ok(())
    }

    fn checkpoints(&self, id: &str) -> Result<CheckpointingStatistics, ApiError> {
        let job = self.find(id)?;
        let latest = |status| job.checkpoints.iter().rev().find(|c| c.status == status).cloned();
        let count = |status| job.checkpoints.iter().filter(|c| c.status == status).count() as u64;
        let completed = count(CheckpointStatusInfo::Completed);
        Ok(CheckpointingStatistics {
            counts: CheckpointCountsInfo {
                restored: 0,
                total: job.checkpoints.len() as u64,
                in_progress: count(CheckpointStatusInfo::InProgress),
                completed,
                failed: count(CheckpointStatusInfo::Failed),
            },
            summary: CheckpointSummaryInfo {
                completed,
                end_to_end_duration_ms: MinAvgMax { min: 12, avg: 15, max: 18 },
                checkpointed_size_bytes: MinAvgMax { min: 2048, avg: 3072, max: 4096 },
                state_size_bytes: MinAvgMax { min: 1024, avg: 1536, max: 2048 },
                persisted_data_bytes: MinAvgMax { min: 0, avg: 16_384, max: 32_768 },
                cpu_time_us: MinAvgMax { min: 8, avg: 8, max: 8 },
            },
            latest: LatestCheckpoints {
                completed: latest(CheckpointStatusInfo::Completed),
                failed: latest(CheckpointStatusInfo::Failed),
                restored: None,
            },
            history: job.checkpoints.iter().rev().cloned().collect(),
            retained: latest(CheckpointStatusInfo::Completed)
                .map(|c| RetainedCheckpointInfo {
                    id: c.id,
                    trigger_timestamp: c.trigger_timestamp,
                    end_timestamp: c.end_timestamp.unwrap_or(c.trigger_timestamp),
                    checkpointed_size_bytes: c.checkpointed_size_bytes,
                })
                .into_iter()
                .collect(),
        })
    }

    fn checkpoint_config(&self, id: &str) -> Result<CheckpointConfigInfo, ApiError> {
        let job = self.find(id)?;
        let on = job.name == "forever";
        Ok(CheckpointConfigInfo {
            enabled: on,
            mode: on.then(|| "exactly_once".to_string()),
            interval_ms: on.then_some(200),
            timeout_ms: on.then_some(600_000),
            min_pause_ms: on.then_some(0),
            max_concurrent: on.then_some(1),
            tolerable_failed_checkpoints: on.then_some(0),
            retained: on.then_some(1),
            unaligned_checkpoints: on.then_some(false),
            aligned_checkpoint_timeout_ms: on.then_some(0),
            directory: on.then(|| "/tmp/ck/forever".to_string()),
            restore: None,
        })
    }

    fn checkpoint(&self, id: &str, checkpoint_id: u64) -> Result<CheckpointDetails, ApiError> {
        let parsed = self.find(id)?.id;
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs.get_mut(&parsed).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        let c =
            job.checkpoints.iter_mut().find(|c| c.id == checkpoint_id).ok_or_else(|| {
                ApiError::not_found(format!("job {id} has no checkpoint {checkpoint_id} in its history"))
            })?;
        let shown = c.clone();
        if c.status == CheckpointStatusInfo::InProgress {
            *c = CheckpointInfo { manual: true, ..checkpoint(c.id, CheckpointStatusInfo::Completed, false) };
        }
        let subtasks = (0..2)
            .map(|subtask| SubtaskCheckpointInfo {
                vertex: 0,
                subtask,
                status: if shown.status == CheckpointStatusInfo::Completed || subtask == 0 {
                    SubtaskCheckpointStatus::Completed
                } else {
                    SubtaskCheckpointStatus::PendingOrFailed
                },
                ack_timestamp: Some(shown.trigger_timestamp + 10),
                end_to_end_duration_ms: Some(10),
                checkpointed_size_bytes: 1024,
                state_size_bytes: 512,
                persisted_data_bytes: 0,
                alignment_duration_ms: 1,
                sync_duration_ms: 2,
                async_duration_ms: 3,
                cpu_time_us: 4,
                unaligned: false,
            })
            .collect();
        Ok(CheckpointDetails { checkpoint: shown, subtasks })
    }

    fn trigger_checkpoint(&self, id: &str) -> Result<PendingTrigger, ApiError> {
        *self.mutations.lock().unwrap() += 1;
        let parsed = self.find(id)?.id;
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs.get_mut(&parsed).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        if job.state.is_terminal() {
            return Err(ApiError::new(ApiErrorCode::Conflict, format!("job {id} has already ended ({:?})", job.state)));
        }
        if job.name != "forever" {
            return Err(ApiError::new(ApiErrorCode::Conflict, format!("job {id} takes no checkpoints")));
        }
        let next = job.checkpoints.last().map_or(1, |c| c.id + 1);
        job.checkpoints
            .push(CheckpointInfo { manual: true, ..checkpoint(next, CheckpointStatusInfo::InProgress, false) });
        Ok(PendingTrigger::ready(id, Ok(next)))
    }

    fn trigger_savepoint(
        &self,
        id: &str,
        request: SavepointRequest,
        stop: bool,
    ) -> Result<SavepointTriggerResponse, ApiError> {
        *self.mutations.lock().unwrap() += 1;
        let parsed = self.find(id)?.id;
        let target = request.target_directory.ok_or_else(|| ApiError::bad_request("no target directory"))?;
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs.get_mut(&parsed).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        if job.state.is_terminal() || job.name != "forever" {
            return Err(ApiError::new(ApiErrorCode::Conflict, format!("job {id} takes no savepoints")));
        }
        let request_id = format!("{:032x}", job.savepoints.len() + 1);
        job.savepoints.push(SavepointInfo {
            request_id: request_id.clone(),
            status: SavepointStatus::Completed,
            stop,
            location: Some(format!("{target}/savepoint-fake-{}", job.savepoints.len() + 1)),
            target_directory: target,
            checkpoint_id: Some(job.checkpoints.len() as u64 + 1),
            failure: None,
            trigger_ms: 1_700_000_000_000,
            end_ms: Some(1_700_000_000_010),
        });
        if stop {
            job.state = JobState::Cancelled;
        }
        Ok(SavepointTriggerResponse { request_id })
    }

    fn savepoint(&self, id: &str, request_id: &str) -> Result<SavepointInfo, ApiError> {
        let parsed = self.find(id)?.id;
        let jobs = self.jobs.lock().unwrap();
        let job = jobs.get(&parsed).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        job.savepoints
            .iter()
            .find(|s| s.request_id == request_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("job {id} has no savepoint request {request_id}")))
    }
}

/// Checkpoint `id` of a fake job: triggered at `1_700_000_000_000 + id * 1000`, with one
/// source vertex of two subtasks.
pub fn checkpoint(id: u64, status: CheckpointStatusInfo, unaligned: bool) -> CheckpointInfo {
    let trigger = 1_700_000_000_000 + id * 1000;
    let done = status != CheckpointStatusInfo::InProgress;
    let acked = if status == CheckpointStatusInfo::Completed { 2 } else { 1 };
    CheckpointInfo {
        id,
        status,
        checkpoint_type: if unaligned { CheckpointType::UnalignedCheckpoint } else { CheckpointType::Checkpoint },
        manual: false,
        trigger_timestamp: trigger,
        latest_ack_timestamp: Some(trigger + 10),
        end_timestamp: done.then_some(trigger + 15),
        end_to_end_duration_ms: if done { 15 } else { 10 },
        checkpointed_size_bytes: 2048 * id,
        state_size_bytes: 1024 * id,
        persisted_data_bytes: if unaligned { 32_768 } else { 0 },
        alignment_duration_ms: 1,
        sync_duration_ms: 2,
        async_duration_ms: 3,
        cpu_time_us: 4 * u64::from(acked),
        num_subtasks: 2,
        num_acknowledged_subtasks: acked,
        failure_message: (status == CheckpointStatusInfo::Failed)
            .then(|| "expired after 600000 ms before every task acknowledged".to_string()),
        tasks: vec![VertexCheckpointInfo {
            id: 0,
            name: "Source: sequence -> Map".into(),
            num_subtasks: 2,
            num_acknowledged_subtasks: acked,
            latest_ack_timestamp: Some(trigger + 10),
            end_to_end_duration_ms: 10,
            checkpointed_size_bytes: 2048 * id,
            state_size_bytes: 1024 * id,
            persisted_data_bytes: if unaligned { 32_768 } else { 0 },
            alignment_duration_ms: 1,
            sync_duration_ms: 2,
            async_duration_ms: 3,
            cpu_time_us: 4 * u64::from(acked),
        }],
    }
}
