//! Choosing and loading the checkpoint a job restarts from: `--resume DIR` takes the newest
//! complete checkpoint in `DIR` whose metadata and every task file pass their checks, falling
//! back to the previous one when the newest is damaged (each skipped checkpoint is logged,
//! naming the file); `--from-checkpoint DIR/chk-N` takes exactly that one or fails. A
//! checkpoint of a job with other vertices or parallelism is refused, never used and never
//! skipped over. The choice is [`choose_restore`]'s; this module reads the files for it.

use std::path::{Path, PathBuf};

use super::assign::{assign, stateful_operators, Assignment};
use super::coordinator::{choose_restore, CompletedCheckpoint, Verdict};
use super::metadata::{parse_checkpoint_dir_name, CheckpointMetadata, VertexInfo};
use super::storage::{CheckpointStorage, FsCheckpointStorage, StorageError};
use super::CheckpointId;

/// Where a job restores from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreFrom {
    /// `--resume DIR`: the newest complete and valid checkpoint in the checkpoint directory.
    Latest(PathBuf),
    /// `--from-checkpoint DIR/chk-N`: this checkpoint, with no fallback.
    Checkpoint(PathBuf),
    /// `--from-savepoint PATH`: the savepoint in this directory (or the checkpoint `chk-N` it
    /// names, or the `_metadata` file of either), with no fallback.
    Savepoint(PathBuf),
}

/// A checkpoint loaded for a restore: every task's snapshot, verified.
#[derive(Debug)]
pub struct RestorePoint {
    /// Its metadata; every task file it names was checked (size, checksum, a valid archive),
    /// not loaded: the TaskManagers load what their tasks restore.
    pub metadata: CheckpointMetadata,
    /// How a changed job (other parallelism, operators) takes its state; `None` for the same
    /// layout.
    pub assignment: Option<Assignment>,
    /// Newer checkpoints that were skipped, newest first, with why.
    pub skipped: Vec<(CheckpointId, StorageError)>,
    /// The checkpoint directory (the parent of `chk-<id>`), where the job keeps checkpointing.
    pub dir: PathBuf,
    /// The id the restored job's first checkpoint takes: after every checkpoint directory.
    pub next_id: CheckpointId,
}

/// Why a job cannot restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot restore: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot restore: no complete checkpoint in {}{}", dir.display(), incomplete_note(incomplete))]
    NoCheckpoint { dir: PathBuf, incomplete: Vec<CheckpointId> },
    #[error("cannot restore: no valid checkpoint in {}:{}", dir.display(), list_skipped(skipped))]
    NoValidCheckpoint { dir: PathBuf, skipped: Vec<(CheckpointId, StorageError)> },
    #[error("cannot restore from {}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("cannot restore from {}: not a checkpoint directory (its name must be chk-<id>, inside the checkpoint directory)", path.display())]
    NotCheckpointPath { path: PathBuf },
    #[error("cannot restore from {}: {reason}", path.display())]
    NotSavepoint { path: PathBuf, reason: String },
    #[error("cannot restore from {}: it was taken by another job: {difference}", path.display())]
    OtherJob { path: PathBuf, difference: String },
}

fn incomplete_note(incomplete: &[CheckpointId]) -> String {
    match incomplete {
        [] => String::new(),
        ids => format!(
            " ({} without _metadata, never completed: {})",
            ids.len(),
            ids.iter().map(|id| format!("chk-{id}")).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn list_skipped(skipped: &[(CheckpointId, StorageError)]) -> String {
    skipped.iter().map(|(id, e)| format!("\n  chk-{id}: {e}")).collect()
}

/// How the vertices a checkpoint was taken with differ from the job's, or `None`.
pub fn vertex_difference(found: &[VertexInfo], expected: &[VertexInfo]) -> Option<String> {
    let show = |vs: &[VertexInfo]| vs.iter().map(|v| format!("{} ×{}", v.name, v.parallelism)).collect::<Vec<_>>();
    if found.len() != expected.len() {
        return Some(format!(
            "the checkpoint has {} vertices [{}], this job {} [{}]",
            found.len(),
            show(found).join(", "),
            expected.len(),
            show(expected).join(", ")
        ));
    }
    let differences: Vec<String> = found
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (f, e))| (&f.name, f.parallelism) != (&e.name, e.parallelism))
        .map(|(i, (f, e))| match (f.name == e.name, f.parallelism == e.parallelism) {
            (true, _) => format!(
                "vertex {i} '{}' has parallelism {} in the checkpoint and {} in this job (the checkpoint does not record \
                 its operators' ids, so it restores only at the same parallelism)",
                f.name, f.parallelism, e.parallelism
            ),
            _ => format!(
                "vertex {i} is '{}' ×{} in the checkpoint and '{}' ×{} in this job",
                f.name, f.parallelism, e.name, e.parallelism
            ),
        })
        .collect();
    (!differences.is_empty()).then(|| differences.join("; "))
}

/// Loads what the job restores from, checking every file it uses.
pub fn load_restore(
    from: &RestoreFrom,
    expected_vertices: &[VertexInfo],
    allow_non_restored: bool,
) -> Result<RestorePoint, RestoreError> {
    match from {
        RestoreFrom::Latest(dir) => {
            let storage = FsCheckpointStorage::open(dir)?;
            load_latest(&storage, dir, expected_vertices, allow_non_restored)
        }
        RestoreFrom::Savepoint(path) => {
            let (dir, id) = savepoint_location(path)?;
            let storage = FsCheckpointStorage::open(&dir)?;
            load_one(&storage, &dir, id, expected_vertices, allow_non_restored)
        }
        RestoreFrom::Checkpoint(path) => {
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_checkpoint_dir_name)
                .ok_or_else(|| RestoreError::NotCheckpointPath { path: path.clone() })?;
            let dir = match path.parent() {
                Some(p) if p.as_os_str().is_empty() => Path::new("."),
                Some(p) => p,
                None => return Err(RestoreError::NotCheckpointPath { path: path.clone() }),
            };
            let storage = FsCheckpointStorage::open(dir)?;
            if !path.is_dir() {
                return Err(RestoreError::Invalid {
                    path: path.clone(),
                    source: StorageError::NoDirectory { dir: path.clone() },
                });
            }
            load_one(&storage, dir, id, expected_vertices, allow_non_restored)
        }
    }
}

/// Where the savepoint `path` names is: its storage directory and checkpoint id. `path` is a
/// savepoint directory holding exactly one complete `chk-<id>`, a `chk-<id>` directory, or
/// the `_metadata` file in one.
pub fn savepoint_location(path: &Path) -> Result<(PathBuf, CheckpointId), RestoreError> {
    let not = |reason: String| RestoreError::NotSavepoint { path: path.to_path_buf(), reason };
    let path = match path.file_name().and_then(|n| n.to_str()) {
        Some(super::metadata::METADATA_FILE) => path.parent().unwrap_or(Path::new(".")),
        _ => path,
    };
    if !path.is_dir() {
        return Err(not("no such directory".into()));
    }
    if let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(parse_checkpoint_dir_name) {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        return Ok((dir, id));
    }
    let storage = FsCheckpointStorage::open(path)?;
    match storage.list()?.as_slice() {
        [id] => Ok((path.to_path_buf(), *id)),
        [] => Err(not(format!(
            "no savepoint there: it holds no complete chk-<id> directory{}",
            match storage.list_all()?.as_slice() {
                [] => String::new(),
                ids => format!(
                    " ({} without _metadata: {})",
                    ids.len(),
                    ids.iter().map(|id| format!("chk-{id}")).collect::<Vec<_>>().join(", ")
                ),
            }
        ))),
        ids => Err(not(format!(
            "it holds {} complete checkpoints ({}); name one of them",
            ids.len(),
            ids.iter().map(|id| format!("chk-{id}")).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The newest valid checkpoint of `storage` (kept in `dir`).
pub fn load_latest(
    storage: &dyn CheckpointStorage,
    dir: &Path,
    expected_vertices: &[VertexInfo],
    allow_non_restored: bool,
) -> Result<RestorePoint, RestoreError> {
    let complete = storage.list()?;
    if complete.is_empty() {
        return Err(RestoreError::NoCheckpoint { dir: dir.to_path_buf(), incomplete: storage.list_all()? });
    }
    let candidates =
        complete.into_iter().rev().map(|id| (id, judge(storage, id, expected_vertices, allow_non_restored)));
    let choice = choose_restore(candidates);
    for (id, error) in &choice.skipped {
        tracing::warn!(checkpoint = id, "skipping checkpoint {id} for the restore: {error}");
    }
    if let Some((id, difference)) = choice.refused {
        return Err(RestoreError::OtherJob { path: dir.join(format!("chk-{id}")), difference });
    }
    let Some((_, (metadata, assignment))) = choice.chosen else {
        return Err(RestoreError::NoValidCheckpoint { dir: dir.to_path_buf(), skipped: choice.skipped });
    };
    Ok(RestorePoint {
        metadata,
        assignment,
        skipped: choice.skipped,
        dir: dir.to_path_buf(),
        next_id: next_checkpoint_id(storage)?,
    })
}

/// Checkpoint `id` of `storage` (kept in `dir`), with no fallback.
pub fn load_one(
    storage: &dyn CheckpointStorage,
    dir: &Path,
    id: CheckpointId,
    expected_vertices: &[VertexInfo],
    allow_non_restored: bool,
) -> Result<RestorePoint, RestoreError> {
    let path = dir.join(format!("chk-{id}"));
    match judge(storage, id, expected_vertices, allow_non_restored) {
        Verdict::Valid((metadata, assignment)) => Ok(RestorePoint {
            metadata,
            assignment,
            skipped: Vec::new(),
            dir: dir.to_path_buf(),
            next_id: next_checkpoint_id(storage)?,
        }),
        Verdict::Invalid(source) => Err(RestoreError::Invalid { path, source }),
        Verdict::Refused(difference) => Err(RestoreError::OtherJob { path, difference }),
    }
}

/// Reads checkpoint `id`'s metadata and checks every task file; refuses it for a job that
/// cannot take its state (see [`assign`]).
fn judge(
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    expected: &[VertexInfo],
    allow_non_restored: bool,
) -> Verdict<(CheckpointMetadata, Option<Assignment>), StorageError, String> {
    let metadata = match storage.read_metadata(id) {
        Ok(m) => m,
        Err(e) => return Verdict::Invalid(e),
    };
    let channel_state = metadata.tasks.iter().any(|t| t.metrics.channel_bytes > 0);
    let stateful = stateful_operators(&metadata);
    let assignment = match assign(&metadata.vertices, &stateful, channel_state, expected, allow_non_restored) {
        Ok(a) => a,
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    for entry in &metadata.tasks {
        if let Err(e) = storage.verify_task_state(&entry.handle) {
            return Verdict::Invalid(e);
        }
        for shared in &entry.handle.shared {
            if let Err(e) = storage.check_shared_file(&shared.file) {
                return Verdict::Invalid(e);
            }
        }
    }
    Verdict::Valid((metadata, assignment))
}

/// The id a job writing to `storage` uses first: after every checkpoint directory in it,
/// complete or not (ids are never reused); 1 in an empty directory.
pub fn next_checkpoint_id(storage: &dyn CheckpointStorage) -> Result<CheckpointId, StorageError> {
    Ok(storage.list_all()?.last().map_or(1, |id| id + 1))
}

/// The complete checkpoints of `storage` with readable metadata, oldest first: what a job's
/// coordinator counts for retention when it continues in that directory. Unreadable ones
/// are left alone (logged), for whoever wants to look at them.
pub fn retained_checkpoints(storage: &dyn CheckpointStorage) -> Result<Vec<CompletedCheckpoint>, StorageError> {
    Ok(retained_metadata(storage)?.iter().map(CompletedCheckpoint::from).collect())
}

/// The metadata of the checkpoints [`retained_checkpoints`] counts, oldest first (their shared
/// files are what a continuing job's shared-state registry starts with).
pub fn retained_metadata(storage: &dyn CheckpointStorage) -> Result<Vec<CheckpointMetadata>, StorageError> {
    let mut retained = Vec::new();
    for id in storage.list()? {
        match storage.read_metadata(id) {
            Ok(meta) => retained.push(meta),
            Err(e) => tracing::warn!(checkpoint = id, "checkpoint {id} is not counted for retention: {e}"),
        }
    }
    Ok(retained)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::tests::layout;
    use crate::checkpoint::storage::tests::{snapshot, write_checkpoint};
    use crate::checkpoint::{TaskId, TaskSnapshot};

    /// A file, how it is damaged, what the error says.
    type DamageCase = (&'static str, fn(&Path), &'static str);

    fn setup(ids: &[CheckpointId]) -> (tempfile::TempDir, FsCheckpointStorage) {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path().join("cp")).unwrap();
        for &id in ids {
            write_checkpoint(&storage, id, &[2, 1]);
        }
        (tmp, storage)
    }

    fn vertices() -> Vec<VertexInfo> {
        layout(&[2, 1]).vertices
    }

    fn latest(storage: &FsCheckpointStorage) -> Result<RestorePoint, RestoreError> {
        load_restore(&RestoreFrom::Latest(storage.dir().to_path_buf()), &vertices(), false)
    }

    fn damage(storage: &FsCheckpointStorage, file: &str, how: fn(&Path)) -> PathBuf {
        let path = storage.dir().join(file);
        how(&path);
        path
    }

    fn flip(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.len() - 1;
        bytes[at] ^= 1;
        std::fs::write(path, bytes).unwrap();
    }

    fn truncate(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() - 1]).unwrap();
    }

    fn delete(path: &Path) {
        std::fs::remove_file(path).unwrap();
    }

    /// What task `task` restores from `point`, read as its TaskManager reads it.
    fn task_state(storage: &FsCheckpointStorage, point: &RestorePoint, task: TaskId) -> TaskSnapshot {
        let entry = point.metadata.tasks.iter().find(|e| e.task == task).expect("the task's entry");
        storage.read_task_state(&entry.handle).unwrap()
    }

    #[test]
    fn the_newest_checkpoint_is_restored_with_every_task() {
        let (_tmp, storage) = setup(&[1, 2, 3]);
        let point = latest(&storage).unwrap();
        assert_eq!(point.metadata.id, 3);
        assert!(point.skipped.is_empty());
        assert_eq!(point.next_id, 4);
        assert_eq!(point.dir, storage.dir());
        assert_eq!(point.metadata.tasks.len(), 3);
        assert_eq!(task_state(&storage, &point, TaskId { vertex: 1, subtask: 0 }), snapshot(10 + 3));
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous_and_names_the_file() {
        let cases: [DamageCase; 4] = [
            ("chk-3/task-0-1.state", flip, "checksum mismatch in "),
            ("chk-3/task-1-0.state", truncate, "truncated: "),
            ("chk-3/task-0-0.state", delete, "is missing"),
            ("chk-3/_metadata", flip, "checksum mismatch"),
        ];
        for (file, how, needle) in cases {
            let (_tmp, storage) = setup(&[1, 2, 3]);
            let path = damage(&storage, file, how);
            let point = latest(&storage).unwrap();
            assert_eq!(point.metadata.id, 2, "{file}");
            assert_eq!(task_state(&storage, &point, TaskId { vertex: 0, subtask: 0 }), snapshot(2));
            let [(3, error)] = &point.skipped[..] else { panic!("{file}: {:?}", point.skipped) };
            let text = error.to_string();
            assert!(text.contains(needle) && text.contains(&path.display().to_string()), "{file}: {text}");
            assert_eq!(point.next_id, 4, "ids stay after the damaged checkpoint");
        }
    }

    #[test]
    fn missing_metadata_makes_a_checkpoint_incomplete_and_the_previous_is_used() {
        let (_tmp, storage) = setup(&[1, 2]);
        damage(&storage, "chk-2/_metadata", delete);
        let point = latest(&storage).unwrap();
        assert_eq!(point.metadata.id, 1);
        assert!(point.skipped.is_empty(), "an incomplete checkpoint is not a candidate");
        assert_eq!(point.next_id, 3);
    }

    #[test]
    fn several_damaged_checkpoints_are_skipped_in_order() {
        let (_tmp, storage) = setup(&[1, 2, 3]);
        damage(&storage, "chk-3/task-0-0.state", flip);
        damage(&storage, "chk-2/_metadata", truncate);
        let point = latest(&storage).unwrap();
        assert_eq!(point.metadata.id, 1);
        assert_eq!(point.skipped.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [3, 2]);
    }

    #[test]
    fn no_valid_checkpoint_lists_why_each_failed() {
        let (_tmp, storage) = setup(&[1, 2]);
        damage(&storage, "chk-2/task-0-0.state", delete);
        damage(&storage, "chk-1/task-1-0.state", truncate);
        let err = latest(&storage).unwrap_err().to_string();
        assert!(err.starts_with("cannot restore: no valid checkpoint in "), "{err}");
        assert!(err.contains("\n  chk-2: ") && err.contains("task-0-0.state is missing"), "{err}");
        assert!(err.contains("\n  chk-1: truncated: "), "{err}");
    }

    #[test]
    fn resume_without_any_checkpoint_names_the_directory() {
        let (_tmp, storage) = setup(&[]);
        storage.write_task_state(1, TaskId { vertex: 0, subtask: 0 }, &snapshot(1)).unwrap();
        let err = latest(&storage).unwrap_err().to_string();
        assert!(err.contains(&format!("no complete checkpoint in {}", storage.dir().display())), "{err}");
        assert!(err.contains("(1 without _metadata, never completed: chk-1)"), "{err}");
        let missing = storage.dir().join("nope");
        let err = load_restore(&RestoreFrom::Latest(missing.clone()), &vertices(), false).unwrap_err().to_string();
        assert!(err.contains(&format!("no checkpoint directory {}", missing.display())), "{err}");
    }

    #[test]
    fn a_named_checkpoint_is_used_or_fails_without_fallback() {
        let (_tmp, storage) = setup(&[1, 2, 3]);
        let from = |id: u64| RestoreFrom::Checkpoint(storage.checkpoint_path(id));
        let point = load_restore(&from(2), &vertices(), false).unwrap();
        assert_eq!((point.metadata.id, point.next_id), (2, 4));
        let path = damage(&storage, "chk-3/task-0-0.state", flip);
        let err = load_restore(&from(3), &vertices(), false).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("checksum mismatch"), "{err}");
        let err = load_restore(&from(7), &vertices(), false).unwrap_err().to_string();
        assert!(err.contains("chk-7") && err.contains("no checkpoint directory"), "{err}");
        let err = load_restore(&RestoreFrom::Checkpoint(storage.dir().to_path_buf()), &vertices(), false).unwrap_err();
        assert!(matches!(err, RestoreError::NotCheckpointPath { .. }), "{err}");
        let mut with_slash = storage.checkpoint_path(1).into_os_string();
        with_slash.push("/");
        assert_eq!(
            load_restore(&RestoreFrom::Checkpoint(with_slash.into()), &vertices(), false).unwrap().metadata.id,
            1
        );
    }

    #[test]
    fn a_checkpoint_of_another_job_is_refused_with_the_difference() {
        let (_tmp, storage) = setup(&[1, 2]);
        let err = load_restore(&RestoreFrom::Latest(storage.dir().into()), &layout(&[2, 4]).vertices, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chk-2: it was taken by another job"), "{err}");
        assert!(err.contains("vertex 1 'v1' has parallelism 1 in the checkpoint and 4 in this job"), "{err}");
        let err = load_restore(&RestoreFrom::Checkpoint(storage.checkpoint_path(1)), &layout(&[2]).vertices, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the checkpoint has 2 vertices [v0 ×2, v1 ×1], this job 1 [v0 ×2]"), "{err}");
    }

    #[test]
    fn a_refusal_is_not_skipped_over_even_after_a_damaged_checkpoint() {
        let (_tmp, storage) = setup(&[1, 2]);
        damage(&storage, "chk-2/task-0-0.state", flip);
        let err =
            load_restore(&RestoreFrom::Latest(storage.dir().into()), &layout(&[3, 1]).vertices, false).unwrap_err();
        assert!(matches!(err, RestoreError::OtherJob { .. }), "{err}");
    }

    #[test]
    fn vertex_names_and_order_must_match() {
        let mut renamed = vertices();
        renamed[0].name = "other".into();
        let d = vertex_difference(&vertices(), &renamed).unwrap();
        assert_eq!(d, "vertex 0 is 'v0' ×2 in the checkpoint and 'other' ×2 in this job");
        assert_eq!(vertex_difference(&vertices(), &vertices()), None);
    }

    #[test]
    fn next_id_follows_every_directory_and_retention_reads_valid_metadata() {
        let (_tmp, storage) = setup(&[]);
        assert_eq!(next_checkpoint_id(&storage).unwrap(), 1);
        write_checkpoint(&storage, 4, &[2, 1]);
        write_checkpoint(&storage, 5, &[2, 1]);
        write_checkpoint(&storage, 6, &[2, 1]);
        damage(&storage, "chk-5/_metadata", flip);
        storage.write_task_state(9, TaskId { vertex: 0, subtask: 0 }, &snapshot(1)).unwrap();
        assert_eq!(next_checkpoint_id(&storage).unwrap(), 10);
        let retained: Vec<u64> = retained_checkpoints(&storage).unwrap().iter().map(|c| c.id).collect();
        assert_eq!(retained, [4, 6]);
    }
}
