//! The messages of the control plane between the JobManager and its TaskManagers. Each is a
//! Rust type serialized with serde (JSON in a length-prefixed frame, see [`super::frame`]);
//! nothing is escaped by hand. A TaskManager opens the connection; the JobManager speaks first
//! with a [`JmMessage::Challenge`], the TaskManager answers with [`TmMessage::Register`], and
//! from then on both send heartbeats and the messages below.
//!
//! Records never travel here: they go over the data connections between TaskManagers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::ids::{DeploymentKey, JobId, TaskManagerId};
use crate::checkpoint::{
    BarrierOptions, CheckpointId, CheckpointNotice, DeploymentCheckpointing, TaskCheckpointMetrics, TaskId,
    TaskStateHandle,
};

/// Version of this message set; a peer with another version is refused at registration.
pub const PROTOCOL_VERSION: u32 = 1;

/// A slot a TaskManager offers: its index on that TaskManager and the CPU it is pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotDescription {
    pub index: u32,
    pub cpu: Option<usize>,
}

/// A 32-byte value (nonce or MAC) as 64 hex digits in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes32(#[serde(with = "hex32")] pub [u8; 32]);

impl std::fmt::Debug for Bytes32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}{:02x}{:02x}{:02x}…", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let text: String = v.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bad = || serde::de::Error::custom("expected 64 hexadecimal digits");
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(out)
    }
}

/// What a TaskManager tells the JobManager about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub protocol: u32,
    /// The corestream version of the TaskManager's binary.
    pub version: String,
    pub id: TaskManagerId,
    pub hostname: String,
    pub pid: u32,
    /// Where other TaskManagers reach this one's data listener.
    pub data_address: SocketAddr,
    pub slots: Vec<SlotDescription>,
    /// 32 KB buffers in its pool.
    pub network_buffers: u32,
    /// The job types this TaskManager's binary can build (see [`crate::registry`]).
    pub job_types: Vec<String>,
    /// MAC over the JobManager's challenge with the cluster secret; `None` when the cluster runs
    /// without one.
    pub proof: Option<Bytes32>,
    /// A nonce the JobManager proves the secret over in [`JmMessage::Registered`].
    pub nonce: Bytes32,
}

/// The state of one subtask, as its TaskManager reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Deploying,
    Running,
    Finished,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed | TaskState::Cancelled)
    }
}

/// A change of one subtask's state. `vertex` is the index of its chain in the job graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStateUpdate {
    pub vertex: u32,
    pub subtask: u32,
    pub state: TaskState,
}

/// Records of one operator's subtasks on one TaskManager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorReport {
    pub node: u32,
    pub name: String,
    pub parallelism: u32,
    /// (subtask, records in, records out) of the subtasks that ran on this TaskManager.
    pub subtasks: Vec<(u32, u64, u64)>,
    pub late_records_dropped: u64,
}

/// Counters of one subtask of one chain on one TaskManager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: String,
    pub subtask: u32,
    pub slot: u32,
    pub buffers_in: u64,
    pub buffers_out: u64,
    pub bytes_out: u64,
    pub flushes_full: u64,
    pub flushes_idle: u64,
    pub flushes_timeout: u64,
    pub flushes_final: u64,
    pub backpressure_waits: u64,
    pub backpressure_ns: u64,
    pub credit_stalls: u64,
}

/// A warning a subtask reported (input it could not use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarningReport {
    pub operator: String,
    pub subtask: u32,
    pub count: u64,
    pub message: String,
}

/// Latency markers one sink subtask received from one source subtask: an HDR histogram in
/// its V2 serialization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyReport {
    pub sink: String,
    pub sink_node: u32,
    pub source_subtask: u32,
    pub histogram_v2: Vec<u8>,
}

/// Traffic of one data connection of a TaskManager, as it saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionReport {
    pub peer: String,
    pub frames_in: u64,
    pub frames_out: u64,
    pub buffers_in: u64,
    pub buffers_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub credit_announcements: u64,
    pub remote_credit_stalls: u64,
}

/// Peers one [`DataPlaneReport`] lists at most; its totals still count every peer.
pub const DATA_PLANE_PEERS_MAX: usize = 256;
/// Characters of a peer's last connection error in a report, at most.
pub const DATA_PLANE_ERROR_CHARS_MAX: usize = 512;

/// A TaskManager's data connections (at most one per peer TaskManager, shared by every job)
/// since it joined its current cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataPlaneReport {
    /// Connections this TaskManager dialed.
    pub dialed: u64,
    /// Connections peers dialed whose handshake passed.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Accepted connections refused before their handshake was through (another cluster's
    /// TaskManager, a wrong secret, a stray process).
    pub refused: u64,
    /// Per peer, by TaskManager id; at most 256 (the totals count every peer).
    pub peers: Vec<PeerConnectionsReport>,
}

/// Connections to one peer TaskManager.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerConnectionsReport {
    /// The peer's TaskManager id (32 hex digits).
    pub peer: String,
    pub dialed: u64,
    pub accepted: u64,
    pub open: u64,
    /// Connections that ended with both sides closing.
    pub closed: u64,
    /// Connections (and dials) that failed.
    pub failed: u64,
    /// The last failure, at most 512 characters.
    pub last_error: Option<String>,
}

impl DataPlaneReport {
    /// The report of `stats`, bounded: the first [`DATA_PLANE_PEERS_MAX`] peers by id, errors
    /// cut to [`DATA_PLANE_ERROR_CHARS_MAX`] characters.
    pub fn from_stats(stats: &corestream_netstack::PlaneStats) -> Self {
        let peers = stats
            .peers
            .iter()
            .take(DATA_PLANE_PEERS_MAX)
            .map(|(id, p)| PeerConnectionsReport {
                peer: id.to_string(),
                dialed: p.dialed,
                accepted: p.accepted,
                open: p.open,
                closed: p.closed,
                failed: p.failed,
                last_error: p.last_error.as_ref().map(|e| e.chars().take(DATA_PLANE_ERROR_CHARS_MAX).collect()),
            })
            .collect();
        Self { dialed: stats.dialed, accepted: stats.accepted, open: stats.open, refused: stats.refused, peers }
    }

    /// Whether the report stays within its bounds (checked on receipt).
    pub fn is_bounded(&self) -> bool {
        self.peers.len() <= DATA_PLANE_PEERS_MAX
            && self.peers.iter().all(|p| {
                p.peer.len() <= 64
                    && p.last_error.as_ref().is_none_or(|e| e.chars().count() <= DATA_PLANE_ERROR_CHARS_MAX)
            })
    }
}

/// A value a job computes across subtasks and TaskManagers, merged by the JobMaster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Accumulator {
    /// Added up.
    Count(u64),
    /// Added up exactly (no overflow below 2^127).
    Sum(i128),
    Max(i64),
    Min(i64),
    /// An order-independent checksum: added up, wrapping.
    Checksum(u64),
    /// Lines, merged in order and kept sorted; at most [`Accumulator::LINES_MAX`].
    Lines(Vec<String>),
    /// An HDR histogram in its V2 serialization; merged by adding counts.
    Histogram(Vec<u8>),
}

/// Accumulators by name.
pub type Accumulators = BTreeMap<String, Accumulator>;

/// What one TaskManager's part of a deployment reports when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReport {
    /// From the part's deployment to the end of its last slot thread.
    pub wall_time_ns: u64,
    pub operators: Vec<OperatorReport>,
    pub tasks: Vec<TaskReport>,
    pub warnings: Vec<WarningReport>,
    pub latency: Vec<LatencyReport>,
    pub connections: Vec<ConnectionReport>,
    pub pool_peak_in_use: u64,
    pub buffers_reserved: u32,
    pub accumulators: Accumulators,
}

/// How a TaskManager's part of a deployment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartOutcome {
    /// Every local task finished; its staged output waits for [`JmMessage::Commit`] or
    /// [`JmMessage::Discard`].
    Finished(Box<PartReport>),
    /// A local task or connection failed (the message names the operator or peer).
    Failed { message: String, retryable: bool },
    /// Cancelled by the JobManager, or by a peer that cancelled.
    Cancelled,
}

/// TaskManager → JobManager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TmMessage {
    Register(Box<Registration>),
    /// Sent every heartbeat interval: the deployments this TaskManager runs and its data
    /// connections.
    Heartbeat {
        deployments: Vec<DeploymentKey>,
        #[serde(default)]
        data_plane: Option<DataPlaneReport>,
    },
    /// The slots of a [`JmMessage::RequestSlots`] are reserved for the job.
    SlotsOffered {
        allocation: u64,
        slots: Vec<u32>,
    },
    /// The slots could not be reserved (busy, or no such slot).
    SlotsRefused {
        allocation: u64,
        reason: String,
    },
    TaskStates {
        deployment: DeploymentKey,
        updates: Vec<TaskStateUpdate>,
    },
    /// Counters of a running part so far (no latency histograms, no accumulators).
    Metrics {
        deployment: DeploymentKey,
        report: Box<PartReport>,
    },
    /// Additions to the job's signals (see [`crate::registry::JobSignals`]) since the last.
    Signals {
        deployment: DeploymentKey,
        adds: BTreeMap<String, u64>,
    },
    /// Every local task of the deployment has ended.
    PartEnded {
        deployment: DeploymentKey,
        outcome: PartOutcome,
    },
    /// The staged output of a deployment was committed (`error: None`) or could not be.
    Committed {
        deployment: DeploymentKey,
        error: Option<String>,
    },
    /// A task's part of a checkpoint is written (and synced).
    AcknowledgeCheckpoint {
        deployment: DeploymentKey,
        task: TaskId,
        checkpoint_id: CheckpointId,
        handle: TaskStateHandle,
        metrics: TaskCheckpointMetrics,
    },
    /// A task could not take its part of a checkpoint.
    DeclineCheckpoint {
        deployment: DeploymentKey,
        task: TaskId,
        checkpoint_id: CheckpointId,
        reason: String,
    },
}

/// One TaskManager's share of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub tm: TaskManagerId,
    pub data_address: SocketAddr,
    /// The job slots it runs (contiguous; subtask `i` of every chain runs in job slot `i`).
    pub job_slots: Range<u32>,
    /// Its own slot index for each of those job slots, in order.
    pub slots: Vec<u32>,
}

/// Everything a TaskManager needs to build and run its share of one job attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDescriptor {
    pub deployment: DeploymentKey,
    pub job_id: JobId,
    /// The registered job type the TaskManager builds (see [`crate::registry`]).
    pub job_type: String,
    pub args: Vec<String>,
    /// Default parallelism of the job (`-p`); `None` uses every job slot.
    pub parallelism: Option<u32>,
    /// 0 for the first run, then one more per restart.
    pub attempt: u32,
    /// The execution plan's fingerprint as the JobMaster computed it; a TaskManager whose own
    /// build differs refuses the deployment.
    pub fingerprint: u64,
    pub participants: Vec<Participant>,
    /// Which participant the receiver is.
    pub index: u32,
    /// The slot allocation the deployment uses.
    pub allocation: u64,
    /// Set when the job takes checkpoints or starts from one.
    #[serde(default)]
    pub checkpointing: Option<DeploymentCheckpointing>,
    /// An embedded cluster's job, handed to its in-process TaskManager in memory instead of
    /// being built by name; never serialized (a TaskManager process gets `None`).
    #[serde(skip)]
    pub(crate) inline: Option<crate::runtime::mini::InlineJob>,
}

/// JobManager → TaskManager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JmMessage {
    /// The first message on a new connection.
    Challenge {
        protocol: u32,
        nonce: Bytes32,
    },
    Registered {
        heartbeat_interval_ms: u64,
        heartbeat_timeout_ms: u64,
        /// Random per JobManager process: TaskManagers tell a new JobManager from the old one.
        jobmanager_session: u64,
        /// Shared by every TaskManager of this JobManager: data connections prove it.
        cluster_token: Bytes32,
        /// MAC over the TaskManager's nonce with the cluster secret; `None` without one.
        proof: Option<Bytes32>,
    },
    /// Registration refused; the connection closes after this.
    Refused {
        reason: String,
    },
    Heartbeat,
    /// Reserve these slots for a job.
    RequestSlots {
        allocation: u64,
        job: JobId,
        slots: Vec<u32>,
    },
    /// Release the slots of an allocation (the job ended or gave them back).
    FreeSlots {
        allocation: u64,
    },
    Deploy(Box<DeploymentDescriptor>),
    Cancel {
        deployment: DeploymentKey,
        reason: String,
    },
    /// The job-wide totals of the job's signals.
    Signals {
        deployment: DeploymentKey,
        totals: BTreeMap<String, u64>,
    },
    /// Every participant finished: make the staged output visible.
    Commit {
        deployment: DeploymentKey,
    },
    /// The deployment will not be committed: drop its staged output.
    Discard {
        deployment: DeploymentKey,
    },
    /// Start a checkpoint at the deployment's source tasks on this TaskManager.
    TriggerCheckpoint {
        deployment: DeploymentKey,
        checkpoint_id: CheckpointId,
        timestamp_ms: i64,
        options: BarrierOptions,
    },
    /// Tell every task of the deployment on this TaskManager that a checkpoint completed or
    /// was aborted.
    NotifyCheckpoint {
        deployment: DeploymentKey,
        notice: CheckpointNotice,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use corestream_netstack::{PeerCounters, PlaneStats, TmId};

    #[test]
    fn data_plane_reports_are_bounded() {
        let mut stats = PlaneStats { dialed: 300, accepted: 2, open: 1, refused: 4, ..Default::default() };
        for i in 0..300u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let error = (i == 0).then(|| "é".repeat(2 * DATA_PLANE_ERROR_CHARS_MAX));
            stats
                .peers
                .insert(TmId(id), PeerCounters { dialed: 1, failed: 1, last_error: error, ..Default::default() });
        }
        let report = DataPlaneReport::from_stats(&stats);
        assert_eq!((report.dialed, report.accepted, report.open, report.refused), (300, 2, 1, 4));
        assert_eq!(report.peers.len(), DATA_PLANE_PEERS_MAX);
        assert_eq!(report.peers[0].peer, "0".repeat(32));
        assert_eq!(report.peers[0].last_error.as_ref().unwrap().chars().count(), DATA_PLANE_ERROR_CHARS_MAX);
        assert!(report.is_bounded());
        let mut over = report.clone();
        over.peers.push(PeerConnectionsReport::default());
        assert!(!over.is_bounded());
        let json =
            serde_json::to_string(&TmMessage::Heartbeat { deployments: vec![], data_plane: Some(report) }).unwrap();
        assert!(matches!(serde_json::from_str(&json).unwrap(), TmMessage::Heartbeat { data_plane: Some(_), .. }));
        let old = r#"{"heartbeat":{"deployments":[]}}"#;
        assert!(
            matches!(serde_json::from_str(old).unwrap(), TmMessage::Heartbeat { data_plane: None, .. }),
            "a heartbeat without the report still reads"
        );
    }
}
