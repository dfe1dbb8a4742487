//! A running job: its shared control block (cancellation, the first failure, the doorbells of
//! every task, warnings) and the [`JobHandle`] its owner uses to watch, cancel and join it.
//! Joining waits for every slot thread and for the job's links on the network executor, so when
//! `join` returns every task and link has ended and every buffer the job held is back in the
//! pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corestream_netstack::{BufferPool, Doorbell, PoolReservation};

use super::cluster::SlotLease;
use super::metrics::{
    ConnectionSummary, JobResult, JobStatus, JobWarning, LatencySummary, OperatorSummary, TaskCounters, TaskPhase,
    TaskSummary,
};
use super::mini::Attachment;
use super::network::NetworkDone;
use super::slot::{self, SlotSettings, TaskBuild};
use crate::api::sinks::PendingCommit;
use crate::error::{JobError, TaskError};
use crate::operators::OperatorMetrics;

pub(crate) struct JobShared {
    pub name: String,
    cancelled: AtomicBool,
    user_cancelled: AtomicBool,
    failure: Mutex<Option<JobError>>,
    bells: Mutex<Vec<Arc<Doorbell>>>,
    warnings: Mutex<Vec<JobWarning>>,
    /// When the last slot thread finished its tasks (the job's end, independent of when the
    /// owner calls `join`).
    ended_at: Mutex<Option<Instant>>,
    /// Output the sinks staged, committed by `join` once the job has succeeded.
    commits: Mutex<Vec<Box<dyn PendingCommit>>>,
    pub node_names: Vec<String>,
    pub node_parallelism: Vec<u32>,
}

impl JobShared {
    pub(crate) fn new(name: String, node_names: Vec<String>, node_parallelism: Vec<u32>) -> Self {
        Self {
            name,
            cancelled: AtomicBool::new(false),
            user_cancelled: AtomicBool::new(false),
            failure: Mutex::new(None),
            bells: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            ended_at: Mutex::new(None),
            commits: Mutex::new(Vec::new()),
            node_names,
            node_parallelism,
        }
    }

    pub(crate) fn add_bell(&self, bell: Arc<Doorbell>) {
        self.bells.lock().unwrap_or_else(|e| e.into_inner()).push(bell);
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn cancel_all(&self) {
        self.cancelled.store(true, Ordering::Release);
        for bell in self.bells.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            bell.ring();
        }
    }

    pub(crate) fn cancel(&self) {
        self.user_cancelled.store(true, Ordering::Release);
        self.cancel_all();
    }

    /// Records a failure (the first one wins) and cancels every other task. Once the owner
    /// has cancelled the job, what tasks report while they stop (a dropped collect stream, say)
    /// is a consequence of the cancellation, not a failure: the job ends `Cancelled`.
    pub(crate) fn fail(&self, error: JobError) {
        if self.user_cancelled.load(Ordering::Acquire) {
            tracing::debug!(job = %self.name, %error, "error while the job was being cancelled");
            return;
        }
        {
            let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                // The owner gets the error from `join`; logging it louder would print it twice.
                tracing::info!(job = %self.name, %error, "job failed");
                *slot = Some(error);
            }
        }
        self.cancel_all();
    }

    pub(crate) fn stage_commit(&self, output: Box<dyn PendingCommit>) {
        self.commits.lock().unwrap_or_else(|e| e.into_inner()).push(output);
    }

    pub(crate) fn fail_task(&self, error: TaskError, subtask: u32) {
        let name = |node: usize| self.node_names.get(node).cloned().unwrap_or_else(|| format!("node {node}"));
        let job_error = match error {
            TaskError::Cancelled => return,
            TaskError::User { node, message } => JobError::OperatorFailed {
                operator: name(node),
                subtask,
                parallelism: self.node_parallelism.get(node).copied().unwrap_or(0),
                message,
            },
            TaskError::Record { node, cause } => JobError::Record { operator: name(node), subtask, cause },
            TaskError::Net(e) => JobError::Network(e),
            TaskError::Io { what, path, cause } => JobError::Io { what, path, cause },
            TaskError::Checkpoint { node, message } => JobError::Checkpoint {
                place: node.map_or_else(|| "the task".to_string(), |n| format!("operator '{}'", name(n))),
                subtask,
                message,
            },
        };
        self.fail(job_error);
    }

    /// Reports warnings as subtask `subtask` of node `node`, named as the plan names it.
    pub(crate) fn warner(self: &Arc<Self>, node: usize, subtask: u32) -> Box<dyn Fn(u64, String)> {
        let job = self.clone();
        Box::new(move |count, message| {
            let operator = job.node_names.get(node).cloned().unwrap_or_default();
            job.warn(JobWarning { operator, subtask, count, message });
        })
    }

    pub(crate) fn warn(&self, warning: JobWarning) {
        // The owner gets warnings in the job's result; logging them louder would print them twice.
        tracing::info!(operator = %warning.operator, subtask = warning.subtask, "{}", warning.message);
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).push(warning);
    }

    /// Called by each slot thread when its tasks have ended.
    pub(crate) fn slot_done(&self) {
        let now = Instant::now();
        let mut ended = self.ended_at.lock().unwrap_or_else(|e| e.into_inner());
        if ended.is_none_or(|t| t < now) {
            *ended = Some(now);
        }
    }

    fn ended_at(&self) -> Option<Instant> {
        *self.ended_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first failure as text, if the job failed.
    pub(crate) fn failure_message(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|e| e.to_string())
    }

    fn failure(&self) -> Option<JobError> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the sinks of a successful job staged, not yet visible: [`commit`](Self::commit) makes
/// it visible, dropping it discards it.
#[derive(Default)]
pub struct StagedOutputs {
    job: String,
    outputs: Vec<Box<dyn PendingCommit>>,
}

impl std::fmt::Debug for StagedOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedOutputs").field("job", &self.job).field("outputs", &self.outputs.len()).finish()
    }
}

impl StagedOutputs {
    /// How many outputs the sinks staged.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Commits every output in the order the sinks staged them; the first failure fails and
    /// discards the rest.
    pub fn commit(self) -> Result<(), JobError> {
        for output in self.outputs {
            output.commit().map_err(|e| JobError::Commit { job: self.job.clone(), message: e.to_string() })?;
        }
        Ok(())
    }
}

/// Live counters of a job, for results and progress.
#[derive(Clone)]
pub(crate) struct JobMetrics {
    /// (node id, name, parallelism, per-subtask metrics)
    pub operators: Vec<(usize, String, u32, Vec<Arc<OperatorMetrics>>)>,
    /// (task name, subtask, slot, counters)
    pub tasks: Vec<(String, u32, u32, Arc<TaskCounters>)>,
    /// The job-graph vertex of each entry of `tasks`.
    pub task_vertices: Vec<u32>,
}

/// What can be read of a deployed job without owning it: its control block and counters. The
/// [`JobHandle`] reads its results through it, and so does the TaskManager that watches an
/// embedded job whose handle its owner holds.
pub(crate) struct JobView {
    pub shared: Arc<JobShared>,
    pub started: Instant,
    pub metrics: JobMetrics,
    pub plan: String,
    pub buffers_reserved: u32,
    /// The job's links to other TaskManagers, reported by the network executor as they end.
    pub network: Arc<Mutex<Vec<ConnectionSummary>>>,
    pub pool: BufferPool,
    /// The control mailboxes of this process's tasks (empty without checkpoints).
    pub mailboxes: Vec<super::cluster::TaskMailbox>,
}

impl JobView {
    /// (vertex, subtask, phase) of every task of this process, in deployment order.
    pub(crate) fn task_phases(&self) -> Vec<(u32, u32, TaskPhase)> {
        let tasks = self.metrics.tasks.iter().zip(&self.metrics.task_vertices);
        tasks.map(|((_, subtask, _, c), vertex)| (*vertex, *subtask, c.phase())).collect()
    }

    /// Counters so far.
    pub(crate) fn snapshot(&self) -> JobResult {
        self.result(JobStatus::Finished, self.started.elapsed())
    }

    /// How the job ended, once every task has: its first failure, else cancelled or finished,
    /// with the counters and the wall time up to the end of its last slot thread.
    pub(crate) fn outcome(&self) -> Result<JobResult, JobError> {
        let ended = self.shared.ended_at().unwrap_or_else(Instant::now);
        let wall = ended.saturating_duration_since(self.started);
        if let Some(err) = self.shared.failure() {
            return Err(err);
        }
        if self.shared.user_cancelled.load(Ordering::Acquire) {
            return Ok(self.result(JobStatus::Cancelled, wall));
        }
        Ok(self.result(JobStatus::Finished, wall))
    }

    fn result(&self, status: JobStatus, wall_time: Duration) -> JobResult {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let operators = self
            .metrics
            .operators
            .iter()
            .map(|(node, name, parallelism, subtasks)| {
                let per_subtask: Vec<(u64, u64)> =
                    subtasks.iter().map(|m| (load(&m.records_in), load(&m.records_out))).collect();
                OperatorSummary {
                    node: *node,
                    name: name.clone(),
                    parallelism: *parallelism,
                    records_in: per_subtask.iter().map(|p| p.0).sum(),
                    records_out: per_subtask.iter().map(|p| p.1).sum(),
                    late_records_dropped: subtasks.iter().map(|m| load(&m.late_records_dropped)).sum(),
                    per_subtask,
                }
            })
            .collect();
        let tasks = self
            .metrics
            .tasks
            .iter()
            .map(|(task, subtask, slot, c)| TaskSummary {
                task: task.clone(),
                subtask: *subtask,
                slot: *slot,
                buffers_in: load(&c.buffers_in),
                buffers_out: load(&c.buffers_out),
                bytes_out: load(&c.bytes_out),
                flushes_full: load(&c.flushes_full),
                flushes_idle: load(&c.flushes_idle),
                flushes_timeout: load(&c.flushes_timeout),
                flushes_final: load(&c.flushes_final),
                backpressure_waits: load(&c.backpressure_waits),
                backpressure_time: Duration::from_nanos(load(&c.backpressure_ns)),
                credit_stalls: load(&c.credit_stalls),
            })
            .collect();
        JobResult {
            latency: self.latency(),
            network: self.network.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            pool_peak_in_use: u64::from(self.pool.stats().peak_in_use),
            job_name: self.shared.name.clone(),
            status,
            wall_time,
            operators,
            tasks,
            warnings: self.shared.warnings.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            buffers_reserved: self.buffers_reserved,
            plan: self.plan.clone(),
        }
    }

    /// Latency-marker histograms merged over each sink's subtasks, by sink and source subtask.
    fn latency(&self) -> Vec<LatencySummary> {
        let mut summaries = Vec::new();
        for (node, name, _, subtasks) in &self.metrics.operators {
            let mut merged = Vec::new();
            for m in subtasks {
                m.latency.merge_into(&mut merged);
            }
            merged.sort_by_key(|(source, _)| *source);
            summaries.extend(merged.into_iter().map(|(source, h)| LatencySummary::new(name.clone(), *node, source, h)));
        }
        summaries
    }
}

/// A submitted job.
pub struct JobHandle {
    pub(crate) view: Arc<JobView>,
    pub(crate) threads: Vec<JoinHandle<()>>,
    /// Slot threads deployed but not started yet (see [`JobHandle::launch`]).
    pub(crate) pending: Vec<(SlotSettings, Vec<TaskBuild>)>,
    /// Set once every link has ended; `None` when the job has no task elsewhere.
    pub(crate) network_done: Option<Arc<NetworkDone>>,
    pub(crate) _reservation: PoolReservation,
    /// Dropped after the reservation: when the slots are free again, so are the buffers.
    pub(crate) _slots: SlotLease,
    /// The embedded cluster's JobManager tracking this job, if it does; dropped last, so the
    /// cluster outlives the job's slots.
    pub(crate) attachment: Option<Attachment>,
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle").field("job", &self.view.shared.name).finish_non_exhaustive()
    }
}

impl JobHandle {
    /// Asks every task to stop; `join` then returns a result with status `Cancelled`.
    pub fn cancel(&self) {
        if let Some(a) = &self.attachment {
            a.cancel();
        }
        self.view.shared.cancel();
    }

    /// Starts the slot threads of a deployed job (once; later calls do nothing). A thread
    /// that cannot be started fails the job, and the slots after it are not started.
    pub(crate) fn launch(&mut self) {
        for (settings, tasks) in self.pending.drain(..) {
            let slot = settings.slot;
            match slot::spawn(settings, tasks, self.view.shared.clone()) {
                Ok(t) => self.threads.push(t),
                Err(e) => {
                    self.view.shared.fail(JobError::SlotStart { slot, message: e.to_string() });
                    break;
                }
            }
        }
    }

    pub fn is_finished(&self) -> bool {
        self.pending.is_empty()
            && self.threads.iter().all(|t| t.is_finished())
            && self.network_done.as_ref().is_none_or(|d| d.is_finished())
    }

    /// The job's plan as printed by `explain`.
    pub fn plan(&self) -> &str {
        &self.view.plan
    }

    /// Cancels the job from another thread without owning its handle.
    pub(crate) fn canceller(&self) -> Arc<JobShared> {
        self.view.shared.clone()
    }

    /// The job's counters and control block, readable after the handle is gone.
    pub(crate) fn view(&self) -> Arc<JobView> {
        self.view.clone()
    }

    /// Runs `hook` once the job's slots are free again (after its handle is joined or dropped).
    pub(crate) fn on_slots_released(&mut self, hook: Box<dyn FnOnce() + Send + Sync>) {
        self._slots.on_release = Some(hook);
    }

    /// The id the embedded cluster's JobManager knows this job by (see [`crate::LocalCluster::api`]);
    /// `None` for a job no JobManager tracks (a TaskManager's share of a cluster job).
    pub fn job_id(&self) -> Option<crate::rpc::ids::JobId> {
        self.attachment.as_ref().map(|a| a.job)
    }

    /// (vertex, subtask, phase) of every task of this process, in deployment order.
    pub fn task_phases(&self) -> Vec<(u32, u32, TaskPhase)> {
        self.view.task_phases()
    }

    /// Counters so far.
    pub fn snapshot(&self) -> JobResult {
        self.view.snapshot()
    }

    /// Waits for the job to end. When it has succeeded, commits what its sinks staged (a
    /// failure to commit fails the job); when it failed or was cancelled, discards it.
    pub fn join(self) -> Result<JobResult, JobError> {
        let (result, staged) = self.join_staged()?;
        staged.commit()?;
        Ok(result)
    }

    /// Waits for the job to end like [`join`](Self::join) but leaves what its sinks staged to
    /// the caller, who commits it once more than this job has succeeded (the other processes
    /// running the same job, say) or drops it to discard it.
    pub fn join_staged(mut self) -> Result<(JobResult, StagedOutputs), JobError> {
        let shared = self.view.shared.clone();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                shared.fail(JobError::InvalidJob("a slot thread panicked outside any task".into()));
            }
        }
        // The links end once the tasks have (or the job was cancelled, which they follow).
        if let Some(done) = &self.network_done {
            done.wait();
        }
        let staged = StagedOutputs {
            job: shared.name.clone(),
            outputs: std::mem::take(&mut *shared.commits.lock().unwrap_or_else(|e| e.into_inner())),
        };
        let result = self.view.outcome()?;
        if result.status == JobStatus::Cancelled {
            // Staged output of a cancelled job is discarded, never committed.
            drop(staged);
            return Ok((result, StagedOutputs::default()));
        }
        Ok((result, staged))
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            // Never started: it ends cancelled, and its tasks are dropped unrun.
            self.cancel();
            self.pending.clear();
        }
        if !self.threads.is_empty() {
            // A handle dropped without join: stop the job and wait, so no task outlives it.
            self.cancel();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
            if let Some(done) = &self.network_done {
                done.wait();
            }
        }
    }
}
