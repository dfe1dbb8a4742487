//! The remote end of one connection between two TaskManagers, with no I/O: a [`PeerSession`]
//! runs the handshake ([`crate::handshake`]) and then carries the channels of every job that
//! runs on both TaskManagers, each job registered ([`PeerSession::register_job`]) and ended
//! on its own while the connection stays. It turns frames into channel operations and channel
//! state into frames. The transport ([`crate::transport`]) drives it; the fuzz target
//! ([`crate::wire::fuzz_one`]) and the tests drive it from byte slices.
//!
//! - *Outbound* channels have their producer in this process and their consumer on the peer
//!   ([`LocalChannel::new_remote_out`]). The session is their consumer: once the peer's
//!   PARTITION_REQUEST has arrived it pops what the producer's `OutputChannel` shipped (only
//!   with credit, so the wire never carries a buffer without credit) and writes BUFFER /
//!   EVENT frames, plus BACKLOG when the producer's backlog changed and no BUFFER carried it.
//!   PARTITION_REQUEST and ADD_CREDIT from the peer grant credit to them, exactly as a local
//!   consumer does.
//! - *Inbound* channels have their consumer here and their producer on the peer
//!   ([`LocalChannel::new_remote_in`]). The session is their producer: a BUFFER is admitted
//!   against the channel's credit, received at offset 0 of a pool buffer, checked by the
//!   channel's [`BufferValidator`] and pushed with the sender's backlog; EVENT frames are pushed
//!   in place (priority events at the head). What the consumer's `InputGate` grants is
//!   announced with ADD_CREDIT (`granted_total` minus what was announced), the exclusive credit
//!   with the first PARTITION_REQUEST.
//! - An unaligned checkpoint barrier (a priority event) goes out ahead of what an outbound
//!   channel's queue holds and the session has not yet written; the producer copies those items
//!   (buffers and the events between them) as its in-flight data
//!   ([`crate::OutputChannel::send_priority_event`]), since they reach the peer after the
//!   barrier. What was written before it arrives before it, and the peer's session queues the
//!   barrier ahead of the items waiting in the inbound channel, which the consumer's gate
//!   copies ([`crate::InputGate::copy_overtaken`]).
//!
//! Everything a peer sends is checked against the session state before its body is read:
//! HELLO first and once, then a verified AUTH before anything of a job; frames of a deployment
//! only after the peer's JOB_OPEN and before its end frame; a known channel of the right
//! direction; BUFFER and EVENT in sequence and before EndOfPartition; a BUFFER only with
//! credit; one PARTITION_REQUEST per channel; CLOSE only once the peer has no job open. A
//! violation of the connection's rules is a [`SessionError`], after which the session must be
//! dropped (which returns every buffer it and its channels hold to the pool) and every job on
//! it fails. A violation inside one job (its channels, its JOB_OPEN, a payload that fails
//! validation) fails that job alone: the session answers ERROR for its deployment, reports the
//! job's end and reads the job's frames still in flight without applying them.
//!
//! What happened to each job this side registered is reported once, as a [`JobEnded`], by
//! [`PeerSession::take_job_ends`]: finished, cancelled or failed here, cancelled or failed at
//! the peer, refused; [`PeerSession::fail_all`] ends every job when the connection fails.
//!
//! Fairness: a writer round visits every job, starting one further each round, and in each
//! job every outbound channel, taking at most [`MAX_ITEMS_PER_CHANNEL_PER_ROUND`] items per
//! channel, so neither a busy channel nor a busy job starves the others. Bounds: at most
//! [`MAX_JOBS_PER_CONNECTION`] deployments and [`MAX_PENDING_REQUESTS`] early
//! PARTITION_REQUESTs per connection; the receive side holds no buffer of its own (each is
//! pushed or dropped at once), so the buffers of a connection are those its channels' credit
//! allows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::buffer::{Buffer, BufferBuilder};
use crate::credit::{ChannelItem, LocalChannel};
use crate::doorbell::Doorbell;
use crate::error::NetError;
use crate::event::Event;
use crate::handshake::{auth_mac, check_peer_hello, verify_auth, ClusterAuth, HandshakeError, HelloCheck, Role, TmId};
use crate::pool::BufferPool;
use crate::record::BufferValidator;
use crate::wire::{
    decode_body, EncodedFrame, ErrorCode, FrameError, FrameHeader, FrameKind, Hello, Message, CONNECTION_DEPLOYMENT,
    HEADER_BYTES, HELLO_FRAME_BYTES,
};

/// Items an outbound channel may turn into frames in one [`PeerSession::poll_outgoing`] round,
/// so that one busy channel cannot starve the others of the connection.
pub const MAX_ITEMS_PER_CHANNEL_PER_ROUND: usize = 8;

/// The most items an inbound channel holds unread before a further EVENT is refused. Events
/// need no credit, so without this bound a peer could grow this process's memory at line rate.
/// An honest producer sends events behind its buffers, and those wait for credit, so only
/// events without records between them (idle watermarks, latency markers) accumulate, and only
/// while the consumer does not read the channel (e.g. during barrier alignment); this leaves
/// room for minutes of those at their usual rates, about 3 MB per channel at most.
pub const MAX_QUEUED_ITEMS_PER_CHANNEL: u32 = 1 << 16;

/// Deployments one connection holds at once: registered here, opened by the peer, or ending.
pub const MAX_JOBS_PER_CONNECTION: usize = 1024;

/// PARTITION_REQUESTs of the peer that wait, on one connection, for their job to be registered
/// here.
pub const MAX_PENDING_REQUESTS: usize = 1 << 16;

/// This TaskManager process, the same for every connection it has.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    pub tm: TmId,
    pub pid: u32,
    pub auth: ClusterAuth,
}

/// How one session introduces itself and what it accepts.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub identity: LocalIdentity,
    pub role: Role,
    /// The TaskManager this side dialed; `None` when accepting (any member of the cluster with
    /// a lower id).
    pub expected_peer: Option<TmId>,
    /// Both sides must beat at the same interval: each declares the other dead after its own
    /// timeout of silence, derived from it.
    pub heartbeat_ms: u32,
    /// How long a deployment opened by one side only may wait for the other.
    pub open_timeout: Duration,
    /// This side's HELLO nonce: fresh per connection ([`crate::handshake::random_nonce`]).
    pub nonce: [u8; 32],
    /// Names the peer in the errors of the jobs' ends (e.g. "TaskManager 1f2e3d4c (10.0.0.2:6121)").
    pub peer_name: String,
}

/// Why the connection must end: the peer broke the protocol, or the handshake failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error(transparent)]
    Protocol(#[from] FrameError),
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
}

/// Why a job could not be registered on a connection: a mistake of the caller (the job spec)
/// or the connection's state.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RegisterError {
    #[error("deployment 0 is reserved for connection-level frames")]
    ZeroDeployment,
    #[error("no channel of the job crosses this connection")]
    NoChannels,
    #[error("channel {channel} is outside the plan's {channels} channels")]
    ChannelOutOfRange { channel: u32, channels: u32 },
    #[error("channel {channel} is added twice")]
    DuplicateChannel { channel: u32 },
    #[error("channel {channel} crosses the connection but was built as an in-process channel")]
    NotRemote { channel: u32 },
    #[error("inbound channel {channel} needs at least one exclusive credit")]
    NoExclusiveCredit { channel: u32 },
    #[error("the deployment is already registered on this connection")]
    AlreadyRegistered,
    #[error(
        "the deployment already ended on this connection (the peer ended it, or it waited too long for this side)"
    )]
    AlreadyEnded,
    #[error("the connection is closing")]
    Closing,
    #[error("a TaskManager does not connect to itself")]
    OwnTaskManager,
    #[error("the connection holds {limit} deployments already")]
    TooManyJobs { limit: usize },
}

/// The channels one job has on one connection, registered at once with
/// [`PeerSession::register_job`] (so a PARTITION_REQUEST never finds the job half built).
#[derive(Debug)]
pub struct JobSpec {
    deployment: u64,
    fingerprint: u64,
    channels: u32,
    bell: Arc<Doorbell>,
    outbound: Vec<(u32, Arc<LocalChannel>)>,
    inbound: Vec<(u32, Arc<LocalChannel>, BufferValidator)>,
}

impl JobSpec {
    /// A job of deployment `deployment` (non-zero), whose execution plan has `channels`
    /// channels and fingerprint `fingerprint` (both sides must agree on both). `bell` is the
    /// `session_bell` every channel added here was built with: the connection wakes on it.
    pub fn new(deployment: u64, fingerprint: u64, channels: u32, bell: Arc<Doorbell>) -> Self {
        Self { deployment, fingerprint, channels, bell, outbound: Vec::new(), inbound: Vec::new() }
    }

    pub fn deployment(&self) -> u64 {
        self.deployment
    }

    pub fn bell(&self) -> &Arc<Doorbell> {
        &self.bell
    }

    /// Adds a channel whose producer is here and whose consumer is on the peer (built with
    /// [`LocalChannel::new_remote_out`]); `id` is its index in the job's plan.
    pub fn add_outbound(&mut self, id: u32, channel: Arc<LocalChannel>) -> &mut Self {
        self.outbound.push((id, channel));
        self
    }

    /// Adds a channel whose consumer is here and whose producer is on the peer (built with
    /// [`LocalChannel::new_remote_in`]); every buffer received for it must pass `validator`.
    pub fn add_inbound(&mut self, id: u32, channel: Arc<LocalChannel>, validator: BufferValidator) -> &mut Self {
        self.inbound.push((id, channel, validator));
        self
    }

    fn check(&self) -> Result<(), RegisterError> {
        if self.deployment == CONNECTION_DEPLOYMENT {
            return Err(RegisterError::ZeroDeployment);
        }
        if self.outbound.is_empty() && self.inbound.is_empty() {
            return Err(RegisterError::NoChannels);
        }
        let mut seen = std::collections::HashSet::new();
        let ids =
            self.outbound.iter().map(|(id, ch)| (*id, ch)).chain(self.inbound.iter().map(|(id, ch, _)| (*id, ch)));
        for (id, channel) in ids {
            if id >= self.channels {
                return Err(RegisterError::ChannelOutOfRange { channel: id, channels: self.channels });
            }
            if !seen.insert(id) {
                return Err(RegisterError::DuplicateChannel { channel: id });
            }
            if !channel.is_remote() {
                return Err(RegisterError::NotRemote { channel: id });
            }
        }
        match self.inbound.iter().find(|(_, ch, _)| ch.initial_credit() == 0) {
            Some((id, _, _)) => Err(RegisterError::NoExclusiveCredit { channel: *id }),
            None => Ok(()),
        }
    }
}

/// What a received frame means for the connection as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSignal {
    /// Nothing beyond the channel and job operations already done.
    None,
    /// The peer failed the connection or refused this side (ERROR without a deployment).
    Failed { code: ErrorCode, message: String },
    /// The peer closes the connection (CLOSE).
    Closed,
}

/// How one job's part on this connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// Every channel ended and both sides sent JOB_CLOSE.
    Finished,
    /// Cancelled here ([`PeerSession::cancel_job`]); the peer got CANCEL.
    Cancelled { reason: String },
    /// Failed here ([`PeerSession::fail_job`]); the peer got ERROR(2).
    FailedHere { message: String },
    /// The peer cancelled the job (CANCEL).
    PeerCancelled { reason: String },
    /// The job failed at the peer, the peer refused it, this side refused the peer's frames of
    /// it, one side never deployed it, or the connection failed or closed under it.
    Failed(NetError),
}

/// One job's end and its counters on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnded {
    pub deployment: u64,
    pub end: JobEnd,
    pub stats: SessionStats,
}

/// A frame leaving the session, ready for a vectored write.
#[derive(Debug)]
pub enum OutFrame {
    /// A frame whose body is empty or small (all but BUFFER and long CANCEL/ERROR text).
    Control(EncodedFrame<'static>),
    /// A CANCEL or ERROR frame whose text does not fit inline.
    Text { header: [u8; HEADER_BYTES], text: Vec<u8> },
    /// A BUFFER frame: the header and the buffer whose written part is the body. Dropping it
    /// once written returns the buffer to the pool.
    Buffer { header: [u8; HEADER_BYTES], buffer: Buffer },
}

impl OutFrame {
    /// The frame of `message` (any kind but BUFFER), owning its body.
    pub fn control(message: &Message<'_>) -> Result<Self, FrameError> {
        let frame = message.encode()?;
        Ok(match frame.to_static() {
            Some(frame) => OutFrame::Control(frame),
            None => OutFrame::Text { header: *frame.header(), text: frame.body().to_vec() },
        })
    }

    pub fn header(&self) -> &[u8; HEADER_BYTES] {
        match self {
            OutFrame::Control(frame) => frame.header(),
            OutFrame::Text { header, .. } | OutFrame::Buffer { header, .. } => header,
        }
    }

    pub fn body(&self) -> &[u8] {
        match self {
            OutFrame::Control(frame) => frame.body(),
            OutFrame::Text { text, .. } => text,
            OutFrame::Buffer { buffer, .. } => buffer.as_slice(),
        }
    }

    /// Header plus body bytes.
    pub fn len(&self) -> usize {
        HEADER_BYTES + self.body().len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Traffic counters, of one job on a connection or of the whole connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub buffers_in: u64,
    pub buffers_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// ADD_CREDIT and PARTITION_REQUEST frames sent.
    pub credit_announcements: u64,
}

/// Counters of one connection: its traffic (every frame, the connection's own included) and
/// its jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub transfer: SessionStats,
    /// Jobs this side opened (JOB_OPEN sent).
    pub jobs_opened: u64,
    /// Jobs registered here whose end was reported, however they ended.
    pub jobs_closed: u64,
    /// Of those, the ones that did not finish (cancelled or failed, here or at the peer).
    pub jobs_failed: u64,
}

#[derive(Debug)]
struct Outbound {
    id: u32,
    channel: Arc<LocalChannel>,
    next_seq: u32,
    requested: bool,
    /// Credit the peer has granted in total; BUFFER frames sent never exceed it.
    peer_granted: u64,
    buffers_sent: u64,
    announced_backlog: u32,
    end_sent: bool,
}

#[derive(Debug)]
struct Inbound {
    id: u32,
    channel: Arc<LocalChannel>,
    validator: BufferValidator,
    next_seq: u32,
    requested: bool,
    announced: u64,
    end_received: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Out(usize),
    In(usize),
}

/// The channels a job registered here has on the connection, until they are released.
#[derive(Debug)]
struct LocalJob {
    fingerprint: u64,
    channels: u32,
    bell: Arc<Doorbell>,
    outbound: Vec<Outbound>,
    inbound: Vec<Inbound>,
    routes: HashMap<u32, Route>,
    next_outbound: usize,
}

impl LocalJob {
    fn new(spec: JobSpec) -> Self {
        let mut job = Self {
            fingerprint: spec.fingerprint,
            channels: spec.channels,
            bell: spec.bell,
            outbound: Vec::with_capacity(spec.outbound.len()),
            inbound: Vec::with_capacity(spec.inbound.len()),
            routes: HashMap::with_capacity(spec.outbound.len() + spec.inbound.len()),
            next_outbound: 0,
        };
        for (id, channel) in spec.outbound {
            job.routes.insert(id, Route::Out(job.outbound.len()));
            job.outbound.push(Outbound {
                id,
                channel,
                next_seq: 0,
                requested: false,
                peer_granted: 0,
                buffers_sent: 0,
                announced_backlog: 0,
                end_sent: false,
            });
        }
        for (id, channel, validator) in spec.inbound {
            job.routes.insert(id, Route::In(job.inbound.len()));
            job.inbound.push(Inbound {
                id,
                channel,
                validator,
                next_seq: 0,
                requested: false,
                announced: 0,
                end_received: false,
            });
        }
        job
    }

    fn open_channels(&self) -> u32 {
        let out = self.outbound.iter().filter(|o| !o.end_sent).count();
        let inb = self.inbound.iter().filter(|i| !i.end_received).count();
        (out + inb) as u32
    }

    fn route(&self, header: &FrameHeader) -> Result<Route, FrameError> {
        self.routes.get(&header.channel).copied().ok_or(FrameError::UnknownChannel { channel: header.channel })
    }

    fn inbound_of(&self, header: &FrameHeader) -> Result<usize, FrameError> {
        match self.route(header)? {
            Route::In(i) => Ok(i),
            Route::Out(_) => Err(FrameError::WrongDirection { channel: header.channel, kind: header.kind }),
        }
    }

    fn outbound_of(&self, header: &FrameHeader) -> Result<usize, FrameError> {
        match self.route(header)? {
            Route::Out(o) => Ok(o),
            Route::In(_) => Err(FrameError::WrongDirection { channel: header.channel, kind: header.kind }),
        }
    }

    /// Checks a data frame for an inbound channel (not ended, in sequence, BUFFER with credit,
    /// EVENT under the queue bound) and takes its sequence number.
    fn admit_data(&mut self, header: &FrameHeader) -> Result<usize, FrameError> {
        let i = self.inbound_of(header)?;
        let ch = &mut self.inbound[i];
        if ch.end_received {
            return Err(FrameError::AfterEnd { channel: ch.id, kind: header.kind });
        }
        if header.kind == FrameKind::Backlog {
            return Ok(i);
        }
        if header.seq != ch.next_seq {
            return Err(FrameError::OutOfOrder { channel: ch.id, expected: ch.next_seq, got: header.seq });
        }
        if header.kind == FrameKind::Buffer && !ch.channel.take_credit() {
            return Err(FrameError::NoCredit { channel: ch.id });
        }
        let queued = ch.channel.queued();
        if header.kind == FrameKind::Event && queued >= MAX_QUEUED_ITEMS_PER_CHANNEL {
            return Err(FrameError::TooManyEvents { channel: ch.id, queued });
        }
        ch.next_seq = ch.next_seq.wrapping_add(1);
        Ok(i)
    }

    /// Grants `credit` from the peer to outbound channel `o`.
    fn grant(&mut self, o: usize, credit: u64) -> Result<(), FrameError> {
        let ch = &mut self.outbound[o];
        let fits = u32::try_from(credit).ok().and_then(|c| ch.channel.credit().checked_add(c).map(|_| c));
        let Some(credit) = fits else {
            return Err(FrameError::CreditOverflow {
                channel: ch.id,
                credit: u32::try_from(credit).unwrap_or(u32::MAX),
            });
        };
        ch.requested = true;
        ch.peer_granted += u64::from(credit);
        ch.channel.grant(credit);
        Ok(())
    }

    /// Gives back what the session holds of the job's channels: items the producers shipped
    /// and no frame carried yet go back to the pool now, and the session's references go.
    fn release(self) {
        for o in &self.outbound {
            while o.channel.pop().is_some() {}
        }
        self.bell.clear_waker();
    }
}

/// What the peer said of a deployment in its JOB_OPEN.
#[derive(Debug, Clone, Copy)]
struct PeerOpen {
    fingerprint: u64,
    channels: u32,
}

/// The frame that ends this side's part of a deployment.
#[derive(Debug, Clone)]
enum EndFrame {
    Close,
    Cancel(String),
    Error(ErrorCode, String),
}

/// A PARTITION_REQUEST (plus the ADD_CREDITs after it) of a job not registered here yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    channel: u32,
    credit: u64,
}

/// One deployment on the connection, from the first JOB_OPEN (either side's) until both sides
/// have sent their end frame.
#[derive(Debug)]
struct JobSlot {
    deployment: u64,
    /// The job's channels while it is registered here and not ended.
    local: Option<LocalJob>,
    registered: bool,
    peer_open: Option<PeerOpen>,
    open_sent: bool,
    end_queued: Option<EndFrame>,
    end_sent: bool,
    end_received: bool,
    reported: bool,
    /// When this slot started to wait for the other side's JOB_OPEN (or for registration here).
    since: Instant,
    pending: Vec<Pending>,
    stats: SessionStats,
}

impl JobSlot {
    fn new(deployment: u64, now: Instant) -> Self {
        Self {
            deployment,
            local: None,
            registered: false,
            peer_open: None,
            open_sent: false,
            end_queued: None,
            end_sent: false,
            end_received: false,
            reported: false,
            since: now,
            pending: Vec::new(),
            stats: SessionStats::default(),
        }
    }

    fn ending(&self) -> bool {
        self.end_queued.is_some() || self.end_sent
    }
}

/// Permission to receive one BUFFER, given by [`PeerSession::on_header`] after its header
/// passed every session check (job, channel, direction, sequence, credit). The body must go to
/// [`PeerSession::on_buffer`], or, if no pool buffer can be had, the ticket to
/// [`PeerSession::on_buffer_unavailable`].
#[derive(Debug)]
#[must_use = "an admitted BUFFER took credit and a sequence number; hand its body to on_buffer"]
pub struct BufferTicket {
    deployment: u64,
    inbound: usize,
    backlog: u32,
    body_len: u32,
}

impl BufferTicket {
    /// Bytes to read into the pool buffer, at offset 0.
    pub fn body_len(&self) -> usize {
        self.body_len as usize
    }
}

/// Permission to apply a frame other than BUFFER once its body is read: hand it to
/// [`PeerSession::on_body`].
#[derive(Debug)]
#[must_use = "an admitted frame may have taken a sequence number; hand its body to on_body"]
pub struct BodyTicket {
    header: FrameHeader,
}

/// What [`PeerSession::on_header`] admitted.
#[derive(Debug)]
pub enum Admission {
    /// A BUFFER: read `body_len` bytes into a fresh pool buffer at offset 0.
    Buffer(BufferTicket),
    /// Any other frame: read its (small) body into scratch space.
    Body(BodyTicket),
    /// A frame of a job this side has ended (or just refused): read this many body bytes and
    /// drop them.
    Discard { body_len: usize },
}

/// The sans-IO state of one connection to a peer TaskManager.
#[derive(Debug)]
pub struct PeerSession {
    config: SessionConfig,
    local_hello: Hello,
    local_hello_frame: [u8; HELLO_FRAME_BYTES],
    pool: BufferPool,
    hello_sent: bool,
    peer_hello: Option<(Hello, [u8; HELLO_FRAME_BYTES])>,
    auth_sent: bool,
    auth_verified: bool,
    slots: Vec<JobSlot>,
    by_deployment: HashMap<u64, usize>,
    next_job: usize,
    pending_requests: usize,
    ends: Vec<JobEnded>,
    closing: bool,
    close_sent: bool,
    close_received: bool,
    now: Instant,
    stats: ConnectionStats,
}

impl PeerSession {
    /// A session that introduces itself as `config` says; `pool` supplies the buffers received
    /// BUFFER frames are read into, by the transport or by [`PeerSession::on_frame`].
    pub fn new(config: SessionConfig, pool: BufferPool) -> Self {
        let local_hello = Hello {
            tm: config.identity.tm,
            cluster_token: *config.identity.auth.token(),
            nonce: config.nonce,
            pid: config.identity.pid,
            heartbeat_ms: config.heartbeat_ms,
        };
        Self {
            local_hello_frame: hello_frame(&local_hello),
            local_hello,
            config,
            pool,
            hello_sent: false,
            peer_hello: None,
            auth_sent: false,
            auth_verified: false,
            slots: Vec::new(),
            by_deployment: HashMap::new(),
            next_job: 0,
            pending_requests: 0,
            ends: Vec::new(),
            closing: false,
            close_sent: false,
            close_received: false,
            now: Instant::now(),
            stats: ConnectionStats::default(),
        }
    }

    pub fn stats(&self) -> ConnectionStats {
        self.stats
    }

    /// The peer's TaskManager id, once its HELLO passed the checks.
    pub fn peer_tm(&self) -> Option<TmId> {
        self.peer_hello.as_ref().map(|(h, _)| h.tm)
    }

    /// The peer's process id, once its HELLO passed the checks.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_hello.as_ref().map(|(h, _)| h.pid)
    }

    pub fn peer_name(&self) -> &str {
        &self.config.peer_name
    }

    /// Renames the peer in the errors of later job ends (an acceptor learns who it is from
    /// the HELLO).
    pub fn set_peer_name(&mut self, name: String) {
        self.config.peer_name = name;
    }

    /// Whether both AUTHs are through: jobs may use the connection.
    pub fn is_established(&self) -> bool {
        self.auth_verified && self.auth_sent
    }

    /// The pool received BUFFER bodies are read into.
    pub(crate) fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Deployments on the connection (registered here, opened by the peer, or ending).
    pub fn jobs(&self) -> usize {
        self.slots.len()
    }

    /// Whether `deployment` is registered here and has not ended.
    pub fn is_running(&self, deployment: u64) -> bool {
        self.slot(deployment).is_some_and(|s| s.local.is_some())
    }

    /// Appends the bell of every running job: the connection's writer must wake on each.
    pub fn job_bells(&self, out: &mut Vec<Arc<Doorbell>>) {
        out.extend(self.slots.iter().filter_map(|s| s.local.as_ref().map(|j| j.bell.clone())));
    }

    /// Whether this side has written CLOSE.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Whether both sides have sent CLOSE: the connection may be shut down.
    pub fn is_closed(&self) -> bool {
        self.close_sent && self.close_received
    }

    /// Whether [`PeerSession::register_job`] may succeed: the connection is not closing.
    pub fn accepts_jobs(&self) -> bool {
        !(self.closing || self.close_sent || self.close_received)
    }

    /// Registers no more jobs and sends CLOSE once every deployment on the connection has
    /// ended.
    pub fn close_when_idle(&mut self) {
        self.closing = true;
    }

    /// The ends of jobs registered here since the last call, each reported once.
    pub fn take_job_ends(&mut self) -> Vec<JobEnded> {
        std::mem::take(&mut self.ends)
    }

    fn slot(&self, deployment: u64) -> Option<&JobSlot> {
        self.by_deployment.get(&deployment).map(|&i| &self.slots[i])
    }

    fn slot_index(&self, deployment: u64) -> Option<usize> {
        self.by_deployment.get(&deployment).copied()
    }

    fn add_slot(&mut self, deployment: u64) -> usize {
        let i = self.slots.len();
        self.slots.push(JobSlot::new(deployment, self.now));
        self.by_deployment.insert(deployment, i);
        i
    }

    /// Registers a job's channels on the connection. Its JOB_OPEN goes out once the
    /// connection is established; PARTITION_REQUESTs the peer sent before are applied now.
    /// What happens to the job later is reported by [`PeerSession::take_job_ends`].
    pub fn register_job(&mut self, spec: JobSpec) -> Result<(), RegisterError> {
        spec.check()?;
        if !self.accepts_jobs() {
            return Err(RegisterError::Closing);
        }
        let d = spec.deployment;
        let i = match self.slot_index(d) {
            Some(i) if self.slots[i].registered => return Err(RegisterError::AlreadyRegistered),
            Some(i) if self.slots[i].ending() || self.slots[i].end_received => return Err(RegisterError::AlreadyEnded),
            Some(i) => i,
            None if self.slots.len() >= MAX_JOBS_PER_CONNECTION => {
                return Err(RegisterError::TooManyJobs { limit: MAX_JOBS_PER_CONNECTION })
            }
            None => self.add_slot(d),
        };
        let slot = &mut self.slots[i];
        slot.registered = true;
        slot.local = Some(LocalJob::new(spec));
        slot.local.as_ref().expect("just set").bell.ring();
        if let Some(peer) = slot.peer_open {
            if let Err(e) = self.check_open(i, peer) {
                self.refuse_job(i, e);
                return Ok(());
            }
        }
        let pending = std::mem::take(&mut self.slots[i].pending);
        self.pending_requests -= pending.len();
        for p in pending {
            let job = self.slots[i].local.as_mut().expect("registered just above");
            let header = FrameHeader {
                kind: FrameKind::PartitionRequest,
                flags: 0,
                body_len: 0,
                channel: p.channel,
                seq: 0,
                arg: 0,
                arg64: 0,
                deployment: d,
            };
            if let Err(e) = job.outbound_of(&header).and_then(|o| job.grant(o, p.credit)) {
                self.refuse_job(i, e);
                break;
            }
        }
        Ok(())
    }

    /// Cancels a job registered here: its channels are released (what the session holds of
    /// them goes back to the pool), the peer gets CANCEL for it, and its end is reported as
    /// [`JobEnd::Cancelled`]. Returns whether the job was still running.
    pub fn cancel_job(&mut self, deployment: u64, reason: &str) -> bool {
        let reason = crate::wire::truncate_text(reason).to_string();
        self.end_here(deployment, EndFrame::Cancel(reason.clone()), JobEnd::Cancelled { reason })
    }

    /// Fails a job registered here: as [`PeerSession::cancel_job`], but the peer gets ERROR(2)
    /// and the end is [`JobEnd::FailedHere`].
    pub fn fail_job(&mut self, deployment: u64, message: &str) -> bool {
        let message = crate::wire::truncate_text(message).to_string();
        self.end_here(
            deployment,
            EndFrame::Error(ErrorCode::JobFailed, message.clone()),
            JobEnd::FailedHere { message },
        )
    }

    fn end_here(&mut self, deployment: u64, frame: EndFrame, end: JobEnd) -> bool {
        let Some(i) = self.slot_index(deployment) else { return false };
        if self.slots[i].local.is_none() {
            return false;
        }
        self.end_job(i, Some(frame), Some(end));
        true
    }

    /// Cancels every running job (see [`PeerSession::cancel_job`]).
    pub fn cancel_all(&mut self, reason: &str) {
        for d in self.running() {
            self.cancel_job(d, reason);
        }
    }

    /// Fails every running job (see [`PeerSession::fail_job`]).
    pub fn fail_all_here(&mut self, message: &str) {
        for d in self.running() {
            self.fail_job(d, message);
        }
    }

    fn running(&self) -> Vec<u64> {
        self.slots.iter().filter(|s| s.local.is_some()).map(|s| s.deployment).collect()
    }

    /// The connection failed: every job registered here that has not ended ends with `error`,
    /// and every deployment is dropped (with what the session holds of its channels).
    pub fn fail_all(&mut self, error: &NetError) {
        self.remove_ended();
        for i in 0..self.slots.len() {
            self.report(i, JobEnd::Failed(error.clone()));
            if let Some(job) = self.slots[i].local.take() {
                job.release();
            }
        }
        self.slots.clear();
        self.by_deployment.clear();
        self.pending_requests = 0;
    }

    /// Reports the end of slot `i` if it is a job registered here and was not reported yet.
    fn report(&mut self, i: usize, end: JobEnd) {
        let slot = &mut self.slots[i];
        if !slot.registered || slot.reported {
            return;
        }
        slot.reported = true;
        self.stats.jobs_closed += 1;
        if end != JobEnd::Finished {
            self.stats.jobs_failed += 1;
        }
        self.ends.push(JobEnded { deployment: slot.deployment, end, stats: slot.stats });
    }

    /// Ends this side's part of slot `i`: releases its channels, reports `end` (a normal close
    /// is reported once both JOB_CLOSEs are through), and queues `frame` (JOB_CLOSE if none).
    fn end_job(&mut self, i: usize, frame: Option<EndFrame>, end: Option<JobEnd>) {
        let slot = &mut self.slots[i];
        if let Some(job) = slot.local.take() {
            job.release();
        }
        self.pending_requests -= slot.pending.len();
        slot.pending.clear();
        if !slot.ending() {
            slot.end_queued = Some(frame.unwrap_or(EndFrame::Close));
        }
        if let Some(end) = end {
            self.report(i, end);
        }
    }

    /// Fails slot `i` because a frame of it broke the protocol (or its JOB_OPENs disagree):
    /// the peer gets ERROR for the deployment, the rest of its frames are dropped.
    fn refuse_job(&mut self, i: usize, error: FrameError) {
        let code = match error {
            FrameError::JobMismatch { .. } => ErrorCode::HandshakeMismatch,
            _ => ErrorCode::Protocol,
        };
        let deployment = self.slots[i].deployment;
        tracing::warn!(peer = %self.config.peer_name, deployment = format_args!("{deployment:016x}"), %error, "refusing a job's frames");
        let frame = EndFrame::Error(code, crate::wire::truncate_text(&error.to_string()).to_string());
        let peer = self.config.peer_name.clone();
        self.end_job(i, Some(frame), Some(JobEnd::Failed(NetError::JobProtocol { peer, deployment, error })));
    }

    fn check_open(&self, i: usize, peer: PeerOpen) -> Result<(), FrameError> {
        let Some(job) = &self.slots[i].local else { return Ok(()) };
        let checks = [
            ("job fingerprint", job.fingerprint, peer.fingerprint),
            ("channel count", u64::from(job.channels), u64::from(peer.channels)),
        ];
        match checks.into_iter().find(|(_, here, there)| here != there) {
            Some((field, expected, found)) => Err(FrameError::JobMismatch { field, expected, found }),
            None => Ok(()),
        }
    }

    /// Checks a decoded header against the session state before its body is read. For BUFFER
    /// this takes the channel's credit and sequence number: the body goes to
    /// [`PeerSession::on_buffer`], every other body to [`PeerSession::on_body`], a discarded
    /// frame's body nowhere. A violation inside one job fails that job (and its frame is
    /// discarded); a violation of the connection's rules is an error.
    pub fn on_header(&mut self, header: &FrameHeader) -> Result<Admission, SessionError> {
        let kind = header.kind;
        if self.close_received {
            return Err(FrameError::AfterClose { kind }.into());
        }
        match (kind, self.peer_hello.is_some()) {
            (FrameKind::Hello, true) => return Err(FrameError::UnexpectedHello.into()),
            (FrameKind::Hello, false) => return Ok(self.body(header)),
            (_, false) => return Err(FrameError::MissingHello { kind }.into()),
            _ => {}
        }
        match kind {
            FrameKind::Auth if self.auth_verified => return Err(FrameError::UnexpectedAuth.into()),
            FrameKind::Auth | FrameKind::Heartbeat => return Ok(self.body(header)),
            FrameKind::Error if header.deployment == CONNECTION_DEPLOYMENT => return Ok(self.body(header)),
            _ if !self.auth_verified => return Err(FrameError::BeforeAuth { kind }.into()),
            _ => {}
        }
        if self.close_sent && kind != FrameKind::Close {
            // Crossed this side's CLOSE: the peer learns from it that nothing here answers.
            return Ok(Admission::Discard { body_len: header.body_len as usize });
        }
        let d = header.deployment;
        match kind {
            FrameKind::Close => {
                let open_jobs = self.slots.iter().filter(|s| s.peer_open.is_some() && !s.end_received).count();
                if open_jobs > 0 {
                    return Err(FrameError::ClosedEarly { open_jobs: open_jobs as u32 }.into());
                }
                Ok(self.body(header))
            }
            FrameKind::JobOpen => {
                match self.slot(d) {
                    Some(s) if s.end_received => return Err(FrameError::AfterJobEnd { kind, deployment: d }.into()),
                    Some(s) if s.peer_open.is_some() => {
                        return Err(FrameError::DuplicateJobOpen { deployment: d }.into())
                    }
                    Some(_) => {}
                    None if self.slots.len() >= MAX_JOBS_PER_CONNECTION => {
                        return Err(FrameError::TooManyJobs { limit: MAX_JOBS_PER_CONNECTION }.into())
                    }
                    None => {}
                }
                Ok(self.body(header))
            }
            FrameKind::JobClose | FrameKind::Cancel | FrameKind::Error => {
                let slot = self.slot(d).ok_or(FrameError::JobNotOpened { kind, deployment: d })?;
                if slot.end_received {
                    return Err(FrameError::AfterJobEnd { kind, deployment: d }.into());
                }
                if slot.peer_open.is_none() && !slot.open_sent {
                    return Err(FrameError::JobNotOpened { kind, deployment: d }.into());
                }
                Ok(self.body(header))
            }
            FrameKind::PartitionRequest
            | FrameKind::AddCredit
            | FrameKind::Buffer
            | FrameKind::Backlog
            | FrameKind::Event => self.on_channel_header(header),
            FrameKind::Hello | FrameKind::Auth | FrameKind::Heartbeat => unreachable!("handled above"),
        }
    }

    fn body(&self, header: &FrameHeader) -> Admission {
        Admission::Body(BodyTicket { header: *header })
    }

    fn discard(&mut self, i: usize, header: &FrameHeader) -> Admission {
        self.count_in(i, header.frame_len(), false);
        Admission::Discard { body_len: header.body_len as usize }
    }

    fn count_in(&mut self, i: usize, bytes: usize, buffer: bool) {
        for stats in [&mut self.stats.transfer, &mut self.slots[i].stats] {
            stats.frames_in += 1;
            stats.bytes_in += bytes as u64;
            stats.buffers_in += u64::from(buffer);
        }
    }

    fn on_channel_header(&mut self, header: &FrameHeader) -> Result<Admission, SessionError> {
        let (kind, d) = (header.kind, header.deployment);
        let i = self.slot_index(d).ok_or(FrameError::JobNotOpened { kind, deployment: d })?;
        let slot = &mut self.slots[i];
        if slot.end_received {
            return Err(FrameError::AfterJobEnd { kind, deployment: d }.into());
        }
        if slot.peer_open.is_none() {
            return Err(FrameError::JobNotOpened { kind, deployment: d }.into());
        }
        if slot.ending() {
            return Ok(self.discard(i, header));
        }
        let Some(job) = slot.local.as_mut() else {
            // Registered here later: only the consumer's requests can come first.
            return match kind {
                FrameKind::PartitionRequest | FrameKind::AddCredit => Ok(self.body(header)),
                _ => {
                    self.refuse_job(i, FrameError::UnknownChannel { channel: header.channel });
                    Ok(self.discard(i, header))
                }
            };
        };
        let admitted = match kind {
            FrameKind::Buffer => job.admit_data(header).map(|inbound| {
                Admission::Buffer(BufferTicket {
                    deployment: d,
                    inbound,
                    backlog: header.arg,
                    body_len: header.body_len,
                })
            }),
            FrameKind::Event | FrameKind::Backlog => job.admit_data(header).map(|_| self_body(header)),
            FrameKind::PartitionRequest => job.outbound_of(header).and_then(|o| {
                if job.outbound[o].requested {
                    Err(FrameError::DuplicatePartitionRequest { channel: header.channel })
                } else {
                    Ok(self_body(header))
                }
            }),
            FrameKind::AddCredit => job.outbound_of(header).and_then(|o| {
                if job.outbound[o].requested {
                    Ok(self_body(header))
                } else {
                    Err(FrameError::CreditBeforeRequest { channel: header.channel })
                }
            }),
            _ => unreachable!("only channel kinds reach on_channel_header"),
        };
        match admitted {
            Ok(admission) => Ok(admission),
            Err(error) => {
                self.refuse_job(i, error);
                Ok(self.discard(i, header))
            }
        }
    }

    /// Receives an admitted BUFFER whose body was read to offset 0 of `body` (its length set
    /// to the body length): validates it and pushes it into its channel with the sender's
    /// backlog. A payload that fails validation fails its job; a buffer of a job that ended
    /// while its body was read is dropped. The buffer goes back to the pool unless pushed.
    pub fn on_buffer(&mut self, ticket: BufferTicket, body: BufferBuilder) {
        assert_eq!(body.len(), ticket.body_len(), "BUFFER body read short of its declared length");
        let Some(i) = self.slot_index(ticket.deployment) else { return };
        let bytes = HEADER_BYTES + body.len();
        self.count_in(i, bytes, true);
        let Some(job) = self.slots[i].local.as_mut() else { return };
        let ch = &job.inbound[ticket.inbound];
        if let Err(error) = (ch.validator)(body.as_slice()) {
            let channel = ch.id;
            self.refuse_job(i, FrameError::InvalidBuffer { channel, error });
            return;
        }
        ch.channel.set_backlog(ticket.backlog);
        ch.channel.push(ChannelItem::Buffer(body.freeze()), false);
    }

    /// An admitted BUFFER found no free pool buffer (the reservations of this process do not
    /// hold): its job fails with `error`, the peer gets ERROR(2); the caller drops the body.
    pub fn on_buffer_unavailable(&mut self, ticket: BufferTicket, error: NetError) {
        let Some(i) = self.slot_index(ticket.deployment) else { return };
        self.count_in(i, HEADER_BYTES + ticket.body_len(), false);
        if self.slots[i].local.is_none() {
            return;
        }
        let message = crate::wire::truncate_text(&error.to_string()).to_string();
        self.end_job(i, Some(EndFrame::Error(ErrorCode::JobFailed, message)), Some(JobEnd::Failed(error)));
    }

    /// Applies an admitted frame other than BUFFER, given its body.
    pub fn on_body(&mut self, ticket: BodyTicket, body: &[u8]) -> Result<PeerSignal, SessionError> {
        let header = ticket.header;
        let message = decode_body(&header, body)?;
        self.stats.transfer.frames_in += 1;
        self.stats.transfer.bytes_in += header.frame_len() as u64;
        let d = header.deployment;
        if let Some(i) = self.slot_index(d).filter(|_| d != CONNECTION_DEPLOYMENT) {
            let stats = &mut self.slots[i].stats;
            stats.frames_in += 1;
            stats.bytes_in += header.frame_len() as u64;
        }
        match message {
            Message::Hello(hello) => self.on_hello(hello)?,
            Message::Auth { mac } => {
                let (dialer, acceptor) = self.transcript_hellos();
                let peer_role = self.config.role.other();
                verify_auth(&self.config.identity.auth, dialer, acceptor, peer_role, &mac)?;
                self.auth_verified = true;
            }
            Message::Heartbeat => {}
            Message::Close => {
                self.close_received = true;
                let error = NetError::PeerLost {
                    peer: self.config.peer_name.clone(),
                    detail: "it closed the connection while the job was opening here".into(),
                };
                self.fail_all(&error);
                return Ok(PeerSignal::Closed);
            }
            Message::Error { deployment: CONNECTION_DEPLOYMENT, code, message } => {
                return Ok(PeerSignal::Failed { code, message: message.to_string() })
            }
            Message::JobOpen { deployment, fingerprint, channels } => {
                let i = self.slot_index(deployment).unwrap_or_else(|| self.add_slot(deployment));
                let peer = PeerOpen { fingerprint, channels };
                let slot = &mut self.slots[i];
                slot.peer_open = Some(peer);
                slot.since = self.now;
                if let Err(e) = self.check_open(i, peer) {
                    self.refuse_job(i, e);
                }
            }
            Message::JobClose { deployment } => self.on_peer_end(deployment, None)?,
            Message::Cancel { deployment, reason } => {
                let end = JobEnd::PeerCancelled { reason: reason.to_string() };
                self.on_peer_end(deployment, Some(end))?;
            }
            Message::Error { deployment, code, message } => {
                let end = JobEnd::Failed(self.peer_job_error(deployment, code, message));
                self.on_peer_end(deployment, Some(end))?;
            }
            Message::PartitionRequest { deployment, channel, initial_credit } => {
                self.on_credit(&header, deployment, channel, initial_credit)?
            }
            Message::AddCredit { deployment, channel, credit } => {
                self.on_credit(&header, deployment, channel, credit)?
            }
            Message::Backlog { backlog, .. } => {
                if let Some(job) = self.running_job(d) {
                    let i = job.inbound_of(&header)?;
                    job.inbound[i].channel.announce_backlog(backlog);
                }
            }
            Message::Event { event, .. } => {
                if let Some(job) = self.running_job(d) {
                    let i = job.inbound_of(&header)?;
                    let ch = &mut job.inbound[i];
                    if event == Event::EndOfPartition {
                        ch.end_received = true;
                    }
                    ch.channel.push(ChannelItem::Event(event), event.is_priority());
                }
            }
            Message::Buffer { .. } => unreachable!("BUFFER frames are admitted with a BufferTicket"),
        }
        Ok(PeerSignal::None)
    }

    fn running_job(&mut self, deployment: u64) -> Option<&mut LocalJob> {
        let i = self.slot_index(deployment)?;
        self.slots[i].local.as_mut()
    }

    fn on_hello(&mut self, hello: Hello) -> Result<(), SessionError> {
        let check = HelloCheck {
            local: &self.local_hello,
            auth: &self.config.identity.auth,
            role: self.config.role,
            expected_peer: self.config.expected_peer,
        };
        check_peer_hello(&check, &hello)?;
        self.peer_hello = Some((hello, hello_frame(&hello)));
        Ok(())
    }

    /// The HELLO frames in transcript order: the dialer's, then the acceptor's.
    fn transcript_hellos(&self) -> (&[u8], &[u8]) {
        let peer: &[u8] = self.peer_hello.as_ref().map_or(&[], |(_, frame)| &frame[..]);
        match self.config.role {
            Role::Dialer => (&self.local_hello_frame, peer),
            Role::Acceptor => (peer, &self.local_hello_frame),
        }
    }

    fn peer_job_error(&self, deployment: u64, code: ErrorCode, message: &str) -> NetError {
        let peer = self.config.peer_name.clone();
        let message = message.to_string();
        match code {
            ErrorCode::JobFailed => NetError::PeerFailed { peer, message },
            ErrorCode::NotDeployed => NetError::JobNotDeployed { peer, deployment, detail: message },
            ErrorCode::Protocol | ErrorCode::HandshakeMismatch => NetError::PeerRefused { peer, code, message },
        }
    }

    /// The peer's end frame for `deployment`: `end` for CANCEL and ERROR, `None` for JOB_CLOSE.
    fn on_peer_end(&mut self, deployment: u64, end: Option<JobEnd>) -> Result<(), SessionError> {
        let i = self.slot_index(deployment).expect("admitted: the slot exists");
        self.slots[i].end_received = true;
        if self.slots[i].ending() {
            return Ok(());
        }
        match end {
            Some(end) => self.end_job(i, None, Some(end)),
            None => {
                let slot = &self.slots[i];
                let open_channels = match &slot.local {
                    Some(job) => job.open_channels() + slot.pending.len() as u32,
                    None if !slot.registered => slot.peer_open.map_or(0, |p| p.channels),
                    None => 0,
                };
                if open_channels > 0 {
                    self.refuse_job(i, FrameError::JobClosedEarly { open_channels });
                } else {
                    self.end_job(i, Some(EndFrame::Close), None);
                }
            }
        }
        Ok(())
    }

    /// PARTITION_REQUEST (`header.kind`) or ADD_CREDIT: grants the credit to the outbound
    /// channel, or keeps it until the job is registered here.
    fn on_credit(
        &mut self,
        header: &FrameHeader,
        deployment: u64,
        channel: u32,
        credit: u32,
    ) -> Result<(), SessionError> {
        let Some(i) = self.slot_index(deployment).filter(|&i| !self.slots[i].ending()) else { return Ok(()) };
        let request = header.kind == FrameKind::PartitionRequest;
        if let Some(job) = self.slots[i].local.as_mut() {
            if let Err(e) = job.outbound_of(header).and_then(|o| job.grant(o, u64::from(credit))) {
                self.refuse_job(i, e);
            }
            return Ok(());
        }
        let peer_channels = self.slots[i].peer_open.map_or(0, |p| p.channels);
        let slot = &mut self.slots[i];
        let found = slot.pending.iter_mut().find(|p| p.channel == channel);
        let refusal = match (request, found) {
            (true, Some(_)) => Some(FrameError::DuplicatePartitionRequest { channel }),
            (false, None) => Some(FrameError::CreditBeforeRequest { channel }),
            (false, Some(p)) => {
                p.credit += u64::from(credit);
                None
            }
            (true, None) if channel >= peer_channels => Some(FrameError::UnknownChannel { channel }),
            (true, None) => {
                if self.pending_requests >= MAX_PENDING_REQUESTS {
                    return Err(FrameError::TooManyPending { limit: MAX_PENDING_REQUESTS }.into());
                }
                self.pending_requests += 1;
                slot.pending.push(Pending { channel, credit: u64::from(credit) });
                None
            }
        };
        if let Some(e) = refusal {
            self.refuse_job(i, e);
        }
        Ok(())
    }

    /// Receives one whole frame from a slice (tests, fuzzing): the header checks, then for
    /// BUFFER a copy of the body into a pool buffer at offset 0, as a socket read would do.
    pub fn on_frame(&mut self, header: &FrameHeader, body: &[u8]) -> Result<PeerSignal, SessionError> {
        let needed = header.body_len as usize;
        if body.len() < needed {
            return Err(
                FrameError::LengthPastEnd { len: header.frame_len(), available: HEADER_BYTES + body.len() }.into()
            );
        }
        match self.on_header(header)? {
            Admission::Buffer(ticket) => {
                let payload = &body[..ticket.body_len()];
                match self.pool.take() {
                    Ok(mut buf) => {
                        buf.whole_mut()[..payload.len()].copy_from_slice(payload);
                        buf.set_len(payload.len());
                        self.on_buffer(ticket, buf);
                    }
                    Err(e) => self.on_buffer_unavailable(ticket, e),
                }
                Ok(PeerSignal::None)
            }
            Admission::Body(ticket) => self.on_body(ticket, body),
            Admission::Discard { .. } => Ok(PeerSignal::None),
        }
    }

    fn emit(&mut self, slot: Option<usize>, out: &mut Vec<OutFrame>, message: Message<'_>) {
        let job = slot.map(|i| &mut self.slots[i].stats);
        push_frame(&mut self.stats.transfer, job, out, message);
    }

    /// Expires deployments that one side opened and the other did not within the open
    /// timeout (not deployed there).
    fn expire(&mut self) {
        let timeout = self.config.open_timeout;
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let waiting_for_peer = slot.registered && slot.open_sent && slot.peer_open.is_none();
            let waiting_here = !slot.registered && slot.peer_open.is_some();
            if slot.ending() || !(waiting_for_peer || waiting_here) || self.now.duration_since(slot.since) < timeout {
                continue;
            }
            let deployment = slot.deployment;
            let detail = if waiting_here {
                format!("the job was not deployed on this TaskManager within {timeout:?} of the peer's JOB_OPEN")
            } else {
                format!("the peer did not open the job within {timeout:?}")
            };
            let peer = self.config.peer_name.clone();
            let frame = EndFrame::Error(ErrorCode::NotDeployed, detail.clone());
            let error = NetError::JobNotDeployed { peer, deployment, detail };
            self.end_job(i, Some(frame), Some(JobEnd::Failed(error)));
        }
    }

    /// Appends the frames this side should write now, in this order: HELLO (first call), AUTH
    /// (once the peer's HELLO is in), then, once the connection is established, per job, in a
    /// rotating order: JOB_OPEN, PARTITION_REQUEST for each inbound channel, ADD_CREDIT for
    /// credit granted since the last announcement, one round over the outbound channels the
    /// peer has requested (BUFFER/EVENT in queue order, at most
    /// [`MAX_ITEMS_PER_CHANNEL_PER_ROUND`] each, then BACKLOG if the backlog changed and no
    /// BUFFER carried it), and the job's end frame (JOB_CLOSE once every channel has ended);
    /// finally CLOSE once closing with no deployment left. `now` drives the open timeout.
    /// Returns whether an outbound channel may hold more items than this round took, so the
    /// caller polls again without waiting for a bell.
    pub fn poll_outgoing(&mut self, now: Instant, out: &mut Vec<OutFrame>) -> bool {
        self.now = now;
        if !self.hello_sent {
            self.hello_sent = true;
            let hello = self.local_hello;
            self.emit(None, out, Message::Hello(hello));
        }
        if self.peer_hello.is_some() && !self.auth_sent {
            self.auth_sent = true;
            let (dialer, acceptor) = self.transcript_hellos();
            let mac = auth_mac(&self.config.identity.auth, dialer, acceptor, self.config.role);
            self.emit(None, out, Message::Auth { mac });
        }
        if !self.is_established() || self.close_sent {
            return false;
        }
        self.expire();
        let n = self.slots.len();
        let mut more = false;
        for k in 0..n {
            more |= self.write_job((self.next_job + k) % n, out);
        }
        if n > 0 {
            self.next_job = (self.next_job + 1) % n;
        }
        self.remove_ended();
        if (self.closing || self.close_received) && self.slots.is_empty() {
            self.close_sent = true;
            self.emit(None, out, Message::Close);
        }
        more
    }

    fn write_job(&mut self, i: usize, out: &mut Vec<OutFrame>) -> bool {
        let d = self.slots[i].deployment;
        let mut more = false;
        if self.slots[i].local.is_some() {
            if !self.slots[i].open_sent {
                let job = self.slots[i].local.as_ref().expect("checked");
                let message = Message::JobOpen { deployment: d, fingerprint: job.fingerprint, channels: job.channels };
                self.slots[i].open_sent = true;
                if self.slots[i].peer_open.is_none() {
                    self.slots[i].since = self.now;
                }
                self.stats.jobs_opened += 1;
                self.emit(Some(i), out, message);
            }
            self.announce_credit(i, out);
            more = self.write_outbound_round(i, out);
            let slot = &self.slots[i];
            let finished = slot.local.as_ref().is_some_and(|j| j.open_channels() == 0) && slot.pending.is_empty();
            if finished {
                self.end_job(i, Some(EndFrame::Close), None);
            }
        }
        let slot = &mut self.slots[i];
        if let Some(frame) = slot.end_queued.take() {
            slot.end_sent = true;
            if !slot.open_sent && slot.peer_open.is_none() {
                slot.end_received = true;
            } else {
                let message = match &frame {
                    EndFrame::Close => Message::JobClose { deployment: d },
                    EndFrame::Cancel(reason) => Message::Cancel { deployment: d, reason },
                    EndFrame::Error(code, message) => Message::Error { deployment: d, code: *code, message },
                };
                self.emit(Some(i), out, message);
            }
        }
        more
    }

    /// Drops every deployment both sides have ended; a job registered here that ended
    /// normally is reported [`JobEnd::Finished`] now.
    fn remove_ended(&mut self) {
        let mut i = 0;
        while i < self.slots.len() {
            let slot = &self.slots[i];
            if !(slot.end_sent && slot.end_received) {
                i += 1;
                continue;
            }
            self.report(i, JobEnd::Finished);
            let slot = self.slots.swap_remove(i);
            self.by_deployment.remove(&slot.deployment);
            if let Some(moved) = self.slots.get(i) {
                self.by_deployment.insert(moved.deployment, i);
            }
        }
        if self.next_job >= self.slots.len() {
            self.next_job = 0;
        }
    }

    fn announce_credit(&mut self, i: usize, out: &mut Vec<OutFrame>) {
        let transfer = &mut self.stats.transfer;
        let slot = &mut self.slots[i];
        let d = slot.deployment;
        let Some(job) = slot.local.as_mut() else { return };
        for ch in &mut job.inbound {
            let message = if !ch.requested {
                ch.requested = true;
                ch.announced = u64::from(ch.channel.initial_credit());
                Message::PartitionRequest { deployment: d, channel: ch.id, initial_credit: ch.channel.initial_credit() }
            } else {
                let delta = ch.channel.granted_total() - ch.announced;
                if delta == 0 || ch.end_received {
                    continue;
                }
                let credit = u32::try_from(delta).unwrap_or(u32::MAX);
                ch.announced += u64::from(credit);
                Message::AddCredit { deployment: d, channel: ch.id, credit }
            };
            push_frame(transfer, Some(&mut slot.stats), out, message);
        }
    }

    fn write_outbound_round(&mut self, i: usize, out: &mut Vec<OutFrame>) -> bool {
        let Some(job) = self.slots[i].local.as_ref() else { return false };
        let n = job.outbound.len();
        let start = job.next_outbound;
        let mut more = false;
        for k in 0..n {
            more |= self.write_outbound(i, (start + k) % n, out);
        }
        if let Some(job) = self.slots[i].local.as_mut() {
            if n > 0 {
                job.next_outbound = (job.next_outbound + 1) % n;
            }
        }
        more
    }

    fn write_outbound(&mut self, i: usize, o: usize, out: &mut Vec<OutFrame>) -> bool {
        let d = self.slots[i].deployment;
        let mut backlog_sent = None;
        for _ in 0..MAX_ITEMS_PER_CHANNEL_PER_ROUND {
            let slot = &mut self.slots[i];
            let ch = &mut slot.local.as_mut().expect("running").outbound[o];
            if ch.end_sent || !ch.requested {
                return false;
            }
            let Some(item) = ch.channel.pop() else {
                break;
            };
            let seq = ch.next_seq;
            ch.next_seq = ch.next_seq.wrapping_add(1);
            match item {
                ChannelItem::Buffer(buffer) => {
                    ch.buffers_sent += 1;
                    assert!(ch.buffers_sent <= ch.peer_granted, "channel {} shipped a buffer without credit", ch.id);
                    let backlog = ch.channel.backlog();
                    let message =
                        Message::Buffer { deployment: d, channel: ch.id, seq, backlog, payload: buffer.as_slice() };
                    let header = *message.encode().expect("a shipped buffer is a valid BUFFER body").header();
                    ch.announced_backlog = backlog;
                    backlog_sent = Some(backlog);
                    let bytes = (HEADER_BYTES + buffer.len()) as u64;
                    for stats in [&mut self.stats.transfer, &mut slot.stats] {
                        stats.frames_out += 1;
                        stats.buffers_out += 1;
                        stats.bytes_out += bytes;
                    }
                    out.push(OutFrame::Buffer { header, buffer });
                }
                ChannelItem::Event(event) => {
                    ch.end_sent |= event == Event::EndOfPartition;
                    let id = ch.id;
                    self.emit(Some(i), out, Message::Event { deployment: d, channel: id, seq, event });
                }
            }
        }
        let ch = &mut self.slots[i].local.as_mut().expect("running").outbound[o];
        if ch.end_sent {
            return false;
        }
        let backlog = ch.channel.backlog();
        if backlog != ch.announced_backlog && backlog_sent != Some(backlog) {
            ch.announced_backlog = backlog;
            let id = ch.id;
            self.emit(Some(i), out, Message::Backlog { deployment: d, channel: id, backlog });
        }
        let ch = &self.slots[i].local.as_ref().expect("running").outbound[o];
        ch.channel.queued() > 0
    }
}

fn self_body(header: &FrameHeader) -> Admission {
    Admission::Body(BodyTicket { header: *header })
}

/// Appends the frame of `message` (any kind but BUFFER) to `out`, counted in `transfer` and,
/// for a job's frame, in the job's counters.
fn push_frame(
    transfer: &mut SessionStats,
    job: Option<&mut SessionStats>,
    out: &mut Vec<OutFrame>,
    message: Message<'_>,
) {
    let frame = OutFrame::control(&message).expect("the session only builds frames its peer accepts");
    let len = frame.len() as u64;
    let credit = u64::from(matches!(message, Message::PartitionRequest { .. } | Message::AddCredit { .. }));
    for stats in std::iter::once(transfer).chain(job) {
        stats.frames_out += 1;
        stats.bytes_out += len;
        stats.credit_announcements += credit;
    }
    out.push(frame);
}

/// The HELLO frame exactly as it crosses the wire.
fn hello_frame(hello: &Hello) -> [u8; HELLO_FRAME_BYTES] {
    let frame = Message::Hello(*hello).encode().expect("every HELLO encodes");
    let mut bytes = [0u8; HELLO_FRAME_BYTES];
    bytes[..HEADER_BYTES].copy_from_slice(frame.header());
    bytes[HEADER_BYTES..].copy_from_slice(frame.body());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credit::{CreditConfig, InputGate, OutputChannel};
    use crate::event::{BarrierKind, WatermarkStatus};
    use crate::record::{deserialize, validate_buffer, RecordIter, RecordWriter, Written};
    use crate::wire::{decode_header, MAX_FRAME_BYTES};
    use proptest::prelude::*;

    const FINGERPRINT: u64 = 0x0123_4567_89ab_cdef;
    const TOKEN: [u8; 32] = [0x70; 32];
    const D: u64 = 0xd1;
    const D2: u64 = 0xd2;
    const TIMEOUT: Duration = Duration::from_secs(5);
    type Rec = (u32, u32);

    fn identity(tm: u8, secret: Option<&[u8]>) -> LocalIdentity {
        LocalIdentity { tm: TmId([tm; 16]), pid: u32::from(tm), auth: ClusterAuth::new(TOKEN, secret) }
    }

    fn session_of(identity: LocalIdentity, role: Role, expected: Option<u8>, pool: &BufferPool) -> PeerSession {
        let nonce = [identity.tm.0[0] ^ 0xaa; 32];
        let config = SessionConfig {
            identity,
            role,
            expected_peer: expected.map(|tm| TmId([tm; 16])),
            heartbeat_ms: 1000,
            open_timeout: TIMEOUT,
            nonce,
            peer_name: format!("the {role:?}'s peer"),
        };
        PeerSession::new(config, pool.clone())
    }

    /// TaskManager 1, dialing TaskManager 2.
    fn dialer(pool: &BufferPool) -> PeerSession {
        session_of(identity(1, None), Role::Dialer, Some(2), pool)
    }

    /// TaskManager 2, accepting.
    fn acceptor(pool: &BufferPool) -> PeerSession {
        session_of(identity(2, None), Role::Acceptor, None, pool)
    }

    fn bell() -> Arc<Doorbell> {
        Arc::new(Doorbell::new())
    }

    fn record_buffer(pool: &BufferPool, records: &[Rec]) -> Buffer {
        let mut buf = pool.take().unwrap();
        let mut writer = RecordWriter::new();
        for r in records {
            assert_eq!(writer.write(&mut buf, r).unwrap(), Written::Done);
        }
        buf.freeze()
    }

    fn records_of(buffer: &Buffer) -> Vec<Rec> {
        assert!(validate_buffer::<Rec>(buffer.as_slice()).is_ok());
        // SAFETY: validated just above as a buffer of `Rec`; pool buffers are 16-byte aligned.
        unsafe { RecordIter::<Rec>::new(buffer.as_slice()) }.map(deserialize::<Rec>).collect()
    }

    fn feed(session: &mut PeerSession, message: Message<'_>) -> Result<PeerSignal, SessionError> {
        let frame = message.encode().unwrap();
        let header = decode_header(frame.header()).unwrap();
        session.on_frame(&header, frame.body())
    }

    /// What `session` writes now, as bytes.
    fn written(session: &mut PeerSession, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        session.poll_outgoing(now, &mut out);
        out.iter().flat_map(|f| [&f.header()[..], f.body()].concat()).collect()
    }

    /// The messages `session` writes now.
    fn messages(session: &mut PeerSession) -> Vec<String> {
        let bytes = written(session, Instant::now());
        let mut at = 0;
        let mut all = Vec::new();
        while at < bytes.len() {
            let (m, used) = crate::wire::decode_frame(&bytes[at..]).unwrap();
            all.push(format!("{m:?}"));
            at += used;
        }
        all
    }

    fn deliver(bytes: &[u8], to: &mut PeerSession) -> Result<Vec<PeerSignal>, SessionError> {
        let mut at = 0;
        let mut signals = Vec::new();
        while at < bytes.len() {
            let header = decode_header(bytes[at..at + HEADER_BYTES].try_into().unwrap())?;
            signals.push(to.on_frame(&header, &bytes[at + HEADER_BYTES..at + header.frame_len()])?);
            at += header.frame_len();
        }
        Ok(signals)
    }

    /// Moves frames both ways until neither side has anything to write.
    fn pump(a: &mut PeerSession, b: &mut PeerSession) -> Result<(), SessionError> {
        for _ in 0..10_000 {
            let (x, y) = (written(a, Instant::now()), written(b, Instant::now()));
            if x.is_empty() && y.is_empty() {
                return Ok(());
            }
            deliver(&x, b)?;
            deliver(&y, a)?;
        }
        panic!("the sessions never went quiet");
    }

    fn established(pool: &BufferPool) -> (PeerSession, PeerSession) {
        let (mut a, mut b) = (dialer(pool), acceptor(pool));
        pump(&mut a, &mut b).unwrap();
        assert!(a.is_established() && b.is_established());
        (a, b)
    }

    #[test]
    fn the_handshake_passes_with_the_same_token_and_secret() {
        let pool = BufferPool::new(1);
        let (a, b) = established(&pool);
        assert_eq!((a.peer_tm(), b.peer_tm()), (Some(TmId([2; 16])), Some(TmId([1; 16]))));
        assert_eq!((a.peer_pid(), b.peer_pid()), (Some(2), Some(1)));
        let secret = Some(&b"s3cret"[..]);
        let mut a = session_of(identity(1, secret), Role::Dialer, Some(2), &pool);
        let mut b = session_of(identity(2, secret), Role::Acceptor, None, &pool);
        pump(&mut a, &mut b).unwrap();
        assert!(a.is_established() && b.is_established());
    }

    fn handshake_error(a: &mut PeerSession, b: &mut PeerSession) -> SessionError {
        let x = written(a, Instant::now());
        let y = written(b, Instant::now());
        let (to_b, to_a) = (deliver(&x, b), deliver(&y, a));
        let second = (written(a, Instant::now()), written(b, Instant::now()));
        let errors = [to_b.err(), to_a.err(), deliver(&second.0, b).err(), deliver(&second.1, a).err()];
        errors.into_iter().flatten().next().expect("the handshake fails")
    }

    #[test]
    fn a_wrong_token_secret_or_heartbeat_fails_the_handshake() {
        let pool = BufferPool::new(1);
        let mut other = identity(2, None);
        other.auth = ClusterAuth::new([0x71; 32], None);
        let mut b = session_of(other, Role::Acceptor, None, &pool);
        let err = handshake_error(&mut dialer(&pool), &mut b);
        assert_eq!(err, SessionError::Handshake(HandshakeError::WrongClusterToken));

        let mut a = session_of(identity(1, Some(b"one")), Role::Dialer, Some(2), &pool);
        let mut b = session_of(identity(2, Some(b"two")), Role::Acceptor, None, &pool);
        assert_eq!(handshake_error(&mut a, &mut b), SessionError::Handshake(HandshakeError::BadMac));
        assert!(!a.is_established() && !b.is_established());

        let mut a = session_of(identity(1, Some(b"one")), Role::Dialer, Some(2), &pool);
        assert_eq!(handshake_error(&mut a, &mut acceptor(&pool)), SessionError::Handshake(HandshakeError::BadMac));

        let mut slow = acceptor(&pool);
        slow.config.heartbeat_ms = 3000;
        slow.local_hello.heartbeat_ms = 3000;
        slow.local_hello_frame = hello_frame(&slow.local_hello);
        let want = HandshakeError::HeartbeatMismatch { local_ms: 3000, peer_ms: 1000 };
        assert_eq!(handshake_error(&mut dialer(&pool), &mut slow), SessionError::Handshake(want));

        let mut wrong_peer = session_of(identity(3, None), Role::Acceptor, None, &pool);
        let want = HandshakeError::UnexpectedPeer { expected: TmId([2; 16]), found: TmId([3; 16]) };
        assert_eq!(handshake_error(&mut dialer(&pool), &mut wrong_peer), SessionError::Handshake(want));
    }

    #[test]
    fn nothing_of_a_job_before_hello_and_auth() {
        let pool = BufferPool::new(1);
        let mut b = acceptor(&pool);
        let open = Message::JobOpen { deployment: D, fingerprint: FINGERPRINT, channels: 1 };
        assert_eq!(
            feed(&mut b, Message::Heartbeat),
            Err(FrameError::MissingHello { kind: FrameKind::Heartbeat }.into())
        );
        let mut a = dialer(&pool);
        let hello = written(&mut a, Instant::now());
        deliver(&hello, &mut b).unwrap();
        assert_eq!(deliver(&hello, &mut b), Err(FrameError::UnexpectedHello.into()));
        assert_eq!(feed(&mut b, open), Err(FrameError::BeforeAuth { kind: FrameKind::JobOpen }.into()));
        assert_eq!(feed(&mut b, Message::Heartbeat), Ok(PeerSignal::None), "heartbeats are fine");
        let to_a = written(&mut b, Instant::now());
        deliver(&to_a, &mut a).unwrap();
        let auth = written(&mut a, Instant::now());
        deliver(&auth, &mut b).unwrap();
        assert!(b.auth_verified);
        assert_eq!(deliver(&auth, &mut b), Err(FrameError::UnexpectedAuth.into()));
        assert_eq!(feed(&mut b, open), Ok(PeerSignal::None));
    }

    /// TaskManager 2's side of job `D` after the handshake with the peer's JOB_OPEN fed:
    /// inbound channels 0 and 1 (exclusive 1), outbound channel 2.
    struct Consumer {
        pool: BufferPool,
        session: PeerSession,
        inbound: Vec<Arc<LocalChannel>>,
        outbound: Arc<LocalChannel>,
    }

    fn consumer() -> Consumer {
        let pool = BufferPool::new(8);
        let (_a, mut session) = established(&pool);
        let session_bell = bell();
        let inbound: Vec<_> = (0..2).map(|_| LocalChannel::new_remote_in(1, session_bell.clone(), bell())).collect();
        let outbound = LocalChannel::new_remote_out(bell(), session_bell.clone());
        let mut spec = JobSpec::new(D, FINGERPRINT, 3, session_bell);
        for (id, ch) in inbound.iter().enumerate() {
            spec.add_inbound(id as u32, ch.clone(), validate_buffer::<Rec>);
        }
        spec.add_outbound(2, outbound.clone());
        session.register_job(spec).unwrap();
        let open = Message::JobOpen { deployment: D, fingerprint: FINGERPRINT, channels: 3 };
        assert_eq!(feed(&mut session, open), Ok(PeerSignal::None));
        Consumer { pool, session, inbound, outbound }
    }

    /// The job refusal `session` reported, if any.
    fn refusal(session: &mut PeerSession) -> Option<FrameError> {
        session.take_job_ends().into_iter().find_map(|e| match e.end {
            JobEnd::Failed(NetError::JobProtocol { error, .. }) => Some(error),
            _ => None,
        })
    }

    /// Feeds `messages` to a fresh consumer; returns the first job refusal.
    fn refused_by_consumer(messages: &[Message<'_>]) -> Option<FrameError> {
        let mut c = consumer();
        for m in messages {
            assert_eq!(feed(&mut c.session, *m), Ok(PeerSignal::None), "{m:?}: a job's error is not the connection's");
        }
        let error = refusal(&mut c.session);
        if error.is_some() {
            let out = messages_after(&mut c.session);
            assert!(out.iter().any(|m| m.starts_with("Error { deployment: 209")), "the peer is told: {out:?}");
        }
        error
    }

    fn messages_after(session: &mut PeerSession) -> Vec<String> {
        messages(session)
    }

    #[test]
    fn channel_and_direction_are_checked_per_job() {
        let pool = BufferPool::new(1);
        let payload = record_buffer(&pool, &[(0, 0)]);
        let buffer =
            |channel| Message::Buffer { deployment: D, channel, seq: 0, backlog: 0, payload: payload.as_slice() };
        assert_eq!(refused_by_consumer(&[buffer(9)]), Some(FrameError::UnknownChannel { channel: 9 }));
        let want = FrameError::WrongDirection { channel: 2, kind: FrameKind::Buffer };
        assert_eq!(refused_by_consumer(&[buffer(2)]), Some(want));
        let request = |channel, initial_credit| Message::PartitionRequest { deployment: D, channel, initial_credit };
        let want = FrameError::WrongDirection { channel: 0, kind: FrameKind::PartitionRequest };
        assert!(want.to_string().contains("not the channel's producer"));
        assert_eq!(refused_by_consumer(&[request(0, 1)]), Some(want));
        let credit = |credit| Message::AddCredit { deployment: D, channel: 2, credit };
        assert_eq!(refused_by_consumer(&[credit(1)]), Some(FrameError::CreditBeforeRequest { channel: 2 }));
        assert_eq!(refused_by_consumer(&[request(2, 2)]), None);
        let want = FrameError::DuplicatePartitionRequest { channel: 2 };
        assert_eq!(refused_by_consumer(&[request(2, 2), request(2, 2)]), Some(want));
        let want = FrameError::CreditOverflow { channel: 2, credit: u32::MAX };
        assert_eq!(refused_by_consumer(&[request(2, 2), credit(u32::MAX)]), Some(want));
        let mut c = consumer();
        feed(&mut c.session, request(2, 2)).unwrap();
        assert_eq!(c.outbound.credit(), 2);
    }

    #[test]
    fn frames_of_a_deployment_need_its_job_open_and_stop_at_its_end() {
        let pool = BufferPool::new(2);
        let (_a, mut b) = established(&pool);
        let request = Message::PartitionRequest { deployment: D, channel: 0, initial_credit: 1 };
        let want = FrameError::JobNotOpened { kind: FrameKind::PartitionRequest, deployment: D };
        assert_eq!(feed(&mut b, request), Err(want.into()));
        let close = Message::JobClose { deployment: D };
        let want = FrameError::JobNotOpened { kind: FrameKind::JobClose, deployment: D };
        assert_eq!(feed(&mut b, close), Err(want.into()));

        let mut c = consumer();
        let open = Message::JobOpen { deployment: D, fingerprint: FINGERPRINT, channels: 3 };
        assert_eq!(feed(&mut c.session, open), Err(FrameError::DuplicateJobOpen { deployment: D }.into()));
        let cancel = Message::Cancel { deployment: D, reason: "stop" };
        assert_eq!(feed(&mut c.session, cancel), Ok(PeerSignal::None));
        let ends = c.session.take_job_ends();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].end, JobEnd::PeerCancelled { reason: "stop".into() });
        let event = Message::Event { deployment: D, channel: 0, seq: 0, event: Event::Watermark(1) };
        assert_eq!(
            feed(&mut c.session, event),
            Err(FrameError::AfterJobEnd { kind: FrameKind::Event, deployment: D }.into())
        );
        let out = messages(&mut c.session);
        assert_eq!(out, ["JobClose { deployment: 209 }"], "the cancel is answered");
        assert_eq!(c.session.jobs(), 0, "both end frames crossed: the deployment is gone");
        assert_eq!(c.pool.in_use(), 0);
    }

    #[test]
    fn an_event_flood_on_an_unread_channel_fails_only_that_job() {
        let mut c = consumer();
        for seq in 0..MAX_QUEUED_ITEMS_PER_CHANNEL {
            let watermark = Message::Event { deployment: D, channel: 0, seq, event: Event::Watermark(seq as i64) };
            assert_eq!(feed(&mut c.session, watermark), Ok(PeerSignal::None));
        }
        assert_eq!(refusal(&mut c.session), None);
        let seq = MAX_QUEUED_ITEMS_PER_CHANNEL;
        let one_more = Message::Event { deployment: D, channel: 0, seq, event: Event::Watermark(-1) };
        assert_eq!(feed(&mut c.session, one_more), Ok(PeerSignal::None));
        let want = FrameError::TooManyEvents { channel: 0, queued: MAX_QUEUED_ITEMS_PER_CHANNEL };
        assert_eq!(refusal(&mut c.session), Some(want));
        assert_eq!(c.inbound[0].queued(), MAX_QUEUED_ITEMS_PER_CHANNEL);
        let late = Message::Event { deployment: D, channel: 0, seq: seq + 1, event: Event::Watermark(-2) };
        assert_eq!(feed(&mut c.session, late), Ok(PeerSignal::None), "frames in flight are dropped");
        assert_eq!(c.inbound[0].queued(), MAX_QUEUED_ITEMS_PER_CHANNEL);
    }

    #[test]
    fn buffers_need_credit_sequence_and_a_valid_payload() {
        let pool = BufferPool::new(1);
        let payload = record_buffer(&pool, &[(0, 0)]);
        let buffer =
            |channel, seq| Message::Buffer { deployment: D, channel, seq, backlog: 3, payload: payload.as_slice() };
        let want = FrameError::OutOfOrder { channel: 0, expected: 0, got: 1 };
        assert_eq!(refused_by_consumer(&[buffer(0, 1)]), Some(want));
        assert_eq!(refused_by_consumer(&[buffer(0, 0), buffer(0, 1)]), Some(FrameError::NoCredit { channel: 0 }));
        let mut c = consumer();
        assert_eq!(feed(&mut c.session, buffer(0, 0)), Ok(PeerSignal::None));
        assert_eq!((c.inbound[0].queued(), c.inbound[0].backlog(), c.inbound[0].credit()), (1, 3, 0));
        assert_eq!(c.pool.in_use(), 1, "the one queued buffer");
        let mut garbage = vec![0u8; 32];
        garbage[0] = 1;
        garbage[16] = 0xff;
        let bad = Message::Buffer { deployment: D, channel: 1, seq: 0, backlog: 0, payload: &garbage };
        assert_eq!(feed(&mut c.session, bad), Ok(PeerSignal::None));
        assert!(matches!(refusal(&mut c.session), Some(FrameError::InvalidBuffer { channel: 1, .. })));
        assert_eq!(c.pool.in_use(), 1, "the refused buffer went back to the pool");
        drop(c);
    }

    #[test]
    fn events_end_and_job_close_are_checked() {
        let mut c = consumer();
        let barrier = Event::CheckpointBarrier { checkpoint_id: 1, timestamp_ms: 0, kind: BarrierKind::Unaligned };
        let event = |channel, seq, event| Message::Event { deployment: D, channel, seq, event };
        assert_eq!(feed(&mut c.session, event(0, 0, Event::Watermark(4))), Ok(PeerSignal::None));
        assert_eq!(feed(&mut c.session, event(0, 1, barrier)), Ok(PeerSignal::None));
        assert!(matches!(c.inbound[0].pop(), Some(ChannelItem::Event(e)) if e == barrier), "priority at the head");
        assert_eq!(feed(&mut c.session, event(0, 2, Event::EndOfPartition)), Ok(PeerSignal::None));
        assert!(c.inbound[0].has_ended());
        let after = event(0, 3, Event::Watermark(5));
        let mut early = consumer();
        feed(&mut early.session, Message::JobClose { deployment: D }).unwrap();
        assert_eq!(refusal(&mut early.session), Some(FrameError::JobClosedEarly { open_channels: 3 }));
        assert_eq!(
            refused_by_consumer(&[event(0, 0, Event::EndOfPartition), after]),
            Some(FrameError::AfterEnd { channel: 0, kind: FrameKind::Event })
        );
        assert_eq!(feed(&mut c.session, event(1, 0, Event::EndOfPartition)), Ok(PeerSignal::None));
        c.outbound.push(ChannelItem::Event(Event::EndOfPartition), false);
        let out = messages(&mut c.session);
        assert!(out.iter().all(|m| !m.starts_with("Event")), "nothing leaves before the peer's request: {out:?}");
        feed(&mut c.session, Message::PartitionRequest { deployment: D, channel: 2, initial_credit: 1 }).unwrap();
        let out = messages(&mut c.session);
        let kinds: Vec<&str> = out.iter().map(|m| m.split([' ', '{']).next().unwrap()).collect();
        assert_eq!(kinds, ["Event", "JobClose"], "{out:?}");
        assert!(c.session.take_job_ends().is_empty(), "finished only once the peer closes too");
        assert_eq!(feed(&mut c.session, Message::JobClose { deployment: D }), Ok(PeerSignal::None));
        assert!(messages(&mut c.session).is_empty());
        let ends = c.session.take_job_ends();
        assert_eq!(ends.iter().map(|e| &e.end).collect::<Vec<_>>(), [&JobEnd::Finished]);
        assert_eq!(ends[0].stats.frames_out, 5, "JOB_OPEN, 2 PARTITION_REQUEST, EVENT, JOB_CLOSE: {:?}", ends[0].stats);
        assert_eq!(c.session.jobs(), 0);
        assert_eq!(c.session.stats().jobs_closed, 1);
    }

    #[test]
    fn a_mismatched_job_open_fails_the_job() {
        let pool = BufferPool::new(1);
        let (_a, mut b) = established(&pool);
        let open = Message::JobOpen { deployment: D, fingerprint: 5, channels: 1 };
        feed(&mut b, open).unwrap();
        let mut spec = JobSpec::new(D, FINGERPRINT, 1, bell());
        spec.add_outbound(0, LocalChannel::new_remote_out(bell(), bell()));
        b.register_job(spec).unwrap();
        let want = FrameError::JobMismatch { field: "job fingerprint", expected: FINGERPRINT, found: 5 };
        assert_eq!(refusal(&mut b), Some(want));
        let out = messages(&mut b);
        assert!(out.iter().any(|m| m.contains("HandshakeMismatch") && m.contains("job fingerprint")), "{out:?}");
    }

    fn outbound_spec(d: u64, channels: u32) -> (JobSpec, Vec<Arc<LocalChannel>>) {
        let bell = bell();
        let mut spec = JobSpec::new(d, FINGERPRINT, channels, bell.clone());
        let chans: Vec<_> =
            (0..channels).map(|_| LocalChannel::new_remote_out(super::tests::bell(), bell.clone())).collect();
        for (id, ch) in chans.iter().enumerate() {
            spec.add_outbound(id as u32, ch.clone());
        }
        (spec, chans)
    }

    #[test]
    fn requests_before_registration_wait_and_are_applied() {
        let pool = BufferPool::new(1);
        let (_a, mut b) = established(&pool);
        feed(&mut b, Message::JobOpen { deployment: D, fingerprint: FINGERPRINT, channels: 2 }).unwrap();
        feed(&mut b, Message::PartitionRequest { deployment: D, channel: 1, initial_credit: 2 }).unwrap();
        feed(&mut b, Message::AddCredit { deployment: D, channel: 1, credit: 3 }).unwrap();
        assert_eq!(b.pending_requests, 1);
        let (spec, chans) = outbound_spec(D, 2);
        b.register_job(spec).unwrap();
        assert_eq!((chans[0].credit(), chans[1].credit()), (0, 5));
        assert_eq!(b.pending_requests, 0);
        assert_eq!(refusal(&mut b), None);

        let (_a, mut b) = established(&pool);
        feed(&mut b, Message::JobOpen { deployment: D, fingerprint: FINGERPRINT, channels: 2 }).unwrap();
        feed(&mut b, Message::PartitionRequest { deployment: D, channel: 7, initial_credit: 2 }).unwrap();
        let out = messages(&mut b);
        assert!(out.iter().any(|m| m.starts_with("Error { deployment: 209, code: Protocol")), "{out:?}");
        let (spec, _) = outbound_spec(D, 2);
        assert_eq!(b.register_job(spec), Err(RegisterError::AlreadyEnded), "refused before it was registered");
    }

    #[test]
    fn early_requests_are_bounded_per_connection() {
        let pool = BufferPool::new(1);
        let (_a, mut b) = established(&pool);
        let jobs = MAX_PENDING_REQUESTS as u64 / 1024;
        for d in 1..=jobs {
            feed(&mut b, Message::JobOpen { deployment: d, fingerprint: FINGERPRINT, channels: 1024 }).unwrap();
            for channel in 0..1024 {
                let request = Message::PartitionRequest { deployment: d, channel, initial_credit: 1 };
                assert_eq!(feed(&mut b, request), Ok(PeerSignal::None));
            }
        }
        let d = jobs + 1;
        feed(&mut b, Message::JobOpen { deployment: d, fingerprint: FINGERPRINT, channels: 1 }).unwrap();
        let one_more = Message::PartitionRequest { deployment: d, channel: 0, initial_credit: 1 };
        assert_eq!(feed(&mut b, one_more), Err(FrameError::TooManyPending { limit: MAX_PENDING_REQUESTS }.into()));
    }

    #[test]
    fn deployments_per_connection_are_bounded() {
        let pool = BufferPool::new(1);
        let (_a, mut b) = established(&pool);
        for d in 1..=MAX_JOBS_PER_CONNECTION as u64 {
            feed(&mut b, Message::JobOpen { deployment: d, fingerprint: FINGERPRINT, channels: 1 }).unwrap();
        }
        let open = Message::JobOpen { deployment: 0xffff, fingerprint: FINGERPRINT, channels: 1 };
        assert_eq!(feed(&mut b, open), Err(FrameError::TooManyJobs { limit: MAX_JOBS_PER_CONNECTION }.into()));
        let (spec, _) = outbound_spec(0xffff, 1);
        assert_eq!(b.register_job(spec), Err(RegisterError::TooManyJobs { limit: MAX_JOBS_PER_CONNECTION }));
    }

    #[test]
    fn a_deployment_opened_by_one_side_only_times_out() {
        let pool = BufferPool::new(1);
        let (_a, mut b) = established(&pool);
        let (spec, _) = outbound_spec(D, 1);
        b.register_job(spec).unwrap();
        feed(&mut b, Message::JobOpen { deployment: D2, fingerprint: FINGERPRINT, channels: 1 }).unwrap();
        let start = Instant::now();
        assert!(!written(&mut b, start).is_empty(), "JOB_OPEN of D");
        assert!(written(&mut b, start + TIMEOUT / 2).is_empty());
        let late = written(&mut b, start + TIMEOUT + Duration::from_millis(1));
        let mut at = 0;
        let mut errors = Vec::new();
        while at < late.len() {
            let (m, used) = crate::wire::decode_frame(&late[at..]).unwrap();
            if let Message::Error { deployment, code, .. } = m {
                errors.push((deployment, code));
            }
            at += used;
        }
        errors.sort_by_key(|(d, code)| (*d, code.code()));
        assert_eq!(errors, [(D, ErrorCode::NotDeployed), (D2, ErrorCode::NotDeployed)]);
        let ends = b.take_job_ends();
        assert_eq!(ends.len(), 1, "only the job registered here is reported: {ends:?}");
        assert!(matches!(&ends[0].end, JobEnd::Failed(NetError::JobNotDeployed { deployment: D, .. })));
        assert!(ends[0].end != JobEnd::Finished);
    }

    #[test]
    fn a_side_that_never_deployed_a_job_ends_it_and_the_opener_is_told() {
        let pool = BufferPool::new(1);
        let (mut a, mut b) = established(&pool);
        let (spec, _) = outbound_spec(D, 1);
        a.register_job(spec).unwrap();
        let open = written(&mut a, Instant::now());
        deliver(&open, &mut b).unwrap();
        let expired = written(&mut b, Instant::now() + TIMEOUT + Duration::from_millis(1));
        assert_eq!(
            deliver(&expired, &mut a),
            Ok(vec![PeerSignal::None]),
            "an end frame of a job only the receiver opened"
        );
        let ends = a.take_job_ends();
        assert!(
            matches!(&ends[..], [JobEnded { end: JobEnd::Failed(NetError::JobNotDeployed { deployment: D, .. }), .. }]),
            "{ends:?}"
        );
        pump(&mut a, &mut b).unwrap();
        assert_eq!((a.jobs(), b.jobs()), (0, 0), "the answer removed the deployment on both sides");
        assert!(b.take_job_ends().is_empty(), "never registered on b: nothing to report there");
    }

    #[test]
    fn registration_checks_the_spec_and_the_connection() {
        let pool = BufferPool::new(1);
        let (_a, mut b) = established(&pool);
        let spec = |d, channels| JobSpec::new(d, FINGERPRINT, channels, bell());
        assert_eq!(b.register_job(spec(0, 1)), Err(RegisterError::ZeroDeployment));
        assert_eq!(b.register_job(spec(D, 1)), Err(RegisterError::NoChannels));
        let mut s = spec(D, 2);
        s.add_outbound(2, LocalChannel::new_remote_out(bell(), bell()));
        assert_eq!(b.register_job(s), Err(RegisterError::ChannelOutOfRange { channel: 2, channels: 2 }));
        let mut s = spec(D, 2);
        s.add_outbound(1, LocalChannel::new_remote_out(bell(), bell()));
        s.add_inbound(1, LocalChannel::new_remote_in(1, bell(), bell()), validate_buffer::<Rec>);
        assert_eq!(b.register_job(s), Err(RegisterError::DuplicateChannel { channel: 1 }));
        let mut s = spec(D, 2);
        s.add_outbound(0, LocalChannel::new(2, bell(), bell()));
        assert_eq!(b.register_job(s), Err(RegisterError::NotRemote { channel: 0 }));
        let mut s = spec(D, 2);
        s.add_inbound(0, LocalChannel::new_remote_in(0, bell(), bell()), validate_buffer::<Rec>);
        assert_eq!(b.register_job(s), Err(RegisterError::NoExclusiveCredit { channel: 0 }));
        b.register_job(outbound_spec(D, 1).0).unwrap();
        assert_eq!(b.register_job(outbound_spec(D, 1).0), Err(RegisterError::AlreadyRegistered));
        b.close_when_idle();
        assert_eq!(b.register_job(outbound_spec(D2, 1).0), Err(RegisterError::Closing));
    }

    #[test]
    fn close_waits_for_the_jobs_and_a_close_with_open_jobs_is_refused() {
        let pool = BufferPool::new(1);
        let (mut a, mut b) = established(&pool);
        feed(&mut b, Message::JobOpen { deployment: D, fingerprint: FINGERPRINT, channels: 1 }).unwrap();
        assert_eq!(feed(&mut b, Message::Close), Err(FrameError::ClosedEarly { open_jobs: 1 }.into()));

        let (spec, _) = outbound_spec(D, 1);
        a.register_job(spec).unwrap();
        a.close_when_idle();
        let out = messages(&mut a);
        assert!(out.iter().any(|m| m.starts_with("JobOpen")) && !out.iter().any(|m| m == "Close"), "{out:?}");
        a.cancel_job(D, "done with it");
        let out = messages(&mut a);
        assert_eq!(out.iter().map(|m| m.split(' ').next().unwrap()).collect::<Vec<_>>(), ["Cancel"], "{out:?}");
        let ack = Message::JobClose { deployment: D };
        assert_eq!(feed(&mut a, ack), Ok(PeerSignal::None), "the peer answers the cancel");
        assert_eq!(messages(&mut a), ["Close"]);
        assert!(a.close_sent());
        assert_eq!(feed(&mut a, Message::Close), Ok(PeerSignal::Closed));
        assert!(a.is_closed());
        assert_eq!(feed(&mut a, Message::Heartbeat), Err(FrameError::AfterClose { kind: FrameKind::Heartbeat }.into()));
    }

    #[test]
    fn a_peer_close_fails_the_jobs_it_never_opened() {
        let pool = BufferPool::new(1);
        let (mut a, mut b) = established(&pool);
        let (spec, _) = outbound_spec(D, 1);
        a.register_job(spec).unwrap();
        b.close_when_idle();
        let to_a = written(&mut b, Instant::now());
        let to_b = written(&mut a, Instant::now());
        assert_eq!(deliver(&to_a, &mut a), Ok(vec![PeerSignal::Closed]));
        let ends = a.take_job_ends();
        assert!(matches!(&ends[..], [JobEnded { end: JobEnd::Failed(NetError::PeerLost { .. }), .. }]), "{ends:?}");
        let close = written(&mut a, Instant::now());
        assert_eq!(deliver(&to_b, &mut b), Ok(vec![PeerSignal::None]), "a JOB_OPEN that crossed the CLOSE is dropped");
        assert_eq!(b.jobs(), 0);
        assert_eq!(deliver(&close, &mut b), Ok(vec![PeerSignal::Closed]));
        assert!(a.is_closed() && b.is_closed());
    }

    #[test]
    fn cancelling_drains_what_the_session_holds_and_the_peer_is_told() {
        let pool = BufferPool::new(4);
        let (mut a, mut b) = established(&pool);
        let (spec, chans) = outbound_spec(D, 1);
        a.register_job(spec).unwrap();
        let producer_side = chans[0].clone();
        let bell_in = bell();
        let inbound = LocalChannel::new_remote_in(2, bell_in.clone(), bell());
        let mut spec = JobSpec::new(D, FINGERPRINT, 1, bell_in);
        spec.add_inbound(0, inbound.clone(), validate_buffer::<Rec>);
        b.register_job(spec).unwrap();
        pump(&mut a, &mut b).unwrap();
        assert_eq!(producer_side.credit(), 2);
        let mut output = OutputChannel::new(producer_side, &CreditConfig::default());
        output.send_buffer(record_buffer(&pool, &[(0, 1)]));
        output.send_buffer(record_buffer(&pool, &[(0, 2)]));
        assert_eq!(pool.in_use(), 2);
        assert!(a.cancel_job(D, "the user cancelled"));
        assert_eq!(pool.in_use(), 0, "the shipped buffers went back to the pool");
        assert!(!a.cancel_job(D, "again"), "cancelled once");
        pump(&mut a, &mut b).unwrap();
        let (ea, eb) = (a.take_job_ends(), b.take_job_ends());
        assert_eq!(ea[0].end, JobEnd::Cancelled { reason: "the user cancelled".into() });
        assert_eq!(eb[0].end, JobEnd::PeerCancelled { reason: "the user cancelled".into() });
        assert_eq!((a.jobs(), b.jobs()), (0, 0));
        assert_eq!(inbound.queued(), 0, "nothing reached the consumer after the cancel");
    }

    #[test]
    fn writer_announces_backlog_and_credit() {
        let pool = BufferPool::new(8);
        let config = CreditConfig { exclusive_per_channel: 1, floating_per_gate: 2, max_backlog_per_channel: 4 };
        let (mut producer, _b) = established(&pool);
        let (spec, chans) = outbound_spec(D, 1);
        producer.register_job(spec).unwrap();
        let mut output = OutputChannel::new(chans[0].clone(), &config);
        feed(&mut producer, Message::JobOpen { deployment: D, fingerprint: FINGERPRINT, channels: 1 }).unwrap();
        output.send_buffer(record_buffer(&pool, &[(0, 0)]));
        output.send_buffer(record_buffer(&pool, &[(0, 1)]));
        assert_eq!(messages(&mut producer).len(), 1, "JOB_OPEN only: no BACKLOG before the request");
        feed(&mut producer, Message::PartitionRequest { deployment: D, channel: 0, initial_credit: 1 }).unwrap();
        output.try_send();
        let mut out = Vec::new();
        producer.poll_outgoing(Instant::now(), &mut out);
        let headers: Vec<_> = out.iter().map(|f| decode_header(f.header()).unwrap()).collect();
        assert_eq!(headers.len(), 1, "the BUFFER carries the new backlog: {headers:?}");
        assert_eq!(
            (headers[0].kind, headers[0].seq, headers[0].arg, headers[0].deployment),
            (FrameKind::Buffer, 0, 1, D)
        );
        out.clear();
        producer.poll_outgoing(Instant::now(), &mut out);
        assert!(out.is_empty(), "an unchanged backlog is not announced again");
        drop(out);
        assert_eq!(pool.in_use(), 1);
    }

    /// Bytes written by one session and not yet read by the other, and the reader's partial
    /// frame.
    #[derive(Default)]
    struct Link {
        wire: std::collections::VecDeque<u8>,
        partial: Vec<u8>,
    }

    fn write_frames(session: &mut PeerSession, link: &mut Link) {
        let mut out = Vec::new();
        session.poll_outgoing(Instant::now(), &mut out);
        for frame in out {
            link.wire.extend(frame.header());
            link.wire.extend(frame.body());
        }
    }

    /// Moves up to `chunk` bytes across and hands every frame completed to `session`.
    fn read_chunk(session: &mut PeerSession, link: &mut Link, chunk: usize) -> Vec<PeerSignal> {
        let n = chunk.min(link.wire.len());
        link.partial.extend(link.wire.drain(..n));
        let mut signals = Vec::new();
        let mut at = 0;
        while link.partial.len() - at >= HEADER_BYTES {
            let header = decode_header(link.partial[at..at + HEADER_BYTES].try_into().unwrap()).unwrap();
            assert!(header.frame_len() <= MAX_FRAME_BYTES);
            if link.partial.len() - at < header.frame_len() {
                break;
            }
            let body = &link.partial[at + HEADER_BYTES..at + header.frame_len()];
            signals.push(session.on_frame(&header, body).unwrap_or_else(|e| panic!("{e}")));
            at += header.frame_len();
        }
        link.partial.drain(..at);
        signals
    }

    #[derive(Debug, Clone)]
    enum Item {
        Buffer(u32),
        Watermark(u32),
    }

    /// xorshift64*, seeded by proptest: the schedule of one run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }
    }

    fn script(buffers: u32, watermark_every: u32) -> Vec<Item> {
        let mut items = Vec::new();
        for seq in 0..buffers {
            if watermark_every > 0 && seq % watermark_every == 0 {
                items.push(Item::Watermark(seq));
            }
            items.push(Item::Buffer(seq));
        }
        items
    }

    /// Per channel (buffers, watermark interval), and after how many buffers the job is
    /// cancelled, if it is.
    type JobPlan = (Vec<(u32, u32)>, Option<u32>);

    /// One job of [`run_exchange`]: its producers on side a, its consumers on side b.
    struct ExchangeJob {
        deployment: u64,
        outputs: Vec<OutputChannel>,
        gate: InputGate,
        scripts: Vec<Vec<Item>>,
        totals: Vec<u32>,
        next_item: Vec<usize>,
        end_queued: Vec<bool>,
        expect: Vec<u32>,
        ended: Vec<bool>,
        cancel_at: Option<u32>,
        cancelled: bool,
    }

    impl ExchangeJob {
        fn done(&self) -> bool {
            self.cancelled || self.ended.iter().all(|e| *e)
        }
    }

    /// Every job's channels (`per_job[j]`: (buffers, watermark interval) per channel) cross one
    /// connection with a random schedule and random chunking; a job with `Some(n)` in
    /// `cancel_at` is cancelled by its producer after n buffers reached the consumer. Checks
    /// order, credit bounds, that the others finish, and every buffer back in its pool.
    fn run_exchange(
        config: CreditConfig,
        per_job: Vec<JobPlan>,
        consumer_percent: u64,
        seed: u64,
    ) -> Result<usize, TestCaseError> {
        let (pool_a, pool_b) = (BufferPool::new(256), BufferPool::new(256));
        let mut a = dialer(&pool_a);
        let mut b = acceptor(&pool_b);
        let mut jobs = Vec::new();
        for (j, (per_channel, cancel_at)) in per_job.iter().enumerate() {
            let deployment = 0x100 + j as u64;
            let n = per_channel.len() as u32;
            let (bell_a, bell_b) = (bell(), bell());
            let mut spec_a = JobSpec::new(deployment, FINGERPRINT, n, bell_a.clone());
            let mut spec_b = JobSpec::new(deployment, FINGERPRINT, n, bell_b.clone());
            let mut outputs = Vec::new();
            let mut inbound = Vec::new();
            for c in 0..n {
                let out = LocalChannel::new_remote_out(bell(), bell_a.clone());
                spec_a.add_outbound(c, out.clone());
                outputs.push(OutputChannel::new(out, &config));
                let inb = LocalChannel::new_remote_in(config.exclusive_per_channel, bell_b.clone(), bell());
                spec_b.add_inbound(c, inb.clone(), validate_buffer::<Rec>);
                inbound.push(inb);
            }
            a.register_job(spec_a).unwrap();
            b.register_job(spec_b).unwrap();
            jobs.push(ExchangeJob {
                deployment,
                outputs,
                gate: InputGate::new(inbound, &config),
                scripts: per_channel.iter().map(|&(k, w)| script(k, w)).collect(),
                totals: per_channel.iter().map(|&(k, _)| k).collect(),
                next_item: vec![0; n as usize],
                end_queued: vec![false; n as usize],
                expect: vec![0; n as usize],
                ended: vec![false; n as usize],
                cancel_at: *cancel_at,
                cancelled: false,
            });
        }
        a.close_when_idle();
        b.close_when_idle();
        let (mut a_to_b, mut b_to_a) = (Link::default(), Link::default());
        let (mut a_closed, mut b_closed) = (false, false);
        let mut rng = Rng(seed | 1);
        let chunk = |rng: &mut Rng| {
            if rng.below(2) == 0 {
                1 + rng.below(64)
            } else {
                1 + rng.below(3 * MAX_FRAME_BYTES as u64)
            }
        };
        let (mut ends_a, mut ends_b) = (Vec::new(), Vec::new());
        let mut steps = 0u32;
        while !(a_closed && b_closed) {
            steps += 1;
            prop_assert!(steps < 400_000, "no progress");
            let job = &mut jobs[rng.below(per_job.len() as u64) as usize];
            if !job.cancelled {
                let c = rng.below(job.outputs.len() as u64) as usize;
                let output = &mut job.outputs[c];
                output.try_send();
                if output.is_available() {
                    match job.scripts[c].get(job.next_item[c]) {
                        Some(Item::Buffer(seq)) => {
                            output.send_buffer(record_buffer(&pool_a, &[(c as u32, *seq)]));
                            job.next_item[c] += 1;
                        }
                        Some(Item::Watermark(w)) => {
                            output.send_event(Event::Watermark(i64::from(*w)));
                            job.next_item[c] += 1;
                        }
                        None if !job.end_queued[c] => {
                            output.send_event(Event::EndOfPartition);
                            job.end_queued[c] = true;
                        }
                        None => {}
                    }
                }
            }
            write_frames(&mut a, &mut a_to_b);
            let len = chunk(&mut rng) as usize;
            b_closed |= read_chunk(&mut b, &mut a_to_b, len).contains(&PeerSignal::Closed);
            write_frames(&mut b, &mut b_to_a);
            let len = chunk(&mut rng) as usize;
            a_closed |= read_chunk(&mut a, &mut b_to_a, len).contains(&PeerSignal::Closed);
            ends_a.extend(a.take_job_ends());
            ends_b.extend(b.take_job_ends());
            if rng.below(100) >= consumer_percent {
                continue;
            }
            let job = &mut jobs[rng.below(per_job.len() as u64) as usize];
            if job.cancelled {
                continue;
            }
            let Some((c, item)) = job.gate.poll_next() else { continue };
            match item {
                ChannelItem::Buffer(buffer) => {
                    let held = job.gate.exclusive() + job.gate.floating_held(c);
                    prop_assert!(
                        job.gate.channel(c).queued_buffers() < held,
                        "channel {}: queued + reading > {}",
                        c,
                        held
                    );
                    prop_assert_eq!(records_of(&buffer), vec![(c as u32, job.expect[c])]);
                    job.expect[c] += 1;
                    drop(buffer);
                    job.gate.release(c);
                    if job.cancel_at.take_if(|n| job.expect.iter().sum::<u32>() >= *n).is_some()
                        && a.cancel_job(job.deployment, "cancelled mid-stream")
                    {
                        job.cancelled = true;
                        job.outputs.clear();
                    }
                }
                ChannelItem::Event(Event::Watermark(w)) => prop_assert_eq!(w, i64::from(job.expect[c])),
                ChannelItem::Event(Event::EndOfPartition) => {
                    prop_assert_eq!(job.expect[c], job.totals[c], "channel {} ended early", c);
                    job.ended[c] = true;
                }
                ChannelItem::Event(other) => prop_assert!(false, "unexpected event {:?}", other),
            }
        }
        ends_a.extend(a.take_job_ends());
        ends_b.extend(b.take_job_ends());
        for job in &mut jobs {
            while !job.cancelled && !job.done() {
                let Some((c, item)) = job.gate.poll_next() else { break };
                match item {
                    ChannelItem::Buffer(buffer) => {
                        prop_assert_eq!(records_of(&buffer), vec![(c as u32, job.expect[c])]);
                        job.expect[c] += 1;
                        drop(buffer);
                        job.gate.release(c);
                    }
                    ChannelItem::Event(Event::EndOfPartition) => job.ended[c] = true,
                    ChannelItem::Event(_) => {}
                }
            }
        }
        for job in &jobs {
            let end_a = ends_a.iter().find(|e| e.deployment == job.deployment).map(|e| e.end.clone());
            let end_b = ends_b.iter().find(|e| e.deployment == job.deployment).map(|e| e.end.clone());
            if job.cancelled {
                prop_assert_eq!(end_a, Some(JobEnd::Cancelled { reason: "cancelled mid-stream".into() }));
                prop_assert_eq!(end_b, Some(JobEnd::PeerCancelled { reason: "cancelled mid-stream".into() }));
            } else {
                prop_assert_eq!(&job.expect, &job.totals, "job {:x}", job.deployment);
                prop_assert_eq!(end_a, Some(JobEnd::Finished));
                prop_assert_eq!(end_b, Some(JobEnd::Finished));
            }
        }
        prop_assert_eq!(ends_a.len(), jobs.len(), "each job reported once: {:?}", ends_a);
        prop_assert!(a_to_b.wire.is_empty() && b_to_a.wire.is_empty());
        let channels: u32 = per_job.iter().map(|(c, _)| c.len() as u32).sum();
        let bound_b = channels * config.exclusive_per_channel + per_job.len() as u32 * config.floating_per_gate;
        prop_assert!(pool_b.stats().peak_in_use <= bound_b, "consumer side held {:?}", pool_b.stats());
        let finished: u64 = ends_a.iter().filter(|e| e.end == JobEnd::Finished).map(|e| e.stats.buffers_out).sum();
        let expected: u32 = jobs.iter().filter(|j| !j.cancelled).flat_map(|j| j.totals.iter()).sum();
        prop_assert_eq!(finished, u64::from(expected), "{:?}", ends_a);
        prop_assert_eq!(b.stats().transfer.buffers_in, a.stats().transfer.buffers_out);
        prop_assert_eq!(a.stats().jobs_opened, per_job.len() as u64);
        let cancelled = jobs.iter().filter(|j| j.cancelled).count();
        drop(jobs);
        prop_assert_eq!((pool_a.in_use(), pool_b.in_use()), (0, 0));
        Ok(cancelled)
    }

    #[test]
    fn a_job_cancelled_mid_stream_leaves_the_other_job_finishing() {
        let config = CreditConfig { exclusive_per_channel: 2, floating_per_gate: 2, max_backlog_per_channel: 2 };
        for seed in 1..=8 {
            let jobs = vec![(vec![(50, 4), (30, 0)], None), (vec![(60, 3), (60, 0)], Some(5))];
            let cancelled = run_exchange(config, jobs, 100, seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(cancelled, 1, "seed {seed}: the second job is cancelled while it runs");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn remote_flow_control_matches_the_in_process_exchange(
            exclusive in 1u32..=3,
            floating in 0u32..=4,
            max_backlog in 1u32..=3,
            per_channel in proptest::collection::vec((0u32..60, 0u32..6), 1..=4),
            consumer_percent in 5u64..=100,
            seed in any::<u64>(),
        ) {
            let config = CreditConfig {
                exclusive_per_channel: exclusive,
                floating_per_gate: floating,
                max_backlog_per_channel: max_backlog,
            };
            prop_assert_eq!(run_exchange(config, vec![(per_channel, None)], consumer_percent, seed)?, 0);
        }

        #[test]
        fn jobs_share_a_connection_and_one_cancelled_leaves_the_others_running(
            exclusive in 1u32..=2,
            floating in 0u32..=3,
            per_job in proptest::collection::vec(
                (proptest::collection::vec((1u32..40, 0u32..6), 1..=3), proptest::option::weighted(0.3, 1u32..20)),
                2..=3,
            ),
            consumer_percent in 20u64..=100,
            seed in any::<u64>(),
        ) {
            let config = CreditConfig { exclusive_per_channel: exclusive, floating_per_gate: floating, max_backlog_per_channel: 2 };
            run_exchange(config, per_job, consumer_percent, seed)?;
        }
    }

    #[test]
    fn an_unaligned_barrier_overtakes_on_both_sides_and_each_copies_its_part() {
        let pool = BufferPool::new(32);
        let (mut a, mut b) = established(&pool);
        let config = CreditConfig { exclusive_per_channel: 2, floating_per_gate: 0, max_backlog_per_channel: 8 };
        let (bell_a, bell_b) = (bell(), bell());
        let out = LocalChannel::new_remote_out(bell(), bell_a.clone());
        let inbound = LocalChannel::new_remote_in(config.exclusive_per_channel, bell_b.clone(), bell());
        let mut spec_a = JobSpec::new(D, FINGERPRINT, 1, bell_a);
        spec_a.add_outbound(0, out.clone());
        let mut spec_b = JobSpec::new(D, FINGERPRINT, 1, bell_b);
        spec_b.add_inbound(0, inbound.clone(), validate_buffer::<Rec>);
        a.register_job(spec_a).unwrap();
        b.register_job(spec_b).unwrap();
        pump(&mut a, &mut b).unwrap();
        assert_eq!(out.credit(), 2);
        let mut output = OutputChannel::new(out.clone(), &config);
        let mut gate = InputGate::new(vec![inbound], &config);
        for seq in 0..6 {
            output.send_buffer(record_buffer(&pool, &[(seq, 0)]));
        }
        // Buffers 0 and 1 cross; the consumer reads 0 and its credit brings buffer 2 into the
        // session's queue on side a, where it is not yet written.
        deliver(&written(&mut a, Instant::now()), &mut b).unwrap();
        let (c, first) = gate.poll_next().unwrap();
        let ChannelItem::Buffer(first) = first else { panic!("a buffer first") };
        assert_eq!(records_of(&first), [(0, 0)]);
        drop(first);
        gate.release(c);
        deliver(&written(&mut b, Instant::now()), &mut a).unwrap();
        output.try_send();
        assert_eq!((out.queued(), output.pending_buffers()), (1, 3));
        let barrier = Event::CheckpointBarrier { checkpoint_id: 5, timestamp_ms: 1, kind: BarrierKind::Unaligned };
        let mut producer_copy = crate::credit::InFlightCopy::default();
        output.send_priority_event(barrier, &mut producer_copy);
        pump(&mut a, &mut b).unwrap();
        let (c, item) = gate.poll_next().unwrap();
        assert!(matches!(item, ChannelItem::Event(e) if e == barrier), "the barrier comes first: {item:?}");
        let mut consumer_copy = crate::credit::InFlightCopy::default();
        gate.copy_overtaken(c, &mut consumer_copy);
        let seqs = |copies: &[Vec<u8>]| -> Vec<u32> {
            copies
                .iter()
                .map(|bytes| {
                    let mut buf = pool.take().unwrap();
                    buf.spare_mut()[..bytes.len()].copy_from_slice(bytes);
                    buf.advance(bytes.len());
                    records_of(&buf.freeze())[0].0
                })
                .collect()
        };
        assert_eq!(seqs(&consumer_copy.buffers), [1], "in the consumer's queue when the barrier arrived");
        assert_eq!(seqs(&producer_copy.buffers), [2, 3, 4, 5], "unwritten by the session or waiting for credit");
        // Every overtaken buffer is still delivered, in order, after the barrier.
        let mut after = Vec::new();
        while after.len() < 5 {
            match gate.poll_next() {
                Some((c, ChannelItem::Buffer(buffer))) => {
                    after.push(records_of(&buffer)[0].0);
                    drop(buffer);
                    gate.release(c);
                }
                Some((_, ChannelItem::Event(e))) => panic!("unexpected {e:?}"),
                None => {
                    pump(&mut a, &mut b).unwrap();
                    output.try_send();
                    pump(&mut a, &mut b).unwrap();
                }
            }
        }
        assert_eq!(after, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_watermark_status_and_latency_marker_cross_in_order() {
        let mut c = consumer();
        let events = [
            Event::WatermarkStatus(WatermarkStatus::Idle),
            Event::LatencyMarker { marked_time_ns: 9, source_subtask: 2 },
        ];
        for (seq, event) in events.into_iter().enumerate() {
            let m = Message::Event { deployment: D, channel: 1, seq: seq as u32, event };
            assert_eq!(feed(&mut c.session, m), Ok(PeerSignal::None));
        }
        for event in events {
            assert!(matches!(c.inbound[1].pop(), Some(ChannelItem::Event(e)) if e == event));
        }
    }
}
