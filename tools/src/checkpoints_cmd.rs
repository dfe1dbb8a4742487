//! `corestream checkpoints list DIR`: the checkpoints in a checkpoint directory, one line
//! each — the complete ones with completion time, size, duration and mode, and every
//! `chk-*` directory that is not complete (no `_metadata`) or whose metadata or task files
//! fail their checks, with the reason. Reading only: nothing in DIR is changed.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use corestream::checkpoint::metadata::CheckpointMetadata;
use corestream::checkpoint::storage::{CheckpointStorage, FsCheckpointStorage, StorageError};
use corestream::checkpoint::{CheckpointId, CheckpointMode};

use crate::client_cli::{format_millis, format_utc};

#[derive(Subcommand, Debug)]
pub enum CheckpointsCommand {
    /// List the checkpoints in a checkpoint directory (`--checkpoint-dir` of a job): id,
    /// completion time (UTC), size, duration and mode of each complete one, and the reason
    /// for every other `chk-<id>` directory (incomplete, corrupt).
    List(ListArgs),
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
    }
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
