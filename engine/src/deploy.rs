//! Bare-metal deployment: `corestream cluster start|stop`, as Flink's `start-cluster.sh` and
//! `stop-cluster.sh` with `conf/workers`. `start` runs the JobManager on this machine and one
//! TaskManager per line of the workers file — directly and detached (a new session, standard
//! input from `/dev/null`, standard output and error appended to a log file of its own) on this
//! machine, through `ssh HOST` elsewhere, with the same binary and configuration paths there —
//! records each process it started in a state directory, and waits, bounded, until the
//! JobManager and every local TaskManager printed their start-up lines and every TaskManager
//! registered (the JobManager logs each registration with the TaskManager's pid). `stop` stops
//! what the records name (SIGTERM, a bounded wait, SIGKILL), TaskManagers first, and removes the
//! record of every process that is no longer running.
//!
//! The decisions are pure functions with unit tests: the workers file's syntax, which hosts are
//! this machine, core offsets for TaskManagers sharing a machine, whether the JobManager's
//! address reaches every worker, the default state directory, the shell text sent over ssh,
//! what a log line says and whether a recorded pid is still the process that was started (its
//! start time in `/proc/PID/stat`, so a reused pid is never signalled). Everything is bounded:
//! the workers file and records by size, every wait by a deadline, ssh by a timeout, log reads
//! per poll. Records are written with [`AtomicFile`](crate::fs::AtomicFile); one `flock` on the state directory keeps
//! two `cluster` commands from interleaving.

mod local;
mod records;
mod ssh;
mod workers;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::client::{ClientTimeouts, RestClient};
use crate::conf::{ClusterSettings, ConfError, Role as ConfRole};
use crate::fs::OutputError;
use crate::jobmanager::api::ClusterOverview;
use crate::processes::describe_exit;

use self::local::now_ms;
pub use self::local::{
    child_log_filter, liveness, parse_jobmanager_line, parse_proc_stat, parse_registration, parse_taskmanager_line,
    JobManagerLine, Liveness, ProcStat, TaskManagerLine,
};
use self::local::{local_liveness, proc_stat, signal, spawn_detached, wait_gone, LogTail};
use self::records::{check_state_dir, lock_state_dir, prepare_state_dir, remove_record, write_record};
pub use self::records::{default_state_dir, default_state_dir_from_env, read_records, ProcessRecord, ProcessRole};
pub use self::ssh::{
    parse_remote_pid, parse_remote_stop, remote_start_script, remote_stop_script, shell_quote, SshSettings,
};
use self::workers::taskmanager_log_name;
pub use self::workers::{
    check_jobmanager_address, is_local_host, parse_workers, plan_taskmanagers, read_workers, remote_env_warning,
    taskmanager_args, TaskManagerPlan, Worker, WORKERS_FILE_BYTES_MAX, WORKERS_MAX,
};

/// How often logs and processes are looked at while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for a process to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for an ssh command that starts a remote TaskManager.
const SSH_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the summary's `GET /v1/overview` may take.
const OVERVIEW_TIMEOUTS: ClientTimeouts =
    ClientTimeouts { connect: Duration::from_secs(2), request: Duration::from_secs(5) };
/// Hosts reached at once (ssh) and processes stopped at once.
const PARALLEL_MAX: usize = 16;
/// How long `start` waits by default for every process to come up and register.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Where remote TaskManagers log by default, relative to the ssh user's home directory there.
/// Not the local state directory's path: under `$XDG_RUNTIME_DIR` that directory exists on the
/// remote host only while a session of the user does, so a log there would vanish with the ssh
/// session that started the TaskManager.
pub const DEFAULT_REMOTE_LOG_DIR: &str = ".local/state/corestream";
/// How long `stop` waits by default after SIGTERM before it sends SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);

/// What went wrong, and where.
#[derive(Debug, Error)]
pub enum DeployError {
    #[error("{path}:{line}: {message}")]
    Workers { path: PathBuf, line: usize, message: String },
    #[error("cannot read the workers file {path}: {source}")]
    WorkersRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the workers file {path} names no TaskManager host: write one host per line (`localhost`, a host name or an \
         IP address, optionally followed by `slots=N`)"
    )]
    NoWorkers { path: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfError),
    #[error("{0}")]
    Invalid(String),
    #[error("state directory {path}: {message}")]
    StateDir { path: PathBuf, message: String },
    #[error("another `corestream cluster` command is using the state directory {path}; wait for it to end")]
    Busy { path: PathBuf },
    #[error(
        "a cluster started from the state directory {path} is still running ({running}); stop it first with \
         `corestream cluster stop --state-dir {path}`"
    )]
    AlreadyRunning { path: PathBuf, running: String },
    #[error("the record {path} cannot be read: {message}; remove it if the process it names is gone")]
    BadRecord { path: PathBuf, message: String },
    #[error("cannot write the record {path}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: OutputError,
    },
    #[error(
        "the cluster recorded in {path} was started on {machine}, not on this machine ({this_host}): run `corestream \
         cluster` there"
    )]
    OtherMachine { path: PathBuf, machine: String, this_host: String },
    #[error("the JobManager did not start: {0}")]
    JobManager(String),
    #[error("{}", start_failed(.failures, .state_dir))]
    StartFailed { failures: Vec<String>, state_dir: PathBuf },
    #[error("{}", stop_failed(.failures, .state_dir))]
    StopFailed { failures: Vec<String>, state_dir: PathBuf },
}

fn start_failed(failures: &[String], state_dir: &Path) -> String {
    format!(
        "{} TaskManager(s) did not come up:\n  {}\nthe processes that did start are recorded in {}; `corestream \
         cluster stop --state-dir {}` stops them",
        failures.len(),
        failures.join("\n  "),
        state_dir.display(),
        state_dir.display()
    )
}

fn stop_failed(failures: &[String], state_dir: &Path) -> String {
    format!(
        "{} process(es) could not be stopped (their records stay in {}; run `corestream cluster stop` again once \
         the cause is fixed):\n  {}",
        failures.len(),
        state_dir.display(),
        failures.join("\n  ")
    )
}

impl DeployError {
    /// 2 for bad arguments or files, 1 for failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            DeployError::Workers { .. }
            | DeployError::WorkersRead { .. }
            | DeployError::NoWorkers { .. }
            | DeployError::Config(_)
            | DeployError::Invalid(_)
            | DeployError::StateDir { .. } => 2,
            _ => 1,
        }
    }
}

/// How stopping one process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// It ended after SIGTERM.
    Stopped,
    /// It was still running after the grace period and was killed.
    Killed,
    /// It had already ended.
    NotRunning,
    /// The pid belongs to another process now: nothing was signalled.
    Reused,
    /// It could not be stopped (the record stays).
    Failed(String),
}

// start

/// What `cluster start` needs.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The `corestream` binary (the same path on every host).
    pub binary: PathBuf,
    /// The configuration file (the same path on every host).
    pub config: Option<PathBuf>,
    /// The workers file; `None`: `workers` beside the configuration file.
    pub workers: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Where remote TaskManagers log, on their host; a relative path is relative to the ssh
    /// user's home directory ([`DEFAULT_REMOTE_LOG_DIR`]).
    pub remote_log_dir: PathBuf,
    /// How long to wait for every process to start and every TaskManager to register.
    pub timeout: Duration,
    pub ssh: SshSettings,
    /// `CORESTREAM_LOG` of the started processes ([`child_log_filter`]).
    pub log_filter: String,
    /// This machine's host name.
    pub this_host: String,
    /// The names of this process's environment variables (for [`remote_env_warning`]).
    pub env_keys: Vec<String>,
}

impl StartOptions {
    /// Options from this process: host name, `CORESTREAM_LOG`, ssh settings, environment.
    pub fn from_process(
        binary: PathBuf,
        config: Option<PathBuf>,
        workers: Option<PathBuf>,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            binary,
            config,
            workers,
            state_dir,
            remote_log_dir: PathBuf::from(DEFAULT_REMOTE_LOG_DIR),
            timeout: DEFAULT_START_TIMEOUT,
            ssh: SshSettings::from_env(),
            log_filter: child_log_filter(std::env::var("CORESTREAM_LOG").ok().as_deref()),
            this_host: this_host_name(),
            env_keys: std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()).collect(),
        }
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`).
pub fn this_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A started process `start` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub record: ProcessRecord,
    /// The TaskManager's start-up line (local TaskManagers).
    pub line: Option<TaskManagerLine>,
}

/// What `start` started.
#[derive(Debug, Clone)]
pub struct StartSummary {
    pub jobmanager: ProcessRecord,
    /// The address the JobManager printed.
    /// What the JobManager printed: where TaskManagers connect, and the REST API's URL.
    pub jobmanager_line: JobManagerLine,
    /// `GET /v1/overview` once every TaskManager registered; `None` when the REST API did not
    /// answer (the JobManager's log already showed the registrations).
    pub overview: Option<ClusterOverview>,
    pub taskmanagers: Vec<Started>,
}

/// A TaskManager while `start` waits for it.
struct Pending {
    record: ProcessRecord,
    child: Option<Child>,
    tail: Option<LogTail>,
    line: Option<TaskManagerLine>,
    registered: bool,
    /// Registered, and (on this machine) printed its start-up line.
    up: bool,
    exited: Option<String>,
}

/// Starts the JobManager here and a TaskManager per worker, and waits until they are up.
/// `report` gets a line for each step as it happens.
pub fn start(opts: &StartOptions, report: &mut dyn FnMut(&str)) -> Result<StartSummary, DeployError> {
    let config = match &opts.config {
        Some(c) => Some(
            std::path::absolute(c)
                .map_err(|e| DeployError::Invalid(format!("the configuration file {}: {e}", c.display())))?,
        ),
        None => None,
    };
    let workers_path = match (&opts.workers, &config) {
        (Some(w), _) => w.clone(),
        (None, Some(c)) => c.parent().unwrap_or(Path::new("/")).join("workers"),
        (None, None) => {
            return Err(DeployError::Invalid(
                "no workers file: give --workers FILE, or --config FILE with a `workers` file beside it".into(),
            ))
        }
    };
    let jm_settings = ClusterSettings::load_from_process(config.as_deref(), &[], ConfRole::JobManager)?;
    ClusterSettings::load_from_process(config.as_deref(), &[], ConfRole::TaskManager)?;
    let workers = read_workers(&workers_path)?;
    let (plans, mut warnings) = plan_taskmanagers(
        &workers,
        &opts.this_host,
        jm_settings.taskmanager.number_of_task_slots,
        jm_settings.taskmanager.data_port,
    );
    check_jobmanager_address(&jm_settings.jobmanager.rpc_address, &plans, &workers_path)?;
    warnings.extend(remote_env_warning(&opts.env_keys, &plans));
    for w in &warnings {
        report(&format!("warning: {}: {w}", workers_path.display()));
    }
    let binary = std::path::absolute(&opts.binary)
        .map_err(|e| DeployError::Invalid(format!("the binary {}: {e}", opts.binary.display())))?;
    let dir = std::path::absolute(&opts.state_dir)
        .map_err(|e| DeployError::StateDir { path: opts.state_dir.clone(), message: e.to_string() })?;
    prepare_state_dir(&dir)?;
    let _lock = lock_state_dir(&dir)?;
    clear_stale_records(&dir, &opts.this_host, report)?;

    let config_args: Vec<OsString> = match &config {
        Some(c) => vec!["--config".into(), c.clone().into_os_string()],
        None => Vec::new(),
    };
    let (jobmanager, mut jm_child, mut jm_tail, jobmanager_line) =
        start_jobmanager(opts, &binary, &dir, &config_args, report)?;

    let started: Vec<Result<Pending, String>> = in_parallel(&plans, |plan| {
        start_taskmanager(opts, &binary, &dir, &config_args, plan).map_err(|e| {
            format!("TaskManager {} on {} ({}:{}): {e}", plan.index, plan.host, workers_path.display(), plan.line)
        })
    });
    let mut failures = Vec::new();
    let mut pending = Vec::new();
    for s in started {
        match s {
            Ok(p) => pending.push(p),
            Err(e) => failures.push(e),
        }
    }

    let deadline = Instant::now() + opts.timeout;
    let jm_exit = wait_until_up(&mut pending, &mut jm_child, &mut jm_tail, deadline, report);
    let jm_log = jobmanager.log.display().to_string();
    let mut taskmanagers = Vec::new();
    for mut p in pending {
        let verdict = verdict(p.record.local, p.exited.is_some(), jm_exit.is_some(), p.line.is_some(), p.registered);
        let (what, log) = (p.record.describe(), p.record.log_location());
        let failure = match verdict {
            Verdict::Up => {
                taskmanagers.push(Started { record: p.record, line: p.line });
                continue;
            }
            Verdict::Exited => {
                let _ = remove_record(&dir, &p.record);
                let quote = p.tail.as_mut().map(LogTail::quote).unwrap_or_default();
                format!("{what} {} before it registered: see {log}{quote}", p.exited.unwrap_or_default())
            }
            Verdict::JobManagerEnded => format!("{what} could not register: the JobManager ended (see {jm_log})"),
            Verdict::NoLine => {
                let quote = p.tail.as_mut().map(LogTail::quote).unwrap_or_default();
                format!("{what} printed no start-up line within {:?}: see {log}{quote}", opts.timeout)
            }
            Verdict::NotRegistered => format!(
                "{what} did not register with the JobManager within {:?}: see {log} and the JobManager's log {jm_log}",
                opts.timeout
            ),
        };
        failures.push(failure);
    }
    if let Some(how) = jm_exit {
        let _ = remove_record(&dir, &jobmanager);
        return Err(DeployError::JobManager(format!(
            "{} {how} while the TaskManagers were starting: see {jm_log}{}\nthe TaskManagers that started are \
             recorded in {}; `corestream cluster stop --state-dir {}` stops them",
            jobmanager.describe(),
            jm_tail.quote(),
            dir.display(),
            dir.display()
        )));
    }
    if !failures.is_empty() {
        return Err(DeployError::StartFailed { failures, state_dir: dir });
    }
    let overview = jobmanager_line
        .rest
        .as_deref()
        .and_then(|url| RestClient::with_timeouts(url, None, OVERVIEW_TIMEOUTS).ok())
        .and_then(|client| client.overview().ok());
    Ok(StartSummary { jobmanager, jobmanager_line, overview, taskmanagers })
}

/// Waits until every pending TaskManager is up (registered, and on this machine also printed
/// its start-up line) or ended, the JobManager ended, or `deadline` passed; says how the
/// JobManager ended, if it did. Reports each TaskManager as it comes up.
fn wait_until_up(
    pending: &mut [Pending],
    jm_child: &mut Child,
    jm_tail: &mut LogTail,
    deadline: Instant,
    report: &mut dyn FnMut(&str),
) -> Option<String> {
    loop {
        for line in jm_tail.poll() {
            if let Some(pid) = parse_registration(&line) {
                pending.iter_mut().filter(|p| p.record.pid == pid).for_each(|p| p.registered = true);
            }
        }
        for p in pending.iter_mut().filter(|p| p.exited.is_none() && !p.up) {
            if let Some(tail) = p.tail.as_mut() {
                for line in tail.poll() {
                    if p.line.is_none() {
                        p.line = parse_taskmanager_line(&line);
                    }
                }
            }
            if let Some(Ok(Some(status))) = p.child.as_mut().map(Child::try_wait) {
                p.exited = Some(describe_exit(status));
            } else if verdict(p.record.local, false, false, p.line.is_some(), p.registered) == Verdict::Up {
                p.up = true;
                report(&format!(
                    "started {}: registered with the JobManager{}; log {}",
                    p.record.describe(),
                    p.line.as_ref().map(|l| format!(", {} slot(s), data on {}", l.slots, l.data)).unwrap_or_default(),
                    p.record.log_location()
                ));
            }
        }
        if let Ok(Some(status)) = jm_child.try_wait() {
            return Some(describe_exit(status));
        }
        if pending.iter().all(|p| p.exited.is_some() || p.up) || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Where a TaskManager stands while `start` waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Up,
    /// Its process ended.
    Exited,
    /// The JobManager ended first.
    JobManagerEnded,
    /// On this machine and still silent.
    NoLine,
    /// Started (and on this machine printed its line) but not registered.
    NotRegistered,
}

/// Judges a TaskManager: up once it registered and, on this machine, printed its start-up line.
fn verdict(local: bool, exited: bool, jm_ended: bool, line_seen: bool, registered: bool) -> Verdict {
    if exited {
        Verdict::Exited
    } else if local && !line_seen {
        if jm_ended {
            Verdict::JobManagerEnded
        } else {
            Verdict::NoLine
        }
    } else if registered {
        Verdict::Up
    } else if jm_ended {
        Verdict::JobManagerEnded
    } else {
        Verdict::NotRegistered
    }
}

/// Refuses records made on another machine (a state directory on a shared file system): this
/// machine's `/proc` cannot tell whether their local processes run, nor signal them.
pub fn check_started_here(records: &[ProcessRecord], this_host: &str, dir: &Path) -> Result<(), DeployError> {
    match records.iter().find(|r| r.started_on != this_host) {
        Some(r) => Err(DeployError::OtherMachine {
            path: dir.to_path_buf(),
            machine: r.started_on.clone(),
            this_host: this_host.to_string(),
        }),
        None => Ok(()),
    }
}

/// Removes the records of processes that are gone; refuses to start over live ones.
fn clear_stale_records(dir: &Path, this_host: &str, report: &mut dyn FnMut(&str)) -> Result<(), DeployError> {
    let mut running = Vec::new();
    let records = read_records(dir)?;
    check_started_here(&records, this_host, dir)?;
    for record in records {
        match (record.local, local_liveness(&record)) {
            (true, Liveness::Gone | Liveness::Reused) => {
                remove_record(dir, &record)
                    .map_err(|message| DeployError::StateDir { path: dir.to_path_buf(), message })?;
                report(&format!("removed the stale record of {}: it is no longer running", record.describe()));
            }
            _ => running.push(record.describe()),
        }
    }
    if running.is_empty() {
        Ok(())
    } else {
        Err(DeployError::AlreadyRunning { path: dir.to_path_buf(), running: running.join(", ") })
    }
}

fn start_jobmanager(
    opts: &StartOptions,
    binary: &Path,
    dir: &Path,
    config_args: &[OsString],
    report: &mut dyn FnMut(&str),
) -> Result<(ProcessRecord, Child, LogTail, JobManagerLine), DeployError> {
    let log = dir.join("jobmanager.log");
    let mut args: Vec<OsString> = vec!["jobmanager".into()];
    args.extend(config_args.iter().cloned());
    let mut child = spawn_detached(binary, &args, &log, &opts.log_filter)
        .map_err(|e| DeployError::JobManager(format!("cannot run {} jobmanager: {e}", binary.display())))?;
    let record = ProcessRecord {
        role: ProcessRole::JobManager,
        index: 0,
        host: opts.this_host.clone(),
        local: true,
        pid: child.id(),
        start_ticks: proc_stat(child.id()).map(|s| s.start_ticks),
        log: log.clone(),
        started_at_ms: now_ms(),
        started_on: opts.this_host.clone(),
    };
    write_record(dir, &record)?;
    let mut tail = LogTail::new(log.clone());
    let deadline = Instant::now() + opts.timeout;
    loop {
        if let Some(line) = tail.poll().iter().find_map(|l| parse_jobmanager_line(l)) {
            report(&format!(
                "started {}: TaskManagers connect to {}{}; log {}",
                record.describe(),
                line.rpc,
                line.rest.as_ref().map(|url| format!(", REST API on {url}")).unwrap_or_default(),
                log.display()
            ));
            return Ok((record, child, tail, line));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let _ = remove_record(dir, &record);
            return Err(DeployError::JobManager(format!(
                "{} {} before it printed its address: see {}{}",
                record.describe(),
                describe_exit(status),
                log.display(),
                tail.quote()
            )));
        }
        if Instant::now() >= deadline {
            return Err(DeployError::JobManager(format!(
                "{} printed no address within {:?}: see {}{}; it is still running and recorded, `corestream cluster \
                 stop --state-dir {}` stops it",
                record.describe(),
                opts.timeout,
                log.display(),
                tail.quote(),
                dir.display()
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn start_taskmanager(
    opts: &StartOptions,
    binary: &Path,
    dir: &Path,
    config_args: &[OsString],
    plan: &TaskManagerPlan,
) -> Result<Pending, String> {
    let log = if plan.local { dir.to_path_buf() } else { opts.remote_log_dir.clone() }.join(taskmanager_log_name(plan));
    let args = taskmanager_args(config_args, plan);
    let (pid, child, start_ticks) = if plan.local {
        let child = spawn_detached(binary, &args, &log, &opts.log_filter)
            .map_err(|e| format!("cannot run {} taskmanager: {e}", binary.display()))?;
        let pid = child.id();
        (pid, Some(child), proc_stat(pid).map(|s| s.start_ticks))
    } else {
        let script = remote_start_script(binary, &args, &log, &opts.log_filter).map_err(|e| e.to_string())?;
        let output = opts.ssh.run(&plan.host, &script, SSH_START_TIMEOUT)?;
        let pid = parse_remote_pid(&output).ok_or_else(|| {
            format!("the remote shell printed no pid: {}", output.trim().chars().take(200).collect::<String>())
        })?;
        (pid, None, None)
    };
    let record = ProcessRecord {
        role: ProcessRole::TaskManager,
        index: plan.index,
        host: plan.host.clone(),
        local: plan.local,
        pid,
        start_ticks,
        log: log.clone(),
        started_at_ms: now_ms(),
        started_on: opts.this_host.clone(),
    };
    write_record(dir, &record).map_err(|e| e.to_string())?;
    let tail = plan.local.then(|| LogTail::new(log));
    Ok(Pending { record, child, tail, line: None, registered: false, up: false, exited: None })
}

/// Runs `f` on every item, at most [`PARALLEL_MAX`] at once, and returns the results in order.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut results = Vec::with_capacity(items.len());
    for chunk in items.chunks(PARALLEL_MAX) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk.iter().map(|item| scope.spawn(|| f(item))).collect();
            for handle in handles {
                results.push(handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
            }
        });
    }
    results
}

// stop

/// What `cluster stop` needs.
#[derive(Debug, Clone)]
pub struct StopOptions {
    pub state_dir: PathBuf,
    /// How long a process may take to end after SIGTERM before it gets SIGKILL.
    pub grace: Duration,
    pub ssh: SshSettings,
    /// This machine's host name ([`this_host_name`]).
    pub this_host: String,
}

/// What `stop` did to each recorded process.
#[derive(Debug, Clone)]
pub struct StopSummary {
    pub outcomes: Vec<(ProcessRecord, StopOutcome)>,
}

impl StopSummary {
    /// Whether any process was found running (so there was a cluster to stop).
    pub fn stopped_any(&self) -> bool {
        self.outcomes.iter().any(|(_, o)| matches!(o, StopOutcome::Stopped | StopOutcome::Killed))
    }
}

fn stop_local(record: &ProcessRecord, grace: Duration) -> StopOutcome {
    match local_liveness(record) {
        Liveness::Gone => return StopOutcome::NotRunning,
        Liveness::Reused => return StopOutcome::Reused,
        Liveness::Running => {}
    }
    signal(record.pid, libc::SIGTERM);
    if wait_gone(record, grace) {
        return StopOutcome::Stopped;
    }
    if local_liveness(record) == Liveness::Running {
        signal(record.pid, libc::SIGKILL);
    }
    if wait_gone(record, KILL_WAIT) {
        StopOutcome::Killed
    } else {
        StopOutcome::Failed(format!("still running {KILL_WAIT:?} after SIGKILL"))
    }
}

fn stop_one(record: &ProcessRecord, opts: &StopOptions) -> StopOutcome {
    if record.local {
        return stop_local(record, opts.grace);
    }
    let script = remote_stop_script(record.pid, opts.grace);
    let limit = opts.grace + KILL_WAIT + SSH_START_TIMEOUT;
    match opts.ssh.run(&record.host, &script, limit) {
        Ok(output) => parse_remote_stop(&output, opts.grace),
        Err(e) => StopOutcome::Failed(e),
    }
}

/// Says what happened to a process.
pub fn describe_stop(record: &ProcessRecord, outcome: &StopOutcome, grace: Duration) -> String {
    let what = record.describe();
    match outcome {
        StopOutcome::Stopped => format!("stopped {what}"),
        StopOutcome::Killed => format!("killed {what}: it did not end within {grace:?} of SIGTERM"),
        StopOutcome::NotRunning => format!("{what} was no longer running; removed its record"),
        StopOutcome::Reused => {
            format!("pid {} is now another process, not {what}: nothing signalled; removed its record", record.pid)
        }
        StopOutcome::Failed(why) => format!("cannot stop {what}: {why}"),
    }
}

/// Stops every recorded process: the TaskManagers first (several at once), then the JobManager.
/// The record of each process that is no longer running is removed. Nothing recorded is not an
/// error; `report` gets a line per process as it happens.
pub fn stop(opts: &StopOptions, report: &mut dyn FnMut(&str)) -> Result<StopSummary, DeployError> {
    let dir = &opts.state_dir;
    if !dir.exists() {
        report(&format!("nothing is running: no cluster state in {}", dir.display()));
        return Ok(StopSummary { outcomes: Vec::new() });
    }
    check_state_dir(dir)?;
    let _lock = lock_state_dir(dir)?;
    let records = read_records(dir)?;
    check_started_here(&records, &opts.this_host, dir)?;
    if records.is_empty() {
        report(&format!("nothing is running: no process recorded in {}", dir.display()));
        return Ok(StopSummary { outcomes: Vec::new() });
    }
    let (jobmanagers, taskmanagers): (Vec<_>, Vec<_>) =
        records.into_iter().partition(|r| r.role == ProcessRole::JobManager);
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for group in [taskmanagers, jobmanagers] {
        let results = in_parallel(&group, |record| stop_one(record, opts));
        for (record, outcome) in group.into_iter().zip(results) {
            report(&describe_stop(&record, &outcome, opts.grace));
            match &outcome {
                StopOutcome::Failed(_) => failures.push(describe_stop(&record, &outcome, opts.grace)),
                _ => {
                    if let Err(e) = remove_record(dir, &record) {
                        failures.push(e);
                    }
                }
            }
            outcomes.push((record, outcome));
        }
    }
    if !failures.is_empty() {
        return Err(DeployError::StopFailed { failures, state_dir: dir.clone() });
    }
    Ok(StopSummary { outcomes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_stale_ones_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let record = ProcessRecord {
            role: ProcessRole::TaskManager,
            index: 3,
            host: "localhost".into(),
            local: true,
            pid: u32::MAX - 1,
            start_ticks: Some(1),
            log: dir.path().join("taskmanager-3-localhost.log"),
            started_at_ms: 5,
            started_on: "me".into(),
        };
        write_record(dir.path(), &record).unwrap();
        let jm = ProcessRecord {
            role: ProcessRole::JobManager,
            index: 0,
            pid: std::process::id(),
            start_ticks: proc_stat(std::process::id()).map(|s| s.start_ticks),
            ..record.clone()
        };
        write_record(dir.path(), &jm).unwrap();
        assert_eq!(read_records(dir.path()).unwrap(), vec![record.clone(), jm.clone()]);
        let mut lines = Vec::new();
        let e = clear_stale_records(dir.path(), "other", &mut |l| lines.push(l.to_string())).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the cluster recorded in {} was started on me, not on this machine (other): run `corestream cluster` \
                 there",
                dir.path().display()
            )
        );
        assert_eq!(read_records(dir.path()).unwrap().len(), 2, "nothing was removed");
        let e = clear_stale_records(dir.path(), "me", &mut |l| lines.push(l.to_string())).unwrap_err();
        assert!(matches!(e, DeployError::AlreadyRunning { .. }), "{e}");
        assert!(e.to_string().contains(&format!("the JobManager on localhost (pid {})", std::process::id())), "{e}");
        assert_eq!(
            lines,
            vec![format!(
                "removed the stale record of TaskManager 3 on localhost (pid {}): it is no longer running",
                u32::MAX - 1
            )]
        );
        assert_eq!(read_records(dir.path()).unwrap(), vec![jm]);

        std::fs::write(dir.path().join("taskmanager-9.json"), "{not json").unwrap();
        let e = read_records(dir.path()).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("the record {}", dir.path().join("taskmanager-9.json").display())),
            "{e}"
        );
    }

    #[test]
    fn a_taskmanager_is_up_once_registered_and_heard_from() {
        assert_eq!(verdict(true, false, false, true, true), Verdict::Up);
        assert_eq!(verdict(false, false, false, false, true), Verdict::Up, "a remote log is not read");
        assert_eq!(verdict(true, false, false, false, true), Verdict::NoLine);
        assert_eq!(verdict(true, false, false, true, false), Verdict::NotRegistered);
        assert_eq!(verdict(false, false, false, false, false), Verdict::NotRegistered);
        assert_eq!(verdict(true, true, false, true, true), Verdict::Exited);
        assert_eq!(verdict(true, true, true, false, false), Verdict::Exited);
        assert_eq!(verdict(false, false, true, false, false), Verdict::JobManagerEnded);
        assert_eq!(verdict(true, false, true, false, false), Verdict::JobManagerEnded);
    }

    #[test]
    fn stop_with_nothing_recorded_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StopOptions {
            state_dir: dir.path().join("none"),
            grace: Duration::from_secs(1),
            ssh: SshSettings::default(),
            this_host: "me".into(),
        };
        let mut lines = Vec::new();
        let summary = stop(&opts, &mut |l| lines.push(l.to_string())).unwrap();
        assert!(!summary.stopped_any());
        assert!(lines[0].starts_with("nothing is running: no cluster state in"), "{lines:?}");
        let opts = StopOptions { state_dir: dir.path().to_path_buf(), ..opts };
        lines.clear();
        stop(&opts, &mut |l| lines.push(l.to_string())).unwrap();
        assert!(lines[0].starts_with("nothing is running: no process recorded in"), "{lines:?}");
    }
}
