//! `corestream checkpoints list DIR`: the checkpoints in a checkpoint directory, one line
//! each — the complete ones with completion time, size, duration and mode, and every
//! `chk-*` directory that is not complete (no `_metadata`) or whose metadata or task files
//! fail their checks, with the reason. Reading only: nothing in DIR is changed.
//!
//! `corestream checkpoints trigger JOB_ID [--wait]` and `corestream checkpoints stats JOB_ID`
//! talk to a running JobManager's REST API (`--jobmanager`, as `submit` and `list` do):
//! `trigger` asks for a checkpoint now (`POST /v1/jobs/{id}/checkpoints`; the cluster secret
//! authenticates it) and prints its id, and with `--wait` follows it until it completed or
//! failed (exit 1); `stats` prints the job's counts, latest checkpoints, summary, the latest
//! completed checkpoint per vertex and the history (`GET /v1/jobs/{id}/checkpoints`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use corestream::checkpoint::metadata::CheckpointMetadata;
use corestream::checkpoint::storage::{CheckpointStorage, FsCheckpointStorage, StorageError};
use corestream::checkpoint::{CheckpointId, CheckpointMode};
use corestream::jobmanager::api::{
    CheckpointDetails, CheckpointInfo, CheckpointStatusInfo, CheckpointType, CheckpointingStatistics, MinAvgMax,
};
use corestream::rpc::ids::JobId;

use crate::args::parse_positive_duration;
use crate::client_cli::{format_millis, format_utc, Connection};

/// How long `trigger --wait` follows a checkpoint by default: the default checkpoint timeout
/// (`execution.checkpointing.timeout`), after which the JobManager fails it anyway.
const DEFAULT_WAIT: Duration = Duration::from_secs(600);

#[derive(Subcommand, Debug)]
pub enum CheckpointsCommand {
    /// List the checkpoints in a checkpoint directory (`--checkpoint-dir` of a job): id,
    /// completion time (UTC), size, duration and mode of each complete one, and the reason
    /// for every other `chk-<id>` directory (incomplete, corrupt).
    List(ListArgs),
    /// Trigger a checkpoint of a running job on a JobManager now; prints its id, and with
    /// --wait waits until it completed (exit 1 if it failed). A manual checkpoint ignores the
    /// interval and the minimum pause but not the most allowed in progress at once.
    Trigger(TriggerArgs),
    /// Show a job's checkpoints on a JobManager: counts, the latest completed, failed and
    /// restored, a summary, the latest completed per vertex, and the newest checkpoints.
    Stats(StatsArgs),
}

#[derive(Args, Debug)]
pub struct TriggerArgs {
    /// The job's id (32 hex digits, as `submit` and `list` print it).
    #[arg(value_name = "JOB_ID")]
    id: JobId,
    /// Wait until the checkpoint completed or failed, and print its duration and size.
    #[arg(long)]
    wait: bool,
    /// With --wait: stop waiting after this long, e.g. 30s (the checkpoint goes on); at most 1
    /// hour. Default: 10m, the default checkpoint timeout.
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION", requires = "wait")]
    timeout: Option<Duration>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The job's id (32 hex digits).
    #[arg(value_name = "JOB_ID")]
    id: JobId,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// The checkpoint directory.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Also read every task file and check its checksum (by default only the metadata's
    /// checksum and the task files' sizes are checked).
    #[arg(long)]
    verify: bool,
}

pub fn run(command: CheckpointsCommand) -> anyhow::Result<()> {
    match command {
        CheckpointsCommand::List(args) => {
            let storage = FsCheckpointStorage::open(&args.dir).map_err(|e| match e {
                StorageError::NoDirectory { dir } => {
                    anyhow::anyhow!("{}: no such checkpoint directory", dir.display())
                }
                e => e.into(),
            })?;
            let rows = list(&storage, args.verify)?;
            print!("{}", render(&rows, &storage, args.verify));
            Ok(())
        }
        CheckpointsCommand::Trigger(args) => {
            let client = args.connection.client()?;
            let checkpoint = client.trigger_checkpoint(args.id)?.checkpoint_id;
            println!("Checkpoint {checkpoint} of job {} triggered at {}", args.id, client.url());
            if !args.wait {
                return Ok(());
            }
            let details = client.wait_for_checkpoint(args.id, checkpoint, args.timeout.unwrap_or(DEFAULT_WAIT))?;
            print!("{}", format_ended(&details));
            if details.checkpoint.status == CheckpointStatusInfo::Failed {
                bail!(
                    "checkpoint {checkpoint} of job {} failed: {}",
                    args.id,
                    details.checkpoint.failure_message.as_deref().unwrap_or("the JobManager gave no reason")
                );
            }
            Ok(())
        }
        CheckpointsCommand::Stats(args) => {
            let stats = args.connection.client()?.checkpoints(args.id)?;
            print!("{}", format_stats(args.id, &stats));
            Ok(())
        }
    }
}

fn status_name(status: CheckpointStatusInfo) -> &'static str {
    match status {
        CheckpointStatusInfo::InProgress => "IN_PROGRESS",
        CheckpointStatusInfo::Completed => "COMPLETED",
        CheckpointStatusInfo::Failed => "FAILED",
    }
}

/// `aligned`, `unaligned` or `savepoint`, and `manual` for one triggered over REST.
fn kind(c: &CheckpointInfo) -> String {
    let kind = match c.checkpoint_type {
        CheckpointType::Checkpoint => "aligned",
        CheckpointType::UnalignedCheckpoint => "unaligned",
        CheckpointType::Savepoint => "savepoint",
    };
    if c.manual {
        format!("{kind}, manual")
    } else {
        kind.to_string()
    }
}

/// One line about a checkpoint that ended, as `trigger --wait` prints it.
fn format_ended(d: &CheckpointDetails) -> String {
    let c = &d.checkpoint;
    match c.status {
        CheckpointStatusInfo::Failed => format!(
            "Checkpoint {} FAILED after {}: {}\n",
            c.id,
            format_millis(c.end_to_end_duration_ms),
            c.failure_message.as_deref().unwrap_or("no reason given")
        ),
        status => format!(
            "Checkpoint {} {} in {}: {} written ({} of state, {} of in-flight data), {}, {} of {} subtasks\n",
            c.id,
            status_name(status),
            format_millis(c.end_to_end_duration_ms),
            human_bytes(c.checkpointed_size_bytes),
            human_bytes(c.state_size_bytes),
            human_bytes(c.persisted_data_bytes),
            kind(c),
            c.num_acknowledged_subtasks,
            c.num_subtasks
        ),
    }
}

/// Microseconds of CPU time, in milliseconds.
fn format_cpu(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1e3)
}

fn format_figure(f: &MinAvgMax, show: fn(u64) -> String) -> String {
    format!("min {} / avg {} / max {}", show(f.min), show(f.avg), show(f.max))
}

/// Rows as columns padded to their widest cell, two spaces apart, the last one unpadded.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..n).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push('\n');
    }
    out
}

/// What `checkpoints stats` prints.
fn format_stats(id: JobId, s: &CheckpointingStatistics) -> String {
    let c = &s.counts;
    let mut out = format!(
        "Job {id}: {} checkpoint(s) triggered, {} completed, {} failed, {} in progress; restored {} time(s)\n",
        c.total, c.completed, c.failed, c.in_progress, c.restored
    );
    if c.total == 0 && s.latest.restored.is_none() {
        out.push_str("No checkpoints (GET /v1/jobs/{id}/checkpoints/config tells whether the job takes any).\n");
        return out;
    }
    let line = |c: &CheckpointInfo| {
        format!(
            "{} at {} UTC, {}, {}, {}",
            c.id,
            format_utc(c.trigger_timestamp),
            format_millis(c.end_to_end_duration_ms),
            human_bytes(c.checkpointed_size_bytes),
            kind(c)
        )
    };
    if let Some(done) = &s.latest.completed {
        let _ = writeln!(out, "Latest completed: {}", line(done));
    }
    if let Some(failed) = &s.latest.failed {
        let why = failed.failure_message.as_deref().unwrap_or("no reason given");
        let _ = writeln!(out, "Latest failed: {}: {why}", line(failed));
    }
    if let Some(r) = &s.latest.restored {
        let _ =
            writeln!(out, "Restored from: {} ({}) at {} UTC", r.id, r.external_path, format_utc(r.restore_timestamp));
    }
    let sum = &s.summary;
    if sum.completed > 0 {
        let _ = writeln!(
            out,
            "Over {} completed: duration {}; size {}; in-flight data {}; CPU {}",
            sum.completed,
            format_figure(&sum.end_to_end_duration_ms, format_millis),
            format_figure(&sum.checkpointed_size_bytes, human_bytes),
            format_figure(&sum.persisted_data_bytes, human_bytes),
            format_figure(&sum.cpu_time_us, format_cpu)
        );
    }
    if let Some(done) = s.latest.completed.as_ref().filter(|d| !d.tasks.is_empty()) {
        let _ = writeln!(out, "\nLatest completed checkpoint {} by vertex:", done.id);
        let mut rows = vec![["VERTEX", "ACKS", "SIZE", "STATE", "IN-FLIGHT", "ALIGNMENT", "SYNC", "ASYNC", "CPU"]
            .map(String::from)
            .to_vec()];
        for v in &done.tasks {
            rows.push(vec![
                format!("{} {}", v.id, v.name),
                format!("{}/{}", v.num_acknowledged_subtasks, v.num_subtasks),
                human_bytes(v.checkpointed_size_bytes),
                human_bytes(v.state_size_bytes),
                human_bytes(v.persisted_data_bytes),
                format_millis(v.alignment_duration_ms),
                format_millis(v.sync_duration_ms),
                format_millis(v.async_duration_ms),
                format_cpu(v.cpu_time_us),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    if !s.history.is_empty() {
        let _ = writeln!(out, "\nNewest {} checkpoint(s):", s.history.len());
        let mut rows =
            vec![["ID", "STATUS", "TRIGGERED (UTC)", "DURATION", "SIZE", "ACKS", "TYPE"].map(String::from).to_vec()];
        for c in &s.history {
            let mut kind = kind(c);
            if let Some(why) = &c.failure_message {
                let _ = write!(kind, "; {why}");
            }
            rows.push(vec![
                c.id.to_string(),
                status_name(c.status).to_string(),
                format_utc(c.trigger_timestamp),
                format_millis(c.end_to_end_duration_ms),
                human_bytes(c.checkpointed_size_bytes),
                format!("{}/{}", c.num_acknowledged_subtasks, c.num_subtasks),
                kind,
            ]);
        }
        out.push_str(&columns(&rows));
    }
    out
}

/// One `chk-<id>` directory.
#[derive(Debug)]
enum Row {
    Complete(Box<CheckpointMetadata>),
    Incomplete(CheckpointId),
    Corrupt(CheckpointId, String),
}

fn list(storage: &FsCheckpointStorage, verify: bool) -> anyhow::Result<Vec<Row>> {
    let complete = storage.list().context("cannot list the checkpoints")?;
    let all = storage.list_all().context("cannot list the checkpoints")?;
    Ok(all
        .into_iter()
        .map(|id| {
            if complete.binary_search(&id).is_err() {
                return Row::Incomplete(id);
            }
            match storage.read_metadata(id).and_then(|meta| check_files(storage, &meta, verify).map(|()| meta)) {
                Ok(meta) => Row::Complete(Box::new(meta)),
                Err(e) => Row::Corrupt(id, e.to_string()),
            }
        })
        .collect())
}

/// Every task file of `meta` exists with its size; with `verify`, also its checksum.
fn check_files(storage: &FsCheckpointStorage, meta: &CheckpointMetadata, verify: bool) -> Result<(), StorageError> {
    for entry in &meta.tasks {
        if verify {
            storage.read_task_state(&entry.handle)?;
        } else {
            storage.check_task_file_size(&entry.handle)?;
        }
    }
    Ok(())
}

fn render(rows: &[Row], storage: &FsCheckpointStorage, verified: bool) -> String {
    if rows.is_empty() {
        return format!("no checkpoints in {}\n", storage.dir().display());
    }
    let mut table = vec![["ID", "COMPLETED (UTC)", "SIZE", "DURATION", "MODE"].map(String::from).to_vec()];
    for row in rows {
        table.push(match row {
            Row::Complete(m) => vec![
                m.id.to_string(),
                rfc3339_utc(m.completed_ms),
                human_bytes(m.state_bytes),
                format_millis(m.duration_ms()),
                mode(m),
            ],
            Row::Incomplete(id) => {
                vec![id.to_string(), "-".into(), "-".into(), "-".into(), "incomplete (no _metadata)".into()]
            }
            Row::Corrupt(id, why) => {
                vec![id.to_string(), "-".into(), "-".into(), "-".into(), format!("corrupt: {why}")]
            }
        });
    }
    let widths: Vec<usize> = (0..4).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &table {
        for (c, width) in widths.iter().enumerate() {
            out.push_str(&format!("{:<width$}  ", row[c]));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    let count = |f: fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    let complete = count(|r| matches!(r, Row::Complete(_)));
    let newest = rows.iter().rev().find_map(|r| if let Row::Complete(m) = r { Some(m.id) } else { None });
    out.push_str(&format!(
        "{complete} complete{}, {} incomplete, {} corrupt in {}{}\n",
        newest.map(|id| format!(" (newest chk-{id})")).unwrap_or_default(),
        count(|r| matches!(r, Row::Incomplete(_))),
        count(|r| matches!(r, Row::Corrupt(..))),
        storage.dir().display(),
        if verified {
            "; every task file's checksum verified"
        } else {
            "; task files checked by size (--verify reads them)"
        }
    ));
    out
}

fn mode(meta: &CheckpointMetadata) -> String {
    match (meta.mode, meta.unaligned) {
        (CheckpointMode::AtLeastOnce, _) => "at-least-once".into(),
        (CheckpointMode::ExactlyOnce, false) => "exactly-once, aligned".into(),
        (CheckpointMode::ExactlyOnce, true) => "exactly-once, unaligned".into(),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, with milliseconds.
fn rfc3339_utc(epoch_ms: u64) -> String {
    format!("{}.{:03}Z", format_utc(epoch_ms).replacen(' ', "T", 1), epoch_ms % 1000)
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `20.0 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use corestream::jobmanager::api::{
        CheckpointCountsInfo, CheckpointSummaryInfo, LatestCheckpoints, RestoredCheckpointInfo, VertexCheckpointInfo,
    };

    fn checkpoint(id: u64, status: CheckpointStatusInfo) -> CheckpointInfo {
        CheckpointInfo {
            id,
            status,
            checkpoint_type: if id == 2 { CheckpointType::UnalignedCheckpoint } else { CheckpointType::Checkpoint },
            manual: id == 3,
            trigger_timestamp: 1_700_000_000_000 + id * 1000,
            latest_ack_timestamp: None,
            end_timestamp: None,
            end_to_end_duration_ms: 40 + id,
            checkpointed_size_bytes: 1536 * id,
            state_size_bytes: 1024 * id,
            persisted_data_bytes: if id == 2 { 2048 } else { 0 },
            alignment_duration_ms: 1,
            sync_duration_ms: 2,
            async_duration_ms: 3,
            cpu_time_us: 4_250,
            num_subtasks: 3,
            num_acknowledged_subtasks: if status == CheckpointStatusInfo::Completed { 3 } else { 1 },
            failure_message: (status == CheckpointStatusInfo::Failed).then(|| "declined by task 1/0: full".into()),
            tasks: vec![VertexCheckpointInfo {
                id: 0,
                name: "Source: generator".into(),
                num_subtasks: 3,
                num_acknowledged_subtasks: 3,
                latest_ack_timestamp: None,
                end_to_end_duration_ms: 40,
                checkpointed_size_bytes: 1536,
                state_size_bytes: 1024,
                persisted_data_bytes: 0,
                alignment_duration_ms: 0,
                sync_duration_ms: 2,
                async_duration_ms: 3,
                cpu_time_us: 4_250,
            }],
        }
    }

    #[test]
    fn stats_are_printed_with_counts_latest_summary_vertices_and_history() {
        let id: JobId = "000102030405060708090a0b0c0d0e0f".parse().unwrap();
        let empty = format_stats(id, &CheckpointingStatistics::default());
        assert_eq!(
            empty,
            "Job 000102030405060708090a0b0c0d0e0f: 0 checkpoint(s) triggered, 0 completed, 0 failed, 0 in progress; \
             restored 0 time(s)\nNo checkpoints (GET /v1/jobs/{id}/checkpoints/config tells whether the job takes \
             any).\n"
        );
        let stats = CheckpointingStatistics {
            counts: CheckpointCountsInfo { restored: 1, total: 3, in_progress: 0, completed: 2, failed: 1 },
            summary: CheckpointSummaryInfo {
                completed: 2,
                end_to_end_duration_ms: MinAvgMax { min: 41, avg: 42, max: 43 },
                checkpointed_size_bytes: MinAvgMax { min: 1536, avg: 3072, max: 4608 },
                state_size_bytes: MinAvgMax::default(),
                persisted_data_bytes: MinAvgMax { min: 0, avg: 0, max: 2048 },
                cpu_time_us: MinAvgMax { min: 3_000, avg: 4_250, max: 5_500 },
            },
            latest: LatestCheckpoints {
                completed: Some(checkpoint(3, CheckpointStatusInfo::Completed)),
                failed: Some(checkpoint(2, CheckpointStatusInfo::Failed)),
                restored: Some(RestoredCheckpointInfo {
                    id: 7,
                    restore_timestamp: 1_700_000_000_000,
                    external_path: "/ck/chk-7".into(),
                }),
            },
            history: vec![
                checkpoint(3, CheckpointStatusInfo::Completed),
                checkpoint(2, CheckpointStatusInfo::Failed),
                checkpoint(1, CheckpointStatusInfo::Completed),
            ],
            retained: Vec::new(),
        };
        let text = format_stats(id, &stats);
        let expected = "\
Job 000102030405060708090a0b0c0d0e0f: 3 checkpoint(s) triggered, 2 completed, 1 failed, 0 in progress; restored 1 time(s)
Latest completed: 3 at 2023-11-14 22:13:23 UTC, 43 ms, 4.5 KiB, aligned, manual
Latest failed: 2 at 2023-11-14 22:13:22 UTC, 42 ms, 3.0 KiB, unaligned: declined by task 1/0: full
Restored from: 7 (/ck/chk-7) at 2023-11-14 22:13:20 UTC
Over 2 completed: duration min 41 ms / avg 42 ms / max 43 ms; size min 1.5 KiB / avg 3.0 KiB / max 4.5 KiB; in-flight data min 0 B / avg 0 B / max 2.0 KiB; CPU min 3.0 ms / avg 4.2 ms / max 5.5 ms

Latest completed checkpoint 3 by vertex:
VERTEX               ACKS  SIZE     STATE    IN-FLIGHT  ALIGNMENT  SYNC  ASYNC  CPU
0 Source: generator  3/3   1.5 KiB  1.0 KiB  0 B        0 ms       2 ms  3 ms   4.2 ms

Newest 3 checkpoint(s):
ID  STATUS     TRIGGERED (UTC)      DURATION  SIZE     ACKS  TYPE
3   COMPLETED  2023-11-14 22:13:23  43 ms     4.5 KiB  3/3   aligned, manual
2   FAILED     2023-11-14 22:13:22  42 ms     3.0 KiB  1/3   unaligned; declined by task 1/0: full
1   COMPLETED  2023-11-14 22:13:21  41 ms     1.5 KiB  3/3   aligned
";
        assert_eq!(text, expected, "\n{text}");
    }

    fn parse(line: &str) -> Result<CheckpointsCommand, clap::Error> {
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(subcommand)]
            command: CheckpointsCommand,
        }
        <Cli as clap::Parser>::try_parse_from(std::iter::once("checkpoints").chain(line.split_whitespace()))
            .map(|c| c.command)
    }

    #[test]
    fn trigger_and_stats_arguments() {
        const ID: &str = "000102030405060708090a0b0c0d0e0f";
        let CheckpointsCommand::Trigger(t) =
            parse(&format!("trigger {ID} --wait --timeout 30s --jobmanager jm:9")).unwrap()
        else {
            panic!()
        };
        assert_eq!((t.id.to_string().as_str(), t.wait, t.timeout), (ID, true, Some(Duration::from_secs(30))));
        assert_eq!(t.connection.jobmanager, "http://jm:9");
        let CheckpointsCommand::Trigger(t) = parse(&format!("trigger {ID}")).unwrap() else { panic!() };
        assert_eq!((t.wait, t.timeout), (false, None));
        let CheckpointsCommand::Stats(s) = parse(&format!("stats {ID}")).unwrap() else { panic!() };
        assert_eq!(s.connection.jobmanager, crate::client_cli::DEFAULT_JOBMANAGER);
        for (bad, needle) in [
            (format!("trigger {ID} --timeout 30s"), "--wait"),
            (format!("trigger {ID} --wait --timeout 0"), "must be more than 0"),
            ("trigger 1234".to_string(), "'1234' is not a valid job id"),
            ("stats".to_string(), "JOB_ID"),
            (format!("stats {ID} --jobmanager https://jm:1"), "`https` is not supported"),
        ] {
            let e = parse(&bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn an_ended_checkpoint_is_one_line() {
        let details = |status| CheckpointDetails { checkpoint: checkpoint(2, status), subtasks: Vec::new() };
        assert_eq!(
            format_ended(&details(CheckpointStatusInfo::Completed)),
            "Checkpoint 2 COMPLETED in 42 ms: 3.0 KiB written (2.0 KiB of state, 2.0 KiB of in-flight data), \
             unaligned, 3 of 3 subtasks\n"
        );
        assert_eq!(
            format_ended(&details(CheckpointStatusInfo::Failed)),
            "Checkpoint 2 FAILED after 42 ms: declined by task 1/0: full\n"
        );
    }

    #[test]
    fn sizes_and_times_are_formatted() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 20), "20.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
