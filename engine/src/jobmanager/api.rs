//! What the JobManager offers its clients, independent of how it is reached: the request and
//! response types of the REST API (serde, JSON field names as the API documents them) and the
//! [`ClusterApi`] trait the dispatcher implements and the REST layer calls. Every operation is
//! short and synchronous (it takes the dispatcher's lock, never waits for a TaskManager), so an
//! HTTP handler can call it directly.

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
    /// 409: the request conflicts with the state (cancelling a finished job).
    Conflict,
    /// 413: request body over the limit.
    PayloadTooLarge,
    /// 415: a body without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 503: not enough slots or TaskManagers to accept the job now.
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
