//! A connection's session as the executor that runs it sees it: a [`Connection`] shares one
//! [`PeerSession`] between the transport's reader and writer ([`crate::transport::serve`]) and
//! the code that adds and removes jobs, all on one glommio executor (the `RefCell` is never
//! borrowed across an await). Each job registered through it gets a [`JobLink`], which
//! cancels or fails the job and resolves to the job's [`JobEnded`] once the session reports
//! it. A link can also exist before its connection does (in a wait list), while the connection is
//! being dialed or awaited; it attaches when the connection is there.
//!
//! Nothing here is `Send`: the engine registers jobs on the network executor and forwards the
//! ends to its tasks itself.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::doorbell::Doorbell;
use crate::error::NetError;
use crate::handshake::TmId;
use crate::remote::{ConnectionStats, JobEnd, JobEnded, JobSpec, PeerSession, SessionStats};

/// One connection's session, shared on its executor.
#[derive(Clone)]
pub struct Connection {
    inner: Rc<ConnInner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer_name())
            .field("jobs", &self.jobs())
            .field("ended", &self.is_ended())
            .finish()
    }
}

pub(crate) struct ConnInner {
    pub(crate) session: RefCell<PeerSession>,
    /// Wakes the writer: rung by the reader after every frame and when jobs come and go.
    pub(crate) bell: Arc<Doorbell>,
    links: RefCell<HashMap<u64, JobLink>>,
    /// Ends of jobs registered on the session directly, without a link.
    unclaimed: RefCell<Vec<JobEnded>>,
    ended: Cell<bool>,
    established: Cell<bool>,
    on_established: RefCell<Option<EstablishedHook>>,
}

type EstablishedHook = Box<dyn FnOnce(TmId)>;

impl Connection {
    /// Shares `session` (jobs may already be registered on it); the writer wakes on a new
    /// bell and on the jobs' bells.
    pub fn new(session: PeerSession) -> Self {
        Self::with_bell(session, Arc::new(Doorbell::new()))
    }

    /// As [`Connection::new`], with `bell` as the connection's own wake-up.
    pub fn with_bell(session: PeerSession, bell: Arc<Doorbell>) -> Self {
        Self {
            inner: Rc::new(ConnInner {
                session: RefCell::new(session),
                bell,
                links: RefCell::new(HashMap::new()),
                unclaimed: RefCell::new(Vec::new()),
                ended: Cell::new(false),
                established: Cell::new(false),
                on_established: RefCell::new(None),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Rc<ConnInner> {
        &self.inner
    }

    /// Registers a job on the connection (see [`PeerSession::register_job`]).
    pub fn register_job(&self, spec: JobSpec) -> Result<JobLink, NetError> {
        let link = JobLink::new(spec.deployment());
        self.attach(spec, &link)?;
        Ok(link)
    }

    /// Registers `spec` and makes `link` follow it.
    pub(crate) fn attach(&self, spec: JobSpec, link: &JobLink) -> Result<(), NetError> {
        let deployment = spec.deployment();
        if self.is_ended() {
            let peer = self.peer_name();
            return Err(NetError::JobRegistration { peer, deployment, error: crate::remote::RegisterError::Closing });
        }
        let registered = self.inner.session.borrow_mut().register_job(spec);
        registered.map_err(|error| NetError::JobRegistration { peer: self.peer_name(), deployment, error })?;
        *link.inner.target.borrow_mut() = Target::Connection(Rc::downgrade(&self.inner));
        self.inner.links.borrow_mut().insert(deployment, link.clone());
        self.deliver();
        self.inner.bell.ring();
        Ok(())
    }

    /// Cancels one job (see [`PeerSession::cancel_job`]); the others go on.
    pub fn cancel_job(&self, deployment: u64, reason: &str) -> bool {
        let cancelled = self.inner.session.borrow_mut().cancel_job(deployment, reason);
        self.deliver();
        self.inner.bell.ring();
        cancelled
    }

    /// Fails one job (see [`PeerSession::fail_job`]); the others go on.
    pub fn fail_job(&self, deployment: u64, message: &str) -> bool {
        let failed = self.inner.session.borrow_mut().fail_job(deployment, message);
        self.deliver();
        self.inner.bell.ring();
        failed
    }

    /// Takes no more jobs, and closes once every job on it has ended.
    pub fn close_when_idle(&self) {
        self.inner.session.borrow_mut().close_when_idle();
        self.inner.bell.ring();
    }

    pub fn stats(&self) -> ConnectionStats {
        self.inner.session.borrow().stats()
    }

    pub fn peer_tm(&self) -> Option<TmId> {
        self.inner.session.borrow().peer_tm()
    }

    pub fn peer_name(&self) -> String {
        self.inner.session.borrow().peer_name().to_string()
    }

    pub fn set_peer_name(&self, name: String) {
        self.inner.session.borrow_mut().set_peer_name(name);
    }

    /// Deployments on the connection.
    pub fn jobs(&self) -> usize {
        self.inner.session.borrow().jobs()
    }

    pub fn is_established(&self) -> bool {
        self.inner.established.get()
    }

    /// Whether a job may be registered now: the connection has not ended or started closing.
    pub fn accepts_jobs(&self) -> bool {
        !self.is_ended() && self.inner.session.borrow().accepts_jobs()
    }

    /// Whether the connection has ended (closed or failed): it takes no more jobs.
    pub fn is_ended(&self) -> bool {
        self.inner.ended.get()
    }

    /// Calls `hook` with the peer's id once the handshake is through (at once if it is).
    pub fn on_established(&self, hook: impl FnOnce(TmId) + 'static) {
        match (self.is_established(), self.peer_tm()) {
            (true, Some(peer)) => hook(peer),
            _ => *self.inner.on_established.borrow_mut() = Some(Box::new(hook)),
        }
    }

    /// Hands the job ends the session reported to their links and runs the established hook;
    /// returns whether a job ended.
    pub(crate) fn deliver(&self) -> bool {
        let (ends, peer, established) = {
            let mut session = self.inner.session.borrow_mut();
            (session.take_job_ends(), session.peer_tm(), session.is_established())
        };
        let ended_any = !ends.is_empty();
        for ended in ends {
            let link = self.inner.links.borrow_mut().remove(&ended.deployment);
            match link {
                Some(link) => link.resolve(ended),
                None => self.inner.unclaimed.borrow_mut().push(ended),
            }
        }
        if established && !self.inner.established.replace(true) {
            if let (Some(hook), Some(peer)) = (self.inner.on_established.borrow_mut().take(), peer) {
                hook(peer);
            }
        }
        ended_any
    }

    /// The connection is over: every job still on it ends with `error` (or, after a clean
    /// close, has ended already), and its links resolve.
    pub(crate) fn finish(&self, error: Option<&NetError>) {
        if let Some(error) = error {
            self.inner.session.borrow_mut().fail_all(error);
        }
        self.inner.ended.set(true);
        self.deliver();
        let orphans: Vec<JobLink> = self.inner.links.borrow_mut().drain().map(|(_, link)| link).collect();
        let peer = self.peer_name();
        for link in orphans {
            let error = error.cloned().unwrap_or_else(|| NetError::PeerLost {
                peer: peer.clone(),
                detail: "the connection closed before the job ended".into(),
            });
            link.resolve(JobEnded {
                deployment: link.deployment(),
                end: JobEnd::Failed(error),
                stats: Default::default(),
            });
        }
        self.inner.on_established.borrow_mut().take();
    }

    /// Ends of jobs that were registered on the session directly (not through
    /// [`Connection::register_job`]).
    pub fn take_unclaimed(&self) -> Vec<JobEnded> {
        std::mem::take(&mut self.inner.unclaimed.borrow_mut())
    }
}

/// Jobs that wait for a connection to a peer while it is dialed or awaited.
#[derive(Default)]
pub(crate) struct WaitList {
    pub(crate) jobs: Vec<(JobSpec, JobLink)>,
}

pub(crate) type SharedWaitList = Rc<RefCell<WaitList>>;

enum Target {
    Waiting(Weak<RefCell<WaitList>>),
    Connection(Weak<ConnInner>),
    Ended(JobEnded),
}

struct LinkInner {
    deployment: u64,
    target: RefCell<Target>,
    waker: RefCell<Option<Waker>>,
}

/// One job's part on one connection, as the code that registered it holds it: cancel or fail
/// it, and learn how it ended. Cloning shares the same job.
#[derive(Clone)]
pub struct JobLink {
    inner: Rc<LinkInner>,
}

impl std::fmt::Debug for JobLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLink")
            .field("deployment", &format_args!("{:016x}", self.inner.deployment))
            .field("ended", &self.try_end().is_some())
            .finish()
    }
}

impl JobLink {
    fn new(deployment: u64) -> Self {
        Self {
            inner: Rc::new(LinkInner {
                deployment,
                target: RefCell::new(Target::Waiting(Weak::new())),
                waker: RefCell::new(None),
            }),
        }
    }

    /// A link for a job that waits in `list` for its connection.
    pub(crate) fn waiting(deployment: u64, list: &SharedWaitList) -> Self {
        let link = Self::new(deployment);
        *link.inner.target.borrow_mut() = Target::Waiting(Rc::downgrade(list));
        link
    }

    pub fn deployment(&self) -> u64 {
        self.inner.deployment
    }

    pub(crate) fn resolve(&self, ended: JobEnded) {
        *self.inner.target.borrow_mut() = Target::Ended(ended);
        if let Some(waker) = self.inner.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Cancels the job on its connection (the peer gets CANCEL), or, if it still waits for
    /// its connection, drops it. Its end is [`JobEnd::Cancelled`].
    pub fn cancel(&self, reason: &str) {
        self.end_here(reason, |conn, d, text| conn.cancel_job(d, text), |reason| JobEnd::Cancelled { reason });
    }

    /// Fails the job on its connection (the peer gets ERROR(2)), or, if it still waits for its
    /// connection, drops it. Its end is [`JobEnd::FailedHere`].
    pub fn fail(&self, message: &str) {
        self.end_here(message, |conn, d, text| conn.fail_job(d, text), |message| JobEnd::FailedHere { message });
    }

    fn end_here(
        &self,
        text: &str,
        on_connection: impl Fn(&Connection, u64, &str) -> bool,
        end: impl Fn(String) -> JobEnd,
    ) {
        let target = std::mem::replace(&mut *self.inner.target.borrow_mut(), Target::Waiting(Weak::new()));
        match target {
            Target::Connection(conn) => {
                *self.inner.target.borrow_mut() = Target::Connection(conn.clone());
                if let Some(inner) = conn.upgrade() {
                    on_connection(&Connection { inner }, self.inner.deployment, text);
                }
            }
            Target::Waiting(list) => {
                if let Some(list) = list.upgrade() {
                    list.borrow_mut().jobs.retain(|(_, link)| !Rc::ptr_eq(&link.inner, &self.inner));
                }
                let text = crate::wire::truncate_text(text).to_string();
                self.resolve(JobEnded {
                    deployment: self.inner.deployment,
                    end: end(text),
                    stats: SessionStats::default(),
                });
            }
            ended @ Target::Ended(_) => *self.inner.target.borrow_mut() = ended,
        }
    }

    /// How the job ended, once it has.
    pub fn try_end(&self) -> Option<JobEnded> {
        match &*self.inner.target.borrow() {
            Target::Ended(ended) => Some(ended.clone()),
            _ => None,
        }
    }

    /// Waits until the job has ended on its connection.
    pub fn ended(&self) -> LinkEnded<'_> {
        LinkEnded { link: self }
    }
}

/// Future returned by [`JobLink::ended`].
pub struct LinkEnded<'a> {
    link: &'a JobLink,
}

impl Future for LinkEnded<'_> {
    type Output = JobEnded;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobEnded> {
        match self.link.try_end() {
            Some(ended) => Poll::Ready(ended),
            None => {
                *self.link.inner.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
