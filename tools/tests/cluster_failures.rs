//! Failures and misuse of a cluster of real processes: a `corestream jobmanager` and
//! `corestream taskmanager`s started by the test, driven through the REST API and the
//! `corestream submit|cancel` client.
//!
//! - A TaskManager killed with SIGKILL during a job is reported by the JobManager (its job's
//!   exception history names it, dated within the heartbeat timeout of the kill); with
//!   `fixed-delay` and a replacement TaskManager the job reruns and its result is the
//!   reference's; with `none` the job fails naming the TaskManager. A TaskManager that stops
//!   answering (SIGSTOP) is removed after the heartbeat timeout, not before.
//! - A JobManager killed with SIGKILL: its TaskManagers end their tasks' threads, start no
//!   process, and register with a new JobManager on the same port, which runs a job.
//! - Malformed requests, unknown job types, bad arguments, missing or wrong secrets (REST, CLI
//!   and a TaskManager), ports in use and unknown configuration keys each get an error naming
//!   what was wrong, and the running JobManager's overview and job list stay as they were.
//!
//! Times are read from what the JobManager reports (the exception's timestamp against the
//! moment of the kill), never measured as a benchmark. Each process runs in a process group of
//! its own, killed when the test ends; a watchdog kills them all and fails the run if a test
//! hangs. The tests run one at a time: each starts a cluster on a machine of two cores.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corestream::jobmanager::api::{
    ApiError, ApiErrorCode, ClusterOverview, JobDetails, JobList, JobState, TaskManagerList,
};
use corestream_bench::examples::{checksum, reference_sum_by_key};
use serde::de::DeserializeOwned;
use tempfile::TempDir;

const SECRET: &str = "cluster-failures-test-0123456789abcdef";
/// The JobManager's heartbeat settings in these tests.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1500);
/// What the JobManager may take beyond the heartbeat timeout to report a loss (scheduling on
/// a loaded machine).
const SLACK: Duration = Duration::from_secs(1);
/// A whole test, at most.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Records of the jobs that are killed mid-run: a few seconds on two slots.
const LONG_RECORDS: u64 = 40_000_000;
const KEYS: u64 = 1000;

static SERIAL: Mutex<()> = Mutex::new(());
/// Process groups alive, for the watchdog.
static GROUPS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the tests one at a time and kills every process group if one takes longer than
/// [`TEST_LIMIT`].
struct Guard {
    _serial: MutexGuard<'static, ()>,
    done: mpsc::Sender<()>,
}

fn guard(test: &'static str) -> Guard {
    let serial = lock(&SERIAL);
    let (done, stop) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(TEST_LIMIT) {
            eprintln!("{test} did not end within {TEST_LIMIT:?}: killing its processes");
            for group in lock(&GROUPS).iter() {
                // SAFETY: kill on a process group this test binary created.
                unsafe { libc::kill(-group, libc::SIGKILL) };
            }
            std::process::exit(101);
        }
    });
    Guard { _serial: serial, done }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.done.send(());
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A `corestream` process in a process group of its own; its stdout and stderr lines are read
/// as they come.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, for messages.
    seen: String,
    status: Option<ExitStatus>,
}

impl Proc {
    fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corestream"))
            .args(args)
            .env("CORESTREAM_LOG", "info")
            .env("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", SECRET)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start corestream: {e}"));
        lock(&GROUPS).push(child.id() as libc::pid_t);
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for pipe in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Proc {
            name: format!("{name} (`corestream {}`)", args.join(" ")),
            child,
            lines,
            seen: String::new(),
            status: None,
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn take_lines(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
    }

    /// The first line from now on that contains `needle`; fails the test after `limit`.
    fn line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("{} wrote no line with {needle:?} within {limit:?}:\n{}", self.name, self.seen),
            }
        }
    }

    /// Waits for the process to end within `limit` and returns its status with all it wrote.
    fn exit(&mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.take_lines();
                panic!("{} did not end within {limit:?}:\n{}", self.name, self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.status = Some(status);
        // The readers end with the pipes; a process of the group could hold them open.
        let until = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self.lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        (status, self.seen.clone())
    }

    fn alive(&mut self) -> bool {
        self.status.is_none() && self.child.try_wait().unwrap().is_none()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to the process this test started (still a child: not yet reaped).
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill {signal} {}", self.name);
    }

    /// Kills the whole group with SIGKILL and reaps the process.
    fn kill_group(&mut self) {
        // SAFETY: kill on the process group this test created for the child.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        if let Ok(status) = self.child.wait() {
            self.status.get_or_insert(status);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
        let pid = self.pid();
        lock(&GROUPS).retain(|g| *g != pid);
    }
}

/// Whether any process of group `pgid` is still there.
fn group_exists(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// The names of a process's threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: libc::pid_t) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut names: Vec<String> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// The processes whose parent is `pid`.
fn children(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<libc::pid_t>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// An HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: String,
    body: String,
}

impl Response {
    fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not the expected JSON ({e}): {self:?}"))
    }

    /// Checks that this is the API's error with `status` and `code` whose message holds every
    /// one of `needles`.
    #[track_caller]
    fn refused(&self, status: u16, code: ApiErrorCode, needles: &[&str]) {
        assert_eq!(self.status, status, "{self:?}");
        let e: ApiError = self.json();
        assert_eq!(e.error, code, "{self:?}");
        for needle in needles {
            assert!(e.message.contains(needle), "{needle:?} not in {:?}", e.message);
        }
    }
}

/// One HTTP/1.1 request over a fresh connection, written byte for byte as given.
fn http(rest: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Response {
    let address = rest.strip_prefix("http://").unwrap_or(rest);
    let mut stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("cannot reach the REST API at {rest}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("{method} {path}: reading the response: {e}"));
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, rest_of) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    let headers = head.to_ascii_lowercase();
    let body = if headers.contains("transfer-encoding: chunked") { dechunk(rest_of) } else { rest_of.to_string() };
    Response { status, headers, body }
}

fn dechunk(mut text: &str) -> String {
    let mut body = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        body.push_str(&rest[..n]);
        text = &rest[n + 2..];
    }
    body
}

fn get<T: DeserializeOwned>(rest: &str, path: &str) -> T {
    let r = http(rest, "GET", path, &[], None);
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    r.json()
}

const BEARER: &str = "Bearer cluster-failures-test-0123456789abcdef";
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn post_job(rest: &str, body: &str, authorization: Option<&str>) -> Response {
    let mut headers = vec![JSON];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    http(rest, "POST", "/v1/jobs", &headers, Some(body))
}

fn job(rest: &str, id: &str) -> JobDetails {
    get(rest, &format!("/v1/jobs/{id}"))
}

/// A JobManager with the test's heartbeat and `settings` (`key=value`), on ports the kernel
/// chooses unless `settings` names them; returns it with its RPC address and REST URL.
fn jobmanager(settings: &[&str]) -> (Proc, String, String) {
    let mut keys: BTreeMap<&str, String> = BTreeMap::from([
        ("rest.port", "0".to_string()),
        ("jobmanager.rpc.port", "0".to_string()),
        ("heartbeat.interval", format!("{}ms", HEARTBEAT_INTERVAL.as_millis())),
        ("heartbeat.timeout", format!("{}ms", HEARTBEAT_TIMEOUT.as_millis())),
        ("slot.request.timeout", "60s".to_string()),
    ]);
    for s in settings {
        let (k, v) = s.split_once('=').unwrap();
        keys.insert(k, v.to_string());
    }
    let pairs: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["jobmanager"];
    for p in &pairs {
        args.extend(["-D", p]);
    }
    let mut jm = Proc::start("JobManager", &args, &[]);
    let line = jm.line("jobmanager: TaskManagers connect to ", Duration::from_secs(20));
    let rpc = line.split("connect to ").nth(1).and_then(|s| s.split(';').next()).unwrap().to_string();
    let rest = line.split("REST API on ").nth(1).unwrap().trim().to_string();
    (jm, rpc, rest)
}

/// A TaskManager of `slots` slots registering at `rpc`, with `settings`; returns it with its id
/// once the JobManager at `rest` lists it.
fn taskmanager(rpc: &str, rest: &str, slots: u32, settings: &[&str]) -> (Proc, String) {
    let slots = slots.to_string();
    let mut args = vec!["taskmanager", "--jobmanager", rpc, "--slots", &slots];
    for s in ["taskmanager.slot.pin-cores=false", "taskmanager.registration.max-backoff=200ms"].iter().chain(settings) {
        args.extend(["-D", s]);
    }
    let mut tm = Proc::start("TaskManager", &args, &[]);
    let line = tm.line("taskmanager ", Duration::from_secs(20));
    let id = line.strip_prefix("taskmanager ").and_then(|s| s.split(':').next()).unwrap().to_string();
    wait_registered(rest, &id);
    (tm, id)
}

fn wait_registered(rest: &str, id: &str) {
    eventually(Duration::from_secs(20), &format!("TaskManager {id} registers at {rest}"), || {
        let list: TaskManagerList = get(rest, "/v1/taskmanagers");
        list.taskmanagers.iter().any(|t| t.id.to_string() == id).then_some(())
    });
}

/// `corestream submit` (waiting for the result unless `--detached` is among `options`), with
/// the job's id once it printed it.
fn submit(rest: &str, options: &[&str], job: &[&str]) -> (Proc, String) {
    let mut args = vec!["submit", "--jobmanager", rest];
    args.extend(options);
    args.extend(job);
    let mut client = Proc::start("client", &args, &[("CORESTREAM_LOG", "warn")]);
    let id = if options.contains(&"--detached") {
        let line = client.line("", Duration::from_secs(20));
        line.trim().to_string()
    } else {
        let line = client.line(" submitted to ", Duration::from_secs(20));
        line.split(' ').nth(1).unwrap().to_string()
    };
    assert_eq!(id.len(), 32, "a job id: {id}");
    (client, id)
}

/// Waits until every task of the job's current attempt runs, and returns the job.
fn all_running(rest: &str, id: &str) -> JobDetails {
    eventually(Duration::from_secs(30), &format!("every task of job {id} runs"), || {
        let d = job(rest, id);
        assert!(!d.overview.state.is_terminal(), "job {id} ended before it could be interrupted: {d:?}");
        let t = &d.overview.tasks;
        (d.overview.state == JobState::Running && t.total > 0 && t.running == t.total).then_some(d)
    })
}

/// The reference result of `sum-by-key --records records --keys KEYS`, as `submit` prints it.
fn reference_lines(records: u64) -> [String; 2] {
    let totals = reference_sum_by_key(records, KEYS);
    [format!("  checksum: {:#018x}", checksum(totals.iter().copied())), format!("  keys: {}", totals.len())]
}

fn sum_by_key(records: u64) -> Vec<String> {
    ["sum-by-key", "--records", &records.to_string(), "--keys", &KEYS.to_string()].map(String::from).to_vec()
}

/// The exception the job master recorded for the killed TaskManager, and how long after
/// `stopped_ms` the JobManager noticed.
#[track_caller]
fn loss_reported(rest: &str, id: &str, tm: &str, tm_pid: libc::pid_t, stopped_ms: u64) -> (String, Duration) {
    let d = eventually(HEARTBEAT_TIMEOUT + SLACK + Duration::from_secs(5), "the job records the failure", || {
        let d = job(rest, id);
        (!d.exceptions.is_empty()).then_some(d)
    });
    let e = &d.exceptions[0];
    assert_eq!(e.attempt, 1, "{d:?}");
    assert_eq!(e.taskmanager.map(|t| t.to_string()).as_deref(), Some(tm), "the lost TaskManager is blamed: {e:?}");
    assert!(
        e.message.contains(&tm[..8]) && e.message.contains(&format!("pid {tm_pid}")) && e.message.contains("was lost"),
        "the message names the TaskManager: {e:?}"
    );
    assert!(e.timestamp >= stopped_ms, "noticed at {} before the kill at {stopped_ms}", e.timestamp);
    let noticed = Duration::from_millis(e.timestamp - stopped_ms);
    assert!(noticed <= HEARTBEAT_TIMEOUT + SLACK, "the JobManager took {noticed:?} to notice: {e:?}");
    let list: TaskManagerList = get(rest, "/v1/taskmanagers");
    assert!(list.taskmanagers.iter().all(|t| t.id.to_string() != tm), "the lost TaskManager is still listed");
    (e.message.clone(), noticed)
}

#[test]
fn a_killed_task_manager_is_reported_and_with_fixed_delay_the_job_reruns_on_a_replacement() {
    let _guard = guard("fixed-delay");
    let (_jm, rpc, rest) = jobmanager(&[
        "restart-strategy.type=fixed-delay",
        "restart-strategy.fixed-delay.attempts=1",
        "restart-strategy.fixed-delay.delay=100ms",
    ]);
    let (_a, a) = taskmanager(&rpc, &rest, 1, &[]);
    let (mut b, b_id) = taskmanager(&rpc, &rest, 1, &[]);
    let job_args = sum_by_key(LONG_RECORDS);
    let job_args: Vec<&str> = job_args.iter().map(String::as_str).collect();
    let (mut client, id) = submit(&rest, &["-p", "2"], &job_args);
    let first = all_running(&rest, &id);
    let on: Vec<String> = first.vertices[0].subtasks.iter().map(|s| s.taskmanager.to_string()).collect();
    assert!(on.contains(&a) && on.contains(&b_id), "the job spans both TaskManagers: {on:?}");

    let killed_ms = now_ms();
    b.kill_group();
    let (message, noticed) = loss_reported(&rest, &id, &b_id, b.pid(), killed_ms);
    let d = job(&rest, &id);
    assert!(matches!(d.overview.state, JobState::Restarting | JobState::Created), "waits to run again: {d:?}");
    eprintln!("the JobManager noticed the killed TaskManager after {noticed:?}: {message}");

    let (_c, c) = taskmanager(&rpc, &rest, 1, &[]);
    let (status, output) = client.exit(Duration::from_secs(60));
    assert!(status.success(), "the rerun job succeeds:\n{output}");
    assert!(output.contains(&format!("Job {id} FINISHED")), "{output}");
    for line in reference_lines(LONG_RECORDS) {
        assert!(output.lines().any(|l| l == line), "{line:?} (the reference) not in:\n{output}");
    }
    let d = job(&rest, &id);
    assert_eq!((d.overview.state, d.overview.attempts, d.exceptions.len()), (JobState::Finished, 2, 1), "{d:?}");
    let mut on: Vec<String> = d.vertices[0].subtasks.iter().map(|s| s.taskmanager.to_string()).collect();
    on.sort();
    let mut expected = vec![a, c];
    expected.sort();
    assert_eq!(on, expected, "the second attempt ran on the survivor and the replacement");
}

#[test]
fn a_killed_task_manager_fails_the_job_naming_it_with_restart_strategy_none() {
    let _guard = guard("none");
    let (mut jm, rpc, rest) = jobmanager(&["restart-strategy.type=none"]);
    let (a, _) = taskmanager(&rpc, &rest, 1, &[]);
    let (mut b, b_id) = taskmanager(&rpc, &rest, 1, &[]);
    let job_args = sum_by_key(LONG_RECORDS);
    let job_args: Vec<&str> = job_args.iter().map(String::as_str).collect();
    let (mut client, id) = submit(&rest, &["-p", "2"], &job_args);
    all_running(&rest, &id);
    assert!(thread_names(a.pid()).iter().any(|n| n.starts_with("cs-slot-")), "{:?}", thread_names(a.pid()));

    let killed_ms = now_ms();
    b.kill_group();
    let (status, output) = client.exit(HEARTBEAT_TIMEOUT + SLACK + Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "the job failed:\n{output}");
    let error = output.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{output}"));
    let named = format!("TaskManager {} (", &b_id[..8]);
    assert!(error.starts_with(&format!("error: job {id} failed: {named}")), "{error}");
    assert!(error.contains(&format!("pid {}", b.pid())) && error.contains("(restart-strategy.type = none)"), "{error}");
    assert!(output.contains(&format!("Job {id} FAILED")), "{output}");

    let (message, noticed) = loss_reported(&rest, &id, &b_id, b.pid(), killed_ms);
    eprintln!("the JobManager noticed the killed TaskManager after {noticed:?}: {message}");
    let d = job(&rest, &id);
    assert_eq!((d.overview.state, d.overview.attempts), (JobState::Failed, 1), "{d:?}");
    assert!(d.failure.as_deref().is_some_and(|f| f.starts_with(&named)), "{d:?}");
    let overview: ClusterOverview = get(&rest, "/v1/overview");
    assert_eq!((overview.taskmanagers, overview.slots_available, overview.jobs_failed), (1, 1, 1), "{overview:?}");
    eventually(Duration::from_secs(10), "the survivor's task threads end", || {
        let names = thread_names(a.pid());
        (!names.iter().any(|n| n.starts_with("cs-slot-") || n.starts_with("cs-deploy-"))).then_some(())
    });
    assert!(jm.alive());
}

#[test]
fn a_task_manager_that_stops_answering_is_removed_after_the_heartbeat_timeout() {
    let _guard = guard("sigstop");
    let (_jm, rpc, rest) = jobmanager(&["restart-strategy.type=none"]);
    let (_a, _) = taskmanager(&rpc, &rest, 1, &[]);
    let (mut b, b_id) = taskmanager(&rpc, &rest, 1, &[]);
    let job_args = sum_by_key(LONG_RECORDS * 4);
    let job_args: Vec<&str> = job_args.iter().map(String::as_str).collect();
    let (_client, id) = submit(&rest, &["-p", "2", "--detached"], &job_args);
    all_running(&rest, &id);

    let stopped_ms = now_ms();
    b.signal(libc::SIGSTOP);
    let (message, noticed) = loss_reported(&rest, &id, &b_id, b.pid(), stopped_ms);
    // Its connection stays open: only the heartbeat timeout can have removed it, counted from
    // its last message (at most one heartbeat interval before it stopped).
    assert!(message.contains("no heartbeat for"), "{message}");
    assert!(noticed + HEARTBEAT_INTERVAL >= HEARTBEAT_TIMEOUT, "removed after {noticed:?}, before the timeout");
    eprintln!("the JobManager removed the stopped TaskManager after {noticed:?}: {message}");
    let d = eventually(Duration::from_secs(20), "the job fails", || {
        let d = job(&rest, &id);
        d.overview.state.is_terminal().then_some(d)
    });
    assert_eq!(d.overview.state, JobState::Failed, "{d:?}");
    b.kill_group();
}

#[test]
fn task_managers_of_a_killed_job_manager_end_their_tasks_and_register_with_a_new_one() {
    let _guard = guard("jobmanager");
    let (mut jm, rpc, rest) = jobmanager(&[]);
    let port = rpc.rsplit_once(':').unwrap().1.to_string();
    let mut tms = [taskmanager(&rpc, &rest, 1, &[]), taskmanager(&rpc, &rest, 1, &[])];
    let job_args = sum_by_key(LONG_RECORDS * 4);
    let job_args: Vec<&str> = job_args.iter().map(String::as_str).collect();
    let (_client, id) = submit(&rest, &["-p", "2", "--detached"], &job_args);
    all_running(&rest, &id);
    for (tm, _) in &tms {
        let names = thread_names(tm.pid());
        for prefix in ["cs-slot-", "cs-deploy-", "cs-net", "cs-tm-control"] {
            assert!(names.iter().any(|n| n.starts_with(prefix)), "no {prefix} thread: {names:?}");
        }
    }

    let jm_pid = jm.pid();
    jm.kill_group();
    assert!(!group_exists(jm_pid), "a process of the JobManager's group survived it");
    for (tm, _) in &mut tms {
        tm.line("lost the JobManager: cancelling every task", HEARTBEAT_TIMEOUT + SLACK + Duration::from_secs(5));
    }
    for (tm, id) in &mut tms {
        let pid = tm.pid();
        eventually(Duration::from_secs(10), &format!("TaskManager {id} ends its task threads"), || {
            let names = thread_names(pid);
            (!names.iter().any(|n| n.starts_with("cs-slot-") || n.starts_with("cs-deploy-"))).then_some(())
        });
        assert!(tm.alive(), "TaskManager {id} stays up to register again");
        assert_eq!(children(pid), Vec::<libc::pid_t>::new(), "TaskManager {id} started processes");
        let names = thread_names(pid);
        assert!(names.iter().any(|n| n == "cs-tm-control") && names.iter().any(|n| n == "cs-net"), "{names:?}");
    }

    let rpc_port = format!("jobmanager.rpc.port={port}");
    let (_jm2, rpc2, rest2) = jobmanager(&[&rpc_port]);
    assert_eq!(rpc2, rpc, "the new JobManager listens where the old one did");
    for (_, id) in &tms {
        wait_registered(&rest2, id);
    }
    let jobs: JobList = get(&rest2, "/v1/jobs");
    assert!(jobs.jobs.is_empty(), "a new JobManager knows no job: {jobs:?}");
    let records = 2_000_000;
    let job_args = sum_by_key(records);
    let job_args: Vec<&str> = job_args.iter().map(String::as_str).collect();
    let (mut client, id2) = submit(&rest2, &["-p", "2"], &job_args);
    let (status, output) = client.exit(Duration::from_secs(60));
    assert!(status.success(), "{output}");
    for line in reference_lines(records) {
        assert!(output.lines().any(|l| l == line), "{line:?} (the reference) not in:\n{output}");
    }
    let d = job(&rest2, &id2);
    let mut on: Vec<String> = d.vertices[0].subtasks.iter().map(|s| s.taskmanager.to_string()).collect();
    on.sort();
    let mut both: Vec<String> = tms.iter().map(|(_, id)| id.clone()).collect();
    both.sort();
    assert_eq!(on, both, "the job ran on the TaskManagers of the old JobManager");
}

/// What must not change: the overview and the job list (of ended jobs only, whose durations
/// are fixed) and the registered TaskManagers.
fn state_of(rest: &str) -> (String, String, Vec<String>) {
    let overview = http(rest, "GET", "/v1/overview", &[], None);
    let jobs = http(rest, "GET", "/v1/jobs", &[], None);
    assert_eq!((overview.status, jobs.status), (200, 200));
    let list: TaskManagerList = get(rest, "/v1/taskmanagers");
    (overview.body, jobs.body, list.taskmanagers.iter().map(|t| t.id.to_string()).collect())
}

#[test]
fn misuse_of_rest_cli_and_ports_gets_clear_errors_and_changes_nothing() {
    let _guard = guard("misuse");
    let (mut jm, rpc, rest) = jobmanager(&[]);
    let (mut tm, _) = taskmanager(&rpc, &rest, 1, &[]);
    // One finished job, so the state has something to lose.
    let accepted =
        post_job(&rest, r#"{"job": "sum-by-key", "args": ["--records", "1000", "--keys", "10"]}"#, Some(BEARER));
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let finished: serde_json::Value = accepted.json();
    let finished = finished["jobid"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the first job finishes", || {
        (job(&rest, &finished).overview.state == JobState::Finished).then_some(())
    });
    let before = state_of(&rest);
    let unchanged = |jm: &mut Proc, what: &str| {
        assert!(jm.alive(), "the JobManager stopped after {what}");
        assert_eq!(state_of(&rest), before, "the state changed after {what}");
    };

    let valid = r#"{"job": "sum-by-key", "args": ["--records", "10", "--keys", "10"]}"#;
    type Request<'a> = Box<dyn Fn() -> Response + 'a>;
    let cases: [(&str, Request, u16, ApiErrorCode, &[&str]); 10] = [
        (
            "malformed JSON",
            Box::new(|| post_job(&rest, r#"{"job": "sum-by-key", "args": ["#, Some(BEARER))),
            400,
            ApiErrorCode::BadRequest,
            &["malformed JSON in the request body", "line 1 column"],
        ),
        (
            "an unknown job type",
            Box::new(|| post_job(&rest, r#"{"job": "sum-by-kee"}"#, Some(BEARER))),
            400,
            ApiErrorCode::BadRequest,
            &["unknown job type 'sum-by-kee'", "did you mean 'sum-by-key'"],
        ),
        (
            "bad job arguments",
            Box::new(|| {
                post_job(&rest, r#"{"job": "sum-by-key", "args": ["--records", "many", "--keys", "10"]}"#, Some(BEARER))
            }),
            400,
            ApiErrorCode::BadRequest,
            &["job 'sum-by-key'", "invalid value 'many' for '--records"],
        ),
        (
            "an unknown field",
            Box::new(|| post_job(&rest, r#"{"job": "sum-by-key", "argz": []}"#, Some(BEARER))),
            400,
            ApiErrorCode::BadRequest,
            &["unknown field `argz`"],
        ),
        (
            "a body that is not JSON",
            Box::new(|| {
                http(
                    &rest,
                    "POST",
                    "/v1/jobs",
                    &[("Content-Type", "text/plain"), ("Authorization", BEARER)],
                    Some(valid),
                )
            }),
            415,
            ApiErrorCode::UnsupportedMediaType,
            &["`text/plain`", "application/json"],
        ),
        (
            "a submission without the secret",
            Box::new(|| post_job(&rest, valid, None)),
            401,
            ApiErrorCode::Unauthorized,
            &["POST /v1/jobs needs `Authorization: Bearer <cluster secret>`", "missing credentials"],
        ),
        (
            "a submission with a wrong secret",
            Box::new(|| post_job(&rest, valid, Some("Bearer not-the-secret"))),
            401,
            ApiErrorCode::Unauthorized,
            &["wrong cluster secret"],
        ),
        (
            "a cancellation with a wrong secret",
            Box::new(|| {
                http(
                    &rest,
                    "PATCH",
                    &format!("/v1/jobs/{finished}?mode=cancel"),
                    &[("Authorization", "Bearer x")],
                    None,
                )
            }),
            401,
            ApiErrorCode::Unauthorized,
            &["wrong cluster secret"],
        ),
        (
            "a cancellation of an unknown job",
            Box::new(|| {
                http(
                    &rest,
                    "PATCH",
                    "/v1/jobs/0123456789abcdef0123456789abcdef?mode=cancel",
                    &[("Authorization", BEARER)],
                    None,
                )
            }),
            404,
            ApiErrorCode::NotFound,
            &["no job 0123456789abcdef0123456789abcdef"],
        ),
        (
            "a cancellation of an ended job",
            Box::new(|| {
                http(&rest, "PATCH", &format!("/v1/jobs/{finished}?mode=cancel"), &[("Authorization", BEARER)], None)
            }),
            409,
            ApiErrorCode::Conflict,
            &[finished.as_str(), "has already ended"],
        ),
    ];
    for (what, request, status, code, needles) in &cases {
        let response = request();
        response.refused(*status, *code, needles);
        if *status == 401 {
            assert!(response.headers.contains("www-authenticate: bearer"), "{what}: {response:?}");
        }
        unchanged(&mut jm, what);
    }

    // The same mistakes through the command-line client.
    /// What is tried, the command line, its environment, what its error must say.
    type CliCase<'a> = (&'a str, Vec<&'a str>, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cli: [CliCase; 5] = [
        ("submit of an unknown job type", vec!["submit", "sum-by-kee"], &[], &["unknown job type 'sum-by-kee'"]),
        (
            "submit with bad arguments",
            vec!["submit", "sum-by-key", "--records", "many", "--keys", "10"],
            &[],
            &["invalid value 'many' for '--records", "(bad_request, HTTP 400)"],
        ),
        (
            "submit with a wrong secret",
            vec!["submit", "sum-by-key", "--records", "10", "--keys", "10"],
            &[("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", "not-the-secret")],
            &["wrong cluster secret", "(unauthorized, HTTP 401)"],
        ),
        (
            "submit without the secret",
            vec!["submit", "sum-by-key", "--records", "10", "--keys", "10"],
            &[("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", "")],
            &["missing credentials", "(unauthorized, HTTP 401)"],
        ),
        (
            "cancel with a wrong secret",
            vec!["cancel", finished.as_str()],
            &[("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", "not-the-secret")],
            &["wrong cluster secret"],
        ),
    ];
    for (what, args, env, needles) in &cli {
        // The client's options come before the job's arguments.
        let args: Vec<&str> = [args[0], "--jobmanager", &rest].into_iter().chain(args[1..].iter().copied()).collect();
        let mut client = Proc::start("client", &args, env);
        let (status, output) = client.exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "{what}:\n{output}");
        // The error runs to the end of the output: a job's argument error spans lines.
        let error = &output[output.find("error: ").unwrap_or_else(|| panic!("{what}: {output}"))..];
        assert!(error.starts_with(&format!("error: the JobManager at {rest} refused")), "{what}: {error}");
        for needle in *needles {
            assert!(error.contains(needle), "{what}: {needle:?} not in {error}");
        }
        unchanged(&mut jm, what);
    }

    // TaskManagers that cannot prove the secret stop at once with the JobManager's reason.
    for (what, settings, env, needle) in [
        (
            "a wrong secret",
            vec![],
            vec![("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", "not-the-secret-0123456789")],
            "a wrong proof",
        ),
        ("no secret", vec!["-D", "security.auth.enabled=false"], vec![], "no proof"),
    ] {
        let mut args =
            vec!["taskmanager", "--jobmanager", &rpc, "--slots", "1", "-D", "taskmanager.slot.pin-cores=false"];
        args.extend(settings);
        let mut stranger = Proc::start("TaskManager", &args, &env);
        let (status, output) = stranger.exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "a TaskManager with {what}:\n{output}");
        let error = output.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{output}"));
        assert!(error.contains(&format!("the JobManager at {rpc} refused this TaskManager")), "{error}");
        assert!(error.contains(&format!("pid {}) sent {needle} of the cluster secret", stranger.pid())), "{error}");
        unchanged(&mut jm, &format!("a TaskManager with {what}"));
    }

    // The ports of the running processes are taken: a second JobManager or TaskManager on one
    // of them stops with an error naming the port and its key.
    let rest_port = rest.rsplit_once(':').unwrap().1.to_string();
    let rpc_port = rpc.rsplit_once(':').unwrap().1.to_string();
    tm.take_lines();
    let data_port =
        tm.seen.lines().find_map(|l| l.split("data on ").nth(1)).unwrap().rsplit_once(':').unwrap().1.to_string();
    let rest_key = format!("rest.port={rest_port}");
    let rpc_key = format!("jobmanager.rpc.port={rpc_port}");
    let data_key = format!("taskmanager.data.port={data_port}");
    let jm_args = |key: &str, other: &'static str| -> Vec<String> {
        ["jobmanager", "-D", key, "-D", other].map(String::from).to_vec()
    };
    for (args, port, key) in [
        (jm_args(&rest_key, "jobmanager.rpc.port=0"), &rest_port, "rest.port"),
        (jm_args(&rpc_key, "rest.port=0"), &rpc_port, "jobmanager.rpc.port"),
        (
            ["taskmanager", "--jobmanager", &rpc, "--slots", "1", "-D", &data_key].map(String::from).to_vec(),
            &data_port,
            "taskmanager.data.port",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut second = Proc::start("second process", &args, &[]);
        let (status, output) = second.exit(Duration::from_secs(20));
        assert!(!status.success() && status.code().is_some(), "{args:?} must stop with an error:\n{output}");
        let error = output.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{output}"));
        assert!(
            error.contains(&format!("port {port} is already in use")) && error.contains(&format!("`{key}`")),
            "{error}"
        );
        unchanged(&mut jm, &format!("a process on port {port} ({key})"));
    }
    assert!(tm.alive(), "the TaskManager whose data port was wanted keeps running");
}

#[test]
fn an_unknown_configuration_key_stops_the_process_naming_it_and_the_nearest_key() {
    let _guard = guard("config");
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("corestream.toml");
    std::fs::write(&file, "[rest]\nport = 0\n\n[heartbeat]\ntimout = \"5 s\"\n").unwrap();
    let file = file.to_str().unwrap();
    /// The command line, its environment, what its error must say.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: [Case; 4] = [
        (
            vec!["jobmanager", "-D", "rest.prot=0"],
            vec![],
            "command-line override: unknown key `rest.prot`: did you mean `rest.port`?".into(),
        ),
        (
            vec!["jobmanager", "--config", file],
            vec![],
            format!("{file}:5: unknown key `heartbeat.timout`: did you mean `heartbeat.timeout`?"),
        ),
        (
            vec!["taskmanager", "--jobmanager", "127.0.0.1:1", "-D", "taskmanager.numberOfTaskSlot=2"],
            vec![],
            "unknown key `taskmanager.numberOfTaskSlot`: did you mean `taskmanager.numberOfTaskSlots`?".into(),
        ),
        (
            vec!["jobmanager"],
            vec![("CORESTREAM_CONF_REST_PROT", "0")],
            "environment variable CORESTREAM_CONF_REST_PROT: unknown configuration variable (every CORESTREAM_CONF_* \
             variable must name a key): did you mean CORESTREAM_CONF_REST_PORT (`rest.port`)?"
                .into(),
        ),
    ];
    for (args, env, needle) in &cases {
        let mut p = Proc::start("process", args, env);
        let (status, output) = p.exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{args:?}:\n{output}");
        let error = output.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{output}"));
        assert!(error.contains(needle.as_str()), "{needle:?} not in {error}");
    }
}
