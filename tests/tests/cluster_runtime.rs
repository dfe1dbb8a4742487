//! The cluster runtime in one test process: a JobManager and TaskManagers, each with its own
//! threads, talking over loopback TCP exactly as separate processes do (control plane and data
//! connections). Jobs are submitted by name through the dispatcher's API and their merged
//! results checked against a reference; losing a TaskManager fails (or restarts) the job;
//! losing the JobManager makes the TaskManagers cancel their tasks and register with the next.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corestream::jobmanager::api::{ClusterApi, JobExecutionResult, JobState, SubmitRequest};
use corestream::jobmanager::{JobManager, JobManagerConfig, Restarts};
use corestream::registry::{JobParts, JobRegistry, JobType};
use corestream::rpc::messages::{Accumulator, Accumulators};
use corestream::taskmanager::{TaskManager, TaskManagerConfig};
use corestream::{ClusterConfig, NetConfig, RuntimeMode};

/// sum-by-key over `0..records` with `keys` keys: per-key totals, checked as an
/// order-independent checksum plus a count of keys.
fn sum_job(args: &[String]) -> Result<(u64, u64, u64), String> {
    let get = |i: usize, name: &str| -> Result<u64, String> {
        let a = args.get(i).ok_or_else(|| format!("missing {name}"))?;
        a.parse().map_err(|_| format!("{name} '{a}' is not a number"))
    };
    let records = get(0, "RECORDS")?;
    let keys = get(1, "KEYS")?;
    let delay_ms = if args.len() > 2 { get(2, "DELAY_MS")? } else { 0 };
    if keys == 0 {
        return Err("KEYS must be at least 1".into());
    }
    Ok((records, keys, delay_ms))
}

fn checksum(totals: impl Iterator<Item = (u64, u64)>) -> u64 {
    totals.fold(0u64, |acc, (k, v)| acc.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ v))
}

fn registry() -> JobRegistry {
    let mut r = JobRegistry::new();
    r.register(JobType::new("sum", "per-key sums of a sequence", "RECORDS KEYS [DELAY_MS]", |env, ctx| {
        let (records, keys, delay_ms) = sum_job(ctx.args)?;
        env.set_runtime_mode(RuntimeMode::Batch);
        let totals = env
            .from_sequence(0..records)
            .map(move |v| {
                if delay_ms > 0 && v % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(delay_ms));
                }
                (v % keys, v)
            })
            .key_by(|r: &(u64, u64)| r.0)
            .reduce(|a, b| (a.0, a.1 + b.1))
            .collect();
        if ctx.planning {
            return Ok(JobParts::none());
        }
        let reader = std::thread::spawn(move || totals.collect::<Vec<(u64, u64)>>());
        Ok(JobParts::with_accumulators(move || {
            let got = reader.join().map_err(|_| "the result reader panicked".to_string())?;
            Ok(Accumulators::from([
                ("checksum".to_string(), Accumulator::Checksum(checksum(got.iter().copied()))),
                ("keys".to_string(), Accumulator::Count(got.len() as u64)),
            ]))
        }))
    }));
    r.register(JobType::new(
        "signals",
        "every subtask adds to a signal; every part waits for the total",
        "",
        |env, ctx| {
            env.set_runtime_mode(RuntimeMode::Batch);
            let signals = ctx.signals.clone();
            let p = env.config().parallelism.unwrap_or(1) as u64;
            env.from_sequence(0..1000u64)
                .map(move |v| {
                    if v < p {
                        signals.add("seen", 1);
                    }
                    v
                })
                .discard();
            if ctx.planning {
                return Ok(JobParts::none());
            }
            let signals = ctx.signals.clone();
            Ok(JobParts::with_accumulators(move || {
                let seen = signals.wait_for("seen", p, Duration::from_secs(20));
                let all_running = corestream::registry::JobSignals::ALL_RUNNING;
                let running = u64::from(signals.wait_for(all_running, 1, Duration::from_secs(20)));
                Ok(Accumulators::from([
                    ("parts".to_string(), Accumulator::Count(1)),
                    ("parts-that-saw-all".to_string(), Accumulator::Count(u64::from(seen))),
                    ("parts-that-saw-all-running".to_string(), Accumulator::Count(running)),
                ]))
            }))
        },
    ));
    r
}

fn expected(records: u64, keys: u64) -> (u64, u64) {
    let mut totals = vec![0u64; keys as usize];
    for v in 0..records {
        totals[(v % keys) as usize] += v;
    }
    let present: Vec<(u64, u64)> = (0..keys).filter(|k| *k < records).map(|k| (k, totals[k as usize])).collect();
    (checksum(present.iter().copied()), present.len() as u64)
}

struct Restart(u32);

impl Restarts for Restart {
    fn on_failure(&mut self, _now_ms: u64, retryable: bool) -> Result<Duration, String> {
        if self.0 == 0 || !retryable {
            return Err("no restarts left".into());
        }
        self.0 -= 1;
        Ok(Duration::from_millis(100))
    }
}

fn jobmanager(restarts: u32) -> JobManager {
    let settings = JobManagerConfig {
        rpc_bind: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(1000),
        slot_request_timeout: Duration::from_secs(20),
        restarts: Arc::new(move |_| Box::new(Restart(restarts))),
        ..Default::default()
    };
    JobManager::start(settings, registry()).expect("JobManager starts")
}

fn taskmanager(jm: &str, slots: u32) -> TaskManager {
    let settings = TaskManagerConfig {
        jobmanager: jm.to_string(),
        cluster: ClusterConfig {
            slots: Some(slots),
            pin_slots: false,
            net: NetConfig {
                heartbeat_interval: Duration::from_millis(200),
                heartbeat_timeout: Duration::from_secs(2),
                accept_timeout: Duration::from_secs(5),
                ..NetConfig::default()
            },
            ..Default::default()
        },
        data_bind: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let tm = TaskManager::start(settings, registry()).expect("TaskManager starts");
    assert!(tm.wait_registered(Duration::from_secs(10)), "the TaskManager registers");
    tm
}

fn submit(api: &dyn ClusterApi, args: &[&str], parallelism: u32) -> String {
    let request = SubmitRequest {
        job: "sum".into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        parallelism: Some(parallelism),
        ..Default::default()
    };
    api.submit(request).expect("accepted").jobid.to_string()
}

fn wait(api: &dyn ClusterApi, id: &str, timeout: Duration) -> JobExecutionResult {
    let deadline = Instant::now() + timeout;
    loop {
        let r = api.execution_result(id).expect("the job is known");
        if r.state.is_terminal() {
            return r;
        }
        assert!(Instant::now() < deadline, "job {id} did not end within {timeout:?}: {:?}", r.state);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_sums(r: &JobExecutionResult, records: u64, keys: u64) {
    assert_eq!(r.state, JobState::Finished, "{r:?}");
    let outcome = r.result.as_ref().expect("a finished job has an outcome");
    let (sum, count) = expected(records, keys);
    assert_eq!(outcome.accumulators["checksum"], Accumulator::Checksum(sum));
    assert_eq!(outcome.accumulators["keys"], Accumulator::Count(count));
}

#[test]
fn a_job_runs_across_two_task_managers() {
    let jm = jobmanager(0);
    let address = jm.rpc_address().to_string();
    let (tm1, tm2) = (taskmanager(&address, 1), taskmanager(&address, 1));
    let api = jm.api();
    assert_eq!(api.overview().taskmanagers, 2);
    assert_eq!(api.overview().slots_total, 2);
    let id = submit(api.as_ref(), &["200000", "97"], 2);
    let r = wait(api.as_ref(), &id, Duration::from_secs(60));
    check_sums(&r, 200_000, 97);
    let outcome = r.result.unwrap();
    assert!(!outcome.network.is_empty(), "records crossed the TaskManagers: {outcome:?}");
    let details = api.job(&id).unwrap();
    let tms: std::collections::BTreeSet<_> =
        details.vertices.iter().flat_map(|v| v.subtasks.iter().map(|s| s.taskmanager)).collect();
    assert_eq!(tms.len(), 2, "subtasks ran on both TaskManagers");
    assert!(details
        .vertices
        .iter()
        .all(|v| v.subtasks.iter().all(|s| s.state == corestream::rpc::messages::TaskState::Finished)));
    assert_eq!(api.overview().slots_available, 2, "the slots are free again");
    // The cluster runs the next job, and a job at parallelism 1.
    let id = submit(api.as_ref(), &["1000", "10"], 1);
    check_sums(&wait(api.as_ref(), &id, Duration::from_secs(60)), 1000, 10);
    drop((tm1, tm2));
}

#[test]
fn signals_reach_every_task_manager_of_the_job() {
    let jm = jobmanager(0);
    let address = jm.rpc_address().to_string();
    let _tms = (taskmanager(&address, 1), taskmanager(&address, 1));
    let api = jm.api();
    let request = SubmitRequest { job: "signals".into(), args: vec![], parallelism: Some(2), ..Default::default() };
    let id = api.submit(request).unwrap().jobid.to_string();
    let r = wait(api.as_ref(), &id, Duration::from_secs(60));
    assert_eq!(r.state, JobState::Finished, "{r:?}");
    let acc = r.result.unwrap().accumulators;
    assert_eq!(acc["parts"], Accumulator::Count(2));
    assert_eq!(acc["parts-that-saw-all"], Accumulator::Count(2), "each part saw the other's addition");
    assert_eq!(acc["parts-that-saw-all-running"], Accumulator::Count(2));
}

#[test]
fn invalid_submissions_are_refused_and_change_nothing() {
    let jm = jobmanager(0);
    let _tm = taskmanager(&jm.rpc_address().to_string(), 1);
    let api = jm.api();
    let unknown = api
        .submit(SubmitRequest { job: "sun".into(), args: vec![], parallelism: None, ..Default::default() })
        .unwrap_err();
    assert!(
        unknown.message.contains("unknown job type 'sun'") && unknown.message.contains("did you mean 'sum'"),
        "{unknown:?}"
    );
    let bad = api
        .submit(SubmitRequest {
            job: "sum".into(),
            args: vec!["ten".into(), "3".into()],
            parallelism: None,
            ..Default::default()
        })
        .unwrap_err();
    assert!(bad.message.contains("RECORDS 'ten' is not a number"), "{bad:?}");
    let zero = api
        .submit(SubmitRequest {
            job: "sum".into(),
            args: vec!["1".into(), "1".into()],
            parallelism: Some(0),
            ..Default::default()
        })
        .unwrap_err();
    assert!(zero.message.contains("parallelism"), "{zero:?}");
    assert!(api.jobs().is_empty());
    assert!(api.job("nope").is_err());
    assert!(api.cancel(&corestream::rpc::ids::JobId::random().to_string()).is_err());
}

#[test]
fn a_lost_task_manager_fails_the_job_or_restarts_it() {
    // Without restarts: the job fails naming the TaskManager.
    let jm = jobmanager(0);
    let address = jm.rpc_address().to_string();
    let tm1 = taskmanager(&address, 1);
    let tm2 = taskmanager(&address, 1);
    let api = jm.api();
    let id = submit(api.as_ref(), &["100000000", "10", "5"], 2);
    std::thread::sleep(Duration::from_millis(500));
    let lost = tm2.id().short();
    tm2.shutdown();
    let r = wait(api.as_ref(), &id, Duration::from_secs(30));
    assert_eq!(r.state, JobState::Failed, "{r:?}");
    let failure = r.result.unwrap().failure.unwrap();
    assert!(failure.contains(&lost) || failure.contains("TaskManager"), "{failure}");
    drop(tm1);

    // With a restart and a replacement TaskManager: the rerun's result is correct.
    let jm = jobmanager(1);
    let address = jm.rpc_address().to_string();
    let tm1 = taskmanager(&address, 1);
    let tm2 = taskmanager(&address, 1);
    let api = jm.api();
    let id = submit(api.as_ref(), &["300000", "10", "2"], 2);
    std::thread::sleep(Duration::from_millis(300));
    tm2.shutdown();
    let tm3 = taskmanager(&address, 1);
    let r = wait(api.as_ref(), &id, Duration::from_secs(60));
    check_sums(&r, 300_000, 10);
    assert_eq!(api.jobs()[0].attempts, 2);
    drop((tm1, tm3));
}

#[test]
fn task_managers_cancel_their_tasks_and_register_with_a_new_job_manager() {
    let jm = jobmanager(0);
    let tm = taskmanager(&jm.rpc_address().to_string(), 2);
    let api = jm.api();
    let id = submit(api.as_ref(), &["100000000", "10", "5"], 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tm.status().running_deployments == 0 {
        assert!(Instant::now() < deadline, "the job was deployed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = id;
    let port = jm.rpc_address();
    jm.shutdown();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tm.status().registered || tm.status().running_deployments > 0 {
        assert!(Instant::now() < deadline, "the TaskManager noticed and cancelled: {:?}", tm.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new JobManager on the same address: the TaskManager registers again and runs jobs.
    let settings = JobManagerConfig {
        rpc_bind: port,
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(1000),
        ..Default::default()
    };
    let started = AtomicUsize::new(0);
    let jm = loop {
        match JobManager::start(settings.clone(), registry()) {
            Ok(jm) => break jm,
            Err(e) if started.fetch_add(1, Ordering::Relaxed) < 50 => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the new JobManager cannot bind: {e}"),
        }
    };
    assert!(tm.wait_registered(Duration::from_secs(20)));
    assert_eq!(tm.status().registrations, 2);
    let api = jm.api();
    let id = submit(api.as_ref(), &["10000", "7"], 2);
    check_sums(&wait(api.as_ref(), &id, Duration::from_secs(60)), 10_000, 7);
}

/// Data connections between `a` and `b` since they joined the cluster: (dialed by `a`,
/// accepted by `b`, dialed by `b`, accepted by `a`), each as the dialing or accepting side
/// counted it.
fn connections_between(a: &TaskManager, b: &TaskManager) -> (u64, u64, u64, u64) {
    let (sa, sb) = (a.status().data_plane, b.status().data_plane);
    let peer = |s: &corestream_netstack::PlaneStats, id: corestream::rpc::ids::TaskManagerId| {
        s.peers.get(&corestream_netstack::TmId(id.0)).cloned().unwrap_or_default()
    };
    let (ab, ba) = (peer(&sa, b.id()), peer(&sb, a.id()));
    (ab.dialed, ba.accepted, ba.dialed, ab.accepted)
}

/// Waits until `f` holds, at most `timeout`.
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_jobs_share_one_data_connection_per_task_manager_pair() {
    let jm = jobmanager(0);
    let address = jm.rpc_address().to_string();
    let (tm1, tm2) = (taskmanager(&address, 2), taskmanager(&address, 2));
    let api = jm.api();
    // Sources that pause 2 ms every 1000 records keep both jobs running at once.
    let a = submit(api.as_ref(), &["400000", "97", "2"], 2);
    let b = submit(api.as_ref(), &["300000", "89", "2"], 2);
    eventually(Duration::from_secs(20), "both jobs deployed on both TaskManagers at once", || {
        tm1.status().running_deployments == 2 && tm2.status().running_deployments == 2
    });
    let (ra, rb) = (wait(api.as_ref(), &a, Duration::from_secs(60)), wait(api.as_ref(), &b, Duration::from_secs(60)));
    check_sums(&ra, 400_000, 97);
    check_sums(&rb, 300_000, 89);
    for r in [&ra, &rb] {
        let parts = &r.result.as_ref().unwrap().parts;
        assert_eq!(parts.len(), 2, "each job ran on both TaskManagers: {parts:?}");
        for p in parts {
            assert_eq!(p.connections.len(), 1, "one link to the other TaskManager: {p:?}");
            assert!(p.connections[0].buffers_out > 0 && p.connections[0].buffers_in > 0, "{p:?}");
        }
    }
    let (a_dialed, b_accepted, b_dialed, a_accepted) = connections_between(&tm1, &tm2);
    assert_eq!(a_dialed + b_dialed, 1, "one connection was dialed between the two TaskManagers");
    assert_eq!((a_dialed, a_accepted), (b_accepted, b_dialed), "what one side dialed the other accepted");
    assert_eq!(tm1.status().data_plane.open, 1, "and it is still open: {:?}", tm1.status().data_plane);

    // A third job reuses the connection.
    let c = submit(api.as_ref(), &["100000", "13"], 2);
    check_sums(&wait(api.as_ref(), &c, Duration::from_secs(60)), 100_000, 13);
    assert_eq!(connections_between(&tm1, &tm2), (a_dialed, b_accepted, b_dialed, a_accepted), "no new connection");
    for tm in [&tm1, &tm2] {
        let s = tm.status().data_plane;
        assert_eq!((s.dialed + s.accepted, s.open, s.refused), (1, 1, 0), "{s:?}");
        assert_eq!(tm.pool().in_use(), 0, "every buffer is back in the pool");
    }

    // The JobManager shows the same counters, from the heartbeats.
    for tm in [&tm1, &tm2] {
        let id = tm.id().to_string();
        eventually(Duration::from_secs(10), "the JobManager shows the data connections", || {
            let info = api.task_manager(&id).expect("a registered TaskManager");
            info.data_plane.is_some_and(|d| d.dialed + d.accepted == 1 && d.open == 1 && d.peers.len() == 1)
        });
    }
}

/// Reads one data-connection frame (header and body).
fn read_data_frame(stream: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut frame = vec![0u8; corestream_netstack::wire::HEADER_BYTES];
    stream.read_exact(&mut frame)?;
    let body_len = u32::from_le_bytes(frame[8..12].try_into().unwrap()) as usize;
    frame.resize(frame.len() + body_len, 0);
    let header = corestream_netstack::wire::HEADER_BYTES;
    stream.read_exact(&mut frame[header..])?;
    Ok(frame)
}

#[test]
fn a_peer_of_another_cluster_is_refused_at_the_handshake_and_the_members_go_on() {
    use corestream_netstack::wire::{decode_frame, ErrorCode, Message};
    use std::io::Write;
    let jm = jobmanager(0);
    let address = jm.rpc_address().to_string();
    let (tm1, tm2) = (taskmanager(&address, 1), taskmanager(&address, 1));
    let api = jm.api();
    let id = submit(api.as_ref(), &["300000", "97", "2"], 2);
    eventually(Duration::from_secs(20), "the job runs on both TaskManagers", || {
        tm1.status().running_deployments == 1 && tm2.status().running_deployments == 1
    });
    // Another cluster's TaskManager (another token) dials both members: its id is the lowest,
    // so each member is the accepting side and checks the HELLO.
    let mut refused = Vec::new();
    for tm in [&tm1, &tm2] {
        let mut stream = std::net::TcpStream::connect(tm.data_address().unwrap()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let hello = corestream_netstack::Hello {
            tm: corestream_netstack::TmId([0; 16]),
            cluster_token: [0x5a; 32],
            nonce: [1; 32],
            pid: std::process::id(),
            heartbeat_ms: 200,
        };
        let mut bytes = Vec::new();
        Message::Hello(hello).encode_into(&mut bytes).unwrap();
        stream.write_all(&bytes).unwrap();
        let answer = loop {
            let frame = read_data_frame(&mut stream).expect("the member answers before it closes");
            match decode_frame(&frame) {
                Ok((Message::Error { code, message, .. }, _)) => break (code, message.to_string()),
                Ok((Message::Hello(_), _)) => continue,
                other => panic!("expected the member's HELLO or ERROR, got {other:?}"),
            }
        };
        refused.push(answer);
    }
    for (code, message) in &refused {
        assert_eq!(*code, ErrorCode::HandshakeMismatch, "{message}");
        assert!(message.contains("wrong cluster token"), "{message}");
    }
    let r = wait(api.as_ref(), &id, Duration::from_secs(60));
    check_sums(&r, 300_000, 97);
    for tm in [&tm1, &tm2] {
        let s = tm.status().data_plane;
        assert_eq!(s.refused, 1, "the stranger was counted as refused: {s:?}");
        assert_eq!(s.dialed + s.accepted, 1, "the members' own connection is the only one: {s:?}");
        assert!(!s.peers.contains_key(&corestream_netstack::TmId([0; 16])), "the stranger is no peer: {s:?}");
    }
}

#[test]
fn task_managers_with_a_secret_connect_again_after_a_new_job_manager() {
    let secret = corestream::auth::ClusterSecret::new("0123456789abcdef0123456789abcdef-test", "test").unwrap();
    let jm_settings = |rpc_bind| JobManagerConfig {
        rpc_bind,
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(1000),
        secret: Some(secret.clone()),
        ..Default::default()
    };
    let jm = JobManager::start(jm_settings("127.0.0.1:0".parse().unwrap()), registry()).unwrap();
    let port = jm.rpc_address();
    let start_tm = || {
        let settings = TaskManagerConfig {
            jobmanager: port.to_string(),
            cluster: ClusterConfig {
                slots: Some(1),
                pin_slots: false,
                net: NetConfig {
                    heartbeat_interval: Duration::from_millis(200),
                    heartbeat_timeout: Duration::from_secs(2),
                    ..NetConfig::default()
                },
                ..Default::default()
            },
            data_bind: "127.0.0.1:0".parse().unwrap(),
            secret: Some(secret.clone()),
            ..Default::default()
        };
        let tm = TaskManager::start(settings, registry()).unwrap();
        assert!(tm.wait_registered(Duration::from_secs(10)));
        tm
    };
    let (tm1, tm2) = (start_tm(), start_tm());
    let id = submit(jm.api().as_ref(), &["100000", "31"], 2);
    check_sums(&wait(jm.api().as_ref(), &id, Duration::from_secs(60)), 100_000, 31);
    assert_eq!(connections_between(&tm1, &tm2).0 + connections_between(&tm1, &tm2).2, 1);

    // A new JobManager (a new cluster token): the TaskManagers close the old data connection
    // and connect again, proving the new token keyed by the same secret.
    jm.shutdown();
    eventually(Duration::from_secs(20), "both TaskManagers noticed", || {
        !tm1.status().registered && !tm2.status().registered
    });
    let jm = loop {
        match JobManager::start(jm_settings(port), registry()) {
            Ok(jm) => break jm,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(tm1.wait_registered(Duration::from_secs(20)) && tm2.wait_registered(Duration::from_secs(20)));
    // A TaskManager that only ever knew the new JobManager: the old members' data planes must
    // have taken the new token, or its handshakes with them fail.
    let tm3 = start_tm();
    let id = submit(jm.api().as_ref(), &["100000", "37"], 3);
    check_sums(&wait(jm.api().as_ref(), &id, Duration::from_secs(60)), 100_000, 37);
    for tm in [&tm1, &tm2, &tm3] {
        let s = tm.status().data_plane;
        assert_eq!((s.dialed + s.accepted, s.open, s.refused), (2, 2, 0), "a fresh data plane: {s:?}");
    }
}
