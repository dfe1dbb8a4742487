//! A fake JobManager behind the REST API: a [`ClusterApi`] with a job table and scripted job
//! types, for the tests of the REST server, the REST client and the command-line client
//! (`tools/tests/client_cli.rs` includes this file by path).
//!
//! Job types: `sum-by-key` (takes `--keys N` and `--records N`, refuses anything else; ends
//! FINISHED on the third look at its result, with operators, accumulators, warnings and network
//! lines), `fail` (ends FAILED on the first look), `forever` (runs until cancelled), and `panic`
//! (its submission panics inside the dispatcher). A parallelism over 8 is refused as 503 (not
//! enough slots). Everything else is an unknown job type.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use corestream::jobmanager::api::{
    ApiError, ApiErrorCode, ClusterApi, ClusterOverview, JobDetails, JobExecutionResult, JobOutcome, JobOverview,
    JobState, JobTypeInfo, OperatorCounts, SlotInfo, SubmitRequest, SubmitResponse, SubtaskInfo, TaskCounts,
    TaskManagerInfo, VertexInfo,
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
        let job = FakeJob {
            id,
            name: request.job,
            args: request.args,
            parallelism,
            state: JobState::Running,
            looks: 0,
            start_time: 1_700_000_000_000,
        };
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
}
