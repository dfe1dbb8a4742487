//! The body of the frame-decoder fuzz target (`netstack/fuzz/`, [`fuzz_one`]) and what its
//! seeds need: a byte stream plays the dialing TaskManager against one acceptor session that
//! has two jobs registered, through the decoder, the handshake, the job and channel checks and
//! buffer validation. Not part of the API (hidden from the docs); the test suite replays the
//! committed corpus and runs a bounded mutation loop over the same entry point
//! (`netstack/tests/frame_fuzz.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::credit::{ChannelItem, CreditConfig, InputGate, LocalChannel, OutputChannel};
use crate::doorbell::Doorbell;
use crate::error::BufferError;
use crate::event::Event;
use crate::handshake::{auth_mac, ClusterAuth, Role, TmId};
use crate::pool::BufferPool;
use crate::record::{deserialize, validate_buffer, BufferValidator, Data, RecordIter, RecordWriter, Written};
use crate::remote::{JobEnd, JobSpec, LocalIdentity, PeerSession, SessionConfig, SessionError};
use crate::wire::{decode_body, decode_frame, decode_header, FrameError, Hello, Message, HEADER_BYTES};

/// The first job of the fuzz session: 7 channels, inbound 0..=4 (records `(u64, u64)`,
/// `String`, `(String, u64)`, `Vec<u8>`, a private enum; 2 exclusive credits each, 4
/// floating), outbound 5 and 6 (two buffers and EndOfPartition each, waiting for credit).
pub const FUZZ_JOB: u64 = 0x5eed_f00d_cafe_0001;
pub const FUZZ_JOB_FINGERPRINT: u64 = 0xf1f0_0000_0000_0001;
pub const FUZZ_JOB_CHANNELS: u32 = 7;
/// The second job: 2 channels, inbound 0 (`(u64, u64)`), outbound 1 (one buffer and
/// EndOfPartition). Its channel ids overlap the first job's.
pub const FUZZ_JOB_2: u64 = 0x5eed_f00d_cafe_0002;
pub const FUZZ_JOB_2_FINGERPRINT: u64 = 0xf1f0_0000_0000_0002;
pub const FUZZ_JOB_2_CHANNELS: u32 = 2;

/// An input that starts with this byte is played after a valid handshake (the input's HELLO
/// and AUTH are prepended), so mutations spend themselves on jobs and channels rather than on
/// a MAC they cannot forge.
pub const AFTER_HANDSHAKE: u8 = b'+';

const FUZZ_OUTBOUND: [u32; 2] = [5, 6];
const FUZZ_SESSION_BUFFERS: u32 = 32;
const FUZZ_SECRET: &[u8] = b"fuzz cluster secret";

fn auth() -> ClusterAuth {
    ClusterAuth::new([0x7c; 32], Some(FUZZ_SECRET))
}

/// The HELLO the input sends as TaskManager `11…11` (the dialer) of the fuzz cluster.
pub fn fuzz_session_hello() -> Hello {
    Hello { tm: TmId([0x11; 16]), cluster_token: [0x7c; 32], nonce: [0x33; 32], pid: 31337, heartbeat_ms: 1000 }
}

fn local_hello() -> Hello {
    Hello { tm: TmId([0x22; 16]), nonce: [0x44; 32], pid: 1, ..fuzz_session_hello() }
}

fn frame_bytes(message: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    message.encode_into(&mut out).expect("fuzz handshake frames encode");
    out
}

/// The input's HELLO and a valid AUTH for the fuzz session.
pub fn fuzz_handshake() -> Vec<u8> {
    let peer = frame_bytes(&Message::Hello(fuzz_session_hello()));
    let local = frame_bytes(&Message::Hello(local_hello()));
    let mac = auth_mac(&auth(), &peer, &local, Role::Dialer);
    [peer, frame_bytes(&Message::Auth { mac })].concat()
}

/// The first refusal a fuzz input met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The decoder or the session refused a frame: the connection would end.
    Connection(SessionError),
    /// One job's frames were refused (or its JOB_OPENs disagreed): that job failed, the
    /// connection went on.
    Job { deployment: u64, error: FrameError },
}

impl From<FrameError> for Refusal {
    fn from(e: FrameError) -> Self {
        Refusal::Connection(SessionError::Protocol(e))
    }
}

/// Fuzz entry point: decodes frames one after another until the input ends or a frame is
/// refused, checks what the decoder returns and feeds every frame to the fuzz session as a
/// peer would. It must never panic on any input; a panic is a bug of the codec or the session
/// (or of the checks here, which hold for every accepted frame):
/// - every accepted frame encodes back to exactly the bytes it was decoded from;
/// - every BUFFER payload is copied to offset 0 of a pooled buffer, as a receiver does, and
///   checked with [`validate_buffer`] as each of several record types; whatever validates is
///   iterated in place and deserialized, so a hole in validation becomes a crash here (or an
///   ASan report under libFuzzer) rather than undefined behaviour in a task;
/// - the session is the acceptor of [`fuzz_session_hello`]'s cluster (with a secret) and has
///   [`FUZZ_JOB`] and [`FUZZ_JOB_2`] registered; their consumers read (in place and
///   deserialized) and return credit whenever a HEARTBEAT arrives, so the input also decides
///   the consumers' speed. After every frame the session writes what it would send, which must
///   decode again; each job's end is reported at most once;
/// - every pooled buffer is back in the pool at the end, on every path.
///
/// An input starting with [`AFTER_HANDSHAKE`] is played after [`fuzz_handshake`]. Returns the
/// number of frames decoded, or the first refusal (the session goes on after a job's).
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) -> Result<usize, Refusal> {
    thread_local! {
        static POOLS: (BufferPool, BufferPool) = (BufferPool::new(2), BufferPool::new(FUZZ_SESSION_BUFFERS));
    }
    let owned;
    let data = match data.split_first() {
        Some((&AFTER_HANDSHAKE, rest)) => {
            owned = [fuzz_handshake(), rest.to_vec()].concat();
            &owned[..]
        }
        _ => data,
    };
    POOLS.with(|(codec_pool, session_pool)| {
        let outcome = fuzz_session(codec_pool, session_pool, data);
        assert_eq!(codec_pool.in_use(), 0, "a pooled buffer was not returned after decoding");
        assert_eq!(session_pool.in_use(), 0, "the session or its channels kept a pooled buffer");
        outcome
    })
}

struct FuzzJob {
    gate: InputGate,
    outputs: Vec<OutputChannel>,
    readers: Vec<BufferValidator>,
}

struct FuzzSide {
    session: PeerSession,
    jobs: Vec<FuzzJob>,
    reported: Vec<u64>,
}

fn fuzz_job(
    session: &mut PeerSession,
    pool: &BufferPool,
    (deployment, fingerprint, channels): (u64, u64, u32),
    inbound: &[(BufferValidator, BufferValidator)],
    outbound: &[u32],
    buffers_each: u64,
) -> FuzzJob {
    let config = CreditConfig { exclusive_per_channel: 2, floating_per_gate: 4, max_backlog_per_channel: 2 };
    let bell = Arc::new(Doorbell::new());
    let mut spec = JobSpec::new(deployment, fingerprint, channels, bell.clone());
    let mut gate_channels = Vec::new();
    for (id, (validator, _)) in inbound.iter().enumerate() {
        let ch = LocalChannel::new_remote_in(config.exclusive_per_channel, bell.clone(), bell.clone());
        spec.add_inbound(id as u32, ch.clone(), *validator);
        gate_channels.push(ch);
    }
    let mut outputs = Vec::new();
    for &id in outbound {
        let ch = LocalChannel::new_remote_out(bell.clone(), bell.clone());
        spec.add_outbound(id, ch.clone());
        let mut output = OutputChannel::new(ch, &config);
        for i in 0..buffers_each {
            let mut buf = pool.take().expect("the fuzz pool holds the outbound buffers");
            let written = RecordWriter::new().write(&mut buf, &(u64::from(id), i)).expect("a pair fits");
            assert_eq!(written, Written::Done);
            output.send_buffer(buf.freeze());
        }
        output.send_event(Event::EndOfPartition);
        outputs.push(output);
    }
    session.register_job(spec).expect("the fuzz jobs are valid");
    FuzzJob {
        gate: InputGate::new(gate_channels, &config),
        outputs,
        readers: inbound.iter().map(|(_, reader)| *reader).collect(),
    }
}

impl FuzzSide {
    fn new(pool: &BufferPool) -> Self {
        let local = local_hello();
        let config = SessionConfig {
            identity: LocalIdentity { tm: local.tm, pid: local.pid, auth: auth() },
            role: Role::Acceptor,
            expected_peer: None,
            heartbeat_ms: local.heartbeat_ms,
            open_timeout: Duration::from_secs(600),
            nonce: local.nonce,
            peer_name: "the fuzz input".into(),
        };
        let mut session = PeerSession::new(config, pool.clone());
        let first = [
            (validate_buffer::<(u64, u64)> as BufferValidator, read_validated::<(u64, u64)> as BufferValidator),
            (validate_buffer::<String>, read_validated::<String>),
            (validate_buffer::<(String, u64)>, read_validated::<(String, u64)>),
            (validate_buffer::<Vec<u8>>, read_validated::<Vec<u8>>),
            (validate_buffer::<FuzzRecord>, read_validated::<FuzzRecord>),
        ];
        let job = (FUZZ_JOB, FUZZ_JOB_FINGERPRINT, FUZZ_JOB_CHANNELS);
        let one = fuzz_job(&mut session, pool, job, &first, &FUZZ_OUTBOUND, 2);
        let second =
            [(validate_buffer::<(u64, u64)> as BufferValidator, read_validated::<(u64, u64)> as BufferValidator)];
        let job = (FUZZ_JOB_2, FUZZ_JOB_2_FINGERPRINT, FUZZ_JOB_2_CHANNELS);
        let two = fuzz_job(&mut session, pool, job, &second, &[1], 1);
        Self { session, jobs: vec![one, two], reported: Vec::new() }
    }

    /// The consumers read everything queued and return their credit.
    fn drain(&mut self) {
        for job in &mut self.jobs {
            while let Some((c, item)) = job.gate.poll_next() {
                if let ChannelItem::Buffer(buffer) = item {
                    let read = (job.readers[c])(buffer.as_slice());
                    assert!(read.is_ok(), "channel {c} delivered a buffer its validator refuses: {read:?}");
                    drop(buffer);
                    job.gate.release(c);
                }
            }
        }
    }

    /// Producers ship what credit allows; the session writes its frames, which must decode;
    /// job ends are collected, each once. Returns the first job refused.
    fn write(&mut self) -> Option<Refusal> {
        for output in self.jobs.iter_mut().flat_map(|j| &mut j.outputs) {
            output.try_send();
        }
        let mut out = Vec::new();
        self.session.poll_outgoing(Instant::now(), &mut out);
        for frame in &out {
            let header = decode_header(frame.header()).expect("the session writes valid headers");
            decode_body(&header, frame.body()).expect("the session writes valid bodies");
        }
        let mut refused = None;
        for ended in self.session.take_job_ends() {
            assert!(!self.reported.contains(&ended.deployment), "deployment {:x} reported twice", ended.deployment);
            assert!([FUZZ_JOB, FUZZ_JOB_2].contains(&ended.deployment), "reported a job never registered");
            self.reported.push(ended.deployment);
            if let JobEnd::Failed(crate::NetError::JobProtocol { deployment, error, .. }) = ended.end {
                refused.get_or_insert(Refusal::Job { deployment, error });
            }
        }
        refused
    }
}

fn fuzz_session(codec_pool: &BufferPool, session_pool: &BufferPool, mut data: &[u8]) -> Result<usize, Refusal> {
    let mut side = FuzzSide::new(session_pool);
    let mut refused = side.write();
    let mut connection_refused = false;
    let mut frames = 0;
    while !data.is_empty() {
        let consumed = match check_frame(codec_pool, data) {
            Ok(consumed) => consumed,
            Err(e) => return Err(refused.unwrap_or(e.into())),
        };
        if !connection_refused {
            let header = decode_header(data[..HEADER_BYTES].try_into().expect("a whole header"))
                .expect("check_frame accepted this header");
            match side.session.on_frame(&header, &data[HEADER_BYTES..consumed]) {
                Ok(_) => {
                    if header.kind == crate::wire::FrameKind::Heartbeat {
                        side.drain();
                    }
                    let job_refusal = side.write();
                    refused = refused.or(job_refusal);
                }
                Err(e) => {
                    refused = refused.or(Some(Refusal::Connection(e)));
                    connection_refused = true;
                }
            }
        }
        frames += 1;
        data = &data[consumed..];
    }
    if !connection_refused {
        side.drain();
        let job_refusal = side.write();
        refused = refused.or(job_refusal);
    }
    drop(side);
    refused.map_or(Ok(frames), Err)
}

/// Decodes the frame at the start of `data`, checks that it encodes back to the same bytes
/// and reads a BUFFER payload as every fuzz record type; returns the frame's length.
fn check_frame(pool: &BufferPool, data: &[u8]) -> Result<usize, FrameError> {
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
#[doc(hidden)]
pub fn fuzz_codec(mut data: &[u8]) -> Result<usize, FrameError> {
    let pool = BufferPool::new(1);
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
