//! What a complete checkpoint is on disk: its `_metadata` (the job's vertices, every task's
//! state file with size and checksum, the times and mode), the names of its files, and the
//! pure checks a restore and `corestream checkpoints list` apply to it.
//!
//! The metadata file is one header line, `CSMETA <format> <length> <xxh3>`, then `length`
//! bytes of JSON whose xxh3-64 is the header's. A truncated, extended or edited file fails
//! the header's checks before the JSON is parsed; the JSON is then checked against its
//! directory (its id, the file of every task of every vertex exactly once, the sum of sizes).

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{CheckpointId, CheckpointMode, TaskCheckpointMetrics, TaskId};
pub use corestream_state::lsm::{SharedFile, SharedFileRef};

/// The version of `_metadata` and of the task state files this build writes and reads.
pub const METADATA_FORMAT: u32 = 1;

/// The name of the file that makes a checkpoint complete (as Flink's).
pub const METADATA_FILE: &str = "_metadata";

/// A `_metadata` larger than this is refused before it is read (a job with 10 000 tasks
/// needs about 3 MB).
pub const METADATA_BYTES_MAX: u64 = 64 << 20;

const HEADER_MAGIC: &str = "CSMETA";
/// The header line is short; anything longer is not a metadata file.
const HEADER_BYTES_MAX: usize = 80;

/// One vertex (chain) of the job's plan, in plan order: a task's `TaskId::vertex` indexes
/// this list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VertexInfo {
    pub name: String,
    pub parallelism: u32,
    /// Its key groups (every operator of a chain has the same).
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    /// Its operators, head first: what a changed job matches state by (see
    /// [`super::assign`]). Empty in checkpoints of builds that did not record them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operators: Vec<OperatorInfo>,
}

fn default_max_parallelism() -> u32 {
    corestream_state::DEFAULT_MAX_PARALLELISM
}

/// One operator of a vertex: its node in the job's graph (how task files name its state) and
/// its operator id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OperatorInfo {
    pub node: u32,
    pub uid: String,
}

/// The job whose checkpoints these are: what a restore compares with the job it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLayout {
    pub job: String,
    pub vertices: Vec<VertexInfo>,
}

impl JobLayout {
    /// Every task of every vertex, in `TaskId` order.
    pub fn tasks(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.vertices
            .iter()
            .enumerate()
            .flat_map(|(v, info)| (0..info.parallelism).map(move |s| TaskId { vertex: v as u32, subtask: s }))
    }

    pub fn task_count(&self) -> u64 {
        self.vertices.iter().map(|v| u64::from(v.parallelism)).sum()
    }

    pub fn contains(&self, task: TaskId) -> bool {
        self.vertices.get(task.vertex as usize).is_some_and(|v| task.subtask < v.parallelism)
    }
}

/// Where one task's state of one checkpoint is, and what its bytes must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskStateHandle {
    /// Relative to the checkpoint storage directory: `chk-<id>/task-<vertex>-<subtask>.state`.
    pub file: String,
    /// Bytes of the whole file (header and payload).
    pub size: u64,
    /// xxh3-64 of the payload (the rkyv archive of the `TaskSnapshot`).
    pub checksum: u64,
    /// Files in the storage's shared area that the task's state uses (incremental snapshots),
    /// each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<SharedFileRef>,
    /// The graph nodes with state in the file (`None` in checkpoints of builds that did not
    /// record them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<u32>>,
}

impl TaskStateHandle {
    /// Bytes of the shared files uploaded for this checkpoint.
    pub fn uploaded_bytes(&self) -> u64 {
        self.shared.iter().filter(|r| !r.reused).map(|r| r.file.size).sum()
    }

    /// Bytes of every shared file it uses.
    pub fn shared_bytes(&self) -> u64 {
        self.shared.iter().map(|r| r.file.size).sum()
    }
}

/// One task's part of a complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEntry {
    pub task: TaskId,
    pub handle: TaskStateHandle,
    pub metrics: TaskCheckpointMetrics,
}

/// The contents of a checkpoint's `_metadata`, written last: its presence makes the
/// checkpoint complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    pub format: u32,
    pub job: String,
    /// To refuse a restore into a job with other vertices or parallelism.
    pub vertices: Vec<VertexInfo>,
    pub id: CheckpointId,
    /// Milliseconds since the Unix epoch when the checkpoint was triggered.
    pub trigger_ms: u64,
    /// Milliseconds since the Unix epoch when the last task acknowledged.
    pub completed_ms: u64,
    pub mode: CheckpointMode,
    /// A savepoint: canonical state (no shared files), self-contained in its directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub savepoint: bool,
    /// Whether any task took it unaligned (also after an aligned timeout).
    pub unaligned: bool,
    /// One entry per task of every vertex, in `TaskId` order.
    pub tasks: Vec<TaskEntry>,
    /// Bytes of every task file.
    pub state_bytes: u64,
}

impl CheckpointMetadata {
    pub fn layout(&self) -> JobLayout {
        JobLayout { job: self.job.clone(), vertices: self.vertices.clone() }
    }

    pub fn duration_ms(&self) -> u64 {
        self.completed_ms.saturating_sub(self.trigger_ms)
    }

    /// Checks that the metadata describes checkpoint `id` consistently: the format, the id,
    /// exactly one entry per task of its vertices, each naming that task's file in `chk-<id>`,
    /// and the total size. The message says what is wrong.
    pub fn check(&self, id: CheckpointId) -> Result<(), String> {
        if self.format != METADATA_FORMAT {
            return Err(format!("format {} (this build reads {METADATA_FORMAT})", self.format));
        }
        if self.id != id {
            return Err(format!("it describes checkpoint {}, not {id}", self.id));
        }
        if self.vertices.is_empty() {
            return Err("it lists no vertices".into());
        }
        if let Some(v) = self.vertices.iter().find(|v| v.parallelism == 0) {
            return Err(format!("vertex '{}' has parallelism 0", v.name));
        }
        let layout = self.layout();
        let expected = layout.task_count();
        if self.tasks.len() as u64 != expected {
            return Err(format!("it lists {} task files; its vertices have {expected} tasks", self.tasks.len()));
        }
        for (entry, task) in self.tasks.iter().zip(layout.tasks()) {
            if entry.task != task {
                return Err(format!(
                    "{} is listed where {task} belongs (tasks must be in order, each once)",
                    entry.task
                ));
            }
            let file = task_file(id, task);
            if entry.handle.file != file {
                return Err(format!("{task} names the file '{}', expected '{file}'", entry.handle.file));
            }
            if self.savepoint && !entry.handle.shared.is_empty() {
                return Err(format!("{task} names shared files, which a self-contained savepoint never has"));
            }
            let mut names = std::collections::HashSet::new();
            for r in &entry.handle.shared {
                parse_shared_file(&r.file.name).map_err(|e| format!("{task}: {e}"))?;
                if !names.insert(r.file.name.as_str()) {
                    return Err(format!("{task} names the shared file '{}' twice", r.file.name));
                }
            }
        }
        let sum: u64 = self.tasks.iter().map(|t| t.handle.size).sum();
        if sum != self.state_bytes {
            return Err(format!("the task files add up to {sum} bytes, it says {}", self.state_bytes));
        }
        if self.completed_ms < self.trigger_ms {
            return Err(format!("completed at {} ms, before its trigger at {} ms", self.completed_ms, self.trigger_ms));
        }
        Ok(())
    }
}

/// Why a `_metadata` file's bytes are not a metadata file (the caller names the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataDecodeError {
    Truncated { actual: u64, expected: u64 },
    TrailingBytes { actual: u64, expected: u64 },
    Header(String),
    Format(u32),
    Checksum { expected: u64, actual: u64 },
    Json(String),
}

impl std::fmt::Display for MetadataDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { actual, expected } => write!(f, "truncated: {actual} bytes of {expected}"),
            Self::TrailingBytes { actual, expected } => {
                write!(f, "{actual} bytes where the header announces {expected}")
            }
            Self::Header(why) => write!(f, "not a checkpoint metadata file ({why})"),
            Self::Format(found) => write!(f, "metadata format {found}, this build reads {METADATA_FORMAT}"),
            Self::Checksum { expected, actual } => {
                write!(f, "checksum mismatch: expected {expected:016x}, got {actual:016x}")
            }
            Self::Json(why) => write!(f, "the checksum matches but the contents do not parse: {why}"),
        }
    }
}

/// The bytes of a `_metadata` file.
pub fn encode_metadata(meta: &CheckpointMetadata) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
    let mut bytes = format!("{HEADER_MAGIC} {METADATA_FORMAT} {} {:016x}\n", json.len(), xxh3_64(&json)).into_bytes();
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

/// Parses the bytes of a `_metadata` file, checking its header, length and checksum first.
pub fn decode_metadata(bytes: &[u8]) -> Result<CheckpointMetadata, MetadataDecodeError> {
    let end = bytes.iter().take(HEADER_BYTES_MAX).position(|&b| b == b'\n').ok_or_else(|| {
        if bytes.len() < HEADER_BYTES_MAX {
            MetadataDecodeError::Header(format!("no complete header line in {} bytes", bytes.len()))
        } else {
            MetadataDecodeError::Header("no header line".into())
        }
    })?;
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| MetadataDecodeError::Header("not text".into()))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let [magic, format, len, checksum] = fields[..] else {
        return Err(MetadataDecodeError::Header(format!("header line '{}'", line.escape_default())));
    };
    if magic != HEADER_MAGIC {
        return Err(MetadataDecodeError::Header(format!("it starts with '{}'", magic.escape_default())));
    }
    let format: u32 = format.parse().map_err(|_| MetadataDecodeError::Header(format!("format '{format}'")))?;
    if format != METADATA_FORMAT {
        return Err(MetadataDecodeError::Format(format));
    }
    let len: u64 = len.parse().map_err(|_| MetadataDecodeError::Header(format!("length '{len}'")))?;
    let checksum = u64::from_str_radix(checksum, 16)
        .ok()
        .filter(|_| checksum.len() == 16)
        .ok_or_else(|| MetadataDecodeError::Header(format!("checksum '{checksum}'")))?;
    let body = &bytes[end + 1..];
    let expected_total = (end as u64 + 1).saturating_add(len);
    if (body.len() as u64) < len {
        return Err(MetadataDecodeError::Truncated { actual: bytes.len() as u64, expected: expected_total });
    }
    if body.len() as u64 > len {
        return Err(MetadataDecodeError::TrailingBytes { actual: bytes.len() as u64, expected: expected_total });
    }
    let actual = xxh3_64(body);
    if actual != checksum {
        return Err(MetadataDecodeError::Checksum { expected: checksum, actual });
    }
    serde_json::from_slice(body).map_err(|e| MetadataDecodeError::Json(e.to_string()))
}

/// `chk-<id>`, the directory of checkpoint `id`.
pub fn checkpoint_dir_name(id: CheckpointId) -> String {
    format!("chk-{id}")
}

/// The id of a directory named `chk-<id>` (decimal, no sign or leading zero), else `None`.
pub fn parse_checkpoint_dir_name(name: &str) -> Option<CheckpointId> {
    let digits = name.strip_prefix("chk-")?;
    let canonical = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    canonical.then(|| digits.parse().ok()).flatten()
}

/// The directory of the storage's shared files (incremental snapshots), as Flink's `shared/`.
pub const SHARED_DIR: &str = "shared";

/// `shared/<name>`: the storage-relative path of shared file `name`.
pub fn shared_file(name: &str) -> String {
    format!("{SHARED_DIR}/{name}")
}

/// The file name inside `shared/` of a shared file's path; refuses any other shape (an edited
/// metadata file must not make a restore read or a discard delete elsewhere).
pub fn parse_shared_file(file: &str) -> Result<&str, String> {
    let bad = || format!("'{}' is not of the form shared/<file name>", file.escape_default());
    let name = file.strip_prefix("shared/").ok_or_else(bad)?;
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        Ok(name)
    } else {
        Err(bad())
    }
}

/// `task-<vertex>-<subtask>.state`, a task's file name inside its checkpoint's directory.
pub fn task_file_name(task: TaskId) -> String {
    format!("task-{}-{}.state", task.vertex, task.subtask)
}

/// `chk-<id>/task-<vertex>-<subtask>.state`: a task's file relative to the storage directory.
pub fn task_file(id: CheckpointId, task: TaskId) -> String {
    format!("{}/{}", checkpoint_dir_name(id), task_file_name(task))
}

/// The checkpoint and task a handle's file belongs to; refuses any other shape of path (an
/// edited metadata file must not make a restore read or a discard delete elsewhere).
pub fn parse_task_file(file: &str) -> Result<(CheckpointId, TaskId), String> {
    let bad = || format!("'{}' is not of the form chk-<id>/task-<vertex>-<subtask>.state", file.escape_default());
    let (dir, name) = file.split_once('/').ok_or_else(bad)?;
    let id = parse_checkpoint_dir_name(dir).ok_or_else(bad)?;
    let (vertex, subtask) = name
        .strip_prefix("task-")
        .and_then(|n| n.strip_suffix(".state"))
        .and_then(|n| n.split_once('-'))
        .ok_or_else(bad)?;
    let number = |s: &str| {
        let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        canonical.then(|| s.parse::<u32>().ok()).flatten()
    };
    let task = TaskId { vertex: number(vertex).ok_or_else(bad)?, subtask: number(subtask).ok_or_else(bad)? };
    Ok((id, task))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn layout(parallelism: &[u32]) -> JobLayout {
        JobLayout {
            job: "test-job".into(),
            vertices: parallelism
                .iter()
                .enumerate()
                .map(|(i, &p)| VertexInfo {
                    name: format!("v{i}"),
                    parallelism: p,
                    max_parallelism: 128,
                    operators: Vec::new(),
                })
                .collect(),
        }
    }

    pub(crate) fn metadata(id: CheckpointId, parallelism: &[u32]) -> CheckpointMetadata {
        let layout = layout(parallelism);
        let tasks: Vec<TaskEntry> = layout
            .tasks()
            .map(|task| TaskEntry {
                task,
                handle: TaskStateHandle {
                    file: task_file(id, task),
                    size: 100,
                    checksum: 7,
                    shared: Vec::new(),
                    nodes: None,
                },
                metrics: TaskCheckpointMetrics::default(),
            })
            .collect();
        CheckpointMetadata {
            format: METADATA_FORMAT,
            job: layout.job,
            vertices: layout.vertices,
            id,
            trigger_ms: 1_000,
            completed_ms: 1_250,
            mode: CheckpointMode::ExactlyOnce,
            savepoint: false,
            unaligned: false,
            state_bytes: 100 * tasks.len() as u64,
            tasks,
        }
    }

    #[test]
    fn metadata_round_trips_and_checks() {
        let meta = metadata(7, &[2, 1]);
        assert_eq!(meta.check(7), Ok(()));
        let bytes = encode_metadata(&meta).unwrap();
        assert!(bytes.starts_with(b"CSMETA 1 "));
        assert_eq!(decode_metadata(&bytes), Ok(meta));
    }

    #[test]
    fn truncated_extended_or_edited_bytes_are_detected() {
        let bytes = encode_metadata(&metadata(7, &[2])).unwrap();
        let n = bytes.len() as u64;
        assert_eq!(
            decode_metadata(&bytes[..bytes.len() - 3]),
            Err(MetadataDecodeError::Truncated { actual: n - 3, expected: n })
        );
        let mut longer = bytes.clone();
        longer.push(b' ');
        assert_eq!(decode_metadata(&longer), Err(MetadataDecodeError::TrailingBytes { actual: n + 1, expected: n }));
        let mut edited = bytes.clone();
        let at = bytes.windows(5).position(|w| w == b"1250,").unwrap();
        edited[at] = b'9';
        assert!(matches!(decode_metadata(&edited), Err(MetadataDecodeError::Checksum { .. })));
        assert!(matches!(decode_metadata(&bytes[..10]), Err(MetadataDecodeError::Header(_))));
        assert!(matches!(decode_metadata(b"{}\n"), Err(MetadataDecodeError::Header(_))));
        assert!(matches!(decode_metadata(&[]), Err(MetadataDecodeError::Header(_))));
        let other_format = String::from_utf8(bytes.clone()).unwrap().replacen("CSMETA 1 ", "CSMETA 2 ", 1);
        assert_eq!(decode_metadata(other_format.as_bytes()), Err(MetadataDecodeError::Format(2)));
    }

    #[test]
    fn inconsistent_metadata_is_refused_with_the_reason() {
        let meta = metadata(7, &[2, 1]);
        assert!(meta.check(8).unwrap_err().contains("not 8"));
        let mut missing = meta.clone();
        missing.tasks.pop();
        assert!(missing.check(7).unwrap_err().contains("lists 2 task files; its vertices have 3"));
        let mut swapped = meta.clone();
        swapped.tasks.swap(0, 1);
        assert!(swapped.check(7).unwrap_err().contains("task 0/1 is listed where task 0/0 belongs"));
        let mut elsewhere = meta.clone();
        elsewhere.tasks[2].handle.file = "../../etc/passwd".into();
        assert!(elsewhere.check(7).unwrap_err().contains("expected 'chk-7/task-1-0.state'"));
        let mut sum = meta.clone();
        sum.state_bytes += 1;
        assert!(sum.check(7).unwrap_err().contains("add up to 300 bytes"));
        let mut zero = meta.clone();
        zero.vertices[1].parallelism = 0;
        assert!(zero.check(7).unwrap_err().contains("parallelism 0"));
        let shared =
            |name: &str| SharedFileRef { file: SharedFile { name: name.into(), size: 1, checksum: 2 }, reused: false };
        let mut outside = meta.clone();
        outside.tasks[0].handle.shared = vec![shared("shared/../chk-1/_metadata")];
        assert!(outside.check(7).unwrap_err().contains("not of the form shared/<file name>"));
        let mut twice = meta;
        twice.tasks[0].handle.shared = vec![shared("shared/a.sst"), shared("shared/a.sst")];
        assert!(twice.check(7).unwrap_err().contains("twice"));
    }

    #[test]
    fn shared_file_names_are_plain_names_in_shared() {
        assert_eq!(parse_shared_file("shared/0a1b-000012.sst"), Ok("0a1b-000012.sst"));
        for bad in ["shared/", "shared/../x", "shared/a/b", "x/a.sst", "shared/.hidden", "/shared/a", "shared/a b"] {
            assert!(parse_shared_file(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_parse_only_in_their_canonical_form() {
        assert_eq!(parse_checkpoint_dir_name("chk-12"), Some(12));
        for bad in ["chk-", "chk-012", "chk-0", "chk-+1", "chk-1a", "chk-99999999999999999999", "xchk-1", "chk-1 "] {
            assert_eq!(parse_checkpoint_dir_name(bad), None, "{bad}");
        }
        let task = TaskId { vertex: 3, subtask: 0 };
        assert_eq!(task_file(12, task), "chk-12/task-3-0.state");
        assert_eq!(parse_task_file("chk-12/task-3-0.state"), Ok((12, task)));
        for bad in [
            "chk-12/task-3-00.state",
            "chk-12/../task-3-0.state",
            "/chk-12/task-3-0.state",
            "chk-12/task-3-0.state/x",
            "chk-12/task-3.state",
            "chk-12/sub/task-3-0.state",
            "chk-12/task--1-0.state",
        ] {
            assert!(parse_task_file(bad).is_err(), "{bad}");
        }
    }
}
