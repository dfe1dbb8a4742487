//! One connection per pair of TaskManagers, shared by every job: two [`DataPlane`]s (on one
//! executor, talking over loopback TCP) run jobs at once and one after another on one
//! connection, with records checked per job; a job cancelled or never deployed on the other
//! side ends alone; a lost peer fails every job on its connection and a later job dials again;
//! the handshake keeps out another cluster's TaskManagers and garbage. Raw peers (std sockets)
//! play the peer that dies. Every wait is bounded by a watchdog.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corestream_netstack::handshake::{ClusterAuth, HandshakeError};
use corestream_netstack::plane::{DataPlane, DataPlaneConfig, PeerAddress};
use corestream_netstack::record::validate_buffer;
use corestream_netstack::remote::{JobEnd, JobSpec, LocalIdentity};
use corestream_netstack::transport::NetConfig;
use corestream_netstack::wire::Message;
use corestream_netstack::{BufferPool, Doorbell, InputGate, JobLink, LocalChannel, NetError, OutputChannel};
use glommio::timer::Timer;
use support::*;

const A: u64 = 0xa1;
const B: u64 = 0xb2;
const C: u64 = 0xc3;

struct Tm {
    plane: DataPlane,
    addr: SocketAddr,
    pool: BufferPool,
}

/// TaskManager `n` of the test cluster with a plane listening on loopback (call on the
/// executor that runs it).
fn start_tm(n: u8, auth: ClusterAuth, net: NetConfig) -> Tm {
    let pool = BufferPool::new(256);
    let identity = LocalIdentity { tm: tm(n), pid: std::process::id(), auth };
    let plane = DataPlane::new(DataPlaneConfig { identity, net }, pool.clone()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    plane.listen(listener);
    Tm { plane, addr, pool }
}

fn cluster(secret: Option<&[u8]>) -> ClusterAuth {
    ClusterAuth::new(TOKEN, secret)
}

fn at(tm_n: u8, tm: &Tm) -> PeerAddress {
    PeerAddress { id: support::tm(tm_n), data_addr: tm.addr }
}

/// One TaskManager's half of a job on one connection: producers of `out_ids`, consumers of
/// `in_ids` (the plan has `channels` channels).
struct Half {
    spec: JobSpec,
    outputs: Vec<OutputChannel>,
    gate: InputGate,
    producer_bell: Arc<Doorbell>,
    consumer_bell: Arc<Doorbell>,
}

fn half(deployment: u64, out_ids: &[u32], in_ids: &[u32], channels: u32) -> Half {
    let session_bell = Arc::new(Doorbell::new());
    let (producer_bell, consumer_bell) = (Arc::new(Doorbell::new()), Arc::new(Doorbell::new()));
    let mut spec = JobSpec::new(deployment, FINGERPRINT, channels, session_bell.clone());
    let mut outputs = Vec::new();
    for &id in out_ids {
        let channel = LocalChannel::new_remote_out(producer_bell.clone(), session_bell.clone());
        spec.add_outbound(id, channel.clone());
        outputs.push(OutputChannel::new(channel, &CREDIT));
    }
    let mut inbound = Vec::new();
    for &id in in_ids {
        let channel =
            LocalChannel::new_remote_in(CREDIT.exclusive_per_channel, session_bell.clone(), consumer_bell.clone());
        spec.add_inbound(id, channel.clone(), validate_buffer::<Rec>);
        inbound.push(channel);
    }
    Half { spec, outputs, gate: InputGate::new(inbound, &CREDIT), producer_bell, consumer_bell }
}

/// Opens `half` on `plane` towards `peer` and runs its producers (`buffers` per channel,
/// records tagged `tag`) and consumers; returns the link and the consumers' counts.
fn run_half(
    plane: &DataPlane,
    pool: &BufferPool,
    peer: PeerAddress,
    half: Half,
    buffers: u64,
    tag: u32,
) -> (JobLink, glommio::task::JoinHandle<Vec<u64>>) {
    let Half { spec, outputs, gate, producer_bell, consumer_bell } = half;
    let link = plane.open_job(peer, spec).expect("a valid job opens");
    glommio::spawn_local(produce(outputs, pool.clone(), producer_bell, buffers, tag)).detach();
    let consumer = glommio::spawn_local(consume(gate, consumer_bell, tag)).detach();
    (link, consumer)
}

async fn ended(link: &JobLink) -> JobEnd {
    futures_lite::future::or(async { Some(link.ended().await.end) }, async {
        Timer::new(WATCHDOG).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("job {:x} did not end within {WATCHDOG:?}", link.deployment()))
}

#[test]
fn two_jobs_at_once_share_one_connection_and_a_later_job_reuses_it() {
    let result = on_executor("cs-test-two-jobs", || async {
        let secret = Some(&b"cluster secret"[..]);
        let tm1 = start_tm(1, cluster(secret), net_config());
        let tm2 = start_tm(2, cluster(secret), net_config());
        // Job A: TaskManager 1 produces channels 0 and 1. Job B: channel 0 from 2 to 1,
        // channel 1 from 1 to 2. TaskManager 2 (the acceptor) opens its halves first.
        let (b2, b2_counts) = run_half(&tm2.plane, &tm2.pool, at(1, &tm1), half(B, &[0], &[1], 2), 40, 200);
        let (a2, a2_counts) = run_half(&tm2.plane, &tm2.pool, at(1, &tm1), half(A, &[], &[0, 1], 2), 0, 100);
        let (a1, _) = run_half(&tm1.plane, &tm1.pool, at(2, &tm2), half(A, &[0, 1], &[], 2), 60, 100);
        let (b1, b1_counts) = run_half(&tm1.plane, &tm1.pool, at(2, &tm2), half(B, &[1], &[0], 2), 50, 200);
        let counts = (a2_counts.await.unwrap(), b2_counts.await.unwrap(), b1_counts.await.unwrap());
        let ends = [ended(&a1).await, ended(&a2).await, ended(&b1).await, ended(&b2).await];
        let during = (tm1.plane.stats(), tm2.plane.stats());
        let stats_a = a1.try_end().unwrap().stats;
        let (c2, c2_counts) = run_half(&tm2.plane, &tm2.pool, at(1, &tm1), half(C, &[], &[0], 1), 0, 300);
        let (c1, _) = run_half(&tm1.plane, &tm1.pool, at(2, &tm2), half(C, &[0], &[], 1), 20, 300);
        let later = (c2_counts.await.unwrap(), ended(&c1).await, ended(&c2).await);
        let after = (tm1.plane.stats(), tm2.plane.stats());
        let conn_stats = tm1.plane.connection(tm(2)).map(|c| c.stats());
        tm1.plane.shutdown().await;
        tm2.plane.shutdown().await;
        let closed = (tm1.plane.stats(), tm2.plane.stats());
        (counts, ends, stats_a, during, later, after, conn_stats, closed, (tm1.pool.in_use(), tm2.pool.in_use()))
    });
    let (counts, ends, stats_a, during, later, after, conn_stats, closed, in_use) = wait(&result, "two jobs");
    let r = RECORDS_PER_BUFFER;
    assert_eq!(counts, (vec![60 * r, 60 * r], vec![50 * r], vec![40 * r]), "every record of each job, in order");
    assert!(ends.iter().all(|e| *e == JobEnd::Finished), "{ends:?}");
    assert_eq!(stats_a.buffers_out, 120, "job A's own counters: {stats_a:?}");
    let (one, two) = during;
    let p1 = &one.peers[&tm(2)];
    let p2 = &two.peers[&tm(1)];
    assert_eq!((p1.dialed, p1.accepted, p1.open), (1, 0, 1), "TaskManager 1 dialed once: {one:?}");
    assert_eq!((p2.dialed, p2.accepted, p2.open), (0, 1, 1), "TaskManager 2 accepted once: {two:?}");
    assert_eq!((later.0, &later.1, &later.2), (vec![20 * r], &JobEnd::Finished, &JobEnd::Finished));
    let (one, two) = after;
    assert_eq!((one.dialed, one.open, two.accepted, two.open), (1, 1, 1, 1), "job C reused the connection");
    let conn = conn_stats.expect("the connection is still open after its jobs");
    assert_eq!((conn.jobs_opened, conn.jobs_closed, conn.jobs_failed), (3, 3, 0), "{conn:?}");
    assert_eq!(conn.transfer.buffers_out, 120 + 50 + 20);
    assert_eq!(conn.transfer.buffers_in, 40);
    let (one, two) = closed;
    assert_eq!((one.open, two.open, one.peers[&tm(2)].closed, two.peers[&tm(1)].closed), (0, 0, 1, 1));
    assert_eq!(in_use, (0, 0), "every buffer is back in the pools");
}

#[test]
fn a_cancelled_job_ends_alone_while_the_other_finishes() {
    let result = on_executor("cs-test-cancel-one", || async {
        let tm1 = start_tm(1, cluster(None), net_config());
        let tm2 = start_tm(2, cluster(None), net_config());
        let (a2, a2_counts) = run_half(&tm2.plane, &tm2.pool, at(1, &tm1), half(A, &[], &[0], 1), 0, 100);
        let (a1, _) = run_half(&tm1.plane, &tm1.pool, at(2, &tm2), half(A, &[0], &[], 1), 200, 100);
        let b1_half = half(B, &[0], &[], 1);
        let b2_half = half(B, &[], &[0], 1);
        let b1 = tm1.plane.open_job(at(2, &tm2), b1_half.spec).unwrap();
        let b2 = tm2.plane.open_job(at(1, &tm1), b2_half.spec).unwrap();
        let producer =
            glommio::spawn_local(produce(b1_half.outputs, tm1.pool.clone(), b1_half.producer_bell, 1_000_000, 200));
        let mut gate = b2_half.gate;
        let mut received = 0;
        while received < 5 {
            match gate.poll_next() {
                Some((c, corestream_netstack::ChannelItem::Buffer(buffer))) => {
                    drop(buffer);
                    gate.release(c);
                    received += 1;
                }
                Some(_) => {}
                None => wait_bell(&b2_half.consumer_bell).await,
            }
        }
        b1.cancel("the user cancelled job B");
        let b_ends = (ended(&b1).await, ended(&b2).await);
        producer.cancel().await;
        drop(gate);
        let a = (a2_counts.await.unwrap(), ended(&a1).await, ended(&a2).await);
        let open = tm1.plane.stats().open;
        tm1.plane.shutdown().await;
        tm2.plane.shutdown().await;
        (b_ends, a, open, tm1.pool.in_use(), tm2.pool.in_use())
    });
    let (b_ends, a, open, in_use1, in_use2) = wait(&result, "one job cancelled");
    assert_eq!(b_ends.0, JobEnd::Cancelled { reason: "the user cancelled job B".into() });
    assert_eq!(b_ends.1, JobEnd::PeerCancelled { reason: "the user cancelled job B".into() });
    assert_eq!(a, (vec![200 * RECORDS_PER_BUFFER], JobEnd::Finished, JobEnd::Finished), "job A is untouched");
    assert_eq!(open, 1, "the connection outlives both jobs");
    assert_eq!((in_use1, in_use2), (0, 0));
}

#[test]
fn a_job_the_peer_never_deploys_fails_alone_and_the_connection_stays() {
    let net = NetConfig { open_timeout: Duration::from_millis(300), ..net_config() };
    let result = on_executor("cs-test-not-deployed", move || async move {
        let tm1 = start_tm(1, cluster(None), net);
        let tm2 = start_tm(2, cluster(None), net);
        let lonely = tm1.plane.open_job(at(2, &tm2), half(A, &[0], &[], 1).spec).unwrap();
        let end = ended(&lonely).await;
        let (c2, counts) = run_half(&tm2.plane, &tm2.pool, at(1, &tm1), half(C, &[], &[0], 1), 0, 7);
        let (c1, _) = run_half(&tm1.plane, &tm1.pool, at(2, &tm2), half(C, &[0], &[], 1), 3, 7);
        let later = (counts.await.unwrap(), ended(&c1).await, ended(&c2).await);
        let stats = tm1.plane.stats();
        tm1.plane.shutdown().await;
        tm2.plane.shutdown().await;
        (end, later, stats)
    });
    let (end, later, stats) = wait(&result, "a job deployed on one side only");
    match end {
        JobEnd::Failed(e @ NetError::JobNotDeployed { deployment: A, .. }) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains("TaskManager 02020202"), "{e}");
        }
        other => panic!("expected JobNotDeployed, got {other:?}"),
    }
    assert_eq!(later, (vec![3 * RECORDS_PER_BUFFER], JobEnd::Finished, JobEnd::Finished));
    assert_eq!((stats.dialed, stats.open), (1, 1), "one connection for both jobs: {stats:?}");
}

#[test]
fn a_lost_peer_fails_every_job_on_its_connection_and_a_later_job_dials_again() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = listener.local_addr().unwrap();
    let raw = std::thread::spawn(move || {
        let mut first = RawPeer::accept(&listener, 2, &cluster(None));
        first.until("JobOpen { deployment: 178");
        first.send(Message::JobOpen { deployment: A, fingerprint: FINGERPRINT, channels: 1 });
        first.send(Message::JobOpen { deployment: B, fingerprint: FINGERPRINT, channels: 1 });
        first.until("PartitionRequest");
        drop(first);
        let mut second = RawPeer::accept(&listener, 2, &cluster(None));
        second.until("JobOpen { deployment: 195");
        drop(second);
    });
    let result = on_executor("cs-test-lost-peer", move || async move {
        let tm1 = start_tm(1, cluster(None), net_config());
        let peer = PeerAddress { id: tm(2), data_addr: peer_addr };
        let a = tm1.plane.open_job(peer, half(A, &[0], &[], 1).spec).unwrap();
        let b = tm1.plane.open_job(peer, half(B, &[], &[0], 1).spec).unwrap();
        let first = (ended(&a).await, ended(&b).await);
        let c = tm1.plane.open_job(peer, half(C, &[0], &[], 1).spec).unwrap();
        let second = ended(&c).await;
        let stats = tm1.plane.stats();
        tm1.plane.shutdown().await;
        (first, second, stats, tm1.pool.in_use())
    });
    let (first, second, stats, in_use) = wait(&result, "jobs on a lost connection");
    raw.join().unwrap();
    for end in [&first.0, &first.1, &second] {
        match end {
            JobEnd::Failed(e @ NetError::PeerLost { .. }) => {
                assert!(e.to_string().contains("TaskManager 02020202"), "{e}");
                assert!(e.is_retryable());
            }
            other => panic!("expected PeerLost, got {other:?}"),
        }
    }
    let p = &stats.peers[&tm(2)];
    assert_eq!((p.dialed, p.open, p.failed), (2, 0, 2), "a new connection for the later job: {stats:?}");
    assert_eq!(in_use, 0);
}

#[test]
fn the_handshake_keeps_out_other_clusters_wrong_secrets_and_garbage() {
    let result = on_executor("cs-test-handshakes", || async {
        let tm2 = start_tm(2, cluster(Some(b"right")), net_config());
        let stranger = start_tm(1, ClusterAuth::new([0x33; 32], Some(b"right")), net_config());
        let job = stranger.plane.open_job(at(2, &tm2), half(A, &[0], &[], 1).spec).unwrap();
        let wrong_token = ended(&job).await;
        let impostor = start_tm(1, cluster(Some(b"wrong")), net_config());
        let job = impostor.plane.open_job(at(2, &tm2), half(A, &[0], &[], 1).spec).unwrap();
        let wrong_secret = ended(&job).await;
        let garbage = std::net::TcpStream::connect(tm2.addr).map(|mut s| {
            std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n......").unwrap();
            s
        });
        let mut waited = Duration::ZERO;
        while tm2.plane.stats().refused < 3 && waited < WATCHDOG {
            Timer::new(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
        drop(garbage);
        let member = start_tm(1, cluster(Some(b"right")), net_config());
        let (ok2, counts) = run_half(&tm2.plane, &tm2.pool, at(1, &member), half(C, &[], &[0], 1), 0, 5);
        let (ok1, _) = run_half(&member.plane, &member.pool, at(2, &tm2), half(C, &[0], &[], 1), 2, 5);
        let member_job = (counts.await.unwrap(), ended(&ok1).await, ended(&ok2).await);
        let stats = tm2.plane.stats();
        for plane in [&stranger.plane, &impostor.plane, &member.plane, &tm2.plane] {
            plane.shutdown().await;
        }
        (wrong_token, wrong_secret, stats, member_job)
    });
    let (wrong_token, wrong_secret, stats, member_job) = wait(&result, "handshakes");
    match wrong_token {
        JobEnd::Failed(NetError::HandshakeFailed { reason: HandshakeError::WrongClusterToken, peer }) => {
            assert!(peer.starts_with("TaskManager 02020202 (127.0.0.1:"), "the error names the peer: {peer}")
        }
        other => panic!("expected HandshakeFailed(WrongClusterToken), got {other:?}"),
    }
    match wrong_secret {
        JobEnd::Failed(NetError::HandshakeFailed { reason: HandshakeError::BadMac, .. }) => {}
        JobEnd::Failed(NetError::PeerRefused { message, .. }) if message.contains("bad MAC") => {}
        other => panic!("expected a bad MAC, got {other:?}"),
    }
    assert_eq!(stats.refused, 3, "token, secret and garbage were refused: {stats:?}");
    assert_eq!(stats.accepted, 1, "only the member's connection counts: {stats:?}");
    assert_eq!(member_job, (vec![2 * RECORDS_PER_BUFFER], JobEnd::Finished, JobEnd::Finished));
}

#[test]
fn a_job_waiting_for_a_peer_that_never_dials_fails_in_bounded_time() {
    let net = NetConfig { accept_timeout: Duration::from_millis(200), ..net_config() };
    let result = on_executor("cs-test-never-dialed", move || async move {
        let tm2 = start_tm(2, cluster(None), net);
        let nobody = PeerAddress { id: tm(1), data_addr: "127.0.0.1:9".parse().unwrap() };
        let link = tm2.plane.open_job(nobody, half(A, &[], &[0], 1).spec).unwrap();
        let end = ended(&link).await;
        let own = tm2.plane.open_job(PeerAddress { id: tm(2), data_addr: tm2.addr }, half(B, &[0], &[], 1).spec);
        tm2.plane.shutdown().await;
        (end, own.map(|_| ()))
    });
    let (end, own) = wait(&result, "a peer that never dials");
    assert!(matches!(end, JobEnd::Failed(NetError::PeerNeverConnected { .. })), "{end:?}");
    assert!(matches!(own, Err(NetError::JobRegistration { .. })), "no connection to itself: {own:?}");
}
