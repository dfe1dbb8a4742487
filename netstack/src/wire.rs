//! The wire protocol between TaskManager processes, version 1: how buffers, credit, events and
//! connection control travel over one TCP connection per pair of TaskManagers. This module doc
//! is the normative specification; the codec below implements it with no I/O, so the transport
//! (reading and writing sockets), the fuzz target and the tests share one decoder.
//!
//! # Frames
//!
//! A connection carries frames back to back, with no padding between them. A frame is a
//! 32-byte header followed by `body_len` body bytes. All integers are little-endian, like the
//! record layout and rkyv (`little_endian` feature); a big-endian host needs a new version, not
//! a byte swap.
//!
//! | offset | size | field      | rule |
//! |-------:|-----:|------------|------|
//! | 0      | 4    | `magic`    | ASCII `CSNF` (43 53 4E 46), else [`FrameError::BadMagic`] |
//! | 4      | 1    | `version`  | [`VERSION`] (1), else [`FrameError::UnsupportedVersion`] |
//! | 5      | 1    | `kind`     | a [`FrameKind`] id (1..=10), else [`FrameError::UnknownKind`] |
//! | 6      | 2    | `flags`    | EVENT: bit 0 = priority, set exactly for unaligned barriers. Every other bit, and every bit of other kinds, is 0, else [`FrameError::ReservedBits`] |
//! | 8      | 4    | `body_len` | body bytes after the header, checked per kind before any body byte is read |
//! | 12     | 4    | `channel`  | channel index in the job's execution plan, or [`CONNECTION_CHANNEL`] (`0xFFFF_FFFF`) for connection-level kinds; a kind on the wrong side of that line is [`FrameError::BadChannel`] |
//! | 16     | 4    | `seq`      | BUFFER and EVENT: per-channel sequence number in wire order, from 0. Otherwise 0 |
//! | 20     | 4    | `arg`      | per kind (table below) |
//! | 24     | 8    | `arg64`    | per kind (table below) |
//!
//! A field the table marks 0 must be 0 ([`FrameError::ReservedField`]), so every frame has
//! exactly one encoding: decoding and encoding again gives the same bytes.
//!
//! # Messages
//!
//! | id | kind | direction | channel | arg | arg64 | body |
//! |---:|------|-----------|---------|-----|-------|------|
//! | 1 | HELLO | both, first frame | CONN | sender TM index | job fingerprint | 16 B: `tm_count u32, pid u32, heartbeat_ms u32, channels u32` |
//! | 2 | PARTITION_REQUEST | consumer → producer | ch | initial credit (≥ 1) | 0 | none |
//! | 3 | ADD_CREDIT | consumer → producer | ch | credits (≥ 1) | 0 | none |
//! | 4 | BUFFER | producer → consumer | ch | sender backlog after this buffer | 0 | the record buffer, 8..=32768 B |
//! | 5 | BACKLOG | producer → consumer | ch | backlog | 0 | none |
//! | 6 | EVENT | producer → consumer | ch | event code | field a | 8 B: field b |
//! | 7 | HEARTBEAT | both | CONN | 0 | 0 | none |
//! | 8 | CANCEL | both | CONN | 0 | 0 | UTF-8 reason, ≤ 1024 B |
//! | 9 | CLOSE | both | CONN | 0 | 0 | none |
//! | 10 | ERROR | both | CONN | [`ErrorCode`]: 1 protocol, 2 job failed, 3 handshake mismatch | 0 | UTF-8 message, ≤ 1024 B |
//!
//! A kind with a fixed body length is checked exactly ([`FrameError::BadLength`]); a kind with
//! a maximum is checked against it ([`FrameError::Oversized`]). A BUFFER body under 8 bytes is
//! `BadLength`; over [`BUFFER_SIZE`] it is `Oversized`, refused from the header alone, before
//! anything is allocated or read. Credit of 0 is [`FrameError::ZeroCredit`]; an ERROR code
//! outside 1..=3 is [`FrameError::UnknownErrorCode`]; text that is not UTF-8 is
//! [`FrameError::InvalidUtf8`]. The largest frame is [`MAX_FRAME_BYTES`] = 32 + 32768 bytes.
//!
//! # Events (EVENT frames)
//!
//! | code | [`Event`] | a (`arg64`) | b (body, u64) | flags |
//! |---:|---|---|---|---|
//! | 1 | `EndOfPartition` | 0 | 0 | 0 |
//! | 2 | `Watermark(ts)` | ts as i64 | 0 | 0 |
//! | 3 | `WatermarkStatus(s)` | 0 Active, 1 Idle | 0 | 0 |
//! | 4 | `CheckpointBarrier { checkpoint_id, timestamp_ms, kind }` | checkpoint id | timestamp as i64 | bit 0 iff `Unaligned` |
//! | 5 | `LatencyMarker { marked_time_ns, source_subtask }` | marked time (ns) | source subtask (≤ `u32::MAX`) | 0 |
//!
//! An unknown code is [`FrameError::UnknownEvent`]; a field outside its range (a non-zero
//! field that must be 0, a status other than 0/1, a subtask past `u32::MAX`, a priority flag
//! that does not match the event) is [`FrameError::InvalidEvent`].
//!
//! # BUFFER payloads and in-place reading
//!
//! A BUFFER body is exactly the written part of a producer's [`crate::Buffer`], in the record
//! layout of [`crate::record`]: a `u32` record count, a `u32` reserved 0, then per record an
//! 8-byte header at an offset ≡ 8 (mod 16) and the archive at a 16-aligned offset. The receiver
//! reads the 32-byte header, takes a fresh pooled buffer and reads exactly `body_len` bytes to
//! its offset 0. Pool buffers start on a 4 KiB boundary, so every archive is 16-byte aligned in
//! memory and rkyv (`aligned`, `little_endian`, `pointer_width_32`) reads it in place with no
//! fix-up. Offsets in the byte stream therefore never matter, and the stream has no alignment
//! rule. The codec does not look inside the payload: the receiver checks it with
//! [`crate::record::validate_buffer`] (layout and every archive) before it reaches a task.
//!
//! # Versioning
//!
//! Any change to the header or to a body layout bumps [`VERSION`]. A receiver accepts exactly
//! the versions it implements (today only 1) and answers any other with `ERROR(3)`. HELLO
//! carries the job fingerprint, so two builds whose plans differ fail at the handshake instead
//! of exchanging mislabeled channels; the receiver also checks the sender's index, the
//! TaskManager and channel counts, and that both sides beat at the same heartbeat interval.
//!
//! # Reading a stream
//!
//! A reader takes [`HEADER_BYTES`] bytes, checks them with [`decode_header`] (which needs no
//! session state), then reads `body_len` bytes — into a pooled buffer for BUFFER, a small
//! scratch area otherwise — and turns them into a [`Message`] with [`decode_body`].
//! [`decode_frame`] does both on a slice that may hold several frames.

use thiserror::Error;

use crate::buffer::BUFFER_SIZE;
use crate::error::BufferError;
use crate::event::{BarrierKind, Event, WatermarkStatus};
use crate::record::{deserialize, validate_buffer, Data, RecordIter};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"CSNF";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Size of every frame header.
pub const HEADER_BYTES: usize = 32;
/// Channel of connection-level frames (HELLO, HEARTBEAT, CANCEL, CLOSE, ERROR).
pub const CONNECTION_CHANNEL: u32 = u32::MAX;
/// Largest CANCEL reason or ERROR message.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Smallest BUFFER body: the record count and its reserved word.
pub const MIN_BUFFER_BODY_BYTES: usize = 8;
/// Largest frame on the wire: a header and a full buffer.
pub const MAX_FRAME_BYTES: usize = HEADER_BYTES + BUFFER_SIZE;

const HELLO_BODY_BYTES: usize = 16;
const EVENT_BODY_BYTES: usize = 8;
const PRIORITY_FLAG: u16 = 1;

/// Message ids of the `kind` header byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    PartitionRequest = 2,
    AddCredit = 3,
    Buffer = 4,
    Backlog = 5,
    Event = 6,
    Heartbeat = 7,
    Cancel = 8,
    Close = 9,
    Error = 10,
}

impl FrameKind {
    pub const ALL: [FrameKind; 10] = [
        FrameKind::Hello,
        FrameKind::PartitionRequest,
        FrameKind::AddCredit,
        FrameKind::Buffer,
        FrameKind::Backlog,
        FrameKind::Event,
        FrameKind::Heartbeat,
        FrameKind::Cancel,
        FrameKind::Close,
        FrameKind::Error,
    ];

    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.get(usize::from(id).checked_sub(1)?).copied()
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "HELLO",
            FrameKind::PartitionRequest => "PARTITION_REQUEST",
            FrameKind::AddCredit => "ADD_CREDIT",
            FrameKind::Buffer => "BUFFER",
            FrameKind::Backlog => "BACKLOG",
            FrameKind::Event => "EVENT",
            FrameKind::Heartbeat => "HEARTBEAT",
            FrameKind::Cancel => "CANCEL",
            FrameKind::Close => "CLOSE",
            FrameKind::Error => "ERROR",
        }
    }

    /// Whether frames of this kind belong to the connection rather than to one channel.
    pub fn is_connection_level(self) -> bool {
        matches!(
            self,
            FrameKind::Hello | FrameKind::Heartbeat | FrameKind::Cancel | FrameKind::Close | FrameKind::Error
        )
    }

    /// Smallest and largest body this kind may declare.
    pub fn body_bytes_range(self) -> (u32, u32) {
        match self {
            FrameKind::Hello => (HELLO_BODY_BYTES as u32, HELLO_BODY_BYTES as u32),
            FrameKind::Buffer => (MIN_BUFFER_BODY_BYTES as u32, BUFFER_SIZE as u32),
            FrameKind::Event => (EVENT_BODY_BYTES as u32, EVENT_BODY_BYTES as u32),
            FrameKind::Cancel | FrameKind::Error => (0, MAX_TEXT_BYTES as u32),
            FrameKind::PartitionRequest
            | FrameKind::AddCredit
            | FrameKind::Backlog
            | FrameKind::Heartbeat
            | FrameKind::Close => (0, 0),
        }
    }

    /// Whether a channel's consumer sends frames of this kind (PARTITION_REQUEST, ADD_CREDIT).
    pub fn is_sent_by_consumer(self) -> bool {
        matches!(self, FrameKind::PartitionRequest | FrameKind::AddCredit)
    }

    fn uses_seq(self) -> bool {
        matches!(self, FrameKind::Buffer | FrameKind::Event)
    }

    fn uses_arg(self) -> bool {
        !matches!(self, FrameKind::Heartbeat | FrameKind::Cancel | FrameKind::Close)
    }

    fn uses_arg64(self) -> bool {
        matches!(self, FrameKind::Hello | FrameKind::Event)
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an ERROR frame was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// The sender received a frame that broke the protocol.
    Protocol = 1,
    /// The job failed at the sender.
    JobFailed = 2,
    /// The handshake did not match: job fingerprint, TaskManager index or count, channel count
    /// or heartbeat interval.
    HandshakeMismatch = 3,
}

impl ErrorCode {
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(ErrorCode::Protocol),
            2 => Some(ErrorCode::JobFailed),
            3 => Some(ErrorCode::HandshakeMismatch),
            _ => None,
        }
    }

    pub fn code(self) -> u32 {
        self as u32
    }
}

/// A frame the codec refuses, naming what it saw. Every variant is a protocol error of the peer
/// (or, from an encoder, a message no peer would accept): retrying the same bytes cannot help.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad frame magic {found:02x?} (expected \"CSNF\"): the peer does not speak the corestream protocol")]
    BadMagic { found: [u8; 4] },
    #[error("peer speaks protocol version {found}, this build speaks {supported}")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("{kind} frame with reserved flag bits set (flags {flags:#06x})")]
    ReservedBits { kind: FrameKind, flags: u16 },
    #[error("{kind} frame declares a body of {len} bytes, expected {}{expected}", if *kind == FrameKind::Buffer { "at least " } else { "" })]
    BadLength { kind: FrameKind, len: u32, expected: u32 },
    #[error("{kind} frame declares a body of {len} bytes, more than its maximum of {max}")]
    Oversized { kind: FrameKind, len: u32, max: u32 },
    #[error("frame needs {len} bytes but only {available} are there (truncated, or a length past the end)")]
    LengthPastEnd { len: usize, available: usize },
    #[error(
        "{kind} frame on channel {channel:#x}: connection-level kinds use channel 0xffffffff, channel kinds any other"
    )]
    BadChannel { kind: FrameKind, channel: u32 },
    #[error("{kind} frame with {field} = {value}, which must be 0 for this kind")]
    ReservedField { kind: FrameKind, field: &'static str, value: u64 },
    #[error("{kind} frame on channel {channel} grants 0 credits (at least 1 required)")]
    ZeroCredit { kind: FrameKind, channel: u32 },
    #[error("ERROR frame with unknown error code {code}")]
    UnknownErrorCode { code: u32 },
    #[error("{kind} frame text is not UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 { kind: FrameKind, valid_up_to: usize },
    #[error("unknown event code {code}")]
    UnknownEvent { code: u32 },
    #[error("invalid event (code {code}): {reason}")]
    InvalidEvent { code: u32, reason: &'static str },
    // Session state (checked by `remote::PeerSession` before a frame's body is read).
    #[error("{kind} frame before the peer's HELLO")]
    MissingHello { kind: FrameKind },
    #[error("second HELLO from the peer")]
    UnexpectedHello,
    #[error("HELLO does not match this side: {field} is {found}, expected {expected}")]
    HandshakeMismatch { field: &'static str, expected: u64, found: u64 },
    #[error("frame for channel {channel}, which does not cross this connection")]
    UnknownChannel { channel: u32 },
    #[error("{kind} frame on channel {channel} travels the wrong way (this side is not the channel's {})", if kind.is_sent_by_consumer() { "producer" } else { "consumer" })]
    WrongDirection { channel: u32, kind: FrameKind },
    #[error("BUFFER on channel {channel} arrived without credit: the sender broke flow control")]
    NoCredit { channel: u32 },
    #[error("EVENT on channel {channel} while {queued} items wait unread in it: the sender floods events")]
    TooManyEvents { channel: u32, queued: u32 },
    #[error("frame on channel {channel} has sequence number {got}, expected {expected}")]
    OutOfOrder { channel: u32, expected: u32, got: u32 },
    #[error("{kind} frame on channel {channel} after its EndOfPartition")]
    AfterEnd { channel: u32, kind: FrameKind },
    #[error("second PARTITION_REQUEST for channel {channel}")]
    DuplicatePartitionRequest { channel: u32 },
    #[error("ADD_CREDIT for channel {channel} before its PARTITION_REQUEST")]
    CreditBeforeRequest { channel: u32 },
    #[error("ADD_CREDIT of {credit} on channel {channel} overflows its credit counter")]
    CreditOverflow { channel: u32, credit: u32 },
    #[error("CLOSE while {open_channels} channels of the connection have not ended")]
    ClosedEarly { open_channels: u32 },
    #[error("{kind} frame after the peer's CLOSE")]
    AfterClose { kind: FrameKind },
    #[error("BUFFER on channel {channel}: {error}")]
    InvalidBuffer { channel: u32, error: BufferError },
}

/// A frame header as the fields of the table in the module doc; `magic` and `version` are
/// implied. [`FrameHeader::encode`] writes any field values, so tests can build malformed
/// frames; [`decode_header`] accepts only valid ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u16,
    pub body_len: u32,
    pub channel: u32,
    pub seq: u32,
    pub arg: u32,
    pub arg64: u64,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.kind.id();
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.channel.to_le_bytes());
        out[16..20].copy_from_slice(&self.seq.to_le_bytes());
        out[20..24].copy_from_slice(&self.arg.to_le_bytes());
        out[24..32].copy_from_slice(&self.arg64.to_le_bytes());
        out
    }

    /// Header and body bytes together.
    pub fn frame_len(&self) -> usize {
        HEADER_BYTES + self.body_len as usize
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Parses and checks a frame header: everything the protocol says about a header that needs no
/// session state (magic, version, kind, flags, per-kind body length and maximum, channel side,
/// zero fields, credit, error code). A streaming reader calls this before reading the body.
pub fn decode_header(bytes: &[u8; HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if bytes[4] != VERSION {
        return Err(FrameError::UnsupportedVersion { found: bytes[4], supported: VERSION });
    }
    let kind = FrameKind::from_id(bytes[5]).ok_or(FrameError::UnknownKind { kind: bytes[5] })?;
    let header = FrameHeader {
        kind,
        flags: u16::from_le_bytes([bytes[6], bytes[7]]),
        body_len: le_u32(bytes, 8),
        channel: le_u32(bytes, 12),
        seq: le_u32(bytes, 16),
        arg: le_u32(bytes, 20),
        arg64: le_u64(bytes, 24),
    };
    check_header(&header)?;
    Ok(header)
}

fn check_header(h: &FrameHeader) -> Result<(), FrameError> {
    let allowed_flags = if h.kind == FrameKind::Event { PRIORITY_FLAG } else { 0 };
    if h.flags & !allowed_flags != 0 {
        return Err(FrameError::ReservedBits { kind: h.kind, flags: h.flags });
    }
    let (min, max) = h.kind.body_bytes_range();
    if min == max && h.body_len != min {
        return Err(FrameError::BadLength { kind: h.kind, len: h.body_len, expected: min });
    }
    if h.body_len > max {
        return Err(FrameError::Oversized { kind: h.kind, len: h.body_len, max });
    }
    if h.body_len < min {
        return Err(FrameError::BadLength { kind: h.kind, len: h.body_len, expected: min });
    }
    if h.kind.is_connection_level() != (h.channel == CONNECTION_CHANNEL) {
        return Err(FrameError::BadChannel { kind: h.kind, channel: h.channel });
    }
    let zero_fields = [
        ("seq", !h.kind.uses_seq(), u64::from(h.seq)),
        ("arg", !h.kind.uses_arg(), u64::from(h.arg)),
        ("arg64", !h.kind.uses_arg64(), h.arg64),
    ];
    if let Some(&(field, _, value)) = zero_fields.iter().find(|(_, must_be_zero, value)| *must_be_zero && *value != 0) {
        return Err(FrameError::ReservedField { kind: h.kind, field, value });
    }
    match h.kind {
        FrameKind::PartitionRequest | FrameKind::AddCredit if h.arg == 0 => {
            Err(FrameError::ZeroCredit { kind: h.kind, channel: h.channel })
        }
        FrameKind::Error if ErrorCode::from_code(h.arg).is_none() => Err(FrameError::UnknownErrorCode { code: h.arg }),
        _ => Ok(()),
    }
}

/// The first frame each side sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Index of the sending TaskManager.
    pub sender_tm: u32,
    /// Fingerprint of the job's execution plan; both sides must agree.
    pub job_fingerprint: u64,
    pub tm_count: u32,
    pub pid: u32,
    /// Interval after which an idle side sends HEARTBEAT.
    pub heartbeat_ms: u32,
    /// Number of channels in the job's execution plan.
    pub channels: u32,
}

/// One decoded frame. Borrowed parts (payload, text) point into the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Hello(Hello),
    PartitionRequest { channel: u32, initial_credit: u32 },
    AddCredit { channel: u32, credit: u32 },
    Buffer { channel: u32, seq: u32, backlog: u32, payload: &'a [u8] },
    Backlog { channel: u32, backlog: u32 },
    Event { channel: u32, seq: u32, event: Event },
    Heartbeat,
    Cancel { reason: &'a str },
    Close,
    Error { code: ErrorCode, message: &'a str },
}

/// Body of an encoded frame: small fixed bodies are held inline, payloads and text borrowed.
#[derive(Debug, Clone, Copy)]
enum Body<'a> {
    Inline { bytes: [u8; HELLO_BODY_BYTES], len: usize },
    Borrowed(&'a [u8]),
}

/// An encoded frame as a header and a body: the transport writes both parts in one vectored
/// write with no copy of the payload; [`EncodedFrame::write_to`] appends them to a byte vector.
#[derive(Debug, Clone, Copy)]
pub struct EncodedFrame<'a> {
    header: [u8; HEADER_BYTES],
    body: Body<'a>,
}

impl<'a> EncodedFrame<'a> {
    pub fn header(&self) -> &[u8; HEADER_BYTES] {
        &self.header
    }

    pub fn body(&self) -> &[u8] {
        match &self.body {
            Body::Inline { bytes, len } => &bytes[..*len],
            Body::Borrowed(bytes) => bytes,
        }
    }

    /// Header plus body bytes.
    pub fn len(&self) -> usize {
        HEADER_BYTES + self.body().len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        out.extend_from_slice(self.body());
    }
}

impl<'a> Message<'a> {
    pub fn kind(&self) -> FrameKind {
        match self {
            Message::Hello(_) => FrameKind::Hello,
            Message::PartitionRequest { .. } => FrameKind::PartitionRequest,
            Message::AddCredit { .. } => FrameKind::AddCredit,
            Message::Buffer { .. } => FrameKind::Buffer,
            Message::Backlog { .. } => FrameKind::Backlog,
            Message::Event { .. } => FrameKind::Event,
            Message::Heartbeat => FrameKind::Heartbeat,
            Message::Cancel { .. } => FrameKind::Cancel,
            Message::Close => FrameKind::Close,
            Message::Error { .. } => FrameKind::Error,
        }
    }

    /// The channel of a channel-level message; [`CONNECTION_CHANNEL`] for the others.
    pub fn channel(&self) -> u32 {
        match *self {
            Message::PartitionRequest { channel, .. }
            | Message::AddCredit { channel, .. }
            | Message::Buffer { channel, .. }
            | Message::Backlog { channel, .. }
            | Message::Event { channel, .. } => channel,
            Message::Hello(_)
            | Message::Heartbeat
            | Message::Cancel { .. }
            | Message::Close
            | Message::Error { .. } => CONNECTION_CHANNEL,
        }
    }

    /// Encodes the message, refusing exactly what a receiver would refuse: the header goes
    /// through the same checks as [`decode_header`].
    pub fn encode(&self) -> Result<EncodedFrame<'a>, FrameError> {
        let kind = self.kind();
        let mut header = FrameHeader { kind, flags: 0, body_len: 0, channel: self.channel(), seq: 0, arg: 0, arg64: 0 };
        let mut inline = [0u8; HELLO_BODY_BYTES];
        let body = match *self {
            Message::Hello(hello) => {
                header.arg = hello.sender_tm;
                header.arg64 = hello.job_fingerprint;
                for (i, word) in [hello.tm_count, hello.pid, hello.heartbeat_ms, hello.channels].into_iter().enumerate()
                {
                    inline[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
                }
                Body::Inline { bytes: inline, len: HELLO_BODY_BYTES }
            }
            Message::PartitionRequest { initial_credit: credit, .. } | Message::AddCredit { credit, .. } => {
                header.arg = credit;
                Body::Borrowed(&[])
            }
            Message::Buffer { seq, backlog, payload, .. } => {
                header.seq = seq;
                header.arg = backlog;
                Body::Borrowed(payload)
            }
            Message::Backlog { backlog, .. } => {
                header.arg = backlog;
                Body::Borrowed(&[])
            }
            Message::Event { seq, event, .. } => {
                let wire = WireEvent::from_event(&event);
                header.seq = seq;
                header.flags = wire.flags;
                header.arg = wire.code;
                header.arg64 = wire.a;
                inline[..EVENT_BODY_BYTES].copy_from_slice(&wire.b.to_le_bytes());
                Body::Inline { bytes: inline, len: EVENT_BODY_BYTES }
            }
            Message::Heartbeat | Message::Close => Body::Borrowed(&[]),
            Message::Cancel { reason } => Body::Borrowed(reason.as_bytes()),
            Message::Error { code, message } => {
                header.arg = code.code();
                Body::Borrowed(message.as_bytes())
            }
        };
        let frame = EncodedFrame { header: [0; HEADER_BYTES], body };
        let body_len = frame.body().len();
        header.body_len = u32::try_from(body_len).map_err(|_| FrameError::Oversized {
            kind,
            len: u32::MAX,
            max: kind.body_bytes_range().1,
        })?;
        check_header(&header)?;
        Ok(EncodedFrame { header: header.encode(), ..frame })
    }

    /// Appends the encoded frame to `out`; returns its length.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<usize, FrameError> {
        let frame = self.encode()?;
        frame.write_to(out);
        Ok(frame.len())
    }
}

/// Cuts `text` to at most [`MAX_TEXT_BYTES`] at a character boundary, for CANCEL reasons and
/// ERROR messages built from arbitrary error text.
pub fn truncate_text(text: &str) -> &str {
    if text.len() <= MAX_TEXT_BYTES {
        return text;
    }
    let end = (0..=MAX_TEXT_BYTES).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    &text[..end]
}

/// An event as its EVENT frame fields (table "Events" of the module doc).
struct WireEvent {
    code: u32,
    a: u64,
    b: u64,
    flags: u16,
}

const EVENT_END_OF_PARTITION: u32 = 1;
const EVENT_WATERMARK: u32 = 2;
const EVENT_WATERMARK_STATUS: u32 = 3;
const EVENT_CHECKPOINT_BARRIER: u32 = 4;
const EVENT_LATENCY_MARKER: u32 = 5;

impl WireEvent {
    fn from_event(event: &Event) -> Self {
        let flags = if event.is_priority() { PRIORITY_FLAG } else { 0 };
        let (code, a, b) = match *event {
            Event::EndOfPartition => (EVENT_END_OF_PARTITION, 0, 0),
            Event::Watermark(ts) => (EVENT_WATERMARK, ts as u64, 0),
            Event::WatermarkStatus(WatermarkStatus::Active) => (EVENT_WATERMARK_STATUS, 0, 0),
            Event::WatermarkStatus(WatermarkStatus::Idle) => (EVENT_WATERMARK_STATUS, 1, 0),
            Event::CheckpointBarrier { checkpoint_id, timestamp_ms, .. } => {
                (EVENT_CHECKPOINT_BARRIER, checkpoint_id, timestamp_ms as u64)
            }
            Event::LatencyMarker { marked_time_ns, source_subtask } => {
                (EVENT_LATENCY_MARKER, marked_time_ns, u64::from(source_subtask))
            }
        };
        Self { code, a, b, flags }
    }

    fn into_event(self) -> Result<Event, FrameError> {
        let Self { code, a, b, flags } = self;
        let invalid = |reason| FrameError::InvalidEvent { code, reason };
        let priority = flags & PRIORITY_FLAG != 0;
        let event = match code {
            EVENT_END_OF_PARTITION if a != 0 || b != 0 => return Err(invalid("end of partition carries no fields")),
            EVENT_END_OF_PARTITION => Event::EndOfPartition,
            EVENT_WATERMARK if b != 0 => return Err(invalid("watermark body must be 0")),
            EVENT_WATERMARK => Event::Watermark(a as i64),
            EVENT_WATERMARK_STATUS if b != 0 => return Err(invalid("watermark status body must be 0")),
            EVENT_WATERMARK_STATUS => match a {
                0 => Event::WatermarkStatus(WatermarkStatus::Active),
                1 => Event::WatermarkStatus(WatermarkStatus::Idle),
                _ => return Err(invalid("watermark status must be 0 (active) or 1 (idle)")),
            },
            EVENT_CHECKPOINT_BARRIER => Event::CheckpointBarrier {
                checkpoint_id: a,
                timestamp_ms: b as i64,
                kind: if priority { BarrierKind::Unaligned } else { BarrierKind::Aligned },
            },
            EVENT_LATENCY_MARKER => Event::LatencyMarker {
                marked_time_ns: a,
                source_subtask: u32::try_from(b).map_err(|_| invalid("latency marker subtask past u32::MAX"))?,
            },
            _ => return Err(FrameError::UnknownEvent { code }),
        };
        if event.is_priority() != priority {
            return Err(invalid("priority flag set on an event that is not an unaligned barrier"));
        }
        Ok(event)
    }
}

fn text(kind: FrameKind, body: &[u8]) -> Result<&str, FrameError> {
    std::str::from_utf8(body).map_err(|e| FrameError::InvalidUtf8 { kind, valid_up_to: e.valid_up_to() })
}

/// Turns a checked header and its body into a message. `body` must hold at least
/// `header.body_len` bytes (only those are read), else [`FrameError::LengthPastEnd`].
pub fn decode_body<'a>(header: &FrameHeader, body: &'a [u8]) -> Result<Message<'a>, FrameError> {
    let len = header.body_len as usize;
    let body = body
        .get(..len)
        .ok_or(FrameError::LengthPastEnd { len: header.frame_len(), available: HEADER_BYTES + body.len() })?;
    let channel = header.channel;
    Ok(match header.kind {
        FrameKind::Hello => Message::Hello(Hello {
            sender_tm: header.arg,
            job_fingerprint: header.arg64,
            tm_count: le_u32(body, 0),
            pid: le_u32(body, 4),
            heartbeat_ms: le_u32(body, 8),
            channels: le_u32(body, 12),
        }),
        FrameKind::PartitionRequest => Message::PartitionRequest { channel, initial_credit: header.arg },
        FrameKind::AddCredit => Message::AddCredit { channel, credit: header.arg },
        FrameKind::Buffer => Message::Buffer { channel, seq: header.seq, backlog: header.arg, payload: body },
        FrameKind::Backlog => Message::Backlog { channel, backlog: header.arg },
        FrameKind::Event => {
            let wire = WireEvent { code: header.arg, a: header.arg64, b: le_u64(body, 0), flags: header.flags };
            Message::Event { channel, seq: header.seq, event: wire.into_event()? }
        }
        FrameKind::Heartbeat => Message::Heartbeat,
        FrameKind::Cancel => Message::Cancel { reason: text(FrameKind::Cancel, body)? },
        FrameKind::Close => Message::Close,
        FrameKind::Error => Message::Error {
            code: ErrorCode::from_code(header.arg).ok_or(FrameError::UnknownErrorCode { code: header.arg })?,
            message: text(FrameKind::Error, body)?,
        },
    })
}

/// Decodes the frame at the start of `bytes`; returns it and the number of bytes it took.
/// The header is checked before the body length is compared with what is there, so a bad or
/// oversized header is reported as such even when its body is missing.
pub fn decode_frame(bytes: &[u8]) -> Result<(Message<'_>, usize), FrameError> {
    let header_bytes: &[u8; HEADER_BYTES] = bytes
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::LengthPastEnd { len: HEADER_BYTES, available: bytes.len() })?;
    let header = decode_header(header_bytes)?;
    let message = decode_body(&header, &bytes[HEADER_BYTES..])?;
    Ok((message, header.frame_len()))
}

/// Fuzz entry point: decodes frames one after another until the input ends or a frame is
/// refused, checks what the decoder returns and feeds every frame to a
/// [`crate::remote::PeerSession`] as a peer would. It must never panic on any input; a panic is
/// a bug of the codec or the session (or of the checks here, which hold for every accepted
/// frame):
/// - every accepted frame encodes back to exactly the bytes it was decoded from;
/// - every BUFFER payload is copied to offset 0 of a pooled buffer, as a receiver does, and
///   checked with [`validate_buffer`] as each of several record types; whatever validates is
///   iterated in place and deserialized, so a hole in validation becomes a crash here (or an
///   ASan report under libFuzzer) rather than undefined behaviour in a task;
/// - the session is this side of the connection described by [`fuzz_session_hello`]: the input
///   plays TaskManager 1. Inbound channels 0..=4 carry `(u64, u64)`, `String`,
///   `(String, u64)`, `Vec<u8>` and a private enum record, 2 exclusive
///   credits each and 4 floating; their consumer reads (in place and deserialized) and returns
///   credit whenever a HEARTBEAT arrives, so the input also decides the consumer's speed.
///   Outbound channels 5 and 6 each have two buffers and EndOfPartition waiting for credit.
///   After every frame the session writes what it would send, which must decode again;
/// - every pooled buffer is back in the pool at the end, on every path.
///
/// Returns the number of frames decoded, or the error of the first refused frame (by the
/// decoder or the session).
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) -> Result<usize, FrameError> {
    thread_local! {
        static POOLS: (crate::pool::BufferPool, crate::pool::BufferPool) =
            (crate::pool::BufferPool::new(2), crate::pool::BufferPool::new(FUZZ_SESSION_BUFFERS));
    }
    POOLS.with(|(codec_pool, session_pool)| {
        let outcome = fuzz_session(codec_pool, session_pool, data);
        assert_eq!(codec_pool.in_use(), 0, "a pooled buffer was not returned after decoding");
        assert_eq!(session_pool.in_use(), 0, "the session or its channels kept a pooled buffer");
        outcome
    })
}

const FUZZ_OUTBOUND: [u32; 2] = [5, 6];
const FUZZ_SESSION_BUFFERS: u32 = 24;

/// The HELLO the fuzz session expects from the input (TaskManager 1 of 2, 7 channels).
#[doc(hidden)]
pub fn fuzz_session_hello() -> Hello {
    Hello {
        sender_tm: 1,
        job_fingerprint: 0x5eed_f00d_cafe_0001,
        tm_count: 2,
        pid: 31337,
        heartbeat_ms: 1000,
        channels: 7,
    }
}

struct FuzzSide {
    session: crate::remote::PeerSession,
    gate: crate::credit::InputGate,
    outputs: Vec<crate::credit::OutputChannel>,
    readers: [crate::record::BufferValidator; 5],
}

impl FuzzSide {
    fn new(pool: &crate::pool::BufferPool) -> Self {
        use crate::credit::{CreditConfig, InputGate, LocalChannel, OutputChannel};
        use crate::doorbell::Doorbell;
        use crate::record::{RecordWriter, Written};
        let peer = fuzz_session_hello();
        let local = Hello { sender_tm: 0, pid: 1, ..peer };
        let identity = crate::remote::PeerIdentity {
            tm: peer.sender_tm,
            job_fingerprint: peer.job_fingerprint,
            tm_count: peer.tm_count,
            channels: peer.channels,
        };
        let mut session = crate::remote::PeerSession::new(local, identity, pool.clone());
        let config = CreditConfig { exclusive_per_channel: 2, floating_per_gate: 4, max_backlog_per_channel: 2 };
        let bell = std::sync::Arc::new(Doorbell::new());
        let validators: [crate::record::BufferValidator; 5] = [
            validate_buffer::<(u64, u64)>,
            validate_buffer::<String>,
            validate_buffer::<(String, u64)>,
            validate_buffer::<Vec<u8>>,
            validate_buffer::<FuzzRecord>,
        ];
        let mut inbound = Vec::new();
        for (id, validator) in validators.into_iter().enumerate() {
            let ch = LocalChannel::new_remote_in(config.exclusive_per_channel, bell.clone(), bell.clone());
            session.add_inbound(id as u32, ch.clone(), validator);
            inbound.push(ch);
        }
        let mut outputs = Vec::new();
        for id in FUZZ_OUTBOUND {
            let ch = LocalChannel::new_remote_out(bell.clone(), bell.clone());
            session.add_outbound(id, ch.clone());
            let mut output = OutputChannel::new(ch, &config);
            for i in 0..2u64 {
                let mut buf = pool.take().expect("the fuzz pool holds the outbound buffers");
                let written = RecordWriter::new().write(&mut buf, &(u64::from(id), i)).expect("a pair fits");
                assert_eq!(written, Written::Done);
                output.send_buffer(buf.freeze());
            }
            output.send_event(Event::EndOfPartition);
            outputs.push(output);
        }
        let readers = [
            read_validated::<(u64, u64)>,
            read_validated::<String>,
            read_validated::<(String, u64)>,
            read_validated::<Vec<u8>>,
            read_validated::<FuzzRecord>,
        ];
        Self { session, gate: InputGate::new(inbound, &config), outputs, readers }
    }

    /// The consumer reads everything queued and returns its credit.
    fn drain(&mut self) {
        use crate::credit::ChannelItem;
        while let Some((c, item)) = self.gate.poll_next() {
            if let ChannelItem::Buffer(buffer) = item {
                let read = (self.readers[c])(buffer.as_slice());
                assert!(read.is_ok(), "channel {c} delivered a buffer its validator refuses: {read:?}");
                drop(buffer);
                self.gate.release(c);
            }
        }
    }

    /// Producers ship what credit allows; the session writes its frames, which must decode.
    fn write(&mut self) {
        for output in &mut self.outputs {
            output.try_send();
        }
        let mut out = Vec::new();
        self.session.poll_outgoing(&mut out);
        for frame in &out {
            let header = decode_header(frame.header()).expect("the session writes valid headers");
            decode_body(&header, frame.body()).expect("the session writes valid bodies");
        }
    }
}

fn fuzz_session(
    codec_pool: &crate::pool::BufferPool,
    session_pool: &crate::pool::BufferPool,
    mut data: &[u8],
) -> Result<usize, FrameError> {
    use crate::remote::SessionError;
    let mut side = FuzzSide::new(session_pool);
    side.write();
    let mut frames = 0;
    let mut refused = None;
    while !data.is_empty() {
        let consumed = match check_frame(codec_pool, data) {
            Ok(consumed) => consumed,
            Err(e) => return Err(refused.unwrap_or(e)),
        };
        if refused.is_none() {
            let header = decode_header(data[..HEADER_BYTES].try_into().expect("a whole header"))
                .expect("check_frame accepted this header");
            match side.session.on_frame(&header, &data[HEADER_BYTES..consumed]) {
                Ok(_) => {
                    if header.kind == FrameKind::Heartbeat {
                        side.drain();
                    }
                    side.write();
                }
                Err(SessionError::Protocol(e)) => refused = Some(e),
                Err(SessionError::Pool(e)) => panic!("credit admitted more buffers than the fuzz pool holds: {e}"),
            }
        }
        frames += 1;
        data = &data[consumed..];
    }
    if refused.is_none() {
        side.drain();
        side.write();
    }
    drop(side);
    refused.map_or(Ok(frames), Err)
}

/// Decodes the frame at the start of `data`, checks that it encodes back to the same bytes
/// and reads a BUFFER payload as every fuzz record type; returns the frame's length.
fn check_frame(pool: &crate::pool::BufferPool, data: &[u8]) -> Result<usize, FrameError> {
    let (message, consumed) = decode_frame(data)?;
    let mut again = Vec::with_capacity(consumed);
    let encoded_len = message.encode_into(&mut again).expect("an accepted frame encodes again");
    assert_eq!(encoded_len, consumed, "re-encoded {} frame has another length", message.kind());
    assert_eq!(&again[..], &data[..consumed], "re-encoded {} frame differs", message.kind());
    if let Message::Buffer { payload, .. } = message {
        let mut buf = pool.take().expect("the fuzz pool holds one buffer per frame");
        buf.whole_mut()[..payload.len()].copy_from_slice(payload);
        buf.set_len(payload.len());
        let received = buf.freeze();
        assert_eq!(received.as_slice(), payload);
        read_as_every_type(received.as_slice());
    }
    Ok(consumed)
}

/// The codec checks of [`fuzz_one`] alone, on every frame of `data` (no session).
#[cfg(test)]
fn fuzz_codec(mut data: &[u8]) -> Result<usize, FrameError> {
    let pool = crate::pool::BufferPool::new(1);
    let mut frames = 0;
    while !data.is_empty() {
        data = &data[check_frame(&pool, data)?..];
        frames += 1;
    }
    Ok(frames)
}

/// A record type with an enum tag, a `bool`, an `Option` and out-of-line data, so that fuzzed
/// payloads reach every kind of check rkyv's validator makes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
enum FuzzRecord {
    A(u64),
    B(String),
    C(Vec<u32>),
    D { x: Option<i64>, y: bool },
}

fn read_as_every_type(payload: &[u8]) {
    let _ = read_validated::<(u64, u64)>(payload);
    let _ = read_validated::<String>(payload);
    let _ = read_validated::<(String, u64)>(payload);
    let _ = read_validated::<Vec<u8>>(payload);
    let _ = read_validated::<FuzzRecord>(payload);
}

/// Validates `payload` as a buffer of `T`s and, if it passes, reads every record in place and
/// deserializes it; returns the record count.
fn read_validated<T: Data>(payload: &[u8]) -> Result<u32, BufferError> {
    let count = validate_buffer::<T>(payload)?;
    // SAFETY: `validate_buffer::<T>` accepted these bytes (layout walk and rkyv validation of
    // every archive), which is the contract of `RecordIter::new` for bytes from elsewhere; they
    // start at offset 0 of a pool buffer, so they are 16-byte aligned.
    let records = unsafe { RecordIter::<T>::new(payload) };
    let mut read = 0u32;
    for archived in records {
        std::hint::black_box(deserialize::<T>(archived));
        read += 1;
    }
    assert_eq!(
        read,
        count,
        "validate_buffer counted {count} records of {} but {read} were read",
        std::any::type_name::<T>()
    );
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Hello {
        Hello {
            sender_tm: 1,
            job_fingerprint: 0xdead_beef_0123_4567,
            tm_count: 2,
            pid: 4242,
            heartbeat_ms: 1000,
            channels: 8,
        }
    }

    fn every_kind<'a>(payload: &'a [u8]) -> Vec<Message<'a>> {
        vec![
            Message::Hello(hello()),
            Message::PartitionRequest { channel: 3, initial_credit: 2 },
            Message::AddCredit { channel: 0, credit: 1 },
            Message::Buffer { channel: 5, seq: 17, backlog: 3, payload },
            Message::Backlog { channel: 5, backlog: 0 },
            Message::Event { channel: 2, seq: 18, event: Event::Watermark(-5) },
            Message::Heartbeat,
            Message::Cancel { reason: "job cancelled by the user" },
            Message::Close,
            Message::Error { code: ErrorCode::JobFailed, message: "task 3 failed: division by zero" },
        ]
    }

    fn header(kind: FrameKind) -> FrameHeader {
        let (min, _) = kind.body_bytes_range();
        let channel = if kind.is_connection_level() { CONNECTION_CHANNEL } else { 0 };
        let arg = match kind {
            FrameKind::PartitionRequest | FrameKind::AddCredit | FrameKind::Error => 1,
            _ => 0,
        };
        FrameHeader { kind, flags: 0, body_len: min, channel, seq: 0, arg, arg64: 0 }
    }

    fn frame(h: FrameHeader, body: &[u8]) -> Vec<u8> {
        let mut out = h.encode().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn every_kind_round_trips() {
        let payload = [1u8, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9];
        let messages = every_kind(&payload);
        assert_eq!(messages.iter().map(Message::kind).collect::<Vec<_>>(), FrameKind::ALL.to_vec());
        let mut stream = Vec::new();
        for m in &messages {
            m.encode_into(&mut stream).unwrap();
        }
        let mut rest = &stream[..];
        for m in &messages {
            let (decoded, used) = decode_frame(rest).unwrap();
            assert_eq!(&decoded, m);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(fuzz_codec(&stream), Ok(messages.len()));
        assert_eq!(
            fuzz_one(&stream),
            Err(FrameError::HandshakeMismatch {
                field: "job fingerprint",
                expected: 0x5eed_f00d_cafe_0001,
                found: 0xdead_beef_0123_4567
            })
        );
    }

    #[test]
    fn encoded_frame_parts_match_the_byte_form() {
        let payload = vec![7u8; 100];
        for m in every_kind(&payload) {
            let frame = m.encode().unwrap();
            let joined = [&frame.header()[..], frame.body()].concat();
            let mut flat = Vec::new();
            assert_eq!(m.encode_into(&mut flat).unwrap(), frame.len());
            assert_eq!(joined, flat);
            let header = decode_header(frame.header()).unwrap();
            assert_eq!(header.frame_len(), frame.len());
            assert_eq!(decode_body(&header, frame.body()).unwrap(), m);
        }
    }

    #[test]
    fn header_layout_is_little_endian_at_fixed_offsets() {
        let h = FrameHeader {
            kind: FrameKind::Buffer,
            flags: 0,
            body_len: 0x0102,
            channel: 0x0a0b_0c0d,
            seq: 0x1122_3344,
            arg: 0x5566_7788,
            arg64: 0x0102_0304_0506_0708,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[0..6], b"CSNF\x01\x04");
        assert_eq!(&bytes[6..8], &[0, 0]);
        assert_eq!(&bytes[8..12], &[0x02, 0x01, 0, 0]);
        assert_eq!(&bytes[12..16], &[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(&bytes[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&bytes[20..24], &[0x88, 0x77, 0x66, 0x55]);
        assert_eq!(&bytes[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let mut bytes = header(FrameKind::Heartbeat).encode();
        bytes[0..4].copy_from_slice(b"HTTP");
        assert_eq!(decode_header(&bytes), Err(FrameError::BadMagic { found: *b"HTTP" }));
        let mut bytes = header(FrameKind::Heartbeat).encode();
        bytes[4] = 2;
        let err = decode_header(&bytes).unwrap_err();
        assert_eq!(err, FrameError::UnsupportedVersion { found: 2, supported: 1 });
        assert_eq!(err.to_string(), "peer speaks protocol version 2, this build speaks 1");
    }

    #[test]
    fn unknown_kinds_are_refused() {
        for id in [0u8, 11, 200, 255] {
            let mut bytes = header(FrameKind::Heartbeat).encode();
            bytes[5] = id;
            assert_eq!(decode_header(&bytes), Err(FrameError::UnknownKind { kind: id }));
        }
    }

    #[test]
    fn reserved_flag_bits_are_refused() {
        let h = FrameHeader { flags: 1, ..header(FrameKind::Buffer) };
        assert_eq!(decode_header(&h.encode()), Err(FrameError::ReservedBits { kind: FrameKind::Buffer, flags: 1 }));
        let h = FrameHeader { flags: 0x8001, ..header(FrameKind::Event) };
        assert_eq!(decode_header(&h.encode()), Err(FrameError::ReservedBits { kind: FrameKind::Event, flags: 0x8001 }));
    }

    #[test]
    fn fixed_lengths_are_exact() {
        for kind in FrameKind::ALL {
            let (min, max) = kind.body_bytes_range();
            if min != max {
                continue;
            }
            for len in [min.wrapping_sub(1), min + 1, u32::MAX].into_iter().filter(|&l| l != min) {
                let h = FrameHeader { body_len: len, ..header(kind) };
                assert_eq!(decode_header(&h.encode()), Err(FrameError::BadLength { kind, len, expected: min }));
            }
        }
    }

    #[test]
    fn oversized_bodies_are_refused_from_the_header() {
        let h = FrameHeader { body_len: BUFFER_SIZE as u32 + 1, ..header(FrameKind::Buffer) };
        let err = decode_frame(&h.encode()).unwrap_err();
        assert_eq!(err, FrameError::Oversized { kind: FrameKind::Buffer, len: 32769, max: 32768 });
        let h = FrameHeader { body_len: u32::MAX, ..header(FrameKind::Buffer) };
        assert!(matches!(decode_header(&h.encode()), Err(FrameError::Oversized { len: u32::MAX, .. })));
        for kind in [FrameKind::Cancel, FrameKind::Error] {
            let h = FrameHeader { body_len: 1025, ..header(kind) };
            assert_eq!(decode_header(&h.encode()), Err(FrameError::Oversized { kind, len: 1025, max: 1024 }));
        }
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(
            Message::Cancel { reason: &long }.encode().unwrap_err(),
            FrameError::Oversized { kind: FrameKind::Cancel, len: 1025, max: 1024 }
        );
    }

    #[test]
    fn short_buffers_are_bad_length() {
        let h = FrameHeader { body_len: 7, ..header(FrameKind::Buffer) };
        let err = decode_header(&h.encode()).unwrap_err();
        assert_eq!(err, FrameError::BadLength { kind: FrameKind::Buffer, len: 7, expected: 8 });
        assert!(err.to_string().contains("expected at least 8"));
        let payload = [0u8; 4];
        assert!(matches!(
            Message::Buffer { channel: 0, seq: 0, backlog: 0, payload: &payload }.encode(),
            Err(FrameError::BadLength { len: 4, .. })
        ));
    }

    #[test]
    fn truncated_input_is_length_past_end() {
        let bytes = Message::Event { channel: 1, seq: 0, event: Event::EndOfPartition }.encode().unwrap();
        let mut whole = Vec::new();
        bytes.write_to(&mut whole);
        assert_eq!(decode_frame(&whole[..10]), Err(FrameError::LengthPastEnd { len: 32, available: 10 }));
        assert_eq!(decode_frame(&whole[..35]), Err(FrameError::LengthPastEnd { len: 40, available: 35 }));
        assert_eq!(decode_frame(&[]), Err(FrameError::LengthPastEnd { len: 32, available: 0 }));
        let h = FrameHeader { body_len: 100, ..header(FrameKind::Buffer) };
        let input = frame(h, &[0; 50]);
        assert_eq!(decode_frame(&input), Err(FrameError::LengthPastEnd { len: 132, available: 82 }));
    }

    #[test]
    fn channel_side_zero_fields_and_credit_are_checked() {
        let h = FrameHeader { channel: 0, ..header(FrameKind::Heartbeat) };
        assert_eq!(decode_header(&h.encode()), Err(FrameError::BadChannel { kind: FrameKind::Heartbeat, channel: 0 }));
        let h = FrameHeader { channel: CONNECTION_CHANNEL, ..header(FrameKind::Buffer) };
        assert!(matches!(decode_header(&h.encode()), Err(FrameError::BadChannel { kind: FrameKind::Buffer, .. })));
        let h = FrameHeader { seq: 4, ..header(FrameKind::Backlog) };
        let want = FrameError::ReservedField { kind: FrameKind::Backlog, field: "seq", value: 4 };
        assert_eq!(decode_header(&h.encode()), Err(want));
        let h = FrameHeader { arg64: 9, ..header(FrameKind::Buffer) };
        let want = FrameError::ReservedField { kind: FrameKind::Buffer, field: "arg64", value: 9 };
        assert_eq!(decode_header(&h.encode()), Err(want));
        let h = FrameHeader { arg: 1, ..header(FrameKind::Close) };
        assert!(matches!(decode_header(&h.encode()), Err(FrameError::ReservedField { field: "arg", .. })));
        let h = FrameHeader { arg: 0, channel: 6, ..header(FrameKind::AddCredit) };
        assert_eq!(decode_header(&h.encode()), Err(FrameError::ZeroCredit { kind: FrameKind::AddCredit, channel: 6 }));
        assert_eq!(
            Message::PartitionRequest { channel: 2, initial_credit: 0 }.encode().unwrap_err(),
            FrameError::ZeroCredit { kind: FrameKind::PartitionRequest, channel: 2 }
        );
        let h = FrameHeader { arg: 4, ..header(FrameKind::Error) };
        assert_eq!(decode_header(&h.encode()), Err(FrameError::UnknownErrorCode { code: 4 }));
    }

    #[test]
    fn text_must_be_utf8() {
        let h = FrameHeader { body_len: 4, ..header(FrameKind::Cancel) };
        let input = frame(h, &[b'o', b'k', 0xff, b'!']);
        assert_eq!(decode_frame(&input), Err(FrameError::InvalidUtf8 { kind: FrameKind::Cancel, valid_up_to: 2 }));
        let long = "é".repeat(MAX_TEXT_BYTES);
        let cut = truncate_text(&long);
        assert_eq!(cut.len(), MAX_TEXT_BYTES);
        assert!(Message::Error { code: ErrorCode::Protocol, message: cut }.encode().is_ok());
    }

    fn event_frame(code: u32, a: u64, b: u64, flags: u16) -> Vec<u8> {
        let h = FrameHeader { kind: FrameKind::Event, flags, body_len: 8, channel: 1, seq: 0, arg: code, arg64: a };
        frame(h, &b.to_le_bytes())
    }

    #[test]
    fn malformed_events_are_named() {
        assert_eq!(decode_frame(&event_frame(0, 0, 0, 0)), Err(FrameError::UnknownEvent { code: 0 }));
        assert_eq!(decode_frame(&event_frame(6, 0, 0, 0)), Err(FrameError::UnknownEvent { code: 6 }));
        let invalid = |code, a, b, flags| match decode_frame(&event_frame(code, a, b, flags)) {
            Err(FrameError::InvalidEvent { code: got, .. }) => assert_eq!(got, code),
            other => panic!("event {code} ({a}, {b}, {flags}): expected InvalidEvent, got {other:?}"),
        };
        invalid(1, 1, 0, 0);
        invalid(1, 0, 1, 0);
        invalid(2, 5, 1, 0);
        invalid(3, 2, 0, 0);
        invalid(3, 0, 3, 0);
        invalid(5, 1, u64::from(u32::MAX) + 1, 0);
        invalid(2, 5, 0, 1);
        invalid(1, 0, 0, 1);
        let barrier = event_frame(4, 7, 99, 1);
        let (m, _) = decode_frame(&barrier).unwrap();
        let unaligned = Event::CheckpointBarrier { checkpoint_id: 7, timestamp_ms: 99, kind: BarrierKind::Unaligned };
        assert_eq!(m, Message::Event { channel: 1, seq: 0, event: unaligned });
    }

    fn any_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::EndOfPartition),
            any::<i64>().prop_map(Event::Watermark),
            any::<bool>().prop_map(|idle| Event::WatermarkStatus(if idle {
                WatermarkStatus::Idle
            } else {
                WatermarkStatus::Active
            })),
            (any::<u64>(), any::<i64>(), any::<bool>()).prop_map(|(checkpoint_id, timestamp_ms, unaligned)| {
                let kind = if unaligned { BarrierKind::Unaligned } else { BarrierKind::Aligned };
                Event::CheckpointBarrier { checkpoint_id, timestamp_ms, kind }
            }),
            (any::<u64>(), any::<u32>())
                .prop_map(|(marked_time_ns, source_subtask)| Event::LatencyMarker { marked_time_ns, source_subtask }),
        ]
    }

    /// A message's scalar fields plus owned storage for its borrowed part.
    #[derive(Debug, Clone)]
    enum Owned {
        Hello(Hello),
        PartitionRequest(u32, u32),
        AddCredit(u32, u32),
        Buffer(u32, u32, u32, Vec<u8>),
        Backlog(u32, u32),
        Event(u32, u32, Event),
        Heartbeat,
        Cancel(String),
        Close,
        Error(ErrorCode, String),
    }

    impl Owned {
        fn message(&self) -> Message<'_> {
            match self {
                Owned::Hello(h) => Message::Hello(*h),
                &Owned::PartitionRequest(channel, initial_credit) => {
                    Message::PartitionRequest { channel, initial_credit }
                }
                &Owned::AddCredit(channel, credit) => Message::AddCredit { channel, credit },
                Owned::Buffer(channel, seq, backlog, payload) => {
                    Message::Buffer { channel: *channel, seq: *seq, backlog: *backlog, payload }
                }
                &Owned::Backlog(channel, backlog) => Message::Backlog { channel, backlog },
                &Owned::Event(channel, seq, event) => Message::Event { channel, seq, event },
                Owned::Heartbeat => Message::Heartbeat,
                Owned::Cancel(reason) => Message::Cancel { reason },
                Owned::Close => Message::Close,
                Owned::Error(code, message) => Message::Error { code: *code, message },
            }
        }
    }

    fn any_text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("(.|\n){0,300}").expect("regex")
    }

    fn any_message() -> impl Strategy<Value = Owned> {
        let channel = 0..CONNECTION_CHANNEL;
        let credit = 1..=u32::MAX;
        prop_oneof![
            (any::<[u32; 5]>(), any::<u64>()).prop_map(|(w, job_fingerprint)| Owned::Hello(Hello {
                sender_tm: w[0],
                job_fingerprint,
                tm_count: w[1],
                pid: w[2],
                heartbeat_ms: w[3],
                channels: w[4],
            })),
            (channel.clone(), credit.clone()).prop_map(|(c, n)| Owned::PartitionRequest(c, n)),
            (channel.clone(), credit).prop_map(|(c, n)| Owned::AddCredit(c, n)),
            (channel.clone(), any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 8..=600))
                .prop_map(|(c, s, b, p)| Owned::Buffer(c, s, b, p)),
            (channel.clone(), any::<u32>()).prop_map(|(c, b)| Owned::Backlog(c, b)),
            (channel, any::<u32>(), any_event()).prop_map(|(c, s, e)| Owned::Event(c, s, e)),
            Just(Owned::Heartbeat),
            any_text().prop_map(|t: String| Owned::Cancel(truncate_text(&t).to_string())),
            Just(Owned::Close),
            (
                prop_oneof![Just(ErrorCode::Protocol), Just(ErrorCode::JobFailed), Just(ErrorCode::HandshakeMismatch)],
                any_text()
            )
                .prop_map(|(code, t)| Owned::Error(code, truncate_text(&t).to_string())),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(owned in proptest::collection::vec(any_message(), 1..8)) {
            let mut stream = Vec::new();
            for o in &owned {
                o.message().encode_into(&mut stream).unwrap();
            }
            let mut rest = &stream[..];
            for o in &owned {
                let (decoded, used) = decode_frame(rest).unwrap();
                prop_assert_eq!(decoded, o.message());
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
            prop_assert_eq!(fuzz_codec(&stream), Ok(owned.len()));
            let _ = fuzz_one(&stream);
        }

        #[test]
        fn valid_headers_round_trip(
            kind_index in 0usize..10,
            flags in any::<u16>(),
            body_len in any::<u32>(),
            channel in any::<u32>(),
            seq in any::<u32>(),
            arg in any::<u32>(),
            arg64 in any::<u64>(),
        ) {
            let h = FrameHeader { kind: FrameKind::ALL[kind_index], flags, body_len, channel, seq, arg, arg64 };
            let bytes = h.encode();
            match decode_header(&bytes) {
                Ok(decoded) => {
                    prop_assert_eq!(decoded, h);
                    prop_assert!(decoded.frame_len() <= MAX_FRAME_BYTES);
                }
                Err(_) => prop_assert!(check_header(&h).is_err()),
            }
        }

        #[test]
        fn events_round_trip(event in any_event(), channel in 0..CONNECTION_CHANNEL, seq in any::<u32>()) {
            let m = Message::Event { channel, seq, event };
            let frame = m.encode().unwrap();
            let flags = u16::from_le_bytes([frame.header()[6], frame.header()[7]]);
            prop_assert_eq!(flags == 1, event.is_priority());
            let mut bytes = Vec::new();
            frame.write_to(&mut bytes);
            prop_assert_eq!(decode_frame(&bytes).unwrap(), (m, HEADER_BYTES + 8));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = fuzz_one(&bytes);
            let mut framed = header(FrameKind::Event).encode().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = fuzz_one(&framed);
        }
    }
}
