//! The local cluster: a JobManager and one TaskManager in this process, the default for
//! embedding, tests and `corestream run`. It owns the TaskManager's slots (each with the CPU it
//! is pinned to) and its buffer pool. Submitting a job resolves parallelism and partitioning,
//! chains operators, lays out channels, leases slots and reserves buffers, then starts one slot
//! thread per leased slot. Several jobs may run at once on disjoint slots; nothing is global.
//!
//! A cluster with a data listener (a TaskManager of the cluster runtime) also runs a network
//! executor (`network`) that
//! owns the listener and the connections to the other TaskManagers; a job's channels to tasks
//! elsewhere are handed to it as one link per peer.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use corestream_netstack::handshake::TmId;
use corestream_netstack::remote::LocalIdentity;
use corestream_netstack::{BufferPool, Doorbell, JobSpec, LocalChannel, OutputChannel, PeerAddress, PlaneStats};

use super::build::{OutputEdgeRt, SideEdgeRt};
use super::job::{JobHandle, JobMetrics, JobShared, JobView};
use super::metrics::TaskCounters;
use super::mini::MiniCluster;
use super::network::{self, DoneGuard, JobNetwork, LinkBuild, NetworkService, NetworkUnavailable};
use super::slot::{SlotSettings, TaskBuild};
use super::startup;
use super::topology::Topology;
use crate::api::env::StreamEnvironment;
use crate::config::{auto_network_buffers, ClusterConfig, Distribution, ExecutionConfig};
use crate::error::{JobError, StartupError};
use crate::graph::execution::{ChannelRoute, SlotSplit};
use crate::graph::job_graph::{self, resolve_uids, EdgeDesc, NodeDesc};
use crate::graph::stream_graph::{NodeKind, StreamGraph};
use crate::graph::{execution, explain, Partitioning};
use crate::operators::OperatorMetrics;
use crate::registry::JobRegistry;

pub(crate) struct ClusterInner {
    pub config: ClusterConfig,
    pub slot_cpus: Vec<Option<usize>>,
    busy: Mutex<Vec<bool>>,
    pub pool: BufferPool,
    pub topology: Topology,
    /// Where the data listener accepts connections (a TaskManager, or distributed mode).
    pub data_address: Option<std::net::SocketAddr>,
    /// The network executor that owns the data listener and the connections.
    pub network: Option<NetworkService>,
    /// Set on a cluster that only plans jobs (a JobManager's): the default parallelism.
    planning_slots: Option<u32>,
}

/// An embedded cluster: a JobManager and one TaskManager in this process (Flink's
/// MiniCluster). Jobs built with [`environment`](Self::environment) are scheduled, tracked and
/// cancelled by the same JobManager and TaskManager code as a cluster's (see `runtime::mini`).
///
/// Inside the crate the same type is also a TaskManager's slot runtime alone (its slots, pool
/// and network executor, with no JobManager of its own), and a JobManager's planning view.
#[derive(Clone)]
pub struct LocalCluster {
    pub(crate) inner: Arc<ClusterInner>,
    /// The in-process JobManager and TaskManager of an embedded cluster; `None` for a
    /// TaskManager's slot runtime, a planner and an application-mode process.
    mini: Option<Arc<MiniCluster>>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").field("slots", &self.inner.slot_cpus).finish_non_exhaustive()
    }
}

/// A job's plan as a JobManager sees it.
#[derive(Debug, Clone)]
pub(crate) struct PlanSummary {
    pub fingerprint: u64,
    pub slots_needed: u32,
    pub vertices: Vec<VertexSummary>,
    pub text: String,
}

/// One chain of a job's plan.
#[derive(Debug, Clone)]
pub(crate) struct VertexSummary {
    pub name: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// Stream node ids, head first.
    pub nodes: Vec<usize>,
    /// The nodes' operator ids, in the same order.
    pub uids: Vec<String>,
    /// Its chain starts with a source (checkpoints are triggered there).
    pub source: bool,
}

/// Where this process's share of a job runs (see [`LocalCluster::submit_part`]).
#[derive(Default, Clone, Copy)]
pub(crate) struct PartPlacement<'a> {
    pub distribution: Option<&'a Distribution>,
    pub slots: Option<&'a [u32]>,
    pub fingerprint: Option<u64>,
    /// The deployment key and every participant's data-connection id, by index; required with
    /// a distribution.
    pub peers: Option<(u64, &'a [TmId])>,
    /// Set when the job takes checkpoints or restores from one.
    pub checkpoints: Option<&'a PartCheckpoints>,
}

/// What the tasks of a part need for checkpoints: how barriers are handled, where snapshots
/// go, and the state each local task restores (by task) when the job starts from a checkpoint.
pub(crate) struct PartCheckpoints {
    pub options: crate::checkpoint::BarrierOptions,
    pub reporter: Arc<dyn crate::checkpoint::SnapshotReporter>,
    /// Reads a task's state when the part starts from a checkpoint.
    pub restore: Option<Arc<dyn crate::checkpoint::TaskStateLoader>>,
    /// Says when the part's snapshot writer has written (and uploaded) everything it was given.
    pub drained: Option<Arc<crate::taskmanager::checkpoints::WriterDrained>>,
}

/// A local task's control mailbox, for the TaskManager to route triggers and notifications.
#[derive(Debug, Clone)]
pub(crate) struct TaskMailbox {
    pub task: crate::checkpoint::TaskId,
    /// Its chain starts with a source (triggers go to these only).
    pub source: bool,
    pub mailbox: Arc<crate::checkpoint::ControlMailbox>,
}

/// Slots held by a running job; released when the job's handle is dropped.
pub(crate) struct SlotLease {
    cluster: Arc<ClusterInner>,
    slots: Vec<u32>,
    /// Runs once the slots are free (an embedded job's TaskManager reports its part's end).
    pub(crate) on_release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        {
            let mut busy = self.cluster.busy.lock().unwrap_or_else(|e| e.into_inner());
            for s in &self.slots {
                busy[*s as usize] = false;
            }
        }
        if let Some(hook) = self.on_release.take() {
            hook();
        }
    }
}

/// A job resolved, chained and laid out, not yet deployed: what an embedded cluster's
/// submitter hands its JobManager and TaskManager in memory.
pub(crate) struct PreparedJob {
    graph: StreamGraph,
    exec: ExecutionConfig,
    name: String,
    nodes: Vec<NodeDesc>,
    jg: job_graph::JobGraph,
    plan: execution::ExecutionPlan,
    plan_text: String,
}

impl PreparedJob {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Its default parallelism (the slots it needs unless set).
    pub(crate) fn parallelism(&self) -> u32 {
        self.exec.parallelism.unwrap_or(self.plan.slots_needed)
    }

    /// Job slots it needs: its highest parallelism.
    pub(crate) fn slots_needed(&self) -> u32 {
        self.plan.slots_needed
    }

    /// Its plan as a JobManager sees it when it runs over `split`.
    pub(crate) fn summary(&self, credit: &corestream_netstack::CreditConfig, split: &SlotSplit) -> PlanSummary {
        PlanSummary {
            fingerprint: execution::fingerprint(
                &self.plan_text,
                &self.plan,
                &self.name,
                credit,
                split.count(),
                split.total(),
            ),
            slots_needed: self.plan.slots_needed,
            vertices: self
                .jg
                .vertices
                .iter()
                .map(|v| VertexSummary {
                    name: v.name.clone(),
                    parallelism: v.parallelism,
                    max_parallelism: v.max_parallelism,
                    nodes: v.nodes.clone(),
                    uids: v.nodes.iter().map(|&n| self.nodes[n].uid.clone()).collect(),
                    source: self.nodes[v.nodes[0]].kind == NodeKind::Source,
                })
                .collect(),
            text: self.plan_text.clone(),
        }
    }
}

impl LocalCluster {
    /// Starts a cluster after checking the machine (io_uring, locked-memory limit): a
    /// JobManager and one TaskManager in this process. With a data listener it is the slot
    /// runtime of a cluster runtime's TaskManager instead, which runs the parts of jobs its
    /// JobManager deploys.
    pub fn start(config: ClusterConfig) -> Result<Self, StartupError> {
        Self::start_with_jobs(config, JobRegistry::new())
    }

    /// [`start`](Self::start) with job types its JobManager can run by name
    /// ([`api`](Self::api)`.submit`), as a cluster of processes runs them: such a job is built
    /// again for each attempt, so it can take checkpoints and restart from them, which a job
    /// built on [`environment`](Self::environment) (closures of this process, run once) cannot.
    /// Its jobs get the restart strategy they ask for (or Flink's default for them) with the
    /// default parameters of `restart-strategy.*`.
    pub fn start_with_jobs(config: ClusterConfig, jobs: JobRegistry) -> Result<Self, StartupError> {
        Self::start_with_jobs_restarting(config, jobs, crate::conf::RestartSettings::default())
    }

    /// [`start_with_jobs`](Self::start_with_jobs) with the parameters of the restart
    /// strategies (`restart-strategy.*`: attempts, delays, backoff).
    pub fn start_with_jobs_restarting(
        config: ClusterConfig,
        jobs: JobRegistry,
        restart: crate::conf::RestartSettings,
    ) -> Result<Self, StartupError> {
        let embedded = config.data_listener.is_none();
        let runtime = Self::start_runtime(config)?;
        if !embedded {
            return Ok(runtime);
        }
        let mini = MiniCluster::start(runtime.clone(), jobs, &restart)?;
        Ok(Self { inner: runtime.inner, mini: Some(mini) })
    }

    /// Starts the slot runtime alone (what a TaskManager wraps): slots, pool and, with a data
    /// listener, the network executor.
    pub(crate) fn start_runtime(config: ClusterConfig) -> Result<Self, StartupError> {
        let topology = Topology::detect();
        let slots = config.slots.unwrap_or(topology.physical_cores() as u32);
        if slots == 0 {
            return Err(StartupError::InvalidConfig("slots must be at least 1".into()));
        }
        if config.data_listener.is_some() {
            config.net.validate().map_err(|e| StartupError::InvalidConfig(format!("net: {e}")))?;
        }
        let buffers = config.network_buffers.unwrap_or_else(|| auto_network_buffers(slots.max(1), &config.credit));
        if buffers == 0 {
            return Err(StartupError::InvalidConfig("network_buffers must be at least 1".into()));
        }
        if config.credit.exclusive_per_channel == 0 {
            return Err(StartupError::InvalidConfig(
                "exclusive_per_channel must be at least 1: a channel without exclusive credit can stall forever".into(),
            ));
        }
        if config.credit.max_backlog_per_channel == 0 {
            return Err(StartupError::InvalidConfig("max_backlog_per_channel must be at least 1".into()));
        }
        // One more executor than slots when the cluster has a data listener: the network's.
        let executors = slots + u32::from(config.data_listener.is_some());
        startup::check(executors, config.io_memory_bytes.max(network::NET_IO_MEMORY_BYTES))?;
        if slots as usize > topology.physical_cores() {
            tracing::warn!(
                slots,
                cores = topology.physical_cores(),
                "more slots than physical cores: slots will share cores and interfere with each other"
            );
        }
        let first = config.core_offset as usize;
        let slot_cpus =
            topology.slot_cpus(first as u32 + slots)[first..].iter().map(|&c| config.pin_slots.then_some(c)).collect();
        let listener = match &config.data_listener {
            Some(l) => Some(l.try_clone().map_err(|e| {
                StartupError::InvalidConfig(format!("cannot take over the data listener (data_listener): {e}"))
            })?),
            None => None,
        };
        let pool = BufferPool::new(buffers);
        let data_address = listener.as_ref().and_then(|l| l.local_addr().ok());
        let network = match listener {
            Some(l) => Some(NetworkService::start(l, pool.clone(), config.net)?),
            None => None,
        };
        tracing::info!(
            slots,
            topology = topology.source,
            buffers,
            taskmanager = config.data_listener.is_some(),
            "local cluster started"
        );
        Ok(Self {
            inner: Arc::new(ClusterInner {
                pool,
                busy: Mutex::new(vec![false; slots as usize]),
                slot_cpus,
                topology,
                data_address,
                network,
                config,
                planning_slots: None,
            }),
            mini: None,
        })
    }

    /// A cluster that only plans jobs: it validates them, explains them and computes their
    /// fingerprints over `slots` job slots, with no slot, pool or listener of its own (a
    /// JobManager's view of the jobs it schedules).
    pub fn planner(config: ClusterConfig, slots: u32) -> Self {
        Self {
            inner: Arc::new(ClusterInner {
                pool: BufferPool::new(1),
                busy: Mutex::new(Vec::new()),
                slot_cpus: Vec::new(),
                topology: Topology { cores: Vec::new(), source: "planner" },
                data_address: None,
                network: None,
                config,
                planning_slots: Some(slots.max(1)),
            }),
            mini: None,
        }
    }

    /// The embedded JobManager's operations (what a cluster's REST API serves): its
    /// TaskManager with its slots, the jobs with their states, vertices and results, cancel.
    /// `None` for a TaskManager's slot runtime, whose JobManager is elsewhere.
    /// Jobs are submitted by name only to a cluster runtime's JobManager: this one runs the
    /// jobs of [`environment`](Self::environment).
    pub fn api(&self) -> Option<Arc<dyn crate::jobmanager::api::ClusterApi>> {
        self.mini.as_ref().map(|m| m.api())
    }

    /// A cluster with default settings (one slot per physical core).
    pub fn start_default() -> Result<Self, StartupError> {
        Self::start(ClusterConfig::default())
    }

    pub fn num_slots(&self) -> u32 {
        self.inner.slot_cpus.len() as u32
    }

    /// The CPU each slot is pinned to (`None` when pinning is disabled).
    pub fn slot_cpus(&self) -> &[Option<usize>] {
        &self.inner.slot_cpus
    }

    pub fn physical_cores(&self) -> usize {
        self.inner.topology.physical_cores()
    }

    /// The TaskManager's buffer pool.
    pub fn pool(&self) -> &BufferPool {
        &self.inner.pool
    }

    /// The address other TaskManagers dial to reach this one (distributed mode only).
    pub fn data_address(&self) -> Option<std::net::SocketAddr> {
        self.inner.data_address
    }

    /// Gives the network executor this TaskManager's identity in its cluster (see
    /// [`super::network`]); without a data listener there is nothing to identify.
    pub(crate) fn set_network_identity(&self, identity: LocalIdentity) -> Result<(), NetworkUnavailable> {
        match &self.inner.network {
            Some(n) => n.set_identity(identity),
            None => Err(NetworkUnavailable::Stopped),
        }
    }

    /// The data connections' counters (all zero without a data plane).
    pub fn data_plane_stats(&self) -> PlaneStats {
        self.inner.network.as_ref().map(|n| n.stats()).unwrap_or_default()
    }

    /// Cancels every job's links, closes the data connections and stops the network executor.
    pub(crate) fn shutdown_network(&self) {
        if let Some(n) = &self.inner.network {
            n.shutdown();
        }
    }

    /// A new environment for building one job on this cluster.
    pub fn environment(&self) -> StreamEnvironment {
        StreamEnvironment::new(self.clone())
    }

    fn lease(&self, needed: u32) -> Result<SlotLease, JobError> {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        let free: Vec<u32> = (0..busy.len() as u32).filter(|s| !busy[*s as usize]).collect();
        if (free.len() as u32) < needed {
            return Err(JobError::NotEnoughSlots { needed, free: free.len() as u32, total: busy.len() as u32 });
        }
        let slots: Vec<u32> = free.into_iter().take(needed as usize).collect();
        for s in &slots {
            busy[*s as usize] = true;
        }
        Ok(SlotLease { cluster: self.inner.clone(), slots, on_release: None })
    }

    /// Leases exactly `slots` (a TaskManager deploying what its JobManager allocated).
    pub(crate) fn lease_exact(&self, slots: &[u32]) -> Result<SlotLease, JobError> {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        let total = busy.len() as u32;
        let taken = slots.iter().filter(|&&s| s >= total || busy[s as usize]).count() as u32;
        let distinct = slots.iter().collect::<std::collections::BTreeSet<_>>().len() == slots.len();
        if taken > 0 || !distinct {
            let free = busy.iter().filter(|b| !**b).count() as u32;
            return Err(JobError::InvalidJob(format!(
                "slots {slots:?} cannot be leased on this TaskManager: it has {total} slot(s), {free} free"
            )));
        }
        for s in slots {
            busy[*s as usize] = true;
        }
        Ok(SlotLease { cluster: self.inner.clone(), slots: slots.to_vec(), on_release: None })
    }

    /// Which of this TaskManager's slots are free.
    pub fn free_slots(&self) -> Vec<u32> {
        let busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        (0..busy.len() as u32).filter(|s| !busy[*s as usize]).collect()
    }

    /// Resolves parallelism and partitioning, validating the graph.
    pub(crate) fn resolve(
        &self,
        graph: &StreamGraph,
        exec: &ExecutionConfig,
    ) -> Result<(Vec<NodeDesc>, Vec<EdgeDesc>), JobError> {
        if let Some(first) = graph.errors.first() {
            return Err(JobError::InvalidJob(first.clone()));
        }
        if graph.nodes.is_empty() {
            return Err(JobError::InvalidJob("the job has no operators".into()));
        }
        if !graph.nodes.iter().any(|n| n.kind == NodeKind::Sink) {
            return Err(JobError::InvalidJob(
                "the job has no sink: add one (collect, print, discard, write_as_text, add_sink)".into(),
            ));
        }
        let slots = self.inner.planning_slots.unwrap_or_else(|| self.num_slots());
        let default_p = exec.parallelism.unwrap_or(slots);
        if default_p == 0 {
            return Err(JobError::InvalidJob("parallelism must be at least 1".into()));
        }
        let uids = resolve_uids(graph.nodes.iter().map(|n| (n.name.as_str(), n.uid.as_deref())))
            .map_err(JobError::InvalidJob)?;
        let mut nodes = Vec::new();
        for (n, uid) in graph.nodes.iter().zip(uids) {
            let p = match (n.fixed_parallelism, n.parallelism) {
                (Some(fixed), Some(asked)) if fixed != asked => {
                    return Err(JobError::InvalidJob(format!(
                        "'{}' is not a parallel operator: its parallelism is {fixed}, not {asked}",
                        n.name
                    )))
                }
                (Some(fixed), _) => fixed,
                (None, Some(asked)) => asked,
                (None, None) => default_p,
            };
            let max_p = n.max_parallelism.unwrap_or(exec.max_parallelism);
            if p == 0 {
                return Err(JobError::InvalidJob(format!("'{}' has parallelism 0", n.name)));
            }
            if max_p == 0 || max_p > corestream_state::MAX_MAX_PARALLELISM {
                return Err(JobError::InvalidJob(format!(
                    "'{}' has max parallelism {max_p}; it must be in 1..={}",
                    n.name,
                    corestream_state::MAX_MAX_PARALLELISM
                )));
            }
            if p > max_p {
                return Err(JobError::InvalidJob(format!(
                    "'{}' has parallelism {p} above its max parallelism {max_p} (the number of key groups)",
                    n.name
                )));
            }
            nodes.push(NodeDesc {
                id: n.id,
                name: n.name.clone(),
                kind: n.kind,
                parallelism: p,
                max_parallelism: max_p,
                chaining: n.chaining,
                uid,
            });
        }
        let mut edges = Vec::new();
        for (index, e) in graph.edges.iter().enumerate() {
            let (up, down) = (&nodes[e.from], &nodes[e.to]);
            let partitioning = e.partitioning.unwrap_or(Partitioning::default_for(up.parallelism, down.parallelism));
            if partitioning == Partitioning::Forward && up.parallelism != down.parallelism {
                return Err(JobError::InvalidJob(format!(
                    "forward partitioning from '{}' (parallelism {}) to '{}' (parallelism {}) needs equal parallelism; \
                     use rebalance() or rescale()",
                    up.name, up.parallelism, down.name, down.parallelism
                )));
            }
            edges.push(EdgeDesc { index, from: e.from, to: e.to, partitioning, side: e.side_tag.is_some() });
        }
        Ok((nodes, edges))
    }

    /// The plan of a job, as text.
    pub(crate) fn explain(&self, graph: &StreamGraph, exec: &ExecutionConfig) -> Result<String, JobError> {
        let (nodes, edges) = self.resolve(graph, exec)?;
        let jg = job_graph::build(&nodes, &edges);
        let plan = execution::plan(&jg, &self.inner.config.credit);
        Ok(explain::render(&jg, &plan))
    }

    /// Deploys a job and returns at once. In distributed mode only the tasks of this
    /// TaskManager's job slots are deployed; channels to tasks elsewhere cross the connection to
    /// their TaskManager.
    ///
    /// On an embedded cluster the job is prepared here (so an invalid job is refused at once),
    /// then scheduled by the JobManager and deployed by the TaskManager, which hands the handle
    /// back.
    pub(crate) fn submit(&self, graph: StreamGraph, exec: ExecutionConfig, name: &str) -> Result<JobHandle, JobError> {
        let prepared = self.prepare(graph, exec, name)?;
        match &self.mini {
            Some(mini) => mini.submit(prepared),
            None => self.deploy(prepared, PartPlacement::default()),
        }
    }

    /// What a JobManager needs to know of a job's plan when it runs over `split`: the
    /// fingerprint every TaskManager process must compute alike, the job slots, the plan text
    /// and the vertices.
    pub(crate) fn plan_summary(
        &self,
        graph: &StreamGraph,
        exec: &ExecutionConfig,
        name: &str,
        split: &SlotSplit,
    ) -> Result<PlanSummary, JobError> {
        let (nodes, edges) = self.resolve(graph, exec)?;
        let jg = job_graph::build(&nodes, &edges);
        let credit = self.inner.config.credit;
        let plan = execution::plan(&jg, &credit);
        let text = explain::render(&jg, &plan);
        Ok(PlanSummary {
            fingerprint: execution::fingerprint(&text, &plan, name, &credit, split.count(), split.total()),
            slots_needed: plan.slots_needed,
            vertices: jg
                .vertices
                .iter()
                .map(|v| VertexSummary {
                    name: v.name.clone(),
                    parallelism: v.parallelism,
                    max_parallelism: v.max_parallelism,
                    nodes: v.nodes.clone(),
                    uids: v.nodes.iter().map(|&n| nodes[n].uid.clone()).collect(),
                    source: nodes[v.nodes[0]].kind == NodeKind::Source,
                })
                .collect(),
            text,
        })
    }

    /// Deploys this TaskManager's share of a job: every task when `placement` has no
    /// distribution, else the tasks of its job slots, on `placement.slots` if given (else any
    /// free slots). A fingerprint in `placement` must match this process's own build of the job.
    pub(crate) fn submit_part(
        &self,
        graph: StreamGraph,
        exec: ExecutionConfig,
        name: &str,
        placement: PartPlacement<'_>,
    ) -> Result<JobHandle, JobError> {
        let prepared = self.prepare(graph, exec, name)?;
        self.deploy(prepared, placement)
    }

    /// Resolves, chains and lays out a job without deploying it.
    pub(crate) fn prepare(
        &self,
        graph: StreamGraph,
        exec: ExecutionConfig,
        name: &str,
    ) -> Result<PreparedJob, JobError> {
        let (nodes, edges) = self.resolve(&graph, &exec)?;
        let jg = job_graph::build(&nodes, &edges);
        let plan = execution::plan(&jg, &self.inner.config.credit);
        let plan_text = explain::render(&jg, &plan);
        Ok(PreparedJob { graph, exec, name: name.to_string(), nodes, jg, plan, plan_text })
    }

    /// Deploys this TaskManager's share of a prepared job (see [`submit_part`](Self::submit_part))
    /// and starts its slot threads.
    pub(crate) fn deploy(&self, prepared: PreparedJob, placement: PartPlacement<'_>) -> Result<JobHandle, JobError> {
        let mut handle = self.deploy_unlaunched(prepared, placement)?;
        handle.launch();
        Ok(handle)
    }

    /// Deploys like [`deploy`](Self::deploy) up to the slot threads, which
    /// [`JobHandle::launch`] starts (an embedded job's submitter does, once the TaskManager
    /// has handed it the handle, so a new thread does not delay the hand-over).
    pub(crate) fn deploy_unlaunched(
        &self,
        prepared: PreparedJob,
        placement: PartPlacement<'_>,
    ) -> Result<JobHandle, JobError> {
        let PreparedJob { graph, exec, name, nodes, jg, plan, plan_text } = prepared;
        let name = name.as_str();
        let credit = self.inner.config.credit;
        let distribution = placement.distribution;
        let (tm, count, total_slots) = match distribution {
            Some(d) if plan.slots_needed > d.total_slots => {
                return Err(JobError::InvalidJob(format!(
                    "the job needs {} job slots (its highest parallelism) but the {} TaskManager(s) have {} \
                     (distribution.total_slots); lower the parallelism",
                    plan.slots_needed, d.count, d.total_slots
                )))
            }
            Some(d) => (d.index, d.count, d.total_slots),
            None => (0, 1, plan.slots_needed),
        };
        let split = distribution.map_or_else(|| SlotSplit::even(total_slots, 1), |d| d.split.clone());
        let owner = |job_slot: u32| split.owner(job_slot);
        let local = split.local(tm);
        let local = local.start.min(plan.slots_needed)..local.end.min(plan.slots_needed);
        let lease = match placement.slots {
            Some(slots) if slots.len() == local.len() => self.lease_exact(slots)?,
            Some(slots) => {
                return Err(JobError::InvalidJob(format!(
                    "this TaskManager runs {} job slot(s) of the job but was given {} slot(s)",
                    local.len(),
                    slots.len()
                )))
            }
            None => self.lease(local.len() as u32)?,
        };
        let routes = execution::channel_routes(&plan, tm, &split);
        let buffers_needed = execution::buffers_needed_for(&plan, &credit, tm, &split);
        let reservation = self.inner.pool.reserve(buffers_needed)?;
        let shared = Arc::new(JobShared::new(
            name.to_string(),
            nodes.iter().map(|n| n.name.clone()).collect(),
            nodes.iter().map(|n| n.parallelism).collect(),
        ));

        let bells: Vec<Option<Arc<Doorbell>>> =
            plan.tasks.iter().map(|t| (owner(t.slot) == tm).then(|| Arc::new(Doorbell::new()))).collect();
        bells.iter().flatten().for_each(|b| shared.add_bell(b.clone()));
        let task_index = |vertex: usize, subtask: u32| {
            plan.tasks.iter().position(|t| t.vertex == vertex && t.subtask == subtask).expect("task exists")
        };
        let bell_of = |t: usize| bells[t].clone().expect("the task of a channel end that runs here has a bell");
        let mut links = Vec::<(u32, LinkBuild)>::new();
        let fingerprint =
            distribution.map(|_| execution::fingerprint(&plan_text, &plan, name, &credit, count, total_slots));
        if let (Some(expected), Some(own)) = (placement.fingerprint, fingerprint) {
            if expected != own {
                return Err(JobError::InvalidJob(format!(
                    "this TaskManager built a different plan for job '{name}' than the JobManager (fingerprint \
                     {own:016x}, expected {expected:016x}): are both running the same binary and job arguments?"
                )));
            }
        }
        let (deployment, ids): (u64, &[TmId]) = match (distribution, placement.peers) {
            (Some(d), Some((key, ids))) if ids.len() == d.count as usize => (key, ids),
            (Some(d), Some((_, ids))) => {
                return Err(JobError::InvalidJob(format!(
                    "the deployment names {} TaskManager id(s) for {} participant(s)",
                    ids.len(),
                    d.count
                )))
            }
            (Some(_), None) => {
                return Err(JobError::InvalidJob(
                    "a part of a job across TaskManagers needs its deployment key and every participant's id".into(),
                ))
            }
            (None, _) => (0, &[]),
        };
        let peer_id = |peer: u32| ids[peer as usize];
        // One link per peer TaskManager that shares a channel with this one; the link's bell
        // wakes the connection's writer, and its channels are built with it.
        let link_for = |links: &mut Vec<(u32, LinkBuild)>, peer: u32| -> usize {
            if let Some(i) = links.iter().position(|(p, _)| *p == peer) {
                return i;
            }
            let d = distribution.expect("remote channels exist only in distributed mode");
            let fingerprint = fingerprint.expect("computed in distributed mode");
            let channels = plan.channels.len() as u32;
            let id = peer_id(peer);
            let data_addr = d.peers[peer as usize];
            links.push((
                peer,
                LinkBuild {
                    peer: PeerAddress { id, data_addr },
                    name: format!("TaskManager {} ({data_addr})", id.short()),
                    spec: JobSpec::new(deployment, fingerprint, channels, Arc::new(Doorbell::new())),
                    outbound: Vec::new(),
                },
            ));
            links.len() - 1
        };
        let channels: Vec<Option<Arc<LocalChannel>>> = plan
            .channels
            .iter()
            .zip(&routes)
            .enumerate()
            .map(|(id, (c, route))| {
                let e = &jg.edges[c.edge];
                let producer = task_index(e.source, c.producer);
                let consumer = task_index(e.target, c.consumer);
                match *route {
                    ChannelRoute::Local => {
                        Some(LocalChannel::new(credit.exclusive_per_channel, bell_of(producer), bell_of(consumer)))
                    }
                    ChannelRoute::Outbound { peer } => {
                        let i = link_for(&mut links, peer);
                        let l = &mut links[i].1;
                        let channel = LocalChannel::new_remote_out(bell_of(producer), l.spec.bell().clone());
                        l.spec.add_outbound(id as u32, channel.clone());
                        l.outbound.push(channel.clone());
                        Some(channel)
                    }
                    ChannelRoute::Inbound { peer } => {
                        let i = link_for(&mut links, peer);
                        let l = &mut links[i].1;
                        let channel = LocalChannel::new_remote_in(
                            credit.exclusive_per_channel,
                            l.spec.bell().clone(),
                            bell_of(consumer),
                        );
                        let head = jg.vertices[e.target].nodes[0];
                        l.spec.add_inbound(id as u32, channel.clone(), graph.nodes[head].runtime.validator());
                        Some(channel)
                    }
                    ChannelRoute::Elsewhere => None,
                }
            })
            .collect();
        let channel = |c: usize| channels[c].clone().expect("a channel of a local task exists here");

        let op_metrics: Vec<Vec<Arc<OperatorMetrics>>> =
            nodes.iter().map(|n| (0..n.parallelism).map(|_| Arc::new(OperatorMetrics::default())).collect()).collect();
        let mut metrics = JobMetrics {
            operators: nodes.iter().map(|n| (n.id, n.name.clone(), n.parallelism, op_metrics[n.id].clone())).collect(),
            tasks: Vec::new(),
            task_vertices: Vec::new(),
        };

        let mut per_slot: Vec<Vec<TaskBuild>> = local.clone().map(|_| Vec::new()).collect();
        let mut mailboxes = Vec::new();
        for (t, spec) in plan.tasks.iter().enumerate() {
            if owner(spec.slot) != tm {
                continue;
            }
            let vertex = &jg.vertices[spec.vertex];
            let counters = Arc::new(TaskCounters::default());
            let local_index = (spec.slot - local.start) as usize;
            let slot = lease.slots[local_index];
            metrics.tasks.push((vertex.name.clone(), spec.subtask, slot, counters.clone()));
            metrics.task_vertices.push(spec.vertex as u32);
            let outputs = spec
                .outputs
                .iter()
                .map(|o| {
                    let e = &jg.edges[o.edge];
                    OutputEdgeRt {
                        partitioning: e.partitioning,
                        channels: o.channels.iter().map(|c| OutputChannel::new(channel(*c), &credit)).collect(),
                        key_hash: graph.edges[e.stream_edge].key_hash.clone(),
                        consumer_node: e.to_node,
                        consumer_parallelism: jg.vertices[e.target].parallelism,
                        max_parallelism: nodes[e.to_node].max_parallelism,
                        side: graph.edges[e.stream_edge].side_tag.as_ref().map(|tag| SideEdgeRt {
                            producer: e.from_node,
                            tag: tag.clone(),
                            consumer_rt: graph.nodes[e.to_node].runtime.clone(),
                        }),
                    }
                })
                .collect();
            let head = vertex.nodes[0];
            let checkpointing = match placement.checkpoints {
                None => None,
                Some(c) => {
                    let task = crate::checkpoint::TaskId { vertex: spec.vertex as u32, subtask: spec.subtask };
                    let restore = match &c.restore {
                        Some(loader) => loader.load(task)?.map(Arc::new),
                        None => None,
                    };
                    let mailbox = Arc::new(crate::checkpoint::ControlMailbox::new(
                        bell_of(t),
                        crate::checkpoint::ControlMailbox::DEFAULT_CAPACITY,
                    ));
                    mailboxes.push(TaskMailbox {
                        task,
                        source: nodes[head].kind == NodeKind::Source,
                        mailbox: mailbox.clone(),
                    });
                    Some(crate::checkpoint::TaskCheckpointing {
                        task,
                        mailbox,
                        options: c.options,
                        reporter: c.reporter.clone(),
                        restore,
                    })
                }
            };
            per_slot[local_index].push(TaskBuild {
                subtask: spec.subtask,
                parallelism: vertex.parallelism,
                mode: exec.runtime_mode,
                max_parallelism: vertex.max_parallelism,
                auto_watermark_interval: exec.auto_watermark_interval,
                nodes: vertex
                    .nodes
                    .iter()
                    .map(|n| (*n, graph.nodes[*n].runtime.clone(), op_metrics[*n][spec.subtask as usize].clone()))
                    .collect(),
                head_is_source: nodes[head].kind == NodeKind::Source,
                outputs,
                inputs: spec.inputs.iter().map(|c| channel(*c)).collect(),
                credit,
                bell: bell_of(t),
                counters,
                pool: self.inner.pool.clone(),
                buffer_timeout: exec.buffer_timeout,
                max_watermark_skew: exec.max_watermark_skew,
                state_backend: exec.state_backend,
                lsm: exec.lsm.clone(),
                batch_size: exec.batch_size,
                checkpointing,
            });
        }
        drop(channels);
        drop(graph);

        let summaries = Arc::new(Mutex::new(Vec::new()));
        let peers = links.len();
        let network_done = if links.is_empty() {
            None
        } else {
            let (guard, done) = DoneGuard::new();
            let bell = Arc::new(Doorbell::new());
            shared.add_bell(bell.clone());
            let job = JobNetwork {
                deployment,
                job: shared.clone(),
                bell,
                links: links.into_iter().map(|(_, l)| l).collect(),
                summaries: summaries.clone(),
                done: guard,
            };
            let handed = match &self.inner.network {
                Some(n) => n.open(job).map_err(|e| e.to_string()),
                None => {
                    Err("this cluster has no data listener: only a TaskManager of the cluster runtime runs parts of jobs across TaskManagers".into())
                }
            };
            if let Err(reason) = handed {
                shared.fail(JobError::DataPlaneUnavailable { reason });
            }
            Some(done)
        };
        tracing::info!(job = name, tasks = metrics.tasks.len(), buffers = buffers_needed, peers, "deploying job");
        let started = Instant::now();
        let pending = per_slot
            .into_iter()
            .enumerate()
            .map(|(i, tasks)| {
                let slot = lease.slots[i];
                let settings = SlotSettings {
                    slot,
                    cpu: self.inner.slot_cpus[slot as usize],
                    io_memory_bytes: self.inner.config.io_memory_bytes,
                    preempt_timer: self.inner.config.preempt_timer,
                    spin_before_park: self.inner.config.spin_before_park,
                };
                (settings, tasks)
            })
            .collect();
        Ok(JobHandle {
            view: Arc::new(JobView {
                shared,
                started,
                metrics,
                plan: plan_text,
                buffers_reserved: buffers_needed,
                network: summaries,
                pool: self.inner.pool.clone(),
                mailboxes,
            }),
            threads: Vec::new(),
            pending,
            network_done,
            _reservation: reservation,
            _slots: lease,
            attachment: None,
        })
    }
}
