//! The wire protocol between TaskManager processes, version 2: how buffers, credit, events and
//! connection and job control travel over the one TCP connection between two TaskManagers,
//! shared by every job that runs on both. This module doc is the normative specification; the
//! codec below implements it with no I/O, so the transport (reading and writing sockets), the
//! fuzz target and the tests share one decoder.
//!
//! # Frames
//!
//! A connection carries frames back to back, with no padding between them. A frame is a
//! 40-byte header followed by `body_len` body bytes. All integers are little-endian, like the
//! record layout and rkyv (`little_endian` feature); a big-endian host needs a new version, not
//! a byte swap.
//!
//! | offset | size | field        | rule |
//! |-------:|-----:|--------------|------|
//! | 0      | 4    | `magic`      | ASCII `CSNF` (43 53 4E 46), else [`FrameError::BadMagic`] |
//! | 4      | 1    | `version`    | [`VERSION`] (2), else [`FrameError::UnsupportedVersion`] |
//! | 5      | 1    | `kind`       | a [`FrameKind`] id (1..=13), else [`FrameError::UnknownKind`] |
//! | 6      | 2    | `flags`      | EVENT: bit 0 = priority, set exactly for unaligned barriers. Every other bit, and every bit of other kinds, is 0, else [`FrameError::ReservedBits`] |
//! | 8      | 4    | `body_len`   | body bytes after the header, checked per kind before any body byte is read |
//! | 12     | 4    | `channel`    | channel-level kinds: the channel's index in the job's execution plan (not `0xFFFF_FFFF`); every other kind: [`CONNECTION_CHANNEL`] (`0xFFFF_FFFF`); else [`FrameError::BadChannel`] |
//! | 16     | 4    | `seq`        | BUFFER and EVENT: per-channel sequence number in wire order, from 0. Otherwise 0 |
//! | 20     | 4    | `arg`        | per kind (table below) |
//! | 24     | 8    | `arg64`      | per kind (table below) |
//! | 32     | 8    | `deployment` | job-level and channel-level kinds: the job deployment the frame belongs to (not 0); connection-level kinds: 0; ERROR: either; else [`FrameError::BadDeployment`] |
//!
//! A field the table marks 0 must be 0 ([`FrameError::ReservedField`]), so every frame has
//! exactly one encoding: decoding and encoding again gives the same bytes.
//!
//! A *deployment* is one attempt of one job: the JobManager gives every attempt a new random
//! non-zero `u64`, so frames of an earlier attempt (a restart) are never taken for the current
//! one's. Channel indexes are the job's own; two jobs on one connection may use the same ones.
//!
//! # Messages
//!
//! | id | kind | level | direction | arg | arg64 | body |
//! |---:|------|-------|-----------|-----|-------|------|
//! | 1 | HELLO | connection | both, first frame | 0 | 0 | 88 B: `tm_id [16], cluster_token [32], nonce [32], pid u32, heartbeat_ms u32` |
//! | 2 | PARTITION_REQUEST | channel | consumer → producer | initial credit (≥ 1) | 0 | none |
//! | 3 | ADD_CREDIT | channel | consumer → producer | credits (≥ 1) | 0 | none |
//! | 4 | BUFFER | channel | producer → consumer | sender backlog after this buffer | 0 | the record buffer, 8..=32768 B |
//! | 5 | BACKLOG | channel | producer → consumer | backlog | 0 | none |
//! | 6 | EVENT | channel | producer → consumer | event code | field a | 8 B: field b |
//! | 7 | HEARTBEAT | connection | both | 0 | 0 | none |
//! | 8 | CANCEL | job | both | 0 | 0 | UTF-8 reason, ≤ 1024 B |
//! | 9 | CLOSE | connection | both | 0 | 0 | none |
//! | 10 | ERROR | connection (deployment 0) or job | both | [`ErrorCode`] | 0 | UTF-8 message, ≤ 1024 B |
//! | 11 | AUTH | connection | both, second frame | 0 | 0 | 32 B: HMAC-SHA256 (see [`crate::handshake`]) |
//! | 12 | JOB_OPEN | job | each side that runs the job | channel count of the plan (≥ 1) | job fingerprint | none |
//! | 13 | JOB_CLOSE | job | both | 0 | 0 | none |
//!
//! A kind with a fixed body length is checked exactly ([`FrameError::BadLength`]); a kind with
//! a maximum is checked against it ([`FrameError::Oversized`]). A BUFFER body under 8 bytes is
//! `BadLength`; over [`BUFFER_SIZE`] it is `Oversized`, refused from the header alone, before
//! anything is allocated or read. Credit of 0 is [`FrameError::ZeroCredit`]; a JOB_OPEN with 0
//! channels is [`FrameError::NoChannels`]; an ERROR code outside 1..=4 is
//! [`FrameError::UnknownErrorCode`], and codes 2 and 4, which concern one job, with deployment
//! 0 are [`FrameError::ErrorCodeNeedsJob`]; text that is not UTF-8 is
//! [`FrameError::InvalidUtf8`]. The largest frame is [`MAX_FRAME_BYTES`] = 40 + 32768 bytes.
//!
//! # Connection
//!
//! Each side sends HELLO, then, once it has the peer's HELLO, AUTH with the MAC of both HELLOs
//! and its role ([`crate::handshake`]). The receiver checks the HELLO (same cluster token, same
//! heartbeat interval, the expected TaskManager, the lower id dials) and verifies the AUTH;
//! nothing but HEARTBEAT and ERROR is admitted between the peer's HELLO and its verified AUTH
//! ([`FrameError::BeforeAuth`]). A refused handshake is answered with `ERROR(3)` and ends the
//! connection; so does a HELLO of another version (the version byte is checked first).
//!
//! A side sends CLOSE when it will open no more jobs and holds no job state for the connection
//! (every job it knows has exchanged its end frames, below); it then sends nothing more. The
//! connection ends once both sides have sent CLOSE. HEARTBEAT keeps an idle connection alive.
//! A connection-level ERROR (deployment 0, code 1 or 3) ends the connection and fails every
//! job on it.
//!
//! # Jobs on a connection
//!
//! Every side that runs a deployment with channels crossing the connection sends
//! JOB_OPEN {deployment, fingerprint, channel count} before any other frame of it; the two
//! JOB_OPENs must agree on fingerprint and channel count, else the receiver fails the job with
//! `ERROR(3)` for that deployment. Frames of a deployment the sender has not opened are a
//! connection error ([`FrameError::JobNotOpened`]), except an end frame (below) of a
//! deployment the receiver has opened. A producer sends nothing on a channel before the
//! consumer's PARTITION_REQUEST for it.
//!
//! A PARTITION_REQUEST (and ADD_CREDIT after it) for a deployment this side has opened the job
//! but not registered yet waits, at most [`crate::remote::MAX_PENDING_REQUESTS`] per connection,
//! until the job is registered here; a deployment opened by only one side for longer than the
//! open timeout fails on the side that notices with `ERROR(4)` (not deployed). Flink retries
//! PartitionNotFound with backoff instead; a bounded wait here needs no retry traffic.
//!
//! Each side ends its part of a deployment with exactly one *end frame*: JOB_CLOSE when every
//! channel of the job on this connection has ended (EndOfPartition sent and received; a
//! JOB_CLOSE while a channel is open is [`FrameError::JobClosedEarly`]), CANCEL (cancelled here),
//! or ERROR with the deployment (failed here: 1 a frame of the job broke the protocol, 2 the job
//! failed, 3 the JOB_OPENs disagree, 4 not deployed). A side that receives the peer's end frame
//! before sending its own answers with JOB_CLOSE. After its end frame a side sends nothing more
//! for the deployment; frames of the peer that were already in flight are read and dropped.
//! Once a side has sent and received an end frame the deployment is gone from the connection.
//! One job's end, failure or cancellation never touches the other jobs on the connection.
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
//! | 6 | `CheckpointBarrier { checkpoint_id, timestamp_ms, kind: Savepoint }` | checkpoint id | timestamp as i64 | 0 |
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
//! reads the 40-byte header, takes a fresh pooled buffer and reads exactly `body_len` bytes to
//! its offset 0. Pool buffers start on a 4 KiB boundary, so every archive is 16-byte aligned in
//! memory and rkyv (`aligned`, `little_endian`, `pointer_width_32`) reads it in place with no
//! fix-up. Offsets in the byte stream therefore never matter, and the stream has no alignment
//! rule. The codec does not look inside the payload: the receiver checks it with
//! [`crate::record::validate_buffer`] (layout and every archive) before it reaches a task.
//!
//! # Versioning
//!
//! Any change to the header or to a body layout bumps [`VERSION`]. A receiver accepts exactly
//! the versions it implements (today only 2) and answers any other with `ERROR(3)`. Version 1
//! had a 32-byte header, one connection per job and the job fingerprint in HELLO.
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
use crate::handshake::{TmId, MAC_BYTES};

pub use crate::fuzz::{fuzz_one, fuzz_session_hello};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"CSNF";
/// The protocol version this build speaks.
pub const VERSION: u8 = 2;
/// Size of every frame header.
pub const HEADER_BYTES: usize = 40;
/// Channel of connection-level and job-level frames.
pub const CONNECTION_CHANNEL: u32 = u32::MAX;
/// Deployment of connection-level frames.
pub const CONNECTION_DEPLOYMENT: u64 = 0;
/// Largest CANCEL reason or ERROR message.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Smallest BUFFER body: the record count and its reserved word.
pub const MIN_BUFFER_BODY_BYTES: usize = 8;
/// Largest frame on the wire: a header and a full buffer.
pub const MAX_FRAME_BYTES: usize = HEADER_BYTES + BUFFER_SIZE;
/// Body of a HELLO.
pub const HELLO_BODY_BYTES: usize = 88;
/// A whole HELLO frame, as the AUTH transcript takes it.
pub const HELLO_FRAME_BYTES: usize = HEADER_BYTES + HELLO_BODY_BYTES;

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
    Auth = 11,
    JobOpen = 12,
    JobClose = 13,
}

/// Which part of the connection a kind concerns, and so which `channel` and `deployment` it
/// carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameLevel {
    /// The connection: no channel, deployment 0.
    Connection,
    /// One job: no channel, a deployment.
    Job,
    /// One channel of one job.
    Channel,
    /// ERROR: the connection (deployment 0) or one job.
    ConnectionOrJob,
}

impl FrameKind {
    pub const ALL: [FrameKind; 13] = [
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
        FrameKind::Auth,
        FrameKind::JobOpen,
        FrameKind::JobClose,
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
            FrameKind::Auth => "AUTH",
            FrameKind::JobOpen => "JOB_OPEN",
            FrameKind::JobClose => "JOB_CLOSE",
        }
    }

    pub fn level(self) -> FrameLevel {
        match self {
            FrameKind::Hello | FrameKind::Auth | FrameKind::Heartbeat | FrameKind::Close => FrameLevel::Connection,
            FrameKind::JobOpen | FrameKind::JobClose | FrameKind::Cancel => FrameLevel::Job,
            FrameKind::PartitionRequest
            | FrameKind::AddCredit
            | FrameKind::Buffer
            | FrameKind::Backlog
            | FrameKind::Event => FrameLevel::Channel,
            FrameKind::Error => FrameLevel::ConnectionOrJob,
        }
    }

    /// Whether frames of this kind use [`CONNECTION_CHANNEL`] rather than one channel.
    pub fn is_connection_level(self) -> bool {
        self.level() != FrameLevel::Channel
    }

    /// Smallest and largest body this kind may declare.
    pub fn body_bytes_range(self) -> (u32, u32) {
        match self {
            FrameKind::Hello => (HELLO_BODY_BYTES as u32, HELLO_BODY_BYTES as u32),
            FrameKind::Auth => (MAC_BYTES as u32, MAC_BYTES as u32),
            FrameKind::Buffer => (MIN_BUFFER_BODY_BYTES as u32, BUFFER_SIZE as u32),
            FrameKind::Event => (EVENT_BODY_BYTES as u32, EVENT_BODY_BYTES as u32),
            FrameKind::Cancel | FrameKind::Error => (0, MAX_TEXT_BYTES as u32),
            FrameKind::PartitionRequest
            | FrameKind::AddCredit
            | FrameKind::Backlog
            | FrameKind::Heartbeat
            | FrameKind::Close
            | FrameKind::JobOpen
            | FrameKind::JobClose => (0, 0),
        }
    }

    /// Whether a channel's consumer sends frames of this kind (PARTITION_REQUEST, ADD_CREDIT).
    pub fn is_sent_by_consumer(self) -> bool {
        matches!(self, FrameKind::PartitionRequest | FrameKind::AddCredit)
    }

    /// Whether a frame of this kind ends the sender's part of a deployment.
    pub fn is_job_end(self) -> bool {
        matches!(self, FrameKind::JobClose | FrameKind::Cancel | FrameKind::Error)
    }

    fn uses_seq(self) -> bool {
        matches!(self, FrameKind::Buffer | FrameKind::Event)
    }

    fn uses_arg(self) -> bool {
        matches!(
            self,
            FrameKind::PartitionRequest
                | FrameKind::AddCredit
                | FrameKind::Buffer
                | FrameKind::Backlog
                | FrameKind::Event
                | FrameKind::Error
                | FrameKind::JobOpen
        )
    }

    fn uses_arg64(self) -> bool {
        matches!(self, FrameKind::Event | FrameKind::JobOpen)
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
    /// The sender received a frame that broke the protocol: for the connection (deployment 0)
    /// or for one job's frames.
    Protocol = 1,
    /// The job failed at the sender (needs a deployment).
    JobFailed = 2,
    /// The handshake failed (deployment 0: cluster token, MAC, version, heartbeat, peer id), or
    /// the two JOB_OPENs of a deployment disagree (fingerprint, channel count).
    HandshakeMismatch = 3,
    /// The deployment was not registered at the sender within its open timeout (needs a
    /// deployment).
    NotDeployed = 4,
}

impl ErrorCode {
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(ErrorCode::Protocol),
            2 => Some(ErrorCode::JobFailed),
            3 => Some(ErrorCode::HandshakeMismatch),
            4 => Some(ErrorCode::NotDeployed),
            _ => None,
        }
    }

    pub fn code(self) -> u32 {
        self as u32
    }

    /// Whether an ERROR with this code must name a deployment.
    pub fn needs_job(self) -> bool {
        matches!(self, ErrorCode::JobFailed | ErrorCode::NotDeployed)
    }
}

/// A frame the codec or the session refuses, naming what it saw. Every variant is a protocol
/// error of the peer (or, from an encoder, a message no peer would accept): retrying the same
/// bytes cannot help.
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
        "{kind} frame on channel {channel:#x}: connection- and job-level kinds use channel 0xffffffff, channel kinds any other"
    )]
    BadChannel { kind: FrameKind, channel: u32 },
    #[error(
        "{kind} frame with deployment {deployment:#018x}: connection-level kinds use deployment 0, job and channel kinds any other"
    )]
    BadDeployment { kind: FrameKind, deployment: u64 },
    #[error("{kind} frame with {field} = {value}, which must be 0 for this kind")]
    ReservedField { kind: FrameKind, field: &'static str, value: u64 },
    #[error("{kind} frame on channel {channel} grants 0 credits (at least 1 required)")]
    ZeroCredit { kind: FrameKind, channel: u32 },
    #[error("JOB_OPEN of deployment {deployment:#018x} declares 0 channels")]
    NoChannels { deployment: u64 },
    #[error("ERROR frame with unknown error code {code}")]
    UnknownErrorCode { code: u32 },
    #[error("ERROR code {code} concerns one job but the frame names no deployment")]
    ErrorCodeNeedsJob { code: u32 },
    #[error("{kind} frame text is not UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 { kind: FrameKind, valid_up_to: usize },
    #[error("unknown event code {code}")]
    UnknownEvent { code: u32 },
    #[error("invalid event (code {code}): {reason}")]
    InvalidEvent { code: u32, reason: &'static str },
    // Connection state (checked by `remote::PeerSession` before a frame's body is read).
    #[error("{kind} frame before the peer's HELLO")]
    MissingHello { kind: FrameKind },
    #[error("second HELLO from the peer")]
    UnexpectedHello,
    #[error("{kind} frame before the peer's AUTH was verified")]
    BeforeAuth { kind: FrameKind },
    #[error("second AUTH from the peer")]
    UnexpectedAuth,
    #[error("{kind} frame after the peer's CLOSE")]
    AfterClose { kind: FrameKind },
    #[error("CLOSE while {open_jobs} deployments the peer opened have not ended")]
    ClosedEarly { open_jobs: u32 },
    #[error("the peer opened more than {limit} deployments on one connection")]
    TooManyJobs { limit: usize },
    #[error("the peer sent more than {limit} PARTITION_REQUESTs for jobs not registered here yet")]
    TooManyPending { limit: usize },
    #[error("{kind} frame for deployment {deployment:#018x}, which the peer has not opened")]
    JobNotOpened { kind: FrameKind, deployment: u64 },
    #[error("second JOB_OPEN for deployment {deployment:#018x}")]
    DuplicateJobOpen { deployment: u64 },
    #[error("{kind} frame for deployment {deployment:#018x} after the peer ended it")]
    AfterJobEnd { kind: FrameKind, deployment: u64 },
    // One job's state: the session fails that job alone (ERROR with its deployment).
    #[error("JOB_OPEN disagrees: {field} is {found} at the peer, {expected} here")]
    JobMismatch { field: &'static str, expected: u64, found: u64 },
    #[error("JOB_CLOSE while {open_channels} channels of the job on this connection have not ended")]
    JobClosedEarly { open_channels: u32 },
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
    pub deployment: u64,
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
        out[32..40].copy_from_slice(&self.deployment.to_le_bytes());
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

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// Parses and checks a frame header: everything the protocol says about a header that needs no
/// session state (magic, version, kind, flags, per-kind body length and maximum, channel and
/// deployment level, zero fields, credit, channel count, error code). A streaming reader calls
/// this before reading the body.
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
        deployment: le_u64(bytes, 32),
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
    let deployment_ok = match h.kind.level() {
        FrameLevel::Connection => h.deployment == CONNECTION_DEPLOYMENT,
        FrameLevel::Job | FrameLevel::Channel => h.deployment != CONNECTION_DEPLOYMENT,
        FrameLevel::ConnectionOrJob => true,
    };
    if !deployment_ok {
        return Err(FrameError::BadDeployment { kind: h.kind, deployment: h.deployment });
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
        FrameKind::JobOpen if h.arg == 0 => Err(FrameError::NoChannels { deployment: h.deployment }),
        FrameKind::Error => match ErrorCode::from_code(h.arg) {
            None => Err(FrameError::UnknownErrorCode { code: h.arg }),
            Some(code) if code.needs_job() && h.deployment == CONNECTION_DEPLOYMENT => {
                Err(FrameError::ErrorCodeNeedsJob { code: h.arg })
            }
            Some(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The first frame each side sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    /// The sending TaskManager process.
    pub tm: TmId,
    /// The token of the sender's cluster; the receiver refuses another cluster's.
    pub cluster_token: [u8; MAC_BYTES],
    /// Fresh per connection: makes the AUTH transcript unique.
    pub nonce: [u8; MAC_BYTES],
    pub pid: u32,
    /// Interval after which an idle side sends HEARTBEAT; both sides must agree.
    pub heartbeat_ms: u32,
}

/// One decoded frame. Borrowed parts (payload, text) point into the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Hello(Hello),
    Auth {
        mac: [u8; MAC_BYTES],
    },
    JobOpen {
        deployment: u64,
        fingerprint: u64,
        channels: u32,
    },
    JobClose {
        deployment: u64,
    },
    PartitionRequest {
        deployment: u64,
        channel: u32,
        initial_credit: u32,
    },
    AddCredit {
        deployment: u64,
        channel: u32,
        credit: u32,
    },
    Buffer {
        deployment: u64,
        channel: u32,
        seq: u32,
        backlog: u32,
        payload: &'a [u8],
    },
    Backlog {
        deployment: u64,
        channel: u32,
        backlog: u32,
    },
    Event {
        deployment: u64,
        channel: u32,
        seq: u32,
        event: Event,
    },
    Heartbeat,
    Cancel {
        deployment: u64,
        reason: &'a str,
    },
    Close,
    /// `deployment` 0: the connection failed; otherwise that job did.
    Error {
        deployment: u64,
        code: ErrorCode,
        message: &'a str,
    },
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

    /// The frame with its body copied inline, if it fits there (every kind but BUFFER, and
    /// CANCEL or ERROR with more than 88 bytes of text).
    pub fn to_static(&self) -> Option<EncodedFrame<'static>> {
        let body = self.body();
        let mut bytes = [0u8; HELLO_BODY_BYTES];
        bytes.get_mut(..body.len())?.copy_from_slice(body);
        Some(EncodedFrame { header: self.header, body: Body::Inline { bytes, len: body.len() } })
    }
}

impl<'a> Message<'a> {
    pub fn kind(&self) -> FrameKind {
        match self {
            Message::Hello(_) => FrameKind::Hello,
            Message::Auth { .. } => FrameKind::Auth,
            Message::JobOpen { .. } => FrameKind::JobOpen,
            Message::JobClose { .. } => FrameKind::JobClose,
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
            _ => CONNECTION_CHANNEL,
        }
    }

    /// The deployment of a job- or channel-level message (or of a job's ERROR); 0 for the
    /// others.
    pub fn deployment(&self) -> u64 {
        match *self {
            Message::JobOpen { deployment, .. }
            | Message::JobClose { deployment }
            | Message::PartitionRequest { deployment, .. }
            | Message::AddCredit { deployment, .. }
            | Message::Buffer { deployment, .. }
            | Message::Backlog { deployment, .. }
            | Message::Event { deployment, .. }
            | Message::Cancel { deployment, .. }
            | Message::Error { deployment, .. } => deployment,
            Message::Hello(_) | Message::Auth { .. } | Message::Heartbeat | Message::Close => CONNECTION_DEPLOYMENT,
        }
    }

    /// Encodes the message, refusing exactly what a receiver would refuse: the header goes
    /// through the same checks as [`decode_header`].
    pub fn encode(&self) -> Result<EncodedFrame<'a>, FrameError> {
        let kind = self.kind();
        let mut header = FrameHeader {
            kind,
            flags: 0,
            body_len: 0,
            channel: self.channel(),
            seq: 0,
            arg: 0,
            arg64: 0,
            deployment: self.deployment(),
        };
        let mut inline = [0u8; HELLO_BODY_BYTES];
        let body = match *self {
            Message::Hello(hello) => {
                inline[0..16].copy_from_slice(&hello.tm.0);
                inline[16..48].copy_from_slice(&hello.cluster_token);
                inline[48..80].copy_from_slice(&hello.nonce);
                inline[80..84].copy_from_slice(&hello.pid.to_le_bytes());
                inline[84..88].copy_from_slice(&hello.heartbeat_ms.to_le_bytes());
                Body::Inline { bytes: inline, len: HELLO_BODY_BYTES }
            }
            Message::Auth { mac } => {
                inline[..MAC_BYTES].copy_from_slice(&mac);
                Body::Inline { bytes: inline, len: MAC_BYTES }
            }
            Message::JobOpen { fingerprint, channels, .. } => {
                header.arg = channels;
                header.arg64 = fingerprint;
                Body::Borrowed(&[])
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
            Message::Heartbeat | Message::Close | Message::JobClose { .. } => Body::Borrowed(&[]),
            Message::Cancel { reason, .. } => Body::Borrowed(reason.as_bytes()),
            Message::Error { code, message, .. } => {
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
const EVENT_SAVEPOINT_BARRIER: u32 = 6;

impl WireEvent {
    fn from_event(event: &Event) -> Self {
        let flags = if event.is_priority() { PRIORITY_FLAG } else { 0 };
        let (code, a, b) = match *event {
            Event::EndOfPartition => (EVENT_END_OF_PARTITION, 0, 0),
            Event::Watermark(ts) => (EVENT_WATERMARK, ts as u64, 0),
            Event::WatermarkStatus(WatermarkStatus::Active) => (EVENT_WATERMARK_STATUS, 0, 0),
            Event::WatermarkStatus(WatermarkStatus::Idle) => (EVENT_WATERMARK_STATUS, 1, 0),
            Event::CheckpointBarrier { checkpoint_id, timestamp_ms, kind: BarrierKind::Savepoint } => {
                (EVENT_SAVEPOINT_BARRIER, checkpoint_id, timestamp_ms as u64)
            }
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
            EVENT_SAVEPOINT_BARRIER => {
                Event::CheckpointBarrier { checkpoint_id: a, timestamp_ms: b as i64, kind: BarrierKind::Savepoint }
            }
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
    let (deployment, channel) = (header.deployment, header.channel);
    Ok(match header.kind {
        FrameKind::Hello => Message::Hello(Hello {
            tm: TmId(array(body, 0)),
            cluster_token: array(body, 16),
            nonce: array(body, 48),
            pid: le_u32(body, 80),
            heartbeat_ms: le_u32(body, 84),
        }),
        FrameKind::Auth => Message::Auth { mac: array(body, 0) },
        FrameKind::JobOpen => Message::JobOpen { deployment, fingerprint: header.arg64, channels: header.arg },
        FrameKind::JobClose => Message::JobClose { deployment },
        FrameKind::PartitionRequest => Message::PartitionRequest { deployment, channel, initial_credit: header.arg },
        FrameKind::AddCredit => Message::AddCredit { deployment, channel, credit: header.arg },
        FrameKind::Buffer => {
            Message::Buffer { deployment, channel, seq: header.seq, backlog: header.arg, payload: body }
        }
        FrameKind::Backlog => Message::Backlog { deployment, channel, backlog: header.arg },
        FrameKind::Event => {
            let wire = WireEvent { code: header.arg, a: header.arg64, b: le_u64(body, 0), flags: header.flags };
            Message::Event { deployment, channel, seq: header.seq, event: wire.into_event()? }
        }
        FrameKind::Heartbeat => Message::Heartbeat,
        FrameKind::Cancel => Message::Cancel { deployment, reason: text(FrameKind::Cancel, body)? },
        FrameKind::Close => Message::Close,
        FrameKind::Error => Message::Error {
            deployment,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::fuzz_codec;
    use proptest::prelude::*;

    const D: u64 = 0x0123_4567_89ab_cdef;

    fn hello() -> Hello {
        Hello { tm: TmId([7; 16]), cluster_token: [0xc1; 32], nonce: [0x9e; 32], pid: 4242, heartbeat_ms: 1000 }
    }

    fn every_kind<'a>(payload: &'a [u8]) -> Vec<Message<'a>> {
        vec![
            Message::Hello(hello()),
            Message::PartitionRequest { deployment: D, channel: 3, initial_credit: 2 },
            Message::AddCredit { deployment: D, channel: 0, credit: 1 },
            Message::Buffer { deployment: D, channel: 5, seq: 17, backlog: 3, payload },
            Message::Backlog { deployment: D, channel: 5, backlog: 0 },
            Message::Event { deployment: D, channel: 2, seq: 18, event: Event::Watermark(-5) },
            Message::Heartbeat,
            Message::Cancel { deployment: D, reason: "job cancelled by the user" },
            Message::Close,
            Message::Error { deployment: D, code: ErrorCode::JobFailed, message: "task 3 failed: division by zero" },
            Message::Auth { mac: [0xa5; 32] },
            Message::JobOpen { deployment: D, fingerprint: 0xfeed, channels: 12 },
            Message::JobClose { deployment: D },
        ]
    }

    /// A valid header of `kind` with the smallest body.
    fn header(kind: FrameKind) -> FrameHeader {
        let (min, _) = kind.body_bytes_range();
        let channel = if kind.is_connection_level() { CONNECTION_CHANNEL } else { 0 };
        let arg = match kind {
            FrameKind::PartitionRequest | FrameKind::AddCredit | FrameKind::Error | FrameKind::JobOpen => 1,
            _ => 0,
        };
        let deployment = if kind.level() == FrameLevel::Connection { 0 } else { D };
        FrameHeader { kind, flags: 0, body_len: min, channel, seq: 0, arg, arg64: 0, deployment }
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
        assert_eq!(messages.iter().map(Message::kind).collect::<Vec<_>>().len(), FrameKind::ALL.len());
        for kind in FrameKind::ALL {
            assert!(messages.iter().any(|m| m.kind() == kind), "{kind} is covered");
            assert_eq!(FrameKind::from_id(kind.id()), Some(kind));
        }
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
            match frame.to_static() {
                Some(owned) => assert_eq!([&owned.header()[..], owned.body()].concat(), joined),
                None => assert!(frame.body().len() > HELLO_BODY_BYTES, "{m:?}"),
            }
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
            deployment: 0x1112_1314_1516_1718,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[0..6], b"CSNF\x02\x04");
        assert_eq!(&bytes[6..8], &[0, 0]);
        assert_eq!(&bytes[8..12], &[0x02, 0x01, 0, 0]);
        assert_eq!(&bytes[12..16], &[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(&bytes[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&bytes[20..24], &[0x88, 0x77, 0x66, 0x55]);
        assert_eq!(&bytes[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[32..40], &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
    }

    #[test]
    fn hello_body_layout_is_fixed() {
        let frame = Message::Hello(hello()).encode().unwrap();
        assert_eq!(frame.len(), HELLO_FRAME_BYTES);
        let body = frame.body();
        assert_eq!(&body[0..16], &[7; 16]);
        assert_eq!(&body[16..48], &[0xc1; 32]);
        assert_eq!(&body[48..80], &[0x9e; 32]);
        assert_eq!(&body[80..84], &4242u32.to_le_bytes());
        assert_eq!(&body[84..88], &1000u32.to_le_bytes());
        let h = decode_header(frame.header()).unwrap();
        assert_eq!((h.arg, h.arg64, h.deployment, h.channel), (0, 0, 0, CONNECTION_CHANNEL));
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let mut bytes = header(FrameKind::Heartbeat).encode();
        bytes[0..4].copy_from_slice(b"HTTP");
        assert_eq!(decode_header(&bytes), Err(FrameError::BadMagic { found: *b"HTTP" }));
        let mut bytes = header(FrameKind::Heartbeat).encode();
        bytes[4] = 1;
        let err = decode_header(&bytes).unwrap_err();
        assert_eq!(err, FrameError::UnsupportedVersion { found: 1, supported: 2 });
        assert_eq!(err.to_string(), "peer speaks protocol version 1, this build speaks 2");
    }

    #[test]
    fn unknown_kinds_are_refused() {
        for id in [0u8, 14, 200, 255] {
            let mut bytes = header(FrameKind::Heartbeat).encode();
            bytes[5] = id;
            assert_eq!(decode_header(&bytes), Err(FrameError::UnknownKind { kind: id }));
        }
    }

    #[test]
    fn reserved_flag_bits_are_refused() {
        for kind in FrameKind::ALL.into_iter().filter(|k| *k != FrameKind::Event) {
            let h = FrameHeader { flags: 1, ..header(kind) };
            assert_eq!(decode_header(&h.encode()), Err(FrameError::ReservedBits { kind, flags: 1 }));
        }
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
            Message::Cancel { deployment: D, reason: &long }.encode().unwrap_err(),
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
            Message::Buffer { deployment: D, channel: 0, seq: 0, backlog: 0, payload: &payload }.encode(),
            Err(FrameError::BadLength { len: 4, .. })
        ));
    }

    #[test]
    fn truncated_input_is_length_past_end() {
        let event = Message::Event { deployment: D, channel: 1, seq: 0, event: Event::EndOfPartition };
        let bytes = event.encode().unwrap();
        let mut whole = Vec::new();
        bytes.write_to(&mut whole);
        assert_eq!(decode_frame(&whole[..10]), Err(FrameError::LengthPastEnd { len: 40, available: 10 }));
        assert_eq!(decode_frame(&whole[..43]), Err(FrameError::LengthPastEnd { len: 48, available: 43 }));
        assert_eq!(decode_frame(&[]), Err(FrameError::LengthPastEnd { len: 40, available: 0 }));
        let h = FrameHeader { body_len: 100, ..header(FrameKind::Buffer) };
        let input = frame(h, &[0; 50]);
        assert_eq!(decode_frame(&input), Err(FrameError::LengthPastEnd { len: 140, available: 90 }));
    }

    #[test]
    fn channel_and_deployment_levels_are_checked() {
        for kind in FrameKind::ALL {
            let wrong_channel = if kind.is_connection_level() { 0 } else { CONNECTION_CHANNEL };
            let h = FrameHeader { channel: wrong_channel, ..header(kind) };
            assert_eq!(decode_header(&h.encode()), Err(FrameError::BadChannel { kind, channel: wrong_channel }));
            let wrong_deployment = match kind.level() {
                FrameLevel::Connection => Some(D),
                FrameLevel::Job | FrameLevel::Channel => Some(0),
                FrameLevel::ConnectionOrJob => None,
            };
            if let Some(deployment) = wrong_deployment {
                let h = FrameHeader { deployment, ..header(kind) };
                assert_eq!(decode_header(&h.encode()), Err(FrameError::BadDeployment { kind, deployment }), "{kind}");
            }
        }
        let conn_error = FrameHeader { deployment: 0, ..header(FrameKind::Error) };
        assert!(decode_header(&conn_error.encode()).is_ok(), "ERROR may concern the connection");
        assert!(decode_header(&header(FrameKind::Error).encode()).is_ok(), "or one job");
    }

    #[test]
    fn zero_fields_credit_channels_and_error_codes_are_checked() {
        let h = FrameHeader { seq: 4, ..header(FrameKind::Backlog) };
        let want = FrameError::ReservedField { kind: FrameKind::Backlog, field: "seq", value: 4 };
        assert_eq!(decode_header(&h.encode()), Err(want));
        let h = FrameHeader { arg64: 9, ..header(FrameKind::Buffer) };
        let want = FrameError::ReservedField { kind: FrameKind::Buffer, field: "arg64", value: 9 };
        assert_eq!(decode_header(&h.encode()), Err(want));
        for kind in [FrameKind::Close, FrameKind::Hello, FrameKind::Auth, FrameKind::JobClose, FrameKind::Cancel] {
            let h = FrameHeader { arg: 1, ..header(kind) };
            assert!(
                matches!(decode_header(&h.encode()), Err(FrameError::ReservedField { field: "arg", .. })),
                "{kind}"
            );
            let h = FrameHeader { arg64: 1, ..header(kind) };
            assert!(
                matches!(decode_header(&h.encode()), Err(FrameError::ReservedField { field: "arg64", .. })),
                "{kind}"
            );
        }
        let h = FrameHeader { arg: 0, channel: 6, ..header(FrameKind::AddCredit) };
        assert_eq!(decode_header(&h.encode()), Err(FrameError::ZeroCredit { kind: FrameKind::AddCredit, channel: 6 }));
        assert_eq!(
            Message::PartitionRequest { deployment: D, channel: 2, initial_credit: 0 }.encode().unwrap_err(),
            FrameError::ZeroCredit { kind: FrameKind::PartitionRequest, channel: 2 }
        );
        let h = FrameHeader { arg: 0, ..header(FrameKind::JobOpen) };
        assert_eq!(decode_header(&h.encode()), Err(FrameError::NoChannels { deployment: D }));
        let h = FrameHeader { arg: 5, ..header(FrameKind::Error) };
        assert_eq!(decode_header(&h.encode()), Err(FrameError::UnknownErrorCode { code: 5 }));
        for code in [ErrorCode::JobFailed, ErrorCode::NotDeployed] {
            let h = FrameHeader { arg: code.code(), deployment: 0, ..header(FrameKind::Error) };
            assert_eq!(decode_header(&h.encode()), Err(FrameError::ErrorCodeNeedsJob { code: code.code() }));
            let m = Message::Error { deployment: 0, code, message: "" };
            assert_eq!(m.encode().unwrap_err(), FrameError::ErrorCodeNeedsJob { code: code.code() });
        }
        for code in [ErrorCode::Protocol, ErrorCode::HandshakeMismatch] {
            assert!(Message::Error { deployment: 0, code, message: "" }.encode().is_ok());
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
    }

    #[test]
    fn text_must_be_utf8() {
        let h = FrameHeader { body_len: 4, ..header(FrameKind::Cancel) };
        let input = frame(h, &[b'o', b'k', 0xff, b'!']);
        assert_eq!(decode_frame(&input), Err(FrameError::InvalidUtf8 { kind: FrameKind::Cancel, valid_up_to: 2 }));
        let long = "é".repeat(MAX_TEXT_BYTES);
        let cut = truncate_text(&long);
        assert_eq!(cut.len(), MAX_TEXT_BYTES);
        assert!(Message::Error { deployment: 0, code: ErrorCode::Protocol, message: cut }.encode().is_ok());
    }

    fn event_frame(code: u32, a: u64, b: u64, flags: u16) -> Vec<u8> {
        let h = FrameHeader {
            kind: FrameKind::Event,
            flags,
            body_len: 8,
            channel: 1,
            seq: 0,
            arg: code,
            arg64: a,
            deployment: D,
        };
        frame(h, &b.to_le_bytes())
    }

    #[test]
    fn malformed_events_are_named() {
        assert_eq!(decode_frame(&event_frame(0, 0, 0, 0)), Err(FrameError::UnknownEvent { code: 0 }));
        assert_eq!(decode_frame(&event_frame(7, 0, 0, 0)), Err(FrameError::UnknownEvent { code: 7 }));
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
        invalid(6, 5, 0, 1);
        invalid(1, 0, 0, 1);
        let barrier = event_frame(4, 7, 99, 1);
        let (m, _) = decode_frame(&barrier).unwrap();
        let unaligned = Event::CheckpointBarrier { checkpoint_id: 7, timestamp_ms: 99, kind: BarrierKind::Unaligned };
        assert_eq!(m, Message::Event { deployment: D, channel: 1, seq: 0, event: unaligned });
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
            (any::<u64>(), any::<i64>(), 0..3u8).prop_map(|(checkpoint_id, timestamp_ms, kind)| {
                let kind = [BarrierKind::Aligned, BarrierKind::Unaligned, BarrierKind::Savepoint][kind as usize];
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
        Auth([u8; 32]),
        JobOpen(u64, u64, u32),
        JobClose(u64),
        PartitionRequest(u64, u32, u32),
        AddCredit(u64, u32, u32),
        Buffer(u64, u32, u32, u32, Vec<u8>),
        Backlog(u64, u32, u32),
        Event(u64, u32, u32, Event),
        Heartbeat,
        Cancel(u64, String),
        Close,
        Error(u64, ErrorCode, String),
    }

    impl Owned {
        fn message(&self) -> Message<'_> {
            match self {
                Owned::Hello(h) => Message::Hello(*h),
                Owned::Auth(mac) => Message::Auth { mac: *mac },
                &Owned::JobOpen(deployment, fingerprint, channels) => {
                    Message::JobOpen { deployment, fingerprint, channels }
                }
                &Owned::JobClose(deployment) => Message::JobClose { deployment },
                &Owned::PartitionRequest(deployment, channel, initial_credit) => {
                    Message::PartitionRequest { deployment, channel, initial_credit }
                }
                &Owned::AddCredit(deployment, channel, credit) => Message::AddCredit { deployment, channel, credit },
                Owned::Buffer(deployment, channel, seq, backlog, payload) => Message::Buffer {
                    deployment: *deployment,
                    channel: *channel,
                    seq: *seq,
                    backlog: *backlog,
                    payload,
                },
                &Owned::Backlog(deployment, channel, backlog) => Message::Backlog { deployment, channel, backlog },
                &Owned::Event(deployment, channel, seq, event) => Message::Event { deployment, channel, seq, event },
                Owned::Heartbeat => Message::Heartbeat,
                Owned::Cancel(deployment, reason) => Message::Cancel { deployment: *deployment, reason },
                Owned::Close => Message::Close,
                Owned::Error(deployment, code, message) => {
                    Message::Error { deployment: *deployment, code: *code, message }
                }
            }
        }
    }

    fn any_text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("(.|\n){0,300}").expect("regex")
    }

    fn any_message() -> impl Strategy<Value = Owned> {
        let channel = 0..CONNECTION_CHANNEL;
        let credit = 1..=u32::MAX;
        let d = 1..=u64::MAX;
        let code = prop_oneof![
            Just(ErrorCode::Protocol),
            Just(ErrorCode::JobFailed),
            Just(ErrorCode::HandshakeMismatch),
            Just(ErrorCode::NotDeployed)
        ];
        prop_oneof![
            (any::<[u8; 16]>(), any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u32>(), any::<u32>()).prop_map(
                |(tm, cluster_token, nonce, pid, heartbeat_ms)| Owned::Hello(Hello {
                    tm: TmId(tm),
                    cluster_token,
                    nonce,
                    pid,
                    heartbeat_ms
                })
            ),
            any::<[u8; 32]>().prop_map(Owned::Auth),
            (d.clone(), any::<u64>(), 1..=u32::MAX).prop_map(|(d, f, c)| Owned::JobOpen(d, f, c)),
            d.clone().prop_map(Owned::JobClose),
            (d.clone(), channel.clone(), credit.clone()).prop_map(|(d, c, n)| Owned::PartitionRequest(d, c, n)),
            (d.clone(), channel.clone(), credit).prop_map(|(d, c, n)| Owned::AddCredit(d, c, n)),
            (d.clone(), channel.clone(), any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 8..=600))
                .prop_map(|(d, c, s, b, p)| Owned::Buffer(d, c, s, b, p)),
            (d.clone(), channel.clone(), any::<u32>()).prop_map(|(d, c, b)| Owned::Backlog(d, c, b)),
            (d.clone(), channel, any::<u32>(), any_event()).prop_map(|(d, c, s, e)| Owned::Event(d, c, s, e)),
            Just(Owned::Heartbeat),
            (d.clone(), any_text()).prop_map(|(d, t)| Owned::Cancel(d, truncate_text(&t).to_string())),
            Just(Owned::Close),
            (prop_oneof![Just(0u64), d], code, any_text()).prop_map(|(d, code, t)| {
                let d = if code.needs_job() { d.max(1) } else { d };
                Owned::Error(d, code, truncate_text(&t).to_string())
            }),
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
            kind_index in 0usize..13,
            flags in any::<u16>(),
            body_len in any::<u32>(),
            channel in any::<u32>(),
            seq in any::<u32>(),
            arg in any::<u32>(),
            arg64 in any::<u64>(),
            deployment in any::<u64>(),
        ) {
            let h = FrameHeader { kind: FrameKind::ALL[kind_index], flags, body_len, channel, seq, arg, arg64, deployment };
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
        fn events_round_trip(event in any_event(), channel in 0..CONNECTION_CHANNEL, seq in any::<u32>(), d in 1..=u64::MAX) {
            let m = Message::Event { deployment: d, channel, seq, event };
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
            let mut after = vec![crate::fuzz::AFTER_HANDSHAKE];
            after.extend_from_slice(&framed);
            let _ = fuzz_one(&after);
        }
    }
}
