//! The checkpoint routes of the REST API end to end, in front of a real embedded cluster
//! (`LocalCluster::start_with_jobs`): a registered job throttled to run for about three seconds
//! takes checkpoints every 200 ms; `GET .../checkpoints` shows completed ones with their sizes,
//! `POST .../checkpoints` triggers one whose details later show it completed, and
//! `GET .../checkpoints/config` echoes the submission, and a job resumed from the directory
//! shows the checkpoint it restored. The refusals come with the usual error
//! body: an unknown job (404), malformed job and checkpoint ids (400), an unknown checkpoint
//! (404), a trigger of a job without checkpoints or of a finished job (409), and a job with
//! checkpoints whose source cannot rewind (400, at submission).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use corestream::checkpoint::request::{CheckpointRequest, RestoreRequest};
use corestream::client::{ClientError, RestClient};
use corestream::jobmanager::api::{ApiErrorCode, CheckpointStatusInfo, JobState, SubmitRequest};
use corestream::jobmanager::rest::{RestServer, RestSettings};
use corestream::registry::{JobParts, JobRegistry, JobType};
use corestream::rpc::ids::JobId;
use corestream::{ClusterConfig, LocalCluster, SourceError, SourceFunction, SourceStatus};
use serde_json::Value;

/// Records per source subtask per second.
const RATE: u64 = 2_000;
const PARALLELISM: u32 = 2;
/// About three seconds of input at [`RATE`] over [`PARALLELISM`] source subtasks.
const RECORDS: u64 = 3 * RATE * PARALLELISM as u64;
const DEADLINE: Duration = Duration::from_secs(60);

/// `slow-sum RECORDS RATE`: per-key sums of a generated sequence, each source subtask throttled
/// to RATE records per second.
fn registry() -> JobRegistry {
    let mut jobs = JobRegistry::new();
    jobs.register(JobType::new("slow-sum", "per-key sums of a throttled generator", "RECORDS RATE", |env, ctx| {
        let number = |i: usize| -> Result<u64, String> {
            let arg = ctx.args.get(i).ok_or("usage: slow-sum RECORDS RATE")?;
            arg.parse().map_err(|_| format!("'{arg}' is not a number"))
        };
        let (records, rate) = (number(0)?, number(1)?);
        env.set_source_rate(Some(rate));
        env.from_generator(records, |i| (i % 64, i))
            .key_by(|r: &(u64, u64)| r.0)
            .reduce(|a, b| (a.0, a.1 + b.1))
            .discard();
        Ok(JobParts::none())
    }));
    jobs.register(JobType::new("no-rewind", "a source that cannot go back to a position", "", |env, _| {
        env.from_source("Source: forward only", Some(1), |_| Ok(ForwardOnly { left: 10 })).discard();
        Ok(JobParts::none())
    }));
    jobs
}

/// A source that does not record its position, so it cannot be restored.
struct ForwardOnly {
    left: u64,
}

impl SourceFunction<u64> for ForwardOnly {
    fn next_batch(&mut self, out: &mut Vec<u64>, _max_records: usize) -> Result<SourceStatus, SourceError> {
        if self.left == 0 {
            return Ok(SourceStatus::Finished);
        }
        out.push(self.left);
        self.left -= 1;
        Ok(SourceStatus::More)
    }
}

struct Setup {
    _cluster: LocalCluster,
    server: RestServer,
    client: RestClient,
}

fn start() -> Setup {
    let cluster = LocalCluster::start_with_jobs(ClusterConfig { slots: Some(2), ..Default::default() }, registry())
        .expect("the cluster starts");
    let api = cluster.api().expect("an embedded cluster has a JobManager");
    let server = RestServer::start("127.0.0.1:0", api, RestSettings::default()).expect("the REST server starts");
    let client = RestClient::new(&server.url(), None).unwrap();
    Setup { _cluster: cluster, server, client }
}

fn submit(client: &RestClient, records: u64, checkpoints: Option<CheckpointRequest>) -> JobId {
    let request = SubmitRequest {
        job: "slow-sum".into(),
        args: vec![records.to_string(), RATE.to_string()],
        parallelism: Some(PARALLELISM),
        checkpoints,
        ..Default::default()
    };
    client.submit(&request).expect("the job is accepted").jobid
}

/// Polls `f` every 20 ms until it gives a value, at most [`DEADLINE`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET over a plain TCP connection, for paths the typed client cannot produce (malformed
/// ids): the status and the body as JSON.
fn raw_get(addr: SocketAddr, path: &str) -> (u16, Value) {
    raw_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
}

/// Sends `request` as it is and reads the status and the body as JSON.
fn raw_request(addr: SocketAddr, request: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// Asserts the error body `{"error": code, "message": ...}` with a message containing `needle`.
fn assert_error(reply: (u16, Value), status: u16, code: &str, needle: &str) {
    assert_eq!(reply.0, status, "{reply:?}");
    assert_eq!(reply.1["error"], code, "{reply:?}");
    assert!(reply.1["message"].as_str().unwrap().contains(needle), "{reply:?} lacks {needle:?}");
    assert_eq!(reply.1.as_object().unwrap().len(), 2, "{reply:?}");
}

fn api_error(e: ClientError) -> (u16, ApiErrorCode, String) {
    match e {
        ClientError::Api { status, error, .. } => (status, error.error, error.message),
        other => panic!("expected the JobManager's error, got {other}"),
    }
}

#[test]
fn checkpoints_are_shown_triggered_and_configured_over_rest() {
    let Setup { server, client, _cluster } = start();
    let dir = tempfile::tempdir().unwrap();
    let ck_dir = dir.path().join("ck");
    let request = CheckpointRequest {
        interval_ms: Some(200),
        dir: Some(ck_dir.display().to_string()),
        max_concurrent: Some(1),
        tolerable_failures: Some(2),
        retained: Some(3),
        ..Default::default()
    };
    let job = submit(&client, RECORDS, Some(request));

    // The configuration echoes the submission (and the cluster's defaults for the rest).
    let config = client.checkpoint_config(job).unwrap();
    assert!(config.enabled);
    assert_eq!(config.mode.as_deref(), Some("exactly_once"));
    assert_eq!((config.interval_ms, config.max_concurrent), (Some(200), Some(1)));
    assert_eq!((config.tolerable_failed_checkpoints, config.retained), (Some(2), Some(3)));
    assert_eq!((config.unaligned_checkpoints, config.min_pause_ms), (Some(false), Some(0)));
    assert_eq!(config.directory.as_deref(), Some(ck_dir.to_str().unwrap()));

    // Periodic checkpoints complete, with sizes.
    let stats = wait_for("two completed checkpoints", || {
        let stats = client.checkpoints(job).unwrap();
        let state = client.execution_result(job).unwrap().state;
        assert!(!state.is_terminal(), "the job ended ({state:?}) before two checkpoints completed: {stats:?}");
        (stats.counts.completed >= 2).then_some(stats)
    });
    let latest = stats.latest.completed.as_ref().expect("a latest completed checkpoint");
    assert_eq!(latest.status, CheckpointStatusInfo::Completed);
    assert!(latest.checkpointed_size_bytes > 0 && latest.state_size_bytes > 0, "{latest:?}");
    assert!(latest.cpu_time_us > 0 && stats.summary.cpu_time_us.min > 0, "every checkpoint costs some CPU: {stats:?}");
    assert_eq!(latest.num_acknowledged_subtasks, latest.num_subtasks);
    assert!(latest.end_timestamp.unwrap() >= latest.trigger_timestamp);
    assert!(!latest.manual);
    assert_eq!(latest.tasks.len(), 2, "{latest:?}");
    assert!(latest.tasks[0].name.contains("generator"), "{:?}", latest.tasks[0]);
    assert!(latest.tasks.iter().all(|v| v.num_acknowledged_subtasks == PARALLELISM), "{latest:?}");
    assert!(stats.summary.completed >= 2 && stats.summary.checkpointed_size_bytes.min > 0, "{stats:?}");
    assert!(stats.history.iter().any(|c| c.id == latest.id));
    assert!(!stats.retained.is_empty() && stats.retained.len() <= 3, "{stats:?}");
    assert_eq!(stats.counts.restored, 0);

    // A manual checkpoint: refused only while another is in progress (max_concurrent 1).
    let id = wait_for("a manual trigger", || match client.trigger_checkpoint(job) {
        Ok(t) => Some(t.checkpoint_id),
        Err(e) => {
            let (status, _, message) = api_error(e);
            assert!(status == 409 && message.contains("in progress"), "{status} {message}");
            None
        }
    });
    assert!(id > latest.id);
    let done = client.wait_for_checkpoint(job, id, Duration::from_secs(30)).unwrap();
    assert_eq!(done.checkpoint.status, CheckpointStatusInfo::Completed, "{done:?}");
    assert!(done.checkpoint.manual);
    assert!(done.checkpoint.checkpointed_size_bytes > 0);
    assert_eq!(done.subtasks.len(), 2 * PARALLELISM as usize, "{done:?}");
    assert!(done.subtasks.iter().all(|s| s.ack_timestamp.is_some() && s.checkpointed_size_bytes > 0), "{done:?}");
    assert!(done.subtasks.iter().all(|s| s.cpu_time_us > 0), "each subtask wrote a file: {done:?}");

    // An unknown checkpoint of a known job, and malformed ids.
    let e = api_error(client.checkpoint(job, u64::MAX).unwrap_err());
    assert_eq!((e.0, e.1), (404, ApiErrorCode::NotFound));
    assert!(e.2.contains(&format!("no checkpoint {}", u64::MAX)), "{}", e.2);
    let addr = server.local_addr();
    assert_error(raw_get(addr, &format!("/v1/jobs/{job}/checkpoints/details/one")), 400, "bad_request", "`one`");
    assert_error(raw_get(addr, "/v1/jobs/12ab/checkpoints"), 400, "bad_request", "'12ab' is not a valid job id");
    assert_error(raw_get(addr, "/v1/jobs/12ab/checkpoints/config"), 400, "bad_request", "'12ab'");
    let unknown = JobId::random();
    for path in ["checkpoints", "checkpoints/config", "checkpoints/details/1"] {
        assert_error(raw_get(addr, &format!("/v1/jobs/{unknown}/{path}")), 404, "not_found", "no job");
    }
    let e = api_error(client.trigger_checkpoint(unknown).unwrap_err());
    assert_eq!((e.0, e.1), (404, ApiErrorCode::NotFound));

    // The job finishes; its statistics stay, and a trigger is a conflict.
    let outcome = client.wait_for_result(job, DEADLINE).unwrap();
    assert_eq!(outcome.state, JobState::Finished, "{outcome:?}");
    let last = client.checkpoints(job).unwrap();
    assert!(last.counts.completed >= 3, "{last:?}");
    assert_eq!(last.counts.in_progress, 0);
    assert_eq!(last.counts.total, last.counts.completed + last.counts.failed);
    // The manual checkpoint is still shown, or it left the bounded history.
    match client.checkpoint(job, id) {
        Ok(d) => assert!(d.checkpoint.manual && d.checkpoint.status == CheckpointStatusInfo::Completed, "{d:?}"),
        Err(e) => {
            let (status, _, message) = api_error(e);
            assert!(status == 404 && message.contains("its history holds checkpoints"), "{status} {message}");
            assert!(last.history.iter().all(|c| c.id > id), "{last:?}");
        }
    }
    let e = api_error(client.trigger_checkpoint(job).unwrap_err());
    assert_eq!((e.0, e.1), (409, ApiErrorCode::Conflict));
    assert!(e.2.contains("already ended"), "{}", e.2);

    // A job resumed from the directory shows the checkpoint it restored, without taking any.
    let newest = last.retained.last().expect("a retained checkpoint").id;
    let request = SubmitRequest {
        job: "slow-sum".into(),
        args: vec![RECORDS.to_string(), RATE.to_string()],
        parallelism: Some(PARALLELISM),
        restore: Some(RestoreRequest::Resume(ck_dir.display().to_string())),
        ..Default::default()
    };
    let resumed = client.submit(&request).unwrap().jobid;
    assert_eq!(client.wait_for_result(resumed, DEADLINE).unwrap().state, JobState::Finished);
    let stats = client.checkpoints(resumed).unwrap();
    assert_eq!((stats.counts.restored, stats.counts.total), (1, 0), "{stats:?}");
    let restored = stats.latest.restored.expect("the restored checkpoint");
    assert_eq!(restored.id, newest);
    assert_eq!(restored.external_path, ck_dir.join(format!("chk-{newest}")).display().to_string());
    let config = client.checkpoint_config(resumed).unwrap();
    assert!(!config.enabled);
    assert_eq!(config.restore, Some(RestoreRequest::Resume(ck_dir.display().to_string())));
}

#[test]
fn a_job_without_checkpoints_says_so() {
    let Setup { server, client, _cluster } = start();
    let job = submit(&client, RECORDS, None);
    let stats = client.checkpoints(job).unwrap();
    assert_eq!(stats, Default::default(), "zero counts, no history");
    let config = client.checkpoint_config(job).unwrap();
    assert!(!config.enabled);
    assert_eq!((config.interval_ms, config.directory, config.mode), (None, None, None));
    let e = api_error(client.trigger_checkpoint(job).unwrap_err());
    assert_eq!((e.0, e.1), (409, ApiErrorCode::Conflict));
    assert!(e.2.contains("takes no checkpoints"), "{}", e.2);
    assert_error(
        raw_get(server.local_addr(), &format!("/v1/jobs/{job}/checkpoints/details/1")),
        404,
        "not_found",
        "it takes no checkpoints",
    );
    client.cancel(job).unwrap();
    assert_eq!(client.wait_for_result(job, DEADLINE).unwrap().state, JobState::Cancelled);
    assert_eq!(client.checkpoints(job).unwrap().counts.total, 0);
}

#[test]
fn a_job_whose_source_cannot_rewind_is_refused_at_submission_when_it_takes_checkpoints() {
    let Setup { client, _cluster, server: _server } = start();
    let dir = tempfile::tempdir().unwrap();
    let request = |checkpoints| SubmitRequest { job: "no-rewind".into(), checkpoints, ..Default::default() };
    let every = CheckpointRequest {
        interval_ms: Some(200),
        dir: Some(dir.path().join("ck").display().to_string()),
        ..Default::default()
    };
    let (status, _, message) = api_error(client.submit(&request(Some(every))).unwrap_err());
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("Source: forward only") && message.contains("rewind"), "{message}");

    let id = client.submit(&request(None)).expect("without checkpoints the job is accepted").jobid;
    let state =
        wait_for("the job to end", || client.execution_result(id).ok().map(|r| r.state).filter(|s| s.is_terminal()));
    assert_eq!(state, JobState::Finished);
}

/// A POST over a plain TCP connection with `body` as `content_type` (for bodies the typed
/// client never sends): the status and the body as JSON.
fn raw_post(addr: SocketAddr, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    raw_request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn a_savepoint_is_requested_polled_and_stops_the_job_over_rest() {
    let Setup { server, client, _cluster } = start();
    let (dir, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let checkpoints =
        CheckpointRequest { interval_ms: Some(200), dir: Some(dir.path().display().to_string()), ..Default::default() };
    let job = submit(&client, RECORDS * 10, Some(checkpoints));
    let addr = server.local_addr();
    let path = format!("/v1/jobs/{job}/savepoints");
    assert_error(raw_post(addr, &path, "application/json", "{\"cancel_job\": true}"), 400, "bad_request", "cancel_job");
    assert_error(raw_post(addr, &path, "text/plain", "{}"), 415, "unsupported_media_type", "application/json");
    assert_error(raw_post(addr, &path, "application/json", ""), 400, "bad_request", "no target directory");
    assert_error(
        raw_get(addr, &format!("/v1/jobs/{job}/savepoints/{}", "f".repeat(32))),
        404,
        "not_found",
        "no savepoint request",
    );
    assert_error(raw_get(addr, &format!("/v1/jobs/{job}/savepoints/xyz")), 400, "bad_request", "xyz");

    wait_for("a completed checkpoint", || (client.checkpoints(job).ok()?.counts.completed > 0).then_some(()));
    let target_dir = Some(target.path().display().to_string());
    let request = client.trigger_savepoint(job, target_dir.clone(), false).expect("a savepoint is requested");
    let info = client.wait_for_savepoint(job, &request.request_id, DEADLINE).unwrap();
    let location = info.location.clone().unwrap_or_else(|| panic!("{info:?}"));
    assert!(std::path::Path::new(&location).join(format!("chk-{}/_metadata", info.checkpoint_id.unwrap())).is_file());
    let details = client.checkpoint(job, info.checkpoint_id.unwrap()).unwrap();
    assert_eq!(details.checkpoint.checkpoint_type, corestream::jobmanager::api::CheckpointType::Savepoint);

    let stop = client.trigger_savepoint(job, target_dir, true).expect("a stop-with-savepoint is requested");
    let info = client.wait_for_savepoint(job, &stop.request_id, DEADLINE).unwrap();
    assert!(info.stop && info.location.is_some(), "{info:?}");
    assert_eq!(client.wait_for_result(job, DEADLINE).unwrap().state, JobState::Cancelled);
    let e = api_error(client.trigger_savepoint(job, Some("/tmp".into()), false).unwrap_err());
    assert_eq!((e.0, e.1), (409, ApiErrorCode::Conflict), "{}", e.2);
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 2, "two savepoint directories");
}
