//! `corestream bench latency`: records are offered at a fixed rate against a schedule (record i
//! at `origin + i / rate`) by a host thread feeding a channel source; each record carries its
//! scheduled time, and the sink records its latency (nanoseconds, one monotonic clock) into an
//! HDR histogram. For q0 a record's latency runs from its scheduled time to its arrival at the
//! sink, so time a record spent waiting to be offered because the job was behind (coordinated
//! omission) is counted. For q5 events carry their scheduled time as event time and a window
//! result's latency runs from the window's end — the earliest moment a record could close it —
//! to the result's arrival.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use corestream::{DataStream, Sink, SinkError, WatermarkStrategy};
use corestream_bench::nexmark::queries::{self, Q5Out};
use corestream_bench::nexmark::{Event, GeneratorConfig, NexmarkGenerator};
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2Serializer;
use hdrhistogram::Histogram;

use crate::args::Common;

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

/// The shortest q5 run: windows slide every 2 s, and at least one must close by event time.
const Q5_MIN_DURATION: Duration = Duration::from_secs(3);

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

/// One sink subtask's measurements: the whole run and one histogram per interval of arrival.
struct Measured {
    total: Histogram<u64>,
    intervals: Vec<Histogram<u64>>,
    received: u64,
}

impl Measured {
    fn new() -> Self {
        Self { total: new_histogram(), intervals: Vec::new(), received: 0 }
    }
}

/// When a sink record's latency is measured from, in nanoseconds on the run's clock; `None`
/// for a record that has no such time (a q5 window closed by the end of the input, not by time).
type StartOf<T> = Arc<dyn Fn(&T) -> Option<u64> + Send + Sync>;

struct LatencySink<T> {
    base: Instant,
    origin_ns: Arc<AtomicU64>,
    interval_ns: u64,
    start_of: StartOf<T>,
    measured: Measured,
    out: Arc<Mutex<Vec<Measured>>>,
}

impl<T: corestream::Data> Sink<T> for LatencySink<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        let now = self.base.elapsed().as_nanos() as u64;
        let origin = self.origin_ns.load(Ordering::Relaxed);
        let idx = (now.saturating_sub(origin) / self.interval_ns) as usize;
        let m = &mut self.measured;
        while m.intervals.len() <= idx {
            m.intervals.push(new_histogram());
        }
        m.received += batch.len() as u64;
        for record in batch.drain(..) {
            let Some(start) = (self.start_of)(&record) else { continue };
            let latency = now.saturating_sub(start).max(1);
            record_value(&mut m.total, latency);
            record_value(&mut m.intervals[idx], latency);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let measured = std::mem::replace(&mut self.measured, Measured::new());
        self.out.lock().unwrap_or_else(|e| e.into_inner()).push(measured);
        Ok(())
    }
}

/// The figures of one run (latencies in nanoseconds).
#[derive(Debug)]
pub struct LatencyReport {
    pub query: LatencyQuery,
    pub parallelism: u32,
    pub rate: u64,
    pub duration_s: f64,
    pub offered: u64,
    pub received: u64,
    pub offer_time_s: f64,
    /// How far behind its schedule the feeder was when it handed each record over (ns): the
    /// harness's own share of the latencies, which should be small next to them.
    pub offer_lag: Histogram<u64>,
    /// The same schedule through the harness alone ([`measure_baseline`]), when asked for.
    pub baseline: Option<Histogram<u64>>,
    pub histogram: Histogram<u64>,
    pub intervals: Vec<Histogram<u64>>,
    pub interval: Duration,
}

const PERCENTILES: [(&str, f64); 5] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9), ("p99_99", 99.99)];

impl LatencyReport {
    /// Records offered per second of the time the feeder took to offer them all.
    pub fn achieved_rate(&self) -> f64 {
        self.offered as f64 / self.offer_time_s.max(1e-9)
    }

    fn us(&self, percentile: f64) -> f64 {
        self.histogram.value_at_percentile(percentile) as f64 / 1e3
    }

    pub fn lines(&self) -> String {
        let mut s = format!(
            "latency {}: parallelism {}, target {} records/s for {:.3} s, offered {} ({:.1} records/s achieved), \
             received {}\n  {} latency samples, each a {}\n",
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
        s.push_str(&format!(
            "  feeder behind schedule when offering: p99 {:.1} us, max {:.1} us",
            self.offer_lag.value_at_percentile(99.0) as f64 / 1e3,
            self.offer_lag.max() as f64 / 1e3
        ));
        if let Some(b) = &self.baseline {
            s.push_str("\n  baseline, the same schedule with no engine (feeder → channel → thread):");
            for (name, p) in PERCENTILES {
                s.push_str(&format!(" {} {:.1} us,", name.replace('_', "."), b.value_at_percentile(p) as f64 / 1e3));
            }
            s.push_str(&format!(" max {:.1} us", b.max() as f64 / 1e3));
        }
        s
    }

    pub fn json(&self) -> String {
        let mut fields = vec![
            format!("\"query\": \"{}\"", self.query.name()),
            format!("\"parallelism\": {}", self.parallelism),
            format!("\"rate\": {}", self.rate),
            format!("\"duration_s\": {:.6}", self.duration_s),
            format!("\"offered\": {}", self.offered),
            format!("\"received\": {}", self.received),
            format!("\"samples\": {}", self.histogram.len()),
            format!("\"achieved_rate\": {:.1}", self.achieved_rate()),
        ];
        for (name, p) in PERCENTILES {
            fields.push(format!("\"{name}_us\": {:.3}", self.us(p)));
        }
        fields.push(format!("\"max_us\": {:.3}", self.histogram.max() as f64 / 1e3));
        fields.push(format!("\"mean_us\": {:.3}", self.histogram.mean() / 1e3));
        fields.push(format!("\"offer_lag_p99_us\": {:.3}", self.offer_lag.value_at_percentile(99.0) as f64 / 1e3));
        fields.push(format!("\"offer_lag_max_us\": {:.3}", self.offer_lag.max() as f64 / 1e3));
        if let Some(b) = &self.baseline {
            for (name, p) in PERCENTILES {
                fields.push(format!("\"baseline_{name}_us\": {:.3}", b.value_at_percentile(p) as f64 / 1e3));
            }
            fields.push(format!("\"baseline_max_us\": {:.3}", b.max() as f64 / 1e3));
        }
        format!("{{{}}}\n", fields.join(", "))
    }

    /// The interval log: one histogram per interval of arrival, values in nanoseconds.
    pub fn hdr_log(&self) -> anyhow::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut serializer = V2Serializer::new();
        let mut writer = IntervalLogWriterBuilder::new()
            .add_comment(&format!("corestream bench latency {} at {} records/s", self.query.name(), self.rate))
            .add_comment("values are latencies in nanoseconds")
            .with_base_time(std::time::SystemTime::now())
            .begin_log_with(&mut buf, &mut serializer)?;
        for (i, h) in self.intervals.iter().enumerate() {
            writer
                .write_histogram(h, self.interval * i as u32, self.interval, None)
                .map_err(|e| anyhow::anyhow!("cannot serialize a histogram: {e}"))?;
        }
        drop(writer);
        Ok(buf)
    }

    /// A percentile-distribution plot: latency (linear) against percentile on a log scale of
    /// 1 / (1 − q), as in HdrHistogram's plotter.
    pub fn svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (800.0, 500.0, 80.0, 20.0, 40.0, 50.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let decades = 6.0; // up to 99.9999%
        let max_us = (self.histogram.max() as f64 / 1e3).max(1e-3);
        let mut points = Vec::new();
        for k in 0..=600 {
            let x = k as f64 / 100.0;
            let q = 1.0 - 10f64.powf(-x);
            let v = self.histogram.value_at_quantile(q) as f64 / 1e3;
            points.push(format!("{:.1},{:.1}", left + pw * x / decades, top + ph * (1.0 - v / max_us)));
        }
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n\
             <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"24\" font-family=\"sans-serif\" font-size=\"16\" text-anchor=\"middle\">\
             {} latency at {} records/s (parallelism {})</text>\n\
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
             transform=\"rotate(-90 16 {})\">latency (us)</text>\n\
             <polyline fill=\"none\" stroke=\"steelblue\" stroke-width=\"2\" points=\"{}\"/>\n</svg>\n",
            left + pw / 2.0,
            h - 10.0,
            top + ph / 2.0,
            top + ph / 2.0,
            points.join(" ")
        ));
        s
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write '{}'", path.display()))
}

/// Adds the latency sink to `stream`.
fn add_latency_sink<T: corestream::Data>(
    stream: DataStream<T>,
    base: Instant,
    origin_ns: &Arc<AtomicU64>,
    interval: Duration,
    start_of: StartOf<T>,
    out: &Arc<Mutex<Vec<Measured>>>,
) {
    let (out, origin_ns) = (out.clone(), origin_ns.clone());
    let interval_ns = interval.as_nanos() as u64;
    stream.add_sink("Sink: latency", move |_ctx| {
        Ok(LatencySink {
            base,
            origin_ns: origin_ns.clone(),
            interval_ns,
            start_of: start_of.clone(),
            measured: Measured::new(),
            out: out.clone(),
        })
    });
}

/// What the feeder did.
struct Fed {
    offered: u64,
    offer_time: Duration,
    lag: Histogram<u64>,
}

/// Offers the schedule's `total` records through `send` (which drains the batch, or returns
/// false when nobody reads any more): record `i` at `origin + i / rate`. It waits — sleeping
/// when the next record is more than 200 µs away, yielding its core otherwise — and then hands
/// over every record whose time has come, up to [`MAX_BATCH`] at once, so a feeder that fell
/// behind catches up instead of falling further behind. Each record carries its scheduled
/// time; events are stamped with it (in ms) as their event time. Events come from a pool of
/// the generator's first [`POOL_EVENTS`], generated before the schedule starts.
fn feed(
    settings: &LatencySettings,
    total: u64,
    base: Instant,
    origin_ns: &AtomicU64,
    last_event_ms: &AtomicI64,
    mut send: impl FnMut(&mut Vec<(u64, Event)>) -> bool,
) -> Fed {
    let generator = NexmarkGenerator::new(GeneratorConfig::default(), settings.seed);
    let pool: Vec<Event> = (0..total.min(POOL_EVENTS)).map(|n| generator.event(n)).collect();
    let origin = base.elapsed().as_nanos() as u64;
    origin_ns.store(origin, Ordering::Relaxed);
    last_event_ms.store(((origin + settings.offset_ns(total - 1)) / 1_000_000) as i64, Ordering::Relaxed);
    let mut batch: Vec<(u64, Event)> = Vec::with_capacity(MAX_BATCH as usize);
    let (mut next, mut offered, mut lag) = (0u64, 0u64, new_histogram());
    while next < total {
        let scheduled = origin + settings.offset_ns(next);
        let mut now = base.elapsed().as_nanos() as u64;
        while now < scheduled {
            let wait = scheduled - now;
            if wait > 200_000 {
                std::thread::sleep(Duration::from_nanos(wait - 100_000));
            } else {
                std::thread::yield_now();
            }
            now = base.elapsed().as_nanos() as u64;
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
    let end = base.elapsed().as_nanos() as u64;
    Fed { offered, offer_time: Duration::from_nanos(end - origin), lag }
}

/// The harness alone, for comparison: the same feeder and schedule into a bounded channel read
/// by a plain thread that records each record's latency, with no engine in between. Its
/// percentiles are what the machine itself (thread wake-ups, scheduling, the hypervisor) adds.
pub fn measure_baseline(settings: &LatencySettings) -> anyhow::Result<Histogram<u64>> {
    let total = settings.records().map_err(|e| anyhow::anyhow!(e))?;
    let base = Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Event)>(CHANNEL_CAPACITY);
    let reader = std::thread::Builder::new().name("cs-latency-baseline".into()).spawn(move || {
        let mut h = new_histogram();
        while let Ok((scheduled, event)) = rx.recv() {
            let now = base.elapsed().as_nanos() as u64;
            record_value(&mut h, now.saturating_sub(scheduled).max(1));
            drop(event);
        }
        h
    })?;
    let (origin, last) = (AtomicU64::new(0), AtomicI64::new(0));
    let fed = feed(settings, total, base, &origin, &last, |batch| batch.drain(..).all(|r| tx.send(r).is_ok()));
    drop(tx);
    let h = reader.join().map_err(|_| anyhow::anyhow!("the baseline reader panicked"))?;
    if h.len() != fed.offered {
        anyhow::bail!("the baseline reader received {} records, {} were offered", h.len(), fed.offered);
    }
    Ok(h)
}

/// Runs one measurement, fed by [`feed`] on a host thread; the settings must have been checked
/// with [`LatencySettings::records`].
pub fn measure(settings: &LatencySettings, common: &Common) -> anyhow::Result<LatencyReport> {
    let total = settings.records().map_err(|e| anyhow::anyhow!(e))?;
    let cluster = common.cluster()?;
    let p = common.parallelism.unwrap_or(cluster.num_slots());
    let mut env = common.environment(&cluster);
    env.set_parallelism(p);
    // About 100 intervals in the log, none shorter than a second.
    let interval = (settings.duration / 100).max(Duration::from_secs(1));
    let base = Instant::now();
    let origin_ns = Arc::new(AtomicU64::new(0));
    // The event time (ms) of the last record: windows ending after it close only at the end of
    // the input, not by time, and are not measured.
    let last_event_ms = Arc::new(AtomicI64::new(i64::MIN));
    let out: Arc<Mutex<Vec<Measured>>> = Arc::new(Mutex::new(Vec::new()));
    let (sender, events) = env.from_channel::<(u64, Event)>(CHANNEL_CAPACITY);
    match settings.query {
        LatencyQuery::Q0 => {
            let stream = events.map(|r| r).name("q0: pass-through");
            add_latency_sink(stream, base, &origin_ns, interval, Arc::new(|r: &(u64, Event)| Some(r.0)), &out);
        }
        LatencyQuery::Q5 => {
            let events = events
                .map(|(_, e)| e)
                .set_parallelism(1)
                .name("Events")
                .assign_timestamps_and_watermarks(
                    WatermarkStrategy::for_monotonous_timestamps()
                        .with_timestamp_assigner(|e: &Event| e.date_time())
                        .with_per_record_emission(),
                );
            let last = last_event_ms.clone();
            let start_of = move |r: &Q5Out| {
                let end_ms = r.1;
                (end_ms <= last.load(Ordering::Relaxed)).then(|| end_ms as u64 * 1_000_000)
            };
            add_latency_sink(queries::q5_stream(events), base, &origin_ns, interval, Arc::new(start_of), &out);
        }
    }
    let handle = env.execute_async(&format!("latency {}", settings.query.name()))?;

    let (origin_for_feeder, settings_for_feeder) = (origin_ns.clone(), settings.clone());
    let feeder = std::thread::Builder::new().name("cs-latency-feeder".into()).spawn(move || {
        let fed = feed(&settings_for_feeder, total, base, &origin_for_feeder, &last_event_ms, |batch| {
            sender.send_all(batch.drain(..)).is_ok()
        });
        drop(sender);
        fed
    })?;
    let joined = handle.join();
    let Fed { offered, offer_time, lag: offer_lag } = feeder.join().map_err(|_| anyhow::anyhow!("the feeder thread panicked"))?;
    joined?;

    let mut histogram = new_histogram();
    let mut intervals: Vec<Histogram<u64>> = Vec::new();
    let mut received = 0;
    for m in out.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        received += m.received;
        histogram.add(&m.total).context("cannot merge histograms")?;
        for (i, h) in m.intervals.iter().enumerate() {
            if intervals.len() <= i {
                intervals.push(new_histogram());
            }
            intervals[i].add(h).context("cannot merge histograms")?;
        }
    }
    match settings.query {
        LatencyQuery::Q0 if received != offered => {
            anyhow::bail!("the sink received {received} records, {offered} were offered")
        }
        _ if histogram.is_empty() => anyhow::bail!("the sink measured no latency ({received} records received)"),
        _ => {}
    }
    Ok(LatencyReport {
        query: settings.query,
        parallelism: p,
        rate: settings.rate,
        duration_s: settings.duration.as_secs_f64(),
        offered,
        received,
        offer_time_s: offer_time.as_secs_f64(),
        offer_lag,
        baseline: None,
        histogram,
        intervals,
        interval,
    })
}

/// `corestream bench latency`: refuses impossible settings (exit status 2), runs, prints the
/// figures and writes the requested files.
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
    let baseline = if settings.baseline { Some(measure_baseline(settings)?) } else { None };
    let mut report = measure(settings, common)?;
    report.baseline = baseline;
    println!("{}", report.lines());
    if let Some(path) = json {
        write_file(path, report.json().as_bytes())?;
    }
    if let Some(path) = hdr_log {
        write_file(path, &report.hdr_log()?)?;
    }
    if let Some(path) = plot {
        write_file(path, report.svg().as_bytes())?;
    }
    Ok(())
}
