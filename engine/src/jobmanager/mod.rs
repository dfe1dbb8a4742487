//! The JobManager: the dispatcher (accepts jobs by name, keeps every job's state, serves the
//! REST API), the resource manager (registered TaskManagers, their slots and heartbeats) and
//! one job master per job (slot requests, deployment, task states, restarts, the commit of a
//! finished job's output). It runs on tokio threads of its own (`cs-jm`); TaskManagers reach it
//! over the control plane of [`crate::rpc`].
//!
//! An embedded cluster ([`crate::LocalCluster`]) runs the same state, dispatcher and job
//! masters without a listener, on its own thread, with one TaskManager of the same process
//! attached over a pair of bounded channels (`InProcessLink`); its jobs arrive prepared, in
//! memory, instead of by name (see `runtime::mini`).

pub mod api;
mod checkpoint_stats;
mod checkpoints;
pub(crate) mod dispatcher;
mod job_master;
pub mod rest;
pub mod restart;
mod savepoints;
pub mod scheduler;
mod server;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use self::job_master::JobEvent;
pub use self::job_master::Restarts;
use self::scheduler::{choose_slots, FreeSlots};
use self::state::{JobEntry, State, TmEntry};
use crate::config::ClusterConfig;
use crate::error::StartupError;
use crate::graph::execution::SlotSplit;
use crate::registry::JobRegistry;
use crate::rpc::ids::{DeploymentKey, JobId, TaskManagerId};
use crate::rpc::messages::{JmMessage, Registration, TmMessage};
use crate::runtime::cluster::PlanSummary;

/// Makes the restart strategy of each new job.
pub type RestartFactory = Arc<dyn Fn(RestartChoice) -> Box<dyn Restarts> + Send + Sync>;

/// What a job's restart strategy depends on besides the cluster's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestartChoice {
    /// The strategy the submission asked for (`--restart-strategy`), with the parameters of
    /// the cluster's settings.
    pub requested: Option<crate::conf::RestartStrategyType>,
    /// Whether the job takes checkpoints (the default strategy depends on it, as in Flink).
    pub checkpointing: bool,
}

/// The restart strategy `none`: a failed job stays failed.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRestart;

impl Restarts for NoRestart {
    fn on_failure(&mut self, _now_ms: u64, _retryable: bool) -> Result<Duration, String> {
        Err("restart strategy none".into())
    }
}

/// How a JobManager runs.
#[derive(Clone)]
pub struct JobManagerConfig {
    /// Where TaskManagers connect (`jobmanager.rpc.address`/`jobmanager.rpc.port`; port 0:
    /// any free port).
    pub rpc_bind: SocketAddr,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// How long a job waits for the slots it needs before its attempt fails.
    pub slot_request_timeout: Duration,
    /// Each job's restart strategy; by default the one it asks for, else Flink's default
    /// (exponential-delay with checkpoints, none without).
    pub restarts: RestartFactory,
    /// The cluster secret TaskManagers must prove; `None` when authentication is off.
    pub secret: Option<crate::auth::ClusterSecret>,
    /// Credit settings the plans are made with (the TaskManagers must use the same).
    pub cluster: ClusterConfig,
    /// Defaults of every job's checkpoints.
    pub checkpoint: crate::conf::CheckpointSettings,
}

impl std::fmt::Debug for JobManagerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManagerConfig")
            .field("rpc_bind", &self.rpc_bind)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("slot_request_timeout", &self.slot_request_timeout)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Default for JobManagerConfig {
    fn default() -> Self {
        Self {
            rpc_bind: SocketAddr::from(([127, 0, 0, 1], 6123)),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(50),
            slot_request_timeout: Duration::from_secs(300),
            restarts: restart::RestartStrategy::factory(&crate::conf::RestartSettings::default()),
            secret: None,
            cluster: ClusterConfig::default(),
            checkpoint: Default::default(),
        }
    }
}

/// The state every part of the JobManager shares.
pub(crate) struct Jm {
    settings: JobManagerConfig,
    registry: JobRegistry,
    state: Mutex<State>,
    /// Notified when slots are freed or TaskManagers register.
    slots_changed: Notify,
    /// Random per process.
    session: u64,
    /// Set while the JobManager's owner stops the cluster: TaskManagers leaving is expected.
    closing: std::sync::atomic::AtomicBool,
    cluster_token: [u8; 32],
}

/// A running JobManager.
pub struct JobManager {
    jm: Arc<Jm>,
    runtime: Option<tokio::runtime::Runtime>,
    rpc_address: SocketAddr,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager").field("rpc_address", &self.rpc_address).finish_non_exhaustive()
    }
}

impl JobManager {
    /// Binds the control-plane address and starts serving TaskManagers.
    pub fn start(settings: JobManagerConfig, registry: JobRegistry) -> Result<Self, StartupError> {
        if settings.heartbeat_interval.is_zero() || settings.heartbeat_timeout <= settings.heartbeat_interval {
            return Err(StartupError::InvalidConfig(format!(
                "heartbeat.timeout ({:?}) must be longer than heartbeat.interval ({:?}), which must be positive",
                settings.heartbeat_timeout, settings.heartbeat_interval
            )));
        }
        let listener = std::net::TcpListener::bind(settings.rpc_bind).map_err(|e| {
            StartupError::InvalidConfig(crate::conf::listen_error(
                "TaskManagers",
                settings.rpc_bind,
                "jobmanager.bind-host",
                "jobmanager.rpc.port",
                &e,
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StartupError::InvalidConfig(format!("cannot configure the control listener: {e}")))?;
        let rpc_address = listener
            .local_addr()
            .map_err(|e| StartupError::InvalidConfig(format!("the control listener has no address: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cs-jm")
            .enable_all()
            .build()
            .map_err(|e| StartupError::InvalidConfig(format!("cannot start the JobManager's threads: {e}")))?;
        let jm = Jm::new(settings, registry);
        {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| StartupError::InvalidConfig(format!("cannot register the control listener: {e}")))?;
            runtime.spawn(server::accept(jm.clone(), listener));
            runtime.spawn(server::heartbeats(jm.clone()));
        }
        tracing::info!(rpc = %rpc_address, "JobManager started");
        Ok(Self { jm, runtime: Some(runtime), rpc_address })
    }

    /// Where TaskManagers connect.
    pub fn rpc_address(&self) -> SocketAddr {
        self.rpc_address
    }

    /// The dispatcher's operations (what the REST API serves).
    pub fn api(&self) -> Arc<dyn api::ClusterApi> {
        Arc::new(dispatcher::Dispatcher::new(self.jm.clone(), self.handle()))
    }

    /// The runtime the JobManager runs on (for serving the REST API beside it).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.as_ref().expect("running until dropped").handle().clone()
    }

    /// Says that the TaskManagers are about to be stopped on purpose: their leaving is logged
    /// as information, not as a warning.
    pub fn closing(&self) {
        self.jm.closing.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Stops serving; TaskManagers notice and cancel their tasks.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for JobManager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An in-process TaskManager's end of its link to the JobManager: the same messages as over a
/// connection, in bounded channels.
pub(crate) struct InProcessLink {
    /// What the JobManager sends it.
    pub to_tm: mpsc::Receiver<JmMessage>,
    /// What it sends the JobManager.
    pub from_tm: mpsc::Sender<TmMessage>,
}

/// Messages queued in either direction of an in-process link, at most (as a connection's).
const IN_PROCESS_QUEUE: usize = 4096;

impl Jm {
    fn new(settings: JobManagerConfig, registry: JobRegistry) -> Arc<Self> {
        Arc::new(Jm {
            settings,
            registry,
            state: Mutex::new(State::default()),
            slots_changed: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            session: u64::from_le_bytes(crate::auth::nonce()[..8].try_into().expect("8 bytes")),
            cluster_token: crate::auth::nonce(),
        })
    }

    /// The JobManager of an embedded cluster: no listener; the heartbeat monitor runs on
    /// `runtime` (which its owner drives).
    pub(crate) fn embedded(
        settings: JobManagerConfig,
        registry: JobRegistry,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Arc<Self>, StartupError> {
        if settings.heartbeat_interval.is_zero() || settings.heartbeat_timeout <= settings.heartbeat_interval {
            return Err(StartupError::InvalidConfig(format!(
                "heartbeat.timeout ({:?}) must be longer than heartbeat.interval ({:?}), which must be positive",
                settings.heartbeat_timeout, settings.heartbeat_interval
            )));
        }
        let jm = Self::new(settings, registry);
        runtime.spawn(server::heartbeats(jm.clone()));
        Ok(jm)
    }

    pub(crate) fn settings(&self) -> &JobManagerConfig {
        &self.settings
    }

    /// Registers a TaskManager of this process: its messages are routed to the job masters as a
    /// connection's are (from a task on `runtime`), and it is removed when it drops its end.
    pub(crate) fn attach_in_process(
        self: &Arc<Self>,
        registration: Registration,
        runtime: &tokio::runtime::Handle,
    ) -> InProcessLink {
        let id = registration.id;
        let (tx, to_tm) = mpsc::channel::<JmMessage>(IN_PROCESS_QUEUE);
        let (from_tm, mut messages) = mpsc::channel::<TmMessage>(IN_PROCESS_QUEUE);
        let jm = self.clone();
        let router = runtime.spawn(async move {
            while let Some(message) = messages.recv().await {
                // Waiting for room in a job master's inbox holds the TaskManager's messages back.
                if let Some((inbox, event)) = jm.route(id, message) {
                    let _ = inbox.send(event).await;
                }
            }
            jm.remove_tm(id, "the in-process TaskManager stopped");
        });
        tracing::debug!(tm = %id, slots = registration.slots.len(), "in-process TaskManager registered");
        self.insert_tm(TmEntry {
            slot_jobs: vec![None; registration.slots.len()],
            registration,
            tx,
            last_heartbeat: std::time::Instant::now(),
            registered_at_ms: state::now_ms(),
            seq: 0,
            connection: router.abort_handle(),
            data_plane: None,
        });
        InProcessLink { to_tm, from_tm }
    }

    /// Says that the TaskManagers are about to be stopped on purpose.
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Frees every slot `job` holds in the table, at once (an embedded job's TaskManager does
    /// so the moment its owner releases them, before the part's end reaches the job master,
    /// so that a job submitted right after finds them free).
    pub(crate) fn release_job_slots(&self, job: JobId) {
        self.lock().release_slots(job, None);
        self.slots_changed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update_job(&self, job: JobId, f: impl FnOnce(&mut JobEntry)) {
        if let Some(j) = self.lock().jobs.get_mut(&job) {
            f(j);
        }
    }

    pub(crate) fn with_job<T>(&self, job: JobId, f: impl FnOnce(&JobEntry) -> T) -> Option<T> {
        self.lock().jobs.get(&job).map(f)
    }

    pub(crate) fn plan(
        &self,
        job_type: &str,
        args: &[String],
        (parallelism, checkpoints): (u32, bool),
        split: &SlotSplit,
    ) -> Result<PlanSummary, String> {
        job_master::plan_job(self, job_type, args, (parallelism, checkpoints), split)
    }

    /// Takes `needed` free slots for `job` in the table, or none if too few are free.
    pub(crate) fn take_slots(&self, job: JobId, needed: u32) -> Option<Vec<FreeSlots>> {
        let mut state = self.lock();
        let free: Vec<FreeSlots> =
            state.tms_in_order().iter().map(|t| FreeSlots { tm: t.registration.id, slots: t.free_slots() }).collect();
        let chosen = choose_slots(&free, needed)?;
        for c in &chosen {
            if let Some(t) = state.tms.get_mut(&c.tm) {
                for s in &c.slots {
                    t.slot_jobs[*s as usize] = Some(job);
                }
            }
        }
        Some(chosen)
    }

    /// (free, total) slots of the registered TaskManagers.
    pub(crate) fn slot_counts(&self) -> (u32, u32) {
        let state = self.lock();
        let free = state.tms.values().map(|t| t.free_slots().len() as u32).sum();
        let total = state.tms.values().map(|t| t.slot_jobs.len() as u32).sum();
        (free, total)
    }

    pub(crate) fn tm_count(&self) -> usize {
        self.lock().tms.len()
    }

    pub(crate) fn new_allocation(&self, job: JobId) -> u64 {
        let mut state = self.lock();
        state.next_allocation += 1;
        let a = state.next_allocation;
        state.allocations.insert(a, job);
        a
    }

    /// Queues a message to a TaskManager; a TaskManager whose queue is full is removed.
    pub(crate) fn send(&self, tm: TaskManagerId, message: JmMessage) {
        let full = {
            let state = self.lock();
            match state.tms.get(&tm) {
                Some(t) => t.tx.try_send(message).is_err(),
                None => false,
            }
        };
        if full {
            self.remove_tm(tm, "its message queue is full or closed");
        }
    }

    pub(crate) fn broadcast(&self, message: JmMessage) {
        let ids: Vec<TaskManagerId> = self.lock().tms.keys().copied().collect();
        for id in ids {
            self.send(id, message.clone());
        }
    }

    /// `id (host, pid)`, or the id alone for a TaskManager no longer registered.
    pub(crate) fn tm_name(&self, tm: TaskManagerId) -> String {
        match self.lock().tms.get(&tm) {
            Some(t) => format!("{} ({}, pid {})", tm.short(), t.registration.hostname, t.registration.pid),
            None => tm.short(),
        }
    }

    pub(crate) fn data_address(&self, tm: TaskManagerId) -> Option<SocketAddr> {
        self.lock().tms.get(&tm).map(|t| t.registration.data_address)
    }

    pub(crate) fn route_deployment(&self, deployment: DeploymentKey, job: JobId) {
        self.lock().deployments.insert(deployment, job);
    }

    /// Forgets the deployments and allocations of an ended job.
    pub(crate) fn forget_routes(&self, job: JobId) {
        let mut state = self.lock();
        state.deployments.retain(|_, j| *j != job);
        state.allocations.retain(|_, j| *j != job);
    }

    pub(crate) fn release_tm_slots(&self, job: JobId, tm: TaskManagerId) {
        self.lock().release_slots(job, Some(tm));
        self.slots_changed.notify_waiters();
    }

    pub(crate) fn release_all(&self, job: JobId, allocation: u64) {
        {
            let mut state = self.lock();
            state.release_slots(job, None);
            state.allocations.remove(&allocation);
        }
        self.slots_changed.notify_waiters();
    }

    /// Registers a TaskManager; returns the entry it replaces (same id registering again).
    pub(crate) fn insert_tm(&self, mut entry: TmEntry) -> Option<TmEntry> {
        let replaced = {
            let mut state = self.lock();
            entry.seq = state.seq();
            state.tms.insert(entry.registration.id, entry)
        };
        self.slots_changed.notify_waiters();
        replaced
    }

    /// Removes a TaskManager with its slots and tells every job master.
    pub(crate) fn remove_tm(&self, tm: TaskManagerId, reason: &str) {
        let (removed, inboxes) = {
            let mut state = self.lock();
            let removed = state.tms.remove(&tm);
            let inboxes: Vec<mpsc::Sender<JobEvent>> =
                state.jobs.values().filter(|j| !j.state.is_terminal()).map(|j| j.inbox.clone()).collect();
            (removed, inboxes)
        };
        let Some(removed) = removed else { return };
        removed.connection.abort();
        let r = &removed.registration;
        let reason = format!(
            "TaskManager {} ({}, pid {}, data {}) was lost: {reason}",
            tm.short(),
            r.hostname,
            r.pid,
            r.data_address
        );
        if self.closing.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!("{reason}");
        } else {
            tracing::warn!("{reason}");
        }
        for inbox in inboxes {
            let event = JobEvent::TmLost { tm, reason: reason.clone() };
            if let Err(mpsc::error::TrySendError::Full(event)) = inbox.try_send(event) {
                tokio::spawn(async move {
                    let _ = inbox.send(event).await;
                });
            }
        }
        self.slots_changed.notify_waiters();
    }

    /// TaskManagers silent for longer than `timeout`, with how long.
    pub(crate) fn silent_tms(&self, timeout: Duration) -> Vec<(TaskManagerId, Duration)> {
        let state = self.lock();
        state
            .tms
            .values()
            .map(|t| (t.registration.id, t.last_heartbeat.elapsed()))
            .filter(|(_, quiet)| *quiet > timeout)
            .collect()
    }
}
