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
//! per poll. Records are written with [`AtomicFile`]; one `flock` on the state directory keeps
//! two `cluster` commands from interleaving.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::conf::{ClusterSettings, ConfError, Role as ConfRole, ENV_PREFIX};
use crate::fs::{AtomicFile, OutputError};
use crate::processes::describe_exit;

/// Largest workers file read, in bytes.
pub const WORKERS_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most TaskManager lines in a workers file.
pub const WORKERS_MAX: usize = 1024;
/// Bounds of `slots=N` (those of `taskmanager.numberOfTaskSlots`).
const SLOTS_MAX: u32 = 1024;
/// Longest host name (DNS's limit).
const HOST_CHARS_MAX: usize = 253;
/// Largest record file read, in bytes.
const RECORD_BYTES_MAX: u64 = 64 * 1024;
/// Bytes of a log file read per poll.
const LOG_READ_BYTES_MAX: usize = 1 << 20;
/// A longer log line is cut into pieces of this size.
const LOG_LINE_BYTES_MAX: usize = 16 * 1024;
/// Lines of a log quoted in an error.
const LOG_TAIL_LINES: usize = 6;
/// Bytes of an ssh command's output read.
const SSH_OUTPUT_BYTES_MAX: u64 = 64 * 1024;
/// How often logs and processes are looked at while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for a process to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for an ssh command that starts a remote TaskManager.
const SSH_START_TIMEOUT: Duration = Duration::from_secs(60);
/// ssh's own connection timeout, in seconds.
const SSH_CONNECT_TIMEOUT_SECS: u32 = 10;
/// Hosts reached at once (ssh) and processes stopped at once.
const PARALLEL_MAX: usize = 16;
/// How long `start` waits by default for every process to come up and register.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits by default after SIGTERM before it sends SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);
/// The tracing target whose `TaskManager registered ... pid=N` lines `start` waits for.
const REGISTRATION_TARGET: &str = "corestream::jobmanager::server";

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

// ---------------------------------------------------------------------------------------------
// The workers file.

/// One line of the workers file: a TaskManager to start on `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub host: String,
    /// `slots=N`; `None`: the configuration's `taskmanager.numberOfTaskSlots` or its default.
    pub slots: Option<u32>,
    /// The line in the file (1-based).
    pub line: usize,
}

/// Whether `host` can be a host name or an IP address. It never starts with `-`, so ssh never
/// reads it as an option, and holds nothing a shell would interpret.
fn check_host(host: &str) -> Result<(), String> {
    if host.starts_with('[') {
        return Err(format!("`{host}`: write an IPv6 address without brackets, e.g. `::1`"));
    }
    if host.starts_with('-') {
        return Err(format!("`{host}` is not a host name (it starts with `-`)"));
    }
    if host.len() > HOST_CHARS_MAX {
        return Err(format!("the host name is {} characters long, more than {HOST_CHARS_MAX}", host.len()));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    match host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        None => Ok(()),
        Some(c) => Err(format!(
            "`{host}` is not a host name or IP address (`{}` is not allowed; set a user or port for ssh in \
             ~/.ssh/config)",
            c.escape_debug()
        )),
    }
}

/// Parses a workers file: one host per line, optionally followed by `slots=N`; `#` starts a
/// comment; blank lines are ignored. `path` names the file in errors.
pub fn parse_workers(text: &str, path: &Path) -> Result<Vec<Worker>, DeployError> {
    let mut workers = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let error = |message: String| DeployError::Workers { path: path.to_path_buf(), line, message };
        let content = raw.split('#').next().unwrap_or("").trim();
        let mut tokens = content.split_whitespace();
        let Some(host) = tokens.next() else { continue };
        check_host(host).map_err(error)?;
        let mut slots = None;
        for token in tokens {
            let Some(value) = token.strip_prefix("slots=") else {
                return Err(error(format!(
                    "unknown option `{token}` after the host: the only option is `slots=N`, e.g. `{host} slots=4`"
                )));
            };
            if slots.is_some() {
                return Err(error("`slots=` is given twice".into()));
            }
            let n: u32 = value
                .parse()
                .ok()
                .filter(|n| (1..=SLOTS_MAX).contains(n))
                .ok_or_else(|| error(format!("`slots={value}`: expected a whole number from 1 to {SLOTS_MAX}")))?;
            slots = Some(n);
        }
        if workers.len() == WORKERS_MAX {
            return Err(error(format!("more than {WORKERS_MAX} TaskManagers")));
        }
        workers.push(Worker { host: host.to_string(), slots, line });
    }
    Ok(workers)
}

/// Reads and parses a workers file (at most [`WORKERS_FILE_BYTES_MAX`] bytes); an empty list is
/// an error.
pub fn read_workers(path: &Path) -> Result<Vec<Worker>, DeployError> {
    let read_error = |source| DeployError::WorkersRead { path: path.to_path_buf(), source };
    let mut bytes = Vec::new();
    File::open(path).map_err(read_error)?.take(WORKERS_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > WORKERS_FILE_BYTES_MAX {
        return Err(read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the limit of {WORKERS_FILE_BYTES_MAX} bytes"),
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count() + 1;
        DeployError::Workers { path: path.to_path_buf(), line, message: "not UTF-8 text".into() }
    })?;
    let workers = parse_workers(&text, path)?;
    if workers.is_empty() {
        return Err(DeployError::NoWorkers { path: path.to_path_buf() });
    }
    Ok(workers)
}

// ---------------------------------------------------------------------------------------------
// Placement.

/// Whether `host` names this machine: `localhost`, a loopback address, or this machine's host
/// name (`this_host`, also its first label when it is a fully qualified name). Any other name or
/// address is reached through ssh, even one of this machine's own interfaces.
pub fn is_local_host(host: &str, this_host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let this = this_host.to_ascii_lowercase();
    if host == "localhost" || host == "localhost.localdomain" {
        return true;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    !this.is_empty() && (host == this || this.split('.').next() == Some(host.as_str()))
}

/// One TaskManager `start` will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskManagerPlan {
    /// 1-based, in the order of the workers file.
    pub index: usize,
    pub host: String,
    pub local: bool,
    /// `--slots`: the line's `slots=N`, else the configuration's, else unset (one per core).
    pub slots: Option<u32>,
    /// `--core-offset`: the slots of the TaskManagers before it on the same machine.
    pub core_offset: u32,
    /// Its line in the workers file.
    pub line: usize,
}

/// Plans a TaskManager per worker. TaskManagers sharing a machine get consecutive core offsets
/// (slot i of the second one is pinned to core `slots of the first + i`), which needs their slot
/// counts: when one is unknown the rest on that machine start at core 0 again, with a warning.
pub fn plan_taskmanagers(
    workers: &[Worker],
    this_host: &str,
    default_slots: Option<u32>,
) -> (Vec<TaskManagerPlan>, Vec<String>) {
    // Per machine: the next free core, or `None` once a TaskManager of unknown size took some.
    let mut next_core: HashMap<String, (Option<u32>, usize)> = HashMap::new();
    let mut warned = HashSet::new();
    let mut plans = Vec::with_capacity(workers.len());
    let mut warnings = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let local = is_local_host(&w.host, this_host);
        let machine = if local { String::new() } else { w.host.to_ascii_lowercase() };
        let slots = w.slots.or(default_slots);
        let (next, first_line) = next_core.entry(machine.clone()).or_insert((Some(0), w.line));
        let core_offset = match *next {
            Some(offset) => offset,
            None => {
                if warned.insert(machine) {
                    warnings.push(format!(
                        "line {}: the TaskManagers on {} share cores, because line {} has no `slots=N` and \
                         `taskmanager.numberOfTaskSlots` is not set (each then takes one slot per physical core, \
                         starting at core 0); give every line for this machine `slots=N`",
                        w.line,
                        if local { "this machine" } else { &w.host },
                        first_line
                    ));
                }
                0
            }
        };
        *next = match (*next, slots) {
            (Some(offset), Some(s)) => Some(offset.saturating_add(s)),
            _ => None,
        };
        if next.is_none() {
            *first_line = w.line;
        }
        plans.push(TaskManagerPlan { index: i + 1, host: w.host.clone(), local, slots, core_offset, line: w.line });
    }
    (plans, warnings)
}

/// Refuses a JobManager address that a remote TaskManager could not reach: a loopback address
/// (the default `127.0.0.1`) while the workers file names another machine.
pub fn check_jobmanager_address(
    rpc_address: &str,
    plans: &[TaskManagerPlan],
    workers_file: &Path,
) -> Result<(), DeployError> {
    let loopback = rpc_address.eq_ignore_ascii_case("localhost")
        || rpc_address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match plans.iter().find(|p| !p.local) {
        Some(remote) if loopback => Err(DeployError::Invalid(format!(
            "`jobmanager.rpc.address` is {rpc_address}, a loopback address, but {}:{} names the host {}, whose \
             TaskManager could not reach the JobManager there: set `jobmanager.rpc.address` in the configuration to \
             an address of this machine that {} can reach",
            workers_file.display(),
            remote.line,
            remote.host,
            remote.host
        ))),
        _ => Ok(()),
    }
}

/// A warning when remote TaskManagers will not see this shell's `CORESTREAM_CONF_*` variables
/// (`env_keys`): ssh does not pass them, so those TaskManagers read only their configuration file.
pub fn remote_env_warning(env_keys: &[String], plans: &[TaskManagerPlan]) -> Option<String> {
    let remote = plans.iter().find(|p| !p.local)?;
    let first = env_keys.iter().find(|k| k.starts_with(ENV_PREFIX))?;
    Some(format!(
        "{first} (and any other CORESTREAM_CONF_* variable) applies to the JobManager and the TaskManagers on this \
         machine only: the TaskManager on {} reads only the configuration file there, so put the setting (and the \
         secret, as `security.cluster.secret-file`) in that file",
        remote.host
    ))
}

/// The log filter of the processes `start` runs: the caller's `CORESTREAM_LOG`, or `info`; the
/// JobManager's registrations are always logged, since `start` waits for them.
pub fn child_log_filter(caller: Option<&str>) -> String {
    match caller.map(str::trim).filter(|f| !f.is_empty()) {
        None => "info".to_string(),
        Some(filter) => format!("{filter},{REGISTRATION_TARGET}=info"),
    }
}

// ---------------------------------------------------------------------------------------------
// The state directory and its records.

/// `$XDG_RUNTIME_DIR/corestream`, else `/tmp/corestream-$USER` (the uid when `$USER` is unset
/// or not a plain name).
pub fn default_state_dir(xdg_runtime_dir: Option<&OsStr>, user: Option<&str>, uid: u32) -> PathBuf {
    if let Some(dir) = xdg_runtime_dir.map(Path::new).filter(|d| d.is_absolute()) {
        return dir.join("corestream");
    }
    match user.filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))) {
        Some(user) => PathBuf::from(format!("/tmp/corestream-{user}")),
        None => PathBuf::from(format!("/tmp/corestream-{uid}")),
    }
}

/// [`default_state_dir`] from this process's environment.
pub fn default_state_dir_from_env() -> PathBuf {
    let user = std::env::var("USER").ok();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    default_state_dir(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), user.as_deref(), uid)
}

/// Creates the state directory (mode 0700) and checks that it is a directory of this user's,
/// so nobody else can plant records in it.
fn prepare_state_dir(dir: &Path) -> Result<(), DeployError> {
    let error = |message: String| DeployError::StateDir { path: dir.to_path_buf(), message };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| error(format!("cannot create it: {e}")))?;
    check_state_dir(dir)
}

fn check_state_dir(dir: &Path) -> Result<(), DeployError> {
    let error = |message: String| DeployError::StateDir { path: dir.to_path_buf(), message };
    let meta = std::fs::metadata(dir).map_err(|e| error(e.to_string()))?;
    if !meta.is_dir() {
        return Err(error("not a directory".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(error(format!(
            "owned by uid {}, not by this user (uid {me}): give a directory of your own with --state-dir",
            meta.uid()
        )));
    }
    Ok(())
}

/// An exclusive lock on the state directory, held while a `cluster` command runs.
struct StateLock {
    _file: File,
}

fn lock_state_dir(dir: &Path) -> Result<StateLock, DeployError> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| DeployError::StateDir { path: dir.to_path_buf(), message: format!("cannot open {}: {e}", path.display()) })?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            DeployError::Busy { path: dir.to_path_buf() }
        } else {
            DeployError::StateDir { path: dir.to_path_buf(), message: format!("cannot lock {}: {e}", path.display()) }
        });
    }
    Ok(StateLock { _file: file })
}

/// Which role a recorded process has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessRole {
    JobManager,
    TaskManager,
}

/// A process `start` started, as recorded in the state directory (one JSON file each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRecord {
    pub role: ProcessRole,
    /// The TaskManager's 1-based line number among the workers; 0 for the JobManager.
    pub index: usize,
    pub host: String,
    /// Started on this machine (else through ssh on `host`).
    pub local: bool,
    pub pid: u32,
    /// The process's start time in clock ticks after boot (`/proc/PID/stat`, field 22), which
    /// tells it from a later process given the same pid; local processes only.
    pub start_ticks: Option<u64>,
    /// Its log file (on `host`).
    pub log: PathBuf,
    /// When it was started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
}

impl ProcessRecord {
    /// The record's file name in the state directory.
    pub fn file_name(&self) -> String {
        match self.role {
            ProcessRole::JobManager => "jobmanager.json".to_string(),
            ProcessRole::TaskManager => format!("taskmanager-{}.json", self.index),
        }
    }

    /// E.g. "TaskManager 2 on node7 (pid 4711)".
    pub fn describe(&self) -> String {
        match self.role {
            ProcessRole::JobManager => format!("the JobManager on {} (pid {})", self.host, self.pid),
            ProcessRole::TaskManager => format!("TaskManager {} on {} (pid {})", self.index, self.host, self.pid),
        }
    }

    /// Where its log is, as a person would look for it.
    fn log_location(&self) -> String {
        if self.local {
            self.log.display().to_string()
        } else {
            format!("{}:{}", self.host, self.log.display())
        }
    }
}

fn write_record(dir: &Path, record: &ProcessRecord) -> Result<(), DeployError> {
    let path = dir.join(record.file_name());
    let record_error = |source| DeployError::Record { path: path.clone(), source };
    let mut json = serde_json::to_vec_pretty(record).map_err(|e| {
        record_error(OutputError::Io { what: "cannot encode", path: path.clone(), source: io::Error::other(e) })
    })?;
    json.push(b'\n');
    let mut file = AtomicFile::create(&path).map_err(record_error)?;
    file.write_all(&json)
        .map_err(|e| record_error(OutputError::Io { what: "cannot write", path: path.clone(), source: e }))?;
    file.commit().map_err(record_error)
}

fn remove_record(dir: &Path, record: &ProcessRecord) -> Result<(), String> {
    let path = dir.join(record.file_name());
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove the record {}: {e}", path.display())),
    }
}

/// Every record in `dir`: the TaskManagers in order, then the JobManager.
pub fn read_records(dir: &Path) -> Result<Vec<ProcessRecord>, DeployError> {
    let dir_error = |e: io::Error| DeployError::StateDir { path: dir.to_path_buf(), message: e.to_string() };
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_error)? {
        let path = entry.map_err(dir_error)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if records.len() > WORKERS_MAX {
            return Err(DeployError::StateDir {
                path: dir.to_path_buf(),
                message: format!("more than {} records: not a directory of `corestream cluster`", WORKERS_MAX + 1),
            });
        }
        let bad = |message: String| DeployError::BadRecord { path: path.clone(), message };
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(RECORD_BYTES_MAX + 1).read_to_end(&mut bytes))
            .map_err(|e| bad(e.to_string()))?;
        if bytes.len() as u64 > RECORD_BYTES_MAX {
            return Err(bad(format!("larger than {RECORD_BYTES_MAX} bytes")));
        }
        let record: ProcessRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if record.file_name() != name {
            return Err(bad(format!("it describes {}, whose record is {}", record.describe(), record.file_name())));
        }
        records.push(record);
    }
    records.sort_by_key(|r| (r.role == ProcessRole::JobManager, r.index));
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// Local processes.

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/PID/stat`: the fields after the command name (which may hold spaces and
/// parentheses, so the last `)` ends it) are the state (field 3) ... the start time (field 22).
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(parse_proc_stat)
}

/// Whether a recorded process is still the one that was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Ended (or a zombie nobody reaped yet).
    Gone,
    /// The pid now belongs to another process (its start time differs).
    Reused,
}

/// Judges a recorded process from its recorded start time and what `/proc` shows now.
pub fn liveness(recorded_start_ticks: Option<u64>, now: Option<ProcStat>) -> Liveness {
    match now {
        None => Liveness::Gone,
        Some(stat) if matches!(stat.state, 'Z' | 'X' | 'x') => Liveness::Gone,
        Some(stat) => match recorded_start_ticks {
            Some(ticks) if ticks != stat.start_ticks => Liveness::Reused,
            _ => Liveness::Running,
        },
    }
}

fn local_liveness(record: &ProcessRecord) -> Liveness {
    liveness(record.start_ticks, proc_stat(record.pid))
}

fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a positive pid (never a process group) whose start time was just
    // checked against the record; no memory is passed.
    unsafe { libc::kill(pid, signal) };
}

/// Waits until the recorded process is gone, at most `limit`.
fn wait_gone(record: &ProcessRecord, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if local_liveness(record) != Liveness::Running {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Moves an earlier log to `NAME.1`, so a restart keeps the log of the run before.
fn rotate_log(log: &Path) -> io::Result<()> {
    if log.exists() {
        let mut old = log.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(log, PathBuf::from(old))?;
    }
    Ok(())
}

/// Starts `binary args` detached: a session of its own (no terminal signals reach it, it
/// outlives this command), standard input from `/dev/null`, both outputs appended to `log`.
fn spawn_detached(binary: &Path, args: &[OsString], log: &Path, log_filter: &str) -> io::Result<Child> {
    rotate_log(log)?;
    let out = OpenOptions::new().create(true).append(true).mode(0o640).open(log)?;
    let err = out.try_clone()?;
    let mut command = Command::new(binary);
    command.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env("CORESTREAM_LOG", log_filter);
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2), which
    // is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| if libc::setsid() < 0 { Err(io::Error::last_os_error()) } else { Ok(()) });
    }
    command.spawn()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// Reads the lines appended to a log file since the last poll, a bounded amount each time, and
/// keeps the last few for error messages.
#[derive(Debug)]
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    recent: VecDeque<String>,
}

impl LogTail {
    fn new(path: PathBuf) -> Self {
        Self { path, offset: 0, partial: Vec::new(), recent: VecDeque::new() }
    }

    fn poll(&mut self) -> Vec<String> {
        let mut bytes = Vec::new();
        let read = File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            f.take(LOG_READ_BYTES_MAX as u64).read_to_end(&mut bytes)
        });
        if read.is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        let mut lines = Vec::new();
        for &b in &bytes {
            if b == b'\n' || self.partial.len() >= LOG_LINE_BYTES_MAX {
                lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
                if b == b'\n' {
                    continue;
                }
            }
            self.partial.push(b);
        }
        for line in &lines {
            if self.recent.len() == LOG_TAIL_LINES {
                self.recent.pop_front();
            }
            self.recent.push_back(line.clone());
        }
        lines
    }

    /// The last lines read, indented, for an error message.
    fn quote(&mut self) -> String {
        self.poll();
        if !self.partial.is_empty() {
            self.recent.push_back(String::from_utf8_lossy(&self.partial).into_owned());
        }
        if self.recent.is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = self.recent.iter().map(String::as_str).collect();
        format!("; its last lines:\n      {}", lines.join("\n      "))
    }
}

/// The JobManager's start-up line: `jobmanager: TaskManagers connect to IP:PORT` → `IP:PORT`.
pub fn parse_jobmanager_line(line: &str) -> Option<&str> {
    line.strip_prefix("jobmanager: TaskManagers connect to ").map(str::trim)
}

/// A TaskManager's start-up line: `taskmanager <id>: N slot(s), data on IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskManagerLine {
    pub id: String,
    pub slots: u32,
    pub data: String,
}

/// Parses a TaskManager's start-up line.
pub fn parse_taskmanager_line(line: &str) -> Option<TaskManagerLine> {
    let rest = line.strip_prefix("taskmanager ")?;
    let (id, rest) = rest.split_once(": ")?;
    let (slots, rest) = rest.split_once(" slot(s), data on ")?;
    Some(TaskManagerLine { id: id.to_string(), slots: slots.parse().ok()?, data: rest.trim().to_string() })
}

/// The pid of a TaskManager in a JobManager's log line `... TaskManager registered tm=... pid=N ...`.
pub fn parse_registration(line: &str) -> Option<u32> {
    let (_, fields) = line.split_once("TaskManager registered")?;
    fields.split_whitespace().find_map(|f| f.strip_prefix("pid=")).and_then(|p| p.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// ssh.

/// How remote hosts are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    /// The ssh program (`CORESTREAM_SSH`, default `ssh`).
    pub program: String,
    /// More options before the host (`CORESTREAM_SSH_OPTS`, split at blanks), as Flink's
    /// `FLINK_SSH_OPTS`.
    pub options: Vec<String>,
}

impl Default for SshSettings {
    fn default() -> Self {
        Self { program: "ssh".into(), options: Vec::new() }
    }
}

impl SshSettings {
    /// From `CORESTREAM_SSH` and `CORESTREAM_SSH_OPTS`.
    pub fn from_env() -> Self {
        Self {
            program: std::env::var("CORESTREAM_SSH").ok().filter(|p| !p.trim().is_empty()).unwrap_or("ssh".into()),
            options: std::env::var("CORESTREAM_SSH_OPTS")
                .map(|o| o.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
        }
    }

    /// The arguments after the program: batch mode (never a password prompt), a connection
    /// timeout, the caller's options, the host, and `script` for `sh -c` (the remote login
    /// shell may be any shell).
    pub fn args(&self, host: &str, script: &str) -> Vec<String> {
        let mut args = vec![
            "-o".to_string(),
            "BatchMode=yes".to_string(),
            "-o".to_string(),
            format!("ConnectTimeout={SSH_CONNECT_TIMEOUT_SECS}"),
        ];
        args.extend(self.options.iter().cloned());
        args.push(host.to_string());
        args.push(format!("sh -c {}", shell_quote(script)));
        args
    }

    /// Runs `script` on `host`; its standard output if ssh and the script succeeded within
    /// `limit`.
    fn run(&self, host: &str, script: &str, limit: Duration) -> Result<String, String> {
        let mut child = Command::new(&self.program)
            .args(self.args(host, script))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(pipe) = pipe {
                    let _ = pipe.take(SSH_OUTPUT_BYTES_MAX).read_to_end(&mut bytes);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let deadline = Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        let err = err.trim();
        match status {
            None => Err(format!("{} {host} did not answer within {limit:?}", self.program)),
            Some(s) if s.success() => Ok(out),
            Some(s) => Err(format!(
                "{} {host} {}{}",
                self.program,
                describe_exit(s),
                if err.is_empty() { String::new() } else { format!(": {err}") }
            )),
        }
    }
}

/// Quotes `s` for a POSIX shell (single quotes unless it is plainly safe).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn utf8<'a>(what: &str, s: &'a OsStr) -> Result<&'a str, DeployError> {
    s.to_str().ok_or_else(|| {
        DeployError::Invalid(format!("{what} {} is not UTF-8, which the ssh command line needs", Path::new(s).display()))
    })
}

/// The shell text that starts a TaskManager on a remote host: the log's directory created, an
/// earlier log kept as `.1`, the TaskManager detached with `setsid` and its output appended to
/// the log, then `corestream-pid PID` printed.
pub fn remote_start_script(
    binary: &Path,
    args: &[OsString],
    log: &Path,
    log_filter: &str,
) -> Result<String, DeployError> {
    let log_text = utf8("the log file", log.as_os_str())?;
    let dir = log.parent().map(Path::as_os_str).unwrap_or(OsStr::new("/"));
    let mut command = vec![shell_quote(utf8("the binary", binary.as_os_str())?)];
    for arg in args {
        command.push(shell_quote(utf8("the argument", arg)?));
    }
    Ok(format!(
        "log={log}; mkdir -p {dir} || exit 1; if [ -e \"$log\" ]; then mv -f \"$log\" \"$log.1\"; fi; \
         CORESTREAM_LOG={filter} setsid {command} </dev/null >>\"$log\" 2>&1 & echo \"corestream-pid $!\"",
        log = shell_quote(log_text),
        dir = shell_quote(utf8("the log directory", dir)?),
        filter = shell_quote(log_filter),
        command = command.join(" ")
    ))
}

/// The pid a remote start script printed.
pub fn parse_remote_pid(output: &str) -> Option<u32> {
    output.lines().rev().find_map(|l| l.trim().strip_prefix("corestream-pid ")).and_then(|p| p.trim().parse().ok())
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

/// The shell text that stops a remote TaskManager: nothing if `pid` is gone or is not a
/// TaskManager (its command line has no `taskmanager` argument), else `kill -TERM`, a wait of up
/// to `grace`, then `kill -KILL`; it prints `corestream-stop` and what happened.
pub fn remote_stop_script(pid: u32, grace: Duration) -> String {
    let ticks = grace.as_millis().div_ceil(100).max(1);
    let kill_ticks = KILL_WAIT.as_millis().div_ceil(100);
    format!(
        "pid={pid}; alive() {{ [ -r /proc/$pid/stat ] && ! grep -q ') [ZX] ' /proc/$pid/stat 2>/dev/null; }}; \
         if ! alive; then echo 'corestream-stop gone'; exit 0; fi; \
         case \" $(tr '\\000' ' ' </proc/$pid/cmdline 2>/dev/null) \" in *' taskmanager '*) ;; \
         *) echo 'corestream-stop other'; exit 0;; esac; \
         kill -TERM $pid 2>/dev/null; i=0; \
         while [ $i -lt {ticks} ]; do alive || {{ echo 'corestream-stop stopped'; exit 0; }}; sleep 0.1; i=$((i+1)); done; \
         kill -KILL $pid 2>/dev/null; i=0; \
         while [ $i -lt {kill_ticks} ]; do alive || {{ echo 'corestream-stop killed'; exit 0; }}; sleep 0.1; i=$((i+1)); done; \
         echo 'corestream-stop alive'"
    )
}

/// What a remote stop script reported.
pub fn parse_remote_stop(output: &str, grace: Duration) -> StopOutcome {
    match output.lines().rev().find_map(|l| l.trim().strip_prefix("corestream-stop ")) {
        Some("gone") => StopOutcome::NotRunning,
        Some("other") => StopOutcome::Reused,
        Some("stopped") => StopOutcome::Stopped,
        Some("killed") => StopOutcome::Killed,
        Some("alive") => StopOutcome::Failed(format!("still running {KILL_WAIT:?} after SIGKILL")),
        _ => StopOutcome::Failed(format!(
            "the stop command reported nothing (grace {grace:?}); output: {}",
            output.trim().chars().take(200).collect::<String>()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
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
    pub fn from_process(binary: PathBuf, config: Option<PathBuf>, workers: Option<PathBuf>, state_dir: PathBuf) -> Self {
        Self {
            binary,
            config,
            workers,
            state_dir,
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
    pub jobmanager_address: String,
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
        Some(c) => Some(std::path::absolute(c).map_err(|e| {
            DeployError::Invalid(format!("the configuration file {}: {e}", c.display()))
        })?),
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
    let (plans, mut warnings) =
        plan_taskmanagers(&workers, &opts.this_host, jm_settings.taskmanager.number_of_task_slots);
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
    clear_stale_records(&dir, report)?;

    let config_args: Vec<OsString> = match &config {
        Some(c) => vec!["--config".into(), c.clone().into_os_string()],
        None => Vec::new(),
    };
    let (jobmanager, mut jm_child, mut jm_tail, jobmanager_address) =
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
    let mut jm_exit = None;
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
            } else if p.registered && (!p.record.local || p.line.is_some()) {
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
            jm_exit = Some(describe_exit(status));
            break;
        }
        let done = pending.iter().all(|p| p.exited.is_some() || p.up);
        if done || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }

    let jm_log = jobmanager.log.display().to_string();
    let mut taskmanagers = Vec::new();
    for mut p in pending {
        let what = p.record.describe();
        let log = p.record.log_location();
        let failure = if let Some(how) = &p.exited {
            let _ = remove_record(&dir, &p.record);
            let quote = p.tail.as_mut().map(LogTail::quote).unwrap_or_default();
            Some(format!("{what} {how} before it registered: see {log}{quote}"))
        } else if let Some(how) = &jm_exit {
            Some(format!("{what} could not register: the JobManager {how} (see {jm_log})"))
        } else if p.record.local && p.line.is_none() {
            let quote = p.tail.as_mut().map(LogTail::quote).unwrap_or_default();
            Some(format!("{what} printed no start-up line within {:?}: see {log}{quote}", opts.timeout))
        } else if !p.registered {
            Some(format!(
                "{what} did not register with the JobManager within {:?}: see {log} and the JobManager's log {jm_log}",
                opts.timeout
            ))
        } else {
            None
        };
        match failure {
            Some(f) => failures.push(f),
            None => taskmanagers.push(Started { record: p.record, line: p.line }),
        }
    }
    if let Some(how) = jm_exit {
        let _ = remove_record(&dir, &jobmanager);
        return Err(DeployError::JobManager(format!(
            "{} {how} while the TaskManagers were starting: see {jm_log}{}",
            jobmanager.describe(),
            jm_tail.quote()
        )));
    }
    if !failures.is_empty() {
        return Err(DeployError::StartFailed { failures, state_dir: dir });
    }
    Ok(StartSummary { jobmanager, jobmanager_address, taskmanagers })
}

/// Removes the records of processes that are gone; refuses to start over live ones.
fn clear_stale_records(dir: &Path, report: &mut dyn FnMut(&str)) -> Result<(), DeployError> {
    let mut running = Vec::new();
    for record in read_records(dir)? {
        match (record.local, local_liveness(&record)) {
            (true, Liveness::Gone | Liveness::Reused) => {
                remove_record(dir, &record).map_err(|message| DeployError::StateDir { path: dir.to_path_buf(), message })?;
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
) -> Result<(ProcessRecord, Child, LogTail, String), DeployError> {
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
    };
    write_record(dir, &record)?;
    let mut tail = LogTail::new(log.clone());
    let deadline = Instant::now() + opts.timeout;
    loop {
        if let Some(address) = tail.poll().iter().find_map(|l| parse_jobmanager_line(l)) {
            report(&format!(
                "started {}: TaskManagers connect to {address}; log {}",
                record.describe(),
                log.display()
            ));
            return Ok((record, child, tail, address.to_string()));
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

/// The `taskmanager` arguments of a plan.
pub fn taskmanager_args(config_args: &[OsString], plan: &TaskManagerPlan) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["taskmanager".into()];
    args.extend(config_args.iter().cloned());
    if let Some(slots) = plan.slots {
        args.extend(["--slots".into(), slots.to_string().into()]);
    }
    if plan.core_offset > 0 {
        args.extend(["--core-offset".into(), plan.core_offset.to_string().into()]);
    }
    args
}

/// The log file name of a TaskManager (the host keeps names apart when several machines share
/// the state directory's file system).
fn taskmanager_log_name(plan: &TaskManagerPlan) -> String {
    let host: String = plan.host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    format!("taskmanager-{}-{host}.log", plan.index)
}

fn start_taskmanager(
    opts: &StartOptions,
    binary: &Path,
    dir: &Path,
    config_args: &[OsString],
    plan: &TaskManagerPlan,
) -> Result<Pending, String> {
    let log = dir.join(taskmanager_log_name(plan));
    let args = taskmanager_args(config_args, plan);
    let (pid, child, start_ticks) = if plan.local {
        let child = spawn_detached(binary, &args, &log, &opts.log_filter)
            .map_err(|e| format!("cannot run {} taskmanager: {e}", binary.display()))?;
        let pid = child.id();
        (pid, Some(child), proc_stat(pid).map(|s| s.start_ticks))
    } else {
        let script = remote_start_script(binary, &args, &log, &opts.log_filter).map_err(|e| e.to_string())?;
        let output = opts.ssh.run(&plan.host, &script, SSH_START_TIMEOUT)?;
        let pid = parse_remote_pid(&output)
            .ok_or_else(|| format!("the remote shell printed no pid: {}", output.trim().chars().take(200).collect::<String>()))?;
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

// ---------------------------------------------------------------------------------------------
// stop

/// What `cluster stop` needs.
#[derive(Debug, Clone)]
pub struct StopOptions {
    pub state_dir: PathBuf,
    /// How long a process may take to end after SIGTERM before it gets SIGKILL.
    pub grace: Duration,
    pub ssh: SshSettings,
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

    fn workers(text: &str) -> Result<Vec<Worker>, DeployError> {
        parse_workers(text, Path::new("/etc/corestream/workers"))
    }

    #[test]
    fn workers_file_hosts_comments_and_slots() {
        let text = "# the workers\n\nlocalhost\n  node-1.example.org slots=4   # big one\n10.0.0.7\n::1 slots=1\n";
        let w = workers(text).unwrap();
        assert_eq!(
            w,
            vec![
                Worker { host: "localhost".into(), slots: None, line: 3 },
                Worker { host: "node-1.example.org".into(), slots: Some(4), line: 4 },
                Worker { host: "10.0.0.7".into(), slots: None, line: 5 },
                Worker { host: "::1".into(), slots: Some(1), line: 6 },
            ]
        );
        assert!(workers("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn malformed_worker_lines_name_the_file_and_line() {
        let cases = [
            ("localhost\nnode1 cores=2\n", 2, "unknown option `cores=2`"),
            ("node1 slots=0\n", 1, "`slots=0`: expected a whole number from 1 to 1024"),
            ("node1 slots=x\n", 1, "`slots=x`"),
            ("node1 slots=2 slots=3\n", 1, "given twice"),
            ("\n\n-oProxyCommand=evil\n", 3, "starts with `-`"),
            ("user@node1\n", 1, "`@` is not allowed"),
            ("node1;reboot\n", 1, "`;` is not allowed"),
            ("[::1]\n", 1, "without brackets"),
        ];
        for (text, line, expected) in cases {
            let msg = workers(text).unwrap_err().to_string();
            assert!(msg.starts_with(&format!("/etc/corestream/workers:{line}: ")), "{text:?}: {msg}");
            assert!(msg.contains(expected), "{text:?}: {msg}");
        }
        let many = "localhost\n".repeat(WORKERS_MAX + 1);
        assert!(workers(&many).unwrap_err().to_string().contains(&format!("more than {WORKERS_MAX}")));
    }

    #[test]
    fn reading_a_workers_file_checks_size_encoding_and_emptiness() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# only a comment\n").unwrap();
        assert!(matches!(read_workers(&empty), Err(DeployError::NoWorkers { .. })));
        let binary = dir.path().join("binary");
        std::fs::write(&binary, b"localhost\n\xff\n").unwrap();
        let msg = read_workers(&binary).unwrap_err().to_string();
        assert!(msg.ends_with("binary:2: not UTF-8 text"), "{msg}");
        let missing = dir.path().join("missing");
        let e = read_workers(&missing).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("cannot read the workers file"), "{e}");
    }

    #[test]
    fn local_hosts() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.0.1.1", "::1", "node7", "node7.example.org"] {
            assert!(is_local_host(host, "node7.example.org"), "{host}");
        }
        assert!(is_local_host("Node7.Example.Org", "node7.example.org"));
        assert!(is_local_host("node7", "node7"));
        for host in ["node8", "10.0.0.7", "node7.other.org", "::2"] {
            assert!(!is_local_host(host, "node7.example.org"), "{host}");
        }
        assert!(!is_local_host("node7", ""));
    }

    fn worker(host: &str, slots: Option<u32>, line: usize) -> Worker {
        Worker { host: host.into(), slots, line }
    }

    #[test]
    fn taskmanagers_sharing_a_machine_get_consecutive_cores() {
        let w = [
            worker("localhost", Some(2), 1),
            worker("node2", None, 2),
            worker("127.0.0.1", Some(3), 3),
            worker("me", None, 4),
            worker("node2", None, 5),
        ];
        let (plans, warnings) = plan_taskmanagers(&w, "me", Some(1));
        let offsets: Vec<(usize, bool, Option<u32>, u32)> =
            plans.iter().map(|p| (p.index, p.local, p.slots, p.core_offset)).collect();
        assert_eq!(
            offsets,
            vec![(1, true, Some(2), 0), (2, false, Some(1), 0), (3, true, Some(3), 2), (4, true, Some(1), 5), (5, false, Some(1), 1)]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn unknown_slot_counts_on_one_machine_are_warned_about() {
        let w = [worker("localhost", None, 1), worker("localhost", None, 2), worker("localhost", None, 3), worker("n", None, 4)];
        let (plans, warnings) = plan_taskmanagers(&w, "me", None);
        assert!(plans.iter().all(|p| p.core_offset == 0));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("line 2: the TaskManagers on this machine share cores, because line 1"), "{}", warnings[0]);
        let (_, warnings) = plan_taskmanagers(&[worker("localhost", None, 1)], "me", None);
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_loopback_jobmanager_is_refused_with_remote_workers() {
        let (local, _) = plan_taskmanagers(&[worker("localhost", None, 1)], "me", None);
        assert!(check_jobmanager_address("127.0.0.1", &local, Path::new("w")).is_ok());
        let (remote, _) = plan_taskmanagers(&[worker("localhost", None, 1), worker("node2", None, 4)], "me", None);
        let e = check_jobmanager_address("127.0.0.1", &remote, Path::new("/etc/corestream/workers")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(msg.contains("/etc/corestream/workers:4 names the host node2"), "{msg}");
        assert!(check_jobmanager_address("localhost", &remote, Path::new("w")).is_err());
        assert!(check_jobmanager_address("10.0.0.5", &remote, Path::new("w")).is_ok());
        assert!(check_jobmanager_address("jm.example.org", &remote, Path::new("w")).is_ok());
    }

    #[test]
    fn environment_settings_do_not_reach_remote_taskmanagers() {
        let keys = vec!["PATH".to_string(), "CORESTREAM_CONF_SECURITY_CLUSTER_SECRET".to_string()];
        let (local, _) = plan_taskmanagers(&[worker("localhost", None, 1)], "me", None);
        assert!(remote_env_warning(&keys, &local).is_none());
        let (remote, _) = plan_taskmanagers(&[worker("node2", None, 1)], "me", None);
        let w = remote_env_warning(&keys, &remote).unwrap();
        assert!(w.starts_with("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET (and any"), "{w}");
        assert!(remote_env_warning(&["PATH".to_string()], &remote).is_none());
    }

    #[test]
    fn log_filter_keeps_registrations() {
        assert_eq!(child_log_filter(None), "info");
        assert_eq!(child_log_filter(Some(" ")), "info");
        assert_eq!(child_log_filter(Some("warn")), "warn,corestream::jobmanager::server=info");
    }

    #[test]
    fn default_state_directory() {
        assert_eq!(
            default_state_dir(Some(OsStr::new("/run/user/1000")), Some("ann"), 1000),
            PathBuf::from("/run/user/1000/corestream")
        );
        assert_eq!(default_state_dir(None, Some("ann"), 1000), PathBuf::from("/tmp/corestream-ann"));
        assert_eq!(default_state_dir(Some(OsStr::new("relative")), Some("ann"), 1000), PathBuf::from("/tmp/corestream-ann"));
        assert_eq!(default_state_dir(None, None, 1000), PathBuf::from("/tmp/corestream-1000"));
        assert_eq!(default_state_dir(None, Some("../etc"), 7), PathBuf::from("/tmp/corestream-7"));
    }

    #[test]
    fn proc_stat_and_liveness() {
        let text = "4711 (corestream (x) y) S 1 4711 4711 0 -1 4194560 500 0 0 0 3 1 0 0 20 0 9 0 123456 1000 300 \
                    18446744073709551615";
        assert_eq!(parse_proc_stat(text), Some(ProcStat { state: 'S', start_ticks: 123456 }));
        assert_eq!(parse_proc_stat("4711 (x) S 1"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
        let running = Some(ProcStat { state: 'S', start_ticks: 10 });
        assert_eq!(liveness(Some(10), running), Liveness::Running);
        assert_eq!(liveness(None, running), Liveness::Running);
        assert_eq!(liveness(Some(11), running), Liveness::Reused);
        assert_eq!(liveness(Some(10), Some(ProcStat { state: 'Z', start_ticks: 10 })), Liveness::Gone);
        assert_eq!(liveness(Some(10), None), Liveness::Gone);
        let me = proc_stat(std::process::id()).unwrap();
        assert_eq!(liveness(Some(me.start_ticks), Some(me)), Liveness::Running);
    }

    #[test]
    fn start_up_and_registration_lines() {
        assert_eq!(parse_jobmanager_line("jobmanager: TaskManagers connect to 127.0.0.1:6123"), Some("127.0.0.1:6123"));
        assert_eq!(parse_jobmanager_line("2025-01-01 INFO jobmanager: x"), None);
        assert_eq!(
            parse_taskmanager_line("taskmanager 3fa2c1d0: 4 slot(s), data on 10.0.0.7:40311"),
            Some(TaskManagerLine { id: "3fa2c1d0".into(), slots: 4, data: "10.0.0.7:40311".into() })
        );
        assert_eq!(parse_taskmanager_line("taskmanager x: many slot(s), data on -"), None);
        let line = "2025-06-01T10:00:00.123Z  INFO corestream::jobmanager::server: TaskManager registered tm=3fa2c1d0 \
                    host=node7 pid=4711 slots=4 data=10.0.0.7:40311";
        assert_eq!(parse_registration(line), Some(4711));
        assert_eq!(parse_registration("INFO TaskManager started pid=4711"), None);
        assert_eq!(parse_registration("TaskManager registered tm=a pid=47x"), None);
    }

    #[test]
    fn log_tail_reads_appended_lines_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut tail = LogTail::new(path.clone());
        assert!(tail.poll().is_empty(), "a missing log has no lines yet");
        std::fs::write(&path, "one\ntw").unwrap();
        assert_eq!(tail.poll(), vec!["one"]);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"o\nthree\n").unwrap();
        assert_eq!(tail.poll(), vec!["two", "three"]);
        assert!(tail.poll().is_empty());
        f.write_all(&vec![b'x'; LOG_LINE_BYTES_MAX * 2 + 5]).unwrap();
        let lines = tail.poll();
        assert_eq!(lines.len(), 2, "a long line is cut into bounded pieces");
        assert!(tail.quote().contains("three"));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/usr/local/bin/corestream"), "/usr/local/bin/corestream");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        let out = Command::new("sh").arg("-c").arg(format!("printf %s {}", shell_quote("it's $HOME `x` \"q\""))).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME `x` \"q\"");
    }

    #[test]
    fn ssh_arguments() {
        let ssh = SshSettings { program: "ssh".into(), options: vec!["-p".into(), "2222".into()] };
        let args = ssh.args("node2", "echo 'hi'");
        assert_eq!(
            args,
            vec!["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", "2222", "node2", r"sh -c 'echo '\''hi'\'''"]
        );
    }

    #[test]
    fn taskmanager_arguments() {
        let plan = TaskManagerPlan { index: 2, host: "n".into(), local: false, slots: Some(4), core_offset: 4, line: 3 };
        let config = vec![OsString::from("--config"), OsString::from("/etc/corestream/corestream.toml")];
        let args: Vec<String> = taskmanager_args(&config, &plan).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            ["taskmanager", "--config", "/etc/corestream/corestream.toml", "--slots", "4", "--core-offset", "4"]
        );
        let plan = TaskManagerPlan { slots: None, core_offset: 0, ..plan };
        assert_eq!(taskmanager_args(&[], &plan), vec![OsString::from("taskmanager")]);
        assert_eq!(taskmanager_log_name(&TaskManagerPlan { host: "::1".into(), ..plan }), "taskmanager-2-__1.log");
    }

    /// A stand-in for `corestream taskmanager` that runs until SIGTERM.
    fn fake_binary(dir: &Path) -> PathBuf {
        let path = dir.join("fake corestream");
        std::fs::write(&path, "#!/bin/sh\ntrap 'exit 0' TERM\necho \"started $*\"\nwhile :; do sleep 0.05; done\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    }

    /// Runs a remote script the way the remote login shell would (`sh -c` of the last ssh argument).
    fn run_remote(script: &str) -> String {
        let ssh = SshSettings::default();
        let args = ssh.args("node2", script);
        let out = Command::new("sh").arg("-c").arg(args.last().unwrap()).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn remote_scripts_start_and_stop_a_detached_process() {
        let dir = tempfile::tempdir().unwrap();
        let binary = fake_binary(dir.path());
        let log = dir.path().join("logs").join("taskmanager-1-node2.log");
        let args = vec![OsString::from("taskmanager"), OsString::from("--slots"), OsString::from("2")];
        let script = remote_start_script(&binary, &args, &log, "info").unwrap();
        let pid = parse_remote_pid(&run_remote(&script)).expect("a pid");
        let record = ProcessRecord {
            role: ProcessRole::TaskManager,
            index: 1,
            host: "node2".into(),
            local: true,
            pid,
            start_ticks: None,
            log: log.clone(),
            started_at_ms: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("started taskmanager --slots 2") {
            assert!(Instant::now() < deadline, "the fake TaskManager never wrote its log");
            std::thread::sleep(POLL);
        }
        assert_eq!(local_liveness(&record), Liveness::Running);
        let out = run_remote(&remote_stop_script(pid, Duration::from_secs(5)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(5)), StopOutcome::Stopped, "{out}");
        assert!(wait_gone(&record, Duration::from_secs(5)));
        let out = run_remote(&remote_stop_script(pid, Duration::from_secs(5)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(5)), StopOutcome::NotRunning, "{out}");
        // A process that is not a TaskManager is never signalled.
        let out = run_remote(&remote_stop_script(std::process::id(), Duration::from_secs(1)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(1)), StopOutcome::Reused, "{out}");
        assert_eq!(local_liveness(&ProcessRecord { pid: std::process::id(), ..record }), Liveness::Running);
        // A second start keeps the first log.
        let pid2 = parse_remote_pid(&run_remote(&script)).unwrap();
        assert!(log.with_extension("log.1").exists());
        let out = run_remote(&remote_stop_script(pid2, Duration::from_secs(5)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(5)), StopOutcome::Stopped, "{out}");
        assert_eq!(parse_remote_stop("motd\n", Duration::from_secs(1)), StopOutcome::Failed(
            "the stop command reported nothing (grace 1s); output: motd".into()
        ));
    }

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
        };
        write_record(dir.path(), &record).unwrap();
        let jm = ProcessRecord { role: ProcessRole::JobManager, index: 0, pid: std::process::id(), start_ticks: proc_stat(std::process::id()).map(|s| s.start_ticks), ..record.clone() };
        write_record(dir.path(), &jm).unwrap();
        assert_eq!(read_records(dir.path()).unwrap(), vec![record.clone(), jm.clone()]);
        let mut lines = Vec::new();
        let e = clear_stale_records(dir.path(), &mut |l| lines.push(l.to_string())).unwrap_err();
        assert!(matches!(e, DeployError::AlreadyRunning { .. }), "{e}");
        assert!(e.to_string().contains(&format!("the JobManager on localhost (pid {})", std::process::id())), "{e}");
        assert_eq!(lines, vec![format!("removed the stale record of TaskManager 3 on localhost (pid {}): it is no longer running", u32::MAX - 1)]);
        assert_eq!(read_records(dir.path()).unwrap(), vec![jm]);

        std::fs::write(dir.path().join("taskmanager-9.json"), "{not json").unwrap();
        let e = read_records(dir.path()).unwrap_err();
        assert!(e.to_string().starts_with(&format!("the record {}", dir.path().join("taskmanager-9.json").display())), "{e}");
    }

    #[test]
    fn stop_with_nothing_recorded_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StopOptions { state_dir: dir.path().join("none"), grace: Duration::from_secs(1), ssh: SshSettings::default() };
        let mut lines = Vec::new();
        let summary = stop(&opts, &mut |l| lines.push(l.to_string())).unwrap();
        assert!(!summary.stopped_any());
        assert!(lines[0].starts_with("nothing is running: no cluster state in"), "{lines:?}");
        let opts = StopOptions { state_dir: dir.path().to_path_buf(), ..opts };
        lines.clear();
        stop(&opts, &mut |l| lines.push(l.to_string())).unwrap();
        assert!(lines[0].starts_with("nothing is running: no process recorded in"), "{lines:?}");
    }

    #[test]
    fn the_state_directory_is_locked_while_a_command_runs() {
        let dir = tempfile::tempdir().unwrap();
        let lock = lock_state_dir(dir.path()).unwrap();
        assert!(matches!(lock_state_dir(dir.path()), Err(DeployError::Busy { .. })));
        drop(lock);
        assert!(lock_state_dir(dir.path()).is_ok());
    }
}
