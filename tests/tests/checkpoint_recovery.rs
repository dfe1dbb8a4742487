//! Recovery end to end on an embedded cluster running a job registered by name:
//!
//! - event time: a keyed process function with event-time timers and keyed state, and a
//!   tumbling event-time window reduce, failing once mid-stream, restore and give the same
//!   results as an uninterrupted run, on the heap and on the LSM state backend;
//! - a damaged newest checkpoint (a corrupted byte in a task file, a truncated task file, a
//!   missing `_metadata`): a new submission resuming the directory restores the previous
//!   complete checkpoint, logs the damaged file, and gives the output of an uninterrupted
//!   run; a submission restoring exactly the damaged checkpoint fails naming the file;
//! - savepoints: one taken on the heap backend (a stop-with-savepoint) restores on the LSM
//!   backend and one of an incremental LSM job on the heap backend, each giving the
//!   uninterrupted run's output; a damaged savepoint fails its restore naming the file; bad
//!   savepoint requests are refused with the reason;
//! - rescaling: a savepoint taken at parallelism 2 restores at 1, 3 and 4 (either backend) and
//!   an incremental LSM checkpoint at 3, each giving the uninterrupted output; operators are
//!   matched by uid (a new operator restores, a renamed one's state is refused unless allowed).
//!
//! The job's sink keeps every result line in checkpointed state (with the id of the
//! checkpoint it belongs to, so the test learns which checkpoint a run restored) and reports
//! them as an accumulator when its input ends.

#[path = "support/checkpointing.rs"]
mod checkpointing;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use checkpointing::*;
use corestream::checkpoint::request::RestoreRequest;
use corestream::checkpoint::{CheckpointId, CheckpointMode};
use corestream::jobmanager::api::{
    ApiErrorCode, ClusterApi, JobState, SavepointInfo, SavepointRequest, SavepointStatus,
};
use corestream::registry::{JobParts, JobRegistry, JobType};
use corestream::rpc::messages::{Accumulator, Accumulators};
use corestream::{
    ClusterConfig, KeyedContext, KeyedProcessFunction, KeyedRuntimeContext, LocalCluster, Sink, SinkContext, SinkError,
    StateBackendKind, WatermarkStrategy,
};
use corestream_state::{MapState, MapStateDescriptor, ValueState, ValueStateDescriptor};

const JOB: &str = "event-time";

/// (key, event time in ms, value).
type Event = (u64, i64, u64);

/// What the test learns from every attempt.
#[derive(Default)]
struct Probe {
    attempts: AtomicU32,
    /// The checkpoints the sinks restored, one entry per sink subtask and restore.
    restored: Mutex<Vec<CheckpointId>>,
    /// Whether the failure (if asked for) was injected.
    failed: AtomicBool,
}

/// RECORDS per source subtask, RATE per second per subtask, whether to fail once, and the
/// state backend (optional, heap by default).
#[derive(Debug, Clone, Copy)]
struct Params {
    records: u64,
    rate: u64,
    fail: bool,
    backend: StateBackendKind,
}

impl Params {
    fn args(self) -> Vec<String> {
        vec![
            self.records.to_string(),
            self.rate.to_string(),
            if self.fail { "fail" } else { "no-fail" }.into(),
            self.backend.to_string(),
        ]
    }

    fn parse(args: &[String]) -> Result<Self, String> {
        let num = |i: usize| -> Result<u64, String> {
            args.get(i).ok_or(format!("argument {i} is missing"))?.parse().map_err(|e| format!("argument {i}: {e}"))
        };
        let backend = args.get(3).map_or(Ok(StateBackendKind::Heap), |b| b.parse())?;
        Ok(Self { records: num(0)?, rate: num(1)?, fail: args.get(2).map(String::as_str) == Some("fail"), backend })
    }
}

/// Subtask `s`'s record `seq`: key `seq % 5 + 10·s` at time `seq · 10 ms`.
fn event(s: u32, seq: u64) -> Event {
    (seq % 5 + 10 * u64::from(s), seq as i64 * 10, seq)
}

/// Per key: counts and sums its records per 100 ms of event time in keyed map state, and
/// emits each bucket from an event-time timer at its end (when the watermark has passed every
/// record of it), then forgets it.
#[derive(Default)]
struct Timers {
    buckets: Option<MapState<u64, (), i64, (u64, u64)>>,
}

impl KeyedProcessFunction<u64, Event, String> for Timers {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.buckets = Some(ctx.state().map_state(&MapStateDescriptor::new("buckets")).expect("bucket state"));
    }

    fn process_element(&mut self, (_, ts, value): Event, ctx: &mut KeyedContext<'_, u64, String>) {
        let buckets = self.buckets.as_mut().expect("opened");
        let bucket = ts.div_euclid(100);
        let (count, sum) = buckets.get(&bucket).unwrap_or((0, 0));
        buckets.put(bucket, (count + 1, sum + value));
        ctx.register_event_time_timer(bucket * 100 + 99);
    }

    fn on_timer(&mut self, t: i64, ctx: &mut KeyedContext<'_, u64, String>) {
        let key = *ctx.key();
        let (count, sum) = self.buckets.as_mut().expect("opened").remove(&t.div_euclid(100)).unwrap_or((0, 0));
        ctx.collect(format!("timer key {key} at {t}: count {count} sum {sum}"));
    }
}

/// Keeps every line in checkpointed state, with the id of the checkpoint the state was
/// taken for.
struct LinesSink {
    lines: Vec<String>,
    probe: Arc<Probe>,
    done: Arc<Mutex<Vec<String>>>,
}

impl Sink<String> for LinesSink {
    fn write_batch(&mut self, batch: &mut Vec<String>) -> Result<(), SinkError> {
        self.lines.append(batch);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.done.lock().unwrap().append(&mut self.lines);
        Ok(())
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId) -> Result<Option<Vec<u8>>, SinkError> {
        let mut bytes = checkpoint.to_le_bytes().to_vec();
        bytes.extend_from_slice(self.lines.join("\n").as_bytes());
        Ok(Some(bytes))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), SinkError> {
        let (id, text) = state.split_at_checked(8).ok_or("a sink state under 8 bytes")?;
        self.probe.restored.lock().unwrap().push(u64::from_le_bytes(id.try_into().expect("8 bytes")));
        let text = std::str::from_utf8(text)?;
        self.lines = if text.is_empty() { Vec::new() } else { text.split('\n').map(str::to_string).collect() };
        Ok(())
    }
}

fn registry(probe: Arc<Probe>) -> JobRegistry {
    let mut jobs = JobRegistry::new();
    let files_probe = probe.clone();
    jobs.register(JobType::new(JOB, "event-time timers and windows", "RECORDS RATE fail|no-fail", move |env, ctx| {
        let params = Params::parse(ctx.args)?;
        let attempt = if ctx.planning { u32::MAX } else { probe.attempts.fetch_add(1, Ordering::SeqCst) };
        env.set_state_backend(params.backend);
        let done: Arc<Mutex<Vec<String>>> = Arc::default();
        let (map_probe, sink_probe, sink_done) = (probe.clone(), probe.clone(), done.clone());
        env.set_auto_watermark_interval(Duration::from_millis(10));
        let events = env
            .from_source(JOB, None, move |c| {
                Ok(PacedSource::new(c.subtask, params.records, params.rate, u64::MAX, event))
            })
            .map(move |e: Event| {
                if params.fail
                    && attempt == 0
                    && e.2 >= params.records / 2
                    && !map_probe.failed.swap(true, Ordering::SeqCst)
                {
                    panic!("injected failure at {e:?}");
                }
                e
            })
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|e: &Event| e.1),
            );
        let timers = events.clone().key_by(|e: &Event| e.0).process(Timers::default);
        let windows = events
            .key_by(|e: &Event| e.0)
            .window(corestream::WindowAssigner::tumbling_event_time(Duration::from_millis(250)))
            .reduce(|a: &Event, b: &Event| (a.0, a.1.max(b.1), a.2 + b.2))
            .map(|(k, ts, sum): Event| format!("window key {k} last {ts}: sum {sum}"));
        timers.union([windows]).add_sink("lines", move |_: SinkContext| {
            Ok(LinesSink { lines: Vec::new(), probe: sink_probe.clone(), done: sink_done.clone() })
        });
        Ok(JobParts::with_accumulators(move || {
            let mut lines = done.lock().unwrap().clone();
            lines.sort();
            Ok(Accumulators::from([("lines".to_string(), Accumulator::Lines(lines))]))
        }))
    }));
    jobs.register(JobType::new(
        FILES_JOB,
        "ordered records into the exactly-once file sink",
        "RECORDS RATE OUT_DIR",
        move |env, ctx| {
            let params = Params::parse(ctx.args)?;
            let out = ctx.args.get(2).ok_or("OUT_DIR is missing")?.clone();
            let attempt = if ctx.planning { u32::MAX } else { files_probe.attempts.fetch_add(1, Ordering::SeqCst) };
            let processed = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let failed = Arc::new(AtomicBool::new(false));
            env.from_source(FILES_JOB, None, move |c| {
                Ok(PacedSource::new(c.subtask, params.records, params.rate, u64::MAX, event))
            })
            .map(move |(key, _, seq): Event| {
                let n = processed.fetch_add(1, Ordering::Relaxed) + 1;
                let due = match attempt {
                    0 => seq >= params.records / 2,
                    1 => n >= 20,
                    _ => false,
                };
                if due && !failed.swap(true, Ordering::SeqCst) {
                    panic!("injected failure of attempt {attempt} at {seq}");
                }
                format!("{} {seq}", key / 10)
            })
            .sink_to_files(out, corestream::FileSinkOptions::default());
            Ok(JobParts::none())
        },
    ));
    jobs.register(JobType::new(
        RESCALE_JOB,
        "per-key totals emitted at the end of input, from two source subtasks",
        "RECORDS RATE BACKEND VARIANT",
        |env, ctx| {
            let params = Params::parse(ctx.args)?;
            let variant = ctx.args.get(4).cloned().unwrap_or_else(|| "v1".into());
            env.set_state_backend(params.backend);
            env.set_auto_watermark_interval(Duration::from_millis(10));
            let done: Arc<Mutex<Vec<String>>> = Arc::default();
            let sink_done = done.clone();
            let mut events = env
                .from_source(RESCALE_JOB, Some(2), move |c| {
                    Ok(PacedSource::new(c.subtask, params.records, params.rate, u64::MAX, event))
                })
                .uid("events")
                .assign_timestamps_and_watermarks(
                    WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|e: &Event| e.1),
                )
                .set_parallelism(2)
                .uid("timestamps");
            if variant == "extra-operator" {
                events = events.map(|(k, ts, v): Event| (k, ts, v)).name("extra").uid("extra");
            }
            let totals_uid = if variant == "renamed" { "totals-v2" } else { "totals" };
            events
                .key_by(|e: &Event| e.0)
                .process(Totals::default)
                .uid(totals_uid)
                .add_sink("totals", move |_: SinkContext| Ok(Collect(sink_done.clone(), Vec::new())));
            Ok(JobParts::with_accumulators(move || {
                let mut lines = done.lock().unwrap().clone();
                lines.sort();
                Ok(Accumulators::from([("lines".to_string(), Accumulator::Lines(lines))]))
            }))
        },
    ));
    jobs
}

const RESCALE_JOB: &str = "rescale";

/// Per key: the count and sum of its records (value state) and its records per second of
/// event time (map state), emitted by an event-time timer when the input ends.
#[derive(Default)]
struct Totals {
    total: Option<ValueState<u64, (), (u64, u64)>>,
    seconds: Option<MapState<u64, (), i64, u64>>,
}

impl KeyedProcessFunction<u64, Event, String> for Totals {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.total = Some(ctx.state().value_state(&ValueStateDescriptor::new("total")).expect("total"));
        self.seconds = Some(ctx.state().map_state(&MapStateDescriptor::new("seconds")).expect("seconds"));
    }

    fn process_element(&mut self, (_, ts, value): Event, ctx: &mut KeyedContext<'_, u64, String>) {
        let total = self.total.as_mut().expect("opened");
        let (count, sum) = total.value().unwrap_or((0, 0));
        total.update((count + 1, sum + value));
        let seconds = self.seconds.as_mut().expect("opened");
        let second = ts.div_euclid(1000);
        seconds.put(second, seconds.get(&second).unwrap_or(0) + 1);
        ctx.register_event_time_timer(i64::MAX - 1);
    }

    fn on_timer(&mut self, _: i64, ctx: &mut KeyedContext<'_, u64, String>) {
        let key = *ctx.key();
        let (count, sum) = self.total.as_mut().expect("opened").value().unwrap_or((0, 0));
        let seconds = self.seconds.as_mut().expect("opened");
        let per_second: Vec<String> = (0..10).filter_map(|s| seconds.get(&s).map(|n| format!("{s}:{n}"))).collect();
        ctx.collect(format!("key {key}: count {count} sum {sum} per second {}", per_second.join(" ")));
    }
}

/// Collects lines, handing them over when the input ends; it keeps no state.
struct Collect(Arc<Mutex<Vec<String>>>, Vec<String>);

impl Sink<String> for Collect {
    fn write_batch(&mut self, batch: &mut Vec<String>) -> Result<(), SinkError> {
        self.1.append(batch);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.0.lock().unwrap().append(&mut self.1);
        Ok(())
    }
}

const FILES_JOB: &str = "files";

fn start(probe: &Arc<Probe>, slots: u32) -> (LocalCluster, Arc<dyn ClusterApi>) {
    let cluster = LocalCluster::start_with_jobs_restarting(
        ClusterConfig { slots: Some(slots), ..Default::default() },
        registry(probe.clone()),
        restarts(),
    )
    .expect("cluster starts");
    let api = cluster.api().expect("an embedded cluster has an API");
    (cluster, api)
}

fn lines(result: &corestream::jobmanager::api::JobExecutionResult) -> Vec<String> {
    match result.result.as_ref().and_then(|o| o.accumulators.get("lines")) {
        Some(Accumulator::Lines(lines)) => lines.clone(),
        other => panic!("no lines accumulator: {other:?}"),
    }
}

/// The output of a run without checkpoints or failures.
fn reference(params: Params, parallelism: u32) -> Vec<String> {
    let probe = Arc::new(Probe::default());
    let (_cluster, api) = start(&probe, parallelism);
    let id = submit(&api, JOB, &Params { fail: false, ..params }.args(), parallelism, None, None);
    let result = wait_terminal(&api, &id);
    assert_finished(&api, &id, &result);
    let out = lines(&result);
    assert!(out.iter().any(|l| l.starts_with("timer")) && out.iter().any(|l| l.starts_with("window")), "{out:?}");
    out
}

#[test]
fn event_time_timers_and_windows_restored_mid_stream_give_the_uninterrupted_results() {
    restored_mid_stream_gives_the_uninterrupted_results(StateBackendKind::Heap);
}

#[test]
fn on_the_lsm_backend_event_time_state_restored_mid_stream_gives_the_uninterrupted_results() {
    restored_mid_stream_gives_the_uninterrupted_results(StateBackendKind::Lsm);
}

fn restored_mid_stream_gives_the_uninterrupted_results(backend: StateBackendKind) {
    let params = Params { records: 1500, rate: 1500, fail: true, backend };
    for parallelism in [1, 2] {
        let expected = reference(params, parallelism);
        let probe = Arc::new(Probe::default());
        let (_cluster, api) = start(&probe, parallelism);
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoints(dir.path(), 50, CheckpointMode::ExactlyOnce, false);
        let id = submit(&api, JOB, &params.args(), parallelism, Some(ck), None);
        let result = wait_terminal(&api, &id);
        assert_finished(&api, &id, &result);
        assert!(probe.failed.load(Ordering::SeqCst), "the failure was injected");
        assert_eq!(probe.attempts.load(Ordering::SeqCst), 2, "one restart");
        let restored = probe.restored.lock().unwrap().clone();
        assert_eq!(restored.len(), parallelism as usize, "every sink subtask restored state: {restored:?}");
        assert!(restored.iter().all(|&r| r == restored[0]), "one checkpoint restored: {restored:?}");
        let got = lines(&result);
        assert_eq!(got.len(), expected.len(), "result lines at p={parallelism}");
        assert_eq!(got, expected, "results at p={parallelism} after a restore from checkpoint {}", restored[0]);
    }
}

static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

/// Warnings logged by every test in this process (a global subscriber writes them here).
fn log() -> &'static Mutex<Vec<u8>> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        struct Writer;
        impl Write for Writer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                LOG.get_or_init(Mutex::default).lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .try_init();
    });
    LOG.get_or_init(Mutex::default)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The largest task file of checkpoint `id` in `dir`.
fn task_file(dir: &Path, id: CheckpointId) -> PathBuf {
    let chk = dir.join(format!("chk-{id}"));
    std::fs::read_dir(&chk)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "state"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap_or_else(|| panic!("no task file in {}", chk.display()))
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    CorruptByte,
    Truncate,
    NoMetadata,
}

fn damage(dir: &Path, id: CheckpointId, how: Damage) -> Option<String> {
    match how {
        Damage::CorruptByte => {
            let file = task_file(dir, id);
            let mut bytes = std::fs::read(&file).unwrap();
            let at = bytes.len() - 3;
            bytes[at] ^= 0x5a;
            std::fs::write(&file, bytes).unwrap();
            Some(file.file_name().unwrap().to_string_lossy().into_owned())
        }
        Damage::Truncate => {
            let file = task_file(dir, id);
            let len = std::fs::metadata(&file).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
            Some(file.file_name().unwrap().to_string_lossy().into_owned())
        }
        Damage::NoMetadata => {
            std::fs::remove_file(dir.join(format!("chk-{id}")).join("_metadata")).unwrap();
            None
        }
    }
}

/// A run cancelled after at least two completed checkpoints: its directory, the next-to-newest
/// and the newest checkpoint.
fn cancelled_after_two_checkpoints(
    api: &Arc<dyn ClusterApi>,
    params: Params,
    parallelism: u32,
) -> (tempfile::TempDir, CheckpointId, CheckpointId) {
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoints(dir.path(), 100, CheckpointMode::ExactlyOnce, false);
    let id = submit(api, JOB, &params.args(), parallelism, Some(ck), None);
    wait_until("two completed checkpoints", JOB_TIMEOUT, || completed(dir.path()).len() >= 2);
    api.cancel(&id).expect("the job runs");
    let result = wait_terminal(api, &id);
    assert_eq!(result.state, JobState::Cancelled, "{result:?}");
    let ids: Vec<CheckpointId> = completed(dir.path()).iter().map(|m| m.id).collect();
    (dir, ids[ids.len() - 2], ids[ids.len() - 1])
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let log = log();
    let parallelism = 2;
    let params = Params { records: 3000, rate: 1000, fail: false, backend: StateBackendKind::Heap };
    let expected = reference(params, parallelism);

    let probe = Arc::new(Probe::default());
    let (_cluster, api) = start(&probe, parallelism);
    let (original, previous, newest) = cancelled_after_two_checkpoints(&api, params, parallelism);

    for how in [Damage::CorruptByte, Damage::Truncate, Damage::NoMetadata] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(original.path(), copy.path());
        let named = damage(copy.path(), newest, how);

        // Exactly the damaged checkpoint: refused, naming the file.
        if let Some(file) = &named {
            let chk = copy.path().join(format!("chk-{newest}")).display().to_string();
            let id = submit(&api, JOB, &params.args(), parallelism, None, Some(RestoreRequest::FromCheckpoint(chk)));
            let result = wait_terminal(&api, &id);
            assert_eq!(result.state, JobState::Failed, "{how:?}: restoring exactly the damaged checkpoint");
            let failure = result.result.as_ref().and_then(|o| o.failure.clone()).unwrap_or_default();
            assert!(failure.contains(file.as_str()), "{how:?}: the failure names {file}: {failure}");
        }

        // The directory: the previous complete checkpoint, and the uninterrupted output.
        probe.restored.lock().unwrap().clear();
        let resume = RestoreRequest::Resume(copy.path().display().to_string());
        let ck = checkpoints(copy.path(), 100, CheckpointMode::ExactlyOnce, false);
        let id = submit(&api, JOB, &params.args(), parallelism, Some(ck), Some(resume));
        let result = wait_terminal(&api, &id);
        assert_finished(&api, &id, &result);
        let restored = probe.restored.lock().unwrap().clone();
        assert_eq!(restored, vec![previous; parallelism as usize], "{how:?}: restored checkpoint {previous}");
        if let Some(file) = &named {
            let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
            assert!(
                text.lines().any(|l| l.contains(&format!("skipping checkpoint {newest}")) && l.contains(file.as_str())),
                "{how:?}: the log names {file}:\n{text}"
            );
        }
        assert_eq!(lines(&result), expected, "{how:?}: output after resuming from checkpoint {previous}");
    }
}

/// A shared file uploaded for checkpoint `id` (an SST of an incremental LSM snapshot).
fn shared_file_of(dir: &Path, id: CheckpointId) -> String {
    let meta = completed(dir).into_iter().find(|m| m.id == id).expect("the checkpoint is complete");
    let file = meta.tasks.iter().flat_map(|t| &t.handle.shared).find(|r| !r.reused).expect("an uploaded file");
    file.file.name.clone()
}

#[test]
fn a_missing_or_damaged_shared_file_is_named_and_nothing_is_half_restored() {
    let log = log();
    let parallelism = 2;
    let params = Params { records: 3000, rate: 1000, fail: false, backend: StateBackendKind::Lsm };
    let expected = reference(params, parallelism);

    let probe = Arc::new(Probe::default());
    let (_cluster, api) = start(&probe, parallelism);
    let (original, previous, newest) = cancelled_after_two_checkpoints(&api, params, parallelism);

    for missing in [true, false] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(original.path(), copy.path());
        let file = shared_file_of(copy.path(), newest);
        let path = copy.path().join(&file);
        if missing {
            std::fs::remove_file(&path).unwrap();
        } else {
            let mut bytes = std::fs::read(&path).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x5a;
            std::fs::write(&path, bytes).unwrap();
        }

        let chk = copy.path().join(format!("chk-{newest}")).display().to_string();
        let id = submit(&api, JOB, &params.args(), parallelism, None, Some(RestoreRequest::FromCheckpoint(chk)));
        let result = wait_terminal(&api, &id);
        assert_eq!(result.state, JobState::Failed, "missing {missing}: restoring exactly the damaged checkpoint");
        let failure = result.result.as_ref().and_then(|o| o.failure.clone()).unwrap_or_default();
        assert!(failure.contains(&file), "missing {missing}: the failure names {file}: {failure}");

        if missing {
            probe.restored.lock().unwrap().clear();
            let resume = RestoreRequest::Resume(copy.path().display().to_string());
            let ck = checkpoints(copy.path(), 100, CheckpointMode::ExactlyOnce, false);
            let id = submit(&api, JOB, &params.args(), parallelism, Some(ck), Some(resume));
            let result = wait_terminal(&api, &id);
            assert_finished(&api, &id, &result);
            let restored = probe.restored.lock().unwrap().clone();
            assert_eq!(restored, vec![previous; parallelism as usize], "restored checkpoint {previous}");
            let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
            assert!(
                text.lines().any(|l| l.contains(&format!("skipping checkpoint {newest}")) && l.contains(&file)),
                "the log names {file}:\n{text}"
            );
            assert_eq!(lines(&result), expected, "output after resuming from checkpoint {previous}");
        }
    }
}

#[test]
fn the_exactly_once_file_sink_holds_every_record_once_after_restarts() {
    let parallelism = 2;
    let records = 3000u64;
    let probe = Arc::new(Probe::default());
    let (_cluster, api) = start(&probe, parallelism);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = vec![records.to_string(), "3000".to_string(), out.display().to_string()];
    let ck = checkpoints(&tmp.path().join("ck"), 50, CheckpointMode::ExactlyOnce, false);
    let id = submit(&api, FILES_JOB, &args, parallelism, Some(ck), None);
    let result = wait_terminal(&api, &id);
    assert_finished(&api, &id, &result);
    assert_eq!(probe.attempts.load(Ordering::SeqCst), 3, "two failures, three attempts");
    let mut got: Vec<(u64, u64)> = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            let (s, seq) = line.split_once(' ').unwrap_or_else(|| panic!("line '{line}' of {name}"));
            got.push((s.parse().unwrap(), seq.parse().unwrap()));
        }
    }
    got.sort();
    let expected: Vec<(u64, u64)> =
        (0..u64::from(parallelism)).flat_map(|s| (0..records).map(move |q| (s, q))).collect();
    let missing = expected.iter().filter(|e| got.binary_search(e).is_err()).count();
    let duplicates = got.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!((missing, duplicates, got.len()), (0, 0, expected.len()), "missing, duplicated, committed lines");
}

/// Requests a savepoint of running job `id` into `target` (with `stop`, a stop-with-savepoint)
/// once a checkpoint completed in `dir` (every task runs), waits for it and returns it.
fn savepoint_of(api: &Arc<dyn ClusterApi>, id: &str, dir: &Path, target: &Path, stop: bool) -> SavepointInfo {
    wait_until("a completed checkpoint", JOB_TIMEOUT, || !completed(dir).is_empty());
    let request = SavepointRequest { target_directory: Some(target.display().to_string()) };
    let request_id = api.trigger_savepoint(id, request, stop).expect("a savepoint is requested").request_id;
    let mut info = None;
    wait_until("the savepoint", JOB_TIMEOUT, || {
        info = Some(api.savepoint(id, &request_id).expect("the request is known"));
        info.as_ref().is_some_and(|i| i.status != SavepointStatus::InProgress)
    });
    let info = info.unwrap();
    assert_eq!(info.status, SavepointStatus::Completed, "{info:?}");
    info
}

/// A savepoint taken on backend `from` restores on backend `to` at the same parallelism and
/// gives the uninterrupted run's output; the savepoint is self-contained (its own directory,
/// no shared files, not among the job's checkpoints), and with `stop` the job ends cancelled.
fn savepoint_restores_on_the_other_backend(from: StateBackendKind, to: StateBackendKind, stop: bool) {
    let parallelism = 2;
    let params = Params { records: 3000, rate: 1000, fail: false, backend: from };
    let expected = reference(params, parallelism);
    let probe = Arc::new(Probe::default());
    let (_cluster, api) = start(&probe, parallelism);
    let (dir, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ck = checkpoints(dir.path(), 100, CheckpointMode::ExactlyOnce, true);
    let id = submit(&api, JOB, &params.args(), parallelism, Some(ck), None);
    let info = savepoint_of(&api, &id, dir.path(), target.path(), stop);
    let result = wait_terminal(&api, &id);
    if stop {
        assert_eq!(result.state, JobState::Cancelled, "stopped with a savepoint: {result:?}");
    } else {
        assert_finished(&api, &id, &result);
    }

    let location = PathBuf::from(info.location.clone().expect("a complete savepoint has a location"));
    assert_eq!(location.parent(), Some(target.path()), "{info:?}");
    let savepoint_id = info.checkpoint_id.expect("triggered");
    let chk = location.join(format!("chk-{savepoint_id}"));
    let meta = corestream::checkpoint::storage::FsCheckpointStorage::open(&location)
        .and_then(|s| corestream::checkpoint::storage::CheckpointStorage::read_metadata(&s, savepoint_id))
        .unwrap_or_else(|e| panic!("{}: {e}", chk.display()));
    assert!(meta.savepoint && !meta.unaligned, "a savepoint is aligned, even in a job with unaligned checkpoints");
    assert!(meta.tasks.iter().all(|t| t.handle.shared.is_empty()), "a savepoint holds no shared files");
    assert!(!dir.path().join(format!("chk-{savepoint_id}")).exists(), "the savepoint left the checkpoint directory");
    assert!(completed(dir.path()).iter().all(|m| !m.savepoint));
    let leftovers: Vec<_> = std::fs::read_dir(target.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the savepoint's directory: {leftovers:?}");

    probe.restored.lock().unwrap().clear();
    let restore = RestoreRequest::FromSavepoint(location.display().to_string());
    let id = submit(&api, JOB, &Params { backend: to, ..params }.args(), parallelism, None, Some(restore));
    let result = wait_terminal(&api, &id);
    assert_finished(&api, &id, &result);
    assert_eq!(*probe.restored.lock().unwrap(), vec![savepoint_id; parallelism as usize]);
    assert_eq!(lines(&result), expected, "{from} → {to}: output after restoring savepoint {savepoint_id}");
}

#[test]
fn a_heap_savepoint_stops_the_job_and_restores_on_the_lsm_backend() {
    savepoint_restores_on_the_other_backend(StateBackendKind::Heap, StateBackendKind::Lsm, true);
}

#[test]
fn an_incremental_lsm_job_savepoint_restores_on_the_heap_backend() {
    savepoint_restores_on_the_other_backend(StateBackendKind::Lsm, StateBackendKind::Heap, false);
}

#[test]
fn a_missing_or_damaged_savepoint_file_is_named_and_nothing_is_restored() {
    let parallelism = 2;
    let params = Params { records: 3000, rate: 1000, fail: false, backend: StateBackendKind::Heap };
    let probe = Arc::new(Probe::default());
    let (_cluster, api) = start(&probe, parallelism);
    let (dir, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ck = checkpoints(dir.path(), 100, CheckpointMode::ExactlyOnce, false);
    let id = submit(&api, JOB, &params.args(), parallelism, Some(ck), None);
    let info = savepoint_of(&api, &id, dir.path(), target.path(), true);
    wait_terminal(&api, &id);
    let original = PathBuf::from(info.location.unwrap());
    let savepoint_id = info.checkpoint_id.unwrap();

    for how in [Damage::CorruptByte, Damage::Truncate, Damage::NoMetadata] {
        let copy = tempfile::tempdir().unwrap();
        let location = copy.path().join(original.file_name().unwrap());
        copy_dir(&original, &location);
        let named = damage(&location, savepoint_id, how).unwrap_or_else(|| "no complete chk-<id>".into());
        probe.restored.lock().unwrap().clear();
        let restore = RestoreRequest::FromSavepoint(location.display().to_string());
        let id = submit(&api, JOB, &params.args(), parallelism, None, Some(restore));
        let result = wait_terminal(&api, &id);
        assert_eq!(result.state, JobState::Failed, "{how:?}");
        let failure = result.result.as_ref().and_then(|o| o.failure.clone()).unwrap_or_default();
        assert!(failure.contains(&named), "{how:?}: the failure names {named}: {failure}");
        assert!(probe.restored.lock().unwrap().is_empty(), "{how:?}: no task restored anything");
    }
}

#[test]
fn savepoint_requests_are_refused_with_the_reason() {
    let probe = Arc::new(Probe::default());
    let (_cluster, api) = start(&probe, 2);
    let params = Params { records: 100_000, rate: 1000, fail: false, backend: StateBackendKind::Heap };
    let target = tempfile::tempdir().unwrap();
    let to = |dir: &str| SavepointRequest { target_directory: Some(dir.into()) };
    let plain = submit(&api, JOB, &params.args(), 1, None, None);
    let e = api.trigger_savepoint(&plain, to(&target.path().display().to_string()), false).unwrap_err();
    assert_eq!(e.error, ApiErrorCode::Conflict, "{e:?}");
    assert!(e.message.contains("takes no checkpoints"), "{e:?}");
    api.cancel(&plain).unwrap();
    wait_terminal(&api, &plain);

    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoints(dir.path(), 100, CheckpointMode::ExactlyOnce, false);
    let id = submit(&api, JOB, &params.args(), 1, Some(ck), None);
    for (request, message) in [
        (SavepointRequest::default(), "no target directory"),
        (to("relative/dir"), "give an absolute path"),
        (to(" "), "empty"),
    ] {
        let e = api.trigger_savepoint(&id, request.clone(), false).unwrap_err();
        assert_eq!(e.error, ApiErrorCode::BadRequest, "{request:?}: {e:?}");
        assert!(e.message.contains(message), "{request:?}: {e:?}");
    }
    let e = api.savepoint(&id, &"0".repeat(32)).unwrap_err();
    assert_eq!(e.error, ApiErrorCode::NotFound, "{e:?}");
    let e = api.savepoint(&id, "not-an-id").unwrap_err();
    assert_eq!(e.error, ApiErrorCode::BadRequest, "{e:?}");
    // A target that cannot be created fails the savepoint, and the job goes on.
    let file = target.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    wait_until("a completed checkpoint", JOB_TIMEOUT, || !completed(dir.path()).is_empty());
    let request_id = api.trigger_savepoint(&id, to(&file.display().to_string()), true).unwrap().request_id;
    let mut info = None;
    wait_until("the savepoint", JOB_TIMEOUT, || {
        info = Some(api.savepoint(&id, &request_id).unwrap());
        info.as_ref().is_some_and(|i| i.status != SavepointStatus::InProgress)
    });
    let info = info.unwrap();
    assert_eq!(info.status, SavepointStatus::Failed, "{info:?}");
    assert!(info.failure.as_deref().is_some_and(|f| f.contains("a-file")), "{info:?}");
    assert_eq!(
        api.job(&id).unwrap().overview.state,
        JobState::Running,
        "a failed stop-with-savepoint leaves the job running"
    );
    api.cancel(&id).unwrap();
    wait_terminal(&api, &id);
}

fn rescale_args(params: Params, variant: &str) -> Vec<String> {
    let mut args = params.args();
    args.push(variant.into());
    args
}

/// Runs the rescale job at `parallelism` from `restore` (none: from the start) and returns its
/// result.
fn run_rescale(
    api: &Arc<dyn ClusterApi>,
    params: Params,
    variant: &str,
    parallelism: u32,
    restore: Option<RestoreRequest>,
    allow_non_restored_state: bool,
) -> corestream::jobmanager::api::JobExecutionResult {
    let request = corestream::jobmanager::api::SubmitRequest {
        job: RESCALE_JOB.into(),
        args: rescale_args(params, variant),
        parallelism: Some(parallelism),
        restore,
        allow_non_restored_state,
        restart_strategy: Some("none".into()),
        ..Default::default()
    };
    let id = api.submit(request).expect("the job is accepted").jobid.to_string();
    wait_terminal(api, &id)
}

#[test]
fn a_savepoint_at_parallelism_2_restores_at_1_3_and_4_on_either_backend_and_matches_operators_by_uid() {
    let probe = Arc::new(Probe::default());
    let (_cluster, api) = start(&probe, 4);
    let params = Params { records: 3000, rate: 1000, fail: false, backend: StateBackendKind::Heap };
    let expected = {
        let result = run_rescale(&api, params, "v1", 2, None, false);
        assert_eq!(result.state, JobState::Finished, "{result:?}");
        lines(&result)
    };
    assert_eq!(expected.len(), 10, "ten keys: {expected:?}");

    // Taken on the LSM backend, whose checkpoints are incremental.
    let (dir, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ck = checkpoints(dir.path(), 100, CheckpointMode::ExactlyOnce, false);
    let lsm = Params { backend: StateBackendKind::Lsm, ..params };
    let id = submit(&api, RESCALE_JOB, &rescale_args(lsm, "v1"), 2, Some(ck), None);
    let info = savepoint_of(&api, &id, dir.path(), target.path(), true);
    assert_eq!(wait_terminal(&api, &id).state, JobState::Cancelled);
    let from = || Some(RestoreRequest::FromSavepoint(info.location.clone().unwrap()));

    // The job's newest checkpoint (incremental LSM files) rescales too.
    let newest = completed(dir.path()).last().map(|m| m.id).expect("a checkpoint completed");
    let checkpoint = dir.path().join(format!("chk-{newest}")).display().to_string();
    let result = run_rescale(&api, lsm, "v1", 3, Some(RestoreRequest::FromCheckpoint(checkpoint)), false);
    assert_eq!(result.state, JobState::Finished, "{result:?}");
    assert_eq!(lines(&result), expected, "restored checkpoint {newest} at parallelism 3");

    for (parallelism, backend) in [
        (1, StateBackendKind::Heap),
        (3, StateBackendKind::Lsm),
        (4, StateBackendKind::Heap),
        (2, StateBackendKind::Lsm),
    ] {
        let result = run_rescale(&api, Params { backend, ..params }, "v1", parallelism, from(), false);
        assert_eq!(result.state, JobState::Finished, "p={parallelism} {backend}: {result:?}");
        assert_eq!(lines(&result), expected, "restored at parallelism {parallelism} on the {backend} backend");
    }

    // A new operator with its own id takes no state and needs no permission.
    let result = run_rescale(&api, params, "extra-operator", 3, from(), false);
    assert_eq!(result.state, JobState::Finished, "{result:?}");
    assert_eq!(lines(&result), expected, "with a new operator");

    // The counter's id changed: its state has no operator to go to.
    let result = run_rescale(&api, params, "renamed", 2, from(), false);
    assert_eq!(result.state, JobState::Failed, "{result:?}");
    let failure = result.result.as_ref().and_then(|o| o.failure.clone()).unwrap_or_default();
    assert!(failure.contains("'totals'") && failure.contains("--allow-non-restored-state"), "{failure}");
    let result = run_rescale(&api, params, "renamed", 2, from(), true);
    assert_eq!(result.state, JobState::Finished, "{result:?}");
    let got = lines(&result);
    assert_eq!(got.len(), expected.len());
    assert_ne!(got, expected, "the counters started empty after the savepoint");
}
