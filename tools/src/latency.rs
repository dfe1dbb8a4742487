//! `corestream bench latency`: records are offered at a fixed rate against a schedule (record i
//! at `origin + i / rate`); each record carries its scheduled time as `CLOCK_MONOTONIC`
//! nanoseconds (one clock for every process on the host), and the sink records its latency into
//! an HDR histogram. For q0 a record's latency runs from its scheduled time to its arrival at
//! the sink, so time a record spent waiting to be offered because the job was behind
//! (coordinated omission) is counted. For q5 events carry their scheduled time as event time
//! and a window result's latency runs from the window's end — the earliest moment a record
//! could close it — to the result's arrival.
//!
//! Who offers the schedule: for q0 the source subtask itself ([`ScheduleSource`]): each step it
//! emits every record due by then, in one batch, and when none is due it asks its task to wake
//! it at the next one's time ([`SourceStatus::IdleUntil`]), so no third thread competes for the
//! slots' cores and a record costs no cross-thread wake-up. q5 (and q0 with `--feeder host`,
//! for comparison) is fed by a host thread through a
//! channel source ([`feed`]). Both are called the feeder below.
//!
//! A feeder keeps to its schedule only as far as the machine lets it: it stops offering at the
//! end of the schedule (`--duration` after the clock started) plus [`OFFER_GRACE`], even with
//! records left, and the report says that it fell behind, by how much and how many records it
//! never offered. The job then drains what is in flight, so a rate far above what the machine
//! can offer ends the run about `--duration` + 1 s after the clock started.
//!
//! Warm-up (q0): the schedule's clock starts only once every sink subtask has received a
//! record. Until then the feeder offers warm-up records (scheduled time 0, never measured or
//! counted as received), one per sink subtask every millisecond, and each sink subtask
//! announces its first one with a datagram to a Unix socket in the temporary directory named
//! after TaskManager 0's process id (a path, not an abstract name: abstract names are private
//! to a network namespace, and `--child-netns` starts the other TaskManagers in another). So
//! neither deployment nor, across processes, the connection between the TaskManagers is
//! measured as latency.
//!
//! `--processes N` (q0): every TaskManager builds the same job from the same command line
//! (source at parallelism 1, in job slot 0 of TaskManager 0 → rebalance → pass-through map
//! and latency sink at parallelism p); only TaskManager 0 runs the feeder. Records that
//! reach a sink subtask in another TaskManager crossed the TCP data plane ("crossing"); those
//! of TaskManager 0's sink subtasks stayed in memory ("local"). Each other TaskManager sends
//! its sinks' histograms to TaskManager 0 as outputs (V2-serialized, hex), which reports both
//! halves and their merge. Another TaskManager counts its arrival intervals from the first
//! scheduled time it receives (record 0 or within a few records of it: it does not see the
//! feeder's origin).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use corestream::operators::monotonic_ns;
use corestream::{
    DataStream, Sink, SinkError, SourceError, SourceFunction, SourceSender, SourceStatus, StreamEnvironment,
    WatermarkStrategy,
};
use corestream_bench::nexmark::queries::{self, Q5Out};
use corestream_bench::nexmark::{Event, GeneratorConfig, NexmarkGenerator};
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Deserializer, V2Serializer};
use hdrhistogram::Histogram;

use crate::args::Common;
use crate::multi::{self, Merged, Outputs};

/// The most records one run may offer (rate × duration).
pub const MAX_RECORDS: u128 = 10_000_000_000;

/// Records waiting in the source channel before the feeder blocks (backpressure).
const CHANNEL_CAPACITY: usize = 1 << 14;

/// The most records the feeder offers in one send: records due at the same moment (the feeder
/// was late, or the rate is above what one record per send can reach) go together and wake
/// the source once.
const MAX_BATCH: u64 = 1024;

/// Distinct events the feeder offers: record `i` is event `i mod POOL_EVENTS` of the
/// generator, generated before the clock starts. Generating an event costs about 0.4 µs, too
/// much for one thread at 1 M records/s beside sending; a clone costs a fraction of that.
const POOL_EVENTS: u64 = 1 << 18;

/// How long after the end of its schedule (`--duration`) a feeder that fell behind may still
/// hand records over; then it stops, and the records it never offered are reported, so a rate
/// the machine cannot offer ends the run on time instead of stretching it. After that the job
/// drains only what is in flight (at most the source channel's records and the job's buffers).
pub const OFFER_GRACE: Duration = Duration::from_secs(1);

/// A feeder whose largest lag reached this is reported as having fallen behind even if it
/// offered every record within the grace.
const FELL_BEHIND_LAG: Duration = Duration::from_millis(100);

/// The shortest q5 run: windows slide every 2 s, and at least one must close by event time.
const Q5_MIN_DURATION: Duration = Duration::from_secs(3);

/// The scheduled time of a warm-up record: `CLOCK_MONOTONIC`'s zero, long past in any run.
const WARM_UP: u64 = 0;

/// How often the feeder offers a round of warm-up records (one per sink subtask).
const WARM_UP_EVERY: Duration = Duration::from_millis(1);

/// How long the feeder waits for every sink subtask's first warm-up record.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Who offers q0's schedule (`--feeder`); q5 is always fed by a host thread.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Feeder {
    /// The source subtask itself.
    #[default]
    Source,
    /// A host thread through a channel source, as q5 (a third busy thread beside the slots).
    Host,
}

/// Output keys of another TaskManager's sinks (see [`child_outputs`]).
const OUT_RECEIVED: &str = "latency_received";
const OUT_WARM_UP: &str = "latency_warm_up";
const OUT_TOTAL: &str = "latency_total";
const OUT_INTERVAL: &str = "latency_interval";

/// The queries the latency harness runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyQuery {
    /// Pass-through: the latency of every record, from its scheduled time to the sink.
    Q0,
    /// Hot items (sliding 10 s windows every 2 s, per-record watermarks): the latency of every
    /// result row, from its window's end on the schedule's clock to the sink.
    Q5,
}

impl LatencyQuery {
    pub fn name(self) -> &'static str {
        match self {
            Self::Q0 => "q0",
            Self::Q5 => "q5",
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
    pub fn records(&self) -> Result<u64, String> {
        if self.rate == 0 {
            return Err("--rate must be at least 1 record/s".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if self.query == LatencyQuery::Q5 && self.duration < Q5_MIN_DURATION {
            return Err(format!(
                "--duration {:?} is too short for q5: its windows close every 2 s of event time, so it needs at \
                 least {:?}",
                self.duration, Q5_MIN_DURATION
            ));
        }
        let n = self.rate as u128 * self.duration.as_nanos() / 1_000_000_000;
        if n > MAX_RECORDS {
            return Err(format!(
                "--rate {} × --duration {:?} is {n} records, more than the limit of {MAX_RECORDS}",
                self.rate, self.duration
            ));
        }
        if n == 0 {
            return Err(format!("--rate {} × --duration {:?} offers no record", self.rate, self.duration));
        }
        Ok(n as u64)
    }

    /// Record `i`'s scheduled time, in nanoseconds after `origin`.
    fn offset_ns(&self, i: u64) -> u64 {
        (i as u128 * 1_000_000_000 / self.rate as u128) as u64
    }

    /// The interval of the interval log: about 100 intervals, none shorter than a second.
    fn interval(&self) -> Duration {
        (self.duration / 100).max(Duration::from_secs(1))
    }
}

/// An auto-resizing histogram with 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("3 significant digits is valid");
    h.auto(true);
    h
}

/// Records `value`, growing the histogram as needed (`saturating_record` alone clamps to the
/// current range instead of growing it).
fn record_value(h: &mut Histogram<u64>, value: u64) {
    if h.record(value).is_err() {
        h.saturating_record(value);
    }
}

/// What some sink subtasks measured: the whole run, one histogram per interval of arrival,
/// the records received (warm-up records apart) and the warm-up records received.
#[derive(Debug, Clone)]
pub struct Measured {
    pub total: Histogram<u64>,
    pub intervals: Vec<Histogram<u64>>,
    pub received: u64,
    pub warm_up: u64,
}

impl Measured {
    fn new() -> Self {
        Self { total: new_histogram(), intervals: Vec::new(), received: 0, warm_up: 0 }
    }

    /// Adds `other`'s measurements to these.
    fn add(&mut self, other: &Measured) -> anyhow::Result<()> {
        self.received += other.received;
        self.warm_up += other.warm_up;
        self.total.add(&other.total).context("cannot merge histograms")?;
        add_interval_histograms(&mut self.intervals, other.intervals.iter().enumerate())
    }
}

fn add_interval_histograms<'a>(
    to: &mut Vec<Histogram<u64>>,
    from: impl Iterator<Item = (usize, &'a Histogram<u64>)>,
) -> anyhow::Result<()> {
    for (i, h) in from {
        while to.len() <= i {
            to.push(new_histogram());
        }
        to[i].add(h).context("cannot merge histograms")?;
    }
    Ok(())
}

/// When a sink record's latency is measured from.
enum Start {
    /// Nanoseconds on `CLOCK_MONOTONIC`.
    At(u64),
    /// A record that has no such time (a q5 window closed by the end of the input, not by
    /// time): received, not measured.
    Unmeasured,
    /// A warm-up record: neither measured nor counted as received.
    WarmUp,
}

type StartOf<T> = Arc<dyn Fn(&T) -> Start + Send + Sync>;

/// The path of the Unix datagram socket on which the feeder of the TaskManager 0 with process
/// id `pid` hears that a sink subtask received its first warm-up record (the other
/// TaskManagers inherit TaskManager 0's environment, so they find the same directory).
fn ready_path(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("corestream-latency-ready-{pid}.sock"))
}

/// The feeder's end of the sinks' announcements; removes its path when dropped.
struct ReadySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl ReadySocket {
    /// Binds [`ready_path`] of this process, replacing a file left there by an earlier process
    /// with the same id.
    fn bind() -> anyhow::Result<Self> {
        let path = ready_path(std::process::id());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove the stale socket '{}'", path.display()))
            }
            _ => {}
        }
        let socket = UnixDatagram::bind(&path)
            .with_context(|| format!("cannot bind the latency feeder's socket '{}'", path.display()))?;
        Ok(Self { socket, path })
    }
}

impl Drop for ReadySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Tells the feeder that sink subtask `subtask` received its first warm-up record.
fn announce_ready(to: &Path, subtask: u32) {
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to(subtask.to_string().as_bytes(), to));
    if let Err(e) = sent {
        tracing::warn!(subtask, "a latency sink cannot tell the feeder it is ready: {e}");
    }
}

struct LatencySink<T> {
    /// The schedule's origin; set by the feeder in TaskManager 0, and by the first measured
    /// record in another TaskManager.
    origin_ns: Arc<AtomicU64>,
    interval_ns: u64,
    start_of: StartOf<T>,
    /// Where to announce the first warm-up record, and this subtask's index; taken when sent.
    ready: Option<(PathBuf, u32)>,
    measured: Measured,
    out: Arc<Mutex<Vec<Measured>>>,
}

impl<T: corestream::Data> Sink<T> for LatencySink<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        let now = monotonic_ns();
        let mut interval: Option<usize> = None;
        let m = &mut self.measured;
        for record in batch.drain(..) {
            let start = match (self.start_of)(&record) {
                Start::At(start) => start,
                Start::Unmeasured => {
                    m.received += 1;
                    continue;
                }
                Start::WarmUp => {
                    m.warm_up += 1;
                    if let Some((to, subtask)) = self.ready.take() {
                        announce_ready(&to, subtask);
                    }
                    continue;
                }
            };
            m.received += 1;
            let idx = *interval.get_or_insert_with(|| {
                let origin = match self.origin_ns.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => start,
                    Err(origin) => origin,
                };
                let idx = (now.saturating_sub(origin) / self.interval_ns) as usize;
                while m.intervals.len() <= idx {
                    m.intervals.push(new_histogram());
                }
                idx
            });
            let latency = now.saturating_sub(start).max(1);
            record_value(&mut m.intervals[idx], latency);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let mut measured = std::mem::replace(&mut self.measured, Measured::new());
        for interval in &measured.intervals {
            measured.total.add(interval).map_err(|e| format!("cannot merge latency histograms: {e:?}"))?;
        }
        self.out.lock().unwrap_or_else(|e| e.into_inner()).push(measured);
        Ok(())
    }
}

/// What the feeder did before the schedule's clock started.
#[derive(Debug, Clone, Copy)]
pub struct WarmUp {
    /// Warm-up records offered.
    pub records: u64,
    /// From the first warm-up record to the last sink subtask's announcement.
    pub time: Duration,
}

/// The figures of one run (latencies in nanoseconds).
#[derive(Debug)]
pub struct LatencyReport {
    pub query: LatencyQuery,
    pub parallelism: u32,
    /// TaskManager processes that ran the job.
    pub processes: u32,
    pub rate: u64,
    pub duration_s: f64,
    /// Records the schedule holds (rate × duration).
    pub scheduled: u64,
    pub offered: u64,
    pub received: u64,
    pub offer_time_s: f64,
    /// How far behind its schedule the feeder was when it stopped at the end of the schedule
    /// plus [`OFFER_GRACE`] with records still not offered (zero if it offered them all).
    pub behind_at_stop: Duration,
    /// How far behind its schedule the feeder was when it handed each record over (ns): the
    /// harness's own share of the latencies, which should be small next to them.
    pub offer_lag: Histogram<u64>,
    /// The same schedule through the harness alone ([`measure_baseline`]), when asked for.
    pub baseline: Option<Histogram<u64>>,
    /// How the clock waited for the sinks (q0).
    pub warm_up: Option<WarmUp>,
    pub histogram: Histogram<u64>,
    pub intervals: Vec<Histogram<u64>>,
    pub interval: Duration,
    /// With `--processes` > 1: what the sink subtasks of the other TaskManagers (the records
    /// crossed the TCP data plane) and of TaskManager 0 (they stayed in memory) measured.
    pub split: Option<Split>,
}

/// The halves of a run across processes.
#[derive(Debug)]
pub struct Split {
    pub crossing: Measured,
    pub local: Measured,
}

const PERCENTILES: [(&str, f64); 5] = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9), ("p99_99", 99.99)];

fn us_at(h: &Histogram<u64>, percentile: f64) -> f64 {
    h.value_at_percentile(percentile) as f64 / 1e3
}

/// `p50 1.0 us, … max 3.0 us` on one line.
fn percentile_line(h: &Histogram<u64>) -> String {
    let mut parts: Vec<String> =
        PERCENTILES.iter().map(|(name, p)| format!("{} {:.1} us", name.replace('_', "."), us_at(h, *p))).collect();
    parts.push(format!("max {:.1} us", h.max() as f64 / 1e3));
    parts.join(", ")
}

/// The JSON report of `bench latency` (latencies in µs).
#[derive(Debug, serde::Serialize)]
struct LatencyJson {
    query: &'static str,
    parallelism: u32,
    processes: u32,
    rate: u64,
    duration_s: f64,
    scheduled: u64,
    offered: u64,
    not_offered: u64,
    received: u64,
    samples: u64,
    achieved_rate: f64,
    #[serde(flatten)]
    percentiles: Percentiles,
    offer_lag_p99_us: f64,
    offer_lag_max_us: f64,
    behind_at_stop_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    warm_up_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warm_up_ms: Option<f64>,
    /// `crossing_…` and `local_…` across processes.
    #[serde(flatten)]
    parts: corestream_bench::json::Prefixed<PartJson>,
    /// `baseline_…` with `--baseline`.
    #[serde(flatten)]
    baseline: corestream_bench::json::Prefixed<BaselineJson>,
}

/// The percentiles of one histogram, in µs.
#[derive(Debug, serde::Serialize)]
struct Percentiles {
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p99_9_us: f64,
    p99_99_us: f64,
    max_us: f64,
    mean_us: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: us_at(h, 50.0),
            p90_us: us_at(h, 90.0),
            p99_us: us_at(h, 99.0),
            p99_9_us: us_at(h, 99.9),
            p99_99_us: us_at(h, 99.99),
            max_us: h.max() as f64 / 1e3,
            mean_us: h.mean() / 1e3,
        }
    }
}

/// The crossing or the local half of a run across processes.
#[derive(Debug, serde::Serialize)]
struct PartJson {
    count: u64,
    samples: u64,
    #[serde(flatten)]
    percentiles: Percentiles,
}

/// The baseline's percentiles (no mean, as before).
#[derive(Debug, serde::Serialize)]
struct BaselineJson {
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p99_9_us: f64,
    p99_99_us: f64,
    max_us: f64,
}

impl BaselineJson {
    fn of(h: &Histogram<u64>) -> Self {
        let p = Percentiles::of(h);
        Self {
            p50_us: p.p50_us,
            p90_us: p.p90_us,
            p99_us: p.p99_us,
            p99_9_us: p.p99_9_us,
            p99_99_us: p.p99_99_us,
            max_us: p.max_us,
        }
    }
}

impl LatencyReport {
    /// Records offered per second of the time the feeder took to offer them all.
    pub fn achieved_rate(&self) -> f64 {
        self.offered as f64 / self.offer_time_s.max(1e-9)
    }

    fn us(&self, percentile: f64) -> f64 {
        us_at(&self.histogram, percentile)
    }

    pub fn lines(&self) -> String {
        let across = match self.processes {
            1 => String::new(),
            n => format!(" across {n} TaskManager processes"),
        };
        let mut s = format!(
            "latency {}: parallelism {}{across}, target {} records/s for {:.3} s, offered {} ({:.1} records/s \
             achieved), received {}\n  {} latency samples, each a {}\n",
            self.query.name(),
            self.parallelism,
            self.rate,
            self.duration_s,
            self.offered,
            self.achieved_rate(),
            self.received,
            self.histogram.len(),
            self.query.measures()
        );
        for (name, p) in PERCENTILES {
            s.push_str(&format!("  {:<7} {:>12.1} us\n", name.replace('_', "."), self.us(p)));
        }
        s.push_str(&format!("  {:<7} {:>12.1} us\n", "max", self.histogram.max() as f64 / 1e3));
        if let Some(split) = &self.split {
            let others = match self.processes {
                2 => "TaskManager 1".to_string(),
                n => format!("TaskManagers 1..{}", n - 1),
            };
            s.push_str(&format!(
                "  crossing (sink subtasks in {others}, over TCP): {} samples, {}\n",
                split.crossing.total.len(),
                percentile_line(&split.crossing.total)
            ));
            s.push_str(&format!(
                "  local (sink subtasks in TaskManager 0, in memory): {} samples, {}\n",
                split.local.total.len(),
                percentile_line(&split.local.total)
            ));
        }
        if let Some(w) = &self.warm_up {
            s.push_str(&format!(
                "  warm-up before the clock started: {} records until every sink subtask had one ({:.1} ms)\n",
                w.records,
                w.time.as_secs_f64() * 1e3
            ));
        }
        s.push_str(&format!(
            "  feeder behind schedule when offering: p99 {:.1} us, max {:.1} us",
            us_at(&self.offer_lag, 99.0),
            self.offer_lag.max() as f64 / 1e3
        ));
        if let Some(line) = self.fell_behind_line() {
            s.push_str("\n  ");
            s.push_str(&line);
        }
        if let Some(b) = &self.baseline {
            s.push_str("\n  baseline, the same schedule with no engine (feeder → channel → thread):");
            for (name, p) in PERCENTILES {
                s.push_str(&format!(" {} {:.1} us,", name.replace('_', "."), us_at(b, p)));
            }
            s.push_str(&format!(" max {:.1} us", b.max() as f64 / 1e3));
        }
        s
    }

    /// Records of the schedule the feeder never offered: it stopped at the end of the
    /// schedule plus [`OFFER_GRACE`].
    pub fn not_offered(&self) -> u64 {
        self.scheduled.saturating_sub(self.offered)
    }

    /// `feeder fell behind: …` when the feeder could not keep to the schedule: it left records
    /// unoffered, or handed some over [`FELL_BEHIND_LAG`] or more late.
    pub fn fell_behind_line(&self) -> Option<String> {
        let max_lag = Duration::from_nanos(self.offer_lag.max());
        if self.not_offered() > 0 {
            Some(format!(
                "feeder fell behind: offered {} of the {} scheduled records ({:.1}%, {:.0} records/s of {} asked); it \
                 stopped {:.3} s behind schedule at the end of --duration + {OFFER_GRACE:?}, and {} records were never \
                 offered",
                self.offered,
                self.scheduled,
                100.0 * self.offered as f64 / self.scheduled.max(1) as f64,
                self.achieved_rate(),
                self.rate,
                self.behind_at_stop.as_secs_f64(),
                self.not_offered()
            ))
        } else if max_lag >= FELL_BEHIND_LAG {
            Some(format!(
                "feeder fell behind: it offered every record, up to {:.3} s behind schedule",
                max_lag.as_secs_f64()
            ))
        } else {
            None
        }
    }

    /// The figures as one flat JSON object.
    pub fn json(&self) -> serde_json::Result<String> {
        let mut parts = Vec::new();
        if let Some(split) = &self.split {
            for (name, m) in [("crossing", &split.crossing), ("local", &split.local)] {
                let part =
                    PartJson { count: m.received, samples: m.total.len(), percentiles: Percentiles::of(&m.total) };
                parts.push((format!("{name}_"), part));
            }
        }
        corestream_bench::json::to_line(&LatencyJson {
            query: self.query.name(),
            parallelism: self.parallelism,
            processes: self.processes,
            rate: self.rate,
            duration_s: self.duration_s,
            scheduled: self.scheduled,
            offered: self.offered,
            not_offered: self.not_offered(),
            received: self.received,
            samples: self.histogram.len(),
            achieved_rate: self.achieved_rate(),
            percentiles: Percentiles::of(&self.histogram),
            offer_lag_p99_us: us_at(&self.offer_lag, 99.0),
            offer_lag_max_us: self.offer_lag.max() as f64 / 1e3,
            behind_at_stop_s: self.behind_at_stop.as_secs_f64(),
            warm_up_records: self.warm_up.map(|w| w.records),
            warm_up_ms: self.warm_up.map(|w| w.time.as_secs_f64() * 1e3),
            parts: corestream_bench::json::Prefixed(parts),
            baseline: corestream_bench::json::Prefixed(
                self.baseline.iter().map(|b| ("baseline_".to_string(), BaselineJson::of(b))).collect(),
            ),
        })
    }

    /// The interval log: one histogram per interval of arrival, values in nanoseconds; across
    /// processes each interval is followed by its crossing and local parts, tagged so.
    pub fn hdr_log(&self) -> anyhow::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut serializer = V2Serializer::new();
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment(&format!("corestream bench latency {} at {} records/s", self.query.name(), self.rate))
            .add_comment("values are latencies in nanoseconds");
        if self.split.is_some() {
            builder.add_comment(
                "untagged: all sink subtasks; tag crossing: sink subtasks in TaskManagers other than 0; tag local: \
                 TaskManager 0's",
            );
        }
        let mut writer =
            builder.with_base_time(std::time::SystemTime::now()).begin_log_with(&mut buf, &mut serializer)?;
        let empty = new_histogram();
        for (i, h) in self.intervals.iter().enumerate() {
            let start = self.interval * i as u32;
            writer
                .write_histogram(h, start, self.interval, None)
                .map_err(|e| anyhow!("cannot serialize a histogram: {e}"))?;
            if let Some(split) = &self.split {
                for (tag, m) in [("crossing", &split.crossing), ("local", &split.local)] {
                    let part = m.intervals.get(i).unwrap_or(&empty);
                    writer
                        .write_histogram(part, start, self.interval, Tag::new(tag))
                        .map_err(|e| anyhow!("cannot serialize a histogram: {e}"))?;
                }
            }
        }
        drop(writer);
        Ok(buf)
    }

    /// A percentile-distribution plot: latency (linear) against percentile on a log scale of
    /// 1 / (1 − q), as in HdrHistogram's plotter; across processes also the crossing and local
    /// parts.
    pub fn svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (800.0, 500.0, 80.0, 20.0, 40.0, 50.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let decades = 6.0; // up to 99.9999%
        let mut series = vec![("all", &self.histogram, "steelblue")];
        if let Some(split) = &self.split {
            series.push(("crossing", &split.crossing.total, "crimson"));
            series.push(("local", &split.local.total, "seagreen"));
        }
        let max_us = series.iter().map(|(_, hist, _)| hist.max() as f64 / 1e3).fold(1e-3, f64::max);
        let across = if self.processes > 1 { format!(", {} processes", self.processes) } else { String::new() };
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n\
             <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"24\" font-family=\"sans-serif\" font-size=\"16\" text-anchor=\"middle\">\
             {} latency at {} records/s (parallelism {}{across})</text>\n\
             <rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>\n",
            w / 2.0,
            self.query.name(),
            self.rate,
            self.parallelism
        );
        for (d, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"].iter().enumerate() {
            let x = left + pw * d as f64 / decades;
            s.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ccc\"/>\n\
                 <text x=\"{x:.1}\" y=\"{}\" font-family=\"sans-serif\" font-size=\"12\" text-anchor=\"middle\">{label}</text>\n",
                top + ph,
                top + ph + 18.0
            ));
        }
        for i in 0..=4 {
            let v = max_us * i as f64 / 4.0;
            let y = top + ph * (1.0 - i as f64 / 4.0);
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{:.1}\" font-family=\"sans-serif\" font-size=\"12\" text-anchor=\"end\">{v:.0}</text>\n",
                left - 6.0,
                y + 4.0
            ));
        }
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-family=\"sans-serif\" font-size=\"13\" text-anchor=\"middle\">percentile</text>\n\
             <text x=\"16\" y=\"{}\" font-family=\"sans-serif\" font-size=\"13\" text-anchor=\"middle\" \
             transform=\"rotate(-90 16 {})\">latency (us)</text>\n",
            left + pw / 2.0,
            h - 10.0,
            top + ph / 2.0,
            top + ph / 2.0,
        ));
        for (n, (label, hist, color)) in series.iter().enumerate() {
            let mut points = Vec::new();
            for k in 0..=600 {
                let x = k as f64 / 100.0;
                let q = 1.0 - 10f64.powf(-x);
                let v = hist.value_at_quantile(q) as f64 / 1e3;
                points.push(format!("{:.1},{:.1}", left + pw * x / decades, top + ph * (1.0 - v / max_us)));
            }
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                points.join(" ")
            ));
            if series.len() > 1 {
                s.push_str(&format!(
                    "<text x=\"{}\" y=\"{}\" font-family=\"sans-serif\" font-size=\"13\" fill=\"{color}\">{label}</text>\n",
                    left + 10.0,
                    top + 18.0 + 16.0 * n as f64
                ));
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The shared ends of one process's part of the job.
#[derive(Clone)]
struct JobParts {
    origin_ns: Arc<AtomicU64>,
    /// The event time (ms) of the last record: windows ending after it close only at the end
    /// of the input, not by time, and are not measured.
    last_event_ms: Arc<AtomicI64>,
    /// What each sink subtask of this process measured, pushed when it finished.
    out: Arc<Mutex<Vec<Measured>>>,
    /// What the feeder did, once it is done.
    fed: Arc<Mutex<Option<Fed>>>,
}

impl JobParts {
    fn new() -> Self {
        Self {
            origin_ns: Arc::new(AtomicU64::new(0)),
            last_event_ms: Arc::new(AtomicI64::new(i64::MIN)),
            out: Arc::new(Mutex::new(Vec::new())),
            fed: Arc::new(Mutex::new(None)),
        }
    }

    fn set_fed(&self, fed: Fed) {
        *self.fed.lock().unwrap_or_else(|e| e.into_inner()) = Some(fed);
    }

    fn take_fed(&self) -> anyhow::Result<Fed> {
        self.fed.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| anyhow!("the feeder reported nothing"))
    }

    /// What this process's sink subtasks measured, merged.
    fn measured(&self) -> anyhow::Result<Measured> {
        let mut all = Measured::new();
        for m in self.out.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            all.add(&m)?;
        }
        Ok(all)
    }
}

/// Adds the latency sink to `stream`.
fn add_latency_sink<T: corestream::Data>(
    stream: DataStream<T>,
    job: &JobParts,
    interval: Duration,
    start_of: StartOf<T>,
    ready_to: Option<PathBuf>,
) {
    let (out, origin_ns) = (job.out.clone(), job.origin_ns.clone());
    let interval_ns = interval.as_nanos() as u64;
    stream.add_sink("Sink: latency", move |ctx| {
        Ok(LatencySink {
            origin_ns: origin_ns.clone(),
            interval_ns,
            start_of: start_of.clone(),
            ready: ready_to.clone().map(|to| (to, ctx.subtask)),
            measured: Measured::new(),
            out: out.clone(),
        })
    });
}

/// Whether q0's schedule is offered by its source subtask ([`ScheduleSource`]) rather than a
/// host thread.
fn in_source(settings: &LatencySettings) -> bool {
    settings.query == LatencyQuery::Q0 && settings.feeder == Feeder::Source
}

/// Adds the query to `env` at parallelism `p` (the source has parallelism 1, so q0's
/// pass-through map and sink are fed round-robin when p > 1). With `schedule` (q0 offered by
/// its source subtask) the source is a [`ScheduleSource`] that takes the ready socket from it;
/// otherwise a channel source, whose sender is returned. q0's sink subtasks announce their
/// first warm-up record to `ready_to`.
fn build_job(
    env: &mut StreamEnvironment,
    settings: &LatencySettings,
    p: u32,
    job: &JobParts,
    ready_to: Option<PathBuf>,
    schedule: Option<Mutex<Option<ReadySocket>>>,
) -> Option<SourceSender<(u64, Event)>> {
    env.set_parallelism(p);
    let interval = settings.interval();
    let (sender, events) = match schedule {
        Some(ready) => {
            let (settings, job) = (settings.clone(), job.clone());
            let source = env.from_source("Source: schedule", Some(1), move |_ctx| {
                let ready = ready.lock().unwrap_or_else(|e| e.into_inner()).take();
                let ready = ready.ok_or("the schedule source runs once, in TaskManager 0")?;
                ScheduleSource::new(&settings, ready, p, &job)
            });
            (None, source)
        }
        None => {
            let (sender, events) = env.from_channel::<(u64, Event)>(CHANNEL_CAPACITY);
            (Some(sender), events)
        }
    };
    match settings.query {
        LatencyQuery::Q0 => {
            let stream = events.map(|r| r).name("q0: pass-through");
            let start_of = |r: &(u64, Event)| if r.0 == WARM_UP { Start::WarmUp } else { Start::At(r.0) };
            add_latency_sink(stream, job, interval, Arc::new(start_of), ready_to);
        }
        LatencyQuery::Q5 => {
            let events = events.map(|(_, e)| e).set_parallelism(1).name("Events").assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|e: &Event| e.date_time())
                    .with_per_record_emission(),
            );
            let last = job.last_event_ms.clone();
            let start_of = move |r: &Q5Out| {
                let end_ms = r.1;
                if end_ms <= last.load(Ordering::Relaxed) {
                    Start::At(end_ms as u64 * 1_000_000)
                } else {
                    Start::Unmeasured
                }
            };
            add_latency_sink(queries::q5_stream(events), job, interval, Arc::new(start_of), None);
        }
    }
    sender
}

/// The warm-up of a [`ScheduleSource`]: the sinks' announcements heard so far.
struct Warming {
    ready: ReadySocket,
    seen: Vec<bool>,
    missing: usize,
    records: u64,
    started: Instant,
    next_round: Instant,
}

impl Warming {
    /// Reads the announcements waiting on the socket.
    fn hear(&mut self) -> Result<(), SourceError> {
        let mut buf = [0u8; 32];
        loop {
            match self.ready.socket.recv(&mut buf) {
                Ok(n) => {
                    let subtask = std::str::from_utf8(&buf[..n]).ok().and_then(|s| s.parse::<usize>().ok());
                    if let Some(i) = subtask.filter(|&i| i < self.seen.len() && !self.seen[i]) {
                        self.seen[i] = true;
                        self.missing -= 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("cannot read the sinks' announcements: {e}").into()),
            }
        }
    }
}

/// q0's source when the schedule is offered in the source subtask: first warm-up records, one
/// per sink subtask every [`WARM_UP_EVERY`], until every sink subtask announced one; then
/// record `i` at `origin + i / rate`, every record due in one batch, idle until the next is due.
struct ScheduleSource {
    settings: LatencySettings,
    total: u64,
    pool: Vec<Event>,
    warming: Option<Warming>,
    warm_up: Option<WarmUp>,
    origin: u64,
    /// [`offer_deadline`] once the clock started.
    deadline: u64,
    next: u64,
    lag: Histogram<u64>,
    job: JobParts,
}

impl ScheduleSource {
    fn new(settings: &LatencySettings, ready: ReadySocket, sinks: u32, job: &JobParts) -> Result<Self, SourceError> {
        let total = settings.records()?;
        ready.socket.set_nonblocking(true)?;
        let generator = NexmarkGenerator::new(GeneratorConfig::default(), settings.seed);
        let pool = (0..total.min(POOL_EVENTS)).map(|n| generator.event(n)).collect();
        let now = Instant::now();
        Ok(Self {
            settings: settings.clone(),
            total,
            pool,
            warming: Some(Warming {
                ready,
                seen: vec![false; sinks as usize],
                missing: sinks as usize,
                records: 0,
                started: now,
                next_round: now,
            }),
            warm_up: None,
            origin: 0,
            deadline: u64::MAX,
            next: 0,
            lag: new_histogram(),
            job: job.clone(),
        })
    }

    /// One step of the warm-up: `Some` status while it goes on, `None` once the clock started.
    fn warm(&mut self, out: &mut Vec<(u64, Event)>) -> Result<Option<SourceStatus>, SourceError> {
        let Some(w) = &mut self.warming else { return Ok(None) };
        w.hear()?;
        if w.missing > 0 {
            if w.started.elapsed() > READY_TIMEOUT {
                let idle: Vec<String> =
                    w.seen.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i.to_string()).collect();
                return Err(format!(
                    "sink subtask(s) {} received no record within {READY_TIMEOUT:?} of the job's start ({} warm-up \
                     records offered)",
                    idle.join(", "),
                    w.records
                )
                .into());
            }
            let now = Instant::now();
            if now >= w.next_round {
                out.extend((0..w.seen.len()).map(|_| (WARM_UP, self.pool[0].clone())));
                w.records += w.seen.len() as u64;
                w.next_round = now + WARM_UP_EVERY;
            }
            return Ok(Some(SourceStatus::IdleUntil(w.next_round)));
        }
        self.warm_up = Some(WarmUp { records: w.records, time: w.started.elapsed() });
        self.warming = None;
        self.origin = monotonic_ns();
        self.deadline = offer_deadline(&self.settings, self.origin);
        self.job.origin_ns.store(self.origin, Ordering::Relaxed);
        let last = self.origin + self.settings.offset_ns(self.total - 1);
        self.job.last_event_ms.store((last / 1_000_000) as i64, Ordering::Relaxed);
        Ok(None)
    }
}

impl ScheduleSource {
    /// Ends the schedule after the records offered so far; `behind` is how far behind it was
    /// when it stopped with records left.
    fn finish(&mut self, behind: Duration) -> SourceStatus {
        let lag = std::mem::replace(&mut self.lag, new_histogram());
        let offer_time = Duration::from_nanos(monotonic_ns() - self.origin);
        let fed = Fed { offered: self.next, offer_time, lag, warm_up: self.warm_up, behind_at_stop: behind };
        self.job.set_fed(fed);
        SourceStatus::Finished
    }
}

impl SourceFunction<(u64, Event)> for ScheduleSource {
    fn next_batch(&mut self, out: &mut Vec<(u64, Event)>, max_records: usize) -> Result<SourceStatus, SourceError> {
        if let Some(status) = self.warm(out)? {
            return Ok(status);
        }
        let now = monotonic_ns();
        if now >= self.deadline && self.next < self.total {
            let behind = now.saturating_sub(self.origin + self.settings.offset_ns(self.next));
            return Ok(self.finish(Duration::from_nanos(behind)));
        }
        let end = self.total.min(self.next + max_records as u64);
        while self.next < end {
            let scheduled = self.origin + self.settings.offset_ns(self.next);
            if scheduled > now {
                break;
            }
            record_value(&mut self.lag, now - scheduled);
            let mut event = self.pool[(self.next % POOL_EVENTS) as usize].clone();
            event.set_date_time((scheduled / 1_000_000) as i64);
            out.push((scheduled, event));
            self.next += 1;
        }
        if self.next == self.total {
            return Ok(self.finish(Duration::ZERO));
        }
        let due = self.origin + self.settings.offset_ns(self.next);
        Ok(match due.checked_sub(monotonic_ns()) {
            Some(wait) if wait > 0 => SourceStatus::IdleUntil(Instant::now() + Duration::from_nanos(wait)),
            _ => SourceStatus::More,
        })
    }
}

/// What the feeder did.
struct Fed {
    offered: u64,
    offer_time: Duration,
    lag: Histogram<u64>,
    warm_up: Option<WarmUp>,
    /// How far behind schedule it was when it stopped with records not offered.
    behind_at_stop: Duration,
}

/// When a feeder whose clock started at `origin` stops offering: the end of the schedule
/// plus [`OFFER_GRACE`] (`CLOCK_MONOTONIC` ns).
fn offer_deadline(settings: &LatencySettings, origin: u64) -> u64 {
    origin.saturating_add((settings.duration + OFFER_GRACE).as_nanos() as u64)
}

/// Offers warm-up records through `sender`, one per sink subtask every [`WARM_UP_EVERY`],
/// until each of the `sinks` sink subtasks announced on `ready` that it received one.
fn warm_up(
    sender: &SourceSender<(u64, Event)>,
    ready: &UnixDatagram,
    sinks: u32,
    event: &Event,
) -> anyhow::Result<WarmUp> {
    let started = Instant::now();
    let mut seen = vec![false; sinks as usize];
    let (mut missing, mut records) = (seen.len(), 0u64);
    let mut buf = [0u8; 32];
    ready.set_read_timeout(Some(WARM_UP_EVERY)).context("cannot set the ready socket's timeout")?;
    while missing > 0 {
        if started.elapsed() > READY_TIMEOUT {
            let idle: Vec<String> = seen.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i.to_string()).collect();
            bail!(
                "sink subtask(s) {} received no record within {READY_TIMEOUT:?} of the job's start ({records} \
                 warm-up records offered)",
                idle.join(", ")
            );
        }
        for _ in 0..sinks {
            match sender.try_send((WARM_UP, event.clone())) {
                Ok(()) => records += 1,
                Err(e) if e.is_full() => break,
                Err(_) => bail!("the job stopped reading before every sink subtask received a record"),
            }
        }
        let round_end = Instant::now() + WARM_UP_EVERY;
        while missing > 0 && Instant::now() < round_end {
            match ready.recv(&mut buf) {
                Ok(n) => {
                    let subtask = std::str::from_utf8(&buf[..n]).ok().and_then(|s| s.parse::<usize>().ok());
                    if let Some(i) = subtask.filter(|&i| i < seen.len() && !seen[i]) {
                        seen[i] = true;
                        missing -= 1;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                Err(e) => return Err(e).context("cannot read the sinks' announcements"),
            }
        }
    }
    Ok(WarmUp { records, time: started.elapsed() })
}

/// Offers the schedule's `total` records through `send` (which drains the batch, or returns
/// false when nobody reads any more): record `i` at `origin + i / rate`, where `origin` is
/// taken once `before_clock` (the warm-up) returned. It waits — sleeping when the next record
/// is more than 200 µs away, yielding its core otherwise — and then hands over every record
/// whose time has come, up to [`MAX_BATCH`] at once, so a feeder that fell behind catches up
/// instead of falling further behind. Each record carries its scheduled time; events are
/// stamped with it (in ms) as their event time. Events come from a pool of the generator's
/// first [`POOL_EVENTS`], generated before the warm-up.
fn feed(
    settings: &LatencySettings,
    total: u64,
    origin_ns: &AtomicU64,
    last_event_ms: &AtomicI64,
    before_clock: impl FnOnce(&Event) -> anyhow::Result<Option<WarmUp>>,
    mut send: impl FnMut(&mut Vec<(u64, Event)>) -> bool,
) -> anyhow::Result<Fed> {
    let generator = NexmarkGenerator::new(GeneratorConfig::default(), settings.seed);
    let pool: Vec<Event> = (0..total.min(POOL_EVENTS)).map(|n| generator.event(n)).collect();
    let warm_up = before_clock(&pool[0])?;
    let origin = monotonic_ns();
    origin_ns.store(origin, Ordering::Relaxed);
    last_event_ms.store(((origin + settings.offset_ns(total - 1)) / 1_000_000) as i64, Ordering::Relaxed);
    let deadline = offer_deadline(settings, origin);
    let mut batch: Vec<(u64, Event)> = Vec::with_capacity(MAX_BATCH as usize);
    let (mut next, mut offered, mut lag) = (0u64, 0u64, new_histogram());
    let mut behind_at_stop = Duration::ZERO;
    while next < total {
        let scheduled = origin + settings.offset_ns(next);
        let mut now = monotonic_ns();
        if now >= deadline {
            behind_at_stop = Duration::from_nanos(now - scheduled);
            // Windows after the last record offered close only at the end of the input.
            let last = origin + settings.offset_ns(next.saturating_sub(1));
            last_event_ms.store((last / 1_000_000) as i64, Ordering::Relaxed);
            break;
        }
        while now < scheduled {
            let wait = scheduled - now;
            if wait > 200_000 {
                std::thread::sleep(Duration::from_nanos(wait - 100_000));
            } else {
                std::thread::yield_now();
            }
            now = monotonic_ns();
        }
        while next < total && batch.len() < MAX_BATCH as usize {
            let scheduled = origin + settings.offset_ns(next);
            if scheduled > now {
                break;
            }
            record_value(&mut lag, now - scheduled);
            let mut event = pool[(next % POOL_EVENTS) as usize].clone();
            event.set_date_time((scheduled / 1_000_000) as i64);
            batch.push((scheduled, event));
            next += 1;
        }
        let n = batch.len() as u64;
        if !send(&mut batch) {
            break;
        }
        offered += n;
    }
    let end = monotonic_ns();
    Ok(Fed { offered, offer_time: Duration::from_nanos(end - origin), lag, warm_up, behind_at_stop })
}

/// Starts the feeder thread: for q0 it first warms the job up until the `sinks` sink subtasks
/// announced themselves on `ready`, then offers the schedule into `sender` and closes it.
fn spawn_feeder(
    settings: &LatencySettings,
    total: u64,
    ready: Option<(ReadySocket, u32)>,
    sender: SourceSender<(u64, Event)>,
    job: &JobParts,
) -> io::Result<JoinHandle<anyhow::Result<Fed>>> {
    let (settings, origin, last) = (settings.clone(), job.origin_ns.clone(), job.last_event_ms.clone());
    std::thread::Builder::new().name("cs-latency-feeder".into()).spawn(move || {
        let before_clock = |event: &Event| match &ready {
            Some((ready, sinks)) => warm_up(&sender, &ready.socket, *sinks, event).map(Some),
            None => Ok(None),
        };
        let send = |batch: &mut Vec<(u64, Event)>| sender.send_all(batch.drain(..)).is_ok();
        let fed = feed(&settings, total, &origin, &last, before_clock, send);
        drop(sender);
        fed
    })
}

/// The feeder's end of the sinks' announcements, for q0 (q5's sinks see window results, not
/// the records offered, so its clock starts at once).
fn ready_socket(query: LatencyQuery) -> anyhow::Result<Option<ReadySocket>> {
    if query != LatencyQuery::Q0 {
        return Ok(None);
    }
    ReadySocket::bind().map(Some)
}

/// The harness alone, for comparison: the same feeder and schedule into a bounded channel read
/// by a plain thread that records each record's latency, with no engine in between. Its
/// percentiles are what the machine itself (thread wake-ups, scheduling, the hypervisor) adds.
pub fn measure_baseline(settings: &LatencySettings) -> anyhow::Result<Histogram<u64>> {
    let total = settings.records().map_err(|e| anyhow!(e))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Event)>(CHANNEL_CAPACITY);
    let reader = std::thread::Builder::new().name("cs-latency-baseline".into()).spawn(move || {
        let mut h = new_histogram();
        while let Ok((scheduled, event)) = rx.recv() {
            let now = monotonic_ns();
            record_value(&mut h, now.saturating_sub(scheduled).max(1));
            drop(event);
        }
        h
    })?;
    let (origin, last) = (AtomicU64::new(0), AtomicI64::new(0));
    let fed = feed(settings, total, &origin, &last, |_| Ok(None), |batch| batch.drain(..).all(|r| tx.send(r).is_ok()));
    drop(tx);
    let h = reader.join().map_err(|_| anyhow!("the baseline reader panicked"))?;
    let fed = fed?;
    if h.len() != fed.offered {
        bail!("the baseline reader received {} records, {} were offered", h.len(), fed.offered);
    }
    Ok(h)
}

/// Prints the job's warnings, once each (the engine's own log of them is filtered out).
fn print_warnings(result: &corestream::JobResult) {
    for w in &result.warnings {
        eprintln!("warning: {}", w.message);
    }
}

/// Checks what the sinks received against what the feeder offered.
fn check_received(query: LatencyQuery, all: &Measured, offered: u64) -> anyhow::Result<()> {
    match query {
        LatencyQuery::Q0 if all.received != offered => {
            bail!("the sinks received {} records, {offered} were offered", all.received)
        }
        _ if all.total.is_empty() => bail!("the sink measured no latency ({} records received)", all.received),
        _ => Ok(()),
    }
}

/// Runs one measurement in this process, fed by [`feed`] on a host thread; the settings must
/// have been checked with [`LatencySettings::records`].
pub fn measure(settings: &LatencySettings, common: &Common) -> anyhow::Result<LatencyReport> {
    let total = settings.records().map_err(|e| anyhow!(e))?;
    let cluster = common.cluster()?;
    let p = common.parallelism.unwrap_or(cluster.num_slots());
    let mut env = common.environment(&cluster);
    let job = JobParts::new();
    let ready = ready_socket(settings.query)?;
    let ready_to = ready.as_ref().map(|r| r.path.clone());
    let fed = if in_source(settings) {
        let schedule = Some(Mutex::new(ready));
        build_job(&mut env, settings, p, &job, ready_to, schedule);
        print_warnings(&env.execute_async(&format!("latency {}", settings.query.name()))?.join()?);
        job.take_fed()?
    } else {
        let sender = build_job(&mut env, settings, p, &job, ready_to, None).expect("a channel source");
        let handle = env.execute_async(&format!("latency {}", settings.query.name()))?;
        let feeder = spawn_feeder(settings, total, ready.map(|r| (r, p)), sender, &job)?;
        let joined = handle.join();
        let fed = feeder.join().map_err(|_| anyhow!("the feeder thread panicked"))?;
        print_warnings(&joined?);
        fed?
    };
    let all = job.measured()?;
    check_received(settings.query, &all, fed.offered)?;
    Ok(report(settings, p, 1, fed, all, None))
}

fn report(
    settings: &LatencySettings,
    parallelism: u32,
    processes: u32,
    fed: Fed,
    all: Measured,
    split: Option<Split>,
) -> LatencyReport {
    LatencyReport {
        query: settings.query,
        parallelism,
        processes,
        rate: settings.rate,
        duration_s: settings.duration.as_secs_f64(),
        scheduled: settings.records().unwrap_or(fed.offered),
        offered: fed.offered,
        behind_at_stop: fed.behind_at_stop,
        received: all.received,
        offer_time_s: fed.offer_time.as_secs_f64(),
        offer_lag: fed.lag,
        baseline: None,
        warm_up: fed.warm_up,
        histogram: all.total,
        intervals: all.intervals,
        interval: settings.interval(),
        split,
    }
}

fn from_hex(hex: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = multi::from_hex(hex).map_err(|e| anyhow!("a histogram from another TaskManager {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow!("a histogram from another TaskManager is unreadable: {e:?}"))
}

/// What another TaskManager's sinks measured, as outputs for TaskManager 0: one line per
/// figure, the histograms V2-serialized in hex, each non-empty interval as `index:hex`.
fn child_outputs(m: &Measured) -> anyhow::Result<Outputs> {
    let mut out = vec![
        (OUT_RECEIVED.to_string(), m.received.to_string()),
        (OUT_WARM_UP.to_string(), m.warm_up.to_string()),
        (OUT_TOTAL.to_string(), multi::histogram_to_hex(&m.total)?),
    ];
    for (i, h) in m.intervals.iter().enumerate().filter(|(_, h)| !h.is_empty()) {
        out.push((OUT_INTERVAL.to_string(), format!("{i}:{}", multi::histogram_to_hex(h)?)));
    }
    Ok(out)
}

/// What the sinks of every other TaskManager measured, from their outputs.
fn crossing_of(merged: &Merged) -> anyhow::Result<Measured> {
    let mut m = Measured::new();
    for v in merged.outputs_of(OUT_RECEIVED) {
        m.received += v.parse::<u64>().with_context(|| format!("a TaskManager reported {v} records received"))?;
    }
    for v in merged.outputs_of(OUT_WARM_UP) {
        m.warm_up += v.parse::<u64>().with_context(|| format!("a TaskManager reported {v} warm-up records"))?;
    }
    for v in merged.outputs_of(OUT_TOTAL) {
        m.total.add(&from_hex(v)?).context("cannot merge histograms")?;
    }
    for v in merged.outputs_of(OUT_INTERVAL) {
        let (i, hex) = v.split_once(':').ok_or_else(|| anyhow!("a TaskManager reported interval '{v:.40}'"))?;
        let i: usize = i.parse().with_context(|| format!("a TaskManager reported interval {i}"))?;
        add_interval_histograms(&mut m.intervals, std::iter::once((i, &from_hex(hex)?)))?;
    }
    Ok(m)
}

/// q0 across `--processes` TaskManagers ([`multi::run`]): every process builds the job, only
/// TaskManager 0 feeds it. Returns the report in TaskManager 0, `None` in the others (their
/// sinks' measurements went to TaskManager 0).
fn measure_processes(settings: &LatencySettings, common: &Common) -> anyhow::Result<Option<LatencyReport>> {
    let total = settings.records().map_err(|e| anyhow!(e))?;
    let p = multi::total_slots(common.processes, common.slots, common.parallelism)?;
    let tm0 = multi::is_task_manager_0();
    let (mut ready, ready_to) = if tm0 {
        let ready = ready_socket(settings.query)?.ok_or_else(|| anyhow!("only q0 runs across processes"))?;
        let path = ready.path.clone();
        (Some(ready), path)
    } else {
        // SAFETY: getppid has no preconditions. `multi` checked that the parent is TaskManager 0
        // (`ip netns exec` execs in the same process, so it is the parent there too).
        (None, ready_path(unsafe { libc::getppid() } as u32))
    };
    let job = JobParts::new();
    let merged = multi::run(common, &format!("latency {}", settings.query.name()), |env| {
        // The source subtask runs in TaskManager 0: the other TaskManagers neither feed nor
        // build the schedule.
        let feeder = if in_source(settings) {
            build_job(env, settings, p, &job, Some(ready_to), Some(Mutex::new(ready.take())));
            None
        } else {
            let sender = build_job(env, settings, p, &job, Some(ready_to), None).expect("a channel source");
            ready.take().map(|socket| spawn_feeder(settings, total, Some((socket, p)), sender, &job))
        };
        let job = job.clone();
        move || match feeder {
            Some(feeder) => {
                let feeder = feeder.context("cannot start the feeder thread")?;
                let fed = feeder.join().map_err(|_| anyhow!("the feeder thread panicked"))??;
                job.set_fed(fed);
                Ok(Vec::new())
            }
            None if tm0 => Ok(Vec::new()),
            None => child_outputs(&job.measured()?),
        }
    })?;
    let Some(merged) = merged else { return Ok(None) };
    let fed = job.take_fed()?;
    let local = job.measured()?;
    let crossing = crossing_of(&merged)?;
    let mut all = local.clone();
    all.add(&crossing)?;
    check_received(settings.query, &all, fed.offered)?;
    print_warnings(&merged.result);
    Ok(Some(report(settings, p, common.processes, fed, all, Some(Split { crossing, local }))))
}

/// `corestream bench latency`: refuses impossible settings (exit status 2), runs, prints the
/// figures and writes the requested files (in TaskManager 0 only, with `--processes`).
pub fn run(
    settings: &LatencySettings,
    json: Option<&Path>,
    hdr_log: Option<&Path>,
    plot: Option<&Path>,
    common: &Common,
) -> anyhow::Result<()> {
    if let Err(e) = settings.records() {
        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")).exit();
    }
    if common.processes > 1 && settings.query != LatencyQuery::Q0 {
        let e = format!(
            "--query {} runs in one process; only q0 runs across TaskManager processes (--processes {})\n",
            settings.query.name(),
            common.processes
        );
        clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, e).exit();
    }
    // The baseline runs once, in TaskManager 0, before any other TaskManager starts.
    let baseline =
        if settings.baseline && multi::is_task_manager_0() { Some(measure_baseline(settings)?) } else { None };
    let mut report = if common.processes > 1 {
        match measure_processes(settings, common)? {
            Some(report) => report,
            None => return Ok(()),
        }
    } else {
        measure(settings, common)?
    };
    report.baseline = baseline;
    println!("{}", report.lines());
    let mut files = Vec::new();
    if let Some(path) = json {
        files.push((path.to_path_buf(), report.json()?.into_bytes()));
    }
    if let Some(path) = hdr_log {
        files.push((path.to_path_buf(), report.hdr_log()?));
    }
    if let Some(path) = plot {
        files.push((path.to_path_buf(), report.svg().into_bytes()));
    }
    crate::outputs::commit_all(files)
}
