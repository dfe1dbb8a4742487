//! The TaskManager: a process's slots and buffer pool (a [`LocalCluster`] with a data
//! listener), and its side of the control plane. A thread of its own (`cs-tm-control`, a tokio
//! runtime, never a slot core) connects to the JobManager, registers the slots with their CPUs,
//! exchanges heartbeats, reserves slots for allocations, starts deployments (each on a thread
//! of its own, see `deployment`), forwards task states and part outcomes, and commits or
//! discards staged output when the JobManager says so.
//!
//! Its data connections to other TaskManagers belong to the cluster's network executor
//! (`cs-net`, see [`crate::runtime::cluster`]): at most one connection per peer TaskManager,
//! shared by every job running on both. Registering gives the executor this TaskManager's
//! identity — its id and the JobManager's cluster token, keyed by the cluster secret if there is
//! one — which every data connection's handshake proves; registering with another JobManager
//! replaces the connections (its deployments have all ended by then). The connection counters
//! are in [`TaskManagerStatus`] and go to the JobManager with every heartbeat.
//!
//! A TaskManager that loses its JobManager (connection closed, or no heartbeat for the
//! timeout) cancels every deployment, waits for its tasks to end, discards what they staged,
//! and registers again, with backoff, until a JobManager answers: no task outlives its job.
//! A JobManager that refuses the registration (wrong or missing secret, another protocol
//! version) or cannot prove the secret itself stops the TaskManager at once with the reason,
//! as Flink's TaskExecutor treats a declined registration: retrying cannot help.

pub(crate) mod checkpoints;
mod deployment;
pub(crate) mod local;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use self::deployment::{DeploymentControl, DeploymentEvent};
use crate::config::ClusterConfig;
use crate::error::StartupError;
use crate::registry::JobRegistry;
use crate::rpc::frame::{read_frame, write_frame, FrameError};
use crate::rpc::ids::{DeploymentKey, TaskManagerId};
use crate::rpc::messages::{
    Bytes32, DataPlaneReport, JmMessage, PartOutcome, Registration, SlotDescription, TmMessage, PROTOCOL_VERSION,
};
use crate::runtime::cluster::LocalCluster;
use crate::runtime::job::StagedOutputs;
use corestream_netstack::handshake::{ClusterAuth, TmId};
use corestream_netstack::remote::LocalIdentity;
use corestream_netstack::{BufferPool, PlaneStats};

/// How a TaskManager runs.
#[derive(Debug, Clone)]
pub struct TaskManagerConfig {
    /// The JobManager's control-plane address (`jobmanager.rpc.address:jobmanager.rpc.port`).
    pub jobmanager: String,
    /// Slots, pool, credit and core pinning. `slots: None` is one per physical core.
    pub cluster: ClusterConfig,
    /// Where the data listener binds (port 0: any free port).
    pub data_bind: SocketAddr,
    /// The address other TaskManagers dial; by default the local address of this
    /// TaskManager's connection to the JobManager.
    pub advertised_host: Option<IpAddr>,
    /// The cluster secret; `None` when authentication is off.
    pub secret: Option<crate::auth::ClusterSecret>,
    /// First wait before registering again after a failure; doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// How long one registration attempt may take.
    pub registration_timeout: Duration,
    /// The TaskManager stops when it has not been registered for this long
    /// (`taskmanager.registration.timeout`); `None` tries forever.
    pub give_up_after: Option<Duration>,
}

impl Default for TaskManagerConfig {
    fn default() -> Self {
        Self {
            jobmanager: "127.0.0.1:6123".into(),
            cluster: ClusterConfig::default(),
            data_bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            advertised_host: None,
            secret: None,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            registration_timeout: Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

/// Why a TaskManager could not register (logged; it retries).
#[derive(Debug, Error)]
enum RegisterError {
    #[error("cannot connect to the JobManager at {address}: {cause}")]
    Connect { address: String, cause: std::io::Error },
    #[error("the JobManager at {address} refused this TaskManager: {reason}")]
    Refused { address: String, reason: String },
    #[error("the JobManager at {address} did not prove the cluster secret: is it the right cluster?")]
    BadProof { address: String },
    #[error("registration with the JobManager at {address} timed out")]
    Timeout { address: String },
    #[error("registration with the JobManager at {address}: {cause}")]
    Frame { address: String, cause: FrameError },
    #[error("registered with the JobManager at {address}, but the data connections cannot follow: {reason}")]
    DataPlane { address: String, reason: String },
    #[error("the JobManager at {address} sent {got} where its {expected} was expected")]
    Unexpected { address: String, got: String, expected: &'static str },
}

impl RegisterError {
    /// Whether trying again cannot help: the JobManager refused this TaskManager (a wrong or
    /// missing secret, another protocol version, no slots) or could not prove the cluster
    /// secret itself (another cluster). As in Flink, a refused registration stops the
    /// TaskManager rather than retrying until `taskmanager.registration.timeout`.
    fn is_final(&self) -> bool {
        matches!(self, RegisterError::Refused { .. } | RegisterError::BadProof { .. })
    }
}

/// What a TaskManager reports about itself (for tests and its command line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskManagerStatus {
    /// Registered with a JobManager now.
    pub registered: bool,
    /// Times it registered (a new JobManager, or the same one after a lost connection).
    pub registrations: u64,
    /// Deployments running now.
    pub running_deployments: usize,
    /// Deployments it ever started.
    pub deployments_started: u64,
    /// Why it stopped on its own: no JobManager within `give_up_after`, or refused by one.
    pub gave_up: Option<String>,
    /// Its data connections since it joined its current cluster.
    pub data_plane: PlaneStats,
}

struct Shared {
    status: Mutex<TaskManagerStatus>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut TaskManagerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A running TaskManager.
pub struct TaskManager {
    id: TaskManagerId,
    cluster: LocalCluster,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager").field("id", &self.id).finish_non_exhaustive()
    }
}

impl TaskManager {
    /// Starts the slots, the pool and the data listener, then registers with the JobManager in
    /// the background (retrying until one answers).
    pub fn start(settings: TaskManagerConfig, registry: JobRegistry) -> Result<Self, StartupError> {
        let listener = std::net::TcpListener::bind(settings.data_bind).map_err(|e| {
            StartupError::InvalidConfig(crate::conf::listen_error(
                "data connections",
                settings.data_bind,
                "taskmanager.bind-host",
                "taskmanager.data.port",
                &e,
            ))
        })?;
        let mut config = settings.cluster.clone();
        config.data_listener = Some(Arc::new(listener));
        let cluster = LocalCluster::start(config)?;
        let id = TaskManagerId::random();
        let shared = Arc::new(Shared { status: Mutex::new(TaskManagerStatus::default()) });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Control { id, cluster: cluster.clone(), registry, settings, shared: shared.clone() };
        let thread = std::thread::Builder::new()
            .name("cs-tm-control".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "the TaskManager's control thread cannot start its runtime");
                        return;
                    }
                };
                runtime.block_on(ctx.run(shutdown_rx));
            })
            .map_err(|e| StartupError::InvalidConfig(format!("cannot start the control thread: {e}")))?;
        tracing::info!(%id, slots = cluster.num_slots(), data = ?cluster.data_address(), "TaskManager started");
        Ok(Self { id, cluster, shared, shutdown, thread: Some(thread) })
    }

    pub fn id(&self) -> TaskManagerId {
        self.id
    }

    /// Where other TaskManagers reach this one's data listener (as bound).
    pub fn data_address(&self) -> Option<SocketAddr> {
        self.cluster.data_address()
    }

    pub fn num_slots(&self) -> u32 {
        self.cluster.num_slots()
    }

    pub fn status(&self) -> TaskManagerStatus {
        let mut status = self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        status.data_plane = self.cluster.data_plane_stats();
        status
    }

    /// The TaskManager's buffer pool (shared by its jobs and its data connections).
    pub fn pool(&self) -> &BufferPool {
        self.cluster.pool()
    }

    /// Waits until the TaskManager is registered, at most `timeout`.
    pub fn wait_registered(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.status().registered {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.status().registered
    }

    /// Cancels every deployment, waits for their tasks, and stops.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Blocks until the TaskManager stops (it stops only through [`TaskManager::shutdown`] or
    /// when its control thread ends).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.cluster.shutdown_network();
    }
}

impl Drop for TaskManager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One deployment as the control loop tracks it.
struct Tracked {
    control: Arc<DeploymentControl>,
    thread: Option<JoinHandle<()>>,
    /// Output staged by a part that finished, waiting for Commit or Discard.
    staged: Option<StagedOutputs>,
    ended: bool,
}

/// The control loop's state.
struct Control {
    id: TaskManagerId,
    cluster: LocalCluster,
    registry: JobRegistry,
    settings: TaskManagerConfig,
    shared: Arc<Shared>,
}

/// Where a session's messages to the JobManager go.
enum Outbound {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// The JobManager of this process (an embedded cluster, see [`local`]).
    Local(mpsc::Sender<TmMessage>),
}

impl Outbound {
    async fn send(&mut self, message: TmMessage) -> Result<(), String> {
        match self {
            Outbound::Tcp(writer) => write_frame(writer, &message).await.map_err(|e| e.to_string()),
            Outbound::Local(tx) => tx.send(message).await.map_err(|_| "the JobManager stopped".to_string()),
        }
    }
}

/// Why a session with a JobManager ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Control {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (events_tx, mut events) = mpsc::channel::<DeploymentEvent>(1024);
        let mut deployments: HashMap<DeploymentKey, Tracked> = HashMap::new();
        let mut backoff = self.settings.reconnect_initial;
        let mut unregistered_since = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Some(limit) = self.settings.give_up_after.filter(|l| unregistered_since.elapsed() > *l) {
                let why = format!(
                    "not registered with the JobManager at {} for {limit:?} (taskmanager.registration.timeout)",
                    self.settings.jobmanager
                );
                tracing::error!("{why}: stopping");
                self.shared.update(|s| s.gave_up = Some(why));
                break;
            }
            let attempt = tokio::time::timeout(self.settings.registration_timeout, self.register());
            let registered = tokio::select! {
                r = attempt => r.unwrap_or_else(|_| Err(RegisterError::Timeout { address: self.settings.jobmanager.clone() })),
                _ = shutdown.changed() => break,
            };
            match registered {
                Ok((stream, heartbeat_timeout, interval)) => {
                    backoff = self.settings.reconnect_initial;
                    self.shared.update(|s| {
                        s.registered = true;
                        s.registrations += 1;
                    });
                    let end = self
                        .session(
                            stream,
                            heartbeat_timeout,
                            interval,
                            &events_tx,
                            &mut events,
                            &mut deployments,
                            &mut shutdown,
                        )
                        .await;
                    self.shared.update(|s| s.registered = false);
                    unregistered_since = Instant::now();
                    match end {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost(why) => {
                            tracing::warn!(jobmanager = %self.settings.jobmanager, %why, "lost the JobManager: cancelling every task");
                            cancel_all(&mut deployments, &mut events).await;
                            self.shared.update(|s| s.running_deployments = 0);
                        }
                    }
                }
                Err(e) if e.is_final() => {
                    tracing::error!(error = %e, "TaskManager not registered: stopping");
                    self.shared.update(|s| s.gave_up = Some(e.to_string()));
                    break;
                }
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "TaskManager not registered"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => break,
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max);
        }
        cancel_all(&mut deployments, &mut events).await;
        self.shared.update(|s| s.running_deployments = 0);
    }

    /// Connects and registers; returns the stream and the heartbeat timeout and interval.
    async fn register(&self) -> Result<(TcpStream, Duration, Duration), RegisterError> {
        let address = self.settings.jobmanager.clone();
        let mut stream = TcpStream::connect(&address)
            .await
            .map_err(|cause| RegisterError::Connect { address: address.clone(), cause })?;
        let _ = stream.set_nodelay(true);
        let frame = |cause| RegisterError::Frame { address: address.clone(), cause };
        let challenge = match read_frame::<_, JmMessage>(&mut stream).await.map_err(frame)? {
            JmMessage::Challenge { nonce, .. } => nonce,
            JmMessage::Refused { reason } => return Err(RegisterError::Refused { address, reason }),
            other => return Err(RegisterError::Unexpected { address, got: kind(&other), expected: "challenge" }),
        };
        let local = stream.local_addr().map_err(|cause| RegisterError::Connect { address: address.clone(), cause })?;
        let data = self.cluster.data_address().expect("a TaskManager's cluster has a data listener");
        let host = self.settings.advertised_host.unwrap_or(local.ip());
        let nonce = Bytes32(crate::auth::nonce());
        let registration = Registration {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            id: self.id,
            hostname: hostname(),
            pid: std::process::id(),
            data_address: SocketAddr::new(host, data.port()),
            slots: self
                .cluster
                .slot_cpus()
                .iter()
                .enumerate()
                .map(|(i, cpu)| SlotDescription { index: i as u32, cpu: *cpu })
                .collect(),
            network_buffers: self.cluster.pool().capacity(),
            job_types: self.registry.names(),
            proof: self
                .settings
                .secret
                .as_ref()
                .map(|s| Bytes32(crate::auth::mac(s, &[b"tm-register".as_slice(), &challenge.0, &self.id.0]))),
            nonce,
        };
        write_frame(&mut stream, &TmMessage::Register(Box::new(registration))).await.map_err(frame)?;
        match read_frame::<_, JmMessage>(&mut stream).await.map_err(frame)? {
            JmMessage::Registered { heartbeat_interval_ms, heartbeat_timeout_ms, proof, cluster_token, .. } => {
                if let Some(secret) = &self.settings.secret {
                    let parts: [&[u8]; 3] = [b"jm-registered", &nonce.0, &self.id.0];
                    if !proof.is_some_and(|p| crate::auth::verify(secret, &parts, &p.0)) {
                        return Err(RegisterError::BadProof { address });
                    }
                }
                let secret = self.settings.secret.as_ref().map(|s| s.as_bytes());
                let identity = LocalIdentity {
                    tm: TmId(self.id.0),
                    pid: std::process::id(),
                    auth: ClusterAuth::new(cluster_token.0, secret),
                };
                self.cluster
                    .set_network_identity(identity)
                    .map_err(|e| RegisterError::DataPlane { address: address.clone(), reason: e.to_string() })?;
                tracing::info!(jobmanager = %address, "registered with the JobManager");
                Ok((stream, Duration::from_millis(heartbeat_timeout_ms), Duration::from_millis(heartbeat_interval_ms)))
            }
            JmMessage::Refused { reason } => Err(RegisterError::Refused { address, reason }),
            other => {
                Err(RegisterError::Unexpected { address, got: kind(&other), expected: "answer to the registration" })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        stream: TcpStream,
        heartbeat_timeout: Duration,
        interval: Duration,
        events_tx: &mpsc::Sender<DeploymentEvent>,
        events: &mut mpsc::Receiver<DeploymentEvent>,
        deployments: &mut HashMap<DeploymentKey, Tracked>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let (mut reader, writer) = stream.into_split();
        // The reader runs as a task of its own, so a frame is never abandoned half read.
        let (incoming_tx, incoming) = mpsc::channel::<Result<JmMessage, FrameError>>(256);
        let reader_task = tokio::spawn(async move {
            loop {
                let message = read_frame::<_, JmMessage>(&mut reader).await;
                let stop = message.is_err();
                if incoming_tx.send(message).await.is_err() || stop {
                    break;
                }
            }
        });
        let end = self
            .serve(
                incoming,
                Outbound::Tcp(writer),
                heartbeat_timeout,
                interval,
                events_tx,
                events,
                deployments,
                shutdown,
            )
            .await;
        reader_task.abort();
        end
    }

    /// The session's loop over any transport: messages of the JobManager from `incoming`,
    /// answers, heartbeats and deployment events to `out`.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        mut incoming: mpsc::Receiver<Result<JmMessage, FrameError>>,
        mut out: Outbound,
        heartbeat_timeout: Duration,
        interval: Duration,
        events_tx: &mpsc::Sender<DeploymentEvent>,
        events: &mut mpsc::Receiver<DeploymentEvent>,
        deployments: &mut HashMap<DeploymentKey, Tracked>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let mut reservations: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut last_heard = Instant::now();
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        loop {
            let messages: Vec<TmMessage> = tokio::select! {
                _ = shutdown.changed() => break SessionEnd::Shutdown,
                _ = tick.tick() => {
                    if last_heard.elapsed() > heartbeat_timeout {
                        break SessionEnd::Lost(format!("no heartbeat from the JobManager for {heartbeat_timeout:?}"));
                    }
                    let running = deployments.iter().filter(|(_, t)| !t.ended).map(|(k, _)| *k).collect();
                    let data_plane = Some(DataPlaneReport::from_stats(&self.cluster.data_plane_stats()));
                    vec![TmMessage::Heartbeat { deployments: running, data_plane }]
                }
                message = incoming.recv() => match message {
                    Some(Ok(message)) => {
                        last_heard = Instant::now();
                        self.handle(message, &mut reservations, deployments, events_tx)
                    }
                    Some(Err(FrameError::Closed)) | None => break SessionEnd::Lost("the JobManager closed the connection".into()),
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                },
                event = events.recv() => match event {
                    Some(event) => self.on_event(event, deployments),
                    None => break SessionEnd::Shutdown,
                },
            };
            let mut failed = None;
            for m in messages {
                if let Err(e) = out.send(m).await {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                break SessionEnd::Lost(e);
            }
        }
    }

    /// Handles one message of the JobManager; returns the answers.
    fn handle(
        &self,
        message: JmMessage,
        reservations: &mut HashMap<u64, Vec<u32>>,
        deployments: &mut HashMap<DeploymentKey, Tracked>,
        events_tx: &mpsc::Sender<DeploymentEvent>,
    ) -> Vec<TmMessage> {
        match message {
            JmMessage::Heartbeat => Vec::new(),
            JmMessage::RequestSlots { allocation, job, slots } => {
                let free = self.cluster.free_slots();
                let reserved: Vec<u32> = reservations.values().flatten().copied().collect();
                let unavailable: Vec<u32> =
                    slots.iter().copied().filter(|s| !free.contains(s) || reserved.contains(s)).collect();
                if unavailable.is_empty() {
                    tracing::debug!(%job, allocation, ?slots, "slots reserved");
                    reservations.insert(allocation, slots.clone());
                    vec![TmMessage::SlotsOffered { allocation, slots }]
                } else {
                    let reason = format!("slot(s) {unavailable:?} are busy or do not exist here");
                    vec![TmMessage::SlotsRefused { allocation, reason }]
                }
            }
            JmMessage::FreeSlots { allocation } => {
                reservations.remove(&allocation);
                Vec::new()
            }
            JmMessage::Deploy(descriptor) => {
                let deployment = descriptor.deployment;
                if deployments.contains_key(&deployment) {
                    return Vec::new();
                }
                // The slots pass from the reservation to the deployment's lease.
                reservations.remove(&descriptor.allocation);
                let control = Arc::new(DeploymentControl::new());
                if let Some(inline) = descriptor.inline.clone() {
                    // An embedded job, handed over in memory: deployed here, watched by a task.
                    deployment::start_inline(&self.cluster, &descriptor, inline, control.clone(), events_tx.clone());
                    deployments.insert(deployment, Tracked { control, thread: None, staged: None, ended: false });
                    self.shared.update(|s| {
                        s.running_deployments += 1;
                        s.deployments_started += 1;
                    });
                    return Vec::new();
                }
                let (cluster, registry, tx) = (self.cluster.clone(), self.registry.clone(), events_tx.clone());
                let c = control.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("cs-deploy-{}", &deployment.to_string()[..8]))
                    .spawn(move || deployment::run(cluster, registry, *descriptor, c, tx));
                match thread {
                    Ok(thread) => {
                        deployments
                            .insert(deployment, Tracked { control, thread: Some(thread), staged: None, ended: false });
                        self.shared.update(|s| {
                            s.running_deployments += 1;
                            s.deployments_started += 1;
                        });
                        Vec::new()
                    }
                    Err(e) => vec![TmMessage::PartEnded {
                        deployment,
                        outcome: PartOutcome::Failed {
                            message: format!("cannot start a deployment thread: {e}"),
                            retryable: true,
                        },
                    }],
                }
            }
            JmMessage::Cancel { deployment, reason } => {
                if let Some(t) = deployments.get(&deployment) {
                    tracing::info!(%deployment, %reason, "cancelling a deployment");
                    t.control.cancel();
                }
                Vec::new()
            }
            JmMessage::Signals { deployment, totals } => {
                if let Some(t) = deployments.get(&deployment) {
                    t.control.signals.set_totals(totals);
                }
                Vec::new()
            }
            JmMessage::Commit { deployment } => {
                let staged = deployments.get_mut(&deployment).and_then(|t| t.staged.take());
                let error = match staged {
                    Some(staged) => staged.commit().err().map(|e| e.to_string()),
                    None => Some(format!("deployment {deployment} has no staged output here")),
                };
                self.forget(deployment, deployments);
                vec![TmMessage::Committed { deployment, error }]
            }
            JmMessage::Discard { deployment } => {
                if let Some(t) = deployments.get(&deployment) {
                    t.control.cancel();
                }
                if let Some(t) = deployments.get_mut(&deployment) {
                    t.staged = None;
                }
                self.forget(deployment, deployments);
                Vec::new()
            }
            JmMessage::TriggerCheckpoint { deployment, checkpoint_id, timestamp_ms, options } => {
                let Some(t) = deployments.get(&deployment) else { return Vec::new() };
                t.control
                    .trigger(checkpoint_id, timestamp_ms, options)
                    .into_iter()
                    .map(|(task, reason)| TmMessage::DeclineCheckpoint { deployment, task, checkpoint_id, reason })
                    .collect()
            }
            JmMessage::NotifyCheckpoint { deployment, notice } => {
                if let Some(t) = deployments.get(&deployment) {
                    t.control.notify(notice);
                }
                Vec::new()
            }
            other @ (JmMessage::Challenge { .. } | JmMessage::Registered { .. } | JmMessage::Refused { .. }) => {
                tracing::warn!(message = %kind(&other), "unexpected message from the JobManager after registration");
                Vec::new()
            }
        }
    }

    /// Drops an ended deployment's entry (and joins its thread).
    fn forget(&self, deployment: DeploymentKey, deployments: &mut HashMap<DeploymentKey, Tracked>) {
        if deployments.get(&deployment).is_some_and(|t| t.ended) {
            if let Some(mut t) = deployments.remove(&deployment) {
                if let Some(thread) = t.thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }

    fn on_event(&self, event: DeploymentEvent, deployments: &mut HashMap<DeploymentKey, Tracked>) -> Vec<TmMessage> {
        match event {
            DeploymentEvent::Metrics { deployment, report } => vec![TmMessage::Metrics { deployment, report }],
            DeploymentEvent::Signals { deployment, adds } => vec![TmMessage::Signals { deployment, adds }],
            DeploymentEvent::States { deployment, updates } => vec![TmMessage::TaskStates { deployment, updates }],
            DeploymentEvent::CheckpointAck { deployment, task, checkpoint_id, handle, metrics } => {
                vec![TmMessage::AcknowledgeCheckpoint { deployment, task, checkpoint_id, handle, metrics }]
            }
            DeploymentEvent::CheckpointDecline { deployment, task, checkpoint_id, reason } => {
                vec![TmMessage::DeclineCheckpoint { deployment, task, checkpoint_id, reason }]
            }
            DeploymentEvent::Ended { deployment, outcome, staged } => {
                if let Some(t) = deployments.get_mut(&deployment) {
                    t.ended = true;
                    t.staged = staged;
                    if let Some(thread) = t.thread.take() {
                        let _ = thread.join();
                    }
                    if t.staged.is_none() {
                        deployments.remove(&deployment);
                    }
                }
                self.shared.update(|s| s.running_deployments = s.running_deployments.saturating_sub(1));
                vec![TmMessage::PartEnded { deployment, outcome }]
            }
        }
    }
}

/// Cancels every deployment and waits until each has ended; staged output is discarded.
async fn cancel_all(deployments: &mut HashMap<DeploymentKey, Tracked>, events: &mut mpsc::Receiver<DeploymentEvent>) {
    for t in deployments.values() {
        if !t.ended {
            t.control.cancel();
        }
    }
    while deployments.values().any(|t| !t.ended) {
        match events.recv().await {
            Some(DeploymentEvent::Ended { deployment, .. }) => {
                if let Some(t) = deployments.get_mut(&deployment) {
                    t.ended = true;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    for (_, mut t) in deployments.drain() {
        if let Some(thread) = t.thread.take() {
            let _ = thread.join();
        }
    }
}

fn kind(m: &JmMessage) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Object(o) => o.keys().next().cloned(),
            _ => None,
        })
        .unwrap_or_else(|| "a message".into())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_or_a_jobmanager_of_another_cluster_stops_the_taskmanager() {
        let address = || "127.0.0.1:6123".to_string();
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let retried = [
            RegisterError::Connect { address: address(), cause: io() },
            RegisterError::Timeout { address: address() },
            RegisterError::Frame { address: address(), cause: FrameError::Closed },
            RegisterError::DataPlane { address: address(), reason: "busy".into() },
            RegisterError::Unexpected { address: address(), got: "heartbeat".into(), expected: "challenge" },
        ];
        for e in &retried {
            assert!(!e.is_final(), "{e}");
        }
        let refused =
            RegisterError::Refused { address: address(), reason: "a wrong proof of the cluster secret".into() };
        assert!(refused.is_final());
        assert_eq!(
            refused.to_string(),
            "the JobManager at 127.0.0.1:6123 refused this TaskManager: a wrong proof of the cluster secret"
        );
        assert!(RegisterError::BadProof { address: address() }.is_final());
    }
}
