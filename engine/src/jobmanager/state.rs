//! The JobManager's shared state: registered TaskManagers with their slots (the resource
//! manager's table), the jobs (the dispatcher's table), and the routes from deployment keys
//! and slot allocations to the job masters that own them. One mutex guards it; every holder
//! does a short piece of bookkeeping and never awaits while holding it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use tokio::sync::mpsc;

use super::api::{JobException, JobState};
use super::job_master::JobEvent;
use crate::rpc::ids::{DeploymentKey, JobId, TaskManagerId};
use crate::rpc::messages::{JmMessage, PartReport, Registration, TaskState};
use crate::runtime::cluster::VertexSummary;

/// A registered TaskManager.
pub(crate) struct TmEntry {
    pub registration: Registration,
    /// Messages to it; its connection's writer drains them.
    pub tx: mpsc::Sender<JmMessage>,
    pub last_heartbeat: Instant,
    pub registered_at_ms: u64,
    /// Registration order.
    pub seq: u64,
    /// The job using each slot, by slot index.
    pub slot_jobs: Vec<Option<JobId>>,
    /// Stops its connection's tasks when it is removed.
    pub connection: tokio::task::AbortHandle,
    /// Its data connections as of its last heartbeat.
    pub data_plane: Option<crate::rpc::messages::DataPlaneReport>,
}

impl TmEntry {
    pub fn free_slots(&self) -> Vec<u32> {
        self.slot_jobs.iter().enumerate().filter(|(_, j)| j.is_none()).map(|(i, _)| i as u32).collect()
    }
}

/// A job as the dispatcher keeps it.
pub(crate) struct JobEntry {
    pub job_type: String,
    pub args: Vec<String>,
    pub parallelism: u32,
    pub state: JobState,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    pub started: Instant,
    pub ended: Option<Instant>,
    pub attempts: u32,
    pub failure: Option<String>,
    /// The failures of its attempts, oldest first (at most `job_master::EXCEPTIONS_MAX`).
    pub exceptions: VecDeque<JobException>,
    /// From submission until every task of the current attempt ran.
    pub all_running_after: Option<std::time::Duration>,
    pub plan: String,
    pub vertices: Vec<VertexSummary>,
    /// (vertex, subtask) → where it runs and its state, for the current attempt.
    pub tasks: BTreeMap<(u32, u32), (TaskManagerId, u32, TaskState)>,
    /// The latest counters of each TaskManager's part of the current attempt.
    pub metrics: BTreeMap<TaskManagerId, PartReport>,
    pub outcome: Option<super::api::JobOutcome>,
    pub inbox: mpsc::Sender<JobEvent>,
    /// Its checkpoints and where it starts from.
    pub checkpointing: crate::checkpoint::request::JobCheckpointing,
    /// Its checkpoints' statistics over every attempt, and the restores.
    pub checkpoint_stats: super::checkpoint_stats::JobCheckpointStats,
    /// Its newest savepoint requests, oldest first.
    pub savepoints: VecDeque<super::api::SavepointInfo>,
    /// Submission order.
    pub seq: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub tms: HashMap<TaskManagerId, TmEntry>,
    pub jobs: HashMap<JobId, JobEntry>,
    pub deployments: HashMap<DeploymentKey, JobId>,
    pub allocations: HashMap<u64, JobId>,
    pub next_allocation: u64,
    pub next_seq: u64,
}

impl State {
    pub fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// TaskManagers in registration order.
    pub fn tms_in_order(&self) -> Vec<&TmEntry> {
        let mut tms: Vec<&TmEntry> = self.tms.values().collect();
        tms.sort_by_key(|t| t.seq);
        tms
    }

    pub fn count_jobs(&self, state: JobState) -> u32 {
        self.jobs.values().filter(|j| j.state == state).count() as u32
    }

    /// Frees every slot `job` holds on `tm` (all TaskManagers when `tm` is `None`).
    pub fn release_slots(&mut self, job: JobId, tm: Option<TaskManagerId>) {
        for (id, entry) in self.tms.iter_mut() {
            if tm.is_some_and(|t| t != *id) {
                continue;
            }
            for s in entry.slot_jobs.iter_mut() {
                if *s == Some(job) {
                    *s = None;
                }
            }
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
