//! The transport over loopback TCP: two glommio executors on two threads exchange
//! sequence-numbered records through a session pair, and dial, accept and the session fail
//! with typed, bounded errors when the peer is absent, dies or breaks the protocol. Every wait
//! on another thread is bounded by a watchdog.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use corestream_netstack::record::{deserialize, validate_buffer};
use corestream_netstack::transport::{accept, dial, run_session, Interrupt, NetConfig, SessionEnd, SessionOutcome};
use corestream_netstack::wire::{decode_frame, ErrorCode, FrameError, Message};
use corestream_netstack::{
    BufferPool, ChannelItem, CreditConfig, Doorbell, Event, Hello, InputGate, LocalChannel, NetError, OutputChannel,
    PeerIdentity, PeerSession, RecordIter, RecordWriter,
};
use glommio::net::TcpListener;
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};

type Rec = (u32, u64);

const FINGERPRINT: u64 = 0x5eed_cafe;
const CHANNELS: u32 = 2;
const BUFFERS_PER_CHANNEL: u64 = 300;
/// 1000 records of 32 bytes fill most of a 32 KB buffer.
const RECORDS_PER_BUFFER: u64 = 1000;
const CREDIT: CreditConfig =
    CreditConfig { exclusive_per_channel: 2, floating_per_gate: 4, max_backlog_per_channel: 2 };
const WATCHDOG: Duration = Duration::from_secs(30);

fn net_config() -> NetConfig {
    NetConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        connect_attempts: 10,
        connect_backoff_initial: Duration::from_millis(5),
        connect_backoff_max: Duration::from_millis(100),
        accept_timeout: Duration::from_secs(5),
    }
}

fn hello(tm: u32) -> Hello {
    Hello {
        sender_tm: tm,
        job_fingerprint: FINGERPRINT,
        tm_count: 2,
        pid: std::process::id(),
        heartbeat_ms: 200,
        channels: CHANNELS,
    }
}

fn identity(tm: u32) -> PeerIdentity {
    PeerIdentity { tm, job_fingerprint: FINGERPRINT, tm_count: 2, channels: CHANNELS }
}

/// Runs `make()` on a new unpinned glommio executor thread; its result arrives on the channel.
fn on_executor<T, F>(name: &str, make: impl FnOnce() -> F + Send + 'static) -> mpsc::Receiver<T>
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    let (tx, rx) = mpsc::channel();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let _ = tx.send(make().await);
        })
        .expect("executor thread starts");
    rx
}

fn wait<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(WATCHDOG).unwrap_or_else(|e| panic!("{what}: no result within {WATCHDOG:?} ({e})"))
}

async fn wait_bell(bell: &Doorbell) {
    futures_lite::future::or(bell.wait(), async {
        Timer::new(Duration::from_millis(10)).await;
    })
    .await;
}

/// Producer side (TaskManager 0): outbound channels 0..CHANNELS and their OutputChannels.
struct Producer {
    pool: BufferPool,
    bell: Arc<Doorbell>,
    producer_bell: Arc<Doorbell>,
    session: PeerSession,
    outputs: Vec<OutputChannel>,
}

fn producer_side() -> Producer {
    let pool = BufferPool::new(64);
    let bell = Arc::new(Doorbell::new());
    let producer_bell = Arc::new(Doorbell::new());
    let mut session = PeerSession::new(hello(0), identity(1), pool.clone());
    let mut outputs = Vec::new();
    for c in 0..CHANNELS {
        let channel = LocalChannel::new_remote_out(producer_bell.clone(), bell.clone());
        session.add_outbound(c, channel.clone());
        outputs.push(OutputChannel::new(channel, &CREDIT));
    }
    Producer { pool, bell, producer_bell, session, outputs }
}

/// Writes BUFFERS_PER_CHANNEL buffers of records `(channel, seq)` into every channel, honouring
/// credit and the backlog limit, then EndOfPartition.
async fn produce(mut outputs: Vec<OutputChannel>, pool: BufferPool, bell: Arc<Doorbell>) {
    let n = outputs.len();
    let mut written = vec![0u64; n];
    let mut ended = vec![false; n];
    let mut writer = RecordWriter::new();
    loop {
        let mut progressed = false;
        for (c, output) in outputs.iter_mut().enumerate() {
            output.try_send();
            if ended[c] || !output.is_available() {
                continue;
            }
            progressed = true;
            if written[c] == BUFFERS_PER_CHANNEL {
                output.send_event(Event::EndOfPartition);
                ended[c] = true;
                continue;
            }
            let mut buffer = pool.take().expect("the producer pool is sized for backlog plus credit");
            for i in 0..RECORDS_PER_BUFFER {
                writer.write(&mut buffer, &(c as u32, written[c] * RECORDS_PER_BUFFER + i)).unwrap();
            }
            output.send_buffer(buffer.freeze());
            written[c] += 1;
        }
        if ended.iter().all(|e| *e) && outputs.iter().all(|o| !o.has_pending()) {
            return;
        }
        if !progressed {
            wait_bell(&bell).await;
        }
        glommio::yield_if_needed().await;
    }
}

/// Reads every channel through an InputGate and checks each record is the next of its channel.
async fn consume(mut gate: InputGate, bell: Arc<Doorbell>) -> Vec<u64> {
    let n = gate.num_channels();
    let mut next = vec![0u64; n];
    let mut ended = vec![false; n];
    while !ended.iter().all(|e| *e) {
        match gate.poll_next() {
            Some((c, ChannelItem::Buffer(buffer))) => {
                // SAFETY: the session ran validate_buffer::<Rec> on this buffer before pushing it,
                // and pool buffers are 16-byte aligned.
                for archived in unsafe { RecordIter::<Rec>::new(buffer.as_slice()) } {
                    assert_eq!(
                        deserialize::<Rec>(archived),
                        (c as u32, next[c]),
                        "channel {c}: out of order or duplicate"
                    );
                    next[c] += 1;
                }
                drop(buffer);
                gate.release(c);
            }
            Some((c, ChannelItem::Event(Event::EndOfPartition))) => ended[c] = true,
            Some((c, ChannelItem::Event(other))) => panic!("channel {c}: unexpected event {other:?}"),
            None => wait_bell(&bell).await,
        }
    }
    next
}

/// A 16 KiB send buffer makes the writer meet partial writes and EAGAIN, so its fallback to
/// glommio's write is exercised.
fn shrink_send_buffer(stream: &glommio::net::TcpStream) {
    use std::os::unix::io::AsRawFd;
    let bytes: libc::c_int = 16 << 10;
    // SAFETY: the fd is the open socket of `stream`; `bytes` outlives the call and its size is
    // passed as the option length.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_SNDBUF: {}", std::io::Error::last_os_error());
}

#[test]
fn records_cross_a_session_pair_in_order_with_credit() {
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let consumer = on_executor("cs-test-consumer", move || async move {
        let pool = BufferPool::new(32);
        let bell = Arc::new(Doorbell::new());
        let consumer_bell = Arc::new(Doorbell::new());
        let mut session = PeerSession::new(hello(1), identity(0), pool.clone());
        let mut inbound = Vec::new();
        for c in 0..CHANNELS {
            let channel =
                LocalChannel::new_remote_in(CREDIT.exclusive_per_channel, bell.clone(), consumer_bell.clone());
            session.add_inbound(c, channel.clone(), validate_buffer::<Rec>);
            inbound.push(channel);
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let stream = accept(&listener, "TaskManager 0", &net_config()).await.unwrap();
        let reader = glommio::spawn_local(consume(InputGate::new(inbound, &CREDIT), consumer_bell));
        let outcome = run_session(stream, session, bell, &net_config(), "TaskManager 0".into(), || None).await;
        let counts = reader.await;
        (outcome, counts, pool.stats().peak_in_use, pool.in_use())
    });
    let addr = wait(&addr_rx, "consumer listener");
    let producer = on_executor("cs-test-producer", move || async move {
        let p = producer_side();
        let stream = dial(addr, "TaskManager 1", &net_config()).await.unwrap();
        shrink_send_buffer(&stream);
        let writer = glommio::spawn_local(produce(p.outputs, p.pool.clone(), p.producer_bell));
        let outcome = run_session(stream, p.session, p.bell, &net_config(), "TaskManager 1".into(), || None).await;
        writer.await;
        (outcome, p.pool.in_use())
    });
    let (consumer_outcome, counts, peak, consumer_in_use) = wait(&consumer, "consumer session");
    let (producer_outcome, producer_in_use) = wait(&producer, "producer session");
    let total = BUFFERS_PER_CHANNEL * RECORDS_PER_BUFFER;
    assert_eq!(counts, vec![total; CHANNELS as usize], "every record arrived exactly once");
    let SessionOutcome { end, stats: sent } = producer_outcome.expect("producer session closes cleanly");
    assert_eq!(end, SessionEnd::Closed);
    let SessionOutcome { end, stats: received } = consumer_outcome.expect("consumer session closes cleanly");
    assert_eq!(end, SessionEnd::Closed);
    assert_eq!(sent.buffers_out, BUFFERS_PER_CHANNEL * u64::from(CHANNELS));
    assert_eq!(received.buffers_in, sent.buffers_out);
    let credit_bound = CHANNELS * CREDIT.exclusive_per_channel + CREDIT.floating_per_gate;
    assert!(peak <= credit_bound, "the consumer held {peak} buffers, credit allows {credit_bound}");
    assert_eq!((producer_in_use, consumer_in_use), (0, 0), "every buffer went back to its pool");
}

#[test]
fn dial_gives_up_after_its_attempts() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let config = NetConfig {
        connect_attempts: 3,
        connect_backoff_initial: Duration::from_millis(10),
        connect_backoff_max: Duration::from_millis(20),
        ..net_config()
    };
    let result = on_executor("cs-test-dial", move || async move {
        let start = Instant::now();
        let result = dial(addr, "TaskManager 1 (closed port)", &config).await.map(|_| ());
        (result, start.elapsed())
    });
    let (result, elapsed) = wait(&result, "dial");
    match result {
        Err(e @ NetError::ConnectFailed { attempts: 3, .. }) => {
            assert!(e.to_string().contains("TaskManager 1 (closed port)"), "{e}");
            assert!(e.is_retryable());
        }
        other => panic!("expected ConnectFailed after 3 attempts, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(1), "3 attempts with 10-20 ms backoff took {elapsed:?}");
}

#[test]
fn accept_times_out_and_settings_are_validated() {
    let config = NetConfig { accept_timeout: Duration::from_millis(50), ..net_config() };
    let result = on_executor("cs-test-accept", move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        accept(&listener, "TaskManager 3", &config).await.map(|_| ())
    });
    match wait(&result, "accept") {
        Err(e @ NetError::PeerNeverConnected { .. }) => assert!(e.to_string().contains("TaskManager 3"), "{e}"),
        other => panic!("expected PeerNeverConnected, got {other:?}"),
    }
    assert_eq!(NetConfig::default().validate(), Ok(()));
    let bad = [
        (NetConfig { connect_attempts: 0, ..net_config() }, "connect_attempts"),
        (NetConfig { heartbeat_timeout: Duration::from_millis(100), ..net_config() }, "heartbeat_timeout"),
        (NetConfig { connect_backoff_max: Duration::from_millis(1), ..net_config() }, "connect_backoff_max"),
        (NetConfig { accept_timeout: Duration::ZERO, ..net_config() }, "accept_timeout"),
    ];
    for (config, setting) in bad {
        match config.validate() {
            Err(NetError::InvalidConfig { setting: s, .. }) => assert_eq!(s, setting),
            other => panic!("expected {setting} to be refused, got {other:?}"),
        }
    }
}

/// Runs the producer side on its own executor, accepting one connection on a loopback
/// listener; returns the listener's address and the session's result with the pool's use
/// after everything was dropped.
/// A session's result and the buffers of its pool still in use once everything was dropped.
type Ended = (Result<SessionOutcome, NetError>, u32);

fn producer_accepting(with_data: bool) -> (SocketAddr, mpsc::Receiver<Ended>) {
    producer_accepting_with(with_data, net_config(), || None)
}

fn producer_accepting_with(
    with_data: bool,
    config: NetConfig,
    interrupt: fn() -> Option<Interrupt>,
) -> (SocketAddr, mpsc::Receiver<Ended>) {
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let result = on_executor("cs-test-accepting", move || async move {
        let p = producer_side();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let stream = accept(&listener, "TaskManager 1", &config).await.unwrap();
        let writer = with_data.then(|| glommio::spawn_local(produce(p.outputs, p.pool.clone(), p.producer_bell)));
        let outcome = run_session(stream, p.session, p.bell, &config, "TaskManager 1".into(), interrupt).await;
        if let Some(writer) = writer {
            writer.cancel().await;
        }
        (outcome, p.pool.in_use())
    });
    (wait(&addr_rx, "listener"), result)
}

fn frame_bytes(message: Message<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    message.encode_into(&mut bytes).unwrap();
    bytes
}

#[test]
fn a_peer_dropped_mid_stream_is_lost() {
    let (addr, result) = producer_accepting(true);
    let mut peer = std::net::TcpStream::connect(addr).unwrap();
    peer.write_all(&frame_bytes(Message::Hello(hello(1)))).unwrap();
    for channel in 0..CHANNELS {
        peer.write_all(&frame_bytes(Message::PartitionRequest { channel, initial_credit: 2 })).unwrap();
    }
    peer.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut received = vec![0u8; 4_000];
    peer.read_exact(&mut received).unwrap();
    let start = Instant::now();
    drop(peer);
    let (outcome, in_use) = wait(&result, "session after the peer dropped");
    match outcome {
        Err(e @ NetError::PeerLost { .. }) => assert!(e.to_string().contains("TaskManager 1"), "{e}"),
        other => panic!("expected PeerLost, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5), "detected after {:?}", start.elapsed());
    assert_eq!(in_use, 0, "every buffer went back to the pool");
}

#[test]
fn a_rogue_peer_with_bad_magic_gets_an_error_frame() {
    let (addr, result) = producer_accepting(false);
    let mut rogue = std::net::TcpStream::connect(addr).unwrap();
    rogue.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut garbage = [0u8; 32];
    garbage[..4].copy_from_slice(b"XXXX");
    rogue.write_all(&garbage).unwrap();
    let (outcome, in_use) = wait(&result, "session after bad magic");
    match outcome {
        Err(NetError::Protocol { peer, error: FrameError::BadMagic { found } }) => {
            assert_eq!((peer.as_str(), &found), ("TaskManager 1", b"XXXX"));
            let error = NetError::Protocol { peer, error: FrameError::BadMagic { found } };
            assert!(!error.is_retryable());
        }
        other => panic!("expected Protocol(BadMagic), got {other:?}"),
    }
    assert_eq!(in_use, 0, "no buffer leaked");
    let mut bytes = Vec::new();
    rogue.read_to_end(&mut bytes).unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (message, used) = decode_frame(&bytes[at..]).unwrap();
        frames.push(format!("{message:?}"));
        match message {
            Message::Hello(h) => assert_eq!(h, hello(0)),
            Message::Error { code, message } => {
                assert_eq!(code, ErrorCode::Protocol);
                assert_eq!(message, FrameError::BadMagic { found: *b"XXXX" }.to_string());
            }
            other => panic!("unexpected frame {other:?}"),
        }
        at += used;
    }
    assert!(frames.last().is_some_and(|f| f.starts_with("Error")), "the last frame is ERROR: {frames:?}");
}

/// Reads frames until the other side closes the connection.
fn read_frames(peer: &mut std::net::TcpStream) -> Vec<String> {
    let mut bytes = Vec::new();
    peer.read_to_end(&mut bytes).unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (message, used) = decode_frame(&bytes[at..]).unwrap();
        frames.push(format!("{message:?}"));
        at += used;
    }
    frames
}

fn connect_with_hello(addr: SocketAddr) -> std::net::TcpStream {
    let mut peer = std::net::TcpStream::connect(addr).unwrap();
    peer.set_read_timeout(Some(WATCHDOG)).unwrap();
    peer.write_all(&frame_bytes(Message::Hello(hello(1)))).unwrap();
    peer
}

#[test]
fn a_silent_peer_times_out_while_this_side_sends_heartbeats() {
    let config = NetConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_millis(300),
        ..net_config()
    };
    let (addr, result) = producer_accepting_with(false, config, || None);
    let mut peer = connect_with_hello(addr);
    let start = Instant::now();
    let (outcome, in_use) = wait(&result, "session with a silent peer");
    match outcome {
        Err(e @ NetError::PeerTimeout { silent_for, .. }) => {
            assert!(silent_for >= Duration::from_millis(300), "{e}");
            assert!(e.to_string().contains("TaskManager 1"), "{e}");
        }
        other => panic!("expected PeerTimeout, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2), "a 300 ms timeout detected after {:?}", start.elapsed());
    assert_eq!(in_use, 0);
    let frames = read_frames(&mut peer);
    assert!(frames.iter().filter(|f| *f == "Heartbeat").count() >= 2, "idle side sends heartbeats: {frames:?}");
}

#[test]
fn a_peer_error_or_cancel_ends_the_session() {
    let (addr, result) = producer_accepting(false);
    let mut peer = connect_with_hello(addr);
    peer.write_all(&frame_bytes(Message::Error { code: ErrorCode::JobFailed, message: "task Map (2/4) panicked" }))
        .unwrap();
    match wait(&result, "session after ERROR(2)").0 {
        Err(e @ NetError::PeerFailed { .. }) => {
            assert_eq!(e.to_string(), "the job failed on TaskManager 1: task Map (2/4) panicked");
        }
        other => panic!("expected PeerFailed, got {other:?}"),
    }

    let (addr, result) = producer_accepting(false);
    let mut peer = connect_with_hello(addr);
    peer.write_all(&frame_bytes(Message::Cancel { reason: "cancelled by the user" })).unwrap();
    let (outcome, in_use) = wait(&result, "session after CANCEL");
    let end = outcome.expect("a cancelled peer is not a failure").end;
    assert_eq!(end, SessionEnd::PeerCancelled { reason: "cancelled by the user".into() });
    assert_eq!(in_use, 0);
}

#[test]
fn a_local_interrupt_sends_cancel() {
    let interrupt = || Some(Interrupt::Cancel { reason: "job cancelled".into() });
    let (addr, result) = producer_accepting_with(false, net_config(), interrupt);
    let mut peer = connect_with_hello(addr);
    let (outcome, in_use) = wait(&result, "interrupted session");
    let end = outcome.expect("an interrupted session ends without error").end;
    assert_eq!(end, SessionEnd::Interrupted(Interrupt::Cancel { reason: "job cancelled".into() }));
    assert_eq!(in_use, 0);
    let frames = read_frames(&mut peer);
    assert_eq!(frames.last().map(String::as_str), Some(r#"Cancel { reason: "job cancelled" }"#), "{frames:?}");
}

/// A peer speaking another protocol version is a handshake mismatch (ERROR code 3, as the wire
/// spec's versioning rule says), not a protocol violation.
#[test]
fn a_peer_with_another_version_gets_a_handshake_mismatch() {
    let (addr, result) = producer_accepting(false);
    let mut peer = std::net::TcpStream::connect(addr).unwrap();
    peer.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut hello_v2 = frame_bytes(Message::Hello(hello(1)));
    hello_v2[4] = 2;
    peer.write_all(&hello_v2).unwrap();
    let _ = wait(&result, "the session after a version 2 HELLO");
    let mut bytes = Vec::new();
    peer.read_to_end(&mut bytes).unwrap();
    let (_, used) = decode_frame(&bytes).expect("our HELLO");
    match decode_frame(&bytes[used..]).expect("an ERROR frame").0 {
        Message::Error { code, message } => {
            assert_eq!(code, ErrorCode::HandshakeMismatch, "{message}");
            assert!(message.contains("version 2"), "{message}");
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
}

/// Reads frames until one satisfies `done`; returns them all.
fn read_frames_until(peer: &mut std::net::TcpStream, done: impl Fn(&Message<'_>) -> bool) -> Vec<String> {
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = peer.read(&mut chunk).unwrap();
        assert!(n > 0, "the connection closed before the awaited frame: {frames:?}");
        bytes.extend_from_slice(&chunk[..n]);
        while let Ok((message, used)) = decode_frame(&bytes) {
            let finished = done(&message);
            frames.push(format!("{message:?}"));
            bytes.drain(..used);
            if finished {
                return frames;
            }
        }
    }
}

#[test]
fn a_receiver_without_a_free_buffer_tells_the_peer_why_it_stops() {
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let result = on_executor("cs-test-exhausted", move || async move {
        let pool = BufferPool::new(1);
        let held = pool.take().unwrap();
        let bell = Arc::new(Doorbell::new());
        let consumer_bell = Arc::new(Doorbell::new());
        let mut session = PeerSession::new(hello(1), identity(0), pool.clone());
        for c in 0..CHANNELS {
            let channel =
                LocalChannel::new_remote_in(CREDIT.exclusive_per_channel, bell.clone(), consumer_bell.clone());
            session.add_inbound(c, channel, validate_buffer::<Rec>);
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let stream = accept(&listener, "TaskManager 0", &net_config()).await.unwrap();
        let outcome = run_session(stream, session, bell, &net_config(), "TaskManager 0".into(), || None).await;
        drop(held);
        (outcome, pool.in_use())
    });
    let addr = wait(&addr_rx, "listener");
    let mut peer = std::net::TcpStream::connect(addr).unwrap();
    peer.set_read_timeout(Some(WATCHDOG)).unwrap();
    peer.write_all(&frame_bytes(Message::Hello(hello(0)))).unwrap();
    read_frames_until(&mut peer, |m| matches!(m, Message::PartitionRequest { channel: 0, .. }));
    let payload = {
        let pool = BufferPool::new(1);
        let mut builder = pool.take().unwrap();
        RecordWriter::new().write(&mut builder, &(0u32, 0u64)).unwrap();
        builder.freeze().as_slice().to_vec()
    };
    peer.write_all(&frame_bytes(Message::Buffer { channel: 0, seq: 0, backlog: 0, payload: &payload })).unwrap();
    let (outcome, in_use) = wait(&result, "session after a BUFFER with no free pool buffer");
    assert_eq!(outcome.unwrap_err(), NetError::PoolExhausted { capacity: 1 });
    assert_eq!(in_use, 0, "no buffer leaked");
    let frames = read_frames(&mut peer);
    let last = frames.last().expect("a last frame");
    assert!(last.starts_with("Error") && last.contains("JobFailed") && last.contains("pool"), "{frames:?}");
}
