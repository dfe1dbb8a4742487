//! `corestream checkpoints list DIR` over checkpoints written by the engine's
//! `FsCheckpointStorage`: complete ones with their time, size, duration and mode; incomplete
//! and corrupt directories with the reason; a missing directory is an error.

mod common;

use std::path::Path;
use std::time::Duration;

use common::run_corestream;
use corestream::checkpoint::metadata::{CheckpointMetadata, TaskEntry, VertexInfo, METADATA_FORMAT};
use corestream::checkpoint::storage::{CheckpointStorage, FsCheckpointStorage};
use corestream::checkpoint::{
    CheckpointId, CheckpointMode, OperatorStateParts, PartLayout, TaskCheckpointMetrics, TaskId, TaskSnapshot,
};

const WATCHDOG: Duration = Duration::from_secs(60);
/// 2023-11-14T22:13:20Z.
const EPOCH_MS: u64 = 1_700_000_000_000;

/// Writes complete checkpoint `id` of a job with a source (parallelism 2) and a sink.
fn write(storage: &FsCheckpointStorage, id: CheckpointId, mode: CheckpointMode, unaligned: bool, state: usize) {
    let vertices = vec![
        VertexInfo { name: "Source: numbers".into(), parallelism: 2, max_parallelism: 128, operators: Vec::new() },
        VertexInfo { name: "Sum -> Sink".into(), parallelism: 1, max_parallelism: 128, operators: Vec::new() },
    ];
    let tasks = [(0, 0), (0, 1), (1, 0)]
        .into_iter()
        .map(|(vertex, subtask)| {
            let task = TaskId { vertex, subtask };
            let mut parts = OperatorStateParts::default();
            parts.push("keyed", PartLayout::KeyGroups, vec![id as u8; state]);
            let mut snapshot = TaskSnapshot::default();
            snapshot.put_node(vertex as usize, parts);
            let handle = storage.write_task_state(id, task, &snapshot).unwrap();
            TaskEntry { task, handle, metrics: TaskCheckpointMetrics { unaligned, ..Default::default() } }
        })
        .collect::<Vec<_>>();
    let meta = CheckpointMetadata {
        format: METADATA_FORMAT,
        job: "sum-by-key".into(),
        vertices,
        id,
        trigger_ms: EPOCH_MS + id * 1000,
        completed_ms: EPOCH_MS + id * 1000 + 250,
        mode,
        savepoint: false,
        unaligned,
        state_bytes: tasks.iter().map(|t| t.handle.size).sum(),
        tasks,
    };
    storage.write_metadata(&meta).unwrap();
}

fn list(dir: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["checkpoints".to_string(), "list".into(), dir.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run_corestream(&args, WATCHDOG);
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn line_of<'a>(stdout: &'a str, id: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no line for checkpoint {id} in:\n{stdout}"))
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn lists_complete_incomplete_and_corrupt_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
    write(&storage, 1, CheckpointMode::ExactlyOnce, false, 600);
    write(&storage, 2, CheckpointMode::ExactlyOnce, true, 1 << 20);
    write(&storage, 3, CheckpointMode::AtLeastOnce, false, 10);
    for id in 4..=7 {
        write(&storage, id, CheckpointMode::ExactlyOnce, false, 100);
    }
    let chk = |id: u64, file: &str| tmp.path().join(format!("chk-{id}/{file}"));
    std::fs::remove_file(chk(4, "_metadata")).unwrap();
    damage(&chk(5, "_metadata"), |b| b.truncate(b.len() - 4));
    damage(&chk(6, "task-0-1.state"), |b| b.truncate(b.len() - 1));
    damage(&chk(7, "task-1-0.state"), |b| {
        let last = b.len() - 1;
        b[last] ^= 0x10;
    });

    let (code, stdout, stderr) = list(tmp.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let header = stdout.lines().next().unwrap();
    for column in ["ID", "COMPLETED (UTC)", "SIZE", "DURATION", "MODE"] {
        assert!(header.contains(column), "{header}");
    }
    let one = line_of(&stdout, "1");
    assert!(one.contains("2023-11-14T22:13:21.250Z"), "{one}");
    assert!(one.contains(" B ") || one.contains("KiB"), "{one}");
    assert!(one.contains("250 ms") && one.ends_with("exactly-once, aligned"), "{one}");
    let two = line_of(&stdout, "2");
    assert!(two.contains("3.0 MiB") && two.ends_with("exactly-once, unaligned"), "{two}");
    assert!(line_of(&stdout, "3").ends_with("at-least-once"));
    assert!(line_of(&stdout, "4").ends_with("incomplete (no _metadata)"));
    let five = line_of(&stdout, "5");
    assert!(
        five.contains("corrupt: truncated: ") && five.contains(&chk(5, "_metadata").display().to_string()),
        "{five}"
    );
    let six = line_of(&stdout, "6");
    assert!(six.contains("corrupt: truncated: ") && six.contains("chk-6/task-0-1.state"), "{six}");
    assert!(line_of(&stdout, "7").ends_with("exactly-once, aligned"), "a flipped byte needs --verify");
    let summary = stdout.lines().last().unwrap();
    assert!(summary.starts_with("4 complete (newest chk-7), 1 incomplete, 2 corrupt in "), "{summary}");
    assert!(summary.ends_with("; task files checked by size (--verify reads them)"), "{summary}");

    let (code, stdout, stderr) = list(tmp.path(), &["--verify"]);
    assert_eq!(code, Some(0), "{stderr}");
    let seven = line_of(&stdout, "7");
    assert!(seven.contains("corrupt: checksum mismatch in ") && seven.contains("chk-7/task-1-0.state"), "{seven}");
    assert!(line_of(&stdout, "1").ends_with("exactly-once, aligned"));
    let summary = stdout.lines().last().unwrap();
    assert!(summary.starts_with("3 complete (newest chk-3), 1 incomplete, 3 corrupt"), "{summary}");
    assert!(summary.ends_with("; every task file's checksum verified"), "{summary}");
    let ids: Vec<&str> = stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(&ids[..7], ["1", "2", "3", "4", "5", "6", "7"], "ascending ids");
}

#[test]
fn an_empty_directory_has_no_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("not-a-checkpoint")).unwrap();
    let (code, stdout, stderr) = list(tmp.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("no checkpoints in {}\n", tmp.path().display()));
}

#[test]
fn a_missing_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let (code, stdout, stderr) = list(&missing, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.trim_end(), format!("error: {}: no such checkpoint directory", missing.display()));
}

#[test]
fn a_file_given_as_the_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let (code, _, stderr) = list(&file, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no such checkpoint directory"), "{stderr}");
}
