//! Jobs by name. Rust closures cannot be shipped to another process, so every process of a
//! cluster builds a job's graph itself from the same binary: a [`JobRegistry`] maps a job type's
//! name and its arguments to a builder. The JobManager builds each submitted job once on a
//! planning cluster (to check its arguments and compute its plan's fingerprint), and every
//! TaskManager builds it again for its share and checks the fingerprint, so processes running
//! different binaries or arguments refuse each other instead of exchanging garbage. The
//! `corestream` binary registers the built-in jobs; an application registers its own
//! (application mode) and runs the same `jobmanager` and `taskmanager` roles.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::env::StreamEnvironment;
use crate::rpc::messages::{Accumulator, Accumulators};

/// What a builder gets besides the environment.
#[derive(Debug, Clone)]
pub struct JobContext<'a> {
    /// The job's arguments, as given to `submit`.
    pub args: &'a [String],
    /// True on the JobManager, which only plans the job: the builder must declare the same
    /// graph but start nothing (no reader threads, no files).
    pub planning: bool,
    /// Counters shared by every process of the job (see [`JobSignals`]).
    pub signals: JobSignals,
    /// True when the job takes checkpoints: whatever its sinks hold must be in checkpointed
    /// state or committed through two-phase commit (a sink that holds rows in memory until the
    /// end would lose them at a restore).
    pub checkpoints: bool,
}

/// Named counters a job's processes share while it runs: any subtask or host thread adds to a
/// counter, and every process sees the job-wide totals soon after (through the JobMaster, which
/// adds them up and sends them to every TaskManager of the job, within about 100 ms). A job uses
/// them to wait for a condition across processes — every sink has seen its first record, say
/// — without a channel of its own. The JobMaster also sets [`JobSignals::ALL_RUNNING`] to 1
/// once every task of the job runs. A task never blocks on them: it reads
/// [`total`](Self::total), which takes a short lock; only host threads
/// [`wait_for`](Self::wait_for). At most [`JobSignals::NAMES_MAX`] names per job.
#[derive(Clone, Default)]
pub struct JobSignals {
    inner: Arc<SignalsInner>,
}

#[derive(Default)]
struct SignalsInner {
    state: std::sync::Mutex<SignalsState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct SignalsState {
    totals: BTreeMap<String, u64>,
    /// Additions not yet sent to the JobMaster (`None`: a job in one process, added at once).
    pending: Option<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for JobSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSignals").field("totals", &self.lock().totals).finish()
    }
}

impl JobSignals {
    /// Set to 1 by the JobMaster once every task of the job runs.
    pub const ALL_RUNNING: &'static str = "all-running";
    /// Names one job may use, at most.
    pub const NAMES_MAX: usize = 64;
    /// Bytes of one name, at most.
    pub const NAME_BYTES_MAX: usize = 128;

    /// Counters of a job that runs in this process only: additions count at once.
    pub fn local() -> Self {
        Self::default()
    }

    /// Counters of one TaskManager's part of a job: additions wait for [`Self::take_pending`].
    pub(crate) fn remote() -> Self {
        let s = Self::default();
        s.lock().pending = Some(BTreeMap::new());
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SignalsState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `n` to counter `name` (a name past the limits is ignored and logged).
    pub fn add(&self, name: &str, n: u64) {
        let mut state = self.lock();
        let known = state.totals.contains_key(name) || state.pending.as_ref().is_some_and(|p| p.contains_key(name));
        let names = state.totals.len().max(state.pending.as_ref().map_or(0, |p| p.len()));
        if !known && (name.len() > Self::NAME_BYTES_MAX || names >= Self::NAMES_MAX) {
            tracing::warn!(name, "a job signal past the limits of names was ignored");
            return;
        }
        match state.pending.as_mut() {
            Some(pending) => *pending.entry(name.to_string()).or_default() += n,
            None => {
                *state.totals.entry(name.to_string()).or_default() += n;
                self.inner.changed.notify_all();
            }
        }
    }

    /// The job-wide total of `name` as this process last heard it.
    pub fn total(&self, name: &str) -> u64 {
        self.lock().totals.get(name).copied().unwrap_or(0)
    }

    /// Waits (on a host thread, never in a task) until `name` reaches `at_least`; false if
    /// `timeout` passed first.
    pub fn wait_for(&self, name: &str, at_least: u64, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.totals.get(name).copied().unwrap_or(0) >= at_least {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.inner.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The additions made since the last call, for the JobMaster.
    pub(crate) fn take_pending(&self) -> BTreeMap<String, u64> {
        self.lock().pending.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The job-wide totals the JobMaster sent.
    pub(crate) fn set_totals(&self, totals: BTreeMap<String, u64>) {
        let mut state = self.lock();
        for (name, value) in totals {
            let entry = state.totals.entry(name).or_default();
            *entry = (*entry).max(value);
        }
        self.inner.changed.notify_all();
    }
}

/// Computes a part's accumulators once its tasks ended successfully.
pub type Finisher = Box<dyn FnOnce() -> Result<Accumulators, String> + Send>;

/// What a builder returns besides the graph it declared.
#[derive(Default)]
pub struct JobParts {
    finish: Option<Finisher>,
}

impl std::fmt::Debug for JobParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobParts").field("finish", &self.finish.is_some()).finish()
    }
}

impl JobParts {
    /// A job whose results are its counters and committed outputs.
    pub fn none() -> Self {
        Self::default()
    }

    /// A job that computes accumulators after this process's part ended (from what its sinks
    /// gathered); the JobMaster merges them over every TaskManager.
    pub fn with_accumulators(finish: impl FnOnce() -> Result<Accumulators, String> + Send + 'static) -> Self {
        Self { finish: Some(Box::new(finish)) }
    }

    /// Runs the finisher, if any.
    pub fn finish(self) -> Result<Accumulators, String> {
        self.finish.map_or_else(|| Ok(Accumulators::new()), |f| f())
    }
}

/// A builder: declares the job on the environment from its arguments, or says what is wrong
/// with them.
pub type BuildFn = dyn Fn(&mut StreamEnvironment, &JobContext<'_>) -> Result<JobParts, String> + Send + Sync;

/// One registered job type.
#[derive(Clone)]
pub struct JobType {
    pub name: String,
    /// One line for `GET /v1/job-types` and `--help`.
    pub about: String,
    /// Its arguments, e.g. `INPUT OUTPUT [--max-line-bytes N]`.
    pub usage: String,
    pub build: Arc<BuildFn>,
}

impl std::fmt::Debug for JobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobType").field("name", &self.name).finish_non_exhaustive()
    }
}

impl JobType {
    pub fn new(
        name: impl Into<String>,
        about: impl Into<String>,
        usage: impl Into<String>,
        build: impl Fn(&mut StreamEnvironment, &JobContext<'_>) -> Result<JobParts, String> + Send + Sync + 'static,
    ) -> Self {
        Self { name: name.into(), about: about.into(), usage: usage.into(), build: Arc::new(build) }
    }
}

/// The job types a binary can run, by name.
#[derive(Clone, Default, Debug)]
pub struct JobRegistry {
    types: BTreeMap<String, JobType>,
}

impl JobRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job type; a later registration of the same name replaces the earlier one.
    pub fn register(&mut self, job: JobType) -> &mut Self {
        self.types.insert(job.name.clone(), job);
        self
    }

    pub fn get(&self, name: &str) -> Option<&JobType> {
        self.types.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    pub fn types(&self) -> impl Iterator<Item = &JobType> {
        self.types.values()
    }

    /// The job type `name`, or an error that lists the registered ones.
    pub fn lookup(&self, name: &str) -> Result<&JobType, String> {
        self.get(name).ok_or_else(|| {
            let known = self.names();
            let near =
                known.iter().min_by_key(|k| strsim::levenshtein(k, name)).filter(|k| strsim::levenshtein(k, name) <= 3);
            let hint = near.map(|k| format!(" (did you mean '{k}'?)")).unwrap_or_default();
            format!("unknown job type '{name}'{hint}; registered job types: {}", known.join(", "))
        })
    }
}

impl Accumulator {
    /// The most lines a [`Accumulator::Lines`] keeps; merging beyond it is an error.
    pub const LINES_MAX: usize = 100_000;

    /// Adds `other` into `self`; both must be of the same kind.
    pub fn merge(&mut self, other: &Accumulator) -> Result<(), String> {
        match (self, other) {
            (Accumulator::Count(a), Accumulator::Count(b)) => *a = a.saturating_add(*b),
            (Accumulator::Sum(a), Accumulator::Sum(b)) => {
                *a = a.checked_add(*b).ok_or("a sum accumulator overflowed i128")?;
            }
            (Accumulator::Max(a), Accumulator::Max(b)) => *a = (*a).max(*b),
            (Accumulator::Min(a), Accumulator::Min(b)) => *a = (*a).min(*b),
            (Accumulator::Checksum(a), Accumulator::Checksum(b)) => *a = a.wrapping_add(*b),
            (Accumulator::Lines(a), Accumulator::Lines(b)) => {
                if a.len() + b.len() > Self::LINES_MAX {
                    return Err(format!(
                        "a lines accumulator would hold {} lines, over the limit of {}",
                        a.len() + b.len(),
                        Self::LINES_MAX
                    ));
                }
                a.extend(b.iter().cloned());
                a.sort();
            }
            (Accumulator::Histogram(a), Accumulator::Histogram(b)) => {
                let mut merged = decode_histogram(a)?;
                merged.add(decode_histogram(b)?).map_err(|e| format!("cannot merge histograms: {e:?}"))?;
                *a = encode_histogram(&merged)?;
            }
            (a, b) => return Err(format!("cannot merge accumulators of different kinds: {a:?} and {b:?}")),
        }
        Ok(())
    }

    /// A histogram accumulator.
    pub fn histogram(h: &hdrhistogram::Histogram<u64>) -> Result<Self, String> {
        encode_histogram(h).map(Accumulator::Histogram)
    }

    /// The value as one line of text (histograms as their count, median and maximum).
    pub fn display(&self) -> String {
        match self {
            Accumulator::Count(v) => v.to_string(),
            Accumulator::Sum(v) => v.to_string(),
            Accumulator::Max(v) | Accumulator::Min(v) => v.to_string(),
            Accumulator::Checksum(v) => format!("{v:016x}"),
            Accumulator::Lines(lines) => format!("{} line(s)", lines.len()),
            Accumulator::Histogram(bytes) => match decode_histogram(bytes) {
                Ok(h) => format!("{} values, p50 {}, max {}", h.len(), h.value_at_quantile(0.5), h.max()),
                Err(e) => e,
            },
        }
    }
}

/// Merges `from` into `into` by name.
pub fn merge_accumulators(into: &mut Accumulators, from: &Accumulators) -> Result<(), String> {
    for (name, value) in from {
        match into.get_mut(name) {
            Some(existing) => existing.merge(value).map_err(|e| format!("accumulator '{name}': {e}"))?,
            None => {
                into.insert(name.clone(), value.clone());
            }
        }
    }
    Ok(())
}

/// A V2-serialized histogram, decoded.
pub fn decode_histogram(bytes: &[u8]) -> Result<hdrhistogram::Histogram<u64>, String> {
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| format!("malformed histogram: {e:?}"))
}

/// A histogram in its V2 serialization.
pub fn encode_histogram(h: &hdrhistogram::Histogram<u64>) -> Result<Vec<u8>, String> {
    use hdrhistogram::serialization::Serializer;
    let mut bytes = Vec::new();
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| format!("cannot serialize a histogram: {e:?}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulators_merge_by_kind() {
        let mut a: Accumulators = [
            ("n".to_string(), Accumulator::Count(2)),
            ("c".to_string(), Accumulator::Checksum(u64::MAX)),
            ("l".to_string(), Accumulator::Lines(vec!["b".into()])),
        ]
        .into();
        let b: Accumulators = [
            ("n".to_string(), Accumulator::Count(3)),
            ("c".to_string(), Accumulator::Checksum(2)),
            ("l".to_string(), Accumulator::Lines(vec!["a".into()])),
            ("new".to_string(), Accumulator::Max(-1)),
        ]
        .into();
        merge_accumulators(&mut a, &b).unwrap();
        assert_eq!(a["n"], Accumulator::Count(5));
        assert_eq!(a["c"], Accumulator::Checksum(1));
        assert_eq!(a["l"], Accumulator::Lines(vec!["a".into(), "b".into()]));
        assert_eq!(a["new"], Accumulator::Max(-1));
        let clash: Accumulators = [("n".to_string(), Accumulator::Sum(1))].into();
        let e = merge_accumulators(&mut a, &clash).unwrap_err();
        assert!(e.contains("accumulator 'n'") && e.contains("different kinds"), "{e}");
    }

    #[test]
    fn histograms_merge_counts() {
        let mut h1 = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        h1.record(10).unwrap();
        let mut h2 = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        h2.record(1000).unwrap();
        h2.record(1000).unwrap();
        let mut a = Accumulator::histogram(&h1).unwrap();
        a.merge(&Accumulator::histogram(&h2).unwrap()).unwrap();
        let Accumulator::Histogram(bytes) = &a else { panic!("kind kept") };
        let merged = decode_histogram(bytes).unwrap();
        assert_eq!(merged.len(), 3);
        assert!(Accumulator::Histogram(vec![1, 2, 3]).display().contains("malformed"));
    }

    #[test]
    fn local_signals_count_at_once_and_wake_waiters() {
        let signals = JobSignals::local();
        let waiter = {
            let s = signals.clone();
            std::thread::spawn(move || s.wait_for("ready", 2, std::time::Duration::from_secs(10)))
        };
        signals.add("ready", 1);
        signals.add("ready", 1);
        assert!(waiter.join().unwrap());
        assert_eq!(signals.total("ready"), 2);
        assert!(!signals.wait_for("never", 1, std::time::Duration::from_millis(10)));
    }

    #[test]
    fn remote_signals_wait_for_the_job_masters_totals() {
        let signals = JobSignals::remote();
        signals.add("ready", 1);
        assert_eq!(signals.total("ready"), 0, "a part's own additions count once the JobMaster has them");
        assert_eq!(signals.take_pending(), BTreeMap::from([("ready".to_string(), 1)]));
        assert!(signals.take_pending().is_empty());
        signals.set_totals(BTreeMap::from([("ready".to_string(), 3)]));
        signals.set_totals(BTreeMap::from([("ready".to_string(), 2)]));
        assert_eq!(signals.total("ready"), 3, "totals never go back");
        for i in 0..JobSignals::NAMES_MAX + 5 {
            signals.add(&format!("n{i}"), 1);
        }
        let long = "x".repeat(JobSignals::NAME_BYTES_MAX + 1);
        signals.add(&long, 1);
        assert!(!signals.take_pending().contains_key(&long));
    }

    #[test]
    fn unknown_job_types_list_the_known_ones() {
        let mut registry = JobRegistry::new();
        registry.register(JobType::new("wordcount", "", "", |_, _| Ok(JobParts::none())));
        registry.register(JobType::new("sum-by-key", "", "", |_, _| Ok(JobParts::none())));
        let e = registry.lookup("wordcont").unwrap_err();
        assert!(e.contains("did you mean 'wordcount'") && e.contains("sum-by-key"), "{e}");
        assert!(registry.lookup("sum-by-key").is_ok());
    }
}
