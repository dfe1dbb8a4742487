//! Incremental checkpoints of a large LSM state, end to end: ten million keys (about 1 GB of
//! state) on the LSM backend, checkpoints every two seconds, one failure and a restore.
//!
//! The job: one source emits every key once (`(key, 0)`), then updates a hot set of keys in
//! two key groups (one per keyed subtask) round after round (`(key, round)`); a keyed process
//! function keeps `(version, payload)` per key in value state, checks that the stored version
//! and payload are the previous ones (so a state restored wrongly is seen) and writes the new
//! ones; it fails once during the hot rounds. The test reads each complete checkpoint's
//! metadata while the job runs (three are retained) and checks that
//! - every checkpoint's keyed state is shared files, each either reused from an earlier
//!   checkpoint or uploaded for this one (uploaded bytes counted in its metrics),
//! - a checkpoint uploads only files its subtask's previous checkpoint did not hold, and once
//!   only the hot key groups change, one between two compactions uploads under 1 % of the state,
//! - after the job, every shared file left in storage belongs to a retained checkpoint and
//!   every file a retained checkpoint names is there.
//!
//! `CORESTREAM_LSM_TEST_KEYS` sets another number of keys for a quicker run by hand.

#[path = "support/checkpointing.rs"]
mod checkpointing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use checkpointing::*;
use corestream::checkpoint::metadata::CheckpointMetadata;
use corestream::checkpoint::request::CheckpointRequest;
use corestream::checkpoint::storage::{CheckpointStorage, FsCheckpointStorage};
use corestream::checkpoint::CheckpointMode;
use corestream::registry::{JobParts, JobRegistry, JobType};
use corestream::{
    ClusterConfig, KeyedContext, KeyedProcessFunction, KeyedRuntimeContext, LocalCluster, Sink, SinkContext, SinkError,
    StateBackendKind, ValueState, ValueStateDescriptor,
};
use corestream_state::{assign_key_group, DEFAULT_MAX_PARALLELISM};

const JOB: &str = "large-lsm-state";
const PARALLELISM: u32 = 2;
/// Hot keys per key group.
const HOT_PER_GROUP: usize = 10_000;
/// Rounds over the hot keys.
const ROUNDS: u64 = 150;
const PAYLOAD: usize = 96;
const INTERVAL_MS: u64 = 2_000;

fn keys() -> u64 {
    static KEYS: OnceLock<u64> = OnceLock::new();
    *KEYS.get_or_init(|| {
        std::env::var("CORESTREAM_LSM_TEST_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000)
    })
}

/// The hot keys: the first keys of the first and of the last key group, so each keyed subtask
/// updates one narrow range of its store.
fn hot() -> &'static [u64] {
    static HOT: OnceLock<Vec<u64>> = OnceLock::new();
    HOT.get_or_init(|| {
        let last = DEFAULT_MAX_PARALLELISM - 1;
        let in_group = |g: u32| (0..keys()).filter(move |k| assign_key_group(k, DEFAULT_MAX_PARALLELISM) == g);
        let mut hot: Vec<u64> = in_group(0).take(HOT_PER_GROUP).chain(in_group(last).take(HOT_PER_GROUP)).collect();
        hot.sort_unstable();
        hot
    })
}

/// Record `seq`: every key once at version 0, then the hot keys round after round.
fn record(_subtask: u32, seq: u64) -> (u64, u32) {
    if seq < keys() {
        return (seq, 0);
    }
    let i = seq - keys();
    let hot = hot();
    (hot[(i % hot.len() as u64) as usize], (i / hot.len() as u64) as u32 + 1)
}

/// A payload LZ4 cannot shrink, different for every key and version.
fn payload(key: u64, version: u32) -> Vec<u8> {
    let mut x = (key ^ (u64::from(version) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Default)]
struct Probe {
    attempts: AtomicU32,
    failed: AtomicBool,
    failed_at: Mutex<Option<Instant>>,
    recovery: Mutex<Option<Duration>>,
    /// Records whose stored state was not the previous version's.
    mismatches: AtomicU64,
    /// When the first hot record was processed (ms since the epoch).
    hot_from_ms: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Versioned {
    state: Option<ValueState<u64, (), (u32, Vec<u8>)>>,
    probe: Arc<Probe>,
    attempt: u32,
    first: bool,
}

impl KeyedProcessFunction<u64, (u64, u32), (u64, u32)> for Versioned {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.state = Some(ctx.state().value_state(&ValueStateDescriptor::new("versioned")).expect("state"));
    }

    fn process_element(&mut self, (key, version): (u64, u32), ctx: &mut KeyedContext<'_, u64, (u64, u32)>) {
        if self.first {
            self.first = false;
            if let Some(at) = self.probe.failed_at.lock().unwrap().take() {
                *self.probe.recovery.lock().unwrap() = Some(at.elapsed());
            }
        }
        if version > 0 {
            let _ = self.probe.hot_from_ms.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
            if self.attempt == 0 && u64::from(version) >= ROUNDS / 2 && !self.probe.failed.swap(true, Ordering::SeqCst)
            {
                *self.probe.failed_at.lock().unwrap() = Some(Instant::now());
                panic!("injected failure at key {key} version {version}");
            }
        }
        let state = self.state.as_mut().expect("opened");
        let expected = version.checked_sub(1).map(|v| (v, payload(key, v)));
        if state.value() != expected {
            ctx.collect((key, version));
        }
        state.update((version, payload(key, version)));
    }
}

struct Mismatches(Arc<Probe>);

impl Sink<(u64, u32)> for Mismatches {
    fn write_batch(&mut self, batch: &mut Vec<(u64, u32)>) -> Result<(), SinkError> {
        self.0.mismatches.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
        Ok(())
    }
}

fn registry(probe: Arc<Probe>) -> JobRegistry {
    let mut jobs = JobRegistry::new();
    jobs.register(JobType::new(JOB, "ten million keys in LSM state, then hot updates", "", move |env, ctx| {
        let attempt = if ctx.planning { u32::MAX } else { probe.attempts.fetch_add(1, Ordering::SeqCst) };
        env.set_state_backend(StateBackendKind::Lsm);
        let end = keys() + ROUNDS * hot().len() as u64;
        let (process_probe, sink_probe) = (probe.clone(), probe.clone());
        env.from_source(JOB, Some(1), move |c| Ok(PacedSource::new(c.subtask, end, 0, 1024, record)))
            .key_by(|&(key, _): &(u64, u32)| key)
            .process(move || Versioned { state: None, probe: process_probe.clone(), attempt, first: true })
            .name("versioned")
            .add_sink("mismatches", move |_: SinkContext| Ok(Mismatches(sink_probe.clone())));
        Ok(JobParts::default())
    }));
    jobs
}

/// The store's own name of a shared file: `shared/<random>-<local>`.
fn local_name(shared: &str) -> &str {
    let base = shared.rsplit('/').next().unwrap_or(shared);
    base.split_once('-').map_or(base, |(_, local)| local)
}

fn shared_bytes(m: &CheckpointMetadata) -> u64 {
    m.tasks.iter().map(|t| t.handle.shared_bytes()).sum()
}

fn uploaded_bytes(m: &CheckpointMetadata) -> u64 {
    m.tasks.iter().map(|t| t.handle.uploaded_bytes()).sum()
}

#[test]
fn ten_million_keys_checkpoint_incrementally_and_leave_no_unreferenced_file() {
    let probe = Arc::new(Probe::default());
    let config = ClusterConfig { slots: Some(PARALLELISM), ..Default::default() };
    let cluster =
        LocalCluster::start_with_jobs_restarting(config, registry(probe.clone()), restarts()).expect("cluster starts");
    let api = cluster.api().expect("an embedded cluster has an API");
    let dir = tempfile::tempdir().unwrap();
    let request = CheckpointRequest {
        retained: Some(3),
        min_pause_ms: Some(500),
        ..checkpoints(dir.path(), INTERVAL_MS, CheckpointMode::ExactlyOnce, false)
    };
    let started = Instant::now();
    let id = submit(&api, JOB, &[], PARALLELISM, Some(request), None);

    let storage = FsCheckpointStorage::open(dir.path()).unwrap();
    let mut seen: BTreeMap<u64, CheckpointMetadata> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    let result = loop {
        for cid in storage.list().unwrap_or_default() {
            if let std::collections::btree_map::Entry::Vacant(entry) = seen.entry(cid) {
                if let Ok(meta) = storage.read_metadata(cid) {
                    entry.insert(meta);
                }
            }
        }
        let r = api.execution_result(&id).expect("the job is known");
        if r.state.is_terminal() {
            break r;
        }
        assert!(Instant::now() < deadline, "the job did not end within 15 minutes");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_finished(&api, &id, &result);
    let elapsed = started.elapsed();

    assert_eq!(probe.mismatches.load(Ordering::Relaxed), 0, "records whose state was not the previous version's");
    assert!(probe.failed.load(Ordering::SeqCst), "the failure was injected");
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 2, "one restart");
    assert!(seen.len() >= 5, "only {} checkpoints completed", seen.len());

    let hot_from_ms = probe.hot_from_ms.load(Ordering::Relaxed);
    let mut files_so_far: HashSet<String> = HashSet::new();
    let mut previous: Option<(u64, HashMap<String, HashSet<String>>)> = None;
    let mut total_uploaded = 0;
    let mut hot_uploads: Vec<(u64, u64, u64)> = Vec::new();
    eprintln!("checkpoint  duration ms  uploaded MB  state MB  hot");
    for meta in seen.values() {
        let (uploaded, shared) = (uploaded_bytes(meta), shared_bytes(meta));
        // A checkpoint triggered a whole interval after the hot rounds began holds the bulk
        // load in files of earlier checkpoints.
        let hot = hot_from_ms > 0 && meta.trigger_ms > hot_from_ms + INTERVAL_MS;
        eprintln!(
            "{:>10}  {:>11}  {:>11.1}  {:>8.1}  {}",
            meta.id,
            meta.duration_ms(),
            uploaded as f64 / 1e6,
            shared as f64 / 1e6,
            if hot { "yes" } else { "" }
        );
        total_uploaded += uploaded;
        let keyed = meta.tasks.iter().filter(|t| !t.handle.shared.is_empty()).count();
        assert_eq!(keyed, PARALLELISM as usize, "checkpoint {}: every keyed subtask's state is shared files", meta.id);
        let mut locals: HashMap<String, HashSet<String>> = HashMap::new();
        for task in &meta.tasks {
            let name = task.task.to_string();
            assert_eq!(task.metrics.uploaded_bytes, task.handle.uploaded_bytes(), "{name} of checkpoint {}", meta.id);
            // The previous checkpoint completed (and its completion reached the task) before this
            // one was triggered: every file of the store it held is reused, only new ones upload.
            let before = previous.as_ref().filter(|(id, _)| *id + 1 == meta.id).and_then(|(_, p)| p.get(&name));
            for r in &task.handle.shared {
                let local = local_name(&r.file.name);
                if r.reused {
                    assert!(
                        files_so_far.contains(&r.file.name),
                        "checkpoint {} reuses {}, never uploaded",
                        meta.id,
                        r.file.name
                    );
                } else if let Some(before) = before {
                    assert!(
                        !before.contains(local),
                        "checkpoint {} of {name} uploads {local}, a file the previous checkpoint already held",
                        meta.id
                    );
                }
                locals.entry(name.clone()).or_default().insert(local.to_string());
            }
        }
        if hot {
            hot_uploads.push((meta.id, uploaded, shared));
        }
        files_so_far.extend(meta.tasks.iter().flat_map(|t| t.handle.shared.iter().map(|r| r.file.name.clone())));
        previous = Some((meta.id, locals));
    }
    let last = seen.values().last().unwrap();
    if keys() == 10_000_000 {
        assert!(shared_bytes(last) > 700_000_000, "the state is about 1 GB: {} bytes", shared_bytes(last));
        assert!(hot_uploads.len() >= 2, "only {} checkpoints during the hot rounds", hot_uploads.len());
        // The store still compacts the bulk load during the hot rounds (new files, uploaded
        // rightly), but a checkpoint between two compactions uploads only the hot key groups'
        // flushed changes.
        let (id, uploaded, shared) = *hot_uploads.iter().min_by_key(|(_, u, _)| *u).unwrap();
        assert!(
            uploaded * 100 < shared,
            "the smallest checkpoint of the hot rounds ({id}) uploaded {uploaded} bytes of a {shared}-byte state"
        );
    }

    let left = storage.list_shared().unwrap();
    assert_eq!(unreferenced_shared(dir.path()), Vec::<String>::new(), "shared files no complete checkpoint uses");
    for cid in storage.list().unwrap() {
        let meta = storage.read_metadata(cid).unwrap();
        for r in meta.tasks.iter().flat_map(|t| &t.handle.shared) {
            storage.check_shared_file(&r.file).unwrap_or_else(|e| panic!("retained checkpoint {cid}: {e}"));
        }
    }
    assert!(left.len() < files_so_far.len(), "files of subsumed checkpoints were deleted");
    let left_bytes: u64 = left.iter().map(|f| std::fs::metadata(dir.path().join(f)).unwrap().len()).sum();
    eprintln!(
        "{} keys: {} checkpoints in {:.1} s, {:.1} MB uploaded in all against {:.1} MB of state in the last; \
         restore to the first record {:?}; {} shared files ({:.1} MB) left for the retained checkpoints",
        keys(),
        seen.len(),
        elapsed.as_secs_f64(),
        total_uploaded as f64 / 1e6,
        shared_bytes(last) as f64 / 1e6,
        probe.recovery.lock().unwrap(),
        left.len(),
        left_bytes as f64 / 1e6
    );
}
