//! A blocking client of the JobManager's REST API (`jobmanager::rest`), on ureq: one method
//! per route returning the types of [`crate::jobmanager::api`], and
//! [`RestClient::wait_for_result`], which polls a job's execution result until it has ended,
//! and [`RestClient::wait_for_checkpoint`], which polls a checkpoint until it completed or
//! failed. The command-line program's `submit`, `list`, `cancel`, `info` and `checkpoints
//! trigger|stats` use it, and so can an application that drives a cluster.
//!
//! Every request has a connect and an overall timeout, responses are read up to a size limit,
//! and every failure is a [`ClientError`] naming the JobManager's URL and the request: the
//! JobManager unreachable, its [`ApiError`], a response that is not what the API documents, or a
//! timeout. The cluster secret, when given, is sent as `Authorization: Bearer <secret>` on
//! requests that change something only.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::checkpoint::CheckpointId;
use crate::jobmanager::api::JobList;
use crate::jobmanager::api::{
    ApiError, CheckpointConfigInfo, CheckpointDetails, CheckpointStatusInfo, CheckpointingStatistics, ClusterOverview,
    JobDetails, JobExecutionResult, JobOutcome, JobOverview, JobState, JobTypeInfo, JobTypeList, RestConfig,
    SavepointInfo, SavepointRequest, SavepointStatus, SavepointTriggerResponse, SubmitRequest, SubmitResponse,
    TaskManagerInfo, TaskManagerList, TriggerCheckpointResponse,
};
use crate::rpc::ids::{JobId, TaskManagerId};

/// The largest response read; a longer one is a [`ClientError::Malformed`].
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// What went wrong talking to a JobManager.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid JobManager URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "cannot connect to the JobManager at {url} ({request}): {reason}; is it running, and is this its REST address?"
    )]
    Connect { url: String, request: String, reason: String },
    #[error("the JobManager at {url} did not answer {request} within {after:?}")]
    Timeout { url: String, request: String, after: Duration },
    #[error("the JobManager at {url} refused {request}: {} ({}, HTTP {status})", .error.message, .error.error.as_str())]
    Api { url: String, request: String, status: u16, error: ApiError },
    #[error("malformed response from the JobManager at {url} to {request} (HTTP {status}): {reason}")]
    Malformed { url: String, request: String, status: u16, reason: String },
    #[error("{request} to the JobManager at {url} failed: {reason}")]
    Transport { url: String, request: String, reason: String },
    #[error(
        "job {jobid} had not ended after {waited:?} (last state {state:?}); it goes on at the JobManager at {url}"
    )]
    WaitTimeout { url: String, jobid: JobId, waited: Duration, state: JobState },
    #[error(
        "checkpoint {checkpoint} of job {jobid} was still in progress after {waited:?}; it goes on at the JobManager \
         at {url}"
    )]
    CheckpointWaitTimeout { url: String, jobid: JobId, checkpoint: CheckpointId, waited: Duration },
    #[error(
        "savepoint request {request} of job {jobid} was still in progress after {waited:?}; it goes on at the \
         JobManager at {url}"
    )]
    SavepointWaitTimeout { url: String, jobid: JobId, request: String, waited: Duration },
}

impl ClientError {
    /// The JobManager's own error, when it answered with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// How long a request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// To establish the TCP connection.
    pub connect: Duration,
    /// For the whole request, response included.
    pub request: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), request: Duration::from_secs(30) }
    }
}

/// A blocking client of one JobManager's REST API.
pub struct RestClient {
    base: String,
    secret: Option<String>,
    agent: ureq::Agent,
    timeouts: ClientTimeouts,
}

impl fmt::Debug for RestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestClient")
            .field("base", &self.base)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

/// The base URL of a JobManager's REST API from what a user typed: `http://host:port` (a bare
/// `host:port` gets `http://`), without a trailing slash. Only plain HTTP is spoken.
pub fn normalize_base_url(given: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl { url: given.to_string(), reason: reason.to_string() };
    let trimmed = given.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let rest = match trimmed.split_once("://") {
        None => trimmed,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(invalid(&format!("`{scheme}` is not supported; the REST API speaks plain http://")))
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("it has no host"));
    }
    let url = format!("http://{rest}");
    let uri: ureq::http::Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    let authority = uri.authority().map_or("", |a| a.as_str());
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end + 1..],
        None => authority.rsplit_once('@').map_or(authority, |(_, host)| host),
    };
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if port.parse::<u16>().is_err() {
            return Err(invalid(&format!("its port `{port}` is not a number from 0 to 65535")));
        }
    }
    if uri.query().is_some() {
        return Err(invalid("it has a query; give only http://host:port"));
    }
    Ok(url)
}

impl RestClient {
    /// A client of the JobManager at `base_url` (`http://host:port`, or `host:port`) with the
    /// default timeouts; `secret` authenticates submissions and cancellations.
    pub fn new(base_url: &str, secret: Option<String>) -> Result<Self, ClientError> {
        Self::with_timeouts(base_url, secret, ClientTimeouts::default())
    }

    pub fn with_timeouts(
        base_url: &str,
        secret: Option<String>,
        timeouts: ClientTimeouts,
    ) -> Result<Self, ClientError> {
        let base = normalize_base_url(base_url)?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(timeouts.connect))
            .timeout_global(Some(timeouts.request))
            .user_agent(format!("corestream/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self { base, secret, agent, timeouts })
    }

    /// The base URL requests go to.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/overview`.
    pub fn overview(&self) -> Result<ClusterOverview, ClientError> {
        self.get("/v1/overview")
    }

    /// `GET /v1/config`.
    pub fn config(&self) -> Result<RestConfig, ClientError> {
        self.get("/v1/config")
    }

    /// `GET /v1/taskmanagers`.
    pub fn task_managers(&self) -> Result<Vec<TaskManagerInfo>, ClientError> {
        self.get::<TaskManagerList>("/v1/taskmanagers").map(|l| l.taskmanagers)
    }

    /// `GET /v1/taskmanagers/{id}`.
    pub fn task_manager(&self, id: TaskManagerId) -> Result<TaskManagerInfo, ClientError> {
        self.get(&format!("/v1/taskmanagers/{id}"))
    }

    /// `GET /v1/job-types`.
    pub fn job_types(&self) -> Result<Vec<JobTypeInfo>, ClientError> {
        self.get::<JobTypeList>("/v1/job-types").map(|l| l.job_types)
    }

    /// `GET /v1/jobs`.
    pub fn jobs(&self) -> Result<Vec<JobOverview>, ClientError> {
        self.get::<JobList>("/v1/jobs").map(|l| l.jobs)
    }

    /// `POST /v1/jobs`: the job is accepted and runs in the background.
    pub fn submit(&self, request: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        let path = "/v1/jobs";
        let what = format!("POST {path}");
        let result = self.authorized(self.agent.post(self.endpoint(path))).send_json(request);
        self.finish(&what, result).and_then(|(status, body)| self.decode(&what, status, &body))
    }

    /// `GET /v1/jobs/{id}`.
    pub fn job(&self, id: JobId) -> Result<JobDetails, ClientError> {
        self.get(&format!("/v1/jobs/{id}"))
    }

    /// `GET /v1/jobs/{id}/execution-result`.
    pub fn execution_result(&self, id: JobId) -> Result<JobExecutionResult, ClientError> {
        self.get(&format!("/v1/jobs/{id}/execution-result"))
    }

    /// `PATCH /v1/jobs/{id}?mode=cancel`: cancellation starts; the job ends in the background.
    pub fn cancel(&self, id: JobId) -> Result<(), ClientError> {
        let path = format!("/v1/jobs/{id}?mode=cancel");
        let what = format!("PATCH {path}");
        let result = self.authorized(self.agent.patch(self.endpoint(&path))).send_empty();
        let (status, body) = self.finish(&what, result)?;
        interpret_empty(status, &body).map_err(|f| self.failure(&what, f))
    }

    /// `GET /v1/jobs/{id}/checkpoints`.
    pub fn checkpoints(&self, id: JobId) -> Result<CheckpointingStatistics, ClientError> {
        self.get(&format!("/v1/jobs/{id}/checkpoints"))
    }

    /// `GET /v1/jobs/{id}/checkpoints/config`.
    pub fn checkpoint_config(&self, id: JobId) -> Result<CheckpointConfigInfo, ClientError> {
        self.get(&format!("/v1/jobs/{id}/checkpoints/config"))
    }

    /// `GET /v1/jobs/{id}/checkpoints/details/{checkpoint}`.
    pub fn checkpoint(&self, id: JobId, checkpoint: CheckpointId) -> Result<CheckpointDetails, ClientError> {
        self.get(&format!("/v1/jobs/{id}/checkpoints/details/{checkpoint}"))
    }

    /// `POST /v1/jobs/{id}/checkpoints`: triggers a checkpoint now; it runs in the background.
    pub fn trigger_checkpoint(&self, id: JobId) -> Result<TriggerCheckpointResponse, ClientError> {
        let path = format!("/v1/jobs/{id}/checkpoints");
        let what = format!("POST {path}");
        let result = self.authorized(self.agent.post(self.endpoint(&path))).send_empty();
        self.finish(&what, result).and_then(|(status, body)| self.decode(&what, status, &body))
    }

    /// `POST /v1/jobs/{id}/savepoints` (or, with `stop`, `/stop`): requests a savepoint into
    /// `target` (the cluster's default directory when `None`).
    pub fn trigger_savepoint(
        &self,
        id: JobId,
        target: Option<String>,
        stop: bool,
    ) -> Result<SavepointTriggerResponse, ClientError> {
        let path = format!("/v1/jobs/{id}/{}", if stop { "stop" } else { "savepoints" });
        let what = format!("POST {path}");
        let request = SavepointRequest { target_directory: target };
        let result = self.authorized(self.agent.post(self.endpoint(&path))).send_json(&request);
        self.finish(&what, result).and_then(|(status, body)| self.decode(&what, status, &body))
    }

    /// `GET /v1/jobs/{id}/savepoints/{request}`.
    pub fn savepoint(&self, id: JobId, request: &str) -> Result<SavepointInfo, ClientError> {
        self.get(&format!("/v1/jobs/{id}/savepoints/{request}"))
    }

    /// Polls a savepoint request every 100 ms until it completed or failed;
    /// [`ClientError::SavepointWaitTimeout`] when it is still in progress after `timeout`.
    pub fn wait_for_savepoint(
        &self,
        id: JobId,
        request: &str,
        timeout: Duration,
    ) -> Result<SavepointInfo, ClientError> {
        let start = Instant::now();
        loop {
            let info = self.savepoint(id, request)?;
            if info.status != SavepointStatus::InProgress {
                return Ok(info);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(ClientError::SavepointWaitTimeout {
                    url: self.base.clone(),
                    jobid: id,
                    request: request.to_string(),
                    waited,
                });
            }
            thread::sleep((timeout - waited).min(Duration::from_millis(100)));
        }
    }

    /// Polls a checkpoint's details every 50 ms (a checkpoint takes milliseconds, and the
    /// history keeps only the newest few) until it completed or failed, and returns them;
    /// [`ClientError::CheckpointWaitTimeout`] when it is still in progress after `timeout`.
    pub fn wait_for_checkpoint(
        &self,
        id: JobId,
        checkpoint: CheckpointId,
        timeout: Duration,
    ) -> Result<CheckpointDetails, ClientError> {
        let start = Instant::now();
        loop {
            let details = self.checkpoint(id, checkpoint)?;
            if details.checkpoint.status != CheckpointStatusInfo::InProgress {
                return Ok(details);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(ClientError::CheckpointWaitTimeout {
                    url: self.base.clone(),
                    jobid: id,
                    checkpoint,
                    waited,
                });
            }
            thread::sleep((timeout - waited).min(Duration::from_millis(50)));
        }
    }

    /// Polls the job's execution result until the job has ended, and returns what it produced;
    /// [`ClientError::WaitTimeout`] when it has not ended within `timeout`. Polls quickly at
    /// first, then once a second.
    pub fn wait_for_result(&self, id: JobId, timeout: Duration) -> Result<JobOutcome, ClientError> {
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        let mut pause = Duration::from_millis(20);
        loop {
            let current = self.execution_result(id)?;
            if let Some(outcome) = current.result {
                return Ok(outcome);
            }
            let now = Instant::now();
            let left = deadline.map(|d| d.saturating_duration_since(now));
            if left == Some(Duration::ZERO) {
                return Err(ClientError::WaitTimeout {
                    url: self.base.clone(),
                    jobid: id,
                    waited: now - start,
                    state: current.state,
                });
            }
            thread::sleep(left.map_or(pause, |l| l.min(pause)));
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.secret {
            Some(secret) => request.header("Authorization", format!("Bearer {secret}")),
            None => request,
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let what = format!("GET {path}");
        let result = self.agent.get(self.endpoint(path)).call();
        self.finish(&what, result).and_then(|(status, body)| self.decode(&what, status, &body))
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, status: u16, body: &[u8]) -> Result<T, ClientError> {
        interpret(status, body).map_err(|f| self.failure(what, f))
    }

    /// The status and body of a response, or the transport's error.
    fn finish(
        &self,
        what: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut response = result.map_err(|e| self.transport_error(what, e))?;
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec().map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => self.failure(
                what,
                Failure::Malformed {
                    status,
                    reason: format!("the response is larger than {MAX_RESPONSE_BYTES} bytes"),
                },
            ),
            other => self.transport_error(what, other),
        })?;
        Ok((status, body))
    }

    fn transport_error(&self, what: &str, error: ureq::Error) -> ClientError {
        let (url, request) = (self.base.clone(), what.to_string());
        match error {
            ureq::Error::Timeout(_) => ClientError::Timeout { url, request, after: self.timeouts.request },
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                ClientError::Timeout { url, request, after: self.timeouts.request }
            }
            ureq::Error::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::AddrNotAvailable
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                ) =>
            {
                ClientError::Connect { url, request, reason: e.to_string() }
            }
            ureq::Error::HostNotFound => ClientError::Connect { url, request, reason: "host not found".into() },
            ureq::Error::ConnectionFailed => ClientError::Connect { url, request, reason: "connection failed".into() },
            other => ClientError::Transport { url, request, reason: other.to_string() },
        }
    }

    fn failure(&self, what: &str, failure: Failure) -> ClientError {
        let (url, request) = (self.base.clone(), what.to_string());
        match failure {
            Failure::Api { status, error } => ClientError::Api { url, request, status, error },
            Failure::Malformed { status, reason } => ClientError::Malformed { url, request, status, reason },
        }
    }
}

/// What a response meant, before the request's context is added.
#[derive(Debug, PartialEq)]
enum Failure {
    Api { status: u16, error: ApiError },
    Malformed { status: u16, reason: String },
}

/// A JSON answer: 2xx carries `T`; anything else should carry an [`ApiError`].
fn interpret<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, Failure> {
    if (200..300).contains(&status) {
        serde_json::from_slice(body).map_err(|e| Failure::Malformed {
            status,
            reason: format!("{e}; the response began with {}", snippet(body)),
        })
    } else {
        Err(refusal(status, body))
    }
}

/// An answer without a body: 2xx is success.
fn interpret_empty(status: u16, body: &[u8]) -> Result<(), Failure> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(refusal(status, body))
    }
}

fn refusal(status: u16, body: &[u8]) -> Failure {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(error) => Failure::Api { status, error },
        Err(_) => Failure::Malformed {
            status,
            reason: format!("expected an error as {{\"error\": ..., \"message\": ...}}, got {}", snippet(body)),
        },
    }
}

/// The start of a body, for a message.
fn snippet(body: &[u8]) -> String {
    if body.is_empty() {
        return "an empty body".to_string();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(120)]);
    let more = if body.len() > 120 { "..." } else { "" };
    format!("`{}{more}`", text.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobmanager::api::ApiErrorCode;

    #[test]
    fn base_urls() {
        assert_eq!(normalize_base_url("http://127.0.0.1:8081").unwrap(), "http://127.0.0.1:8081");
        assert_eq!(normalize_base_url(" HTTP://jm:8081/ ").unwrap(), "http://jm:8081");
        assert_eq!(normalize_base_url("localhost:9000").unwrap(), "http://localhost:9000");
        assert_eq!(normalize_base_url("http://[::1]:8081").unwrap(), "http://[::1]:8081");
        assert_eq!(normalize_base_url("http://jm:8081/prefix/").unwrap(), "http://jm:8081/prefix");
        for (bad, needle) in [
            ("", "empty"),
            ("https://jm:8081", "`https` is not supported"),
            ("http://", "no host"),
            ("http://jm:8081/?x=1", "query"),
            ("http://jm:port", "port `port` is not a number"),
            ("jm:70000", "port `70000`"),
            ("http://j m:1", "invalid"),
        ] {
            let e = normalize_base_url(bad).unwrap_err();
            assert!(e.to_string().contains(needle) && e.to_string().contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }

    #[test]
    fn answers_are_interpreted() {
        let ok: SubmitResponse = interpret(202, br#"{"jobid":"000102030405060708090a0b0c0d0e0f"}"#).unwrap();
        assert_eq!(ok.jobid.to_string(), "000102030405060708090a0b0c0d0e0f");
        match interpret::<SubmitResponse>(400, br#"{"error":"bad_request","message":"unknown job type"}"#) {
            Err(Failure::Api { status: 400, error }) => {
                assert_eq!(error, ApiError::bad_request("unknown job type"));
            }
            other => panic!("{other:?}"),
        }
        match interpret::<SubmitResponse>(200, b"<html>") {
            Err(Failure::Malformed { status: 200, reason }) => assert!(reason.contains("`<html>`"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match interpret::<SubmitResponse>(502, b"") {
            Err(Failure::Malformed { status: 502, reason }) => assert!(reason.contains("an empty body"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(interpret_empty(202, b""), Ok(()));
        assert!(matches!(
            interpret_empty(409, br#"{"error":"conflict","message":"ended"}"#),
            Err(Failure::Api { status: 409, error: ApiError { error: ApiErrorCode::Conflict, .. } })
        ));
        assert_eq!(snippet(&[b'a'; 500]).len(), 125);
    }

    #[test]
    fn errors_name_the_url_and_request() {
        let e = ClientError::Api {
            url: "http://jm:8081".into(),
            request: "POST /v1/jobs".into(),
            status: 400,
            error: ApiError::bad_request("unknown job type `x`"),
        };
        assert_eq!(
            e.to_string(),
            "the JobManager at http://jm:8081 refused POST /v1/jobs: unknown job type `x` (bad_request, HTTP 400)"
        );
        let client = RestClient::new("jm:1", Some("s3cret".into())).unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn an_unreachable_jobmanager_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = RestClient::new(&format!("127.0.0.1:{port}"), None).unwrap();
        let e = client.overview().unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("http://127.0.0.1:{port}")), "{e}");
    }
}
