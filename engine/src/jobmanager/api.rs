//! What the JobManager offers its clients, independent of how it is reached: the request and
//! response types of the REST API (serde, JSON field names as the API documents them) and the
//! [`ClusterApi`] trait the dispatcher implements and the REST layer calls. Every operation is
//! short and synchronous (it takes the dispatcher's lock, never waits for a TaskManager), so an
//! HTTP handler can call it directly; the one that needs the job master's answer (a checkpoint
//! trigger) returns a [`PendingTrigger`] to wait on, asynchronously or not, with a timeout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::rpc::ids::{JobId, TaskManagerId};
use crate::rpc::messages::{Accumulator, DataPlaneReport, TaskState};

/// `GET /v1/overview`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterOverview {
    pub version: String,
    pub taskmanagers: u32,
    pub slots_total: u32,
    pub slots_available: u32,
    pub jobs_running: u32,
    pub jobs_finished: u32,
    pub jobs_cancelled: u32,
    pub jobs_failed: u32,
}

/// One slot of a TaskManager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SlotInfo {
    pub index: u32,
    pub cpu: Option<usize>,
    /// The job running in it, if any.
    pub job: Option<JobId>,
}

/// `GET /v1/taskmanagers` (a list of these) and `GET /v1/taskmanagers/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskManagerInfo {
    pub id: TaskManagerId,
    pub hostname: String,
    pub pid: u32,
    pub data_address: String,
    pub slots_total: u32,
    pub slots_free: u32,
    pub slots: Vec<SlotInfo>,
    pub network_buffers: u32,
    /// Milliseconds since the last heartbeat from it.
    pub last_heartbeat_ms_ago: u64,
    /// Milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
    /// Its data connections to other TaskManagers (one per peer, shared by every job), as of
    /// its last heartbeat; absent before its first.
    #[serde(default)]
    pub data_plane: Option<DataPlaneReport>,
}

/// `POST /v1/jobs`: run a registered job type by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// A registered job type (`GET /v1/job-types`).
    pub job: String,
    /// Its arguments, as on the command line.
    #[serde(default)]
    pub args: Vec<String>,
    /// Default parallelism; all free slots the job can use when absent.
    #[serde(default)]
    pub parallelism: Option<u32>,
    /// Overrides of the cluster's checkpoint settings (`execution.checkpointing.*`).
    #[serde(default)]
    pub checkpoints: Option<crate::checkpoint::request::CheckpointRequest>,
    /// Start from a checkpoint instead of from the beginning.
    #[serde(default)]
    pub restore: Option<crate::checkpoint::request::RestoreRequest>,
    /// With `restore`: drop the state of operators this job no longer has (matched by operator
    /// id) instead of refusing the restore.
    #[serde(default)]
    pub allow_non_restored_state: bool,
    /// The restart strategy (`none`, `fixed-delay`, `exponential-delay`, `failure-rate`) with the
    /// cluster's parameters for it; by default the cluster's, or Flink's default.
    #[serde(default)]
    pub restart_strategy: Option<String>,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    pub jobid: JobId,
}

/// A job type the cluster can run (`GET /v1/job-types`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobTypeInfo {
    pub name: String,
    pub about: String,
    pub usage: String,
}

/// A job's state, with Flink's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Accepted, waiting for slots.
    Created,
    Running,
    /// Failed and waiting to run again (restart strategy).
    Restarting,
    Cancelling,
    Finished,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Finished | JobState::Failed | JobState::Cancelled)
    }
}

/// Subtasks by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskCounts {
    pub total: u32,
    pub deploying: u32,
    pub running: u32,
    pub finished: u32,
    pub failed: u32,
    pub cancelled: u32,
}

/// `GET /v1/jobs` (a list of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobOverview {
    pub jid: JobId,
    /// The job type.
    pub name: String,
    pub args: Vec<String>,
    pub state: JobState,
    /// Milliseconds since the Unix epoch.
    pub start_time: u64,
    /// Milliseconds since the Unix epoch; absent while the job runs.
    pub end_time: Option<u64>,
    pub duration_ms: u64,
    /// Runs so far (1 + restarts).
    pub attempts: u32,
    pub tasks: TaskCounts,
}

/// One subtask of a vertex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubtaskInfo {
    pub subtask: u32,
    pub taskmanager: TaskManagerId,
    pub slot: u32,
    pub state: TaskState,
}

/// One vertex (chain of operators) of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VertexInfo {
    pub id: u32,
    pub name: String,
    pub parallelism: u32,
    pub records_in: u64,
    pub records_out: u64,
    /// Share of the vertex's run time its subtasks spent waiting for output room (0..=1),
    /// from the last reports of its TaskManagers.
    pub backpressure_ratio: f64,
    pub subtasks: Vec<SubtaskInfo>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobDetails {
    #[serde(flatten)]
    pub overview: JobOverview,
    pub parallelism: u32,
    pub vertices: Vec<VertexInfo>,
    /// Why the job (or its last attempt) failed.
    pub failure: Option<String>,
    /// The failures of its attempts, oldest first: the newest 16 at most (Flink's exception
    /// history).
    #[serde(default)]
    pub exceptions: Vec<JobException>,
    /// The execution plan, as `corestream plan` prints it.
    pub plan: String,
}

/// One failure of a job's attempt, as its job master learned of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobException {
    /// When the job master learned of the failure (a lost TaskManager: when the JobManager
    /// removed it), in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The attempt that failed, from 1 (as `attempts` counts them).
    pub attempt: u32,
    pub message: String,
    /// The TaskManager that was lost or whose part failed, when one is to blame.
    pub taskmanager: Option<TaskManagerId>,
}

/// Records of one operator over every subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OperatorCounts {
    pub name: String,
    pub parallelism: u32,
    pub records_in: u64,
    pub records_out: u64,
}

/// `GET /v1/jobs/{id}/execution-result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobExecutionResult {
    pub jid: JobId,
    pub state: JobState,
    /// Set once the job is terminal.
    pub result: Option<JobOutcome>,
}

/// What a terminal job produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobOutcome {
    pub state: JobState,
    pub duration_ms: u64,
    pub failure: Option<String>,
    pub operators: Vec<OperatorCounts>,
    pub accumulators: BTreeMap<String, Accumulator>,
    pub warnings: Vec<String>,
    /// One line per data connection the job used, from each TaskManager's side.
    pub network: Vec<String>,
    /// What each TaskManager's part reported, in the order of their job slots.
    #[serde(default)]
    pub parts: Vec<PartSummary>,
    /// Milliseconds from the submission until every task of the last attempt ran (absent if
    /// it never did).
    #[serde(default)]
    pub all_running_ms: Option<f64>,
}

/// One TaskManager's part of a finished job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartSummary {
    pub taskmanager: TaskManagerId,
    /// From the part's deployment to the end of its last slot thread.
    pub wall_time_ns: u64,
    /// Most buffers of the TaskManager's pool in use at once since it started.
    pub pool_peak_in_use: u64,
    pub buffers_reserved: u32,
    /// Its data connections, as it saw them.
    pub connections: Vec<crate::rpc::messages::ConnectionReport>,
}

/// `GET /v1/taskmanagers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskManagerList {
    pub taskmanagers: Vec<TaskManagerInfo>,
}

/// `GET /v1/job-types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobTypeList {
    pub job_types: Vec<JobTypeInfo>,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobOverview>,
}

/// `GET /v1/config`: what a client needs to know about the REST API itself. Never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestConfig {
    /// The corestream version serving the API.
    pub version: String,
    /// Whether requests that change something (POST, PATCH) need `Authorization: Bearer
    /// <secret>`. GETs never do.
    pub auth_required: bool,
    /// The largest request body accepted.
    pub max_body_bytes: u64,
    /// How long a request may take, its body included, before it is answered with 408.
    pub request_timeout_ms: u64,
}

/// `GET /v1/jobs/{id}/checkpoints`: a job's checkpoints over all its attempts (Flink's
/// `CheckpointingStatistics`). A job that takes no checkpoints has zero counts and no history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointingStatistics {
    pub counts: CheckpointCountsInfo,
    /// Over every checkpoint completed since the job was submitted.
    pub summary: CheckpointSummaryInfo,
    pub latest: LatestCheckpoints,
    /// The newest checkpoints first, in progress ones included: at most
    /// [`CHECKPOINT_HISTORY_MAX`] (the latest completed and the latest failed are in `latest`
    /// even when the history no longer holds them).
    pub history: Vec<CheckpointInfo>,
    /// The completed checkpoints kept in the job's directory (`retained`), oldest first; a
    /// restart restores the newest.
    pub retained: Vec<RetainedCheckpointInfo>,
}

/// How many checkpoints [`CheckpointingStatistics::history`] lists, at most.
pub const CHECKPOINT_HISTORY_MAX: usize = crate::checkpoint::coordinator::HISTORY_LEN;

/// Checkpoints by outcome, since the job was submitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointCountsInfo {
    /// Attempts of the job that started from a checkpoint.
    pub restored: u64,
    /// Checkpoints triggered (periodic and manual).
    pub total: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
}

/// The smallest, mean and largest value of a figure over the completed checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MinAvgMax {
    pub min: u64,
    pub avg: u64,
    pub max: u64,
}

/// Figures over every completed checkpoint (zeros before the first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointSummaryInfo {
    /// How many completed checkpoints the figures cover.
    pub completed: u64,
    pub end_to_end_duration_ms: MinAvgMax,
    pub checkpointed_size_bytes: MinAvgMax,
    pub state_size_bytes: MinAvgMax,
    pub persisted_data_bytes: MinAvgMax,
    /// CPU time each checkpoint took, summed over its tasks (synchronous parts, encoding and
    /// writing), in microseconds.
    pub cpu_time_us: MinAvgMax,
}

/// The newest checkpoints of each kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatestCheckpoints {
    pub completed: Option<CheckpointInfo>,
    pub failed: Option<CheckpointInfo>,
    /// The checkpoint the current (or last) attempt started from.
    pub restored: Option<RestoredCheckpointInfo>,
}

/// Where a checkpoint is in its life, with Flink's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointStatusInfo {
    InProgress,
    Completed,
    Failed,
}

/// How a checkpoint was taken, with Flink's names: `SAVEPOINT` for a savepoint,
/// `UNALIGNED_CHECKPOINT` when some task took it unaligned (also after an aligned timeout),
/// else `CHECKPOINT` (aligned or at-least-once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointType {
    Checkpoint,
    UnalignedCheckpoint,
    /// A savepoint (always aligned, canonical state).
    Savepoint,
}

/// One checkpoint (Flink's `CheckpointStatistics`). Timestamps are milliseconds since the Unix
/// epoch; sizes are bytes; the per-task figures are the largest of any task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointInfo {
    pub id: u64,
    pub status: CheckpointStatusInfo,
    pub checkpoint_type: CheckpointType,
    /// Triggered through `POST /v1/jobs/{id}/checkpoints` rather than by the interval.
    pub manual: bool,
    pub trigger_timestamp: u64,
    /// The newest acknowledgement of a task; absent before the first.
    pub latest_ack_timestamp: Option<u64>,
    /// When it completed or failed; absent in progress.
    pub end_timestamp: Option<u64>,
    /// From the trigger to the end (in progress: to the newest acknowledgement).
    pub end_to_end_duration_ms: u64,
    /// Bytes written for this checkpoint: the task files (operator state, channel state and
    /// headers) and the shared files uploaded for it (as Flink's, incremental).
    pub checkpointed_size_bytes: u64,
    /// Bytes of the state the checkpoint holds: the operator state the tasks snapshotted and
    /// every shared file it uses, also those uploaded for earlier checkpoints (full size).
    pub state_size_bytes: u64,
    /// Bytes of in-flight data persisted as channel state (unaligned).
    pub persisted_data_bytes: u64,
    pub alignment_duration_ms: u64,
    pub sync_duration_ms: u64,
    pub async_duration_ms: u64,
    /// CPU time its acknowledged tasks spent on it, in microseconds.
    pub cpu_time_us: u64,
    pub num_subtasks: u32,
    pub num_acknowledged_subtasks: u32,
    /// Why it failed.
    pub failure_message: Option<String>,
    /// Per vertex of the job, in plan order.
    pub tasks: Vec<VertexCheckpointInfo>,
}

/// One vertex's part of a checkpoint, over its acknowledged subtasks (Flink's
/// `TaskCheckpointStatistics`). Durations are the largest of any subtask, sizes their sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VertexCheckpointInfo {
    /// The vertex's index in the plan (`GET /v1/jobs/{id}`'s `vertices`).
    pub id: u32,
    pub name: String,
    pub num_subtasks: u32,
    pub num_acknowledged_subtasks: u32,
    pub latest_ack_timestamp: Option<u64>,
    /// From the trigger to the vertex's newest acknowledgement.
    pub end_to_end_duration_ms: u64,
    pub checkpointed_size_bytes: u64,
    pub state_size_bytes: u64,
    pub persisted_data_bytes: u64,
    pub alignment_duration_ms: u64,
    pub sync_duration_ms: u64,
    pub async_duration_ms: u64,
    /// CPU time of its acknowledged subtasks, in microseconds.
    pub cpu_time_us: u64,
}

/// `GET /v1/jobs/{id}/checkpoints/details/{checkpointid}`: one checkpoint with every subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointDetails {
    #[serde(flatten)]
    pub checkpoint: CheckpointInfo,
    /// Every subtask of the plan by vertex and index, acknowledged or not.
    pub subtasks: Vec<SubtaskCheckpointInfo>,
}

/// Whether a subtask acknowledged a checkpoint (Flink's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubtaskCheckpointStatus {
    Completed,
    /// Not acknowledged: still in progress, or the checkpoint failed first.
    PendingOrFailed,
}

/// One subtask's part of a checkpoint; the figures are zero until it acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubtaskCheckpointInfo {
    pub vertex: u32,
    pub subtask: u32,
    pub status: SubtaskCheckpointStatus,
    pub ack_timestamp: Option<u64>,
    /// From the trigger to its acknowledgement.
    pub end_to_end_duration_ms: Option<u64>,
    /// Bytes of its task file and of the shared files it uploaded for this checkpoint.
    pub checkpointed_size_bytes: u64,
    pub state_size_bytes: u64,
    pub persisted_data_bytes: u64,
    /// From its first barrier (at a source: the trigger) to its last.
    pub alignment_duration_ms: u64,
    /// The snapshot on the slot's thread.
    pub sync_duration_ms: u64,
    /// Writing and syncing its file, off the slot's thread.
    pub async_duration_ms: u64,
    /// CPU time of its synchronous part and of encoding and writing its file, in microseconds.
    pub cpu_time_us: u64,
    pub unaligned: bool,
}

/// A completed checkpoint kept on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetainedCheckpointInfo {
    pub id: u64,
    pub trigger_timestamp: u64,
    pub end_timestamp: u64,
    pub checkpointed_size_bytes: u64,
}

/// The checkpoint an attempt started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestoredCheckpointInfo {
    pub id: u64,
    /// When the attempt that restored it was deployed.
    pub restore_timestamp: u64,
    /// Its directory (`.../chk-<id>`).
    pub external_path: String,
}

/// `GET /v1/jobs/{id}/checkpoints/config`: how a job takes checkpoints, as its submission was
/// resolved against the cluster's `execution.checkpointing.*` settings. A job that takes no
/// checkpoints has `enabled: false` and no settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointConfigInfo {
    pub enabled: bool,
    /// `exactly_once` or `at_least_once` (Flink's spelling).
    pub mode: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub min_pause_ms: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub tolerable_failed_checkpoints: Option<u32>,
    /// Completed checkpoints kept in the directory.
    pub retained: Option<u32>,
    pub unaligned_checkpoints: Option<bool>,
    /// With unaligned checkpoints: they start aligned and switch after this long (0: unaligned
    /// from the start).
    pub aligned_checkpoint_timeout_ms: Option<u64>,
    /// The job's checkpoint directory.
    pub directory: Option<String>,
    /// What the job was submitted to start from, if anything (it may start from a checkpoint
    /// without taking any).
    pub restore: Option<crate::checkpoint::request::RestoreRequest>,
}

/// The answer to `POST /v1/jobs/{id}/checkpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TriggerCheckpointResponse {
    /// The triggered checkpoint; follow it with `GET /v1/jobs/{id}/checkpoints/details/{id}`.
    pub checkpoint_id: u64,
}

/// The body of `POST /v1/jobs/{id}/savepoints` and `POST /v1/jobs/{id}/stop` (both may be
/// empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SavepointRequest {
    /// The directory the savepoint's own directory (`savepoint-<job>-<random>`) is made in,
    /// shared by every machine of the cluster; default `execution.checkpointing.savepoint-dir`.
    #[serde(default)]
    pub target_directory: Option<String>,
}

/// The answer to a savepoint trigger: poll `GET /v1/jobs/{id}/savepoints/{request_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SavepointTriggerResponse {
    pub request_id: String,
}

/// Where a savepoint request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SavepointStatus {
    InProgress,
    Completed,
    Failed,
}

/// A savepoint request of a job, as `GET /v1/jobs/{id}/savepoints/{request_id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SavepointInfo {
    pub request_id: String,
    pub status: SavepointStatus,
    /// Stop-with-savepoint: the job is cancelled once the savepoint is complete.
    pub stop: bool,
    /// The directory the savepoint is made in.
    pub target_directory: String,
    /// The savepoint's id among the job's checkpoints, once triggered.
    pub checkpoint_id: Option<u64>,
    /// The savepoint's own directory (give it to `--from-savepoint`), once complete.
    pub location: Option<String>,
    /// Why no savepoint was taken.
    pub failure: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub trigger_ms: u64,
    pub end_ms: Option<u64>,
}

/// A manual checkpoint trigger on its way to the job master, whose answer (the checkpoint's id
/// or why none was triggered) arrives within one turn of the job master's loop. A job master
/// that is not tracking a running attempt (starting, restarting, ending) drops the request;
/// that is answered as a conflict.
#[derive(Debug)]
pub struct PendingTrigger {
    job: String,
    reply: tokio::sync::oneshot::Receiver<Result<crate::checkpoint::CheckpointId, ApiError>>,
}

impl PendingTrigger {
    /// A trigger whose answer comes through `reply`.
    pub fn new(
        job: impl Into<String>,
        reply: tokio::sync::oneshot::Receiver<Result<crate::checkpoint::CheckpointId, ApiError>>,
    ) -> Self {
        Self { job: job.into(), reply }
    }

    /// A trigger answered already (for implementations that decide at once).
    pub fn ready(job: impl Into<String>, answer: Result<crate::checkpoint::CheckpointId, ApiError>) -> Self {
        let (tx, reply) = tokio::sync::oneshot::channel();
        let _ = tx.send(answer);
        Self { job: job.into(), reply }
    }

    /// Waits for the answer, at most `timeout` (then [`ApiErrorCode::Unavailable`]).
    pub async fn wait(self, timeout: std::time::Duration) -> Result<TriggerCheckpointResponse, ApiError> {
        let job = self.job;
        match tokio::time::timeout(timeout, self.reply).await {
            Ok(answer) => Self::answer(&job, answer.ok()),
            Err(_) => Err(Self::late(&job, timeout)),
        }
    }

    /// [`wait`](Self::wait) for a thread outside any async runtime.
    pub fn wait_blocking(mut self, timeout: std::time::Duration) -> Result<TriggerCheckpointResponse, ApiError> {
        use tokio::sync::oneshot::error::TryRecvError;
        let deadline = std::time::Instant::now() + timeout;
        let mut pause = std::time::Duration::from_micros(200);
        loop {
            match self.reply.try_recv() {
                Ok(answer) => return Self::answer(&self.job, Some(answer)),
                Err(TryRecvError::Closed) => return Self::answer(&self.job, None),
                Err(TryRecvError::Empty) if std::time::Instant::now() >= deadline => {
                    return Err(Self::late(&self.job, timeout))
                }
                Err(TryRecvError::Empty) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(10));
                }
            }
        }
    }

    fn answer(
        job: &str,
        answer: Option<Result<crate::checkpoint::CheckpointId, ApiError>>,
    ) -> Result<TriggerCheckpointResponse, ApiError> {
        match answer {
            Some(Ok(checkpoint_id)) => Ok(TriggerCheckpointResponse { checkpoint_id }),
            Some(Err(e)) => Err(e),
            None => Err(ApiError::new(
                ApiErrorCode::Conflict,
                format!(
                    "job {job} is not running (it is starting, restarting or ending): no checkpoint was triggered; \
                     trigger one while the job runs"
                ),
            )),
        }
    }

    fn late(job: &str, timeout: std::time::Duration) -> ApiError {
        ApiError::new(
            ApiErrorCode::Unavailable,
            format!("the job master of job {job} did not answer the checkpoint trigger within {timeout:?}"),
        )
    }
}

/// What a request did wrong, or why it could not be served. The REST layer turns it into a
/// status code and `{"error": code, "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize, ToSchema)]
#[error("{message}")]
pub struct ApiError {
    pub error: ApiErrorCode,
    pub message: String,
}

/// The kinds of [`ApiError`], each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// 400: malformed or invalid request (bad JSON, unknown job type, bad job arguments).
    BadRequest,
    /// 401: a mutation without the secret, or with a wrong one.
    Unauthorized,
    /// 404: no such job, TaskManager or path.
    NotFound,
    /// 405: the path exists, but not with this method (the `Allow` header lists the methods).
    MethodNotAllowed,
    /// 408: the request was not served in time (its body arrived too slowly).
    RequestTimeout,
    /// 409: the request conflicts with the state (cancelling a finished job, triggering a
    /// checkpoint of a job that takes none or is not running).
    Conflict,
    /// 413: request body over the limit.
    PayloadTooLarge,
    /// 415: a body without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 503: not enough slots or TaskManagers to accept the job now; a job master too busy to
    /// take a request.
    Unavailable,
    /// 500.
    Internal,
}

impl ApiErrorCode {
    /// The code as it appears in JSON (`bad_request`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorCode::BadRequest => "bad_request",
            ApiErrorCode::Unauthorized => "unauthorized",
            ApiErrorCode::NotFound => "not_found",
            ApiErrorCode::MethodNotAllowed => "method_not_allowed",
            ApiErrorCode::RequestTimeout => "request_timeout",
            ApiErrorCode::Conflict => "conflict",
            ApiErrorCode::PayloadTooLarge => "payload_too_large",
            ApiErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ApiErrorCode::Unavailable => "unavailable",
            ApiErrorCode::Internal => "internal",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ApiErrorCode::BadRequest => 400,
            ApiErrorCode::Unauthorized => 401,
            ApiErrorCode::NotFound => 404,
            ApiErrorCode::MethodNotAllowed => 405,
            ApiErrorCode::RequestTimeout => 408,
            ApiErrorCode::Conflict => 409,
            ApiErrorCode::PayloadTooLarge => 413,
            ApiErrorCode::UnsupportedMediaType => 415,
            ApiErrorCode::Unavailable => 503,
            ApiErrorCode::Internal => 500,
        }
    }
}

impl ApiError {
    pub fn new(error: ApiErrorCode, message: impl Into<String>) -> Self {
        Self { error, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::NotFound, message)
    }
}

/// The JobManager's operations, as the REST API and in-process clients use them.
pub trait ClusterApi: Send + Sync + 'static {
    fn overview(&self) -> ClusterOverview;
    fn task_managers(&self) -> Vec<TaskManagerInfo>;
    fn task_manager(&self, id: &str) -> Result<TaskManagerInfo, ApiError>;
    fn job_types(&self) -> Vec<JobTypeInfo>;
    /// Checks the request (job type, arguments, parallelism) and accepts the job; it then runs
    /// in the background. Never waits for slots.
    fn submit(&self, request: SubmitRequest) -> Result<SubmitResponse, ApiError>;
    fn jobs(&self) -> Vec<JobOverview>;
    fn job(&self, id: &str) -> Result<JobDetails, ApiError>;
    fn execution_result(&self, id: &str) -> Result<JobExecutionResult, ApiError>;
    /// Starts cancelling a job; a job that already ended is a [`ApiErrorCode::Conflict`].
    fn cancel(&self, id: &str) -> Result<(), ApiError>;
    /// A job's checkpoint statistics over all its attempts (zero counts for a job without
    /// checkpoints).
    fn checkpoints(&self, id: &str) -> Result<CheckpointingStatistics, ApiError>;
    /// How a job takes checkpoints.
    fn checkpoint_config(&self, id: &str) -> Result<CheckpointConfigInfo, ApiError>;
    /// One checkpoint of the job's history, with every subtask; [`ApiErrorCode::NotFound`] for
    /// an id the history does not hold.
    fn checkpoint(&self, id: &str, checkpoint: crate::checkpoint::CheckpointId) -> Result<CheckpointDetails, ApiError>;
    /// Asks the job master to trigger a checkpoint now; the answer arrives through the
    /// [`PendingTrigger`]. Refused at once ([`ApiErrorCode::Conflict`]) for a job that ended or
    /// takes no checkpoints.
    fn trigger_checkpoint(&self, id: &str) -> Result<PendingTrigger, ApiError>;
    /// Asks the job master for a savepoint (and, with `stop`, to cancel the job once it is
    /// complete); answered at once with the request's id, whose progress
    /// [`savepoint`](Self::savepoint) shows. Refused at once ([`ApiErrorCode::Conflict`]) for a
    /// job that ended or takes no checkpoints, and ([`ApiErrorCode::BadRequest`]) without a
    /// target directory.
    fn trigger_savepoint(
        &self,
        id: &str,
        request: SavepointRequest,
        stop: bool,
    ) -> Result<SavepointTriggerResponse, ApiError>;
    /// A savepoint request of the job ([`ApiErrorCode::NotFound`] for an unknown one; the
    /// newest `SAVEPOINT_REQUESTS_MAX` are kept).
    fn savepoint(&self, id: &str, request_id: &str) -> Result<SavepointInfo, ApiError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_read_as_in_json_with_their_status() {
        let codes = [
            (ApiErrorCode::BadRequest, 400),
            (ApiErrorCode::Unauthorized, 401),
            (ApiErrorCode::NotFound, 404),
            (ApiErrorCode::MethodNotAllowed, 405),
            (ApiErrorCode::RequestTimeout, 408),
            (ApiErrorCode::Conflict, 409),
            (ApiErrorCode::PayloadTooLarge, 413),
            (ApiErrorCode::UnsupportedMediaType, 415),
            (ApiErrorCode::Unavailable, 503),
            (ApiErrorCode::Internal, 500),
        ];
        for (code, status) in codes {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{}\"", code.as_str()));
            assert_eq!(code.http_status(), status);
        }
        let e = ApiError::not_found("no job 00");
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"error":"not_found","message":"no job 00"}"#);
    }
}
