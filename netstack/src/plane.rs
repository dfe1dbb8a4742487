//! The data connections of one TaskManager process: a [`DataPlane`] keeps at most one
//! connection per peer TaskManager, shared by every job that runs on both (as Flink's
//! `PartitionRequestClientFactory` shares one Netty channel per pair of TaskManagers). The
//! side with the lower [`TmId`] dials, lazily, when a job first needs the peer
//! ([`DataPlane::open_job`]); the other side accepts on its listener ([`DataPlane::listen`]) and
//! routes the connection by the peer's HELLO once the handshake is through. Later jobs reuse
//! the connection; a job that finds it lost (or closing) starts a new one. Jobs that need a
//! connection still being dialed or awaited wait for it, at most `accept_timeout` on the
//! accepting side, and fail with the dial's error or [`NetError::PeerNeverConnected`].
//!
//! Everything runs on the one glommio executor that created the plane (the engine's network
//! thread): the plane, its connections and the [`JobLink`]s are `!Send`. Only the counters
//! ([`PlaneCounters`]) are shared with other threads.
//!
//! Bounds: one connection per peer (a second one only while the first is closing), at most
//! [`MAX_HANDSHAKES`] accepted connections in their handshake at once, and every connection's
//! own bounds (see [`crate::remote`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::timer::Timer;

use crate::connection::{Connection, JobLink, SharedWaitList, WaitList};
use crate::error::NetError;
use crate::handshake::{random_nonce, Role, TmId};
use crate::pool::BufferPool;
use crate::remote::{JobEnd, JobEnded, JobSpec, LocalIdentity, PeerSession, RegisterError, SessionConfig};
use crate::transport::{configure_stream, dial, serve, NetConfig};

/// Accepted connections whose handshake is not through, at most; the listener waits for one
/// to finish before it accepts another.
pub const MAX_HANDSHAKES: usize = 16;

/// How often [`DataPlane::shutdown`] looks whether the connections have ended.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// A peer TaskManager as a job's deployment names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    pub id: TmId,
    /// Where its data listener accepts connections.
    pub data_addr: SocketAddr,
}

/// Connections to one peer since the plane started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Connections this side dialed (and connected).
    pub dialed: u64,
    /// Connections the peer dialed whose handshake passed.
    pub accepted: u64,
    /// Connections to the peer open now.
    pub open: u64,
    /// Connections that ended with both CLOSEs.
    pub closed: u64,
    /// Connections (and dials) that failed.
    pub failed: u64,
    pub last_error: Option<String>,
}

/// The plane's connection counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaneStats {
    pub dialed: u64,
    pub accepted: u64,
    pub open: u64,
    /// Accepted connections that failed before their handshake was through.
    pub refused: u64,
    pub peers: BTreeMap<TmId, PeerCounters>,
}

/// The counters of a [`DataPlane`], readable from any thread.
#[derive(Debug, Default)]
pub struct PlaneCounters {
    stats: Mutex<PlaneStats>,
}

impl PlaneCounters {
    pub fn snapshot(&self) -> PlaneStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut PlaneStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn opened(&self, peer: TmId, dialed: bool) {
        self.update(|s| {
            let p = s.peers.entry(peer).or_default();
            if dialed {
                s.dialed += 1;
                p.dialed += 1;
            } else {
                s.accepted += 1;
                p.accepted += 1;
            }
            s.open += 1;
            p.open += 1;
        });
    }

    fn ended(&self, peer: TmId, error: Option<&NetError>, was_open: bool) {
        self.update(|s| {
            let p = s.peers.entry(peer).or_default();
            if was_open {
                s.open -= 1;
                p.open -= 1;
            }
            match error {
                None => p.closed += 1,
                Some(e) => {
                    p.failed += 1;
                    p.last_error = Some(e.to_string());
                }
            }
        });
    }
}

/// Who this plane is and how its connections behave.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    pub identity: LocalIdentity,
    pub net: NetConfig,
}

enum PeerEntry {
    Connected(Connection),
    Connecting(SharedWaitList),
}

struct PlaneInner {
    config: DataPlaneConfig,
    pool: BufferPool,
    peers: RefCell<HashMap<TmId, PeerEntry>>,
    counters: Arc<PlaneCounters>,
    closing: Cell<bool>,
    /// Connection tasks (dialing, handshaking, serving) still running.
    tasks: Cell<usize>,
    listener: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

/// The data connections of one TaskManager (see the module doc).
#[derive(Clone)]
pub struct DataPlane {
    inner: Rc<PlaneInner>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane").field("id", &self.id()).field("stats", &self.stats()).finish()
    }
}

fn peer_name(id: TmId, addr: Option<SocketAddr>) -> String {
    match addr {
        Some(addr) => format!("TaskManager {} ({addr})", id.short()),
        None => format!("TaskManager {}", id.short()),
    }
}

/// Counts a running connection task for [`DataPlane::shutdown`].
struct TaskGuard(Rc<PlaneInner>);

impl TaskGuard {
    fn new(inner: &Rc<PlaneInner>) -> Self {
        inner.tasks.set(inner.tasks.get() + 1);
        Self(inner.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.set(self.0.tasks.get() - 1);
    }
}

impl DataPlane {
    /// A plane with no connection yet; received BUFFER bodies are read into `pool`. Must be
    /// created on the glommio executor that will run the connections.
    pub fn new(config: DataPlaneConfig, pool: BufferPool) -> Result<Self, NetError> {
        config.net.validate()?;
        Ok(Self {
            inner: Rc::new(PlaneInner {
                config,
                pool,
                peers: RefCell::new(HashMap::new()),
                counters: Arc::new(PlaneCounters::default()),
                closing: Cell::new(false),
                tasks: Cell::new(0),
                listener: RefCell::new(None),
            }),
        })
    }

    pub fn id(&self) -> TmId {
        self.inner.config.identity.tm
    }

    pub fn counters(&self) -> Arc<PlaneCounters> {
        self.inner.counters.clone()
    }

    pub fn stats(&self) -> PlaneStats {
        self.inner.counters.snapshot()
    }

    /// The live connection to `peer`, if there is one.
    pub fn connection(&self, peer: TmId) -> Option<Connection> {
        match self.inner.peers.borrow().get(&peer) {
            Some(PeerEntry::Connected(conn)) if !conn.is_ended() => Some(conn.clone()),
            _ => None,
        }
    }

    /// Accepts the connections of lower-id peers on `listener` (bound by the caller, e.g. at
    /// startup) until [`DataPlane::shutdown`].
    pub fn listen(&self, listener: std::net::TcpListener) {
        // SAFETY: `into_raw_fd` hands the bound, listening socket's ownership to the glommio
        // listener, which closes it; nothing else refers to the descriptor.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let plane = self.clone();
        let task = glommio::spawn_local(async move { plane.accept_loop(listener).await }).detach();
        if let Some(old) = self.inner.listener.borrow_mut().replace(task) {
            old.cancel();
        }
    }

    async fn accept_loop(self, listener: TcpListener) {
        let permits = Rc::new(Semaphore::new(MAX_HANDSHAKES as u64));
        loop {
            let Ok(permit) = permits.acquire_static_permit(1).await else { return };
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a data connection failed");
                    Timer::new(SHUTDOWN_POLL).await;
                    continue;
                }
            };
            if self.inner.closing.get() {
                continue;
            }
            let plane = self.clone();
            glommio::spawn_local(async move { plane.serve_accepted(stream, permit).await }).detach();
        }
    }

    fn session(&self, role: Role, expected: Option<TmId>, name: String) -> Result<PeerSession, NetError> {
        let config = &self.inner.config;
        let session = SessionConfig {
            identity: config.identity.clone(),
            role,
            expected_peer: expected,
            heartbeat_ms: config.net.heartbeat_ms(),
            open_timeout: config.net.open_timeout,
            nonce: random_nonce()?,
            peer_name: name,
        };
        Ok(PeerSession::new(session, self.inner.pool.clone()))
    }

    async fn serve_accepted(self, stream: TcpStream, permit: glommio::sync::StaticPermit) {
        let _task = TaskGuard::new(&self.inner);
        let addr = stream.peer_addr().ok();
        let name = addr.map_or_else(|| "a connecting TaskManager".to_string(), |a| format!("a TaskManager at {a}"));
        if let Err(e) = configure_stream(&stream, &name, &self.inner.config.net) {
            tracing::warn!(peer = %name, error = %e, "dropped a data connection");
            return;
        }
        let session = match self.session(Role::Acceptor, None, name) {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(error = %e, "dropped a data connection");
                return;
            }
        };
        let conn = Connection::new(session);
        let peer = Rc::new(Cell::new(None));
        let permit = Rc::new(RefCell::new(Some(permit)));
        {
            let (plane, conn2, peer, permit) = (self.clone(), conn.clone(), peer.clone(), permit.clone());
            conn.on_established(move |id| {
                permit.borrow_mut().take();
                peer.set(Some(id));
                plane.adopt(id, addr, conn2);
            });
        }
        let result = serve(stream, &conn, &self.inner.config.net).await;
        drop(permit.borrow_mut().take());
        match peer.get() {
            Some(id) => self.connection_ended(id, &conn, result.err().as_ref(), true),
            None => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "refused a data connection");
                }
                self.inner.counters.update(|s| s.refused += 1);
            }
        }
    }

    /// An accepted connection passed its handshake: it becomes the peer's connection, and the
    /// jobs waiting for the peer move onto it.
    fn adopt(&self, id: TmId, addr: Option<SocketAddr>, conn: Connection) {
        conn.set_peer_name(peer_name(id, addr));
        self.inner.counters.opened(id, false);
        if self.inner.closing.get() {
            conn.close_when_idle();
            return;
        }
        let previous = self.inner.peers.borrow_mut().insert(id, PeerEntry::Connected(conn.clone()));
        match previous {
            Some(PeerEntry::Connecting(list)) => attach_all(&conn, &list),
            Some(PeerEntry::Connected(old)) => {
                tracing::info!(peer = %conn.peer_name(), "the peer connected again; the old connection closes once its jobs end");
                old.close_when_idle();
            }
            None => {}
        }
    }

    fn connection_ended(&self, id: TmId, conn: &Connection, error: Option<&NetError>, was_open: bool) {
        self.inner.counters.ended(id, error, was_open);
        let mut peers = self.inner.peers.borrow_mut();
        if let Some(PeerEntry::Connected(current)) = peers.get(&id) {
            if Rc::ptr_eq(current.inner(), conn.inner()) {
                peers.remove(&id);
            }
        }
        match error {
            Some(e) => tracing::warn!(peer = %conn.peer_name(), error = %e, "data connection failed"),
            None => tracing::debug!(peer = %conn.peer_name(), "data connection closed"),
        }
    }

    /// Opens `spec`'s job on the connection to `peer`: on the live connection if there is one,
    /// else on one that is dialed now (this side's id is the lower) or awaited from the peer.
    /// The returned link cancels or fails the job and resolves to its end. Errors are mistakes
    /// in `spec` (or a plane that is shutting down); every later failure, the connection's
    /// included, arrives through the link.
    pub fn open_job(&self, peer: PeerAddress, spec: JobSpec) -> Result<JobLink, NetError> {
        let deployment = spec.deployment();
        let refuse =
            |error| NetError::JobRegistration { peer: peer_name(peer.id, Some(peer.data_addr)), deployment, error };
        if peer.id == self.id() {
            return Err(refuse(RegisterError::OwnTaskManager));
        }
        if self.inner.closing.get() {
            return Err(refuse(RegisterError::Closing));
        }
        let existing = match self.inner.peers.borrow().get(&peer.id) {
            Some(PeerEntry::Connected(conn)) if conn.accepts_jobs() => Some(Ok(conn.clone())),
            Some(PeerEntry::Connecting(list)) => Some(Err(list.clone())),
            _ => None,
        };
        match existing {
            Some(Ok(conn)) => conn.register_job(spec),
            Some(Err(list)) => {
                let link = JobLink::waiting(deployment, &list);
                list.borrow_mut().jobs.push((spec, link.clone()));
                Ok(link)
            }
            None => Ok(self.connect(peer, spec)),
        }
    }

    /// Starts a connection to `peer` for `spec`'s job: dials it, or waits for its dial.
    fn connect(&self, peer: PeerAddress, spec: JobSpec) -> JobLink {
        let list: SharedWaitList = Rc::new(RefCell::new(WaitList::default()));
        let link = JobLink::waiting(spec.deployment(), &list);
        list.borrow_mut().jobs.push((spec, link.clone()));
        self.inner.peers.borrow_mut().insert(peer.id, PeerEntry::Connecting(list.clone()));
        let plane = self.clone();
        if self.id() < peer.id {
            glommio::spawn_local(async move { plane.dial_peer(peer, list).await }).detach();
        } else {
            glommio::spawn_local(async move { plane.await_peer(peer, list).await }).detach();
        }
        link
    }

    /// Takes `list` out of the peer table if it is still the peer's entry.
    fn take_waiting(&self, peer: TmId, list: &SharedWaitList) -> bool {
        let mut peers = self.inner.peers.borrow_mut();
        match peers.get(&peer) {
            Some(PeerEntry::Connecting(current)) if Rc::ptr_eq(current, list) => {
                peers.remove(&peer);
                true
            }
            _ => false,
        }
    }

    async fn dial_peer(self, peer: PeerAddress, list: SharedWaitList) {
        let _task = TaskGuard::new(&self.inner);
        let name = peer_name(peer.id, Some(peer.data_addr));
        let net = self.inner.config.net;
        let connected = dial(peer.data_addr, &name, &net).await;
        let session = connected.and_then(|stream| Ok((stream, self.session(Role::Dialer, Some(peer.id), name)?)));
        let (stream, session) = match session {
            Ok(s) => s,
            Err(e) => {
                self.take_waiting(peer.id, &list);
                self.inner.counters.ended(peer.id, Some(&e), false);
                fail_all(&list, &e);
                return;
            }
        };
        let conn = Connection::new(session);
        self.inner.counters.opened(peer.id, true);
        if self.take_waiting(peer.id, &list) && !self.inner.closing.get() {
            self.inner.peers.borrow_mut().insert(peer.id, PeerEntry::Connected(conn.clone()));
        }
        attach_all(&conn, &list);
        if self.inner.closing.get() {
            conn.close_when_idle();
        }
        let result = serve(stream, &conn, &net).await;
        self.connection_ended(peer.id, &conn, result.err().as_ref(), true);
    }

    async fn await_peer(self, peer: PeerAddress, list: SharedWaitList) {
        let waited = self.inner.config.net.accept_timeout;
        Timer::new(waited).await;
        if self.take_waiting(peer.id, &list) {
            let e = NetError::PeerNeverConnected { peer: peer_name(peer.id, Some(peer.data_addr)), waited };
            fail_all(&list, &e);
        }
    }

    /// Stops accepting, lets every connection close once its jobs have ended (cancel them
    /// first to be quick), fails the jobs still waiting for a connection, and waits until
    /// every connection task has ended.
    pub async fn shutdown(&self) {
        self.inner.closing.set(true);
        if let Some(listener) = self.inner.listener.borrow_mut().take() {
            listener.cancel();
        }
        let entries: Vec<(TmId, PeerEntry)> = self.inner.peers.borrow_mut().drain().collect();
        for (id, entry) in entries {
            match entry {
                PeerEntry::Connected(conn) => conn.close_when_idle(),
                PeerEntry::Connecting(list) => {
                    let jobs = std::mem::take(&mut list.borrow_mut().jobs);
                    for (spec, link) in jobs {
                        let deployment = spec.deployment();
                        let peer = peer_name(id, None);
                        let error = NetError::JobRegistration { peer, deployment, error: RegisterError::Closing };
                        link.resolve(JobEnded { deployment, end: JobEnd::Failed(error), stats: Default::default() });
                    }
                }
            }
        }
        while self.inner.tasks.get() > 0 {
            Timer::new(SHUTDOWN_POLL).await;
        }
    }
}

/// Moves every job waiting in `list` onto `conn`.
fn attach_all(conn: &Connection, list: &SharedWaitList) {
    let jobs = std::mem::take(&mut list.borrow_mut().jobs);
    for (spec, link) in jobs {
        let deployment = spec.deployment();
        if let Err(e) = conn.attach(spec, &link) {
            link.resolve(JobEnded { deployment, end: JobEnd::Failed(e), stats: Default::default() });
        }
    }
}

/// Ends every job waiting in `list` with `error`.
fn fail_all(list: &SharedWaitList, error: &NetError) {
    let jobs = std::mem::take(&mut list.borrow_mut().jobs);
    for (spec, link) in jobs {
        link.resolve(JobEnded {
            deployment: spec.deployment(),
            end: JobEnd::Failed(error.clone()),
            stats: Default::default(),
        });
    }
}
