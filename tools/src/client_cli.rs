//! `corestream submit`, `list`, `cancel`, `savepoint`, `stop` and `info`: the command-line client of a running
//! JobManager, over its REST API ([`corestream::client::RestClient`]).
//!
//! `submit [OPTIONS] JOB [ARGS]...` sends a registered job type by name; everything after JOB
//! goes to the job verbatim (its own `--flags` and `-p` included), so the options of `submit`
//! come before JOB. It prints the job id and, unless `--detached`, waits for the job to end and
//! prints its result. The secret that authenticates submissions and cancellations comes from
//! `--secret-file` or `CORESTREAM_CONF_SECURITY_CLUSTER_SECRET`. Exit status: 2 for invalid
//! arguments (clap), 1 for a job that failed or was cancelled and for every error of or on the
//! way to the JobManager, whose URL the message names.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use corestream::client::RestClient;
use corestream::jobmanager::api::{JobDetails, JobOutcome, JobOverview, JobState, SavepointStatus, SubmitRequest};
use corestream::rpc::ids::JobId;
use corestream::rpc::messages::{Accumulator, TaskState};
use hdrhistogram::serialization::Deserializer;

use crate::args::{parse_parallelism, parse_positive_duration};

pub const DEFAULT_JOBMANAGER: &str = "http://127.0.0.1:8081";
pub const SECRET_ENV: &str = "CORESTREAM_CONF_SECURITY_CLUSTER_SECRET";
/// A secret file larger than this is not a secret file.
const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The cluster secret; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `--secret-file`: the file's content without its trailing newline; not empty.
pub fn read_secret_file(path: &str) -> Result<Secret, String> {
    let path = PathBuf::from(path);
    let shown = path.display();
    let meta = std::fs::metadata(&path).map_err(|e| format!("cannot read the secret file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("the secret file {shown} is not a regular file"));
    }
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(format!(
            "the secret file {shown} has {} bytes, more than a secret ({SECRET_FILE_BYTES_MAX})",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read the secret file {shown}: {e}"))?;
    let secret = text.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&text);
    if secret.is_empty() {
        return Err(format!("the secret file {shown} is empty"));
    }
    Ok(Secret(secret.to_string()))
}

/// `--jobmanager`: checked as the client will use it.
fn parse_jobmanager(s: &str) -> Result<String, String> {
    corestream::client::normalize_base_url(s).map_err(|e| e.to_string())
}

/// Where the JobManager is and how to prove the right to change things.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The JobManager's REST address (http://HOST:PORT).
    #[arg(long, value_name = "URL", default_value = DEFAULT_JOBMANAGER, value_parser = parse_jobmanager)]
    pub jobmanager: String,
    /// A file holding the cluster secret (one trailing newline is ignored), for submitting and
    /// cancelling. Default: the environment variable CORESTREAM_CONF_SECURITY_CLUSTER_SECRET.
    #[arg(long, value_name = "FILE", value_parser = read_secret_file)]
    pub secret_file: Option<Secret>,
}

impl Connection {
    pub(crate) fn client(&self) -> anyhow::Result<RestClient> {
        let secret = match &self.secret_file {
            Some(Secret(s)) => Some(s.clone()),
            None => std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()),
        };
        Ok(RestClient::new(&self.jobmanager, secret)?)
    }
}

#[derive(Args, Debug)]
#[command(after_help = "Everything after JOB is passed to the job verbatim, `--flags` and `-p` included: give the \
                  options of `submit` before JOB, e.g. `corestream submit -p 4 wordcount --input in.txt`. \
                  The job types a cluster runs: GET /v1/job-types.")]
pub struct SubmitArgs {
    /// Parallelism of the job (default: the free slots the job can use); 1 to 128.
    #[arg(long, short = 'p', value_parser = parse_parallelism)]
    pub parallelism: Option<u32>,
    /// Print the job id and return without waiting for the job to end.
    #[arg(long)]
    pub detached: bool,
    /// Stop waiting after this long, e.g. 10m (the job goes on); at most 1 hour. Default: wait
    /// until the job ends.
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION", conflicts_with = "detached")]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub checkpoints: crate::checkpointing::CheckpointArgs,
    /// The job type, e.g. wordcount, sum-by-key, window-agg, nexmark.
    #[arg(value_name = "JOB")]
    pub job: String,
    /// The job's arguments, passed verbatim.
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a job to a running JobManager; prints its id, and unless --detached waits for it
    /// to end and prints its result (exit 1 if it failed or was cancelled).
    Submit(SubmitArgs),
    /// List the jobs of a running JobManager.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a job on a running JobManager.
    Cancel {
        /// The job's id (32 hex digits, as `submit` and `list` print it).
        #[arg(value_name = "ID")]
        id: JobId,
        #[command(flatten)]
        connection: Connection,
    },
    /// Take a savepoint of a running job into DIR (default: the cluster's
    /// execution.checkpointing.savepoint-dir); waits for it and prints its directory, which
    /// `--from-savepoint` takes.
    Savepoint {
        /// The job's id (32 hex digits).
        #[arg(value_name = "ID")]
        id: JobId,
        /// An absolute directory every machine of the cluster reaches; the savepoint is made in
        /// a directory of its own inside it.
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Stop waiting after this long (the savepoint goes on); at most 1 hour.
        #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION", default_value = "10m")]
        timeout: Duration,
        #[command(flatten)]
        connection: Connection,
    },
    /// Stop a running job with a savepoint: the savepoint is taken, then the job is cancelled;
    /// prints the savepoint's directory. A job whose savepoint fails keeps running.
    Stop {
        /// The job's id (32 hex digits).
        #[arg(value_name = "ID")]
        id: JobId,
        /// Where the savepoint goes (as `savepoint`'s DIR).
        #[arg(long, value_name = "DIR")]
        savepoint: Option<PathBuf>,
        /// Stop waiting after this long (the savepoint goes on); at most 1 hour.
        #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION", default_value = "10m")]
        timeout: Duration,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a job: state, vertices with parallelism, records, backpressure, subtasks per
    /// TaskManager.
    Info {
        /// The job's id (32 hex digits).
        #[arg(value_name = "ID")]
        id: JobId,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Submit(args) => submit(args),
        ClientCommand::List { connection } => {
            let jobs = connection.client()?.jobs()?;
            print!("{}", format_jobs(&jobs));
            Ok(())
        }
        ClientCommand::Cancel { id, connection } => {
            let client = connection.client()?;
            client.cancel(id)?;
            println!("Cancellation of job {id} requested at {}", client.url());
            Ok(())
        }
        ClientCommand::Savepoint { id, dir, timeout, connection } => savepoint(id, dir, timeout, connection, false),
        ClientCommand::Stop { id, savepoint: dir, timeout, connection } => {
            savepoint(id, dir, timeout, connection, true)
        }
        ClientCommand::Info { id, connection } => {
            print!("{}", format_details(&connection.client()?.job(id)?));
            Ok(())
        }
    }
}

fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let recovery = args.checkpoints.require_recovery(crate::checkpointing::Paths::AbsoluteOnly);
    let request = SubmitRequest {
        job: args.job,
        args: args.args,
        parallelism: args.parallelism,
        checkpoints: recovery.checkpoints,
        restore: recovery.restore,
        allow_non_restored_state: recovery.allow_non_restored_state,
        restart_strategy: recovery.restart_strategy,
    };
    let id = client.submit(&request)?.jobid;
    if args.detached {
        println!("{id}");
        return Ok(());
    }
    println!("Job {id} ({}) submitted to {}", command_line(&request.job, &request.args), client.url());
    eprintln!("Waiting for the job to end; Ctrl-C stops waiting and the job goes on (`corestream cancel {id}`).");
    let outcome = client.wait_for_result(id, args.timeout.unwrap_or(Duration::MAX))?;
    print!("{}", format_outcome(id, &outcome));
    match outcome.state {
        JobState::Failed => {
            bail!("job {id} failed: {}", outcome.failure.as_deref().unwrap_or("the JobManager gave no reason"))
        }
        JobState::Cancelled => bail!("job {id} was cancelled"),
        _ => Ok(()),
    }
}

/// `savepoint` and `stop`: requests the savepoint, waits for it, prints its directory.
fn savepoint(
    id: JobId,
    dir: Option<PathBuf>,
    timeout: Duration,
    connection: Connection,
    stop: bool,
) -> anyhow::Result<()> {
    let target = match dir {
        Some(d) if !d.is_absolute() => {
            bail!("{}: give an absolute path; the JobManager writes the savepoint, not this client", d.display())
        }
        Some(d) => {
            Some(d.into_os_string().into_string().map_err(|d| anyhow::anyhow!("the path {d:?} is not valid UTF-8"))?)
        }
        None => None,
    };
    let client = connection.client()?;
    let request = client.trigger_savepoint(id, target, stop)?.request_id;
    let what = if stop { "stop-with-savepoint" } else { "savepoint" };
    eprintln!("{what} of job {id} requested (request {request}); waiting for it");
    let info = client.wait_for_savepoint(id, &request, timeout)?;
    match (info.status, info.location) {
        (SavepointStatus::Completed, Some(location)) => {
            println!("{location}");
            if stop {
                eprintln!("job {id} is being stopped; restart it with --from-savepoint {location}");
            }
            Ok(())
        }
        _ => bail!(
            "the {what} of job {id} failed: {}",
            info.failure.as_deref().unwrap_or("the JobManager gave no reason")
        ),
    }
}

fn command_line(job: &str, args: &[String]) -> String {
    std::iter::once(job).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}

/// A job state as the API spells it (`RUNNING`).
fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Created => "CREATED",
        JobState::Running => "RUNNING",
        JobState::Restarting => "RESTARTING",
        JobState::Cancelling => "CANCELLING",
        JobState::Finished => "FINISHED",
        JobState::Failed => "FAILED",
        JobState::Cancelled => "CANCELLED",
    }
}

fn task_state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Deploying => "DEPLOYING",
        TaskState::Running => "RUNNING",
        TaskState::Finished => "FINISHED",
        TaskState::Failed => "FAILED",
        TaskState::Cancelled => "CANCELLED",
    }
}

/// Milliseconds as `850 ms`, `12.345 s`, `3 min 05 s` or `2 h 03 min`.
pub fn format_millis(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.3} s", ms as f64 / 1e3),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn format_utc(epoch_ms: u64) -> String {
    let secs = epoch_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm), for the proleptic
    // Gregorian calendar.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// An accumulator's value on one line.
pub fn format_accumulator(value: &Accumulator) -> String {
    match value {
        Accumulator::Checksum(n) => format!("{n:#018x}"),
        Accumulator::Count(n) => n.to_string(),
        Accumulator::Sum(n) => n.to_string(),
        Accumulator::Max(n) | Accumulator::Min(n) => n.to_string(),
        Accumulator::Lines(lines) => format!("{lines:?}"),
        Accumulator::Histogram(bytes) => match Deserializer::new().deserialize::<u64, _>(&mut bytes.as_slice()) {
            Ok(h) if h.is_empty() => "histogram, empty".to_string(),
            Ok(h) => format!(
                "histogram: count {}, min {}, p50 {}, p99 {}, p99.9 {}, max {}",
                h.len(),
                h.min(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ),
            Err(e) => format!("histogram of {} bytes that cannot be read: {e}", bytes.len()),
        },
    }
}

/// What `submit` prints once the job has ended.
pub fn format_outcome(id: JobId, outcome: &JobOutcome) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Job {id} {} in {}", state_name(outcome.state), format_millis(outcome.duration_ms));
    if let Some(failure) = &outcome.failure {
        let _ = writeln!(out, "Failure: {failure}");
    }
    if let Some(ms) = outcome.all_running_ms {
        let _ = writeln!(out, "All tasks running after {ms:.1} ms");
    }
    let _ = writeln!(out, "Operators:");
    for op in &outcome.operators {
        let _ = writeln!(
            out,
            "  {} (parallelism {}): {} records in, {} out",
            op.name, op.parallelism, op.records_in, op.records_out
        );
    }
    if !outcome.accumulators.is_empty() {
        let _ = writeln!(out, "Accumulators:");
        for (name, value) in &outcome.accumulators {
            let _ = writeln!(out, "  {name}: {}", format_accumulator(value));
        }
    }
    if !outcome.warnings.is_empty() {
        let _ = writeln!(out, "Warnings:");
        for warning in &outcome.warnings {
            let _ = writeln!(out, "  {warning}");
        }
    }
    if !outcome.network.is_empty() {
        let _ = writeln!(out, "Network:");
        for line in &outcome.network {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The table `list` prints, oldest job first.
pub fn format_jobs(jobs: &[JobOverview]) -> String {
    if jobs.is_empty() {
        return "No jobs.\n".to_string();
    }
    let mut sorted: Vec<&JobOverview> = jobs.iter().collect();
    sorted.sort_by_key(|j| (j.start_time, j.jid));
    let name_width = sorted.iter().map(|j| j.name.len()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "{:<32}  {:<11}  {:<name_width$}  {:<19}  {:>12}  TASKS\n",
        "JOB ID", "STATE", "TYPE", "STARTED (UTC)", "DURATION"
    );
    for j in sorted {
        let state = state_name(j.state);
        let tasks = format!("{}/{} running", j.tasks.running, j.tasks.total);
        let _ = writeln!(
            out,
            "{:<32}  {state:<11}  {:<name_width$}  {}  {:>12}  {tasks}",
            j.jid.to_string(),
            j.name,
            format_utc(j.start_time),
            format_millis(j.duration_ms)
        );
    }
    out
}

/// What `info` prints.
pub fn format_details(d: &JobDetails) -> String {
    let o = &d.overview;
    let mut out = String::new();
    let _ = writeln!(out, "Job {} ({}): {}", o.jid, command_line(&o.name, &o.args), state_name(o.state));
    let ended = match o.end_time {
        Some(end) => format!(", ended {}", format_utc(end)),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  started {} UTC{ended}, duration {}, attempt {}, parallelism {}",
        format_utc(o.start_time),
        format_millis(o.duration_ms),
        o.attempts,
        d.parallelism
    );
    let t = &o.tasks;
    let _ = writeln!(
        out,
        "  tasks: {} total, {} deploying, {} running, {} finished, {} failed, {} cancelled",
        t.total, t.deploying, t.running, t.finished, t.failed, t.cancelled
    );
    if let Some(failure) = &d.failure {
        let _ = writeln!(out, "  failure: {failure}");
    }
    let _ = writeln!(out, "Vertices:");
    for v in &d.vertices {
        let _ = writeln!(out, "  {} {}", v.id, v.name);
        let _ = writeln!(
            out,
            "      parallelism {}, records in {}, out {}, backpressure {:.0}%",
            v.parallelism,
            v.records_in,
            v.records_out,
            v.backpressure_ratio.clamp(0.0, 1.0) * 100.0
        );
        let mut by_tm: BTreeMap<String, Vec<&corestream::jobmanager::api::SubtaskInfo>> = BTreeMap::new();
        for s in &v.subtasks {
            by_tm.entry(s.taskmanager.to_string()).or_default().push(s);
        }
        for (tm, subtasks) in by_tm {
            let list: Vec<String> = subtasks
                .iter()
                .map(|s| format!("{} (slot {}, {})", s.subtask, s.slot, task_state_name(s.state)))
                .collect();
            let _ = writeln!(out, "      TaskManager {tm}: {} subtask(s): {}", subtasks.len(), list.join(", "));
        }
    }
    if !d.plan.is_empty() {
        let _ = writeln!(out, "Plan:");
        for line in d.plan.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(line: &str) -> Result<ClientCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("corestream").chain(line.split_whitespace())).map(|c| c.command)
    }

    #[test]
    fn job_arguments_pass_through_verbatim() {
        let ClientCommand::Submit(s) =
            parse("submit -p 2 --detached wordcount --input in.txt -p 3 --detached").unwrap()
        else {
            panic!()
        };
        assert_eq!((s.parallelism, s.detached, s.job.as_str()), (Some(2), true, "wordcount"));
        assert_eq!(s.args, ["--input", "in.txt", "-p", "3", "--detached"]);
        assert_eq!(s.connection.jobmanager, DEFAULT_JOBMANAGER);
        let ClientCommand::Submit(s) = parse("submit --jobmanager jm:9 sum-by-key").unwrap() else { panic!() };
        assert_eq!((s.connection.jobmanager.as_str(), s.args.len()), ("http://jm:9", 0));
    }

    #[test]
    fn checkpoint_options_come_before_the_job_and_theirs_after_it_are_the_jobs() {
        let ClientCommand::Submit(s) = parse(
            "submit --checkpoint-interval 1s --checkpoint-dir /ck --unaligned --restart-strategy fixed-delay \
             sum-by-key --records 10 --checkpoint-interval 2s",
        )
        .unwrap() else {
            panic!()
        };
        let r = s.checkpoints.recovery(crate::checkpointing::Paths::AbsoluteOnly).unwrap();
        let c = r.checkpoints.unwrap();
        assert_eq!((c.interval_ms, c.dir.as_deref(), c.unaligned), (Some(1000), Some("/ck"), Some(true)));
        assert_eq!(r.restart_strategy.as_deref(), Some("fixed-delay"));
        assert_eq!(s.args, ["--records", "10", "--checkpoint-interval", "2s"]);
        let ClientCommand::Submit(s) = parse("submit --resume ck sum-by-key").unwrap() else { panic!() };
        let e = s.checkpoints.recovery(crate::checkpointing::Paths::AbsoluteOnly).unwrap_err();
        assert!(e.contains("give an absolute path"), "{e}");
    }

    #[test]
    fn invalid_arguments_are_refused() {
        for bad in [
            "submit",
            "submit -p 0 wordcount",
            "submit -p 129 wordcount",
            "submit --jobmanager https://jm:1 wordcount",
            "submit --detached --timeout 1s wordcount",
            "submit --secret-file /nonexistent/secret wordcount",
            "cancel",
            "cancel 1234",
            "info zz000000000000000000000000000000",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let e = parse("cancel 1234").unwrap_err().to_string();
        assert!(e.contains("'1234' is not a valid job id"), "{e}");
        assert!(matches!(parse("list --jobmanager 127.0.0.1:8082"), Ok(ClientCommand::List { .. })));
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_secret_file(path.to_str().unwrap()).unwrap().0, "s3cret");
        std::fs::write(&path, "two words\r\n").unwrap();
        assert_eq!(read_secret_file(path.to_str().unwrap()).unwrap().0, "two words");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file(path.to_str().unwrap()).unwrap_err().contains("is empty"));
        assert!(read_secret_file(dir.path().to_str().unwrap()).unwrap_err().contains("not a regular file"));
        assert!(!format!("{:?}", Secret("s3cret".into())).contains("s3cret"));
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_utc(4_102_444_799_999), "2099-12-31 23:59:59");
        assert_eq!(format_millis(850), "850 ms");
        assert_eq!(format_millis(12_345), "12.345 s");
        assert_eq!(format_millis(185_000), "3 min 05 s");
        assert_eq!(format_millis(7_380_000), "2 h 03 min");
    }

    #[test]
    fn accumulators_on_one_line() {
        assert_eq!(format_accumulator(&Accumulator::Count(7)), "7");
        assert_eq!(format_accumulator(&Accumulator::Sum(-(1i128 << 100))), "-1267650600228229401496703205376");
        assert_eq!(format_accumulator(&Accumulator::Checksum(255)), "0x00000000000000ff");
        assert_eq!(format_accumulator(&Accumulator::Lines(vec!["a b".into(), "c".into()])), r#"["a b", "c"]"#);
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for v in 1..=100 {
            h.record(v).unwrap();
        }
        let mut bytes = Vec::new();
        hdrhistogram::serialization::Serializer::serialize(
            &mut hdrhistogram::serialization::V2Serializer::new(),
            &h,
            &mut bytes,
        )
        .unwrap();
        assert_eq!(
            format_accumulator(&Accumulator::Histogram(bytes)),
            "histogram: count 100, min 1, p50 50, p99 99, p99.9 100, max 100"
        );
        assert!(format_accumulator(&Accumulator::Histogram(vec![1, 2])).contains("cannot be read"));
    }

    #[test]
    fn the_outcome_names_the_time_to_all_running() {
        let outcome = JobOutcome {
            state: JobState::Finished,
            duration_ms: 1234,
            failure: None,
            operators: Vec::new(),
            accumulators: Default::default(),
            warnings: Vec::new(),
            network: Vec::new(),
            parts: Vec::new(),
            all_running_ms: Some(12.25),
        };
        let text = format_outcome(JobId::random(), &outcome);
        assert!(text.lines().any(|l| l == "All tasks running after 12.2 ms"), "{text}");
        let text = format_outcome(JobId::random(), &JobOutcome { all_running_ms: None, ..outcome });
        assert!(!text.contains("All tasks running"), "{text}");
    }
}
