//! The frame decoder under hostile input, in the ordinary test suite: the committed libFuzzer
//! corpus (`netstack/fuzz/corpus/frame_decoder`) replays through `wire::fuzz_one` without a
//! panic and still matches the seeds the encoders build today; hand-written malformed frames
//! each give their specific `FrameError`, and payloads with invalid archives are refused by
//! `validate_buffer`; frames that break the handshake (no HELLO, another cluster, a bad MAC,
//! job frames before AUTH), the connection (a deployment never opened, a second JOB_OPEN) or
//! one job (no credit, out of order, unknown channel, wrong direction, closed early, ...) each
//! give their error, the last kind failing that job alone; and a seeded mutation loop runs
//! for a bounded time (`CORESTREAM_FUZZ_SECS`, default 3; seed `CORESTREAM_FUZZ_SEED`),
//! failing with the hex dump of the first input that panics. `scripts/fuzz.sh` runs real
//! libFuzzer on the same entry point.
//!
//! `CORESTREAM_WRITE_CORPUS=1 cargo test --release -p corestream-netstack --test frame_fuzz`
//! rewrites the seed files after a protocol change.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use corestream_netstack::error::BufferError;
use corestream_netstack::fuzz::{
    fuzz_handshake, Refusal, AFTER_HANDSHAKE, FUZZ_JOB, FUZZ_JOB_2, FUZZ_JOB_2_CHANNELS, FUZZ_JOB_2_FINGERPRINT,
    FUZZ_JOB_CHANNELS, FUZZ_JOB_FINGERPRINT,
};
use corestream_netstack::handshake::{HandshakeError, TmId};
use corestream_netstack::record::{validate_buffer, Written};
use corestream_netstack::remote::SessionError;
use corestream_netstack::wire::{fuzz_one, fuzz_session_hello, CONNECTION_CHANNEL, HEADER_BYTES};
use corestream_netstack::{
    decode_frame, BarrierKind, BufferPool, Data, ErrorCode, Event, FrameError, FrameHeader, FrameKind, Hello, Message,
    RecordWriter, WatermarkStatus,
};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decoder")
}

/// The written part of one buffer filled by the real record writer.
fn record_buffer<T: Data>(records: &[T]) -> Vec<u8> {
    let pool = BufferPool::new(1);
    let mut writer = RecordWriter::new();
    let mut buf = pool.take().expect("one buffer");
    for r in records {
        assert_eq!(writer.write(&mut buf, r).expect("record fits"), Written::Done, "seed records fit one buffer");
    }
    buf.as_slice().to_vec()
}

fn encode(messages: &[Message<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        m.encode_into(&mut out).expect("seed message encodes");
    }
    out
}

fn raw(header: FrameHeader, body: &[u8]) -> Vec<u8> {
    let mut out = header.encode().to_vec();
    out.extend_from_slice(body);
    out
}

fn patched(mut bytes: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
    bytes[at..at + with.len()].copy_from_slice(with);
    bytes
}

fn conn_header(kind: FrameKind) -> FrameHeader {
    FrameHeader { kind, flags: 0, body_len: 0, channel: CONNECTION_CHANNEL, seq: 0, arg: 0, arg64: 0, deployment: 0 }
}

fn data_header(kind: FrameKind, body_len: u32) -> FrameHeader {
    FrameHeader { kind, flags: 0, body_len, channel: 1, seq: 0, arg: 0, arg64: 0, deployment: FUZZ_JOB }
}

/// The HELLO `fuzz_one`'s session expects from the input (the dialer of its cluster).
fn hello() -> Hello {
    fuzz_session_hello()
}

const J: u64 = FUZZ_JOB;
const J2: u64 = FUZZ_JOB_2;

fn open(deployment: u64) -> Message<'static> {
    match deployment {
        FUZZ_JOB_2 => {
            Message::JobOpen { deployment, fingerprint: FUZZ_JOB_2_FINGERPRINT, channels: FUZZ_JOB_2_CHANNELS }
        }
        _ => Message::JobOpen { deployment, fingerprint: FUZZ_JOB_FINGERPRINT, channels: FUZZ_JOB_CHANNELS },
    }
}

/// What the session refuses a payload with, computed by the receiver's own validation.
fn invalid_string_buffer(channel: u32, payload: &[u8]) -> FrameError {
    let pool = BufferPool::new(1);
    let mut buf = pool.take().unwrap();
    buf.whole_mut()[..payload.len()].copy_from_slice(payload);
    buf.set_len(payload.len());
    FrameError::InvalidBuffer { channel, error: validate_buffer::<String>(buf.as_slice()).unwrap_err() }
}

/// What replaying a seed must give.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Frames(usize),
    Refused(Refusal),
}

struct Seed {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn job(error: FrameError) -> Refusal {
    Refusal::Job { deployment: J, error }
}

fn conn(error: FrameError) -> Refusal {
    Refusal::Connection(SessionError::Protocol(error))
}

fn handshake(error: HandshakeError) -> Refusal {
    Refusal::Connection(SessionError::Handshake(error))
}

/// A seed played after a valid handshake, starting with the input's JOB_OPEN of the first
/// fuzz job, so the frames after it reach the job and channel state. Its frame count includes
/// the two handshake frames.
fn after_open(name: &'static str, messages: &[Message<'_>], expect: Option<Refusal>) -> Seed {
    let all: Vec<Message<'_>> = std::iter::once(open(J)).chain(messages.iter().copied()).collect();
    let expect = expect.map_or(Expect::Frames(all.len() + 2), Expect::Refused);
    let bytes = [vec![AFTER_HANDSHAKE], encode(&all)].concat();
    Seed { name, bytes, expect }
}

/// A seed played from the first byte of the connection.
fn from_start(name: &'static str, bytes: Vec<u8>, expect: Expect) -> Seed {
    Seed { name, bytes, expect }
}

fn bad(name: &'static str, bytes: Vec<u8>, error: FrameError) -> Seed {
    Seed { name, bytes, expect: Expect::Refused(conn(error)) }
}

/// Every seed of the committed corpus, built from the encoders.
fn seeds() -> Vec<Seed> {
    let pairs = record_buffer(&(0..40u64).map(|i| (i, i * i)).collect::<Vec<_>>());
    let full_pairs = record_buffer(&(0..1024u64).map(|i| (i, u64::MAX - i)).collect::<Vec<_>>());
    assert_eq!(full_pairs.len(), 32768, "1024 pairs fill a buffer exactly");
    let strings =
        record_buffer(&["", "a", "wire", "ünïcödé", "a longer string that is stored out of line"].map(String::from));
    let keyed = record_buffer(&[("alpha".to_string(), 1u64), ("beta".to_string(), 2), ("gamma".to_string(), 3)]);
    let blobs = record_buffer(&[vec![1u8, 2, 3], vec![], vec![0xAB; 40]]);
    let mut bad_utf8_string = strings.clone();
    let at = bad_utf8_string.windows(6).position(|w| w == b"longer").expect("out-of-line string bytes");
    bad_utf8_string[at] = 0xFF;
    let mut bad_pointer_string = strings.clone();
    let last = bad_pointer_string.len();
    bad_pointer_string[last - 4..].copy_from_slice(&0x7fff_0000u32.to_le_bytes());

    let buffer = |channel, seq, backlog, payload| Message::Buffer { deployment: J, channel, seq, backlog, payload };
    let event = |channel, seq, event| Message::Event { deployment: J, channel, seq, event };
    let request = |channel, initial_credit| Message::PartitionRequest { deployment: J, channel, initial_credit };
    let credit = |channel, credit| Message::AddCredit { deployment: J, channel, credit };
    let barrier = |kind| Event::CheckpointBarrier { checkpoint_id: 7, timestamp_ms: 1_700_000_000_000, kind };
    let s = |name, messages: &[Message<'_>]| after_open(name, messages, None);
    let refused = |name, messages: &[Message<'_>], error| after_open(name, messages, Some(error));
    let bad_utf8 = invalid_string_buffer(1, &bad_utf8_string);
    let bad_pointer = invalid_string_buffer(1, &bad_pointer_string);
    let peer_hello = encode(&[Message::Hello(hello())]);
    let handshake_bytes = fuzz_handshake();
    vec![
        from_start("hello", peer_hello.clone(), Expect::Frames(1)),
        from_start("handshake", handshake_bytes.clone(), Expect::Frames(2)),
        from_start(
            "handshake_bad_mac",
            [peer_hello.clone(), encode(&[Message::Auth { mac: [0x42; 32] }])].concat(),
            Expect::Refused(handshake(HandshakeError::BadMac)),
        ),
        from_start(
            "handshake_wrong_token",
            encode(&[Message::Hello(Hello { cluster_token: [0x7d; 32], ..hello() })]),
            Expect::Refused(handshake(HandshakeError::WrongClusterToken)),
        ),
        from_start(
            "handshake_wrong_dialer",
            encode(&[Message::Hello(Hello { tm: TmId([0x33; 16]), ..hello() })]),
            Expect::Refused(handshake(HandshakeError::WrongDialer {
                dialer: TmId([0x33; 16]),
                acceptor: TmId([0x22; 16]),
            })),
        ),
        from_start(
            "job_before_auth",
            [peer_hello.clone(), encode(&[open(J)])].concat(),
            Expect::Refused(conn(FrameError::BeforeAuth { kind: FrameKind::JobOpen })),
        ),
        from_start(
            "unexpected_auth",
            [handshake_bytes.clone(), handshake_bytes[HEADER_BYTES + 88..].to_vec()].concat(),
            Expect::Refused(conn(FrameError::UnexpectedAuth)),
        ),
        s("job_open", &[]),
        s("partition_request", &[request(5, 2)]),
        s("add_credit", &[request(6, 1), credit(6, 1)]),
        s("buffer_u64_pairs", &[buffer(0, 0, 1, &pairs)]),
        s("buffer_u64_pairs_full", &[buffer(0, 0, 0, &full_pairs)]),
        s("buffer_strings", &[buffer(1, 0, 0, &strings)]),
        s("buffer_string_u64", &[buffer(2, 0, 0, &keyed)]),
        s("buffer_byte_vecs", &[buffer(3, 0, 0, &blobs)]),
        refused("buffer_string_invalid_utf8", &[buffer(1, 0, 0, &bad_utf8_string)], job(bad_utf8)),
        refused("buffer_string_pointer_past_end", &[buffer(1, 0, 0, &bad_pointer_string)], job(bad_pointer)),
        s("backlog", &[Message::Backlog { deployment: J, channel: 0, backlog: 5 }]),
        s("event_end_of_partition", &[event(0, 0, Event::EndOfPartition)]),
        s("event_watermark", &[event(0, 0, Event::Watermark(-42))]),
        s("event_watermark_status", &[event(1, 0, Event::WatermarkStatus(WatermarkStatus::Idle))]),
        s("event_barrier_aligned", &[event(1, 0, barrier(BarrierKind::Aligned))]),
        s("event_barrier_unaligned", &[event(1, 0, barrier(BarrierKind::Unaligned))]),
        s("event_barrier_savepoint", &[event(1, 0, barrier(BarrierKind::Savepoint))]),
        s(
            "event_latency_marker",
            &[event(2, 0, Event::LatencyMarker { marked_time_ns: 123_456_789, source_subtask: 3 })],
        ),
        s("heartbeat", &[Message::Heartbeat]),
        s("cancel", &[Message::Cancel { deployment: J, reason: "job 3 cancelled by the user" }]),
        refused(
            "job_close_early",
            &[Message::JobClose { deployment: J }],
            job(FrameError::JobClosedEarly { open_channels: 7 }),
        ),
        s(
            "error_connection",
            &[Message::Error { deployment: 0, code: ErrorCode::Protocol, message: "frame 7: bad magic" }],
        ),
        s("error_job", &[Message::Error { deployment: J, code: ErrorCode::JobFailed, message: "task 3 failed" }]),
        s(
            "session",
            &[
                request(5, 2),
                request(6, 1),
                buffer(0, 0, 1, &pairs),
                buffer(1, 0, 0, &strings),
                Message::Backlog { deployment: J, channel: 0, backlog: 0 },
                credit(6, 1),
                event(0, 1, Event::Watermark(1000)),
                event(1, 1, barrier(BarrierKind::Aligned)),
                buffer(0, 2, 0, &pairs),
                Message::Heartbeat,
                buffer(0, 3, 0, &full_pairs),
                buffer(2, 0, 0, &keyed),
                buffer(3, 0, 0, &blobs),
                Message::Heartbeat,
                event(0, 4, Event::EndOfPartition),
                event(1, 2, Event::EndOfPartition),
                event(2, 1, Event::EndOfPartition),
                event(3, 1, Event::EndOfPartition),
                event(4, 0, Event::EndOfPartition),
                Message::JobClose { deployment: J },
                Message::Close,
            ],
        ),
        s(
            "two_jobs",
            &[
                open(J2),
                Message::PartitionRequest { deployment: J2, channel: 1, initial_credit: 2 },
                request(5, 1),
                Message::Buffer { deployment: J2, channel: 0, seq: 0, backlog: 0, payload: &pairs },
                buffer(0, 0, 0, &pairs),
                Message::Event { deployment: J2, channel: 0, seq: 1, event: Event::EndOfPartition },
                Message::Cancel { deployment: J, reason: "only the first job" },
                Message::Heartbeat,
                Message::JobClose { deployment: J2 },
            ],
        ),
        s(
            "pending_request",
            &[
                Message::JobOpen { deployment: 0x77, fingerprint: 1, channels: 3 },
                Message::PartitionRequest { deployment: 0x77, channel: 2, initial_credit: 2 },
                Message::AddCredit { deployment: 0x77, channel: 2, credit: 5 },
                Message::Cancel { deployment: 0x77, reason: "never deployed there" },
            ],
        ),
        refused(
            "job_mismatch",
            &[Message::JobOpen { deployment: J2, fingerprint: 9, channels: FUZZ_JOB_2_CHANNELS }],
            Refusal::Job {
                deployment: J2,
                error: FrameError::JobMismatch { field: "job fingerprint", expected: FUZZ_JOB_2_FINGERPRINT, found: 9 },
            },
        ),
        refused(
            "no_credit",
            &[buffer(0, 0, 0, &pairs), buffer(0, 1, 0, &pairs), buffer(0, 2, 0, &pairs)],
            job(FrameError::NoCredit { channel: 0 }),
        ),
        s(
            "credit_returned",
            &[buffer(0, 0, 0, &pairs), buffer(0, 1, 0, &pairs), Message::Heartbeat, buffer(0, 2, 0, &pairs)],
        ),
        refused(
            "out_of_order",
            &[buffer(1, 1, 0, &strings)],
            job(FrameError::OutOfOrder { channel: 1, expected: 0, got: 1 }),
        ),
        refused("unknown_channel", &[buffer(9, 0, 0, &pairs)], job(FrameError::UnknownChannel { channel: 9 })),
        refused(
            "wrong_direction",
            &[request(0, 2)],
            job(FrameError::WrongDirection { channel: 0, kind: FrameKind::PartitionRequest }),
        ),
        refused(
            "after_end",
            &[event(4, 0, Event::EndOfPartition), event(4, 1, Event::Watermark(1))],
            job(FrameError::AfterEnd { channel: 4, kind: FrameKind::Event }),
        ),
        refused("second_hello", &[Message::Hello(hello())], conn(FrameError::UnexpectedHello)),
        refused("duplicate_job_open", &[open(J)], conn(FrameError::DuplicateJobOpen { deployment: J })),
        refused(
            "job_not_opened",
            &[Message::PartitionRequest { deployment: 0x99, channel: 0, initial_credit: 1 }],
            conn(FrameError::JobNotOpened { kind: FrameKind::PartitionRequest, deployment: 0x99 }),
        ),
        refused(
            "after_job_end",
            &[Message::Cancel { deployment: J, reason: "" }, request(5, 1)],
            conn(FrameError::JobNotOpened { kind: FrameKind::PartitionRequest, deployment: J }),
        ),
        bad("missing_hello", encode(&[Message::Heartbeat]), FrameError::MissingHello { kind: FrameKind::Heartbeat }),
        bad(
            "bad_magic",
            patched(raw(conn_header(FrameKind::Heartbeat), &[]), 0, b"GET "),
            FrameError::BadMagic { found: *b"GET " },
        ),
        bad(
            "bad_version",
            patched(raw(conn_header(FrameKind::Heartbeat), &[]), 4, &[1]),
            FrameError::UnsupportedVersion { found: 1, supported: 2 },
        ),
        bad(
            "unknown_kind",
            patched(raw(conn_header(FrameKind::Close), &[]), 5, &[42]),
            FrameError::UnknownKind { kind: 42 },
        ),
        bad(
            "reserved_bits",
            raw(FrameHeader { flags: 0x10, ..conn_header(FrameKind::Close) }, &[]),
            FrameError::ReservedBits { kind: FrameKind::Close, flags: 0x10 },
        ),
        bad(
            "bad_length_heartbeat",
            raw(FrameHeader { body_len: 4, ..conn_header(FrameKind::Heartbeat) }, &[0; 4]),
            FrameError::BadLength { kind: FrameKind::Heartbeat, len: 4, expected: 0 },
        ),
        bad(
            "bad_length_buffer",
            raw(data_header(FrameKind::Buffer, 7), &[1, 0, 0, 0, 0, 0, 0]),
            FrameError::BadLength { kind: FrameKind::Buffer, len: 7, expected: 8 },
        ),
        bad(
            "oversized_buffer",
            raw(data_header(FrameKind::Buffer, 32769), &[]),
            FrameError::Oversized { kind: FrameKind::Buffer, len: 32769, max: 32768 },
        ),
        bad(
            "length_past_end",
            raw(data_header(FrameKind::Buffer, 100), &pairs[..50]),
            FrameError::LengthPastEnd { len: 140, available: 90 },
        ),
        bad(
            "truncated_header",
            encode(&[Message::Close])[..20].to_vec(),
            FrameError::LengthPastEnd { len: 40, available: 20 },
        ),
        bad(
            "invalid_utf8_cancel",
            raw(FrameHeader { body_len: 3, deployment: J, ..conn_header(FrameKind::Cancel) }, &[b'n', 0xC0, b'o']),
            FrameError::InvalidUtf8 { kind: FrameKind::Cancel, valid_up_to: 1 },
        ),
        bad(
            "unknown_event",
            raw(FrameHeader { arg: 77, ..data_header(FrameKind::Event, 8) }, &[0; 8]),
            FrameError::UnknownEvent { code: 77 },
        ),
        bad(
            "invalid_event_status",
            raw(FrameHeader { arg: 3, arg64: 2, ..data_header(FrameKind::Event, 8) }, &[0; 8]),
            FrameError::InvalidEvent { code: 3, reason: "watermark status must be 0 (active) or 1 (idle)" },
        ),
        bad(
            "zero_credit",
            raw(data_header(FrameKind::AddCredit, 0), &[]),
            FrameError::ZeroCredit { kind: FrameKind::AddCredit, channel: 1 },
        ),
        bad(
            "bad_channel",
            raw(FrameHeader { channel: 0, body_len: 88, ..conn_header(FrameKind::Hello) }, &[0; 88]),
            FrameError::BadChannel { kind: FrameKind::Hello, channel: 0 },
        ),
        bad(
            "bad_deployment",
            raw(FrameHeader { deployment: 5, ..conn_header(FrameKind::Heartbeat) }, &[]),
            FrameError::BadDeployment { kind: FrameKind::Heartbeat, deployment: 5 },
        ),
        bad(
            "error_code_needs_job",
            raw(FrameHeader { arg: 2, ..conn_header(FrameKind::Error) }, &[]),
            FrameError::ErrorCodeNeedsJob { code: 2 },
        ),
        bad(
            "no_channels",
            raw(FrameHeader { deployment: J, ..conn_header(FrameKind::JobOpen) }, &[]),
            FrameError::NoChannels { deployment: J },
        ),
        bad(
            "session_then_garbage",
            [
                handshake_bytes.clone(),
                encode(&[Message::Heartbeat]),
                b"\x00garbage after good frames, long enough for a header".to_vec(),
            ]
            .concat(),
            FrameError::BadMagic { found: *b"\x00gar" },
        ),
    ]
}

static QUIET: Once = Once::new();
thread_local! {
    static SILENT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `fuzz_one` under `catch_unwind`; panic messages are kept off the output on this
/// thread only, so other tests still report theirs.
fn run_caught(input: &[u8]) -> std::thread::Result<Result<usize, Refusal>> {
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !SILENT.with(Cell::get) {
                default(info);
            }
        }));
    });
    SILENT.with(|s| s.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| fuzz_one(input)));
    SILENT.with(|s| s.set(false));
    outcome
}

fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!("{:06x}  {}\n", i * 16, hex.join(" ")));
    }
    out
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic payload".into())
}

#[test]
fn corpus_replays_cleanly() {
    let dir = corpus_dir();
    let seeds = seeds();
    if std::env::var_os("CORESTREAM_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for seed in &seeds {
            std::fs::write(dir.join(seed.name), &seed.bytes).unwrap();
        }
    }
    for seed in &seeds {
        let path = dir.join(seed.name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("corpus seed {} missing ({e}); run with CORESTREAM_WRITE_CORPUS=1 to write it", path.display())
        });
        assert!(
            committed == seed.bytes,
            "corpus seed {} is stale: the encoders build other bytes now; rerun with CORESTREAM_WRITE_CORPUS=1",
            seed.name
        );
        let got = match fuzz_one(&seed.bytes) {
            Ok(frames) => Expect::Frames(frames),
            Err(e) => Expect::Refused(e),
        };
        assert_eq!(got, seed.expect, "seed {}", seed.name);
    }
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Err(panic) = run_caught(&bytes) {
            panic!("corpus file {} panics: {}\n{}", path.display(), panic_text(&*panic), hex_dump(&bytes));
        }
        replayed += 1;
    }
    assert!(replayed >= seeds.len());
    println!("replayed {replayed} corpus files ({} seeds)", seeds.len());
}

#[test]
fn malformed_frames_give_their_errors() {
    let close = encode(&[Message::Close]);
    let with = |at: usize, bytes: &[u8]| patched(close.clone(), at, bytes);
    let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
        ("bad magic", with(0, b"CSNG"), FrameError::BadMagic { found: *b"CSNG" }),
        ("wrong version", with(4, &[0]), FrameError::UnsupportedVersion { found: 0, supported: 2 }),
        ("version 1", with(4, &[1]), FrameError::UnsupportedVersion { found: 1, supported: 2 }),
        ("unknown kind", with(5, &[0]), FrameError::UnknownKind { kind: 0 }),
        ("unknown kind 14", with(5, &[14]), FrameError::UnknownKind { kind: 14 }),
        (
            "length past the end",
            raw(data_header(FrameKind::Buffer, 100), &[0; 50]),
            FrameError::LengthPastEnd { len: 140, available: 90 },
        ),
        ("header cut short", close[..39].to_vec(), FrameError::LengthPastEnd { len: 40, available: 39 }),
        (
            "oversized buffer",
            raw(data_header(FrameKind::Buffer, 32769), &[0; 64]),
            FrameError::Oversized { kind: FrameKind::Buffer, len: 32769, max: 32768 },
        ),
        (
            "oversized error text",
            raw(FrameHeader { body_len: 5000, arg: 1, ..conn_header(FrameKind::Error) }, &[b'x'; 5000]),
            FrameError::Oversized { kind: FrameKind::Error, len: 5000, max: 1024 },
        ),
        (
            "bad length event",
            raw(data_header(FrameKind::Event, 16), &[0; 16]),
            FrameError::BadLength { kind: FrameKind::Event, len: 16, expected: 8 },
        ),
        (
            "bad length hello",
            raw(FrameHeader { body_len: 12, ..conn_header(FrameKind::Hello) }, &[0; 12]),
            FrameError::BadLength { kind: FrameKind::Hello, len: 12, expected: 88 },
        ),
        (
            "bad length auth",
            raw(FrameHeader { body_len: 31, ..conn_header(FrameKind::Auth) }, &[0; 31]),
            FrameError::BadLength { kind: FrameKind::Auth, len: 31, expected: 32 },
        ),
        (
            "short buffer",
            raw(data_header(FrameKind::Buffer, 0), &[]),
            FrameError::BadLength { kind: FrameKind::Buffer, len: 0, expected: 8 },
        ),
        (
            "channel frame without deployment",
            raw(FrameHeader { deployment: 0, ..data_header(FrameKind::Backlog, 0) }, &[]),
            FrameError::BadDeployment { kind: FrameKind::Backlog, deployment: 0 },
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(decode_frame(&bytes).map(|(m, used)| (m.kind(), used)), Err(want.clone()), "{name}");
        assert_eq!(fuzz_one(&bytes), Err(conn(want.clone())), "{name} through fuzz_one");
        assert!(!want.to_string().is_empty());
    }
    let mut stream = [fuzz_handshake(), encode(&[Message::Close])].concat();
    let second = stream.len() - HEADER_BYTES;
    stream[second..second + 4].copy_from_slice(b"junk");
    assert_eq!(fuzz_one(&stream), Err(conn(FrameError::BadMagic { found: *b"junk" })), "later frames are checked too");
}

/// Frames that are well formed but break the handshake, the connection or one job: each gives
/// its own error, and the first refusal wins over later decoding errors.
#[test]
fn session_violations_give_their_errors() {
    let pairs = record_buffer(&[(1u64, 2u64)]);
    let buffer = |channel, seq| Message::Buffer { deployment: J, channel, seq, backlog: 0, payload: &pairs };
    let with_open = |messages: &[Message<'_>]| {
        let mut all = vec![open(J)];
        all.extend_from_slice(messages);
        [vec![AFTER_HANDSHAKE], encode(&all)].concat()
    };
    let request = |channel| Message::PartitionRequest { deployment: J, channel, initial_credit: 2 };
    let cases: Vec<(&str, Vec<u8>, Refusal)> = vec![
        ("no credit", with_open(&[buffer(0, 0), buffer(0, 1), buffer(0, 2)]), job(FrameError::NoCredit { channel: 0 })),
        (
            "out of order",
            with_open(&[buffer(0, 0), buffer(0, 2)]),
            job(FrameError::OutOfOrder { channel: 0, expected: 1, got: 2 }),
        ),
        ("unknown channel", with_open(&[buffer(7, 0)]), job(FrameError::UnknownChannel { channel: 7 })),
        (
            "buffer on an outbound channel",
            with_open(&[buffer(5, 0)]),
            job(FrameError::WrongDirection { channel: 5, kind: FrameKind::Buffer }),
        ),
        (
            "duplicate partition request",
            with_open(&[request(5), request(5)]),
            job(FrameError::DuplicatePartitionRequest { channel: 5 }),
        ),
        ("missing hello", encode(&[buffer(0, 0)]), conn(FrameError::MissingHello { kind: FrameKind::Buffer })),
        (
            "no job open",
            [vec![AFTER_HANDSHAKE], encode(&[buffer(0, 0)])].concat(),
            conn(FrameError::JobNotOpened { kind: FrameKind::Buffer, deployment: J }),
        ),
        (
            "another heartbeat",
            encode(&[Message::Hello(Hello { heartbeat_ms: 999, ..hello() })]),
            handshake(HandshakeError::HeartbeatMismatch { local_ms: 1000, peer_ms: 999 }),
        ),
    ];
    for (name, mut bytes, want) in cases {
        assert_eq!(fuzz_one(&bytes), Err(want.clone()), "{name}");
        bytes.extend_from_slice(b"garbage after the refused frame, at least a header long");
        assert_eq!(fuzz_one(&bytes), Err(want.clone()), "{name}, then garbage");
    }
}

/// Payloads the codec passes through (it never looks inside a buffer) but the receiver's
/// validation refuses, naming the record.
#[test]
fn invalid_archives_are_refused_by_validation() {
    let pool = BufferPool::new(1);
    let seeds = seeds();
    for (name, want_record) in [("buffer_string_invalid_utf8", 4), ("buffer_string_pointer_past_end", 4)] {
        let seed = seeds.iter().find(|s| s.name == name).unwrap();
        let frames = &seed.bytes[1..];
        let (_, open_len) = decode_frame(frames).expect("the seed starts with JOB_OPEN");
        let Ok((Message::Buffer { payload, .. }, _)) = decode_frame(&frames[open_len..]) else {
            panic!("{name} continues with a BUFFER frame")
        };
        let mut buf = pool.take().unwrap();
        buf.whole_mut()[..payload.len()].copy_from_slice(payload);
        buf.set_len(payload.len());
        match validate_buffer::<String>(buf.as_slice()) {
            Err(BufferError::InvalidArchive { record, type_name, .. }) => {
                assert_eq!(record, want_record, "{name}");
                assert!(type_name.contains("String"), "{name}: {type_name}");
            }
            other => panic!("{name}: expected InvalidArchive for record {want_record}, got {other:?}"),
        }
        match fuzz_one(&seed.bytes) {
            Err(Refusal::Job {
                error: FrameError::InvalidBuffer { channel: 1, error: BufferError::InvalidArchive { record, .. } },
                ..
            }) => {
                assert_eq!(record, want_record, "{name}: the session names the record");
            }
            other => panic!("{name}: the session must refuse the payload, got {other:?}"),
        }
    }
    assert_eq!(pool.in_use(), 0);
}

/// xorshift64*: a reproducible stream from one seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING_U32: [u32; 12] = [0, 1, 7, 8, 15, 16, 31, 32, 32767, 32768, 32769, 0xFFFF_FFFF];
/// Offsets of the header's u32 fields (body_len, channel, seq, arg, both halves of arg64 and of
/// the deployment) and of the version/kind and flags words.
const HEADER_FIELD_OFFSETS: [usize; 10] = [4, 6, 8, 12, 16, 20, 24, 28, 32, 36];
const MAX_INPUT_BYTES: usize = 3 * (HEADER_BYTES + 32768);

/// Where frames would start if every header's `body_len` were right.
fn frame_starts(input: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = usize::from(input.first() == Some(&AFTER_HANDSHAKE));
    while at + HEADER_BYTES <= input.len() && starts.len() < 64 {
        starts.push(at);
        let body_len = u32::from_le_bytes(input[at + 8..at + 12].try_into().unwrap()) as usize;
        at = at.saturating_add(HEADER_BYTES).saturating_add(body_len);
    }
    starts
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    match rng.below(7) {
        0 if !input.is_empty() => {
            let at = rng.below(input.len());
            input[at] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let at = rng.below(input.len());
            input[at] = [0, 0xFF, 0x7F, 0x80, 1, rng.next_u64() as u8][rng.below(6)];
        }
        2 => {
            let at = rng.below(input.len() + 1);
            let run = 1 + rng.below(40);
            let byte = rng.next_u64() as u8;
            input.splice(at..at, std::iter::repeat_n(byte, run));
        }
        3 if !input.is_empty() => {
            let at = rng.below(input.len());
            let end = (at + 1 + rng.below(40)).min(input.len());
            input.drain(at..end);
        }
        4 => input.truncate(rng.below(input.len() + 1)),
        5 => {
            let other = &pool[rng.below(pool.len())];
            let cut = rng.below(input.len() + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        _ => {
            let starts = frame_starts(input);
            if starts.is_empty() {
                return;
            }
            let at = starts[rng.below(starts.len())] + HEADER_FIELD_OFFSETS[rng.below(HEADER_FIELD_OFFSETS.len())];
            let value = INTERESTING_U32[rng.below(INTERESTING_U32.len())].to_le_bytes();
            let end = (at + 4).min(input.len());
            input[at..end].copy_from_slice(&value[..end - at]);
        }
    }
    input.truncate(MAX_INPUT_BYTES);
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = text.strip_prefix("0x").map_or_else(|| text.parse(), |hex| u64::from_str_radix(hex, 16));
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

#[test]
fn bounded_mutation_fuzz() {
    let secs = env_u64("CORESTREAM_FUZZ_SECS").unwrap_or(3);
    let seed = env_u64("CORESTREAM_FUZZ_SEED").unwrap_or(0x00c0_ffee_5eed_0004).max(1);
    let mut rng = Rng(seed);
    let mut pool: Vec<Vec<u8>> = seeds().into_iter().map(|s| s.bytes).collect();
    let seed_count = pool.len();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut iterations, mut accepted) = (0u64, 0u64);
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    while iterations < 256 || iterations % 256 != 0 || Instant::now() < deadline {
        let mut input = pool[rng.below(pool.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, &pool);
        }
        iterations += 1;
        match run_caught(&input) {
            Ok(Ok(frames)) => {
                accepted += 1;
                if frames == 0 {
                    continue;
                }
                if pool.len() < seed_count + 256 {
                    pool.push(input);
                } else {
                    let slot = seed_count + rng.below(256);
                    pool[slot] = input;
                }
            }
            Ok(Err(e)) => {
                *errors.entry(refusal_name(&e)).or_default() += 1;
            }
            Err(panic) => {
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
                let file = dir.join(format!("seed-{seed:x}-iteration-{iterations}.bin"));
                let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &input));
                panic!(
                    "fuzz_one panicked (seed {seed:#x}, iteration {iterations}): {}\ninput ({} bytes, saved: {}):\n{}",
                    panic_text(&*panic),
                    input.len(),
                    saved.map_or_else(|e| format!("not saved: {e}"), |()| file.display().to_string()),
                    hex_dump(&input)
                );
            }
        }
    }
    println!(
        "bounded_mutation_fuzz: {iterations} inputs in {secs} s (seed {seed:#x}), {accepted} decoded whole, refused: {errors:?}"
    );
    assert!(iterations < 10_000 || errors.len() >= 6, "mutations reach several distinct errors: {errors:?}");
}

/// The variant of the error inside a refusal, with its kind: "job NoCredit", "handshake BadMac".
fn refusal_name(refusal: &Refusal) -> String {
    let (scope, inner) = match refusal {
        Refusal::Connection(SessionError::Protocol(e)) => ("connection", format!("{e:?}")),
        Refusal::Connection(SessionError::Handshake(e)) => ("handshake", format!("{e:?}")),
        Refusal::Job { error, .. } => ("job", format!("{error:?}")),
    };
    format!("{scope} {}", inner.split([' ', '(', '{']).next().unwrap_or("?"))
}
