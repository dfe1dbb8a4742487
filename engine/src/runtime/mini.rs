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
//! TaskManager deploys the prepared job and hands the [`JobHandle`] back to the submitter, who
//! starts its slot threads ([`JobHandle::launch`]). From
//! then on the TaskManager reports the job's task states and, once its owner has joined or
//! dropped the handle (its slots are free), the part's outcome, so the JobManager's view
//! ([`LocalCluster::api`]) shows the job as a cluster would. An embedded job is never restarted
//! (strategy `none`): its closures and host channels may not run twice. Jobs submitted by name
//! through the API ([`LocalCluster::start_with_jobs`]) are built again for every attempt and
//! take checkpoints and restart as on a cluster of processes.
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
use crate::conf::RestartSettings;
use crate::error::{JobError, StartupError};
use crate::graph::execution::SlotSplit;
use crate::jobmanager::api::ClusterApi;
use crate::jobmanager::dispatcher::Dispatcher;
use crate::jobmanager::restart::RestartStrategy;
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
    /// Jobs submitted by name get the restart strategy they ask for, with `restart`'s
    /// parameters (embedded jobs built from closures are never restarted whatever it says).
    pub(crate) fn start(
        slots: LocalCluster,
        registry: JobRegistry,
        restart: &RestartSettings,
    ) -> Result<Arc<Self>, StartupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartupError::InvalidConfig(format!("cannot start the embedded JobManager's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let settings = JobManagerConfig {
            cluster: slots.inner.config.clone(),
            restarts: RestartStrategy::factory(restart),
            ..Default::default()
        };
        let (heartbeat_interval, heartbeat_timeout) = (settings.heartbeat_interval, settings.heartbeat_timeout);
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
                handle.launch();
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
        data_address: slots.data_address().unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::ClusterConfig;
    use crate::jobmanager::api::{JobDetails, JobState};
    use crate::rpc::messages::TaskState;
    use crate::runtime::metrics::JobStatus;

    fn cluster(slots: u32) -> LocalCluster {
        LocalCluster::start(ClusterConfig { slots: Some(slots), ..Default::default() }).expect("cluster starts")
    }

    /// The job's details once the JobManager has seen it reach `state` (parts report their end
    /// asynchronously), at most 10 s.
    fn wait_for(api: &dyn ClusterApi, job: JobId, state: JobState) -> JobDetails {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let details = api.job(&job.to_string()).expect("the JobManager knows the job");
            if details.overview.state == state || Instant::now() > deadline {
                assert_eq!(details.overview.state, state, "{details:?}");
                return details;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_embedded_job_is_scheduled_tracked_and_merged_by_the_job_manager() {
        let cluster = cluster(2);
        let api = cluster.api().expect("an embedded cluster has a JobManager");
        let tms = api.task_managers();
        assert_eq!(tms.len(), 1, "one in-process TaskManager");
        assert_eq!((tms[0].slots_total, tms[0].slots_free), (2, 2));
        let mut env = cluster.environment();
        env.set_parallelism(2);
        env.from_sequence(0..1000).map(|v| v + 1).discard();
        let handle = env.execute_async("tracked").unwrap();
        let id = handle.job_id().expect("the JobManager tracks an embedded job");
        assert_eq!(handle.join().unwrap().records_in("Sink"), 1000);

        let details = wait_for(&*api, id, JobState::Finished);
        assert_eq!(details.overview.name, "tracked");
        assert_eq!(details.parallelism, 2);
        let subtasks: Vec<_> = details.vertices.iter().flat_map(|v| &v.subtasks).collect();
        assert_eq!(subtasks.len(), 2);
        assert!(subtasks.iter().all(|s| s.state == TaskState::Finished && s.taskmanager == tms[0].id), "{subtasks:?}");
        let outcome = api.execution_result(&id.to_string()).unwrap().result.expect("a finished job has a result");
        let sink = outcome.operators.iter().find(|o| o.name.starts_with("Sink")).expect("the sink is counted");
        assert_eq!(sink.records_in, 1000, "the job master merged the part's counters");
        assert_eq!(api.overview().slots_available, 2);
    }

    #[test]
    fn slots_are_free_for_the_next_job_as_soon_as_a_handle_is_joined() {
        let cluster = cluster(1);
        for i in 0..30u64 {
            let env = cluster.environment();
            env.from_sequence(0..i).discard();
            assert_eq!(env.execute("one after another").unwrap().records_in("Sink"), i);
        }
    }

    #[test]
    fn a_job_wider_than_the_free_slots_is_refused_at_once_and_recorded_failed() {
        let cluster = cluster(1);
        let api = cluster.api().unwrap();
        let mut env = cluster.environment();
        env.set_parallelism(2);
        env.from_sequence(0..10).discard();
        let started = Instant::now();
        match env.execute("too wide") {
            Err(JobError::NotEnoughSlots { needed: 2, free: 1, total: 1 }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no wait for slots");
        let jobs = api.jobs();
        assert_eq!(jobs.len(), 1);
        wait_for(&*api, jobs[0].jid, JobState::Failed);
    }

    #[test]
    fn cancelling_through_the_api_cancels_the_owners_job() {
        let cluster = cluster(1);
        let api = cluster.api().unwrap();
        let env = cluster.environment();
        env.generate_unbounded(|i| i).discard();
        let handle = env.execute_async("endless").unwrap();
        let id = handle.job_id().unwrap();
        api.cancel(&id.to_string()).expect("a running job can be cancelled");
        assert_eq!(handle.join().unwrap().status, JobStatus::Cancelled);
        wait_for(&*api, id, JobState::Cancelled);
    }

    #[test]
    fn a_handle_keeps_its_cluster_until_it_is_joined() {
        let cluster = cluster(1);
        let env = cluster.environment();
        env.generate_unbounded(|i| i).discard();
        let handle = env.execute_async("orphan").unwrap();
        drop(cluster);
        handle.cancel();
        assert_eq!(handle.join().unwrap().status, JobStatus::Cancelled);
    }
}
