//! Processes on this machine: starting one detached with its output in a log file, telling
//! from `/proc/PID/stat` whether a recorded pid is still the process that was started, signalling
//! it, and reading what its log says (the start-up lines of both roles, the JobManager's
//! registrations) a bounded amount at a time.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::records::ProcessRecord;
use super::POLL;

/// Bytes of a log file read per poll.
const LOG_READ_BYTES_MAX: usize = 1 << 20;
/// A longer log line is cut into pieces of this size.
const LOG_LINE_BYTES_MAX: usize = 16 * 1024;
/// Lines of a log quoted in an error.
const LOG_TAIL_LINES: usize = 6;
/// The tracing target whose `TaskManager registered ... pid=N` lines `start` waits for.
const REGISTRATION_TARGET: &str = "corestream::jobmanager::server";

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

pub(super) fn proc_stat(pid: u32) -> Option<ProcStat> {
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

pub(super) fn local_liveness(record: &ProcessRecord) -> Liveness {
    liveness(record.start_ticks, proc_stat(record.pid))
}

pub(super) fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a positive pid (never a process group) whose start time was just
    // checked against the record; no memory is passed.
    unsafe { libc::kill(pid, signal) };
}

/// Waits until the recorded process is gone, at most `limit`.
pub(super) fn wait_gone(record: &ProcessRecord, limit: Duration) -> bool {
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
pub(super) fn rotate_log(log: &Path) -> io::Result<()> {
    if log.exists() {
        let mut old = log.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(log, PathBuf::from(old))?;
    }
    Ok(())
}

/// Starts `binary args` detached: a session of its own (no terminal signals reach it, it
/// outlives this command), standard input from `/dev/null`, both outputs appended to `log`.
pub(super) fn spawn_detached(binary: &Path, args: &[OsString], log: &Path, log_filter: &str) -> io::Result<Child> {
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

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads the lines appended to a log file since the last poll, a bounded amount each time, and
/// keeps the last few for error messages.
#[derive(Debug)]
pub(super) struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    recent: VecDeque<String>,
}

impl LogTail {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, offset: 0, partial: Vec::new(), recent: VecDeque::new() }
    }

    pub(super) fn poll(&mut self) -> Vec<String> {
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
    pub(super) fn quote(&mut self) -> String {
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

/// What the JobManager's start-up line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobManagerLine {
    /// Where TaskManagers connect: `IP:PORT`.
    pub rpc: String,
    /// The REST API's URL, when the line names one.
    pub rest: Option<String>,
}

/// Parses `jobmanager: TaskManagers connect to IP:PORT; REST API on URL` (the REST part may be
/// absent).
pub fn parse_jobmanager_line(line: &str) -> Option<JobManagerLine> {
    let rest = line.strip_prefix("jobmanager: TaskManagers connect to ")?.trim();
    Some(match rest.split_once("; REST API on ") {
        Some((rpc, url)) => JobManagerLine { rpc: rpc.trim().to_string(), rest: Some(url.trim().to_string()) },
        None => JobManagerLine { rpc: rest.to_string(), rest: None },
    })
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

/// The log filter of the processes `start` runs: the caller's `CORESTREAM_LOG`, or `info`; the
/// JobManager's registrations are always logged, since `start` waits for them.
pub fn child_log_filter(caller: Option<&str>) -> String {
    match caller.map(str::trim).filter(|f| !f.is_empty()) {
        None => "info".to_string(),
        Some(filter) => format!("{filter},{REGISTRATION_TARGET}=info"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn log_filter_keeps_registrations() {
        assert_eq!(child_log_filter(None), "info");
        assert_eq!(child_log_filter(Some(" ")), "info");
        assert_eq!(child_log_filter(Some("warn")), "warn,corestream::jobmanager::server=info");
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
        assert_eq!(
            parse_jobmanager_line("jobmanager: TaskManagers connect to 127.0.0.1:6123"),
            Some(JobManagerLine { rpc: "127.0.0.1:6123".into(), rest: None })
        );
        assert_eq!(
            parse_jobmanager_line(
                "jobmanager: TaskManagers connect to 10.0.0.5:6123; REST API on http://127.0.0.1:8081"
            ),
            Some(JobManagerLine { rpc: "10.0.0.5:6123".into(), rest: Some("http://127.0.0.1:8081".into()) })
        );
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
}
