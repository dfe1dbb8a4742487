//! The latency harness of `corestream bench latency`: records are offered at a fixed rate
//! against a schedule (record i at `origin + i / rate`); each record carries its scheduled time
//! as `CLOCK_MONOTONIC` nanoseconds (one clock for every process on the host), and the sink
//! records its latency into an HDR histogram. For q0 a record's latency runs from its scheduled
//! time to its arrival at the sink, so time a record spent waiting to be offered because the
//! job was behind (coordinated omission) is counted. For q5 events carry their scheduled time
//! as event time and a window result's latency runs from the window's end — the earliest moment
//! a record could close it — to the result's arrival.
//!
//! Who offers the schedule (`schedule`): for q0 the source subtask itself (`ScheduleSource`):
//! each step it emits every record due by then, in one batch, and when none is due it asks its
//! task to wake it at the next one's time (`SourceStatus::IdleUntil`), so no third thread
//! competes for the slots' cores and a record costs no cross-thread wake-up. q5 (and q0 with
//! [`Feeder::Host`], for comparison) is fed by a host thread through a channel source. Both are
//! called the feeder below. A feeder keeps to its schedule only as far as the machine lets it:
//! it stops offering at the end of the schedule plus [`OFFER_GRACE`], even with records left,
//! and the report says that it fell behind, by how much and how many records it never offered.
//!
//! Warm-up (q0): the schedule's clock starts only once every sink subtask has received a
//! record. Until then the feeder offers warm-up records (scheduled time 0, never measured or
//! counted as received), one per sink subtask every millisecond; each sink subtask adds 1 to
//! the job signal [`SINKS_READY`] when its first one arrives, and the feeder starts the clock
//! when the job-wide total reaches the number of sink subtasks (the source reads the total at
//! each step and never blocks its slot; a host feeder waits for it). So neither deployment nor,
//! across processes, the connections between the TaskManagers is measured as latency.
//!
//! Across TaskManager processes (q0, the job type `bench-latency` on a process cluster): every
//! TaskManager builds the same job (source at parallelism 1, in job slot 0 → rebalance →
//! pass-through map and latency sink at parallelism p), and only the one that runs job slot 0
//! feeds it. Records that reach a sink subtask in another TaskManager crossed the TCP data
//! plane ("crossing"); those of the sink subtasks beside the source stayed in memory ("local").
//! Each TaskManager's part reports its sinks' measurements as accumulators named after its side
//! ([`measure`]), which the JobMaster merges; the report reads both halves back and merges
//! them. A TaskManager without the source counts its arrival intervals from the first scheduled
//! time it receives (record 0 or within a few records of it: it does not see the origin).

mod hdr_log;
mod job;
mod json;
mod measure;
mod report;
mod schedule;
mod svg;

use std::time::Duration;

use thiserror::Error;

pub use job::{build, measure, LatencyPart};
pub use measure::Measured;
pub use report::{LatencyReport, Split};
pub use schedule::{measure_baseline, WarmUp};

/// The most records one run may offer (rate × duration).
pub const MAX_RECORDS: u128 = 10_000_000_000;

/// How long after the end of its schedule (`--duration`) a feeder that fell behind may still
/// hand records over; then it stops, and the records it never offered are reported, so a rate
/// the machine cannot offer ends the run on time instead of stretching it. After that the job
/// drains only what is in flight (at most the source channel's records and the job's buffers).
pub const OFFER_GRACE: Duration = Duration::from_secs(1);

/// The job signal every sink subtask adds 1 to when it has received its first warm-up record.
pub const SINKS_READY: &str = "latency.sinks-ready";

/// The shortest q5 run: windows slide every 2 s, and at least one must close by event time.
const Q5_MIN_DURATION: Duration = Duration::from_secs(3);

/// The queries the latency harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyQuery {
    /// Pass-through: the latency of every record, from its scheduled time to the sink.
    Q0,
    /// Hot items (sliding 10 s windows every 2 s, per-record watermarks): the latency of every
    /// result row, from its window's end on the schedule's clock to the sink.
    Q5,
}

impl LatencyQuery {
    pub const ALL: [LatencyQuery; 2] = [LatencyQuery::Q0, LatencyQuery::Q5];

    pub fn name(self) -> &'static str {
        match self {
            Self::Q0 => "q0",
            Self::Q5 => "q5",
        }
    }

    /// One line for `--help`.
    pub fn about(self) -> &'static str {
        match self {
            Self::Q0 => "Pass-through: the latency of every record, from its scheduled time to the sink",
            Self::Q5 => {
                "Hot items (sliding 10 s windows every 2 s, per-record watermarks): the latency of every result row, \
                 from its window's end on the schedule's clock to the sink"
            }
        }
    }

    /// What one latency sample measures.
    pub fn measures(self) -> &'static str {
        match self {
            Self::Q0 => "record: scheduled time to sink",
            Self::Q5 => "window result: window end (scheduled clock) to sink",
        }
    }
}

impl std::str::FromStr for LatencyQuery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|q| q.name() == s).ok_or_else(|| format!("'{s}' is not a latency query (q0, q5)"))
    }
}

/// Who offers q0's schedule; q5 is always fed by a host thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Feeder {
    /// The source subtask itself.
    #[default]
    Source,
    /// A host thread through a channel source, as q5 (a third busy thread beside the slots).
    Host,
}

impl Feeder {
    pub const ALL: [Feeder; 2] = [Feeder::Source, Feeder::Host];

    pub fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Host => "host",
        }
    }

    /// One line for `--help`.
    pub fn about(self) -> &'static str {
        match self {
            Self::Source => "The source subtask itself",
            Self::Host => "A host thread through a channel source, as q5 (a third busy thread beside the slots)",
        }
    }
}

impl std::str::FromStr for Feeder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| format!("'{s}' is not a feeder (source, host)"))
    }
}

/// The settings of one run.
#[derive(Debug, Clone)]
pub struct LatencySettings {
    pub query: LatencyQuery,
    pub rate: u64,
    pub duration: Duration,
    pub seed: u64,
    /// Run the schedule through the harness alone first ([`measure_baseline`]).
    pub baseline: bool,
    pub feeder: Feeder,
}

impl LatencySettings {
    /// The number of records offered, or why the settings are impossible.
    pub fn records(&self) -> Result<u64, LatencyError> {
        let invalid = |m: String| Err(LatencyError::Settings(m));
        if self.rate == 0 {
            return invalid("--rate must be at least 1 record/s".into());
        }
        if self.duration.is_zero() {
            return invalid("--duration must be more than 0".into());
        }
        if self.query == LatencyQuery::Q5 && self.duration < Q5_MIN_DURATION {
            return invalid(format!(
                "--duration {:?} is too short for q5: its windows close every 2 s of event time, so it needs at \
                 least {:?}",
                self.duration, Q5_MIN_DURATION
            ));
        }
        let n = self.rate as u128 * self.duration.as_nanos() / 1_000_000_000;
        if n > MAX_RECORDS {
            return invalid(format!(
                "--rate {} × --duration {:?} is {n} records, more than the limit of {MAX_RECORDS}",
                self.rate, self.duration
            ));
        }
        if n == 0 {
            return invalid(format!("--rate {} × --duration {:?} offers no record", self.rate, self.duration));
        }
        Ok(n as u64)
    }

    /// Record `i`'s scheduled time, in nanoseconds after `origin`.
    fn offset_ns(&self, i: u64) -> u64 {
        (i as u128 * 1_000_000_000 / self.rate as u128) as u64
    }

    /// The interval of the interval log: about 100 intervals, none shorter than a second.
    pub fn interval(&self) -> Duration {
        (self.duration / 100).max(Duration::from_secs(1))
    }

    /// Whether q0's schedule is offered by its source subtask rather than a host thread.
    fn in_source(&self) -> bool {
        self.query == LatencyQuery::Q0 && self.feeder == Feeder::Source
    }
}

/// Why a latency run could not be measured or reported.
#[derive(Debug, Error)]
pub enum LatencyError {
    /// The settings are impossible (an invalid argument).
    #[error("{0}")]
    Settings(String),
    #[error("cannot start the {what} thread: {cause}")]
    Spawn { what: &'static str, cause: std::io::Error },
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("the feeder failed: {0}")]
    Feeder(String),
    #[error("the job failed: {0}")]
    Job(#[from] corestream::JobError),
    #[error("the sinks received {received} records, {offered} were offered")]
    Lost { received: u64, offered: u64 },
    #[error("the sink measured no latency ({received} records received)")]
    NoLatency { received: u64 },
    #[error("the baseline reader received {received} records, {offered} were offered")]
    BaselineLost { received: u64, offered: u64 },
    #[error("the feeder reported nothing: no part of the job ran the source")]
    NotFed,
    #[error("latency result '{name}': {problem}")]
    Result { name: String, problem: String },
    #[error("cannot {0}")]
    Histogram(String),
}
