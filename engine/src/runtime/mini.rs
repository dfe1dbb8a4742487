//! The embedded cluster's JobManager and TaskManager (Flink's MiniCluster): what makes a
//! [`LocalCluster`] run its jobs through the same dispatcher, job masters and TaskManager
//! control loop as a cluster of processes.
//!
//! One thread (`cs-mini`) drives a single-threaded tokio runtime that holds both: the
//! JobManager's state, heartbeat monitor and job masters, and the in-process TaskManager's
//! control loop over the slot runtime, linked by a pair of bounded channels carrying the same
//! `JmMessage`/`TmMessage` values a TCP connection would (see
//! [`crate::taskmanager::local`]). A job is prepared (resolved, chained, laid out) on its
//! submitter's thread, so an invalid job is refused at once; the prepared job goes to the
//! dispatcher in memory ([`InlineJob`]), whose job master takes its slots from the resource
//! manager's table, has the TaskManager reserve them, and sends it the deployment; the
//! TaskManager deploys the prepared job and hands the [`JobHandle`] back to the submitter. From
//! then on the TaskManager reports the job's task states and, once its owner has joined or
//! dropped the handle (its slots are free), the part's outcome, so the JobManager's view
//! ([`LocalCluster::api`]) shows the job as a cluster would. An embedded job is never restarted
//! (strategy `none`): its closures and host channels may not run twice.
//!
//! Architecture Invariant: a [`JobHandle`] of an embedded job keeps its cluster's JobManager
//! and TaskManager alive, so every part's end reaches them; the cluster stops when the last
//! handle and the last [`LocalCluster`] clone are gone.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::cluster::{LocalCluster, PreparedJob};
use super::job::JobHandle;
use crate::error::{JobError, StartupError};
use crate::graph::execution::SlotSplit;
use crate::jobmanager::api::ClusterApi;
use crate::jobmanager::dispatcher::Dispatcher;
use crate::jobmanager::{Jm, JobManagerConfig};
use crate::registry::JobRegistry;
use crate::rpc::ids::{JobId, TaskManagerId};
use crate::rpc::messages::{Bytes32, Registration, SlotDescription, PROTOCOL_VERSION};
use crate::taskmanager::local::{run_in_process, InProcessSettings};

type Reply = Result<JobHandle, JobError>;
type ReleaseHook = Box<dyn FnOnce() + Send + Sync>;

/// An embedded job on its way from its submitter to the TaskManager, in memory: the prepared
/// job (taken once, by the deployment), where its handle goes, and what tells the resource
/// manager that its slots are free. Clones share it; it is never serialized.
#[derive(Clone)]
pub(crate) struct InlineJob {
    inner: Arc<InlineInner>,
}

struct InlineInner {
    name: String,
    prepared: Mutex<Option<PreparedJob>>,
    reply: Mutex<Option<SyncSender<Reply>>>,
    release: Mutex<Option<ReleaseHook>>,
}

impl InlineJob {
    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    /// The prepared job, the first time only.
    pub(crate) fn take_prepared(&self) -> Option<PreparedJob> {
        self.inner.prepared.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// What frees the job's slots in the resource manager's table, the first time only.
    pub(crate) fn take_release_hook(&self) -> Option<ReleaseHook> {
        self.inner.release.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Hands the submitter its handle or the reason there is none; only the first answer
    /// counts. A handle nobody waits for any more is dropped, which cancels its job.
    pub(crate) fn reply(&self, reply: Reply) {
        if let Some(tx) = self.inner.reply.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(reply);
        }
    }
}

impl std::fmt::Debug for InlineJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineJob").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

/// The same job, not an equal one: two inline jobs are equal only if they share their state.
impl PartialEq for InlineJob {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for InlineJob {}

/// An embedded cluster's JobManager and its TaskManager, on the `cs-mini` thread.
pub(crate) struct MiniCluster {
    jm: Arc<Jm>,
    runtime: tokio::runtime::Handle,
    shutdown: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MiniCluster {
    /// Starts the JobManager and a TaskManager over `slots` (a slot runtime without a
    /// JobManager), registered with each other.
    pub(crate) fn start(slots: LocalCluster) -> Result<Arc<Self>, StartupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartupError::InvalidConfig(format!("cannot start the embedded JobManager's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let settings = JobManagerConfig { cluster: slots.inner.config.clone(), ..Default::default() };
        let (heartbeat_interval, heartbeat_timeout) = (settings.heartbeat_interval, settings.heartbeat_timeout);
        let registry = JobRegistry::new();
        let jm = Jm::embedded(settings, registry.clone(), &handle)?;
        let id = TaskManagerId::random();
        let link = jm.attach_in_process(registration(id, &slots, &registry), &handle);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let settings = InProcessSettings { id, heartbeat_interval, heartbeat_timeout };
        let thread = std::thread::Builder::new()
            .name("cs-mini".into())
            .spawn(move || {
                runtime.block_on(run_in_process(settings, slots, registry, link, shutdown_rx));
                // Dropping the runtime ends the JobManager's tasks.
            })
            .map_err(|e| StartupError::InvalidConfig(format!("cannot start the embedded JobManager's thread: {e}")))?;
        Ok(Arc::new(Self { jm, runtime: handle, shutdown, thread: Mutex::new(Some(thread)) }))
    }

    /// The dispatcher's operations.
    pub(crate) fn api(&self) -> Arc<dyn ClusterApi> {
        Arc::new(Dispatcher::new(self.jm.clone(), self.runtime.clone()))
    }

    /// Runs a prepared job: the JobManager schedules it, the TaskManager deploys it and hands
    /// back its handle. Waits only for that hand-over (the job master refuses a job that does
    /// not fit the free slots at once).
    pub(crate) fn submit(self: &Arc<Self>, prepared: PreparedJob) -> Result<JobHandle, JobError> {
        let id = JobId::random();
        let credit = self.jm.settings().cluster.credit;
        let parallelism = prepared.parallelism();
        let plan = prepared.summary(&credit, &SlotSplit::even(prepared.slots_needed().max(1), 1));
        let (reply, handed) = sync_channel::<Reply>(1);
        let jm = Arc::downgrade(&self.jm);
        let release: ReleaseHook = Box::new(move || {
            if let Some(jm) = jm.upgrade() {
                jm.release_job_slots(id);
            }
        });
        let job = InlineJob {
            inner: Arc::new(InlineInner {
                name: prepared.name().to_string(),
                prepared: Mutex::new(Some(prepared)),
                reply: Mutex::new(Some(reply)),
                release: Mutex::new(Some(release)),
            }),
        };
        Dispatcher::new(self.jm.clone(), self.runtime.clone()).submit_inline(id, parallelism, plan, job);
        match handed.recv() {
            Ok(Ok(mut handle)) => {
                handle.attachment = Some(Attachment { mini: self.clone(), job: id });
                Ok(handle)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(JobError::InvalidJob("the embedded cluster stopped before the job was deployed".into())),
        }
    }
}

impl Drop for MiniCluster {
    fn drop(&mut self) {
        self.jm.set_closing();
        let _ = self.shutdown.send(true);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Never on its own thread (a handle dropped there): that thread ends by itself.
        if let Some(thread) = thread.filter(|t| t.thread().id() != std::thread::current().id()) {
            let _ = thread.join();
        }
    }
}

/// What ties an embedded job's handle to its cluster: the JobManager's id for it, and the
/// cluster itself, kept alive until the handle is gone.
pub(crate) struct Attachment {
    mini: Arc<MiniCluster>,
    pub(crate) job: JobId,
}

impl Attachment {
    /// Cancels the job through its job master (which has the TaskManager cancel its tasks).
    pub(crate) fn cancel(&self) {
        // A job that has ended already has nothing to cancel.
        let _ = self.mini.api().cancel(&self.job.to_string());
    }
}

/// How the in-process TaskManager introduces itself: its slots with their CPUs and its pool.
/// It has no data listener (every channel of an embedded job is local).
fn registration(id: TaskManagerId, slots: &LocalCluster, registry: &JobRegistry) -> Registration {
    Registration {
        protocol: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
        id,
        hostname: "embedded".into(),
        pid: std::process::id(),
        data_address: slots
            .data_address()
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        slots: slots
            .slot_cpus()
            .iter()
            .enumerate()
            .map(|(i, cpu)| SlotDescription { index: i as u32, cpu: *cpu })
            .collect(),
        network_buffers: slots.pool().capacity(),
        job_types: registry.names(),
        proof: None,
        nonce: Bytes32([0; 32]),
    }
}
