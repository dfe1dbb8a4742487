//! The routes: one handler per operation of [`ClusterApi`], each annotated with its OpenAPI
//! description, and the extractors that turn a request's path, query and body into checked
//! values or an [`ApiError`] (invalid ids are refused here, before the dispatcher is asked).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::errors::{body_rejection, decode_json};
use super::schema::ApiDoc;
use super::AppState;
use crate::checkpoint::CheckpointId;
use crate::jobmanager::api::{
    ApiError, CheckpointConfigInfo, CheckpointDetails, CheckpointingStatistics, ClusterOverview, JobDetails,
    JobExecutionResult, JobList, JobTypeList, RestConfig, SavepointInfo, SavepointRequest, SavepointTriggerResponse,
    SubmitRequest, SubmitResponse, TaskManagerInfo, TaskManagerList, TriggerCheckpointResponse,
};
use crate::rpc::ids::{JobId, TaskManagerId, TriggerId};

/// Every route, with its description.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(overview))
        .routes(routes!(config))
        .routes(routes!(task_managers))
        .routes(routes!(task_manager))
        .routes(routes!(job_types))
        .routes(routes!(jobs, submit))
        .routes(routes!(job, cancel))
        .routes(routes!(execution_result))
        .routes(routes!(checkpoints, trigger_checkpoint))
        .routes(routes!(checkpoint_config))
        .routes(routes!(checkpoint_details))
        .routes(routes!(trigger_savepoint))
        .routes(routes!(stop_with_savepoint))
        .routes(routes!(savepoint_status))
}

/// How long a checkpoint trigger waits for the job master's answer (it comes within one turn
/// of its loop).
const TRIGGER_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON body of type `T`, checked by [`decode_json`] within the body limit.
pub(super) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let body = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        decode_json(content_type.as_ref(), &body).map(JsonBody)
    }
}

/// A JSON body of type `T` as [`JsonBody`], or `T::default()` for an empty body.
pub(super) struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let body = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        if body.is_empty() {
            return Ok(OptionalJsonBody(T::default()));
        }
        decode_json(content_type.as_ref(), &body).map(OptionalJsonBody)
    }
}

/// The `{id}` segment of a path, as text (percent-decoded).
async fn id_segment<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, state).await.map(|Path(id)| id).map_err(|e| {
        ApiError::bad_request(format!("invalid path {}: {}", super::errors::shown_path(&parts.uri), e.body_text()))
    })
}

/// A job id from the path, refused with 400 unless it is 32 hex digits.
pub(super) struct JobIdParam(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let id = id_segment(parts, state).await?;
        id.parse().map(JobIdParam).map_err(|e| ApiError::bad_request(format!("{e}")))
    }
}

/// A TaskManager id from the path, refused with 400 unless it is 32 hex digits.
pub(super) struct TaskManagerIdParam(pub TaskManagerId);

impl<S: Send + Sync> FromRequestParts<S> for TaskManagerIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let id = id_segment(parts, state).await?;
        id.parse().map(TaskManagerIdParam).map_err(|e| ApiError::bad_request(format!("{e}")))
    }
}

/// A request without a body: any byte of one is refused (400), within the body limit (413).
pub(super) struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let shown = format!("{} {}", req.method(), super::errors::shown_path(req.uri()));
        let body = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        if body.is_empty() {
            Ok(NoBody)
        } else {
            Err(ApiError::bad_request(format!("{shown} takes no body; {} bytes were sent", body.len())))
        }
    }
}

/// A checkpoint id as the API lists them: a decimal number.
pub(super) fn parse_checkpoint_id(text: &str) -> Result<CheckpointId, ApiError> {
    let invalid = |why: &str| {
        ApiError::bad_request(format!(
            "invalid checkpoint id `{}`: {why}; checkpoint ids are decimal numbers, as `GET /v1/jobs/{{id}}/checkpoints` \
             lists them",
            text.escape_debug()
        ))
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("not a decimal number"));
    }
    text.parse().map_err(|_| invalid("too large"))
}

/// The job id and checkpoint id of `/v1/jobs/{id}/checkpoints/details/{checkpointid}`.
pub(super) struct CheckpointPath(pub JobId, pub CheckpointId);

impl<S: Send + Sync> FromRequestParts<S> for CheckpointPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let (job, checkpoint) = job_and_segment(parts, state).await?;
        Ok(CheckpointPath(job, parse_checkpoint_id(&checkpoint)?))
    }
}

/// The job id and the second segment (as text) of a path `/v1/jobs/{id}/.../{segment}`.
async fn job_and_segment<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<(JobId, String), ApiError> {
    let (job, segment) =
        Path::<(String, String)>::from_request_parts(parts, state).await.map(|Path(p)| p).map_err(|e| {
            ApiError::bad_request(format!("invalid path {}: {}", super::errors::shown_path(&parts.uri), e.body_text()))
        })?;
    let job = job.parse().map_err(|e| ApiError::bad_request(format!("{e}")))?;
    Ok((job, segment))
}

/// The job id and request id of `/v1/jobs/{id}/savepoints/{requestid}`.
pub(super) struct SavepointPath(pub JobId, pub TriggerId);

impl<S: Send + Sync> FromRequestParts<S> for SavepointPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let (job, request) = job_and_segment(parts, state).await?;
        let request = request.parse().map_err(|e| ApiError::bad_request(format!("{e}")))?;
        Ok(SavepointPath(job, request))
    }
}

/// The query of `PATCH /v1/jobs/{id}`: Flink's `mode`, of which only `cancel` is served.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchQuery {
    #[serde(default)]
    #[allow(dead_code)]
    mode: Option<PatchMode>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PatchMode {
    Cancel,
}

/// Checks the query of a job PATCH: no `mode` or `mode=cancel`, nothing else.
pub(super) fn check_patch_query(uri: &Uri) -> Result<(), ApiError> {
    Query::<PatchQuery>::try_from_uri(uri).map(|_| ()).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid query of PATCH {}: {}; the only mode is `?mode=cancel`",
            super::errors::shown_path(uri),
            e.body_text().trim_start_matches("Failed to deserialize query string: ")
        ))
    })
}

/// The cluster at a glance: TaskManagers, slots, jobs by state.
#[utoipa::path(get, path = "/v1/overview", tag = "cluster",
    responses((status = 200, description = "The cluster's overview", body = ClusterOverview)))]
async fn overview(State(s): State<AppState>) -> Json<ClusterOverview> {
    Json(s.api.overview())
}

/// What a client needs to know about this API: its version, whether mutations need the secret,
/// its limits. Never the secret.
#[utoipa::path(get, path = "/v1/config", tag = "cluster",
    responses((status = 200, description = "The REST API's settings", body = RestConfig)))]
async fn config(State(s): State<AppState>) -> Json<RestConfig> {
    Json(RestConfig::clone(&s.config))
}

/// Every registered TaskManager with its slots.
#[utoipa::path(get, path = "/v1/taskmanagers", tag = "taskmanagers",
    responses((status = 200, description = "The registered TaskManagers", body = TaskManagerList)))]
async fn task_managers(State(s): State<AppState>) -> Json<TaskManagerList> {
    Json(TaskManagerList { taskmanagers: s.api.task_managers() })
}

/// One TaskManager.
#[utoipa::path(get, path = "/v1/taskmanagers/{id}", tag = "taskmanagers",
    params(("id" = TaskManagerId, Path, description = "The TaskManager's id: 32 hex digits")),
    responses(
        (status = 200, description = "The TaskManager", body = TaskManagerInfo),
        (status = 400, description = "The id is not 32 hex digits", body = ApiError),
        (status = 404, description = "No TaskManager with this id is registered", body = ApiError)
    ))]
async fn task_manager(
    State(s): State<AppState>,
    TaskManagerIdParam(id): TaskManagerIdParam,
) -> Result<Json<TaskManagerInfo>, ApiError> {
    s.api.task_manager(&id.to_string()).map(Json)
}

/// The job types the cluster can run, with their usage.
#[utoipa::path(get, path = "/v1/job-types", tag = "jobs",
    responses((status = 200, description = "The registered job types", body = JobTypeList)))]
async fn job_types(State(s): State<AppState>) -> Json<JobTypeList> {
    Json(JobTypeList { job_types: s.api.job_types() })
}

/// Every job the JobManager knows, running or ended.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    responses((status = 200, description = "The jobs", body = JobList)))]
async fn jobs(State(s): State<AppState>) -> Json<JobList> {
    Json(JobList { jobs: s.api.jobs() })
}

/// Submits a job by name. The job is checked (type, arguments, parallelism) and accepted; it
/// then runs in the background: follow it with `GET /v1/jobs/{id}/execution-result`.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = SubmitRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted; the job runs in the background", body = SubmitResponse,
            headers(("Location" = String, description = "The job's path"))),
        (status = 400, description = "Malformed JSON, unknown fields, an unknown job type or invalid arguments", body = ApiError),
        (status = 413, description = "The body is over the limit", body = ApiError),
        (status = 415, description = "The body is not sent as `application/json`", body = ApiError),
        (status = 503, description = "Not enough slots or TaskManagers to accept the job now", body = ApiError)
    ))]
async fn submit(State(s): State<AppState>, JsonBody(request): JsonBody<SubmitRequest>) -> Result<Response, ApiError> {
    let job = request.job.clone();
    let accepted = s.api.submit(request)?;
    tracing::info!(job = %job, jobid = %accepted.jobid, "job submitted over REST");
    let location = HeaderValue::from_str(&format!("/v1/jobs/{}", accepted.jobid)).ok();
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// One job: its state, vertices and subtasks, failure and plan.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = JobId, Path, description = "The job's id: 32 hex digits")),
    responses(
        (status = 200, description = "The job", body = JobDetails),
        (status = 400, description = "The id is not 32 hex digits", body = ApiError),
        (status = 404, description = "No job with this id", body = ApiError)
    ))]
async fn job(State(s): State<AppState>, JobIdParam(id): JobIdParam) -> Result<Json<JobDetails>, ApiError> {
    s.api.job(&id.to_string()).map(Json)
}

/// Cancels a job (Flink's `PATCH /jobs/{id}?mode=cancel`; `mode` may be left out). The job
/// is cancelled in the background; its result then says CANCELLED.
#[utoipa::path(patch, path = "/v1/jobs/{id}", tag = "jobs",
    params(
        ("id" = JobId, Path, description = "The job's id: 32 hex digits"),
        ("mode" = Option<String>, Query, description = "`cancel`, the only mode (the default)")
    ),
    responses(
        (status = 202, description = "Cancellation started"),
        (status = 400, description = "The id is not 32 hex digits, or the query is not `mode=cancel`", body = ApiError),
        (status = 404, description = "No job with this id", body = ApiError),
        (status = 409, description = "The job has already ended", body = ApiError)
    ))]
async fn cancel(State(s): State<AppState>, JobIdParam(id): JobIdParam, uri: Uri) -> Result<StatusCode, ApiError> {
    check_patch_query(&uri)?;
    s.api.cancel(&id.to_string())?;
    tracing::info!(jobid = %id, "job cancellation requested over REST");
    Ok(StatusCode::ACCEPTED)
}

/// A job's result: its state, and once it has ended what it produced (record counts,
/// accumulators, warnings, failure). Poll it until `result` is set.
#[utoipa::path(get, path = "/v1/jobs/{id}/execution-result", tag = "jobs",
    params(("id" = JobId, Path, description = "The job's id: 32 hex digits")),
    responses(
        (status = 200, description = "The job's state and, once it ended, its outcome", body = JobExecutionResult),
        (status = 400, description = "The id is not 32 hex digits", body = ApiError),
        (status = 404, description = "No job with this id", body = ApiError)
    ))]
async fn execution_result(
    State(s): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> Result<Json<JobExecutionResult>, ApiError> {
    s.api.execution_result(&id.to_string()).map(Json)
}

/// A job's checkpoints (Flink's `GET /jobs/{id}/checkpoints`): counts, a summary over every
/// completed checkpoint, the latest completed, failed and restored, the newest checkpoints
/// with their figures per vertex, and the ones kept on disk. Over every attempt of the job; a
/// job without checkpoints has zero counts.
#[utoipa::path(get, path = "/v1/jobs/{id}/checkpoints", tag = "checkpoints",
    params(("id" = JobId, Path, description = "The job's id: 32 hex digits")),
    responses(
        (status = 200, description = "The job's checkpoint statistics", body = CheckpointingStatistics),
        (status = 400, description = "The id is not 32 hex digits", body = ApiError),
        (status = 404, description = "No job with this id", body = ApiError)
    ))]
async fn checkpoints(
    State(s): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> Result<Json<CheckpointingStatistics>, ApiError> {
    s.api.checkpoints(&id.to_string()).map(Json)
}

/// Triggers a checkpoint of a running job now (Flink 1.19's `POST /jobs/{id}/checkpoints`) and
/// answers with its id once the job master triggered it; follow it with
/// `GET /v1/jobs/{id}/checkpoints/details/{checkpointid}`. No body.
///
/// A manual checkpoint ignores the interval and the minimum pause (`min_pause_ms` holds back
/// only periodic triggers, and the periodic schedule is not moved), but it counts against
/// `max_concurrent`: with that many checkpoints in progress it is refused (409), not queued,
/// since the coordinator keeps no queue and the caller can retry. It is refused (409) as well
/// for a job that takes no checkpoints, has ended, is not running (starting, restarting,
/// cancelling, or not every task runs yet), or whose checkpointing stopped (a task finished,
/// or the job is failing).
#[utoipa::path(post, path = "/v1/jobs/{id}/checkpoints", tag = "checkpoints",
    params(("id" = JobId, Path, description = "The job's id: 32 hex digits")),
    responses(
        (status = 202, description = "Triggered; the checkpoint runs in the background", body = TriggerCheckpointResponse,
            headers(("Location" = String, description = "The checkpoint's details"))),
        (status = 400, description = "The id is not 32 hex digits, or a body was sent", body = ApiError),
        (status = 404, description = "No job with this id", body = ApiError),
        (status = 409, description = "No checkpoint was triggered: the job takes none, is not running, or has as many in progress as allowed", body = ApiError),
        (status = 413, description = "A body over the limit was sent", body = ApiError),
        (status = 503, description = "The job master did not take or answer the request in time", body = ApiError)
    ))]
async fn trigger_checkpoint(
    State(s): State<AppState>,
    JobIdParam(id): JobIdParam,
    NoBody: NoBody,
) -> Result<Response, ApiError> {
    let pending = s.api.trigger_checkpoint(&id.to_string())?;
    let triggered = pending.wait(TRIGGER_ANSWER_TIMEOUT).await?;
    tracing::info!(jobid = %id, checkpoint = triggered.checkpoint_id, "checkpoint triggered over REST");
    let location =
        HeaderValue::from_str(&format!("/v1/jobs/{id}/checkpoints/details/{}", triggered.checkpoint_id)).ok();
    let mut response = (StatusCode::ACCEPTED, Json(triggered)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// How a job takes checkpoints (Flink's `GET /jobs/{id}/checkpoints/config`): its submission's
/// settings resolved against the cluster's `execution.checkpointing.*`. A job without
/// checkpoints answers `enabled: false` and no settings.
#[utoipa::path(get, path = "/v1/jobs/{id}/checkpoints/config", tag = "checkpoints",
    params(("id" = JobId, Path, description = "The job's id: 32 hex digits")),
    responses(
        (status = 200, description = "The job's checkpoint configuration", body = CheckpointConfigInfo),
        (status = 400, description = "The id is not 32 hex digits", body = ApiError),
        (status = 404, description = "No job with this id", body = ApiError)
    ))]
async fn checkpoint_config(
    State(s): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> Result<Json<CheckpointConfigInfo>, ApiError> {
    s.api.checkpoint_config(&id.to_string()).map(Json)
}

/// One checkpoint of the job's history with every subtask's figures (Flink's
/// `GET /jobs/{id}/checkpoints/details/{checkpointid}`, with the subtasks inline).
#[utoipa::path(get, path = "/v1/jobs/{id}/checkpoints/details/{checkpointid}", tag = "checkpoints",
    params(
        ("id" = JobId, Path, description = "The job's id: 32 hex digits"),
        ("checkpointid" = u64, Path, description = "The checkpoint's id, a decimal number")
    ),
    responses(
        (status = 200, description = "The checkpoint", body = CheckpointDetails),
        (status = 400, description = "The job id is not 32 hex digits, or the checkpoint id not a decimal number", body = ApiError),
        (status = 404, description = "No job with this id, or no checkpoint with this id in its history", body = ApiError)
    ))]
async fn checkpoint_details(
    State(s): State<AppState>,
    CheckpointPath(id, checkpoint): CheckpointPath,
) -> Result<Json<CheckpointDetails>, ApiError> {
    s.api.checkpoint(&id.to_string(), checkpoint).map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_ids() {
        assert_eq!(parse_checkpoint_id("0").unwrap(), 0);
        assert_eq!(parse_checkpoint_id("0042").unwrap(), 42);
        assert_eq!(parse_checkpoint_id("18446744073709551615").unwrap(), u64::MAX);
        for (bad, needle) in [
            ("", "not a decimal number"),
            ("+1", "not a decimal number"),
            ("-1", "not a decimal number"),
            ("0x10", "not a decimal number"),
            ("1.0", "not a decimal number"),
            ("18446744073709551616", "too large"),
        ] {
            let e = parse_checkpoint_id(bad).unwrap_err();
            assert!(e.message.contains(needle) && e.message.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }

    #[test]
    fn patch_queries() {
        for ok in ["/v1/jobs/x", "/v1/jobs/x?mode=cancel", "/v1/jobs/x?"] {
            assert!(check_patch_query(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for (bad, needle) in [
            ("/v1/jobs/x?mode=stop", "unknown variant `stop`, expected `cancel`"),
            ("/v1/jobs/x?mode=cancel&force=1", "unknown field `force`"),
            ("/v1/jobs/x?mode=CANCEL", "unknown variant `CANCEL`"),
        ] {
            let e = check_patch_query(&bad.parse().unwrap()).unwrap_err();
            assert!(e.message.contains(needle) && e.message.contains("?mode=cancel"), "{bad}: {e}");
        }
    }
}

/// Answers a savepoint trigger: 202 with the request id and its `Location`.
fn savepoint_accepted(id: JobId, triggered: SavepointTriggerResponse) -> Response {
    let location = HeaderValue::from_str(&format!("/v1/jobs/{id}/savepoints/{}", triggered.request_id)).ok();
    let mut response = (StatusCode::ACCEPTED, Json(triggered)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Takes a savepoint of a running job (Flink's `POST /jobs/{id}/savepoints`): answered at once
/// with a request id; poll `GET /v1/jobs/{id}/savepoints/{requestid}` for its outcome and
/// location. The body (optional) names the target directory; without one the cluster's
/// `execution.checkpointing.savepoint-dir` is used.
///
/// A savepoint is taken by the job's checkpoint coordinator, after a checkpoint in progress,
/// always aligned, with every operator's state in the canonical format (a savepoint of the heap
/// backend restores on the LSM backend and the reverse), and written self-contained into
/// `<target>/savepoint-<job>-<request>`, which appears complete or not at all. It is not one of
/// the job's retained checkpoints and the job never deletes it.
#[utoipa::path(post, path = "/v1/jobs/{id}/savepoints", tag = "savepoints",
    params(("id" = JobId, Path, description = "The job's id: 32 hex digits")),
    request_body(content = SavepointRequest, content_type = "application/json", description = "Optional"),
    responses(
        (status = 202, description = "Requested; poll its status", body = SavepointTriggerResponse,
            headers(("Location" = String, description = "The request's status"))),
        (status = 400, description = "Invalid id or body, or no target directory (none given, none configured) or a relative one", body = ApiError),
        (status = 404, description = "No job with this id", body = ApiError),
        (status = 409, description = "The job has ended or takes no checkpoints", body = ApiError),
        (status = 413, description = "A body over the limit was sent", body = ApiError),
        (status = 415, description = "A body not sent as `application/json`", body = ApiError),
        (status = 503, description = "The job master has too many events queued", body = ApiError)
    ))]
async fn trigger_savepoint(
    State(s): State<AppState>,
    JobIdParam(id): JobIdParam,
    OptionalJsonBody(request): OptionalJsonBody<SavepointRequest>,
) -> Result<Response, ApiError> {
    let triggered = s.api.trigger_savepoint(&id.to_string(), request, false)?;
    Ok(savepoint_accepted(id, triggered))
}

/// Stops a job with a savepoint (Flink's `POST /jobs/{id}/stop`): a savepoint as
/// `POST /v1/jobs/{id}/savepoints` takes it, after which the job is cancelled (it ends
/// `cancelled`). A job whose savepoint fails keeps running. Exactly-once sinks commit exactly
/// what precedes the savepoint; records the tasks process between the savepoint's barrier and
/// the cancellation are never committed by them (Flink's synchronous savepoint holds the tasks
/// instead).
#[utoipa::path(post, path = "/v1/jobs/{id}/stop", tag = "savepoints",
    params(("id" = JobId, Path, description = "The job's id: 32 hex digits")),
    request_body(content = SavepointRequest, content_type = "application/json", description = "Optional"),
    responses(
        (status = 202, description = "Requested; poll its status", body = SavepointTriggerResponse,
            headers(("Location" = String, description = "The request's status"))),
        (status = 400, description = "Invalid id or body, or no target directory (none given, none configured) or a relative one", body = ApiError),
        (status = 404, description = "No job with this id", body = ApiError),
        (status = 409, description = "The job has ended or takes no checkpoints", body = ApiError),
        (status = 413, description = "A body over the limit was sent", body = ApiError),
        (status = 415, description = "A body not sent as `application/json`", body = ApiError),
        (status = 503, description = "The job master has too many events queued", body = ApiError)
    ))]
async fn stop_with_savepoint(
    State(s): State<AppState>,
    JobIdParam(id): JobIdParam,
    OptionalJsonBody(request): OptionalJsonBody<SavepointRequest>,
) -> Result<Response, ApiError> {
    let triggered = s.api.trigger_savepoint(&id.to_string(), request, true)?;
    Ok(savepoint_accepted(id, triggered))
}

/// A savepoint request's status (Flink's `GET /jobs/{id}/savepoints/{triggerid}`): in progress,
/// completed with its location, or failed with why. A job keeps its newest 16 requests.
#[utoipa::path(get, path = "/v1/jobs/{id}/savepoints/{requestid}", tag = "savepoints",
    params(
        ("id" = JobId, Path, description = "The job's id: 32 hex digits"),
        ("requestid" = String, Path, description = "The request's id: 32 hex digits")
    ),
    responses(
        (status = 200, description = "The request", body = SavepointInfo),
        (status = 400, description = "An id is not 32 hex digits", body = ApiError),
        (status = 404, description = "No job with this id, or no such request of it", body = ApiError)
    ))]
async fn savepoint_status(
    State(s): State<AppState>,
    SavepointPath(id, request): SavepointPath,
) -> Result<Json<SavepointInfo>, ApiError> {
    s.api.savepoint(&id.to_string(), &request.to_string()).map(Json)
}
