//! The network executor of a TaskManager process: one thread, `cs-net`, running a glommio
//! `LocalExecutor` not pinned to any slot's core, that owns the process's data listener and
//! its [`DataPlane`] — at most one connection per peer TaskManager, shared by every job that
//! runs on both (as Flink shares one Netty channel per pair of TaskManagers). A job's channels
//! are multiplexed on those connections under its deployment key and torn down with the job;
//! the connections outlive jobs.
//!
//! Other threads reach the executor through a [`NetworkService`]: a bounded queue of requests
//! plus a doorbell, never waited on (a full queue refuses the request at once), so no slot or
//! control thread ever blocks on the network. The requests are: take an identity (the plane is
//! created then, and replaced when the identity changes — a TaskManager that registered with a
//! new JobManager, after every deployment of the old one has ended), open a deployment's links
//! ([`JobNetwork`]), and shut down. Each deployment's links are supervised by a task of the
//! executor ([`super::links`]), which ties them to the job's fate both ways.
//!
//! Bounds: [`MAX_QUEUED_REQUESTS`] requests waiting, the plane's own bounds (one connection per
//! peer, handshakes at once, jobs per connection).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use corestream_netstack::remote::LocalIdentity;
use corestream_netstack::transport::NetConfig;
use corestream_netstack::{
    BufferPool, DataPlane, DataPlaneConfig, Doorbell, JobLink, JobSpec, LocalChannel, PeerAddress, PlaneCounters,
    PlaneStats,
};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

use super::job::JobShared;
use super::metrics::ConnectionSummary;
use crate::error::{JobError, StartupError};

/// Requests waiting for the network executor, at most; beyond it a request is refused.
pub const MAX_QUEUED_REQUESTS: usize = 1024;

/// Registered io_uring memory of the network executor: the least glommio works with (it moves
/// no bulk data through registered buffers; the transport uses plain send/recv).
pub const NET_IO_MEMORY_BYTES: usize = 512 * 1024;

/// Why a request did not reach the network executor.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NetworkUnavailable {
    #[error("the network executor has {limit} requests waiting already; try again")]
    Busy { limit: usize },
    #[error("the network executor has stopped")]
    Stopped,
}

/// Set once every link of a job has ended (or the job's network part could not start), so the
/// job's owner knows its connection summaries are complete and its channels released.
#[derive(Debug, Default)]
pub(crate) struct NetworkDone {
    ended: Mutex<bool>,
    cond: Condvar,
}

impl NetworkDone {
    fn finish(&self) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
    }

    pub(crate) fn is_finished(&self) -> bool {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn wait(&self) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while !*ended {
            ended = self.cond.wait(ended).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Finishes its [`NetworkDone`] when dropped, however the job's network part ends (supervised
/// to the end, refused, or dropped with the executor).
pub(crate) struct DoneGuard(Arc<NetworkDone>);

impl DoneGuard {
    pub(crate) fn new() -> (Self, Arc<NetworkDone>) {
        let done = Arc::new(NetworkDone::default());
        (Self(done.clone()), done)
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// One job's channels on the connection to one peer TaskManager, before it is opened.
pub(crate) struct LinkBuild {
    pub peer: PeerAddress,
    /// Names the peer in the job's connection summary.
    pub name: String,
    pub spec: JobSpec,
    /// The channels whose producers are here, for the credit-stall count.
    pub outbound: Vec<Arc<LocalChannel>>,
}

/// A deployment's links, handed to the network executor.
pub(crate) struct JobNetwork {
    pub deployment: u64,
    pub job: Arc<JobShared>,
    /// The supervisor's wake-up: in the job's bells, so cancellation and failure ring it.
    pub bell: Arc<Doorbell>,
    pub links: Vec<LinkBuild>,
    pub summaries: Arc<Mutex<Vec<ConnectionSummary>>>,
    pub done: DoneGuard,
}

enum Request {
    /// Become `identity`: create the plane, or replace it if the identity changed.
    Identity(LocalIdentity),
    Open(Box<JobNetwork>),
    Shutdown,
}

/// The handle other threads hold on the network executor.
pub(crate) struct NetworkService {
    requests: Sender<Request>,
    bell: Arc<Doorbell>,
    counters: Arc<Mutex<Option<Arc<PlaneCounters>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NetworkService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkService").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// What the executor thread is given at start.
struct Setup {
    listener: std::net::TcpListener,
    pool: BufferPool,
    net: NetConfig,
    requests: Receiver<Request>,
    bell: Arc<Doorbell>,
    counters: Arc<Mutex<Option<Arc<PlaneCounters>>>>,
}

impl NetworkService {
    /// Starts the `cs-net` thread, which owns `listener` and reads received buffers into
    /// `pool`; it has no plane until it is given an identity.
    pub(crate) fn start(
        listener: std::net::TcpListener,
        pool: BufferPool,
        net: NetConfig,
    ) -> Result<Self, StartupError> {
        net.validate().map_err(|e| StartupError::InvalidConfig(format!("net: {e}")))?;
        let (tx, rx) = crossbeam_channel::bounded(MAX_QUEUED_REQUESTS);
        let bell = Arc::new(Doorbell::new());
        let counters = Arc::new(Mutex::new(None));
        let setup = Setup { listener, pool, net, requests: rx, bell: bell.clone(), counters: counters.clone() };
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("cs-net".into())
            .spawn(move || {
                let executor =
                    LocalExecutorBuilder::new(Placement::Unbound).name("cs-net").io_memory(NET_IO_MEMORY_BYTES).make();
                match executor {
                    Ok(executor) => {
                        let _ = started_tx.send(Ok(()));
                        executor.run(run(setup));
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| StartupError::InvalidConfig(format!("cannot start the network thread: {e}")))?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                let _ = thread.join();
                return Err(StartupError::InvalidConfig(format!("the network executor cannot start: {message}")));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StartupError::InvalidConfig("the network thread ended at start".into()));
            }
        }
        Ok(Self { requests: tx, bell, counters, thread: Mutex::new(Some(thread)) })
    }

    fn send(&self, request: Request) -> Result<(), (NetworkUnavailable, Request)> {
        match self.requests.try_send(request) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(TrySendError::Full(r)) => Err((NetworkUnavailable::Busy { limit: MAX_QUEUED_REQUESTS }, r)),
            Err(TrySendError::Disconnected(r)) => Err((NetworkUnavailable::Stopped, r)),
        }
    }

    /// Gives the executor its identity (see the module doc); returns at once.
    pub(crate) fn set_identity(&self, identity: LocalIdentity) -> Result<(), NetworkUnavailable> {
        self.send(Request::Identity(identity)).map_err(|(e, _)| e)
    }

    /// Hands a deployment's links to the executor. On refusal the links are dropped (their
    /// channels with them) and the job's network part counts as ended.
    pub(crate) fn open(&self, job: JobNetwork) -> Result<(), NetworkUnavailable> {
        self.send(Request::Open(Box::new(job))).map_err(|(e, _)| e)
    }

    /// The current plane's connection counters (all zero before the first identity).
    pub(crate) fn stats(&self) -> PlaneStats {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        counters.map(|c| c.snapshot()).unwrap_or_default()
    }

    /// Cancels every job's links, closes the connections and waits for the thread to end.
    pub(crate) fn shutdown(&self) {
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        // A full queue still reaches the executor: it drains the queue before it sleeps, so
        // retrying finds room; a disconnected queue means the thread has ended already.
        let mut request = Request::Shutdown;
        loop {
            match self.send(request) {
                Ok(()) | Err((NetworkUnavailable::Stopped, _)) => break,
                Err((NetworkUnavailable::Busy { .. }, r)) => {
                    request = r;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        let _ = thread.join();
    }
}

impl Drop for NetworkService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The executor's state: the plane, who it is, and the links of every running deployment.
struct State {
    setup: Setup,
    plane: Option<(LocalIdentity, DataPlane)>,
    /// Links of the deployments being supervised, by deployment key.
    running: Rc<RefCell<HashMap<u64, Vec<JobLink>>>>,
}

/// What to do with a new identity given the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityChange {
    /// The same TaskManager in the same cluster: the plane and its connections stay.
    Keep,
    /// No plane yet: create one.
    Create,
    /// Another cluster (a new JobManager's token) or another id: close the plane, start anew.
    Replace,
}

pub(crate) fn identity_change(current: Option<&LocalIdentity>, new: &LocalIdentity) -> IdentityChange {
    match current {
        None => IdentityChange::Create,
        Some(c) if c.tm == new.tm && c.auth == new.auth => IdentityChange::Keep,
        Some(_) => IdentityChange::Replace,
    }
}

async fn run(setup: Setup) {
    let mut state = State { setup, plane: None, running: Rc::new(RefCell::new(HashMap::new())) };
    loop {
        while let Ok(request) = state.setup.requests.try_recv() {
            match request {
                Request::Identity(identity) => state.set_identity(identity).await,
                Request::Open(job) => state.open(*job),
                Request::Shutdown => {
                    state.close("the TaskManager is shutting down").await;
                    return;
                }
            }
        }
        state.setup.bell.wait().await;
    }
}

impl State {
    async fn set_identity(&mut self, identity: LocalIdentity) {
        match identity_change(self.plane.as_ref().map(|(i, _)| i), &identity) {
            IdentityChange::Keep => return,
            IdentityChange::Create => {}
            IdentityChange::Replace => {
                tracing::info!(tm = %identity.tm.short(), "new cluster identity: closing the data connections of the old one");
                self.close("the TaskManager joined another cluster").await;
            }
        }
        let listener = match self.setup.listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot duplicate the data listener: this TaskManager accepts no data connection");
                return;
            }
        };
        let config = DataPlaneConfig { identity: identity.clone(), net: self.setup.net };
        match DataPlane::new(config, self.setup.pool.clone()) {
            Ok(plane) => {
                plane.listen(listener);
                *self.setup.counters.lock().unwrap_or_else(|e| e.into_inner()) = Some(plane.counters());
                tracing::info!(tm = %identity.tm.short(), "data plane ready");
                self.plane = Some((identity, plane));
            }
            Err(e) => tracing::error!(error = %e, "cannot create the data plane"),
        }
    }

    fn open(&mut self, job: JobNetwork) {
        let deployment = job.deployment;
        let Some((_, plane)) = &self.plane else {
            let reason = "the TaskManager has no data plane (it is not registered with a JobManager)".to_string();
            tracing::warn!(deployment = format_args!("{deployment:016x}"), "{reason}");
            job.job.fail(JobError::DataPlaneUnavailable { reason });
            return;
        };
        let plane = plane.clone();
        let running = self.running.clone();
        glommio::spawn_local(async move { super::links::supervise(plane, job, running).await }).detach();
    }

    /// Cancels every running deployment's links with `reason` and closes the plane once their
    /// ends are through.
    async fn close(&mut self, reason: &str) {
        let links: Vec<JobLink> = self.running.borrow().values().flatten().cloned().collect();
        for link in links {
            link.cancel(reason);
        }
        if let Some((_, plane)) = self.plane.take() {
            plane.shutdown().await;
        }
        while !self.running.borrow().is_empty() {
            glommio::timer::Timer::new(std::time::Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use corestream_netstack::handshake::{ClusterAuth, TmId};

    use super::*;

    #[test]
    fn a_plane_is_replaced_only_for_another_identity() {
        let id =
            |tm: u8, token: u8| LocalIdentity { tm: TmId([tm; 16]), pid: 1, auth: ClusterAuth::new([token; 32], None) };
        assert_eq!(identity_change(None, &id(1, 1)), IdentityChange::Create);
        assert_eq!(identity_change(Some(&id(1, 1)), &id(1, 1)), IdentityChange::Keep);
        assert_eq!(identity_change(Some(&id(1, 1)), &id(1, 2)), IdentityChange::Replace, "a new JobManager's token");
        assert_eq!(identity_change(Some(&id(1, 1)), &id(2, 1)), IdentityChange::Replace);
        let secret = LocalIdentity { auth: ClusterAuth::new([1; 32], Some(b"s")), ..id(1, 1) };
        assert_eq!(identity_change(Some(&id(1, 1)), &secret), IdentityChange::Replace);
    }
}
