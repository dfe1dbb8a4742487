//! The JobManager's REST API end to end, over TCP on 127.0.0.1, in front of a fake dispatcher
//! (`support/fake_cluster.rs`): every route's happy path, every kind of bad request answered as
//! JSON with its status (malformed JSON, unknown fields, wrong content type, unknown job type,
//! bad arguments, invalid ids, unknown paths, wrong methods, oversized bodies, slow bodies, a
//! panicking dispatcher), authentication of mutations (nothing changes without the secret),
//! the bounds on connections, the routes against the OpenAPI description, the checkpoint
//! routes (statistics, configuration, details, manual trigger) with their refusals, and the
//! blocking client against a real server and against servers that misbehave.

#[path = "support/fake_cluster.rs"]
mod fake_cluster;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use corestream::client::{ClientError, ClientTimeouts, RestClient};
use corestream::jobmanager::api::{ApiErrorCode, JobState, SubmitRequest};
use corestream::jobmanager::rest::{openapi, Authorizer, ConnectionLimits, RestServer, RestSettings};
use corestream::rpc::ids::JobId;
use fake_cluster::{tm_id, FakeCluster};
use serde_json::Value;

const SECRET: &str = "s3cret";
const BODY_LIMIT: usize = 4096;

fn authorizer() -> Authorizer {
    Arc::new(|header: Option<&str>| match header {
        None => Err("the request has no Authorization header".to_string()),
        Some(h) if h == format!("Bearer {SECRET}") => Ok(()),
        Some(_) => Err("wrong secret".to_string()),
    })
}

fn settings(auth: bool) -> RestSettings {
    RestSettings {
        max_body_bytes: BODY_LIMIT,
        request_timeout: Duration::from_secs(5),
        authorizer: auth.then(authorizer),
        connections: ConnectionLimits::default(),
    }
}

fn start(auth: bool) -> (Arc<FakeCluster>, RestServer) {
    let fake = Arc::new(FakeCluster::new());
    let server = RestServer::start("127.0.0.1:0", fake.clone(), settings(auth)).expect("REST server starts");
    (fake, server)
}

/// A response read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts an error response: status, code, a message containing `needle`, JSON content type.
    fn assert_error(&self, status: u16, code: &str, needle: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let v = self.json();
        assert_eq!(v["error"], code, "{self:?}");
        let message = v["message"].as_str().unwrap_or_else(|| panic!("no message: {self:?}"));
        assert!(message.contains(needle), "message {message:?} lacks {needle:?}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{self:?}");
    }
}

/// Sends raw bytes on a new connection and reads the response to the connection's end.
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before it has read all of an oversized body.
    let _ = stream.write_all(bytes);
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if raw.is_empty() => panic!("no response: {e}"),
            Err(_) => break,
        }
    }
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete head: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply { status, headers, body: body.to_string() }
}

/// One request with `Connection: close`; `headers` are added as given.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PATCH" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    send_raw(addr, &bytes)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const BEARER: (&str, &str) = ("Authorization", "Bearer s3cret");

fn submit(addr: SocketAddr, body: &str) -> Reply {
    request(addr, "POST", "/v1/jobs", &[JSON, BEARER], body.as_bytes())
}

fn submitted(addr: SocketAddr, body: &str) -> JobId {
    let reply = submit(addr, body);
    assert_eq!(reply.status, 202, "{reply:?}");
    reply.json()["jobid"].as_str().unwrap().parse().unwrap()
}

#[test]
fn every_route_answers_its_happy_path() {
    let (fake, server) = start(true);
    let addr = server.local_addr();

    let overview = get(addr, "/v1/overview");
    assert_eq!(overview.status, 200, "{overview:?}");
    assert_eq!(overview.json()["slots_total"], fake_cluster::SLOTS);

    let config = get(addr, "/v1/config").json();
    assert_eq!(config["auth_required"], true);
    assert_eq!(config["max_body_bytes"], BODY_LIMIT);
    assert_eq!(config["version"], env!("CARGO_PKG_VERSION"));
    assert!(!get(addr, "/v1/config").body.contains(SECRET));

    let tms = get(addr, "/v1/taskmanagers").json();
    assert_eq!(tms["taskmanagers"][0]["id"], tm_id().to_string());
    let tm = get(addr, &format!("/v1/taskmanagers/{}", tm_id()));
    assert_eq!((tm.status, tm.json()["pid"].clone()), (200, Value::from(4242)));

    let types = get(addr, "/v1/job-types").json();
    assert_eq!(types["job_types"].as_array().unwrap().len(), 4);

    assert_eq!(get(addr, "/v1/jobs").json(), serde_json::json!({"jobs": []}));
    let reply = submit(addr, r#"{"job": "sum-by-key", "args": ["--keys", "10"], "parallelism": 3}"#);
    assert_eq!(reply.status, 202, "{reply:?}");
    let id = reply.json()["jobid"].as_str().unwrap().to_string();
    assert_eq!(reply.header("location"), Some(format!("/v1/jobs/{id}").as_str()));

    let jobs = get(addr, "/v1/jobs").json();
    assert_eq!(jobs["jobs"][0]["jid"], id);
    assert_eq!(jobs["jobs"][0]["args"], serde_json::json!(["--keys", "10"]));
    let details = get(addr, &format!("/v1/jobs/{id}")).json();
    assert_eq!((details["parallelism"].clone(), details["state"].clone()), (Value::from(3), Value::from("RUNNING")));
    assert_eq!(details["vertices"][1]["subtasks"][2]["state"], "RUNNING");

    let mut result = get(addr, &format!("/v1/jobs/{id}/execution-result")).json();
    assert_eq!(result["result"], Value::Null);
    while result["result"].is_null() {
        result = get(addr, &format!("/v1/jobs/{id}/execution-result")).json();
    }
    assert_eq!(result["result"]["state"], "FINISHED");
    assert_eq!(result["result"]["accumulators"]["records"], serde_json::json!({"kind": "count", "value": 1000}));

    let forever = submitted(addr, r#"{"job": "forever"}"#);
    let cancel = request(addr, "PATCH", &format!("/v1/jobs/{forever}?mode=cancel"), &[BEARER], b"");
    assert_eq!((cancel.status, cancel.body.as_str()), (202, ""), "{cancel:?}");
    assert_eq!(fake.state_of(forever), Some(JobState::Cancelling));
    // Flink's default mode is cancel, too.
    let again = submitted(addr, r#"{"job": "forever"}"#);
    assert_eq!(request(addr, "PATCH", &format!("/v1/jobs/{again}"), &[BEARER], b"").status, 202);
    // Cancelling an ended job is a conflict.
    request(addr, "PATCH", &format!("/v1/jobs/{id}?mode=cancel"), &[BEARER], b"").assert_error(
        409,
        "conflict",
        "already ended",
    );
}

#[test]
fn bad_requests_are_answered_as_json_errors() {
    let (fake, server) = start(true);
    let addr = server.local_addr();

    submit(addr, r#"{"job": "sum-by-key", "args": ["--keys" 10]}"#).assert_error(
        400,
        "bad_request",
        "malformed JSON in the request body: expected `,` or `]` at line 1 column 41",
    );
    submit(addr, "{\"job\": \"sum-by-key\",\n \"parallelism\": 2,\n \"paralelism\": 3}").assert_error(
        400,
        "bad_request",
        "unknown field `paralelism`, expected one of `job`, `args`, `parallelism`, `checkpoints`, `restore`, `allow_non_restored_state`, `restart_strategy` at line 3",
    );
    submit(addr, r#"{"job": "sum-by-key", "parallelism": "two"}"#).assert_error(
        400,
        "bad_request",
        "invalid type: string \"two\"",
    );
    submit(addr, "").assert_error(400, "bad_request", "empty");
    submit(addr, r#"["sum-by-key"]"#).assert_error(400, "bad_request", "expected a JSON object");
    submit(addr, r#"{"job": "word-count"}"#).assert_error(400, "bad_request", "unknown job type `word-count`");
    submit(addr, r#"{"job": "sum-by-key", "args": ["--kyes", "1"]}"#).assert_error(
        400,
        "bad_request",
        "unknown argument `--kyes`",
    );
    submit(addr, r#"{"job": "sum-by-key", "args": ["--keys", "ten"]}"#).assert_error(
        400,
        "bad_request",
        "--keys ten: not a number",
    );
    submit(addr, r#"{"job": "forever", "parallelism": 99}"#).assert_error(503, "unavailable", "parallelism 99");

    request(addr, "POST", "/v1/jobs", &[BEARER], br#"{"job": "forever"}"#).assert_error(
        415,
        "unsupported_media_type",
        "no Content-Type",
    );
    request(addr, "POST", "/v1/jobs", &[BEARER, ("Content-Type", "text/plain")], br#"{"job": "forever"}"#)
        .assert_error(415, "unsupported_media_type", "`text/plain`");
    let ok = request(
        addr,
        "POST",
        "/v1/jobs",
        &[BEARER, ("Content-Type", "application/json; charset=utf-8")],
        br#"{"job": "forever"}"#,
    );
    assert_eq!(ok.status, 202, "{ok:?}");

    let big = format!(r#"{{"job": "forever", "args": ["{}"]}}"#, "x".repeat(BODY_LIMIT));
    submit(addr, &big).assert_error(413, "payload_too_large", "larger than the server accepts");
    // A chunked body has no length up front: it is cut off at the limit as it arrives.
    let mut chunked = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {SECRET}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for _ in 0..(BODY_LIMIT / 1000 + 2) {
        chunked.push_str(&format!("3e8\r\n{}\r\n", " ".repeat(1000)));
    }
    chunked.push_str("0\r\n\r\n");
    send_raw(addr, chunked.as_bytes()).assert_error(413, "payload_too_large", "larger than the server accepts");
    // Within the limit, a long body is fine.
    let fits = format!(r#"{{"job": "forever", "args": ["{}"]}}"#, "x".repeat(BODY_LIMIT - 100));
    assert_eq!(submit(addr, &fits).status, 202);

    for path in ["/v1/jobs/xyz", "/v1/jobs/xyz/execution-result"] {
        get(addr, path).assert_error(400, "bad_request", "'xyz' is not a valid job id: expected 32 hexadecimal digits");
    }
    request(addr, "PATCH", "/v1/jobs/0123?mode=cancel", &[BEARER], b"").assert_error(
        400,
        "bad_request",
        "'0123' is not a valid job id",
    );
    get(addr, "/v1/taskmanagers/%ff%fe").assert_error(400, "bad_request", "invalid path");
    get(addr, "/v1/taskmanagers/nope").assert_error(400, "bad_request", "'nope' is not a valid TaskManager id");
    let unknown = JobId::random();
    get(addr, &format!("/v1/jobs/{unknown}")).assert_error(404, "not_found", &format!("no job {unknown}"));
    get(addr, "/v1/taskmanagers/00000000000000000000000000000000").assert_error(404, "not_found", "no TaskManager");

    let job = submitted(addr, r#"{"job": "forever"}"#);
    request(addr, "PATCH", &format!("/v1/jobs/{job}?mode=stop"), &[BEARER], b"").assert_error(
        400,
        "bad_request",
        "unknown variant `stop`",
    );
    assert_eq!(fake.state_of(job), Some(JobState::Running));

    get(addr, "/v1/nothing").assert_error(404, "not_found", "no route for GET /v1/nothing");
    get(addr, "/").assert_error(404, "not_found", "no route for GET /");
    let wrong = request(addr, "DELETE", "/v1/jobs", &[BEARER], b"");
    wrong.assert_error(405, "method_not_allowed", "DELETE is not allowed on /v1/jobs");
    assert_eq!(wrong.header("allow"), Some("GET,HEAD,POST"));
    request(addr, "POST", "/v1/overview", &[JSON, BEARER], b"{}").assert_error(
        405,
        "method_not_allowed",
        "POST is not allowed on /v1/overview",
    );

    let garbage = send_raw(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n");
    assert_eq!(garbage.status, 400, "{garbage:?}");
    assert_eq!(get(addr, "/v1/overview").status, 200, "the server still serves");
}

#[test]
fn a_panicking_dispatcher_is_a_500_and_the_server_goes_on() {
    let (_fake, server) = start(false);
    let addr = server.local_addr();
    let reply = request(addr, "POST", "/v1/jobs", &[JSON], br#"{"job": "panic"}"#);
    reply.assert_error(
        500,
        "internal",
        "internal error while serving POST /v1/jobs: the dispatcher tripped over job type `panic`",
    );
    for _ in 0..3 {
        assert_eq!(get(addr, "/v1/overview").status, 200);
    }
    assert_eq!(request(addr, "POST", "/v1/jobs", &[JSON], br#"{"job": "forever"}"#).status, 202);
}

#[test]
fn mutations_need_the_secret_and_change_nothing_without_it() {
    let (fake, server) = start(true);
    let addr = server.local_addr();
    let job = submitted(addr, r#"{"job": "forever"}"#);
    let before = (fake.mutations(), fake.job_count());

    let body = br#"{"job": "forever"}"#;
    request(addr, "POST", "/v1/jobs", &[JSON], body).assert_error(401, "unauthorized", "no Authorization header");
    request(addr, "POST", "/v1/jobs", &[JSON, ("Authorization", "Bearer guess")], body).assert_error(
        401,
        "unauthorized",
        "wrong secret",
    );
    request(addr, "POST", "/v1/jobs", &[JSON, ("Authorization", "Basic czNjcmV0")], body).assert_error(
        401,
        "unauthorized",
        "wrong secret",
    );
    // Refused before the body is read: a malformed or oversized body makes no difference.
    request(addr, "POST", "/v1/jobs", &[JSON], b"{nonsense").assert_error(
        401,
        "unauthorized",
        "POST /v1/jobs needs `Authorization: Bearer",
    );
    let big = vec![b'x'; BODY_LIMIT * 2];
    request(addr, "POST", "/v1/jobs", &[JSON], &big).assert_error(401, "unauthorized", "");
    let cancel = format!("/v1/jobs/{job}?mode=cancel");
    let refused = request(addr, "PATCH", &cancel, &[], b"");
    refused.assert_error(401, "unauthorized", "no Authorization header");
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    request(addr, "PATCH", &cancel, &[("Authorization", "Bearer s3cre")], b"").assert_error(
        401,
        "unauthorized",
        "wrong secret",
    );

    let trigger = format!("/v1/jobs/{job}/checkpoints");
    request(addr, "POST", &trigger, &[], b"").assert_error(401, "unauthorized", "no Authorization header");
    request(addr, "POST", &trigger, &[("Authorization", "Bearer guess")], b"").assert_error(
        401,
        "unauthorized",
        "wrong secret",
    );

    assert_eq!((fake.mutations(), fake.job_count()), before, "nothing reached the dispatcher");
    assert_eq!(fake.state_of(job), Some(JobState::Running));
    assert_eq!(get(addr, "/v1/jobs").json()["jobs"].as_array().unwrap().len(), 1, "GETs are open");
    assert_eq!(request(addr, "PATCH", &cancel, &[BEARER], b"").status, 202);
    assert_eq!(fake.state_of(job), Some(JobState::Cancelling));

    let (open_fake, open) = start(false);
    assert_eq!(get(open.local_addr(), "/v1/config").json()["auth_required"], false);
    assert_eq!(request(open.local_addr(), "POST", "/v1/jobs", &[JSON], body).status, 202);
    assert_eq!(open_fake.job_count(), 1);
}

#[test]
fn slow_clients_and_idle_connections_are_bounded() {
    let fake = Arc::new(FakeCluster::new());
    let limits = ConnectionLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_millis(600),
        max_header_bytes: 8192,
        shutdown_grace: Duration::from_secs(1),
    };
    let settings = RestSettings { request_timeout: Duration::from_millis(500), connections: limits, ..settings(false) };
    let server = RestServer::start("127.0.0.1:0", fake, settings).unwrap();
    let addr = server.local_addr();

    // A body that never arrives in full: 408 after the request timeout.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"job\":",
    )
    .unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    let _ = slow.read_to_end(&mut raw);
    parse_reply(&raw).assert_error(408, "request_timeout", "POST /v1/jobs was not served within 500 ms");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // A connection that sends nothing is closed after the header timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "{:?}", &buf[..n]);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // Two connections are served at once; a third waits until one ends.
    let holders: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    thread::sleep(Duration::from_millis(100));
    let client = RestClient::with_timeouts(
        &server.url(),
        None,
        ClientTimeouts { connect: Duration::from_secs(1), request: Duration::from_millis(300) },
    )
    .unwrap();
    assert!(matches!(client.overview(), Err(ClientError::Timeout { .. })), "a third connection waits");
    drop(holders);
    let patient = RestClient::with_timeouts(
        &server.url(),
        None,
        ClientTimeouts { connect: Duration::from_secs(1), request: Duration::from_secs(5) },
    )
    .unwrap();
    assert_eq!(patient.overview().unwrap().slots_total, fake_cluster::SLOTS);

    // Request heads over the limit are refused.
    let long =
        format!("GET /v1/overview HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\nConnection: close\r\n\r\n", "y".repeat(20_000));
    let reply = send_raw(addr, long.as_bytes());
    assert_eq!(reply.status, 431, "{reply:?}");

    let started = Instant::now();
    let _keep_alive = TcpStream::connect(addr).unwrap();
    server.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
}

/// Every operation in the OpenAPI description is served, with exactly the methods it lists,
/// and paths it does not list are unknown to the server.
#[test]
fn the_routes_are_the_openapi_description() {
    let (_fake, server) = start(true);
    let addr = server.local_addr();
    let job = submitted(addr, r#"{"job": "forever"}"#);
    // The checkpoint routes get a job of their own, which the PATCH of the job route does not cancel.
    let checkpointing = submitted(addr, r#"{"job": "forever"}"#);
    // And the savepoint routes one more, which `stop` cancels.
    let savepointing = submitted(addr, r#"{"job": "forever"}"#);
    let spec = serde_json::to_value(openapi()).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    let concrete = |path: &str| {
        let id = match path {
            p if p.starts_with("/v1/taskmanagers/") => tm_id().to_string(),
            p if p.contains("/checkpoints") => checkpointing.to_string(),
            p if p.contains("/savepoints") || p.ends_with("/stop") => savepointing.to_string(),
            _ => job.to_string(),
        };
        // The fake numbers its savepoint requests from 1; POST .../savepoints comes first.
        path.replace("{id}", &id).replace("{checkpointid}", "1").replace("{requestid}", &format!("{:032x}", 1))
    };
    let all = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    for (path, item) in paths {
        let listed: BTreeSet<String> = item.as_object().unwrap().keys().map(|m| m.to_uppercase()).collect();
        let url = concrete(path);
        for method in all {
            let reply = match method {
                "POST" if path == "/v1/jobs" => request(addr, method, &url, &[JSON, BEARER], br#"{"job": "forever"}"#),
                "POST" if path.ends_with("/savepoints") || path.ends_with("/stop") => {
                    request(addr, method, &url, &[JSON, BEARER], br#"{"target_directory": "/sp"}"#)
                }
                "POST" => request(addr, method, &url, &[BEARER], b""),
                "PATCH" => request(addr, method, &format!("{url}?mode=cancel"), &[BEARER], b""),
                _ => request(addr, method, &url, &[BEARER], b""),
            };
            if listed.contains(method) {
                assert!(matches!(reply.status, 200 | 202), "{method} {path} is described but answered {reply:?}");
            } else {
                reply.assert_error(405, "method_not_allowed", "is not allowed");
                let allowed: BTreeSet<String> =
                    reply.header("allow").unwrap().split(',').map(str::to_string).filter(|m| m != "HEAD").collect();
                assert_eq!(allowed, listed, "{path}: the methods served are the methods described");
            }
        }
    }
    let described: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let expected = [
        "/v1/overview",
        "/v1/config",
        "/v1/taskmanagers",
        "/v1/taskmanagers/{id}",
        "/v1/job-types",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/execution-result",
        "/v1/jobs/{id}/checkpoints",
        "/v1/jobs/{id}/checkpoints/config",
        "/v1/jobs/{id}/checkpoints/details/{checkpointid}",
        "/v1/jobs/{id}/savepoints",
        "/v1/jobs/{id}/savepoints/{requestid}",
        "/v1/jobs/{id}/stop",
    ];
    assert_eq!(described, expected.into_iter().collect());
    // Flink paths that are not (yet) served, and the web UI's root, are unknown paths.
    for path in [
        "/",
        "/v1",
        "/overview",
        "/v1/jobs/{id}/checkpoints/details",
        "/v1/jobs/{id}/checkpoints/details/latest/subtasks",
        "/v1/jobs/{id}/savepoints/{requestid}/extra",
        "/v1/jobs/{id}/exceptions",
        "/v1/taskmanagers/{id}/logs",
        "/v1/jobmanager/config",
        "/v1/jars",
        "/v2/overview",
    ] {
        for method in all {
            let reply = request(addr, method, &concrete(path), &[JSON, BEARER], b"{}");
            reply.assert_error(404, "not_found", "no route for");
        }
    }
}

#[test]
fn the_client_drives_a_server() {
    let (fake, server) = start(true);
    let client = RestClient::new(&server.url(), Some(SECRET.into())).unwrap();
    assert_eq!(client.url(), server.url());
    assert_eq!(client.overview().unwrap().taskmanagers, 1);
    assert!(client.config().unwrap().auth_required);
    assert_eq!(client.task_managers().unwrap()[0].id, tm_id());
    assert_eq!(client.task_manager(tm_id()).unwrap().slots.len(), fake_cluster::SLOTS as usize);
    assert_eq!(client.job_types().unwrap()[0].name, "sum-by-key");

    let request = SubmitRequest {
        job: "sum-by-key".into(),
        args: vec!["--keys".into(), "5".into()],
        parallelism: Some(2),
        ..Default::default()
    };
    let id = client.submit(&request).unwrap().jobid;
    assert_eq!(client.jobs().unwrap()[0].jid, id);
    assert_eq!(client.job(id).unwrap().vertices.len(), 2);
    let outcome = client.wait_for_result(id, Duration::from_secs(10)).unwrap();
    assert_eq!(outcome.state, JobState::Finished);
    assert_eq!(outcome.operators[1].records_in, 1000);
    assert_eq!(
        outcome.accumulators["total"],
        corestream::rpc::messages::Accumulator::Sum(-12_345_678_901_234_567_890_i128),
        "a sum beyond 64 bits survives JSON"
    );
    assert_eq!(client.execution_result(id).unwrap().state, JobState::Finished);

    let forever = client
        .submit(&SubmitRequest { job: "forever".into(), args: vec![], parallelism: None, ..Default::default() })
        .unwrap()
        .jobid;
    match client.wait_for_result(forever, Duration::from_millis(200)) {
        Err(ClientError::WaitTimeout { jobid, state: JobState::Running, .. }) => assert_eq!(jobid, forever),
        other => panic!("{other:?}"),
    }
    client.cancel(forever).unwrap();
    assert_eq!(client.wait_for_result(forever, Duration::from_secs(10)).unwrap().state, JobState::Cancelled);
    let e = client.cancel(forever).unwrap_err();
    assert_eq!(e.api_error().map(|a| a.error), Some(ApiErrorCode::Conflict), "{e}");

    let e = client
        .submit(&SubmitRequest { job: "nope".into(), args: vec![], parallelism: None, ..Default::default() })
        .unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 400, .. }), "{e:?}");
    assert!(e.to_string().contains(&server.url()) && e.to_string().contains("unknown job type `nope`"), "{e}");
    let e = client.job(JobId::random()).unwrap_err();
    assert_eq!(e.api_error().map(|a| a.error), Some(ApiErrorCode::NotFound));

    let before = fake.mutations();
    for secret in [None, Some("wrong".to_string())] {
        let intruder = RestClient::new(&server.url(), secret).unwrap();
        let e = intruder.submit(&request).unwrap_err();
        assert!(matches!(&e, ClientError::Api { status: 401, .. }), "{e:?}");
        assert!(intruder.cancel(id).unwrap_err().to_string().contains("HTTP 401"));
        assert_eq!(intruder.jobs().unwrap().len(), 2, "reading needs no secret");
    }
    assert_eq!(fake.mutations(), before);
}

#[test]
fn checkpoint_routes_answer_and_refuse_as_documented() {
    let (fake, server) = start(true);
    let addr = server.local_addr();
    let forever = submitted(addr, r#"{"job": "forever"}"#);
    let stats = get(addr, &format!("/v1/jobs/{forever}/checkpoints"));
    assert_eq!(stats.status, 200, "{stats:?}");
    let v = stats.json();
    assert_eq!(
        v["counts"],
        serde_json::json!({"restored": 0, "total": 3, "in_progress": 0, "completed": 2, "failed": 1})
    );
    assert_eq!(v["latest"]["completed"]["id"], 2);
    assert_eq!(v["latest"]["completed"]["checkpoint_type"], "UNALIGNED_CHECKPOINT");
    assert_eq!(v["latest"]["failed"]["status"], "FAILED");
    assert_eq!(v["history"][0]["tasks"][0]["name"], "Source: sequence -> Map");
    assert_eq!(v["summary"]["end_to_end_duration_ms"], serde_json::json!({"min": 12, "avg": 15, "max": 18}));
    let config = get(addr, &format!("/v1/jobs/{forever}/checkpoints/config")).json();
    assert_eq!((config["enabled"].clone(), config["interval_ms"].clone()), (Value::from(true), Value::from(200)));
    let details = get(addr, &format!("/v1/jobs/{forever}/checkpoints/details/2")).json();
    assert_eq!(
        (details["id"].clone(), details["subtasks"][1]["status"].clone()),
        (Value::from(2), Value::from("completed"))
    );

    let trigger = format!("/v1/jobs/{forever}/checkpoints");
    let triggered = request(addr, "POST", &trigger, &[BEARER], b"");
    assert_eq!(triggered.status, 202, "{triggered:?}");
    assert_eq!(triggered.json(), serde_json::json!({"checkpoint_id": 4}));
    assert_eq!(triggered.header("location"), Some(format!("/v1/jobs/{forever}/checkpoints/details/4").as_str()));
    let first = get(addr, &format!("/v1/jobs/{forever}/checkpoints/details/4")).json();
    assert_eq!((first["status"].clone(), first["manual"].clone()), (Value::from("IN_PROGRESS"), Value::from(true)));
    assert_eq!(first["subtasks"][1]["status"], "pending_or_failed");
    assert_eq!(get(addr, &format!("/v1/jobs/{forever}/checkpoints/details/4")).json()["status"], "COMPLETED");

    // Bad requests, each as the usual error body.
    request(addr, "POST", &trigger, &[JSON, BEARER], b"{}").assert_error(
        400,
        "bad_request",
        &format!("POST /v1/jobs/{forever}/checkpoints takes no body; 2 bytes were sent"),
    );
    let big = vec![b'x'; BODY_LIMIT * 2];
    request(addr, "POST", &trigger, &[BEARER], &big).assert_error(413, "payload_too_large", "");
    for bad in ["abc", "-1", "1.5", "99999999999999999999"] {
        get(addr, &format!("/v1/jobs/{forever}/checkpoints/details/{bad}")).assert_error(
            400,
            "bad_request",
            &format!("invalid checkpoint id `{bad}`"),
        );
    }
    get(addr, &format!("/v1/jobs/{forever}/checkpoints/details/77")).assert_error(404, "not_found", "no checkpoint 77");
    let unknown = JobId::random();
    for path in ["checkpoints", "checkpoints/config", "checkpoints/details/1"] {
        get(addr, &format!("/v1/jobs/{unknown}/{path}")).assert_error(404, "not_found", &format!("no job {unknown}"));
        get(addr, &format!("/v1/jobs/xyz/{path}")).assert_error(400, "bad_request", "xyz");
    }
    request(addr, "POST", &format!("/v1/jobs/{unknown}/checkpoints"), &[BEARER], b"").assert_error(
        404,
        "not_found",
        "no job",
    );
    let plain = submitted(addr, r#"{"job": "sum-by-key"}"#);
    assert_eq!(get(addr, &format!("/v1/jobs/{plain}/checkpoints")).json()["counts"]["total"], 0);
    assert_eq!(get(addr, &format!("/v1/jobs/{plain}/checkpoints/config")).json()["enabled"], false);
    request(addr, "POST", &format!("/v1/jobs/{plain}/checkpoints"), &[BEARER], b"").assert_error(
        409,
        "conflict",
        "takes no checkpoints",
    );

    // The client.
    let client = RestClient::new(&server.url(), Some(SECRET.into())).unwrap();
    let id = client.trigger_checkpoint(forever).unwrap().checkpoint_id;
    assert_eq!(id, 5);
    let done = client.wait_for_checkpoint(forever, id, Duration::from_secs(10)).unwrap();
    assert_eq!(done.checkpoint.status, corestream::jobmanager::api::CheckpointStatusInfo::Completed);
    assert_eq!(client.checkpoints(forever).unwrap().counts.completed, 4);
    assert_eq!(client.checkpoint_config(forever).unwrap().directory.as_deref(), Some("/tmp/ck/forever"));
    assert_eq!(client.checkpoint(forever, 1).unwrap().subtasks.len(), 2);
    client.cancel(forever).unwrap();
    client.wait_for_result(forever, Duration::from_secs(10)).unwrap();
    let e = client.trigger_checkpoint(forever).unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 409, .. }), "{e:?}");
    assert!(e.to_string().contains("already ended"), "{e}");
    let before = fake.mutations();
    let e = RestClient::new(&server.url(), None).unwrap().trigger_checkpoint(forever).unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 401, .. }), "{e:?}");
    assert_eq!(fake.mutations(), before);
}

/// A server on a thread of its own that answers every connection with `response` (or, for
/// `None`, reads the request and never answers).
fn scripted_server(response: Option<&'static [u8]>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            match response {
                Some(r) => {
                    let _ = stream.write_all(r);
                }
                None => thread::sleep(Duration::from_secs(3)),
            }
        }
    });
    addr
}

#[test]
fn the_client_names_what_went_wrong() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let e = RestClient::new(&url, None).unwrap().jobs().unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("cannot connect to the JobManager at {url}")), "{e}");

    let addr = scripted_server(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot json!"));
    let e = RestClient::new(&addr.to_string(), None).unwrap().overview().unwrap_err();
    assert!(matches!(e, ClientError::Malformed { status: 200, .. }), "{e:?}");
    assert!(e.to_string().contains("`not json!`") && e.to_string().contains("GET /v1/overview"), "{e}");

    let addr = scripted_server(Some(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"));
    let e = RestClient::new(&addr.to_string(), None).unwrap().jobs().unwrap_err();
    assert!(matches!(e, ClientError::Malformed { status: 502, .. }), "{e:?}");

    let addr = scripted_server(None);
    let timeouts = ClientTimeouts { connect: Duration::from_secs(1), request: Duration::from_millis(300) };
    let started = Instant::now();
    let e = RestClient::with_timeouts(&addr.to_string(), None, timeouts).unwrap().jobs().unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(e.to_string().contains("did not answer GET /v1/jobs within 300ms"), "{e}");
}
