//! One job across two TaskManagers in one test process: two clusters, each with a
//! [`Distribution`] and its own data listener, build the same job and deploy their halves; the
//! channels between the halves cross a loopback TCP connection. Results must equal a single
//! cluster's at several parallelisms, a peer that breaks the protocol must fail the job with
//! an error naming it (and leave every buffer in the pool), and the cluster must run the next
//! job afterwards.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use corestream::{
    ClusterConfig, Distribution, JobError, JobResult, LocalCluster, NetConfig, NetError, RuntimeMode, StreamEnvironment,
};
use corestream_netstack::handshake::{auth_mac, ClusterAuth, Role, TmId};
use corestream_netstack::wire::{decode_frame, FrameError, Message, HEADER_BYTES};
use corestream_netstack::Hello;

fn net() -> NetConfig {
    NetConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        accept_timeout: Duration::from_secs(5),
        ..NetConfig::default()
    }
}

/// `count` TaskManagers sharing `total_slots` job slots, each listening on a loopback port.
fn task_managers(count: u32, total_slots: u32) -> Vec<LocalCluster> {
    let listeners: Vec<Arc<TcpListener>> =
        (0..count).map(|_| Arc::new(TcpListener::bind("127.0.0.1:0").expect("bind"))).collect();
    let peers: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let distribution = Distribution::new(i as u32, count, total_slots, peers.clone()).unwrap();
            LocalCluster::start(ClusterConfig {
                pin_slots: false,
                distribution: Some(distribution),
                data_listener: Some(listener),
                net: net(),
                ..Default::default()
            })
            .expect("TaskManager starts")
        })
        .collect()
}

/// Runs the job built by `build` on every cluster at once; the outputs collected on each are
/// merged. Returns the merged output and each TaskManager's result.
fn run_everywhere<T: Send + 'static>(
    clusters: &[LocalCluster],
    build: impl Fn(&mut StreamEnvironment) -> corestream::CollectStream<T> + Send + Sync + Clone + 'static,
) -> (Vec<T>, Vec<Result<JobResult, JobError>>) {
    let threads: Vec<_> = clusters
        .iter()
        .map(|c| {
            let c = c.clone();
            let build = build.clone();
            std::thread::spawn(move || {
                let mut env = c.environment();
                let out = build(&mut env);
                let job = env.execute_async("remote-test");
                let job = match job {
                    Ok(j) => j,
                    Err(e) => return (Vec::new(), Err(e)),
                };
                let collected: Vec<T> = out.collect();
                (collected, job.join())
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut results = Vec::new();
    for t in threads {
        let (out, result) = t.join().expect("TaskManager thread");
        all.extend(out);
        results.push(result);
    }
    (all, results)
}

fn keyed_sum(env: &mut StreamEnvironment, parallelism: u32) -> corestream::CollectStream<(u64, u64)> {
    env.set_parallelism(parallelism).set_runtime_mode(RuntimeMode::Batch);
    env.from_generator(200_000, |i| (i.wrapping_mul(7919) % 1000, i))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1.wrapping_add(b.1)))
        .name("Sum")
        .collect()
}

const WORDS: [&str; 7] = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"];

fn word_count(env: &mut StreamEnvironment, parallelism: u32) -> corestream::CollectStream<(String, u64)> {
    env.set_parallelism(parallelism).set_runtime_mode(RuntimeMode::Batch);
    env.from_generator(50_000, |i| format!("{} {}", WORDS[(i % 7) as usize], WORDS[(i * i % 5) as usize]))
        .flat_map(|line: String| line.split(' ').map(|w| (w.to_string(), 1u64)).collect::<Vec<_>>())
        .key_by(|r: &(String, u64)| r.0.clone())
        .reduce(|a, b| (a.0, a.1 + b.1))
        .name("Count")
        .collect()
}

fn single<T: Send + 'static>(
    parallelism: u32,
    build: impl Fn(&mut StreamEnvironment) -> corestream::CollectStream<T>,
) -> Vec<T> {
    let cluster = corestream_tests::cluster(parallelism);
    let mut env = cluster.environment();
    let out = build(&mut env);
    let job = env.execute_async("single").unwrap();
    let collected = out.collect();
    job.join().unwrap();
    collected
}

fn final_totals<K: Ord, V>(pairs: Vec<(K, V)>) -> BTreeMap<K, V> {
    // Batch mode emits one final result per key.
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        assert!(map.insert(k, v).is_none(), "a key was emitted twice");
    }
    map
}

#[test]
fn keyed_sum_across_two_task_managers_equals_one_process() {
    for p in [2, 3, 4] {
        let expected = final_totals(single(p, |env| keyed_sum(env, p)));
        let clusters = task_managers(2, p);
        let (got, results) = run_everywhere(&clusters, move |env| keyed_sum(env, p));
        let results: Vec<JobResult> = results.into_iter().map(|r| r.expect("job succeeds")).collect();
        assert_eq!(final_totals(got), expected, "parallelism {p}");
        for (tm, r) in results.iter().enumerate() {
            assert_eq!(r.network.len(), 1, "TaskManager {tm} has one connection at parallelism {p}");
            let stats = &r.network[0].stats;
            assert!(stats.buffers_out > 0 && stats.buffers_in > 0, "records crossed both ways: {stats:?}");
        }
        let sum_in: u64 = results.iter().map(|r| r.records_in("Sum")).sum();
        assert_eq!(sum_in, 200_000, "every record reached the reducers once (parallelism {p})");
        for c in &clusters {
            assert_eq!(c.pool().in_use(), 0, "every buffer is back in the pool");
        }
    }
}

#[test]
fn word_count_across_two_task_managers_equals_one_process() {
    for p in [2, 3, 4] {
        let expected = final_totals(single(p, |env| word_count(env, p)));
        let clusters = task_managers(2, p);
        let (got, results) = run_everywhere(&clusters, move |env| word_count(env, p));
        for r in results {
            r.expect("job succeeds");
        }
        assert_eq!(final_totals(got), expected, "parallelism {p}");
    }
}

#[test]
fn three_task_managers_run_one_job() {
    let expected = final_totals(single(3, |env| keyed_sum(env, 3)));
    let clusters = task_managers(3, 3);
    let (got, results) = run_everywhere(&clusters, |env| keyed_sum(env, 3));
    for r in &results {
        let r = r.as_ref().expect("job succeeds");
        assert_eq!(r.network.len(), 2, "each TaskManager talks to the two others");
    }
    assert_eq!(final_totals(got), expected);
}

#[test]
fn a_job_too_wide_for_the_task_managers_is_refused() {
    let clusters = task_managers(2, 2);
    let mut env = clusters[0].environment();
    let _ = keyed_sum(&mut env, 3);
    let err = env.execute_async("too-wide").unwrap_err();
    assert!(err.to_string().contains("distribution.total_slots"), "{err}");
}

/// What the fake peer sends after the handshake.
enum Garbage {
    /// These bytes, right after HELLO.
    Now(Vec<u8>),
    /// A frame built for the first channel TaskManager 0 requests (one it consumes), sent once
    /// that PARTITION_REQUEST has granted credit.
    OnRequest(fn(u32) -> Vec<u8>),
}

/// Reads one whole frame (header and body).
fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut frame = vec![0u8; HEADER_BYTES];
    stream.read_exact(&mut frame).expect("a frame header arrives");
    let body_len = u32::from_le_bytes(frame[8..12].try_into().unwrap()) as usize;
    frame.resize(HEADER_BYTES + body_len, 0);
    stream.read_exact(&mut frame[HEADER_BYTES..]).expect("the frame body arrives");
    frame
}

fn write_message(stream: &mut TcpStream, message: Message<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    message.encode_into(&mut bytes).unwrap();
    stream.write_all(&bytes).unwrap();
    bytes
}

/// A fake TaskManager 1 that accepts TaskManager 0's connection, passes the handshake with
/// what TaskManager 0's HELLO shows (application mode's token; its id is its index), answers
/// its JOB_OPEN with a matching one, then sends `garbage`.
fn rogue_peer(listener: TcpListener, garbage: Garbage) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("TaskManager 0 dials");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let theirs = read_frame(&mut stream);
        let (frame, _) = decode_frame(&theirs).expect("a valid HELLO");
        let Message::Hello(hello) = frame else { panic!("first frame is HELLO, got {frame:?}") };
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&1u32.to_be_bytes());
        let reply = Hello { tm: TmId(id), pid: std::process::id(), nonce: [7; 32], ..hello };
        let mine = write_message(&mut stream, Message::Hello(reply));
        let auth = ClusterAuth::new(hello.cluster_token, None);
        write_message(&mut stream, Message::Auth { mac: auth_mac(&auth, &theirs, &mine, Role::Acceptor) });
        loop {
            let frame = read_frame(&mut stream);
            if let Ok((open @ Message::JobOpen { .. }, _)) = decode_frame(&frame) {
                write_message(&mut stream, open);
                break;
            }
        }
        let garbage = match garbage {
            Garbage::Now(bytes) => bytes,
            Garbage::OnRequest(build) => loop {
                let frame = read_frame(&mut stream);
                if let Ok((Message::PartitionRequest { channel, .. }, _)) = decode_frame(&frame) {
                    break build(channel);
                }
            },
        };
        stream.write_all(&garbage).unwrap();
        // Read until TaskManager 0 closes, so our bytes are not lost to a reset.
        let mut sink = [0u8; 4096];
        while let Ok(1..) = stream.read(&mut sink) {}
    })
}

fn run_against_rogue(garbage: Garbage) -> (JobError, LocalCluster) {
    let mine = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
    let rogue = TcpListener::bind("127.0.0.1:0").unwrap();
    let peers = vec![mine.local_addr().unwrap(), rogue.local_addr().unwrap()];
    let rogue = rogue_peer(rogue, garbage);
    let cluster = LocalCluster::start(ClusterConfig {
        pin_slots: false,
        distribution: Some(Distribution::new(0, 2, 2, peers).unwrap()),
        data_listener: Some(mine),
        net: net(),
        ..Default::default()
    })
    .unwrap();
    let mut env = cluster.environment();
    let out = keyed_sum(&mut env, 2);
    let job = env.execute_async("rogue").unwrap();
    let reader = std::thread::spawn(move || out.collect::<Vec<_>>().len());
    let err = job.join().expect_err("the job fails");
    reader.join().unwrap();
    rogue.join().unwrap();
    assert_eq!(cluster.pool().in_use(), 0, "every buffer is back in the pool after the failure");
    (err, cluster)
}

/// A version 2 frame header of deployment 1 (the one job of an application-mode connection).
fn header(kind: u8, body_len: u32, channel: u32, seq: u32, arg: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_BYTES);
    h.extend_from_slice(b"CSNF");
    h.push(2);
    h.push(kind);
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&body_len.to_le_bytes());
    h.extend_from_slice(&channel.to_le_bytes());
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&arg.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes());
    h
}

/// The frame error of a job that failed on a protocol error, of the connection or of the job.
fn protocol_error(err: &JobError) -> &FrameError {
    match err {
        JobError::Network(NetError::Protocol { peer, error } | NetError::JobProtocol { peer, error, .. }) => {
            assert!(peer.starts_with("TaskManager 1 (127.0.0.1:"), "the error names the peer: {peer}");
            error
        }
        other => panic!("expected a protocol error, got {other}"),
    }
}

#[test]
fn a_peer_sending_bad_magic_fails_the_job_naming_it() {
    let mut garbage = header(4, 64, 0, 0, 0);
    garbage[..4].copy_from_slice(b"HTTP");
    let (err, _) = run_against_rogue(Garbage::Now(garbage));
    assert!(matches!(protocol_error(&err), FrameError::BadMagic { .. }), "{err}");
}

#[test]
fn a_peer_sending_an_oversized_frame_fails_the_job_naming_it() {
    let (err, _) = run_against_rogue(Garbage::Now(header(4, 1 << 20, 0, 0, 0)));
    assert!(matches!(protocol_error(&err), FrameError::Oversized { .. }), "{err}");
}

/// A BUFFER of one `(u64, u64)` record whose 16-byte archive is followed by a length field
/// pointing far past the end of the buffer.
fn invalid_buffer(channel: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&16u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&[7u8; 16]);
    body.extend_from_slice(&4096u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut frame = header(4, body.len() as u32, channel, 0, 0);
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn a_peer_sending_an_invalid_buffer_fails_the_job_and_the_cluster_runs_the_next_job() {
    let (err, cluster) = run_against_rogue(Garbage::OnRequest(invalid_buffer));
    assert!(matches!(protocol_error(&err), FrameError::InvalidBuffer { .. }), "{err}");
    // The same TaskManager runs its next job; at parallelism 1 every task is on job slot 0,
    // its own, so no peer is needed.
    let mut env = cluster.environment();
    let out = keyed_sum(&mut env, 1);
    let job = env.execute_async("after").unwrap();
    let n = out.collect::<Vec<_>>().len();
    let result = job.join().expect("the next job runs");
    assert_eq!(n, 1000);
    assert!(result.network.is_empty());
}

/// A sink that spends `micros_per_record` of CPU per record, like an expensive user function,
/// checks that sequence numbers arrive strictly increasing, and keeps them.
struct SlowSequenceSink {
    micros_per_record: u64,
    last: Option<u64>,
    seen: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl corestream::Sink<(u64, String)> for SlowSequenceSink {
    fn write_batch(&mut self, batch: &mut Vec<(u64, String)>) -> Result<(), corestream::SinkError> {
        let busy_until = std::time::Instant::now() + Duration::from_micros(self.micros_per_record * batch.len() as u64);
        let mut seen = self.seen.lock().unwrap();
        for (seq, payload) in batch.drain(..) {
            if let Some(last) = self.last {
                if seq <= last {
                    return Err(format!("sequence {seq} arrived after {last}").into());
                }
            }
            assert_eq!(payload.len(), 200, "payload of record {seq} intact");
            self.last = Some(seq);
            seen.push(seq);
        }
        while std::time::Instant::now() < busy_until {
            std::hint::spin_loop();
        }
        Ok(())
    }
}

#[test]
fn a_slow_consumer_in_the_other_task_manager_stalls_the_producer_on_credit_without_loss() {
    const RECORDS: u64 = 400_000;
    let clusters = task_managers(2, 2);
    let seen: Vec<Arc<std::sync::Mutex<Vec<u64>>>> = (0..2).map(|_| Arc::default()).collect();
    let threads: Vec<_> = clusters
        .iter()
        .map(|c| {
            let c = c.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut env = c.environment();
                env.set_parallelism(2);
                env.from_generator(RECORDS, |i| (i, format!("{i:0>200}"))).set_parallelism(1).rebalance().add_sink(
                    "Slow Sink",
                    move |ctx: corestream::SinkContext| {
                        Ok(SlowSequenceSink {
                            // Subtask 1, on TaskManager 1, takes in 2 µs what the source makes in far less.
                            micros_per_record: if ctx.subtask == 1 { 2 } else { 0 },
                            last: None,
                            seen: seen[ctx.subtask as usize].clone(),
                        })
                    },
                );
                env.execute_async("slow-consumer").unwrap().join()
            })
        })
        .collect();
    let results: Vec<JobResult> = threads.into_iter().map(|t| t.join().unwrap().expect("job succeeds")).collect();
    let mut all: Vec<u64> = seen.iter().flat_map(|s| s.lock().unwrap().clone()).collect();
    all.sort_unstable();
    assert_eq!(all.len() as u64, RECORDS, "no record lost or duplicated");
    assert!(all.iter().enumerate().all(|(i, s)| *s == i as u64), "every sequence number once");
    assert!(!seen[1].lock().unwrap().is_empty(), "records crossed to TaskManager 1");

    let producer = &results[0];
    eprintln!(
        "producer: {:?}, reserved {}, pool peak {}",
        producer.network, producer.buffers_reserved, producer.pool_peak_in_use
    );
    let link = &producer.network[0];
    assert!(link.remote_credit_stalls > 0, "the producer ran out of credit: {link:?}");
    let reserved_bytes = u64::from(producer.buffers_reserved) * corestream_netstack::BUFFER_SIZE as u64;
    assert!(
        link.stats.bytes_out > 10 * reserved_bytes,
        "the stream ({} bytes) is far larger than the producer's reservation ({reserved_bytes} bytes)",
        link.stats.bytes_out
    );
    for (tm, r) in results.iter().enumerate() {
        assert!(
            r.pool_peak_in_use <= u64::from(r.buffers_reserved),
            "TaskManager {tm} used at most its reservation: peak {} of {}",
            r.pool_peak_in_use,
            r.buffers_reserved
        );
    }
}

#[test]
fn silent_connections_do_not_hold_up_the_peers_behind_them() {
    // TaskManager 2 accepts from TaskManagers 0 and 1. Two connections that never say HELLO
    // reach its listener first; identified one after the other they would hold its accept
    // loop for two heartbeat timeouts, and the peers waiting for its HELLO would time out.
    let expected = final_totals(single(3, |env| keyed_sum(env, 3)));
    let clusters = task_managers(3, 3);
    let address = clusters[2].data_address().expect("TaskManager 2 listens");
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(address).expect("connects")).collect();
    let (got, results) = run_everywhere(&clusters, |env| keyed_sum(env, 3));
    for r in &results {
        let r = r.as_ref().expect("job succeeds");
        assert_eq!(r.network.len(), 2, "each TaskManager talks to the two others");
    }
    assert_eq!(final_totals(got), expected);
    drop(silent);
}
