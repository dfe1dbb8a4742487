//! Exactly-once end to end, in one process: a port of Flink's `UnalignedCheckpointITCase` on
//! an embedded cluster running a job registered by name (built again for every attempt, each
//! restarting from the latest completed checkpoint).
//!
//! The job: an ordered, rewindable source whose subtask `s` emits `(s, 0), (s, 1), ...`; a
//! partitioner that shifts every source subtask's records to downstream subtask `s + 1`
//! (Flink's `ShiftingPartitioner`: one channel per source keeps its order, and that channel
//! is never the one plain hashing would pick); a map that fails on a schedule kept in the
//! test's [`Probe`], shared by every attempt (after a quarter of the input; again soon after
//! the first restore, while the restored in-flight data is replayed; and after three
//! quarters); a keyed process function (keyed by source subtask) that counts each source
//! subtask's records in keyed value state, on the heap or the LSM backend, and passes the count
//! on; and a sink that keeps the last sequence number of every source subtask in checkpointed
//! state and counts duplicates, losses, reorderings and counts that disagree with the sequence
//! number (keyed state restored wrongly). The final attempt's sink reports its counts as
//! accumulators; every attempt's sinks also add what they saw to the probe.
//!
//! Exactly-once (aligned and unaligned) must show no duplicate, loss or reordering; at-least-
//! once no loss. Under induced backpressure (a slow sink, few network buffers) the unaligned
//! checkpoints must have persisted in-flight data. The time from each injected failure to the
//! first record the map processes after the restart is printed (a benchmark figure, not an
//! assertion).

#[path = "support/checkpointing.rs"]
mod checkpointing;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checkpointing::*;
use corestream::checkpoint::{CheckpointId, CheckpointMode};
use corestream::registry::{JobParts, JobRegistry, JobType};
use corestream::rpc::messages::{Accumulator, Accumulators};
use corestream::{
    ClusterConfig, KeyedContext, KeyedProcessFunction, KeyedRuntimeContext, LocalCluster, Sink, SinkContext, SinkError,
    StateBackendKind, ValueState, ValueStateDescriptor,
};
use corestream_state::{key_group_for_hash, operator_index_for_key_group, stable_hash, DEFAULT_MAX_PARALLELISM};

const JOB: &str = "ordered";

/// What the test learns from every attempt of the job.
#[derive(Default)]
struct Probe {
    /// Attempts built so far (not counting the JobManager's planning builds).
    attempts: AtomicU32,
    /// Failures the map injected.
    failures: AtomicU32,
    /// When the last failure was injected, until the map processes its first record after it.
    failed_at: Mutex<Option<Instant>>,
    /// Failure-to-first-record times.
    recoveries: Mutex<Vec<Duration>>,
    /// Over every attempt's sinks.
    duplicates: AtomicU64,
    lost: AtomicU64,
    reordered: AtomicU64,
    /// Records whose count in keyed state was not their sequence number + 1.
    miscounted: AtomicU64,
    /// Sink subtasks that started from restored state.
    sink_restores: AtomicU32,
}

/// The job's parameters, passed as its arguments.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// Records per source subtask.
    records: u64,
    /// Records per second per source subtask (0: as fast as it goes).
    rate: u64,
    /// Microseconds the sink spends per record.
    sink_us: u64,
    /// Whether the map fails on its schedule.
    failures: bool,
    /// The job's parallelism (the shifting keys depend on it).
    parallelism: u32,
    /// Where the counting function keeps its keyed state.
    backend: StateBackendKind,
}

impl Params {
    fn args(self) -> Vec<String> {
        vec![
            self.records.to_string(),
            self.rate.to_string(),
            self.sink_us.to_string(),
            if self.failures { "fail" } else { "no-fail" }.to_string(),
            self.parallelism.to_string(),
            self.backend.to_string(),
        ]
    }

    fn parse(args: &[String]) -> Result<Self, String> {
        let num = |i: usize| -> Result<u64, String> {
            args.get(i).ok_or(format!("argument {i} is missing"))?.parse().map_err(|e| format!("argument {i}: {e}"))
        };
        Ok(Self {
            records: num(0)?,
            rate: num(1)?,
            sink_us: num(2)?,
            failures: args.get(3).map(String::as_str) == Some("fail"),
            parallelism: num(4)? as u32,
            backend: args.get(5).ok_or("argument 5 is missing")?.parse()?,
        })
    }
}

/// A key whose key group belongs to downstream subtask `target` of `parallelism`.
fn key_for_subtask(target: u32, parallelism: u32) -> u64 {
    (0u64..)
        .find(|k| {
            let group = key_group_for_hash(stable_hash(k), DEFAULT_MAX_PARALLELISM);
            operator_index_for_key_group(DEFAULT_MAX_PARALLELISM, parallelism, group) == target
        })
        .expect("some key lands on every subtask")
}

/// The last sequence number seen per source subtask and what was wrong, as the sink
/// checkpoints it.
#[derive(Debug, Default, Clone)]
struct SinkState {
    last: BTreeMap<u32, u64>,
    received: u64,
    duplicates: u64,
    lost: u64,
    reordered: u64,
    miscounted: u64,
}

impl SinkState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [self.received, self.duplicates, self.lost, self.reordered, self.miscounted, self.last.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (s, last) in &self.last {
            out.extend_from_slice(&u64::from(*s).to_le_bytes());
            out.extend_from_slice(&last.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| c.try_into().map(u64::from_le_bytes))
            .collect::<Result<_, _>>()
            .map_err(|_| "ragged sink state".to_string())?;
        let [received, duplicates, lost, reordered, miscounted, n, rest @ ..] = words.as_slice() else {
            return Err("short sink state".into());
        };
        if rest.len() as u64 != 2 * n {
            return Err("sink state of the wrong length".into());
        }
        let last = rest.chunks(2).map(|p| (p[0] as u32, p[1])).collect();
        Ok(Self {
            last,
            received: *received,
            duplicates: *duplicates,
            lost: *lost,
            reordered: *reordered,
            miscounted: *miscounted,
        })
    }

    /// Checks `seq` of source subtask `s` against what came before.
    fn observe(&mut self, s: u32, seq: u64) -> (u64, u64, u64) {
        self.received += 1;
        let expected = self.last.get(&s).map_or(0, |l| l + 1);
        let (mut dup, mut lost, mut reordered) = (0, 0, 0);
        if seq + 1 == expected {
            dup = 1;
        } else if seq < expected {
            reordered = 1;
        } else {
            lost = seq - expected;
        }
        if seq >= expected {
            self.last.insert(s, seq);
        }
        self.duplicates += dup;
        self.lost += lost;
        self.reordered += reordered;
        (dup, lost, reordered)
    }
}

/// Keeps [`SinkState`] in checkpointed state; slow by `sink_us` per record.
struct VerifyingSink {
    state: SinkState,
    sink_us: u64,
    probe: Arc<Probe>,
    /// Where the final state goes when the input ends (this attempt's).
    done: Arc<Mutex<Vec<SinkState>>>,
}

impl Sink<(u32, u64, u64)> for VerifyingSink {
    fn write_batch(&mut self, batch: &mut Vec<(u32, u64, u64)>) -> Result<(), SinkError> {
        if self.sink_us > 0 {
            std::thread::sleep(Duration::from_micros(self.sink_us * batch.len() as u64));
        }
        for (s, seq, count) in batch.drain(..) {
            if count != seq + 1 {
                self.state.miscounted += 1;
                self.probe.miscounted.fetch_add(1, Ordering::Relaxed);
            }
            let (dup, lost, reordered) = self.state.observe(s, seq);
            self.probe.duplicates.fetch_add(dup, Ordering::Relaxed);
            self.probe.lost.fetch_add(lost, Ordering::Relaxed);
            self.probe.reordered.fetch_add(reordered, Ordering::Relaxed);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.done.lock().unwrap().push(self.state.clone());
        Ok(())
    }

    fn snapshot_state(&mut self, _checkpoint: CheckpointId) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(Some(self.state.encode()))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), SinkError> {
        self.state = SinkState::decode(state)?;
        self.probe.sink_restores.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Counts each key's records in keyed value state and emits `(s, seq, count so far)`.
#[derive(Default)]
struct Counting {
    count: Option<ValueState<u32, (), u64>>,
}

impl KeyedProcessFunction<u32, (u32, u64), (u32, u64, u64)> for Counting {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u32>) {
        self.count = Some(ctx.state().value_state(&ValueStateDescriptor::new("count")).expect("count state"));
    }

    fn process_element(&mut self, (s, seq): (u32, u64), ctx: &mut KeyedContext<'_, u32, (u32, u64, u64)>) {
        let count = self.count.as_mut().expect("opened");
        let n = count.value().unwrap_or(0) + 1;
        count.update(n);
        ctx.collect((s, seq, n));
    }
}

/// The map's failure schedule: attempt 0 fails once a quarter of the input has passed,
/// attempt 1 soon after its restore (while restored data is replayed), attempt 2 at three
/// quarters; later attempts run to the end.
fn fails_at(attempt: u32, seq: u64, processed: u64, records: u64) -> bool {
    match attempt {
        0 => seq >= records / 4,
        1 => processed >= 20,
        2 => seq >= records * 3 / 4,
        _ => false,
    }
}

fn registry(probe: Arc<Probe>) -> JobRegistry {
    let mut jobs = JobRegistry::new();
    jobs.register(JobType::new(
        JOB,
        "ordered records through a failing map",
        "RECORDS RATE SINK_US fail|no-fail PARALLELISM",
        move |env, ctx| {
            let params = Params::parse(ctx.args)?;
            let attempt = if ctx.planning { u32::MAX } else { probe.attempts.fetch_add(1, Ordering::SeqCst) };
            let parallelism = params.parallelism;
            env.set_state_backend(params.backend);
            let shifted: Arc<Vec<u64>> =
                Arc::new((0..parallelism).map(|t| key_for_subtask((t + 1) % parallelism, parallelism)).collect());
            let processed = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicBool::new(false));
            let done: Arc<Mutex<Vec<SinkState>>> = Arc::default();
            let (map_probe, sink_probe, sink_done) = (probe.clone(), probe.clone(), done.clone());
            env.from_source(JOB, None, move |c| {
                Ok(PacedSource::new(c.subtask, params.records, params.rate, 64, |s, seq| (s, seq)))
            })
            .key_by(move |&(s, _): &(u32, u64)| shifted[s as usize])
            .into_stream()
            .map(move |(s, seq): (u32, u64)| {
                let n = processed.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 {
                    if let Some(at) = map_probe.failed_at.lock().unwrap().take() {
                        map_probe.recoveries.lock().unwrap().push(at.elapsed());
                    }
                }
                if params.failures && fails_at(attempt, seq, n, params.records) && !failed.swap(true, Ordering::SeqCst)
                {
                    *map_probe.failed_at.lock().unwrap() = Some(Instant::now());
                    map_probe.failures.fetch_add(1, Ordering::SeqCst);
                    panic!("injected failure {} of attempt {attempt} at record ({s}, {seq})", attempt + 1);
                }
                (s, seq)
            })
            .name("failing map")
            .set_max_parallelism(DEFAULT_MAX_PARALLELISM)
            .key_by(|&(s, _): &(u32, u64)| s)
            .process(Counting::default)
            .name("counting")
            .add_sink("verifying sink", move |_: SinkContext| {
                Ok(VerifyingSink {
                    state: SinkState::default(),
                    sink_us: params.sink_us,
                    probe: sink_probe.clone(),
                    done: sink_done.clone(),
                })
            });
            Ok(JobParts::with_accumulators(move || {
                let states = done.lock().unwrap();
                let mut acc = Accumulators::new();
                let sum = |f: fn(&SinkState) -> u64| Accumulator::Count(states.iter().map(f).sum());
                acc.insert("received".into(), sum(|s| s.received));
                acc.insert("duplicates".into(), sum(|s| s.duplicates));
                acc.insert("lost".into(), sum(|s| s.lost));
                acc.insert("reordered".into(), sum(|s| s.reordered));
                acc.insert("miscounted".into(), sum(|s| s.miscounted));
                for state in states.iter() {
                    for (s, last) in &state.last {
                        acc.insert(format!("last-{s}"), Accumulator::Count(*last));
                    }
                }
                Ok(acc)
            }))
        },
    ));
    jobs
}

/// One run of the job, and what the test checks after it.
struct Case {
    parallelism: u32,
    mode: CheckpointMode,
    unaligned: bool,
    params: Params,
    /// Few buffers and small credit, so the slow sink backs up into the channels.
    squeezed: bool,
}

struct Ran {
    probe: Arc<Probe>,
    result: corestream::jobmanager::api::JobExecutionResult,
    checkpoints: Vec<corestream::checkpoint::metadata::CheckpointMetadata>,
    _dir: tempfile::TempDir,
}

fn run(case: &Case) -> Ran {
    let probe = Arc::new(Probe::default());
    let mut config = ClusterConfig { slots: Some(case.parallelism), ..Default::default() };
    if case.squeezed {
        config.credit.exclusive_per_channel = 1;
        config.credit.floating_per_gate = 1;
        config.credit.max_backlog_per_channel = 1;
    }
    let cluster =
        LocalCluster::start_with_jobs_restarting(config, registry(probe.clone()), restarts()).expect("cluster starts");
    let api = cluster.api().expect("an embedded cluster has an API");
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoints(dir.path(), 50, case.mode, case.unaligned);
    let args = Params { parallelism: case.parallelism, ..case.params }.args();
    let id = submit(&api, JOB, &args, case.parallelism, Some(ck), None);
    let result = wait_terminal(&api, &id);
    assert_finished(&api, &id, &result);
    let checkpoints = completed(dir.path());
    let details = api.job(&id).expect("the job is known");
    for e in details.exceptions.iter().filter(|e| !e.message.contains("injected failure")) {
        eprintln!("attempt {} failed unexpectedly: {}", e.attempt, e.message);
    }
    let recoveries = probe.recoveries.lock().unwrap().clone();
    eprintln!(
        "recovery p={} {:?} unaligned={} squeezed={}: failure to first record after restore {:?} ({} checkpoints)",
        case.parallelism,
        case.mode,
        case.unaligned,
        case.squeezed,
        recoveries,
        checkpoints.len()
    );
    Ran { probe, result, checkpoints, _dir: dir }
}

fn assert_all_delivered(case: &Case, ran: &Ran) {
    for s in 0..case.parallelism {
        assert_eq!(
            count(&ran.result, &format!("last-{s}")),
            case.params.records - 1,
            "the last record of source subtask {s}"
        );
    }
    assert_eq!(count(&ran.result, "lost"), 0, "records lost");
    assert_eq!(ran.probe.lost.load(Ordering::Relaxed), 0, "records lost in some attempt");
    if case.params.failures {
        assert_eq!(ran.probe.failures.load(Ordering::SeqCst), 3, "every scheduled failure happened");
        assert_eq!(ran.probe.attempts.load(Ordering::SeqCst), 4, "one attempt per failure, plus the last");
        assert!(ran.probe.sink_restores.load(Ordering::Relaxed) > 0, "the sinks restored state");
    }
}

fn assert_exactly_once(case: &Case, ran: &Ran) {
    assert_all_delivered(case, ran);
    assert_eq!(count(&ran.result, "duplicates"), 0, "duplicates");
    assert_eq!(count(&ran.result, "reordered"), 0, "reorderings");
    assert_eq!(ran.probe.duplicates.load(Ordering::Relaxed), 0, "duplicates in some attempt");
    assert_eq!(ran.probe.reordered.load(Ordering::Relaxed), 0, "reorderings in some attempt");
    assert_eq!(count(&ran.result, "miscounted"), 0, "counts in keyed state that disagree with the records");
    assert_eq!(ran.probe.miscounted.load(Ordering::Relaxed), 0, "miscounted records in some attempt");
    assert_eq!(count(&ran.result, "received"), case.params.records * u64::from(case.parallelism), "records received");
}

const PACED: Params =
    Params { records: 4000, rate: 4000, sink_us: 0, failures: true, parallelism: 0, backend: StateBackendKind::Heap };

fn exactly_once_with_failures(unaligned: bool, backend: StateBackendKind) {
    for parallelism in [1, 2] {
        let params = Params { backend, ..PACED };
        let case = Case { parallelism, mode: CheckpointMode::ExactlyOnce, unaligned, params, squeezed: false };
        let ran = run(&case);
        assert_exactly_once(&case, &ran);
        if backend == StateBackendKind::Lsm {
            assert_incremental(&ran);
        }
    }
}

/// The LSM backend's checkpoints were incremental: their keyed state is shared files, some
/// checkpoint reused files of an earlier one, and no shared file is left that no complete
/// checkpoint uses.
fn assert_incremental(ran: &Ran) {
    let refs = || ran.checkpoints.iter().flat_map(|m| m.tasks.iter().flat_map(|t| &t.handle.shared));
    assert!(refs().next().is_some(), "no checkpoint names a shared file");
    assert!(refs().any(|r| r.reused), "no checkpoint reused a file of an earlier one");
    assert_eq!(unreferenced_shared(ran._dir.path()), Vec::<String>::new(), "shared files no checkpoint uses");
}

#[test]
fn exactly_once_aligned_with_failures() {
    exactly_once_with_failures(false, StateBackendKind::Heap);
}

#[test]
fn exactly_once_unaligned_with_failures() {
    exactly_once_with_failures(true, StateBackendKind::Heap);
}

#[test]
fn exactly_once_aligned_with_failures_on_the_lsm_backend() {
    exactly_once_with_failures(false, StateBackendKind::Lsm);
}

#[test]
fn exactly_once_unaligned_with_failures_on_the_lsm_backend() {
    exactly_once_with_failures(true, StateBackendKind::Lsm);
}

#[test]
fn at_least_once_loses_nothing() {
    let case =
        Case { parallelism: 2, mode: CheckpointMode::AtLeastOnce, unaligned: false, params: PACED, squeezed: false };
    let ran = run(&case);
    assert_all_delivered(&case, &ran);
}

#[test]
fn unaligned_under_backpressure_persists_in_flight_data() {
    let params = Params { records: 20_000, rate: 0, sink_us: 20, failures: true, parallelism: 2, ..PACED };
    let case = Case { parallelism: 2, mode: CheckpointMode::ExactlyOnce, unaligned: true, params, squeezed: true };
    let ran = run(&case);
    assert_exactly_once(&case, &ran);
    let unaligned: Vec<_> = ran.checkpoints.iter().filter(|m| m.unaligned).collect();
    assert!(
        !unaligned.is_empty(),
        "unaligned checkpoints completed: {:?}",
        ran.checkpoints.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    let carried = unaligned.iter().filter(|m| channel_bytes(m) > 0).count();
    eprintln!(
        "{} unaligned checkpoints, {carried} with channel state, bytes {:?}",
        unaligned.len(),
        unaligned.iter().map(|m| channel_bytes(m)).collect::<Vec<_>>()
    );
    assert!(carried > 0, "no completed unaligned checkpoint carried channel state ({} of them)", unaligned.len());
}
