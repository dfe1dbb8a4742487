//! Jobs across TaskManagers on the cluster runtime in one test process: a JobManager and
//! TaskManagers, each with its own threads, whose job channels cross the loopback data
//! connections between them (one per pair of TaskManagers, shared by the jobs). Results must
//! equal a single process's at several parallelisms; a peer that breaks the protocol or fails
//! its handshake (a fake TaskManager that registers with the JobManager and then misbehaves on
//! its data connections) must fail the job with an error naming it, leave every buffer in the
//! real TaskManagers' pools, and leave them able to run the next job.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corestream::jobmanager::api::{ClusterApi, JobExecutionResult, JobState, SubmitRequest};
use corestream::jobmanager::{JobManager, JobManagerConfig};
use corestream::registry::{JobParts, JobRegistry, JobType};
use corestream::rpc::ids::TaskManagerId;
use corestream::rpc::messages::{
    Accumulator, Accumulators, Bytes32, JmMessage, PartOutcome, Registration, SlotDescription, TmMessage,
    PROTOCOL_VERSION,
};
use corestream::taskmanager::{TaskManager, TaskManagerConfig};
use corestream::{ClusterConfig, NetConfig, RuntimeMode, StreamEnvironment};
use corestream_netstack::handshake::{auth_mac, ClusterAuth, Role, TmId};
use corestream_netstack::wire::{decode_frame, Message, HEADER_BYTES};
use corestream_netstack::Hello;

const WORDS: [&str; 7] = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"];

fn keyed_sum(env: &mut StreamEnvironment) -> corestream::CollectStream<(u64, u64)> {
    env.set_runtime_mode(RuntimeMode::Batch);
    env.from_generator(200_000, |i| (i.wrapping_mul(7919) % 1000, i))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1.wrapping_add(b.1)))
        .name("Sum")
        .collect()
}

fn word_count(env: &mut StreamEnvironment) -> corestream::CollectStream<(String, u64)> {
    env.set_runtime_mode(RuntimeMode::Batch);
    env.from_generator(50_000, |i| format!("{} {}", WORDS[(i % 7) as usize], WORDS[(i * i % 5) as usize]))
        .flat_map(|line: String| line.split(' ').map(|w| (w.to_string(), 1u64)).collect::<Vec<_>>())
        .key_by(|r: &(String, u64)| r.0.clone())
        .reduce(|a, b| (a.0, a.1 + b.1))
        .name("Count")
        .collect()
}

/// Batch mode emits one final result per key: the totals, each key once.
fn final_totals<K: Ord, V>(pairs: Vec<(K, V)>) -> BTreeMap<K, V> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        assert!(map.insert(k, v).is_none(), "a key was emitted twice");
    }
    map
}

/// An order-independent checksum of (key, total) pairs, keys given as text.
fn checksum<K: ToString>(pairs: impl Iterator<Item = (K, u64)>) -> u64 {
    pairs.fold(0u64, |acc, (k, v)| {
        let key = k
            .to_string()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        acc.wrapping_add(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ v)
    })
}

/// A job type whose part collects its output and reports its checksum and key count.
fn collecting<K, F>(name: &str, build: F) -> JobType
where
    K: Ord + ToString + Send + 'static,
    F: Fn(&mut StreamEnvironment) -> corestream::CollectStream<(K, u64)> + Send + Sync + 'static,
    (K, u64): corestream::Data,
{
    JobType::new(name, "test job", "", move |env, ctx| {
        let out = build(env);
        if ctx.planning {
            return Ok(JobParts::none());
        }
        let reader = std::thread::spawn(move || out.collect::<Vec<(K, u64)>>());
        Ok(JobParts::with_accumulators(move || {
            let got = final_totals(reader.join().map_err(|_| "the result reader panicked".to_string())?);
            let keys = got.len() as u64;
            Ok(Accumulators::from([
                ("checksum".to_string(), Accumulator::Checksum(checksum(got.into_iter()))),
                ("keys".to_string(), Accumulator::Count(keys)),
            ]))
        }))
    })
}

fn registry() -> JobRegistry {
    let mut r = JobRegistry::new();
    r.register(collecting("keyed-sum", keyed_sum));
    r.register(collecting("word-count", word_count));
    r
}

/// The checksum of the job's output in one process of `parallelism` slots.
fn single<K: Ord + ToString + Send + 'static>(
    parallelism: u32,
    build: impl Fn(&mut StreamEnvironment) -> corestream::CollectStream<(K, u64)>,
) -> u64
where
    (K, u64): corestream::Data,
{
    let cluster = corestream_tests::cluster(parallelism);
    let mut env = cluster.environment();
    env.set_parallelism(parallelism);
    let out = build(&mut env);
    let job = env.execute_async("single").unwrap();
    let collected = out.collect();
    job.join().unwrap();
    checksum(final_totals(collected).into_iter())
}

fn net() -> NetConfig {
    NetConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        accept_timeout: Duration::from_secs(5),
        ..NetConfig::default()
    }
}

fn jobmanager() -> JobManager {
    let settings = JobManagerConfig {
        rpc_bind: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(1000),
        slot_request_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    JobManager::start(settings, registry()).expect("JobManager starts")
}

fn taskmanager(jm: &JobManager, slots: u32) -> TaskManager {
    let settings = TaskManagerConfig {
        jobmanager: jm.rpc_address().to_string(),
        cluster: ClusterConfig { slots: Some(slots), pin_slots: false, net: net(), ..Default::default() },
        data_bind: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let tm = TaskManager::start(settings, registry()).expect("TaskManager starts");
    assert!(tm.wait_registered(Duration::from_secs(10)), "the TaskManager registers");
    tm
}

fn run(api: &dyn ClusterApi, job: &str, parallelism: u32) -> JobExecutionResult {
    let request =
        SubmitRequest { job: job.into(), args: Vec::new(), parallelism: Some(parallelism), ..Default::default() };
    let id = api.submit(request).expect("accepted").jobid.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = api.execution_result(&id).expect("the job is known");
        if r.state.is_terminal() {
            return r;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {:?}", r.state);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn checksum_of(r: &JobExecutionResult) -> u64 {
    assert_eq!(r.state, JobState::Finished, "{r:?}");
    match r.result.as_ref().expect("a finished job has an outcome").accumulators["checksum"] {
        Accumulator::Checksum(c) => c,
        ref other => panic!("checksum accumulator: {other:?}"),
    }
}

/// Waits until no deployment runs on `tms`, then checks that their pools are whole.
fn pools_whole(tms: &[&TaskManager]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for tm in tms {
        while tm.status().running_deployments > 0 {
            assert!(Instant::now() < deadline, "the TaskManager's parts ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tm.pool().in_use(), 0, "every buffer is back in the pool");
    }
}

#[test]
fn jobs_across_task_managers_equal_one_process() {
    let jm = jobmanager();
    let (tm1, tm2) = (taskmanager(&jm, 2), taskmanager(&jm, 2));
    let api = jm.api();
    for p in [2, 3, 4] {
        let r = run(api.as_ref(), "keyed-sum", p);
        assert_eq!(checksum_of(&r), single(p, keyed_sum), "keyed sum at parallelism {p}");
        let parts = &r.result.as_ref().unwrap().parts;
        assert_eq!(parts.len(), 2);
        for part in parts {
            assert_eq!(part.connections.len(), 1, "one link to the other TaskManager at parallelism {p}");
            let c = &part.connections[0];
            assert!(c.buffers_out > 0 && c.buffers_in > 0, "records crossed both ways: {c:?}");
        }
        let r = run(api.as_ref(), "word-count", p);
        assert_eq!(checksum_of(&r), single(p, word_count), "word count at parallelism {p}");
    }
    pools_whole(&[&tm1, &tm2]);
    let (s1, s2) = (tm1.status().data_plane, tm2.status().data_plane);
    assert_eq!(s1.dialed + s2.dialed, 1, "six jobs, one connection: {s1:?} {s2:?}");
    assert_eq!(s1.accepted + s2.accepted, 1, "{s1:?} {s2:?}");
}

#[test]
fn three_task_managers_run_one_job() {
    let jm = jobmanager();
    let tms = [taskmanager(&jm, 1), taskmanager(&jm, 1), taskmanager(&jm, 1)];
    // Connections that never say HELLO reach every listener first: they must hold up neither
    // the accepting side nor the peers connecting after them.
    let silent: Vec<TcpStream> =
        tms.iter().flat_map(|tm| (0..2).map(|_| TcpStream::connect(tm.data_address().unwrap()).unwrap())).collect();
    let r = run(jm.api().as_ref(), "keyed-sum", 3);
    drop(silent);
    assert_eq!(checksum_of(&r), single(3, keyed_sum));
    for part in &r.result.as_ref().unwrap().parts {
        assert_eq!(part.connections.len(), 2, "each TaskManager talks to the two others: {part:?}");
    }
    for tm in &tms {
        let s = tm.status().data_plane;
        assert_eq!((s.peers.len(), s.dialed + s.accepted, s.open), (2, 2, 2), "{s:?}");
    }
}

/// What the fake TaskManager does on a data connection once the handshake is through.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Sends an AUTH whose MAC does not verify (the handshake fails).
    BadAuth,
    /// Sends these bytes right after answering JOB_OPEN (`deployment` → bytes).
    Now(fn(u64) -> Vec<u8>),
    /// Sends a frame built for the first channel the peer requests, once that
    /// PARTITION_REQUEST has granted credit (`channel`, `deployment` → bytes).
    OnRequest(fn(u32, u64) -> Vec<u8>),
}

/// The fake's id: the highest, so every real TaskManager dials it.
const FAKE: TaskManagerId = TaskManagerId([0xff; 16]);

/// A TaskManager that registers with the JobManager (one slot), accepts every deployment and
/// answers cancellations, and misbehaves on every data connection it accepts.
struct FakeTaskManager {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for FakeTaskManager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads whatever arrived into `buffer` and takes the complete control frames from it.
fn take_control_frames(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Vec<JmMessage> {
    let mut chunk = [0u8; 65536];
    match stream.read(&mut chunk) {
        Ok(0) => return Vec::new(),
        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Err(e) => panic!("the fake's control connection failed: {e}"),
    }
    let mut messages = Vec::new();
    while buffer.len() >= 4 {
        let len = u32::from_be_bytes(buffer[..4].try_into().unwrap()) as usize;
        if buffer.len() < 4 + len {
            break;
        }
        messages.push(serde_json::from_slice(&buffer[4..4 + len]).expect("a JobManager message"));
        buffer.drain(..4 + len);
    }
    messages
}

fn send_control(stream: &mut TcpStream, message: &TmMessage) {
    let body = serde_json::to_vec(message).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).unwrap();
}

fn fake_task_manager(jm: &JobManager, misbehaviour: Misbehaviour) -> FakeTaskManager {
    let stop = Arc::new(AtomicBool::new(false));
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    data.set_nonblocking(true).unwrap();
    let data_address = data.local_addr().unwrap();
    let mut control = TcpStream::connect(jm.rpc_address()).unwrap();
    control.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buffer = Vec::new();
    let next = |control: &mut TcpStream, buffer: &mut Vec<u8>| loop {
        if let Some(m) = take_control_frames(control, buffer).into_iter().next() {
            return m;
        }
    };
    assert!(matches!(next(&mut control, &mut buffer), JmMessage::Challenge { .. }));
    let registration = Registration {
        protocol: PROTOCOL_VERSION,
        version: "fake".into(),
        id: FAKE,
        hostname: "fake".into(),
        pid: std::process::id(),
        data_address,
        slots: vec![SlotDescription { index: 0, cpu: None }],
        network_buffers: 64,
        job_types: vec!["keyed-sum".into()],
        proof: None,
        nonce: Bytes32([0; 32]),
    };
    send_control(&mut control, &TmMessage::Register(Box::new(registration)));
    let token = match next(&mut control, &mut buffer) {
        JmMessage::Registered { cluster_token, .. } => cluster_token.0,
        other => panic!("the fake was not registered: {other:?}"),
    };
    let control_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut last_beat = Instant::now();
            while !stop.load(Ordering::Acquire) {
                for m in take_control_frames(&mut control, &mut buffer) {
                    let answer = match m {
                        JmMessage::RequestSlots { allocation, slots, .. } => {
                            Some(TmMessage::SlotsOffered { allocation, slots })
                        }
                        JmMessage::Cancel { deployment, .. } => {
                            Some(TmMessage::PartEnded { deployment, outcome: PartOutcome::Cancelled })
                        }
                        _ => None,
                    };
                    if let Some(answer) = answer {
                        send_control(&mut control, &answer);
                    }
                }
                if last_beat.elapsed() > Duration::from_millis(100) {
                    last_beat = Instant::now();
                    send_control(&mut control, &TmMessage::Heartbeat { deployments: Vec::new(), data_plane: None });
                }
            }
        })
    };
    let data_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut connections = Vec::new();
            while !stop.load(Ordering::Acquire) {
                match data.accept() {
                    Ok((stream, _)) => {
                        let stop = stop.clone();
                        connections.push(std::thread::spawn(move || misbehave(stream, token, misbehaviour, &stop)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => panic!("the fake's data listener failed: {e}"),
                }
            }
            for c in connections {
                let _ = c.join();
            }
        })
    };
    FakeTaskManager { stop, threads: vec![control_thread, data_thread] }
}

/// Reads one whole data frame (header and body).
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

/// One data connection a real TaskManager dialed: the handshake (as the acceptor), then the
/// misbehaviour; then reads until the peer closes or the fake stops.
fn misbehave(mut stream: TcpStream, token: [u8; 32], misbehaviour: Misbehaviour, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let theirs = read_frame(&mut stream);
    let (frame, _) = decode_frame(&theirs).expect("a valid HELLO");
    let Message::Hello(hello) = frame else { panic!("the first frame is HELLO, got {frame:?}") };
    assert_eq!(hello.cluster_token, token, "the real TaskManager proves the JobManager's token");
    let reply = Hello { tm: TmId(FAKE.0), pid: std::process::id(), nonce: [7; 32], ..hello };
    let mine = write_message(&mut stream, Message::Hello(reply));
    let mac = match misbehaviour {
        Misbehaviour::BadAuth => [0u8; 32],
        _ => auth_mac(&ClusterAuth::new(token, None), &theirs, &mine, Role::Acceptor),
    };
    write_message(&mut stream, Message::Auth { mac });
    let garbage = match misbehaviour {
        Misbehaviour::BadAuth => None,
        Misbehaviour::Now(build) => {
            let deployment = answer_job_open(&mut stream);
            Some(build(deployment))
        }
        Misbehaviour::OnRequest(build) => {
            let deployment = answer_job_open(&mut stream);
            loop {
                if let Ok((Message::PartitionRequest { channel, .. }, _)) = decode_frame(&read_frame(&mut stream)) {
                    break Some(build(channel, deployment));
                }
            }
        }
    };
    if let Some(bytes) = garbage {
        stream.write_all(&bytes).unwrap();
    }
    // Read until the real TaskManager closes (so our bytes are not lost to a reset) or the
    // fake stops.
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut sink = [0u8; 4096];
    while !stop.load(Ordering::Acquire) {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Answers the first JOB_OPEN with the same one; returns its deployment.
fn answer_job_open(stream: &mut TcpStream) -> u64 {
    loop {
        let frame = read_frame(stream);
        if let Ok((open @ Message::JobOpen { deployment, .. }, _)) = decode_frame(&frame) {
            write_message(stream, open);
            return deployment;
        }
    }
}

/// A version 2 frame header.
fn header(kind: u8, body_len: u32, channel: u32, seq: u32, arg: u32, deployment: u64) -> Vec<u8> {
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
    h.extend_from_slice(&deployment.to_le_bytes());
    h
}

/// A BUFFER of one `(u64, u64)` record whose 16-byte archive is followed by a length field
/// pointing far past the end of the buffer.
fn invalid_buffer(channel: u32, deployment: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&16u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&[7u8; 16]);
    body.extend_from_slice(&4096u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut frame = header(4, body.len() as u32, channel, 0, 0, deployment);
    frame.extend_from_slice(&body);
    frame
}

fn bad_magic(deployment: u64) -> Vec<u8> {
    let mut garbage = header(4, 64, 0, 0, 0, deployment);
    garbage[..4].copy_from_slice(b"HTTP");
    garbage
}

fn oversized(deployment: u64) -> Vec<u8> {
    header(4, 1 << 20, 0, 0, 0, deployment)
}

/// Runs a keyed sum over two real TaskManagers and the fake (one slot each); returns the
/// job's failure, after checking that it names the fake, that the real TaskManagers' pools
/// are whole, and that they run the next job once the fake has gone.
fn against_fake(misbehaviour: Misbehaviour) -> (String, [corestream_netstack::PlaneStats; 2]) {
    let jm = jobmanager();
    let (tm1, tm2) = (taskmanager(&jm, 1), taskmanager(&jm, 1));
    let fake = fake_task_manager(&jm, misbehaviour);
    let api = jm.api();
    let r = run(api.as_ref(), "keyed-sum", 3);
    assert_eq!(r.state, JobState::Failed, "{r:?}");
    let failure = r.result.as_ref().and_then(|o| o.failure.clone()).expect("a failure message");
    assert!(failure.contains("TaskManager ffffffff (127.0.0.1:"), "the error names the fake: {failure}");
    pools_whole(&[&tm1, &tm2]);
    let stats = [tm1.status().data_plane, tm2.status().data_plane];
    drop(fake);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.overview().taskmanagers != 2 {
        assert!(Instant::now() < deadline, "the JobManager noticed the fake left");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(checksum_of(&run(api.as_ref(), "keyed-sum", 2)), single(2, keyed_sum), "the next job runs");
    pools_whole(&[&tm1, &tm2]);
    (failure, stats)
}

/// The counters of the real TaskManagers' connections to the fake and to each other.
fn to_fake(stats: &corestream_netstack::PlaneStats) -> corestream_netstack::PeerCounters {
    stats.peers.get(&TmId(FAKE.0)).cloned().expect("a connection to the fake")
}

#[test]
fn a_peer_sending_bad_magic_fails_the_job_naming_it() {
    let (failure, stats) = against_fake(Misbehaviour::Now(bad_magic));
    assert!(failure.contains("bad frame magic"), "{failure}");
    for s in &stats {
        assert_eq!(to_fake(s).failed, 1, "the connection to the fake failed: {s:?}");
    }
}

#[test]
fn a_peer_sending_an_oversized_frame_fails_the_job_naming_it() {
    let (failure, stats) = against_fake(Misbehaviour::Now(oversized));
    assert!(failure.contains("declares a body of 1048576 bytes, more than its maximum"), "{failure}");
    for s in &stats {
        assert_eq!(to_fake(s).failed, 1, "{s:?}");
    }
}

#[test]
fn a_peer_sending_an_invalid_buffer_fails_only_that_job() {
    let (failure, stats) = against_fake(Misbehaviour::OnRequest(invalid_buffer));
    assert!(failure.contains("deployment") && failure.contains("BUFFER on channel"), "a job-level error: {failure}");
    // The job failed; the connections did not.
    for s in &stats {
        let fake = to_fake(s);
        assert_eq!((fake.failed, fake.open), (0, 1), "the connection to the fake survives its job: {s:?}");
        assert!(s.peers.values().all(|p| p.failed == 0), "no connection failed: {s:?}");
    }
}

#[test]
fn a_peer_failing_the_handshake_fails_the_job_naming_it() {
    let (failure, stats) = against_fake(Misbehaviour::BadAuth);
    assert!(failure.contains("handshake") && failure.contains("MAC"), "{failure}");
    for s in &stats {
        assert_eq!(to_fake(s).failed, 1, "{s:?}");
        let members: Vec<_> = s.peers.iter().filter(|(id, _)| **id != TmId(FAKE.0)).collect();
        assert!(members.iter().all(|(_, p)| p.failed == 0), "the members' connection is unharmed: {s:?}");
    }
}

/// A sink that spends `micros_per_record` of CPU per record, like an expensive user function,
/// and checks that sequence numbers arrive strictly increasing.
struct SlowSequenceSink {
    micros_per_record: u64,
    last: Option<u64>,
    seen: Arc<Mutex<u64>>,
}

impl corestream::Sink<(u64, String)> for SlowSequenceSink {
    fn write_batch(&mut self, batch: &mut Vec<(u64, String)>) -> Result<(), corestream::SinkError> {
        let busy_until = Instant::now() + Duration::from_micros(self.micros_per_record * batch.len() as u64);
        for (seq, payload) in batch.drain(..) {
            if let Some(last) = self.last {
                if seq <= last {
                    return Err(format!("sequence {seq} arrived after {last}").into());
                }
            }
            if payload.len() != 200 {
                return Err(format!("payload of record {seq} is {} bytes", payload.len()).into());
            }
            self.last = Some(seq);
            *self.seen.lock().unwrap() += 1;
        }
        while Instant::now() < busy_until {
            std::hint::spin_loop();
        }
        Ok(())
    }
}

#[test]
fn a_slow_consumer_in_the_other_task_manager_stalls_the_producer_on_credit_without_loss() {
    const RECORDS: u64 = 400_000;
    let seen = Arc::new(Mutex::new(0u64));
    let mut registry = JobRegistry::new();
    let counted = seen.clone();
    registry.register(JobType::new("slow", "a slow consumer", "", move |env, ctx| {
        let counted = counted.clone();
        env.from_generator(RECORDS, |i| (i, format!("{i:0>200}"))).set_parallelism(1).rebalance().add_sink(
            "Slow Sink",
            move |sink: corestream::SinkContext| {
                // The subtask on the second TaskManager takes 2 µs per record, far more than the
                // source needs to make one.
                Ok(SlowSequenceSink {
                    micros_per_record: if sink.subtask == 1 { 2 } else { 0 },
                    last: None,
                    seen: counted.clone(),
                })
            },
        );
        let _ = ctx;
        Ok(JobParts::none())
    }));
    let settings = JobManagerConfig {
        rpc_bind: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(1000),
        ..Default::default()
    };
    let jm = JobManager::start(settings, registry.clone()).unwrap();
    let start_tm = || {
        let settings = TaskManagerConfig {
            jobmanager: jm.rpc_address().to_string(),
            cluster: ClusterConfig { slots: Some(1), pin_slots: false, net: net(), ..Default::default() },
            data_bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        };
        let tm = TaskManager::start(settings, registry.clone()).unwrap();
        assert!(tm.wait_registered(Duration::from_secs(10)));
        tm
    };
    let (tm1, tm2) = (start_tm(), start_tm());
    let r = run(jm.api().as_ref(), "slow", 2);
    assert_eq!(r.state, JobState::Finished, "{r:?}");
    assert_eq!(*seen.lock().unwrap(), RECORDS, "no record lost or duplicated");
    let outcome = r.result.unwrap();
    let producer = &outcome.parts[0];
    let link = &producer.connections[0];
    assert!(link.remote_credit_stalls > 0, "the producer ran out of credit: {link:?}");
    let reserved_bytes = u64::from(producer.buffers_reserved) * corestream_netstack::BUFFER_SIZE as u64;
    assert!(
        link.bytes_out > 10 * reserved_bytes,
        "the stream ({} bytes) is far larger than the producer's reservation ({reserved_bytes} bytes)",
        link.bytes_out
    );
    for part in &outcome.parts {
        assert!(
            part.pool_peak_in_use <= u64::from(part.buffers_reserved),
            "each TaskManager used at most its reservation: peak {} of {}",
            part.pool_peak_in_use,
            part.buffers_reserved
        );
    }
    pools_whole(&[&tm1, &tm2]);
}
