//! The remote end of a connection between two TaskManagers, with no I/O: a [`PeerSession`]
//! owns the remote ends of every channel that crosses one connection and turns frames into
//! channel operations and channel state into frames. The transport (a task that reads and
//! writes the socket) drives it; the fuzz target ([`crate::wire::fuzz_one`]) and the tests drive
//! it from byte slices.
//!
//! - *Outbound* channels have their producer in this process and their consumer on the peer
//!   ([`LocalChannel::new_remote_out`]). The session is their consumer: it pops what the
//!   producer's `OutputChannel` shipped (only with credit, so the wire never carries a buffer
//!   without credit) and writes BUFFER / EVENT frames, plus BACKLOG when the producer's backlog
//!   changed and no BUFFER carried it. PARTITION_REQUEST and ADD_CREDIT from the peer grant
//!   credit to them, exactly as a local consumer does.
//! - *Inbound* channels have their consumer here and their producer on the peer
//!   ([`LocalChannel::new_remote_in`]). The session is their producer: a BUFFER is admitted
//!   against the channel's credit, received at offset 0 of a pool buffer, checked by the
//!   channel's [`BufferValidator`] and pushed with the sender's backlog; EVENT frames are pushed
//!   in place (priority events at the head). What the consumer's `InputGate` grants is
//!   announced with ADD_CREDIT (`granted_total` minus what was announced), the exclusive credit
//!   with the first PARTITION_REQUEST.
//!
//! Everything a peer sends is checked against the session state before its body is read:
//! HELLO first and once, with the expected TaskManager and job fingerprint; a known channel of
//! the right direction; BUFFER and EVENT in sequence and before EndOfPartition; a BUFFER only
//! with credit; one PARTITION_REQUEST per channel; CLOSE only once every channel has ended.
//! A refused frame is a [`FrameError`]; the session must then be dropped, which returns every
//! buffer it or its channels hold to the pool.
//!
//! Bounds: a writer round takes at most [`MAX_ITEMS_PER_CHANNEL_PER_ROUND`] items per outbound
//! channel; the receive side holds no buffer of its own (each is pushed or dropped at once), so
//! the buffers of a connection are those its channels' credit allows.

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use crate::buffer::{Buffer, BufferBuilder};
use crate::credit::{ChannelItem, LocalChannel};
use crate::error::NetError;
use crate::event::Event;
use crate::pool::BufferPool;
use crate::record::BufferValidator;
use crate::wire::{decode_body, EncodedFrame, FrameError, FrameHeader, FrameKind, Hello, Message, HEADER_BYTES};

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

/// What this side expects of the peer's HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    pub tm: u32,
    pub job_fingerprint: u64,
    pub tm_count: u32,
    pub channels: u32,
}

/// Why a frame could not be received: the peer broke the protocol, or (a bug of this process's
/// reservation) the pool had no buffer for a credited BUFFER.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error(transparent)]
    Protocol(#[from] FrameError),
    #[error(transparent)]
    Pool(#[from] NetError),
}

/// What a received frame means for the connection as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSignal {
    /// Nothing beyond the channel operations already done.
    None,
    /// The peer's job was cancelled (CANCEL).
    Cancelled { reason: String },
    /// The peer failed or refused this side (ERROR).
    Failed { code: crate::wire::ErrorCode, message: String },
    /// Every channel has ended and the peer closes the connection (CLOSE).
    Closed,
}

/// A frame leaving the session, ready for a vectored write.
#[derive(Debug)]
pub enum OutFrame {
    /// Any frame but BUFFER: the body is inline or empty.
    Control(EncodedFrame<'static>),
    /// A BUFFER frame: the header and the buffer whose written part is the body. Dropping it
    /// once written returns the buffer to the pool.
    Buffer { header: [u8; HEADER_BYTES], buffer: Buffer },
}

impl OutFrame {
    pub fn header(&self) -> &[u8; HEADER_BYTES] {
        match self {
            OutFrame::Control(frame) => frame.header(),
            OutFrame::Buffer { header, .. } => header,
        }
    }

    pub fn body(&self) -> &[u8] {
        match self {
            OutFrame::Control(frame) => frame.body(),
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

/// Counters of one connection, for the job result.
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

/// Permission to receive one BUFFER, given by [`PeerSession::on_header`] after its header
/// passed every session check (channel, direction, sequence, credit). The body must go to
/// [`PeerSession::on_buffer`].
#[derive(Debug)]
#[must_use = "an admitted BUFFER took credit and a sequence number; hand its body to on_buffer"]
pub struct BufferTicket {
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
}

/// The sans-IO state of one connection to a peer TaskManager.
#[derive(Debug)]
pub struct PeerSession {
    local: Hello,
    peer: PeerIdentity,
    pool: BufferPool,
    outbound: Vec<Outbound>,
    inbound: Vec<Inbound>,
    routes: HashMap<u32, Route>,
    hello_sent: bool,
    hello_received: bool,
    close_sent: bool,
    close_received: bool,
    next_outbound: usize,
    stats: SessionStats,
}

impl PeerSession {
    /// A session that introduces itself with `local` and accepts a peer matching `peer`.
    /// `pool` supplies the buffers received BUFFER frames are read into, by the transport or by
    /// [`PeerSession::on_frame`].
    pub fn new(local: Hello, peer: PeerIdentity, pool: BufferPool) -> Self {
        Self {
            local,
            peer,
            pool,
            outbound: Vec::new(),
            inbound: Vec::new(),
            routes: HashMap::new(),
            hello_sent: false,
            hello_received: false,
            close_sent: false,
            close_received: false,
            next_outbound: 0,
            stats: SessionStats::default(),
        }
    }

    fn add_route(&mut self, id: u32, route: Route, channel: &LocalChannel) {
        assert!(channel.is_remote(), "channel {id} crosses the connection but was built as a local channel");
        assert!(id < self.local.channels, "channel {id} is outside the plan's {} channels", self.local.channels);
        let previous = self.routes.insert(id, route);
        assert!(previous.is_none(), "channel {id} added to the session twice");
    }

    /// Adds a channel whose producer is here and whose consumer is on the peer (built with
    /// [`LocalChannel::new_remote_out`]); `id` is its index in the job's plan.
    pub fn add_outbound(&mut self, id: u32, channel: Arc<LocalChannel>) {
        self.add_route(id, Route::Out(self.outbound.len()), &channel);
        self.outbound.push(Outbound {
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

    /// Adds a channel whose consumer is here and whose producer is on the peer (built with
    /// [`LocalChannel::new_remote_in`]); every buffer received for it must pass `validator`.
    pub fn add_inbound(&mut self, id: u32, channel: Arc<LocalChannel>, validator: BufferValidator) {
        assert!(channel.initial_credit() >= 1, "inbound channel {id} needs at least one exclusive credit");
        self.add_route(id, Route::In(self.inbound.len()), &channel);
        self.inbound.push(Inbound {
            id,
            channel,
            validator,
            next_seq: 0,
            requested: false,
            announced: 0,
            end_received: false,
        });
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Channels that have not ended: outbound ones whose EndOfPartition was not written yet,
    /// inbound ones whose EndOfPartition has not arrived.
    pub fn open_channels(&self) -> u32 {
        let out = self.outbound.iter().filter(|o| !o.end_sent).count();
        let inb = self.inbound.iter().filter(|i| !i.end_received).count();
        (out + inb) as u32
    }

    /// The pool received BUFFER bodies are read into.
    pub(crate) fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Whether this side has written CLOSE (every channel has ended).
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Whether both sides have sent CLOSE: the connection may be shut down.
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.close_sent && self.close_received
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

    /// Checks a data frame for an inbound channel (not ended, in sequence) and takes its
    /// sequence number.
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

    /// Checks a decoded header against the session state before its body is read. For BUFFER
    /// this takes the channel's credit and sequence number: the body goes to
    /// [`PeerSession::on_buffer`], every other body to [`PeerSession::on_body`].
    pub fn on_header(&mut self, header: &FrameHeader) -> Result<Admission, FrameError> {
        if self.close_received {
            return Err(FrameError::AfterClose { kind: header.kind });
        }
        match (header.kind, self.hello_received) {
            (FrameKind::Hello, true) => return Err(FrameError::UnexpectedHello),
            (FrameKind::Hello, false) => {}
            (kind, false) => return Err(FrameError::MissingHello { kind }),
            _ => {}
        }
        match header.kind {
            FrameKind::Buffer => {
                let inbound = self.admit_data(header)?;
                return Ok(Admission::Buffer(BufferTicket { inbound, backlog: header.arg, body_len: header.body_len }));
            }
            FrameKind::Event | FrameKind::Backlog => {
                self.admit_data(header)?;
            }
            FrameKind::PartitionRequest => {
                let o = self.outbound_of(header)?;
                if self.outbound[o].requested {
                    return Err(FrameError::DuplicatePartitionRequest { channel: header.channel });
                }
            }
            FrameKind::AddCredit => {
                let o = self.outbound_of(header)?;
                if !self.outbound[o].requested {
                    return Err(FrameError::CreditBeforeRequest { channel: header.channel });
                }
            }
            FrameKind::Close => {
                let open_channels = self.open_channels();
                if open_channels > 0 {
                    return Err(FrameError::ClosedEarly { open_channels });
                }
            }
            FrameKind::Hello | FrameKind::Heartbeat | FrameKind::Cancel | FrameKind::Error => {}
        }
        Ok(Admission::Body(BodyTicket { header: *header }))
    }

    /// Receives an admitted BUFFER whose body was read to offset 0 of `body` (its length set
    /// to the body length): validates it and pushes it into its channel with the sender's
    /// backlog. On error the buffer goes back to the pool.
    pub fn on_buffer(&mut self, ticket: BufferTicket, body: BufferBuilder) -> Result<(), FrameError> {
        let ch = &self.inbound[ticket.inbound];
        assert_eq!(body.len(), ticket.body_len(), "BUFFER body read short of its declared length");
        (ch.validator)(body.as_slice()).map_err(|error| FrameError::InvalidBuffer { channel: ch.id, error })?;
        self.stats.frames_in += 1;
        self.stats.buffers_in += 1;
        self.stats.bytes_in += body.len() as u64;
        ch.channel.set_backlog(ticket.backlog);
        ch.channel.push(ChannelItem::Buffer(body.freeze()), false);
        Ok(())
    }

    /// Applies an admitted frame other than BUFFER, given its body.
    pub fn on_body(&mut self, ticket: BodyTicket, body: &[u8]) -> Result<PeerSignal, FrameError> {
        let header = ticket.header;
        let message = decode_body(&header, body)?;
        self.stats.frames_in += 1;
        match message {
            Message::Hello(hello) => {
                self.check_hello(&hello)?;
                self.hello_received = true;
            }
            Message::PartitionRequest { initial_credit: credit, .. } | Message::AddCredit { credit, .. } => {
                let o = self.outbound_of(&header)?;
                let ch = &mut self.outbound[o];
                if ch.channel.credit().checked_add(credit).is_none() {
                    return Err(FrameError::CreditOverflow { channel: ch.id, credit });
                }
                ch.requested = true;
                ch.peer_granted += u64::from(credit);
                ch.channel.grant(credit);
            }
            Message::Backlog { backlog, .. } => {
                let i = self.inbound_of(&header)?;
                self.inbound[i].channel.announce_backlog(backlog);
            }
            Message::Event { event, .. } => {
                let i = self.inbound_of(&header)?;
                let ch = &mut self.inbound[i];
                if event == Event::EndOfPartition {
                    ch.end_received = true;
                }
                ch.channel.push(ChannelItem::Event(event), event.is_priority());
            }
            Message::Heartbeat => {}
            Message::Cancel { reason } => return Ok(PeerSignal::Cancelled { reason: reason.to_string() }),
            Message::Close => {
                self.close_received = true;
                return Ok(PeerSignal::Closed);
            }
            Message::Error { code, message } => return Ok(PeerSignal::Failed { code, message: message.to_string() }),
            Message::Buffer { .. } => unreachable!("BUFFER frames are admitted with a BufferTicket"),
        }
        Ok(PeerSignal::None)
    }

    fn check_hello(&self, hello: &Hello) -> Result<(), FrameError> {
        let checks = [
            ("TaskManager index", u64::from(self.peer.tm), u64::from(hello.sender_tm)),
            ("job fingerprint", self.peer.job_fingerprint, hello.job_fingerprint),
            ("TaskManager count", u64::from(self.peer.tm_count), u64::from(hello.tm_count)),
            ("channel count", u64::from(self.peer.channels), u64::from(hello.channels)),
            // Each side declares the other dead after its own timeout of silence, which it
            // derives from the same interval; a peer that beats less often would be declared
            // dead while alive.
            ("heartbeat interval (ms)", u64::from(self.local.heartbeat_ms), u64::from(hello.heartbeat_ms)),
        ];
        match checks.into_iter().find(|(_, expected, found)| expected != found) {
            Some((field, expected, found)) => Err(FrameError::HandshakeMismatch { field, expected, found }),
            None => Ok(()),
        }
    }

    /// Receives one whole frame from a slice (tests, fuzzing): the header checks, then for
    /// BUFFER a copy of the body into a pool buffer at offset 0, as a socket read would do.
    pub fn on_frame(&mut self, header: &FrameHeader, body: &[u8]) -> Result<PeerSignal, SessionError> {
        match self.on_header(header)? {
            Admission::Buffer(ticket) => {
                let payload = body.get(..ticket.body_len()).ok_or(FrameError::LengthPastEnd {
                    len: header.frame_len(),
                    available: HEADER_BYTES + body.len(),
                })?;
                let mut buf = self.pool.take()?;
                buf.whole_mut()[..payload.len()].copy_from_slice(payload);
                buf.set_len(payload.len());
                self.on_buffer(ticket, buf)?;
                Ok(PeerSignal::None)
            }
            Admission::Body(ticket) => Ok(self.on_body(ticket, body)?),
        }
    }

    fn emit(&mut self, out: &mut Vec<OutFrame>, message: Message<'static>) {
        let frame = message.encode().expect("the session only builds frames its peer accepts");
        self.stats.frames_out += 1;
        self.stats.bytes_out += frame.len() as u64;
        out.push(OutFrame::Control(frame));
    }

    /// Appends the frames this side should write now, in this order: HELLO (first call);
    /// once the peer's HELLO is in, PARTITION_REQUEST for each inbound channel, ADD_CREDIT for
    /// credit granted since the last announcement, one round over the outbound channels
    /// (BUFFER/EVENT in queue order, at most [`MAX_ITEMS_PER_CHANNEL_PER_ROUND`] each, then
    /// BACKLOG if the backlog changed and no BUFFER carried it), and CLOSE once every channel
    /// has ended. Returns whether an outbound channel may hold more items than this round took,
    /// so the caller polls again without waiting for its bell.
    pub fn poll_outgoing(&mut self, out: &mut Vec<OutFrame>) -> bool {
        if !self.hello_sent {
            self.hello_sent = true;
            self.emit(out, Message::Hello(self.local));
        }
        if !self.hello_received || self.close_sent {
            return false;
        }
        self.announce_credit(out);
        let more = self.write_outbound_round(out);
        if self.open_channels() == 0 {
            self.close_sent = true;
            self.emit(out, Message::Close);
        }
        more
    }

    fn announce_credit(&mut self, out: &mut Vec<OutFrame>) {
        for i in 0..self.inbound.len() {
            let ch = &mut self.inbound[i];
            let message = if !ch.requested {
                ch.requested = true;
                ch.announced = u64::from(ch.channel.initial_credit());
                Message::PartitionRequest { channel: ch.id, initial_credit: ch.channel.initial_credit() }
            } else {
                let delta = ch.channel.granted_total() - ch.announced;
                if delta == 0 || ch.end_received {
                    continue;
                }
                let credit = u32::try_from(delta).unwrap_or(u32::MAX);
                ch.announced += u64::from(credit);
                Message::AddCredit { channel: ch.id, credit }
            };
            self.stats.credit_announcements += 1;
            self.emit(out, message);
        }
    }

    fn write_outbound_round(&mut self, out: &mut Vec<OutFrame>) -> bool {
        let n = self.outbound.len();
        let mut more = false;
        for k in 0..n {
            let o = (self.next_outbound + k) % n;
            more |= self.write_outbound(o, out);
        }
        if n > 0 {
            self.next_outbound = (self.next_outbound + 1) % n;
        }
        more
    }

    fn write_outbound(&mut self, o: usize, out: &mut Vec<OutFrame>) -> bool {
        let mut backlog_sent = None;
        for _ in 0..MAX_ITEMS_PER_CHANNEL_PER_ROUND {
            let ch = &mut self.outbound[o];
            if ch.end_sent {
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
                    let message = Message::Buffer { channel: ch.id, seq, backlog, payload: buffer.as_slice() };
                    let header = *message.encode().expect("a shipped buffer is a valid BUFFER body").header();
                    ch.announced_backlog = backlog;
                    backlog_sent = Some(backlog);
                    self.stats.frames_out += 1;
                    self.stats.buffers_out += 1;
                    self.stats.bytes_out += (HEADER_BYTES + buffer.len()) as u64;
                    out.push(OutFrame::Buffer { header, buffer });
                }
                ChannelItem::Event(event) => {
                    ch.end_sent |= event == Event::EndOfPartition;
                    let id = ch.id;
                    self.emit(out, Message::Event { channel: id, seq, event });
                }
            }
        }
        let ch = &mut self.outbound[o];
        if ch.end_sent {
            return false;
        }
        let backlog = ch.channel.backlog();
        if backlog != ch.announced_backlog && backlog_sent != Some(backlog) {
            ch.announced_backlog = backlog;
            let id = ch.id;
            self.emit(out, Message::Backlog { channel: id, backlog });
        }
        self.outbound[o].channel.queued() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credit::{CreditConfig, InputGate, OutputChannel};
    use crate::doorbell::Doorbell;
    use crate::event::{BarrierKind, WatermarkStatus};
    use crate::record::{deserialize, validate_buffer, RecordIter, RecordWriter, Written};
    use crate::wire::{decode_header, MAX_FRAME_BYTES};
    use proptest::prelude::*;

    const FINGERPRINT: u64 = 0x0123_4567_89ab_cdef;
    type Rec = (u32, u32);

    fn hello(tm: u32, channels: u32) -> Hello {
        Hello { sender_tm: tm, job_fingerprint: FINGERPRINT, tm_count: 2, pid: 7, heartbeat_ms: 1000, channels }
    }

    fn identity(tm: u32, channels: u32) -> PeerIdentity {
        PeerIdentity { tm, job_fingerprint: FINGERPRINT, tm_count: 2, channels }
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

    fn proto(error: FrameError) -> Result<PeerSignal, SessionError> {
        Err(SessionError::Protocol(error))
    }

    /// A consumer-side session (TM 1) with inbound channels 0 and 1 (exclusive 1) and outbound
    /// channel 2, after the peer's HELLO.
    struct Consumer {
        pool: BufferPool,
        session: PeerSession,
        inbound: Vec<Arc<LocalChannel>>,
        outbound: Arc<LocalChannel>,
    }

    fn consumer() -> Consumer {
        let pool = BufferPool::new(8);
        let mut session = PeerSession::new(hello(1, 3), identity(0, 3), pool.clone());
        let session_bell = bell();
        let inbound: Vec<_> = (0..2).map(|_| LocalChannel::new_remote_in(1, session_bell.clone(), bell())).collect();
        for (id, ch) in inbound.iter().enumerate() {
            session.add_inbound(id as u32, ch.clone(), validate_buffer::<Rec>);
        }
        let outbound = LocalChannel::new_remote_out(bell(), session_bell);
        session.add_outbound(2, outbound.clone());
        assert_eq!(feed(&mut session, Message::Hello(hello(0, 3))), Ok(PeerSignal::None));
        Consumer { pool, session, inbound, outbound }
    }

    #[test]
    fn handshake_is_checked() {
        let pool = BufferPool::new(1);
        let mut s = PeerSession::new(hello(1, 3), identity(0, 3), pool.clone());
        assert_eq!(feed(&mut s, Message::Heartbeat), proto(FrameError::MissingHello { kind: FrameKind::Heartbeat }));
        let wrong = Hello { job_fingerprint: 5, ..hello(0, 3) };
        let want = FrameError::HandshakeMismatch { field: "job fingerprint", expected: FINGERPRINT, found: 5 };
        assert_eq!(feed(&mut s, Message::Hello(wrong)), proto(want));
        let slow = Hello { heartbeat_ms: 30_000, ..hello(0, 3) };
        let want = FrameError::HandshakeMismatch { field: "heartbeat interval (ms)", expected: 1000, found: 30_000 };
        assert_eq!(feed(&mut s, Message::Hello(slow)), proto(want));
        assert_eq!(feed(&mut s, Message::Hello(hello(0, 3))), Ok(PeerSignal::None));
        assert_eq!(feed(&mut s, Message::Hello(hello(0, 3))), proto(FrameError::UnexpectedHello));
        let mut out = Vec::new();
        s.poll_outgoing(&mut out);
        assert_eq!(out[0].header()[5], FrameKind::Hello.id());
    }

    #[test]
    fn channel_and_direction_are_checked() {
        let mut c = consumer();
        let payload = record_buffer(&c.pool, &[(0, 0)]);
        let buffer = |channel| Message::Buffer { channel, seq: 0, backlog: 0, payload: payload.as_slice() };
        assert_eq!(feed(&mut c.session, buffer(9)), proto(FrameError::UnknownChannel { channel: 9 }));
        let want = FrameError::WrongDirection { channel: 2, kind: FrameKind::Buffer };
        assert_eq!(feed(&mut c.session, buffer(2)), proto(want));
        let want = FrameError::WrongDirection { channel: 0, kind: FrameKind::PartitionRequest };
        assert!(want.to_string().contains("not the channel's producer"));
        assert_eq!(feed(&mut c.session, Message::PartitionRequest { channel: 0, initial_credit: 1 }), proto(want));
        assert!(FrameError::NoCredit { channel: 0 }.to_string().contains("without credit"));
        let want = FrameError::CreditBeforeRequest { channel: 2 };
        assert_eq!(feed(&mut c.session, Message::AddCredit { channel: 2, credit: 1 }), proto(want));
        assert_eq!(
            feed(&mut c.session, Message::PartitionRequest { channel: 2, initial_credit: 2 }),
            Ok(PeerSignal::None)
        );
        assert_eq!(c.outbound.credit(), 2);
        let want = FrameError::DuplicatePartitionRequest { channel: 2 };
        assert_eq!(feed(&mut c.session, Message::PartitionRequest { channel: 2, initial_credit: 2 }), proto(want));
        let want = FrameError::CreditOverflow { channel: 2, credit: u32::MAX };
        assert_eq!(feed(&mut c.session, Message::AddCredit { channel: 2, credit: u32::MAX }), proto(want));
    }

    #[test]
    fn an_event_flood_on_an_unread_channel_is_refused() {
        let mut c = consumer();
        for seq in 0..MAX_QUEUED_ITEMS_PER_CHANNEL {
            let watermark = Message::Event { channel: 0, seq, event: Event::Watermark(seq as i64) };
            assert_eq!(feed(&mut c.session, watermark), Ok(PeerSignal::None));
        }
        let one_more = Message::Event { channel: 0, seq: MAX_QUEUED_ITEMS_PER_CHANNEL, event: Event::Watermark(-1) };
        assert_eq!(
            feed(&mut c.session, one_more),
            proto(FrameError::TooManyEvents { channel: 0, queued: MAX_QUEUED_ITEMS_PER_CHANNEL })
        );
        assert_eq!(c.inbound[0].queued(), MAX_QUEUED_ITEMS_PER_CHANNEL);
    }

    #[test]
    fn buffers_need_credit_sequence_and_a_valid_payload() {
        let mut c = consumer();
        let payload = record_buffer(&c.pool, &[(0, 0)]);
        let buffer = |seq| Message::Buffer { channel: 0, seq, backlog: 3, payload: payload.as_slice() };
        assert_eq!(feed(&mut c.session, buffer(1)), proto(FrameError::OutOfOrder { channel: 0, expected: 0, got: 1 }));
        assert_eq!(feed(&mut c.session, buffer(0)), Ok(PeerSignal::None));
        assert_eq!((c.inbound[0].queued(), c.inbound[0].backlog(), c.inbound[0].credit()), (1, 3, 0));
        assert_eq!(feed(&mut c.session, buffer(1)), proto(FrameError::NoCredit { channel: 0 }));
        assert_eq!(c.pool.in_use(), 2, "the payload and the one queued buffer");
        let mut garbage = vec![0u8; 32];
        garbage[0] = 1;
        garbage[16] = 0xff;
        let bad = Message::Buffer { channel: 1, seq: 0, backlog: 0, payload: &garbage };
        match feed(&mut c.session, bad) {
            Err(SessionError::Protocol(FrameError::InvalidBuffer { channel: 1, .. })) => {}
            other => panic!("expected InvalidBuffer, got {other:?}"),
        }
        assert_eq!(c.pool.in_use(), 2, "the refused buffer went back to the pool");
        drop(payload);
        drop(c);
    }

    #[test]
    fn events_end_and_close_are_checked() {
        let mut c = consumer();
        let barrier = Event::CheckpointBarrier { checkpoint_id: 1, timestamp_ms: 0, kind: BarrierKind::Unaligned };
        let event = |channel, seq, event| Message::Event { channel, seq, event };
        assert_eq!(feed(&mut c.session, event(0, 0, Event::Watermark(4))), Ok(PeerSignal::None));
        assert_eq!(feed(&mut c.session, event(0, 1, barrier)), Ok(PeerSignal::None));
        assert!(matches!(c.inbound[0].pop(), Some(ChannelItem::Event(e)) if e == barrier), "priority at the head");
        assert_eq!(feed(&mut c.session, Message::Close), proto(FrameError::ClosedEarly { open_channels: 3 }));
        assert_eq!(feed(&mut c.session, event(0, 2, Event::EndOfPartition)), Ok(PeerSignal::None));
        assert!(c.inbound[0].has_ended());
        let want = FrameError::AfterEnd { channel: 0, kind: FrameKind::Event };
        assert_eq!(feed(&mut c.session, event(0, 3, Event::Watermark(5))), proto(want));
        let want = FrameError::AfterEnd { channel: 0, kind: FrameKind::Backlog };
        assert_eq!(feed(&mut c.session, Message::Backlog { channel: 0, backlog: 1 }), proto(want));
        assert_eq!(feed(&mut c.session, event(1, 0, Event::EndOfPartition)), Ok(PeerSignal::None));
        c.outbound.push(ChannelItem::Event(Event::EndOfPartition), false);
        let mut out = Vec::new();
        c.session.poll_outgoing(&mut out);
        let kinds: Vec<u8> = out.iter().map(|f| f.header()[5]).collect();
        let ids = |ks: &[FrameKind]| ks.iter().map(|k| k.id()).collect::<Vec<_>>();
        let want = [
            FrameKind::Hello,
            FrameKind::PartitionRequest,
            FrameKind::PartitionRequest,
            FrameKind::Event,
            FrameKind::Close,
        ];
        assert_eq!(kinds, ids(&want));
        assert_eq!(feed(&mut c.session, Message::Close), Ok(PeerSignal::Closed));
        assert!(c.session.is_closed());
        assert_eq!(
            feed(&mut c.session, Message::Heartbeat),
            proto(FrameError::AfterClose { kind: FrameKind::Heartbeat })
        );
    }

    #[test]
    fn writer_announces_backlog_and_credit() {
        let pool = BufferPool::new(8);
        let config = CreditConfig { exclusive_per_channel: 1, floating_per_gate: 2, max_backlog_per_channel: 4 };
        let mut producer = PeerSession::new(hello(0, 1), identity(1, 1), pool.clone());
        let ch = LocalChannel::new_remote_out(bell(), bell());
        producer.add_outbound(0, ch.clone());
        let mut output = OutputChannel::new(ch.clone(), &config);
        feed(&mut producer, Message::Hello(hello(1, 1))).unwrap();
        output.send_buffer(record_buffer(&pool, &[(0, 0)]));
        output.send_buffer(record_buffer(&pool, &[(0, 1)]));
        let mut out = Vec::new();
        producer.poll_outgoing(&mut out);
        let last = decode_header(out.last().unwrap().header()).unwrap();
        assert_eq!((last.kind, last.arg), (FrameKind::Backlog, 2), "credit 0, backlog 2: announced");
        out.clear();
        producer.poll_outgoing(&mut out);
        assert!(out.is_empty(), "an unchanged backlog is not announced again");
        feed(&mut producer, Message::PartitionRequest { channel: 0, initial_credit: 1 }).unwrap();
        output.try_send();
        producer.poll_outgoing(&mut out);
        let headers: Vec<_> = out.iter().map(|f| decode_header(f.header()).unwrap()).collect();
        assert_eq!(headers.len(), 1, "the BUFFER carries the new backlog: {headers:?}");
        assert_eq!((headers[0].kind, headers[0].seq, headers[0].arg), (FrameKind::Buffer, 0, 1));
        drop(out);
        assert_eq!(pool.in_use(), 1);
    }

    /// Bytes written by one session and not yet read by the other, and the reader's partial
    /// frame.
    #[derive(Default)]
    struct Link {
        wire: std::collections::VecDeque<u8>,
        partial: Vec<u8>,
        /// Per channel: BUFFER frames that crossed, and credit announced the other way.
        buffers: Vec<u64>,
    }

    fn write_frames(session: &mut PeerSession, link: &mut Link, credit_sent: &mut [u64]) {
        let mut out = Vec::new();
        session.poll_outgoing(&mut out);
        for frame in out {
            let header = decode_header(frame.header()).unwrap();
            if matches!(header.kind, FrameKind::PartitionRequest | FrameKind::AddCredit) {
                credit_sent[header.channel as usize] += u64::from(header.arg);
            }
            link.wire.extend(frame.header());
            link.wire.extend(frame.body());
        }
    }

    /// Moves up to `chunk` bytes across and hands every frame completed to `session`.
    fn read_chunk(session: &mut PeerSession, link: &mut Link, chunk: usize, credit_sent: &[u64]) -> Vec<PeerSignal> {
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
            if header.kind == FrameKind::Buffer {
                let c = header.channel as usize;
                link.buffers[c] += 1;
                assert!(link.buffers[c] <= credit_sent[c], "channel {c}: a buffer crossed without credit");
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

    fn run_exchange(
        config: CreditConfig,
        per_channel: Vec<(u32, u32)>,
        consumer_percent: u64,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let n = per_channel.len();
        let channels = n as u32;
        let (pool_a, pool_b) = (BufferPool::new(64), BufferPool::new(64));
        let mut a = PeerSession::new(hello(0, channels), identity(1, channels), pool_a.clone());
        let mut b = PeerSession::new(hello(1, channels), identity(0, channels), pool_b.clone());
        let mut outputs = Vec::new();
        let mut inbound = Vec::new();
        for c in 0..n {
            let out = LocalChannel::new_remote_out(bell(), bell());
            a.add_outbound(c as u32, out.clone());
            outputs.push(OutputChannel::new(out, &config));
            let inb = LocalChannel::new_remote_in(config.exclusive_per_channel, bell(), bell());
            b.add_inbound(c as u32, inb.clone(), validate_buffer::<Rec>);
            inbound.push(inb);
        }
        let mut gate = InputGate::new(inbound, &config);
        let scripts: Vec<Vec<Item>> = per_channel.iter().map(|&(k, w)| script(k, w)).collect();
        let totals: Vec<u32> = per_channel.iter().map(|&(k, _)| k).collect();
        let mut next_item = vec![0usize; n];
        let mut end_queued = vec![false; n];
        let mut expect = vec![0u32; n];
        let mut ended = vec![false; n];
        let (mut a_to_b, mut b_to_a) = (Link::default(), Link::default());
        a_to_b.buffers = vec![0; n];
        b_to_a.buffers = vec![0; n];
        let mut credit_from_b = vec![0u64; n];
        let mut unused = vec![0u64; n];
        let (mut a_closed, mut b_closed) = (false, false);
        let mut rng = Rng(seed | 1);
        let chunk = |rng: &mut Rng| {
            if rng.below(2) == 0 {
                1 + rng.below(64)
            } else {
                1 + rng.below(3 * MAX_FRAME_BYTES as u64)
            }
        };
        let mut steps = 0u32;
        while !(a_closed && b_closed && ended.iter().all(|e| *e)) {
            steps += 1;
            prop_assert!(steps < 200_000, "no progress: ended {:?}, expect {:?}", ended, expect);
            let c = rng.below(n as u64) as usize;
            let output = &mut outputs[c];
            output.try_send();
            if output.is_available() {
                match scripts[c].get(next_item[c]) {
                    Some(Item::Buffer(seq)) => {
                        output.send_buffer(record_buffer(&pool_a, &[(c as u32, *seq)]));
                        next_item[c] += 1;
                    }
                    Some(Item::Watermark(w)) => {
                        output.send_event(Event::Watermark(i64::from(*w)));
                        next_item[c] += 1;
                    }
                    None if !end_queued[c] => {
                        output.send_event(Event::EndOfPartition);
                        end_queued[c] = true;
                    }
                    None => {}
                }
            }
            write_frames(&mut a, &mut a_to_b, &mut unused);
            let len = chunk(&mut rng) as usize;
            b_closed |= read_chunk(&mut b, &mut a_to_b, len, &credit_from_b).contains(&PeerSignal::Closed);
            write_frames(&mut b, &mut b_to_a, &mut credit_from_b);
            let len = chunk(&mut rng) as usize;
            a_closed |= read_chunk(&mut a, &mut b_to_a, len, &unused).contains(&PeerSignal::Closed);
            if rng.below(100) >= consumer_percent {
                continue;
            }
            let Some((c, item)) = gate.poll_next() else { continue };
            match item {
                ChannelItem::Buffer(buffer) => {
                    let held = gate.exclusive() + gate.floating_held(c);
                    prop_assert!(gate.channel(c).queued_buffers() < held, "channel {}: queued + reading > {}", c, held);
                    prop_assert_eq!(records_of(&buffer), vec![(c as u32, expect[c])]);
                    expect[c] += 1;
                    drop(buffer);
                    gate.release(c);
                }
                ChannelItem::Event(Event::Watermark(w)) => prop_assert_eq!(w, i64::from(expect[c])),
                ChannelItem::Event(Event::EndOfPartition) => {
                    prop_assert_eq!(expect[c], totals[c], "channel {} ended early", c);
                    ended[c] = true;
                }
                ChannelItem::Event(other) => prop_assert!(false, "unexpected event {:?}", other),
            }
        }
        prop_assert_eq!(&expect, &totals);
        prop_assert!(a_to_b.wire.is_empty() && b_to_a.wire.is_empty());
        let bound_b = channels * config.exclusive_per_channel + config.floating_per_gate;
        prop_assert!(pool_b.stats().peak_in_use <= bound_b, "consumer side held {:?}", pool_b.stats());
        let bound_a =
            channels * (config.exclusive_per_channel + config.max_backlog_per_channel) + config.floating_per_gate;
        prop_assert!(pool_a.stats().peak_in_use <= bound_a, "producer side held {:?}", pool_a.stats());
        prop_assert_eq!((pool_a.in_use(), pool_b.in_use()), (0, 0));
        prop_assert_eq!(a.stats().buffers_out, u64::from(totals.iter().sum::<u32>()));
        prop_assert_eq!(b.stats().buffers_in, a.stats().buffers_out);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

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
            run_exchange(config, per_channel, consumer_percent, seed)?;
        }
    }

    #[test]
    fn a_watermark_status_and_latency_marker_cross_in_order() {
        let mut c = consumer();
        let events = [
            Event::WatermarkStatus(WatermarkStatus::Idle),
            Event::LatencyMarker { marked_time_ns: 9, source_subtask: 2 },
        ];
        for (seq, event) in events.into_iter().enumerate() {
            assert_eq!(
                feed(&mut c.session, Message::Event { channel: 1, seq: seq as u32, event }),
                Ok(PeerSignal::None)
            );
        }
        for event in events {
            assert!(matches!(c.inbound[1].pop(), Some(ChannelItem::Event(e)) if e == event));
        }
    }
}
