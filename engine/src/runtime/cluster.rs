//! The local cluster: a JobManager and one TaskManager in this process, the default for
//! embedding, tests and `corestream run`. It owns the TaskManager's slots (each with the CPU it
//! is pinned to) and its buffer pool. Submitting a job resolves parallelism and partitioning,
//! chains operators, lays out channels, leases slots and reserves buffers, then starts one slot
//! thread per leased slot. Several jobs may run at once on disjoint slots; nothing is global.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use corestream_netstack::{BufferPool, Doorbell, JobSpec, LocalChannel, OutputChannel, PeerSession};

use super::build::{OutputEdgeRt, SideEdgeRt};
use super::job::{JobHandle, JobMetrics, JobShared};
use super::metrics::TaskCounters;
use super::remote::{JobNetwork, SessionBuild};
use super::slot::{self, SlotSettings, TaskBuild};
use super::startup;
use super::topology::Topology;
use crate::api::env::StreamEnvironment;
use crate::config::{auto_network_buffers, ClusterConfig, ExecutionConfig};
use crate::error::{JobError, StartupError};
use crate::graph::execution::ChannelRoute;
use crate::graph::job_graph::{self, EdgeDesc, NodeDesc};
use crate::graph::stream_graph::{NodeKind, StreamGraph};
use crate::graph::{execution, explain, Partitioning};
use crate::operators::OperatorMetrics;

pub(crate) struct ClusterInner {
    pub config: ClusterConfig,
    pub slot_cpus: Vec<Option<usize>>,
    busy: Mutex<Vec<bool>>,
    pub pool: BufferPool,
    pub topology: Topology,
    /// The data listener of a TaskManager in distributed mode.
    pub listener: Option<Arc<std::net::TcpListener>>,
}

/// An embedded cluster.
#[derive(Clone)]
pub struct LocalCluster {
    pub(crate) inner: Arc<ClusterInner>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").field("slots", &self.inner.slot_cpus).finish_non_exhaustive()
    }
}

/// Slots held by a running job; released when the job's handle is dropped.
pub(crate) struct SlotLease {
    cluster: Arc<ClusterInner>,
    slots: Vec<u32>,
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        let mut busy = self.cluster.busy.lock().unwrap_or_else(|e| e.into_inner());
        for s in &self.slots {
            busy[*s as usize] = false;
        }
    }
}

impl LocalCluster {
    /// Starts a cluster after checking the machine (io_uring, locked-memory limit). With a
    /// [`Distribution`](crate::config::Distribution) it is one TaskManager of several: it
    /// checks the distribution and the network settings, and binds its data address unless a
    /// listener is given.
    pub fn start(config: ClusterConfig) -> Result<Self, StartupError> {
        let topology = Topology::detect();
        let local = match &config.distribution {
            Some(d) => {
                d.validate().map_err(|e| StartupError::InvalidConfig(e.to_string()))?;
                config.net.validate().map_err(|e| StartupError::InvalidConfig(format!("net: {e}")))?;
                d.local_slots()
            }
            None => 0..0,
        };
        let distributed = config.distribution.is_some();
        let slots = match (config.slots, distributed) {
            (Some(s), _) => s,
            (None, true) => local.len() as u32,
            (None, false) => topology.physical_cores() as u32,
        };
        if slots == 0 && !distributed {
            return Err(StartupError::InvalidConfig("slots must be at least 1".into()));
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
        startup::check(slots, config.io_memory_bytes)?;
        if slots as usize > topology.physical_cores() {
            tracing::warn!(
                slots,
                cores = topology.physical_cores(),
                "more slots than physical cores: slots will share cores and interfere with each other"
            );
        }
        // In distributed mode local slot i is job slot `local.start + i`, and takes its core.
        let first = local.start as usize;
        let slot_cpus =
            topology.slot_cpus(first as u32 + slots)[first..].iter().map(|&c| config.pin_slots.then_some(c)).collect();
        let listener = match &config.distribution {
            Some(d) => Some(match &config.data_listener {
                Some(l) => l.clone(),
                None => {
                    let addr = d.peers[d.index as usize];
                    Arc::new(std::net::TcpListener::bind(addr).map_err(|e| {
                        StartupError::InvalidConfig(format!(
                            "cannot listen on the data address {addr} of TaskManager {} (distribution.peers[{}]): {e}",
                            d.index, d.index
                        ))
                    })?)
                }
            }),
            None => None,
        };
        tracing::info!(slots, topology = topology.source, buffers, distributed, "local cluster started");
        Ok(Self {
            inner: Arc::new(ClusterInner {
                pool: BufferPool::new(buffers),
                busy: Mutex::new(vec![false; slots as usize]),
                slot_cpus,
                topology,
                listener,
                config,
            }),
        })
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
        self.inner.listener.as_ref().and_then(|l| l.local_addr().ok())
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
        Ok(SlotLease { cluster: self.inner.clone(), slots })
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
        let slots = self.inner.config.distribution.as_ref().map_or(self.num_slots(), |d| d.total_slots);
        let default_p = exec.parallelism.unwrap_or(slots);
        if default_p == 0 {
            return Err(JobError::InvalidJob("parallelism must be at least 1".into()));
        }
        let mut nodes = Vec::new();
        for n in &graph.nodes {
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
    pub(crate) fn submit(&self, graph: StreamGraph, exec: ExecutionConfig, name: &str) -> Result<JobHandle, JobError> {
        let (nodes, edges) = self.resolve(&graph, &exec)?;
        let jg = job_graph::build(&nodes, &edges);
        let credit = self.inner.config.credit;
        let plan = execution::plan(&jg, &credit);
        let plan_text = explain::render(&jg, &plan);
        let distribution = self.inner.config.distribution.as_ref();
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
        let owner = |job_slot: u32| execution::owner_of_slot(job_slot, total_slots, count);
        let local = execution::local_slots(tm, total_slots, count);
        let local = local.start.min(plan.slots_needed)..local.end.min(plan.slots_needed);
        let lease = self.lease(local.len() as u32)?;
        let routes = execution::channel_routes(&plan, tm, total_slots, count);
        let buffers_needed = execution::buffers_needed_for(&plan, &credit, tm, total_slots, count);
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
        let mut sessions = Vec::<SessionBuild>::new();
        let fingerprint =
            distribution.map(|_| execution::fingerprint(&plan_text, &plan, name, &credit, count, total_slots));
        let session_for = |sessions: &mut Vec<SessionBuild>, peer: u32| -> usize {
            if let Some(i) = sessions.iter().position(|s| s.peer == peer) {
                return i;
            }
            let d = distribution.expect("remote channels exist only in distributed mode");
            let fingerprint = fingerprint.expect("computed in distributed mode");
            let channels = plan.channels.len() as u32;
            let config = super::remote::session_config(tm, peer, &self.inner.config.net);
            let bell = Arc::new(Doorbell::new());
            shared.add_bell(bell.clone());
            sessions.push(SessionBuild {
                peer,
                peer_addr: d.peers[peer as usize],
                dial: tm < peer,
                session: PeerSession::new(config, self.inner.pool.clone()),
                job: JobSpec::new(super::remote::APP_DEPLOYMENT, fingerprint, channels, bell.clone()),
                bell,
                outbound: Vec::new(),
            });
            sessions.len() - 1
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
                        let i = session_for(&mut sessions, peer);
                        let s = &mut sessions[i];
                        let channel = LocalChannel::new_remote_out(bell_of(producer), s.bell.clone());
                        s.job.add_outbound(id as u32, channel.clone());
                        s.outbound.push(channel.clone());
                        Some(channel)
                    }
                    ChannelRoute::Inbound { peer } => {
                        let i = session_for(&mut sessions, peer);
                        let s = &mut sessions[i];
                        let channel = LocalChannel::new_remote_in(
                            credit.exclusive_per_channel,
                            s.bell.clone(),
                            bell_of(consumer),
                        );
                        let head = jg.vertices[e.target].nodes[0];
                        s.job.add_inbound(id as u32, channel.clone(), graph.nodes[head].runtime.validator());
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
        };

        let mut per_slot: Vec<Vec<TaskBuild>> = local.clone().map(|_| Vec::new()).collect();
        for (t, spec) in plan.tasks.iter().enumerate() {
            if owner(spec.slot) != tm {
                continue;
            }
            let vertex = &jg.vertices[spec.vertex];
            let counters = Arc::new(TaskCounters::default());
            let local_index = (spec.slot - local.start) as usize;
            let slot = lease.slots[local_index];
            metrics.tasks.push((vertex.name.clone(), spec.subtask, slot, counters.clone()));
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
                batch_size: exec.batch_size,
            });
        }
        drop(channels);
        drop(graph);

        let summaries = Arc::new(Mutex::new(Vec::new()));
        let mut network = (!sessions.is_empty()).then(|| JobNetwork {
            sessions,
            listener: self.inner.listener.clone(),
            config: self.inner.config.net,
            summaries: summaries.clone(),
        });
        tracing::info!(
            job = name,
            tasks = metrics.tasks.len(),
            buffers = buffers_needed,
            connections = network.as_ref().map_or(0, |n| n.sessions.len()),
            "deploying job"
        );
        let started = Instant::now();
        let mut threads = Vec::new();
        for (i, tasks) in per_slot.into_iter().enumerate() {
            let slot = lease.slots[i];
            let settings = SlotSettings {
                slot,
                cpu: self.inner.slot_cpus[slot as usize],
                io_memory_bytes: self.inner.config.io_memory_bytes,
                preempt_timer: self.inner.config.preempt_timer,
                spin_before_park: self.inner.config.spin_before_park,
            };
            match slot::spawn(settings, tasks, network.take(), shared.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.fail(JobError::SlotStart { slot, message: e.to_string() });
                    break;
                }
            }
        }
        Ok(JobHandle {
            shared,
            threads,
            started,
            metrics,
            plan: plan_text,
            buffers_reserved: buffers_needed,
            network: summaries,
            pool: self.inner.pool.clone(),
            _reservation: reservation,
            _slots: lease,
        })
    }
}
