//! Checkpoints: the types every part of the protocol shares, barrier handling at an input gate
//! (`alignment`), the in-flight data of unaligned checkpoints (`channel_state`) and the control
//! mailbox through which a task receives triggers and notifications (`mailbox`).
//!
//! The protocol follows Flink's (see `docs/CHECKPOINTS.md`): the job master's coordinator
//! triggers a checkpoint at the source tasks through their mailboxes; each source snapshots its
//! position and sends a barrier downstream; every task snapshots its chain when the barrier has
//! passed (aligned, unaligned or at-least-once), hands the bytes to an asynchronous writer and
//! acknowledges with the handles of what was written; the coordinator completes the checkpoint
//! by writing its metadata last, then notifies every task (which is when two-phase-commit sinks
//! commit). A restored task gets back exactly the parts it wrote, by node and subtask; at
//! another parallelism `redistribute` says which parts each new subtask gets.

pub mod alignment;
pub mod assign;
pub mod channel_state;
pub mod coordinator;
pub mod mailbox;
pub mod metadata;
pub mod pending;
pub mod redistribute;
pub mod request;
pub mod restore;
pub mod shared;
pub mod storage;

use std::time::Duration;

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

pub use alignment::{source_barrier_kind, AlignmentAction, BarrierAligner, BarrierHandling};
pub use mailbox::{ControlMailbox, ControlMessage, MailboxFull};
pub use metadata::TaskStateHandle;
pub use pending::{EncodePart, PendingParts, PendingSnapshot};

/// Why an operator, source or sink could not snapshot, restore or act on a notification; it
/// fails the task, naming the operator.
pub type StateHookError = Box<dyn std::error::Error + Send + Sync>;

/// A checkpoint's number within a job: starts at 1, grows by one per trigger, never reused
/// (also across restarts of the job from its checkpoints).
pub type CheckpointId = u64;

/// The guarantee checkpoints give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointMode {
    /// Barriers are aligned (or overtake in-flight data, when unaligned): every record is
    /// reflected in state exactly once after recovery.
    #[default]
    ExactlyOnce,
    /// Barriers are only counted (Flink's barrier tracker): no channel is ever blocked, and
    /// records after a barrier may be in the snapshot, so recovery can replay some twice.
    AtLeastOnce,
}

impl CheckpointMode {
    /// Reads `exactly-once` or `at-least-once` (Flink's `EXACTLY_ONCE`/`AT_LEAST_ONCE` too),
    /// regardless of case.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "exactly-once" => Some(Self::ExactlyOnce),
            "at-least-once" => Some(Self::AtLeastOnce),
            _ => None,
        }
    }
}

impl std::fmt::Display for CheckpointMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointMode::ExactlyOnce => "exactly-once",
            CheckpointMode::AtLeastOnce => "at-least-once",
        })
    }
}

/// How the tasks take one checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BarrierOptions {
    pub mode: CheckpointMode,
    /// Exactly-once only: barriers overtake in-flight buffers, which become channel state.
    pub unaligned: bool,
    /// Exactly-once with `unaligned`: start aligned and switch to unaligned once alignment has
    /// taken this long (`None` or zero: unaligned from the start, as Flink's default `0`).
    #[serde(with = "opt_millis")]
    pub aligned_timeout: Option<Duration>,
    /// A savepoint: aligned whatever the options above, in the canonical state format.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub savepoint: bool,
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// One subtask of one chain of a job's plan (the job vertex and the subtask index): how the
/// coordinator names the tasks it waits for and how a restore finds a task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    pub vertex: u32,
    pub subtask: u32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {}/{}", self.vertex, self.subtask)
    }
}

/// What a checkpoint's completion or abortion tells the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointNotice {
    /// The checkpoint is complete (its metadata is durable): two-phase-commit sinks commit what
    /// they pre-committed for it and every earlier checkpoint.
    Complete(CheckpointId),
    /// The checkpoint will never complete: discard what was prepared for it.
    Aborted(CheckpointId),
}

/// How a part of an operator's state is redistributed when it is restored (at the same or,
/// later, at another parallelism).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize)]
pub enum PartLayout {
    /// Keyed state or timers, by key group (`corestream_state` snapshots): split by key-group
    /// range.
    KeyGroups,
    /// Operator list state: the elements of every subtask, dealt round-robin.
    OperatorList,
    /// Union list state: every subtask gets the elements of all.
    UnionList,
    /// Broadcast state: every subtask wrote the same map; each gets one copy.
    Broadcast,
    /// Bytes meaningful only to the subtask that wrote them (a source position, a sink's
    /// pending commits); restored only at the same parallelism.
    Subtask,
}

/// One named part of an operator subtask's state.
#[derive(Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize)]
pub struct StatePart {
    pub name: String,
    pub layout: PartLayout,
    pub bytes: Vec<u8>,
}

/// The state one operator subtask snapshotted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize)]
pub struct OperatorStateParts {
    pub parts: Vec<StatePart>,
    /// On restore: the checkpoint storage whose shared area holds the files that parts name
    /// (incremental snapshots); set by the loader, never written.
    #[rkyv(with = rkyv::with::Skip)]
    pub shared_root: Option<std::path::PathBuf>,
}

impl OperatorStateParts {
    pub fn push(&mut self, name: impl Into<String>, layout: PartLayout, bytes: Vec<u8>) {
        self.parts.push(StatePart { name: name.into(), layout, bytes });
    }

    pub fn get(&self, name: &str) -> Option<&StatePart> {
        self.parts.iter().find(|p| p.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn size_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.bytes.len()).sum()
    }
}

/// The in-flight data of one channel captured by an unaligned checkpoint: raw network buffers
/// in the order they were sent and the event-time events between them, to be replayed in that
/// order before any new data on restore.
#[derive(Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize)]
pub struct ChannelState {
    /// Index of the channel in the task's input gate, or in its outputs (edge order, then
    /// channel order, as `NetworkOutput` numbers them).
    pub channel: u32,
    /// Bytes of whole buffers, each as the consumer reads it (the record layout of
    /// `corestream_netstack::record`), in order.
    pub buffers: Vec<Vec<u8>>,
    /// Watermarks and watermark statuses that travelled between the buffers, in order, each
    /// with its place (`after` non-decreasing, at most the number of buffers). Latency markers
    /// are not kept; barriers and end of partition never are in-flight data.
    pub events: Vec<ChannelEvent>,
}

/// An event of a channel's in-flight data, after the channel's first `after` buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize)]
pub struct ChannelEvent {
    pub after: u32,
    pub event: TimeEvent,
}

/// The events kept in channel state: those that move a channel's event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize)]
pub enum TimeEvent {
    Watermark(i64),
    /// `WatermarkStatus::Idle`.
    Idle,
    /// `WatermarkStatus::Active`.
    Active,
}

/// One channel's part of an input gate's watermark valve (`time::WatermarkValve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize)]
pub struct ChannelWatermark {
    /// The highest watermark the channel delivered (`i64::MIN`: none yet).
    pub watermark: i64,
    pub idle: bool,
    /// Takes part in the task's minimum (active and caught up with the clock).
    pub aligned: bool,
}

/// An input task's watermark valve as of its snapshot: each channel's watermark and status and
/// the task's event-time clock, so that a restored task combines the watermarks of its
/// channels exactly as it did (a channel that had ended is live again after a restore: its
/// producer runs again).
#[derive(Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize)]
pub struct InputWatermarks {
    pub clock: i64,
    /// Every live channel was idle: the task reported idle downstream.
    pub idle: bool,
    /// By input channel index.
    pub channels: Vec<ChannelWatermark>,
}

/// Everything one task snapshotted for one checkpoint: the state of each node of its chain
/// and, for unaligned checkpoints, its channel state. It is what a task writes and what it is
/// given back on restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize)]
pub struct TaskSnapshot {
    /// (graph node id, its state), for nodes with any state.
    pub nodes: Vec<(u32, OperatorStateParts)>,
    pub input_channels: Vec<ChannelState>,
    pub output_channels: Vec<ChannelState>,
    /// Input tasks: their watermark valve (every checkpoint mode).
    pub input_watermarks: Option<InputWatermarks>,
}

impl TaskSnapshot {
    /// The state of graph node `node`, if it wrote any.
    pub fn node(&self, node: usize) -> Option<&OperatorStateParts> {
        self.nodes.iter().find(|(n, _)| *n as usize == node).map(|(_, s)| s)
    }

    /// Adds the state of graph node `node` (nothing when it is empty).
    pub fn put_node(&mut self, node: usize, state: OperatorStateParts) {
        if !state.is_empty() {
            self.nodes.push((node as u32, state));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.input_channels.is_empty()
            && self.output_channels.is_empty()
            && self.input_watermarks.is_none()
    }

    /// Bytes of state and channel state (buffers), before encoding.
    pub fn size_bytes(&self) -> usize {
        let channels = |c: &[ChannelState]| c.iter().flat_map(|s| &s.buffers).map(Vec::len).sum::<usize>();
        self.nodes.iter().map(|(_, s)| s.size_bytes()).sum::<usize>()
            + channels(&self.input_channels)
            + channels(&self.output_channels)
    }
}

/// How a deployment takes part in checkpoints: carried by its descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentCheckpointing {
    /// Where the job's checkpoints are written (shared by every TaskManager); `None`: the job
    /// takes none (it only starts from one).
    pub dir: Option<std::path::PathBuf>,
    pub options: BarrierOptions,
    /// The checkpoint the tasks restore from; `None`: a fresh start.
    pub restore: Option<RestoreSource>,
}

/// A complete checkpoint to restore from: its checkpoint directory and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSource {
    pub dir: std::path::PathBuf,
    pub id: CheckpointId,
    /// How a changed job (other parallelism, operators) takes the state; `None`: every task
    /// restores its own file.
    #[serde(default)]
    pub assignment: Option<assign::Assignment>,
}

/// How long one task's part of a checkpoint took, and how much it wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCheckpointMetrics {
    /// From the first barrier (or the trigger, at a source) to the last one (aligned).
    pub alignment_ms: u64,
    /// The synchronous part on the slot's thread.
    pub sync_ms: u64,
    /// Writing and syncing the files, off the slot's thread.
    pub async_ms: u64,
    /// Bytes of state written.
    pub state_bytes: u64,
    /// Bytes of in-flight data persisted (unaligned).
    pub channel_bytes: u64,
    /// Whether the task took the checkpoint unaligned (also after an aligned timeout).
    pub unaligned: bool,
    /// CPU time spent on the task's part, in microseconds: its synchronous part and (unaligned)
    /// the copies of recorded input buffers on the slot's thread, and encoding and writing its
    /// file on the writer thread (waiting for the disk is not CPU time). What a checkpoint
    /// costs the job's throughput, apart from alignment.
    #[serde(default)]
    pub cpu_us: u64,
    /// Bytes of shared files (incremental snapshots) uploaded for this checkpoint.
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Bytes of every shared file the task's state uses, uploaded now or for an earlier
    /// checkpoint.
    #[serde(default)]
    pub shared_bytes: u64,
}

/// CPU time the calling thread has used so far.
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable `timespec` that outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Where a task hands what its synchronous snapshot produced. The TaskManager implements it:
/// it writes the files off the slot's thread, then acknowledges to the coordinator with their
/// handles (or declines the checkpoint when writing failed).
pub trait SnapshotReporter: Send + Sync {
    fn snapshot_taken(
        &self,
        task: TaskId,
        checkpoint: CheckpointId,
        snapshot: PendingSnapshot,
        metrics: TaskCheckpointMetrics,
    );
    /// The task could not take its part of `checkpoint` (the reason names why).
    fn declined(&self, task: TaskId, checkpoint: CheckpointId, reason: String);
}

/// Reads the state a task restores, when a job starts from a checkpoint (the TaskManager's
/// view of the checkpoint storage). `Ok(None)`: the checkpoint holds nothing for this task.
pub(crate) trait TaskStateLoader: Send + Sync {
    fn load(&self, task: TaskId) -> Result<Option<TaskSnapshot>, crate::error::JobError>;
}

/// What a task of a job with checkpoints needs besides its chain.
#[derive(Clone)]
pub struct TaskCheckpointing {
    pub task: TaskId,
    pub mailbox: std::sync::Arc<ControlMailbox>,
    /// How barriers are handled (the trigger repeats them for sources).
    pub options: BarrierOptions,
    pub reporter: std::sync::Arc<dyn SnapshotReporter>,
    /// The state this task restores before it takes any input, when the job (re)starts from
    /// a checkpoint.
    pub restore: Option<std::sync::Arc<TaskSnapshot>>,
}

impl std::fmt::Debug for TaskCheckpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCheckpointing")
            .field("task", &self.task)
            .field("options", &self.options)
            .field("restore", &self.restore.is_some())
            .finish_non_exhaustive()
    }
}
