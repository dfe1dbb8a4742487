//! The transport over loopback TCP: two glommio executors on two threads exchange
//! sequence-numbered records through a one-shot connection ([`run_session`]), and dial,
//! accept, the handshake and the connection fail with typed, bounded errors when the peer is
//! absent, dies, belongs to another cluster or breaks the protocol. Raw peers speak the wire
//! protocol by hand. Every wait on another thread is bounded by a watchdog.

mod support;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use corestream_netstack::handshake::{ClusterAuth, HandshakeError, Role};
use corestream_netstack::record::validate_buffer;
use corestream_netstack::remote::JobSpec;
use corestream_netstack::transport::{accept, dial, run_session, Interrupt, NetConfig, SessionEnd, SessionOutcome};
use corestream_netstack::wire::{ErrorCode, FrameError, Message};
use corestream_netstack::{BufferPool, Doorbell, InputGate, LocalChannel, NetError, OutputChannel, PeerSession};
use glommio::net::TcpListener;
use support::*;

const CHANNELS: u32 = 2;
const BUFFERS_PER_CHANNEL: u64 = 300;
const D: u64 = 0xd00d;

/// Producer side (TaskManager 2, the acceptor unless told otherwise): job `D` with outbound
/// channels 0..CHANNELS.
struct Producer {
    pool: BufferPool,
    bell: Arc<Doorbell>,
    producer_bell: Arc<Doorbell>,
    session: PeerSession,
    outputs: Vec<OutputChannel>,
}

fn producer_side(n: u8, role: Role, expected: Option<u8>) -> Producer {
    let pool = BufferPool::new(64);
    let bell = Arc::new(Doorbell::new());
    let producer_bell = Arc::new(Doorbell::new());
    let mut session = PeerSession::new(session_config(n, role, expected, "the consumer"), pool.clone());
    let mut spec = JobSpec::new(D, FINGERPRINT, CHANNELS, bell.clone());
    let mut outputs = Vec::new();
    for c in 0..CHANNELS {
        let channel = LocalChannel::new_remote_out(producer_bell.clone(), bell.clone());
        spec.add_outbound(c, channel.clone());
        outputs.push(OutputChannel::new(channel, &CREDIT));
    }
    session.register_job(spec).unwrap();
    Producer { pool, bell, producer_bell, session, outputs }
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
        let mut session = PeerSession::new(session_config(2, Role::Acceptor, None, "TaskManager 1"), pool.clone());
        let mut spec = JobSpec::new(D, FINGERPRINT, CHANNELS, bell.clone());
        let mut inbound = Vec::new();
        for c in 0..CHANNELS {
            let channel =
                LocalChannel::new_remote_in(CREDIT.exclusive_per_channel, bell.clone(), consumer_bell.clone());
            spec.add_inbound(c, channel.clone(), validate_buffer::<Rec>);
            inbound.push(channel);
        }
        session.register_job(spec).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let stream = accept(&listener, "TaskManager 1", &net_config()).await.unwrap();
        let reader = glommio::spawn_local(consume(InputGate::new(inbound, &CREDIT), consumer_bell, 0));
        let outcome = run_session(stream, session, bell, &net_config(), "TaskManager 1".into(), || None).await;
        let counts = reader.await;
        (outcome, counts, pool.stats().peak_in_use, pool.in_use())
    });
    let addr = wait(&addr_rx, "consumer listener");
    let producer = on_executor("cs-test-producer", move || async move {
        let p = producer_side(1, Role::Dialer, Some(2));
        let stream = dial(addr, "TaskManager 2", &net_config()).await.unwrap();
        shrink_send_buffer(&stream);
        let writer = glommio::spawn_local(produce(p.outputs, p.pool.clone(), p.producer_bell, BUFFERS_PER_CHANNEL, 0));
        let outcome = run_session(stream, p.session, p.bell, &net_config(), "TaskManager 2".into(), || None).await;
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
        (NetConfig { open_timeout: Duration::ZERO, ..net_config() }, "open_timeout"),
    ];
    for (config, setting) in bad {
        match config.validate() {
            Err(NetError::InvalidConfig { setting: s, .. }) => assert_eq!(s, setting),
            other => panic!("expected {setting} to be refused, got {other:?}"),
        }
    }
}

/// A session's result and the buffers of its pool still in use once everything was dropped.
type Ended = (Result<SessionOutcome, NetError>, u32);

/// Runs the producer side (TaskManager 2) on its own executor, accepting one connection on a
/// loopback listener; returns the listener's address and the session's result.
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
        let p = producer_side(2, Role::Acceptor, None);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let stream = accept(&listener, "TaskManager 1", &config).await.unwrap();
        let writer = with_data
            .then(|| glommio::spawn_local(produce(p.outputs, p.pool.clone(), p.producer_bell, BUFFERS_PER_CHANNEL, 0)));
        let outcome = run_session(stream, p.session, p.bell, &config, "TaskManager 1".into(), interrupt).await;
        if let Some(writer) = writer {
            writer.cancel().await;
        }
        (outcome, p.pool.in_use())
    });
    (wait(&addr_rx, "listener"), result)
}

fn cluster() -> ClusterAuth {
    ClusterAuth::new(TOKEN, None)
}

/// A raw TaskManager 1 through the handshake, with job `D` opened.
fn opened_peer(addr: SocketAddr) -> RawPeer {
    let mut peer = RawPeer::connect(addr);
    peer.handshake(1, &cluster());
    peer.send(Message::JobOpen { deployment: D, fingerprint: FINGERPRINT, channels: CHANNELS });
    peer
}

#[test]
fn a_peer_dropped_mid_stream_is_lost() {
    let (addr, result) = producer_accepting(true);
    let mut peer = opened_peer(addr);
    for channel in 0..CHANNELS {
        peer.send(Message::PartitionRequest { deployment: D, channel, initial_credit: 2 });
    }
    peer.until("Buffer");
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
fn garbage_instead_of_a_hello_fails_the_handshake_and_the_peer_is_told() {
    let (addr, result) = producer_accepting(false);
    let mut rogue = RawPeer::connect(addr);
    let mut garbage = [0u8; HEADER];
    garbage[..4].copy_from_slice(b"XXXX");
    std::io::Write::write_all(&mut rogue.stream, &garbage).unwrap();
    let (outcome, in_use) = wait(&result, "session after bad magic");
    match outcome {
        Err(e @ NetError::HandshakeFailed { .. }) => {
            let NetError::HandshakeFailed { peer, reason } = &e else { unreachable!() };
            assert_eq!(peer, "TaskManager 1");
            assert_eq!(*reason, HandshakeError::Malformed(FrameError::BadMagic { found: *b"XXXX" }));
            assert!(!e.is_retryable());
        }
        other => panic!("expected HandshakeFailed(BadMagic), got {other:?}"),
    }
    assert_eq!(in_use, 0, "no buffer leaked");
    let frames = rogue.rest();
    assert!(frames[0].starts_with("Hello"), "{frames:?}");
    let last = frames.last().unwrap();
    assert!(
        last.starts_with("Error { deployment: 0, code: HandshakeMismatch") && last.contains("bad frame magic"),
        "{frames:?}"
    );
}

#[test]
fn a_peer_of_another_cluster_is_refused_with_a_handshake_error() {
    let (addr, result) = producer_accepting(false);
    let mut stranger = RawPeer::connect(addr);
    let other = ClusterAuth::new([0x01; 32], None);
    let hello = corestream_netstack::Hello {
        tm: tm(1),
        cluster_token: *other.token(),
        nonce: [1; 32],
        pid: 1,
        heartbeat_ms: 200,
    };
    stranger.send(Message::Hello(hello));
    match wait(&result, "session with another cluster's TaskManager").0 {
        Err(NetError::HandshakeFailed { reason: HandshakeError::WrongClusterToken, peer }) => {
            assert_eq!(peer, "TaskManager 1")
        }
        other => panic!("expected HandshakeFailed(WrongClusterToken), got {other:?}"),
    }
    let frames = stranger.rest();
    assert!(frames.last().unwrap().contains("wrong cluster token"), "{frames:?}");
}

#[test]
fn a_silent_peer_times_out_while_this_side_sends_heartbeats() {
    let config = NetConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_millis(300),
        ..net_config()
    };
    let (addr, result) = producer_accepting_with(false, config, || None);
    let mut peer = RawPeer::connect(addr);
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
    let frames = peer.rest();
    assert!(frames.iter().filter(|f| *f == "Heartbeat").count() >= 2, "idle side sends heartbeats: {frames:?}");
}

#[test]
fn a_peer_error_or_cancel_ends_the_job() {
    let (addr, result) = producer_accepting(false);
    let mut peer = opened_peer(addr);
    peer.send(Message::Error { deployment: D, code: ErrorCode::JobFailed, message: "task Map (2/4) panicked" });
    let frames = peer.ack_and_close();
    assert!(frames.iter().any(|f| f == "JobClose { deployment: 53261 }"), "the error is answered: {frames:?}");
    match wait(&result, "session after ERROR(2)").0 {
        Err(e @ NetError::PeerFailed { .. }) => {
            assert_eq!(e.to_string(), "the job failed on TaskManager 1: task Map (2/4) panicked");
        }
        other => panic!("expected PeerFailed, got {other:?}"),
    }

    let (addr, result) = producer_accepting(false);
    let mut peer = opened_peer(addr);
    peer.send(Message::Cancel { deployment: D, reason: "cancelled by the user" });
    peer.ack_and_close();
    let (outcome, in_use) = wait(&result, "session after CANCEL");
    let end = outcome.expect("a cancelled peer is not a failure").end;
    assert_eq!(end, SessionEnd::PeerCancelled { reason: "cancelled by the user".into() });
    assert_eq!(in_use, 0);
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[test]
fn a_local_interrupt_cancels_the_job_and_the_connection_closes() {
    let interrupt = || {
        INTERRUPTED
            .load(std::sync::atomic::Ordering::Acquire)
            .then(|| Interrupt::Cancel { reason: "job cancelled".into() })
    };
    let (addr, result) = producer_accepting_with(false, net_config(), interrupt);
    let mut peer = opened_peer(addr);
    let before = peer.until("JobOpen");
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Release);
    let frames = peer.ack_and_close();
    let (outcome, in_use) = wait(&result, "interrupted session");
    let end = outcome.expect("an interrupted session ends without error").end;
    assert_eq!(end, SessionEnd::Interrupted(Interrupt::Cancel { reason: "job cancelled".into() }));
    assert_eq!(in_use, 0);
    let cancel = r#"Cancel { deployment: 53261, reason: "job cancelled" }"#;
    assert!(frames.iter().any(|f| f == cancel), "{before:?} then {frames:?}");
    assert_eq!(frames.last().map(String::as_str), Some("Close"), "{frames:?}");
}

/// A peer speaking another protocol version fails the handshake (ERROR code 3, as the wire
/// spec's versioning rule says).
#[test]
fn a_peer_with_another_version_gets_a_handshake_error() {
    let (addr, result) = producer_accepting(false);
    let mut peer = RawPeer::connect(addr);
    let hello =
        corestream_netstack::Hello { tm: tm(1), cluster_token: TOKEN, nonce: [1; 32], pid: 1, heartbeat_ms: 200 };
    let mut old = frame_bytes(Message::Hello(hello));
    old[4] = 1;
    std::io::Write::write_all(&mut peer.stream, &old).unwrap();
    match wait(&result, "the session after a version 1 HELLO").0 {
        Err(NetError::HandshakeFailed {
            reason: HandshakeError::UnsupportedVersion { found: 1, supported: 2 },
            ..
        }) => {}
        other => panic!("expected HandshakeFailed(UnsupportedVersion), got {other:?}"),
    }
    let frames = peer.rest();
    let last = frames.last().unwrap();
    assert!(last.contains("HandshakeMismatch") && last.contains("version 1"), "{frames:?}");
}

#[test]
fn a_receiver_without_a_free_buffer_fails_the_job_and_tells_the_peer_why() {
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let result = on_executor("cs-test-exhausted", move || async move {
        let pool = BufferPool::new(1);
        let held = pool.take().unwrap();
        let bell = Arc::new(Doorbell::new());
        let consumer_bell = Arc::new(Doorbell::new());
        let mut session = PeerSession::new(session_config(2, Role::Acceptor, None, "TaskManager 1"), pool.clone());
        let mut spec = JobSpec::new(D, FINGERPRINT, CHANNELS, bell.clone());
        for c in 0..CHANNELS {
            let channel =
                LocalChannel::new_remote_in(CREDIT.exclusive_per_channel, bell.clone(), consumer_bell.clone());
            spec.add_inbound(c, channel, validate_buffer::<Rec>);
        }
        session.register_job(spec).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let stream = accept(&listener, "TaskManager 1", &net_config()).await.unwrap();
        let outcome = run_session(stream, session, bell, &net_config(), "TaskManager 1".into(), || None).await;
        drop(held);
        (outcome, pool.in_use())
    });
    let addr = wait(&addr_rx, "listener");
    let mut peer = opened_peer(addr);
    peer.until("PartitionRequest { deployment: 53261, channel: 0");
    let payload = {
        let pool = BufferPool::new(1);
        let mut builder = pool.take().unwrap();
        corestream_netstack::RecordWriter::new().write(&mut builder, &(0u32, 0u64)).unwrap();
        builder.freeze().as_slice().to_vec()
    };
    peer.send(Message::Buffer { deployment: D, channel: 0, seq: 0, backlog: 0, payload: &payload });
    let frames = peer.ack_and_close();
    let (outcome, in_use) = wait(&result, "session after a BUFFER with no free pool buffer");
    assert_eq!(outcome.unwrap_err(), NetError::PoolExhausted { capacity: 1 });
    assert_eq!(in_use, 0, "no buffer leaked");
    let error = frames.iter().find(|f| f.starts_with("Error")).expect("an ERROR frame");
    assert!(error.contains("deployment: 53261") && error.contains("JobFailed") && error.contains("pool"), "{frames:?}");
}
