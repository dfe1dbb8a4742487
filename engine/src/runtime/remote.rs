//! A job's connections to the other TaskManager processes that run it. Submitting a job in
//! distributed mode builds one [`PeerSession`] per peer TaskManager that shares a channel with
//! this one, with the job registered on it as the one deployment it carries; they all run on
//! the job's gateway slot (its lowest local slot) beside that slot's tasks, so the network
//! needs no thread of its own. Of each pair, the TaskManager with the lower index dials and the
//! other accepts on its data listener; the acceptor tells its connections apart by peeking at
//! the HELLO that opens each. A session that fails fails the job with its [`NetError`] (which
//! names the peer), which cancels every local task; a job that fails or is cancelled here
//! interrupts every session, so the peers learn of it at once.
//!
//! Application mode has no JobManager: its TaskManager ids are derived from the indexes
//! ([`app_tm_id`]), the cluster token is a constant and the job fingerprint travels in
//! JOB_OPEN, so processes that built different jobs refuse each other there.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corestream_netstack::handshake::{random_nonce, ClusterAuth, Role, TmId};
use corestream_netstack::remote::{LocalIdentity, SessionConfig};
use corestream_netstack::transport::{dial, run_session, Interrupt, NetConfig, SessionEnd};
use corestream_netstack::wire::{decode_frame, Message, HELLO_FRAME_BYTES};
use corestream_netstack::{Doorbell, JobSpec, LocalChannel, NetError, PeerSession};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::timer::Timer;

use super::job::JobShared;
use super::metrics::ConnectionSummary;
use crate::error::JobError;

/// How often a connection attempt that is still waiting checks whether the job has ended.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The deployment key of the one job an application-mode connection carries.
pub(crate) const APP_DEPLOYMENT: u64 = 1;

/// The cluster token of application mode: its processes share no secret; the job fingerprint
/// in JOB_OPEN keeps different jobs apart.
const APP_TOKEN: [u8; 32] = *b"corestream application mode\0\0\0\0\0";

/// The data-connection id of TaskManager `index` in application mode: the index, big-endian,
/// so ids order as indexes do and the lower index dials.
pub(crate) fn app_tm_id(index: u32) -> TmId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&index.to_be_bytes());
    TmId(id)
}

fn app_tm_index(id: TmId) -> Option<u32> {
    id.0[4..].iter().all(|b| *b == 0).then(|| u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]))
}

/// How TaskManager `tm` introduces itself on its connection to `peer`.
pub(crate) fn session_config(tm: u32, peer: u32, net: &NetConfig) -> SessionConfig {
    SessionConfig {
        identity: LocalIdentity { tm: app_tm_id(tm), pid: std::process::id(), auth: ClusterAuth::new(APP_TOKEN, None) },
        role: if tm < peer { Role::Dialer } else { Role::Acceptor },
        expected_peer: Some(app_tm_id(peer)),
        heartbeat_ms: net.heartbeat_ms(),
        open_timeout: net.open_timeout,
        // With a public token the nonce only keeps transcripts apart; without a random source
        // a constant costs no security here.
        nonce: random_nonce().unwrap_or([0; 32]),
        peer_name: format!("TaskManager {peer}"),
    }
}

/// One connection of a job, before it is opened.
pub(crate) struct SessionBuild {
    pub peer: u32,
    pub peer_addr: SocketAddr,
    /// This side dials (its index is the lower one); otherwise it accepts.
    pub dial: bool,
    pub session: PeerSession,
    /// The job's channels on this connection, registered when it starts.
    pub job: JobSpec,
    /// Rung by the session's channels and on cancellation; in the job's bells.
    pub bell: Arc<Doorbell>,
    /// The channels whose producers are here, for the credit-stall count.
    pub outbound: Vec<Arc<LocalChannel>>,
}

impl SessionBuild {
    fn peer_name(&self) -> String {
        format!("TaskManager {} ({})", self.peer, self.peer_addr)
    }
}

/// Everything the gateway slot needs to run a job's connections.
pub(crate) struct JobNetwork {
    pub sessions: Vec<SessionBuild>,
    pub listener: Option<Arc<std::net::TcpListener>>,
    pub config: NetConfig,
    pub summaries: Arc<Mutex<Vec<ConnectionSummary>>>,
}

/// Runs every connection of the job until each has ended; failures go to `job`.
pub(crate) async fn run(network: JobNetwork, job: Arc<JobShared>) {
    let JobNetwork { sessions, listener, config, summaries } = network;
    let (dialing, accepting): (Vec<_>, Vec<_>) = sessions.into_iter().partition(|s| s.dial);
    let mut handles = Vec::new();
    for s in dialing {
        let ctx = Ctx { job: job.clone(), config, summaries: summaries.clone() };
        handles.push(glommio::spawn_local(async move {
            let name = s.peer_name();
            let connected = until_cancelled(&ctx.job, dial(s.peer_addr, &name, &ctx.config)).await;
            match connected {
                Some(Ok(stream)) => ctx.serve(s, stream).await,
                Some(Err(e)) => ctx.job.fail(JobError::Network(e)),
                None => {}
            }
        }));
    }
    if !accepting.is_empty() {
        let ctx = Ctx { job: job.clone(), config, summaries };
        match listener {
            Some(listener) => handles.push(glommio::spawn_local(accept_all(ctx, listener, accepting))),
            None => job.fail(JobError::InvalidJob(
                "this TaskManager must accept connections from lower-numbered peers but has no data listener".into(),
            )),
        }
    }
    for h in handles {
        h.await;
    }
}

#[derive(Clone)]
struct Ctx {
    job: Arc<JobShared>,
    config: NetConfig,
    summaries: Arc<Mutex<Vec<ConnectionSummary>>>,
}

impl Ctx {
    /// Drives one connected session to its end and reports it.
    async fn serve(&self, build: SessionBuild, stream: TcpStream) {
        let name = build.peer_name();
        let job = self.job.clone();
        let interrupt = move || {
            if !job.is_cancelled() {
                return None;
            }
            Some(match job.failure_message() {
                Some(message) => Interrupt::Fail { message },
                None => Interrupt::Cancel { reason: format!("job '{}' was cancelled", job.name) },
            })
        };
        let mut session = build.session;
        if let Err(error) = session.register_job(build.job) {
            let (peer, deployment) = (name, APP_DEPLOYMENT);
            self.job.fail(JobError::Network(NetError::JobRegistration { peer, deployment, error }));
            return;
        }
        let outcome = run_session(stream, session, build.bell, &self.config, name.clone(), interrupt).await;
        match outcome {
            Ok(outcome) => {
                let remote_credit_stalls = build.outbound.iter().map(|c| c.credit_stalls()).sum();
                self.summaries.lock().unwrap_or_else(|e| e.into_inner()).push(ConnectionSummary {
                    peer: name.clone(),
                    stats: outcome.stats,
                    remote_credit_stalls,
                });
                match outcome.end {
                    SessionEnd::Closed | SessionEnd::Interrupted(_) => {}
                    SessionEnd::PeerCancelled { reason } => {
                        tracing::warn!(peer = %name, %reason, "the peer cancelled the job");
                        self.job.cancel();
                    }
                }
            }
            Err(e) => self.job.fail(JobError::Network(e)),
        }
    }
}

/// `work`, unless the job is cancelled first (then `None`).
async fn until_cancelled<T>(job: &JobShared, work: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        while !job.is_cancelled() {
            Timer::new(CANCEL_POLL).await;
        }
        None
    })
    .await
}

/// Accepts one connection per session in `pending`, hands each to its session by the sender
/// of its HELLO, and serves them all.
async fn accept_all(ctx: Ctx, listener: Arc<std::net::TcpListener>, mut pending: Vec<SessionBuild>) {
    let listener = match listener.try_clone() {
        // SAFETY: the descriptor was just duplicated from a bound, listening std listener, and
        // `into_raw_fd` hands its ownership to the glommio listener, which closes it.
        Ok(l) => unsafe { TcpListener::from_raw_fd(l.into_raw_fd()) },
        Err(e) => {
            ctx.job.fail(JobError::Network(NetError::Socket {
                peer: pending[0].peer_name(),
                operation: "duplicating the data listener",
                detail: e.to_string(),
            }));
            return;
        }
    };
    let mut served = Vec::new();
    let deadline = Instant::now() + ctx.config.accept_timeout;
    // One task accepts, and each accepted connection is identified by a task of its own, so one
    // that stays silent holds up only itself (until the heartbeat timeout), not the peers
    // connecting after it; and no accept is ever abandoned half done (a dropped io_uring
    // accept may already hold the next peer's connection).
    let (identified_tx, identified) = local_channel::new_bounded::<Accepted>(MAX_UNIDENTIFIED);
    let in_flight = Rc::new(Cell::new(0usize));
    let acceptor = glommio::spawn_local(accept_and_identify(listener, identified_tx, ctx.config, in_flight.clone()));
    while !pending.is_empty() {
        let waiting = pending[0].peer_name();
        let left = deadline.saturating_duration_since(Instant::now());
        let next = futures_lite::future::or(async { identified.recv().await }, async {
            Timer::new(left).await;
            None
        });
        let (stream, sender) = match until_cancelled(&ctx.job, next).await {
            None => return,
            Some(Some(Ok(accepted))) => {
                in_flight.set(in_flight.get() - 1);
                accepted
            }
            Some(Some(Err(detail))) => {
                let operation = "accept";
                ctx.job.fail(JobError::Network(NetError::Socket { peer: waiting, operation, detail }));
                return;
            }
            Some(None) => {
                let waited = ctx.config.accept_timeout;
                ctx.job.fail(JobError::Network(NetError::PeerNeverConnected { peer: waiting, waited }));
                return;
            }
        };
        let index = match sender.and_then(|tm| pending.iter().position(|s| s.peer == tm)) {
            Some(i) => i,
            // Only one peer is expected and no other connection may be it: its session reports
            // what is wrong with the stream.
            None if pending.len() == 1 && in_flight.get() == 0 => 0,
            None => {
                let from = stream.peer_addr().map_or_else(|_| "an unknown address".to_string(), |a| a.to_string());
                tracing::warn!(%from, "dropped a data connection that did not open with the HELLO of an expected peer");
                continue;
            }
        };
        let build = pending.swap_remove(index);
        let ctx = ctx.clone();
        served.push(glommio::spawn_local(async move { ctx.serve(build, stream).await }));
    }
    // Every expected peer is here: stop accepting for this job; a connection still being
    // identified is closed once its task finds the channel gone.
    drop(acceptor);
    drop(identified);
    for h in served {
        h.await;
    }
}

/// Connections accepted but not yet identified by their HELLO, at most: beyond it the
/// acceptor waits for one to be identified before it accepts another.
const MAX_UNIDENTIFIED: usize = 16;

/// A connection with the sender of its HELLO (`None`: not a HELLO, or none in time), or why
/// accepting failed.
type Accepted = Result<(TcpStream, Option<u32>), String>;

/// Accepts connections until dropped (cancelled); each is identified by a task of its own (at most
/// [`MAX_UNIDENTIFIED`] at once) and sent on `identified`. `in_flight` counts the connections
/// accepted and not yet taken from `identified`.
async fn accept_and_identify(
    listener: TcpListener,
    identified: local_channel::LocalSender<Accepted>,
    config: NetConfig,
    in_flight: Rc<Cell<usize>>,
) {
    let identified = Rc::new(identified);
    let identifying = Rc::new(Semaphore::new(MAX_UNIDENTIFIED as u64));
    loop {
        let Ok(permit) = identifying.acquire_static_permit(1).await else { return };
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                let _ = identified.send(Err(e.to_string())).await;
                return;
            }
        };
        in_flight.set(in_flight.get() + 1);
        let (identified, timeout) = (identified.clone(), config.heartbeat_timeout);
        glommio::spawn_local(async move {
            let sender = hello_sender(&stream, timeout).await;
            drop(permit);
            let _ = identified.send(Ok((stream, sender))).await;
        })
        .detach();
    }
}

/// The TaskManager index in the HELLO that opens `stream`, read without consuming it; `None`
/// if the first bytes are not a HELLO of an application-mode id or do not arrive within
/// `timeout`.
async fn hello_sender(stream: &TcpStream, timeout: Duration) -> Option<u32> {
    let peek = async {
        let mut hello = [0u8; HELLO_FRAME_BYTES];
        loop {
            match stream.peek(&mut hello).await {
                Ok(n) if n >= HELLO_FRAME_BYTES => break,
                Ok(0) | Err(_) => return None,
                Ok(_) => {
                    Timer::new(Duration::from_millis(1)).await;
                }
            }
        }
        match decode_frame(&hello) {
            Ok((Message::Hello(h), _)) => app_tm_index(h.tm),
            _ => None,
        }
    };
    futures_lite::future::or(peek, async {
        Timer::new(timeout).await;
        None
    })
    .await
}
