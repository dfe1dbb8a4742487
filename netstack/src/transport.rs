//! The socket side of the connections between TaskManagers: dialing and accepting with
//! bounded retries and timeouts ([`dial`], [`accept`]), and [`serve`], which drives a
//! [`Connection`] (a sans-IO [`crate::remote::PeerSession`] shared with the code that adds and
//! removes jobs) over a glommio [`TcpStream`] until both sides have sent CLOSE or the
//! connection fails. The connection outlives its jobs: jobs come and go while it runs.
//! [`run_session`] is the one-shot form: a connection for the jobs registered on a session
//! before it starts, closed once they have ended.
//!
//! A connection runs as two futures on one glommio executor, sharing the session in a
//! `RefCell` that is never borrowed across an await:
//! - the *reader* reads a 40-byte header, lets the session admit it, and reads a BUFFER body
//!   straight into offset 0 of a pool buffer (no user-space copy; the kernel copies once),
//!   any other body into a 1 KiB scratch array, and a frame of a job that has ended here into
//!   a discard buffer;
//! - the *writer* waits on the connection's doorbell and every job's (rung by producers,
//!   consumers granting credit, the reader, and jobs being added or ended) or the heartbeat
//!   deadline, takes the session's frames and writes them with `sendmsg(MSG_DONTWAIT)` over
//!   `[header, body, …]` iovecs, at most [`MAX_BATCH_FRAMES`] frames or [`MAX_BATCH_BYTES`]
//!   bytes per call, falling back to glommio's readiness-driven write on `EAGAIN` or a partial
//!   write. A BUFFER's pool buffer is dropped only once the kernel has taken all of its bytes.
//!
//! Failure detection is bounded: nothing received for `heartbeat_timeout` is
//! [`NetError::PeerTimeout`] (an idle side sends HEARTBEAT every `heartbeat_interval`, so a
//! live peer is never silent that long), a writer stuck on unacknowledged bytes fails through
//! `TCP_USER_TIMEOUT` and the write timeout, EOF or a reset before CLOSE is
//! [`NetError::PeerLost`], a refused handshake is answered with ERROR(3) and returned as
//! [`NetError::HandshakeFailed`], and a frame that breaks the connection's protocol is answered
//! with ERROR(1) and returned as [`NetError::Protocol`]. A failed connection fails every job
//! on it with its error and drops the session, which returns every buffer it and its channels'
//! frames hold to the pool. A job's own failure (cancellation, a refused frame of it) ends that
//! job alone.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::io::{split, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;

use crate::connection::Connection;
use crate::doorbell::{Doorbell, Wait};
use crate::error::NetError;
use crate::handshake::HandshakeError;
use crate::remote::{
    Admission, ConnectionStats, JobEnd, OutFrame, PeerSession, PeerSignal, SessionError, SessionStats,
};
use crate::wire::{decode_header, ErrorCode, FrameError, Message, CONNECTION_DEPLOYMENT, HEADER_BYTES, MAX_TEXT_BYTES};

/// Frames written by one `sendmsg` call at most.
pub const MAX_BATCH_FRAMES: usize = 64;
/// Bytes written by one `sendmsg` call at most (a single frame may exceed it only if it is
/// the first of its batch, which a 32 800-byte maximum frame never does).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Timing and retry settings of the connections between TaskManagers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// A side that has sent nothing for this long sends HEARTBEAT.
    pub heartbeat_interval: Duration,
    /// A peer from which nothing arrived for this long is declared dead; also the socket's
    /// `TCP_USER_TIMEOUT` and write timeout.
    pub heartbeat_timeout: Duration,
    /// Connection attempts before [`dial`] gives up.
    pub connect_attempts: u32,
    /// Wait after the first failed attempt; it doubles after each further failure ...
    pub connect_backoff_initial: Duration,
    /// ... up to this.
    pub connect_backoff_max: Duration,
    /// How long [`accept`] waits for the peer that should dial this side.
    pub accept_timeout: Duration,
    /// How long a job opened on a connection by one side waits for the other side to open it
    /// too (to deploy it) before it fails as not deployed.
    pub open_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            connect_attempts: 10,
            connect_backoff_initial: Duration::from_millis(20),
            connect_backoff_max: Duration::from_secs(1),
            accept_timeout: Duration::from_secs(15),
            open_timeout: Duration::from_secs(15),
        }
    }
}

impl NetConfig {
    /// Checks that every setting is usable: positive durations, a heartbeat timeout longer than
    /// the interval (so a live idle peer is never declared dead) and within `TCP_USER_TIMEOUT`'s
    /// millisecond range, at least one attempt and an initial backoff not above its maximum.
    pub fn validate(&self) -> Result<(), NetError> {
        let invalid = |setting, reason: String| Err(NetError::InvalidConfig { setting, reason });
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("connect_backoff_initial", self.connect_backoff_initial),
            ("accept_timeout", self.accept_timeout),
            ("open_timeout", self.open_timeout),
        ];
        if let Some((setting, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return invalid(setting, "must be greater than zero".into());
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            let reason = format!(
                "{:?} must be longer than heartbeat_interval ({:?}), or an idle live peer is declared dead",
                self.heartbeat_timeout, self.heartbeat_interval
            );
            return invalid("heartbeat_timeout", reason);
        }
        if u32::try_from(self.heartbeat_timeout.as_millis()).is_err() {
            return invalid("heartbeat_timeout", format!("{:?} exceeds u32::MAX milliseconds", self.heartbeat_timeout));
        }
        if self.connect_attempts == 0 {
            return invalid("connect_attempts", "must be at least 1".into());
        }
        if self.connect_backoff_max < self.connect_backoff_initial {
            let reason = format!(
                "{:?} is below connect_backoff_initial ({:?})",
                self.connect_backoff_max, self.connect_backoff_initial
            );
            return invalid("connect_backoff_max", reason);
        }
        Ok(())
    }

    /// The heartbeat interval as HELLO carries it.
    pub fn heartbeat_ms(&self) -> u32 {
        u32::try_from(self.heartbeat_interval.as_millis()).unwrap_or(u32::MAX)
    }

    /// The wait after failed attempt `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.connect_backoff_initial.saturating_mul(factor).min(self.connect_backoff_max)
    }
}

/// Connects to `peer` (named `peer_name` in errors) with up to `config.connect_attempts`
/// attempts, each given at most `config.heartbeat_timeout` (a peer that drops SYNs would
/// otherwise hold an attempt for the kernel's two minutes of SYN retries), and exponential
/// backoff between them, and configures the socket ([`configure_stream`]).
pub async fn dial(addr: SocketAddr, peer_name: &str, config: &NetConfig) -> Result<TcpStream, NetError> {
    config.validate()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last_error = match TcpStream::connect_timeout(addr, config.heartbeat_timeout).await {
            Ok(stream) => {
                configure_stream(&stream, peer_name, config)?;
                return Ok(stream);
            }
            Err(e) => e.to_string(),
        };
        if attempt >= config.connect_attempts {
            return Err(NetError::ConnectFailed { peer: peer_name.to_string(), attempts: attempt, last_error });
        }
        tracing::debug!(peer = peer_name, attempt, error = %last_error, "connect failed, retrying");
        Timer::new(config.backoff(attempt)).await;
    }
}

/// Accepts the connection of `peer_name` on `listener`, waiting at most
/// `config.accept_timeout`, and configures the socket ([`configure_stream`]).
pub async fn accept(listener: &TcpListener, peer_name: &str, config: &NetConfig) -> Result<TcpStream, NetError> {
    config.validate()?;
    let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
        Timer::new(config.accept_timeout).await;
        None
    })
    .await;
    match accepted {
        None => Err(NetError::PeerNeverConnected { peer: peer_name.to_string(), waited: config.accept_timeout }),
        Some(Err(e)) => Err(socket_error(peer_name, "accept", e.into())),
        Some(Ok(stream)) => {
            configure_stream(&stream, peer_name, config)?;
            Ok(stream)
        }
    }
}

/// Sets `TCP_NODELAY` (credits, events and flushed buffers must not wait for Nagle),
/// `TCP_USER_TIMEOUT` = heartbeat timeout (unacknowledged bytes fail the socket after it) and
/// the same read and write timeouts.
pub fn configure_stream(stream: &TcpStream, peer_name: &str, config: &NetConfig) -> Result<(), NetError> {
    config.validate()?;
    stream.set_nodelay(true).map_err(|e| socket_error(peer_name, "setting TCP_NODELAY", e.into()))?;
    let timeout_ms = u32::try_from(config.heartbeat_timeout.as_millis()).expect("validated: fits u32");
    set_user_timeout(stream.as_raw_fd(), timeout_ms)
        .map_err(|e| socket_error(peer_name, "setting TCP_USER_TIMEOUT", e))?;
    stream
        .set_read_timeout(Some(config.heartbeat_timeout))
        .map_err(|e| socket_error(peer_name, "setting the read timeout", e.into()))?;
    stream
        .set_write_timeout(Some(config.heartbeat_timeout))
        .map_err(|e| socket_error(peer_name, "setting the write timeout", e.into()))?;
    Ok(())
}

fn set_user_timeout(fd: RawFd, timeout_ms: u32) -> io::Result<()> {
    let value: libc::c_uint = timeout_ms;
    // SAFETY: `fd` is the open socket of a live TcpStream; `value` is a c_uint on the stack that
    // outlives the call, and its size is passed as the option length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&value as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socket_error(peer: &str, operation: &'static str, e: io::Error) -> NetError {
    NetError::Socket { peer: peer.to_string(), operation, detail: e.to_string() }
}

/// Why this process ends the jobs of a [`run_session`] connection early, as reported by its
/// `interrupt` poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupt {
    /// The jobs were cancelled here: the peer gets CANCEL(reason) for each.
    Cancel { reason: String },
    /// The jobs failed here: the peer gets ERROR(2, message) for each.
    Fail { message: String },
}

/// How a [`run_session`] connection whose jobs did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Every job finished and both sides sent CLOSE.
    Closed,
    /// This side ended the jobs after an [`Interrupt`].
    Interrupted(Interrupt),
    /// The peer cancelled a job (it sent CANCEL).
    PeerCancelled { reason: String },
}

/// The end of a [`run_session`] connection and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOutcome {
    pub end: SessionEnd,
    pub stats: SessionStats,
}

/// State shared by the reader and the writer of one connection (same executor, never borrowed
/// across an await).
struct Shared<'a> {
    conn: &'a Connection,
    last_rx: Cell<Instant>,
    last_tx: Cell<Instant>,
    /// The writer stopped in the middle of a frame: nothing more may be written.
    mid_frame: Cell<bool>,
}

impl Shared<'_> {
    fn session(&self) -> std::cell::RefMut<'_, PeerSession> {
        self.conn.inner().session.borrow_mut()
    }

    fn peer(&self) -> String {
        self.conn.peer_name()
    }

    fn io_error(&self, e: io::Error, reading: bool) -> NetError {
        let peer = self.peer();
        match e.kind() {
            io::ErrorKind::TimedOut if reading => {
                NetError::PeerTimeout { peer, silent_for: self.last_rx.get().elapsed() }
            }
            io::ErrorKind::TimedOut => NetError::PeerTimeout { peer, silent_for: self.last_tx.get().elapsed() },
            _ => NetError::PeerLost { peer, detail: e.to_string() },
        }
    }

    fn lost(&self, detail: &str) -> NetError {
        NetError::PeerLost { peer: self.peer(), detail: detail.to_string() }
    }

    /// The error for a frame the decoder or the session refused: before the handshake is
    /// through, the handshake failed; after, the peer broke the protocol.
    fn refused(&self, error: SessionError) -> NetError {
        let established = self.conn.inner().session.borrow().is_established();
        let peer = self.peer();
        match (error, established) {
            (SessionError::Handshake(reason), _) => NetError::HandshakeFailed { peer, reason },
            (SessionError::Protocol(FrameError::UnsupportedVersion { found, supported }), _) => {
                NetError::HandshakeFailed { peer, reason: HandshakeError::UnsupportedVersion { found, supported } }
            }
            (SessionError::Protocol(error), false) => {
                NetError::HandshakeFailed { peer, reason: HandshakeError::Malformed(error) }
            }
            (SessionError::Protocol(error), true) => NetError::Protocol { peer, error },
        }
    }
}

/// Drives `conn` over `stream` until both sides have sent CLOSE and the peer has shut its
/// write side, or until the connection fails; the peer is named in errors as the session's
/// `peer_name`. Jobs may be registered on `conn`, cancelled and failed while it runs, from
/// other tasks of this executor. On failure every job on the connection ends with the
/// returned error; a protocol or handshake error is first answered with ERROR (1 or 3), and
/// the side keeps reading for at most [`FINAL_FRAME_LINGER`] so the peer gets it. Returns the
/// connection's counters. The socket options of [`configure_stream`] are (re)applied from
/// `config`.
pub async fn serve(stream: TcpStream, conn: &Connection, config: &NetConfig) -> Result<ConnectionStats, NetError> {
    drive(stream, conn, config, &|| None).await.map(|_| conn.stats())
}

/// A one-shot connection for the jobs registered on `session` before it starts (typically
/// one): it closes once they have all ended. `bell` wakes the writer (ring it to make
/// `interrupt` be polled at once; the writer also polls it at least every
/// `heartbeat_interval`); `Some` from `interrupt` cancels or fails every job, once. Returns
/// the first job failure if one failed (its root cause, even if the connection then failed
/// too), else the connection's failure, else how it ended and its counters.
pub async fn run_session(
    stream: TcpStream,
    mut session: PeerSession,
    bell: Arc<Doorbell>,
    config: &NetConfig,
    peer_name: String,
    interrupt: impl Fn() -> Option<Interrupt>,
) -> Result<SessionOutcome, NetError> {
    session.set_peer_name(peer_name);
    session.close_when_idle();
    let conn = Connection::with_bell(session, bell);
    let result = drive(stream, &conn, config, &interrupt).await;
    let ends = conn.take_unclaimed();
    if let Some(error) = ends.iter().find_map(|e| match &e.end {
        JobEnd::Failed(error) => Some(error.clone()),
        _ => None,
    }) {
        return Err(error);
    }
    let interrupted = result?;
    let peer_cancelled = ends.iter().find_map(|e| match &e.end {
        JobEnd::PeerCancelled { reason } => Some(reason.clone()),
        _ => None,
    });
    let end = match (interrupted, peer_cancelled) {
        (Some(interrupt), _) => SessionEnd::Interrupted(interrupt),
        (None, Some(reason)) => SessionEnd::PeerCancelled { reason },
        (None, None) => SessionEnd::Closed,
    };
    Ok(SessionOutcome { end, stats: conn.stats().transfer })
}

/// Runs the reader and the writer of `conn` to the end of the connection; returns the
/// interrupt the writer applied, if any.
async fn drive(
    stream: TcpStream,
    conn: &Connection,
    config: &NetConfig,
    interrupt: &dyn Fn() -> Option<Interrupt>,
) -> Result<Option<Interrupt>, NetError> {
    if let Err(e) = configure_stream(&stream, &conn.peer_name(), config) {
        conn.finish(Some(&e));
        return Err(e);
    }
    let fd = stream.as_raw_fd();
    let (mut reader, mut writer) = split(stream);
    let now = Instant::now();
    let shared = Shared { conn, last_rx: Cell::new(now), last_tx: Cell::new(now), mid_frame: Cell::new(false) };
    let result = futures_lite::future::try_zip(
        read_loop(&shared, &mut reader),
        write_loop(&shared, &mut writer, fd, config, interrupt),
    )
    .await;
    conn.inner().bell.clear_waker();
    match result {
        Ok(((), interrupted)) => {
            conn.finish(None);
            Ok(interrupted)
        }
        Err(error) => {
            let last_word = match &error {
                NetError::Protocol { error: frame_error, .. } => Some((ErrorCode::Protocol, frame_error.to_string())),
                NetError::HandshakeFailed { reason, .. } => Some((ErrorCode::HandshakeMismatch, reason.to_string())),
                _ => None,
            };
            conn.finish(Some(&error));
            if let Some((code, text)) = last_word {
                if !shared.mid_frame.get() && send_error_now(fd, code, &text) {
                    drain_until_eof(&mut reader).await;
                }
            }
            Err(error)
        }
    }
}

/// How long a side that sent its last frame (ERROR) and shut its write side keeps reading, so
/// that closing with unread bytes does not reset the connection and destroy that frame in the
/// peer's receive queue before the peer has read it.
pub const FINAL_FRAME_LINGER: Duration = Duration::from_millis(500);

/// Reads and discards until the peer closes, at most [`FINAL_FRAME_LINGER`].
async fn drain_until_eof(reader: &mut ReadHalf<TcpStream>) {
    let mut scratch = [0u8; 4096];
    let drain = async { while let Ok(1..) = reader.read(&mut scratch).await {} };
    futures_lite::future::or(drain, async {
        Timer::new(FINAL_FRAME_LINGER).await;
    })
    .await;
}

/// Best effort: one non-blocking send of a connection-level ERROR(`code`, `text`), then shuts
/// the write side. Returns whether the whole frame was sent.
fn send_error_now(fd: RawFd, code: ErrorCode, text: &str) -> bool {
    let message = Message::Error { deployment: CONNECTION_DEPLOYMENT, code, message: crate::wire::truncate_text(text) };
    let mut bytes = Vec::with_capacity(HEADER_BYTES + MAX_TEXT_BYTES);
    if message.encode_into(&mut bytes).is_err() {
        return false;
    }
    // SAFETY: `fd` is the connection's socket, still open (both halves of the stream are alive
    // in the caller); `bytes` outlives the call and its length is passed with its pointer.
    let sent = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    // SAFETY: `fd` is the connection's open socket (see above); shutdown takes no memory.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    sent == bytes.len() as isize
}

/// Reads until `buf` is full or EOF; returns the bytes read.
async fn read_full(shared: &Shared<'_>, reader: &mut ReadHalf<TcpStream>, buf: &mut [u8]) -> Result<usize, NetError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await.map_err(|e| shared.io_error(e, true))?;
        if n == 0 {
            break;
        }
        shared.last_rx.set(Instant::now());
        filled += n;
    }
    Ok(filled)
}

/// Reads and drops `len` body bytes of a frame of a job that has ended here.
async fn discard(shared: &Shared<'_>, reader: &mut ReadHalf<TcpStream>, mut len: usize) -> Result<(), NetError> {
    let mut scratch = [0u8; 4096];
    while len > 0 {
        let chunk = len.min(scratch.len());
        if read_full(shared, reader, &mut scratch[..chunk]).await? < chunk {
            return Err(shared.lost("connection closed in the middle of a frame"));
        }
        len -= chunk;
    }
    Ok(())
}

async fn read_loop(shared: &Shared<'_>, reader: &mut ReadHalf<TcpStream>) -> Result<(), NetError> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    let mut scratch = [0u8; MAX_TEXT_BYTES];
    let mut close_received = false;
    loop {
        let n = read_full(shared, reader, &mut header_bytes).await?;
        if n == 0 {
            if close_received {
                shared.conn.inner().bell.ring();
                return Ok(());
            }
            return Err(shared.lost("connection closed before CLOSE"));
        }
        if n < HEADER_BYTES {
            return Err(shared.lost("connection closed in the middle of a frame header"));
        }
        let header = decode_header(&header_bytes).map_err(|e| shared.refused(e.into()))?;
        let admitted = shared.session().on_header(&header);
        let admission = admitted.map_err(|e| shared.refused(e))?;
        // A BUFFER needs no answer (its consumer returns the credit); anything else may.
        let answer = !matches!(admission, Admission::Buffer(_));
        let signal = match admission {
            Admission::Buffer(ticket) => {
                let len = ticket.body_len();
                let taken = shared.session().pool().take();
                match taken {
                    Ok(mut buffer) => {
                        if read_full(shared, reader, &mut buffer.whole_mut()[..len]).await? < len {
                            return Err(shared.lost("connection closed in the middle of a BUFFER frame"));
                        }
                        buffer.set_len(len);
                        shared.session().on_buffer(ticket, buffer);
                    }
                    Err(error) => {
                        shared.session().on_buffer_unavailable(ticket, error);
                        discard(shared, reader, len).await?;
                    }
                }
                PeerSignal::None
            }
            Admission::Body(ticket) => {
                let len = header.body_len as usize;
                let body = scratch.get_mut(..len).expect("the header check bounds every non-BUFFER body by 1 KiB");
                if read_full(shared, reader, body).await? < len {
                    return Err(shared.lost("connection closed in the middle of a frame"));
                }
                let signal = shared.session().on_body(ticket, body);
                signal.map_err(|e| shared.refused(e))?
            }
            Admission::Discard { body_len } => {
                discard(shared, reader, body_len).await?;
                PeerSignal::None
            }
        };
        if shared.conn.deliver() || answer {
            shared.conn.inner().bell.ring();
        }
        match signal {
            PeerSignal::None => {}
            PeerSignal::Closed => close_received = true,
            PeerSignal::Failed { code, message } => {
                return Err(NetError::PeerRefused { peer: shared.peer(), code, message });
            }
        }
    }
}

/// Waits until any of `bells` rings.
struct AnyBell<'a> {
    waits: Vec<Wait<'a>>,
}

impl std::future::Future for AnyBell<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut ready = false;
        for wait in &mut self.waits {
            ready |= std::pin::Pin::new(wait).poll(cx).is_ready();
        }
        if ready {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

async fn write_loop(
    shared: &Shared<'_>,
    writer: &mut WriteHalf<TcpStream>,
    fd: RawFd,
    config: &NetConfig,
    interrupt: &dyn Fn() -> Option<Interrupt>,
) -> Result<Option<Interrupt>, NetError> {
    let mut frames: Vec<OutFrame> = Vec::new();
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(2 * MAX_BATCH_FRAMES);
    let mut bells: Vec<Arc<Doorbell>> = Vec::new();
    let mut interrupted = None;
    loop {
        if interrupted.is_none() {
            if let Some(i) = interrupt() {
                match &i {
                    Interrupt::Cancel { reason } => shared.session().cancel_all(reason),
                    Interrupt::Fail { message } => shared.session().fail_all_here(message),
                }
                interrupted = Some(i);
            }
        }
        let more = shared.session().poll_outgoing(Instant::now(), &mut frames);
        shared.conn.deliver();
        if !frames.is_empty() {
            write_frames(shared, writer, fd, &mut frames, &mut iovecs).await?;
        }
        if shared.session().close_sent() {
            writer.close().await.map_err(|e| shared.io_error(e, false))?;
            return Ok(interrupted);
        }
        if more {
            futures_lite::future::yield_now().await;
            continue;
        }
        let idle = shared.last_tx.get().elapsed();
        if idle >= config.heartbeat_interval {
            write_control(shared, writer, Message::Heartbeat).await?;
            continue;
        }
        let rest = config.heartbeat_interval - idle;
        bells.clear();
        bells.push(shared.conn.inner().bell.clone());
        shared.session().job_bells(&mut bells);
        bells.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let any = AnyBell { waits: bells.iter().map(|b| b.wait()).collect() };
        futures_lite::future::or(any, async {
            Timer::new(rest).await;
        })
        .await;
    }
}

async fn write_control(
    shared: &Shared<'_>,
    writer: &mut WriteHalf<TcpStream>,
    message: Message<'_>,
) -> Result<(), NetError> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + MAX_TEXT_BYTES);
    message.encode_into(&mut bytes).expect("the transport builds only valid control frames");
    shared.mid_frame.set(true);
    writer.write_all(&bytes).await.map_err(|e| shared.io_error(e, false))?;
    shared.mid_frame.set(false);
    shared.last_tx.set(Instant::now());
    Ok(())
}

/// Writes every frame of `frames` in batches and empties it, dropping each frame (and its pool
/// buffer) once the kernel has taken all of its bytes.
async fn write_frames(
    shared: &Shared<'_>,
    writer: &mut WriteHalf<TcpStream>,
    fd: RawFd,
    frames: &mut Vec<OutFrame>,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<(), NetError> {
    while !frames.is_empty() {
        let batch = batch_len(frames);
        let sent = send_batch(fd, &frames[..batch], iovecs).map_err(|e| shared.io_error(e, false))?;
        if sent > 0 {
            shared.last_tx.set(Instant::now());
        }
        let (done, offset) = split_sent(&frames[..batch], sent);
        frames.drain(..done);
        if done == batch {
            continue;
        }
        shared.mid_frame.set(true);
        let frame = &frames[0];
        let header = frame.header();
        if offset < HEADER_BYTES {
            writer.write_all(&header[offset..]).await.map_err(|e| shared.io_error(e, false))?;
        }
        let body_offset = offset.saturating_sub(HEADER_BYTES);
        writer.write_all(&frame.body()[body_offset..]).await.map_err(|e| shared.io_error(e, false))?;
        shared.mid_frame.set(false);
        shared.last_tx.set(Instant::now());
        frames.remove(0);
    }
    Ok(())
}

/// Frames of the next batch: at most [`MAX_BATCH_FRAMES`] and [`MAX_BATCH_BYTES`], at least one.
fn batch_len(frames: &[OutFrame]) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for frame in frames.iter().take(MAX_BATCH_FRAMES) {
        if n > 0 && bytes + frame.len() > MAX_BATCH_BYTES {
            break;
        }
        bytes += frame.len();
        n += 1;
    }
    n
}

/// Given that the first `sent` bytes of `frames` were written: the frames written whole, and
/// how far into the next one the write got.
fn split_sent(frames: &[OutFrame], mut sent: usize) -> (usize, usize) {
    for (i, frame) in frames.iter().enumerate() {
        if sent < frame.len() {
            return (i, sent);
        }
        sent -= frame.len();
    }
    (frames.len(), 0)
}

/// One non-blocking `sendmsg` of the frames' headers and bodies; `Ok(0)` if the socket buffer
/// is full.
fn send_batch(fd: RawFd, frames: &[OutFrame], iovecs: &mut Vec<libc::iovec>) -> io::Result<usize> {
    iovecs.clear();
    for frame in frames {
        let header = frame.header();
        iovecs.push(libc::iovec { iov_base: header.as_ptr() as *mut libc::c_void, iov_len: header.len() });
        let body = frame.body();
        if !body.is_empty() {
            iovecs.push(libc::iovec { iov_base: body.as_ptr() as *mut libc::c_void, iov_len: body.len() });
        }
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovecs.as_mut_ptr();
    msg.msg_iovlen = iovecs.len() as _;
    // SAFETY: `fd` is the session's open socket. Every iovec points into `frames` (headers held
    // inline in the OutFrames, bodies in their pool buffers or inline arrays), which the caller
    // borrows immutably for the whole call, so the memory outlives this synchronous syscall;
    // the kernel only reads it. `iovecs` and `msg` live on until the call returns.
    let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if rc >= 0 {
        return Ok(rc as usize);
    }
    let error = io::Error::last_os_error();
    match error.kind() {
        io::ErrorKind::WouldBlock => Ok(0),
        io::ErrorKind::Interrupted => Ok(0),
        _ => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::BufferPool;

    fn frames(bodies: &[usize]) -> (BufferPool, Vec<OutFrame>) {
        let pool = BufferPool::new(bodies.len() as u32);
        let frames = bodies
            .iter()
            .map(|&len| match len {
                0 => OutFrame::control(&Message::Heartbeat).unwrap(),
                len => {
                    let mut buffer = pool.take().unwrap();
                    buffer.set_len(len);
                    OutFrame::Buffer { header: [0; HEADER_BYTES], buffer: buffer.freeze() }
                }
            })
            .collect();
        (pool, frames)
    }

    #[test]
    fn a_partial_write_is_split_at_the_right_frame() {
        let (_pool, frames) = frames(&[0, 100, 0]);
        assert_eq!(split_sent(&frames, 0), (0, 0));
        assert_eq!(split_sent(&frames, 39), (0, 39));
        assert_eq!(split_sent(&frames, 40), (1, 0));
        assert_eq!(split_sent(&frames, 40 + 30), (1, 30), "inside the second header");
        assert_eq!(split_sent(&frames, 40 + 140 - 1), (1, 139), "inside the second body");
        assert_eq!(split_sent(&frames, 40 + 140 + 39), (2, 39));
        assert_eq!(split_sent(&frames, 40 + 140 + 40), (3, 0));
    }

    #[test]
    fn batches_are_bounded_by_frames_and_bytes() {
        let (_pool, many) = frames(&[0; 100]);
        assert_eq!(batch_len(&many), MAX_BATCH_FRAMES);
        let (_pool, big) = frames(&[crate::BUFFER_SIZE; 40]);
        let per_batch = MAX_BATCH_BYTES / (HEADER_BYTES + crate::BUFFER_SIZE);
        assert_eq!(batch_len(&big), per_batch);
        assert!(per_batch * (HEADER_BYTES + crate::BUFFER_SIZE) <= MAX_BATCH_BYTES);
        assert_eq!(batch_len(&big[..1]), 1);
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let config = NetConfig::default();
        let waits: Vec<u64> = (1..=8).map(|a| config.backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(config.backoff(u32::MAX), config.connect_backoff_max);
    }
}
