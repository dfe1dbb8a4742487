//! `corestream bench passthrough|keyed-sum|window|nexmark`: throughput of the benchmark jobs,
//! in events/s over the job's wall time; `nexmark` also reports events/s per core from the CPU
//! time the operating system charged to this process over the job. `transport` measures raw
//! TCP transports without the engine (`corestream_bench::transport`).

use clap::Subcommand;
use corestream_bench::checksum::{checksum_sink, OutputChecksum};
use corestream_bench::latency::{Feeder, LatencyQuery, LatencySettings};
use corestream_bench::nexmark::{queries as nq, GeneratorConfig};
use corestream_bench::throughput::{
    peak_rss_bytes, report, start_keyed_sum, start_passthrough, start_window, window_expected_total, BenchReport,
    SequenceSplit,
};
use corestream_bench::window_agg::{event_time_assigner, parse_window_spec};

use crate::args::{
    parse_bounded, parse_count, parse_duration, parse_keys, parse_positive_count, parse_positive_duration, Common,
};
use crate::limits::ROUNDS_MAX;
use crate::progress::join_with_progress;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// sequence 0..N → map (v mod 1000) × 908 / 1000 → filter ≥ 0 → count → discard.
    Passthrough {
        #[arg(long, value_parser = parse_positive_count)]
        events: u64,
        #[command(flatten)]
        common: Common,
    },
    /// sequence 0..N keyed by (v × 7919) mod K → running sum per key (through the exchange).
    KeyedSum {
        #[arg(long, value_parser = parse_positive_count)]
        events: u64,
        #[arg(long, value_parser = parse_keys)]
        keys: u64,
        #[command(flatten)]
        common: Common,
    },
    /// sequence 0..N, key (v × 7919) mod K, event time v / 10 ms (monotonic watermarks),
    /// counted per key and event-time window; the sink sums the counts as a check.
    Window {
        #[arg(long, value_parser = parse_positive_count)]
        events: u64,
        #[arg(long, value_parser = parse_keys)]
        keys: u64,
        /// tumbling:10s, sliding:10s/2s or session:5s (optionally @OFFSET for tumbling/sliding);
        /// every length is a duration with its unit.
        #[arg(long, value_parser = parse_window_assigner)]
        window: WindowArg,
        /// Split the sequence into contiguous ranges per source subtask instead of
        /// interleaving it (at parallelism > 1 later ranges then wait in state for the
        /// watermark of earlier ones).
        #[arg(long)]
        contiguous: bool,
        #[command(flatten)]
        common: Common,
    },
    /// What checkpoints cost, side by side in one run: throughput with and without them
    /// (overhead), their duration aligned and unaligned behind a slow sink (backpressure), their
    /// size and duration against the number of keys (state-size).
    Checkpoints(crate::checkpoint_bench::CheckpointBenchArgs),
    /// A Nexmark query on the first N events of the generator (default settings), into a
    /// discarding sink: events/s, events/s per core (CPU time from the OS), wall time, peak
    /// memory and the query's output record count.
    Nexmark {
        #[arg(long, value_enum)]
        query: NexmarkQuery,
        #[arg(long, value_parser = parse_positive_count)]
        events: u64,
        /// Seed of the event generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also write the figures as a JSON object to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// End in a sink that counts the output and checksums it (order-independent), and
        /// print both, instead of discarding it.
        #[arg(long)]
        checksum: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Latency of a Nexmark query with records offered at a fixed rate against a schedule,
    /// measured from each record's scheduled time to its arrival at the sink (coordinated
    /// omission accounted for): p50 … p99.99, max and the achieved rate.
    ///
    /// For q0 the schedule's clock starts once every sink subtask has received a warm-up
    /// record. With `--processes N` (q0 only) the job runs on N TaskManager processes: a
    /// parallelism-1 source sends round-robin to the sink subtasks of every TaskManager, and the
    /// percentiles are also reported apart for records that crossed to another TaskManager over
    /// TCP and for those that stayed in the source's TaskManager.
    Latency {
        #[arg(long, value_parser = crate::latency::query_parser())]
        query: LatencyQuery,
        /// Records offered per second, e.g. 100k.
        #[arg(long, value_parser = parse_rate)]
        rate: u64,
        /// How long records are offered, e.g. 10s. A feeder that falls behind the rate stops 1 s
        /// after this with the records it has not offered, and the report says so.
        #[arg(long, value_parser = parse_positive_duration)]
        duration: std::time::Duration,
        /// Seed of the event generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also write the figures as a JSON object to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Write an HdrHistogram interval log (V2, latencies in ns) to this file.
        #[arg(long)]
        hdr_log: Option<std::path::PathBuf>,
        /// Write a percentile-distribution plot (SVG) to this file.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        /// First offer the same schedule to a plain thread through a channel, with no engine,
        /// and report its percentiles beside the job's: what the machine itself adds.
        #[arg(long)]
        baseline: bool,
        /// Who offers q0's records: its source subtask (default) or a host thread through a
        /// channel source, as for q5.
        #[arg(long, value_parser = crate::latency::feeder_parser(), default_value = "source")]
        feeder: Feeder,
        #[command(flatten)]
        common: Common,
    },
    /// Raw TCP over 127.0.0.1 in 32 KB pool buffers, no engine: plain send/recv against
    /// io_uring SEND/RECV, SEND_ZC (with and without registered buffers) and multishot receive
    /// into a provided buffer ring; GB/s per variant over interleaved rounds, every frame checked.
    Transport {
        /// Bytes moved per run (64M, 2G: binary units), rounded up to whole 32 KB buffers.
        #[arg(long, default_value = "2G", value_parser = corestream_bench::transport::parse_bytes)]
        bytes: u64,
        /// Runs of each variant, interleaved; the figure is their median (at most 100).
        #[arg(long, default_value_t = 3, value_parser = parse_rounds)]
        rounds: u32,
        /// Also write the figures as a JSON object to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// A keyed exchange across TaskManager processes (`--processes 2`): generated
    /// (key, count, payload) records → key_by → count per key → discard. Reports events/s and
    /// the GB/s that crossed the connection, against a raw loopback TCP pair moving 32 KB pool
    /// buffers measured first in the same run.
    Network {
        #[arg(long, value_parser = parse_positive_count)]
        events: u64,
        #[arg(long, default_value = "100k", value_parser = parse_keys)]
        keys: u64,
        /// Approximate size of a record's archive, in bytes (at least 25).
        #[arg(long, default_value_t = 256, value_parser = parse_record_bytes)]
        record_bytes: usize,
        /// Bytes the raw pair moves for the baseline (binary units: 512M, 2G).
        #[arg(long, default_value = "1G", value_parser = corestream_bench::transport::parse_bytes)]
        raw_bytes: u64,
        /// Also write the figures as a JSON object to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: Common,
    },
}

/// A record size of `bench network`: 25 to 32 000 bytes (a record fits a 32 KB buffer).
pub fn parse_record_bytes(s: &str) -> Result<usize, String> {
    let n = parse_count(s)?;
    if !(25..=32_000).contains(&n) {
        return Err(format!("--record-bytes {s} must be between 25 and 32000"));
    }
    Ok(n as usize)
}

/// `bench transport --rounds`: 1 to [`ROUNDS_MAX`].
fn parse_rounds(s: &str) -> Result<u32, String> {
    parse_bounded(s, "rounds", ROUNDS_MAX.into()).map(|n| n as u32)
}

/// A rate in records/s: a count of at least 1 (`100k`, `1M`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    match parse_count(s)? {
        0 => Err(format!("rate '{s}' must be at least 1 record/s")),
        n => Ok(n),
    }
}

/// The Nexmark queries the throughput command runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexmarkQuery {
    Q0,
    Q1,
    Q2,
    Q3,
    Q4,
    Q5,
    Q7,
    Q8,
    Q11,
    Q12,
}

impl NexmarkQuery {
    pub fn name(self) -> &'static str {
        match self {
            Self::Q0 => "q0",
            Self::Q1 => "q1",
            Self::Q2 => "q2",
            Self::Q3 => "q3",
            Self::Q4 => "q4",
            Self::Q5 => "q5",
            Self::Q7 => "q7",
            Self::Q8 => "q8",
            Self::Q11 => "q11",
            Self::Q12 => "q12",
        }
    }
}

/// Starts `query` on the first `events` events of the default generator with `seed`, ending
/// in a discarding sink (which still counts its records in the job result).
fn start_nexmark(
    env: corestream::StreamEnvironment,
    query: NexmarkQuery,
    events: u64,
    seed: u64,
    checksum: bool,
) -> Result<(corestream::JobHandle, Option<OutputChecksum>), corestream::JobError> {
    let totals = declare_nexmark(&env, query, events, seed, checksum);
    Ok((env.execute_async(&format!("nexmark {}", query.name()))?, totals))
}

/// Declares `query` on `env`, ending in a discarding sink, or in a checksum sink when
/// `checksum` (whose totals are returned).
pub fn declare_nexmark(
    env: &corestream::StreamEnvironment,
    query: NexmarkQuery,
    events: u64,
    seed: u64,
    checksum: bool,
) -> Option<OutputChecksum> {
    fn end<T: corestream::Data + std::fmt::Debug>(
        s: corestream::DataStream<T>,
        checksum: bool,
    ) -> Option<OutputChecksum> {
        if checksum {
            Some(checksum_sink(s).1)
        } else {
            s.discard();
            None
        }
    }
    let src = nq::source(env, &GeneratorConfig::default(), events, seed);
    match query {
        NexmarkQuery::Q0 => end(nq::q0_stream(src), checksum),
        NexmarkQuery::Q1 => end(nq::q1_stream(src), checksum),
        NexmarkQuery::Q2 => end(nq::q2_stream(src), checksum),
        NexmarkQuery::Q3 => end(nq::q3_stream(src), checksum),
        NexmarkQuery::Q4 => end(nq::q4_stream(src), checksum),
        NexmarkQuery::Q5 => end(nq::q5_stream(src), checksum),
        NexmarkQuery::Q7 => end(nq::q7_stream(src), checksum),
        NexmarkQuery::Q8 => end(nq::q8_stream(src), checksum),
        NexmarkQuery::Q11 => end(nq::q11_stream(src), checksum),
        NexmarkQuery::Q12 => end(nq::q12_stream(src), checksum),
    }
}

/// User plus system CPU time charged to this process so far (all its threads), from
/// `getrusage(RUSAGE_SELF)`.
pub(crate) fn process_cpu_time() -> std::io::Result<std::time::Duration> {
    // SAFETY: `rusage` is plain data for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` that outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// The figures of one `bench nexmark` run.
#[derive(Debug, Clone)]
pub struct NexmarkFigures {
    pub query: &'static str,
    pub parallelism: u32,
    pub events: u64,
    pub seed: u64,
    pub output_records: u64,
    pub wall_time_s: f64,
    pub cpu_time_s: f64,
    pub peak_rss_bytes: Option<u64>,
}

impl NexmarkFigures {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.wall_time_s.max(1e-9)
    }

    /// Events per second of CPU time: the throughput one fully busy core would reach.
    pub fn events_per_sec_per_core(&self) -> f64 {
        self.events as f64 / self.cpu_time_s.max(1e-9)
    }

    pub fn line(&self) -> String {
        let peak = self.peak_rss_bytes.map_or("unknown".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6));
        format!(
            "nexmark {}: parallelism {}, {} events, {} output records, wall {:.3} s, {:.3} M events/s, \
             cpu {:.3} s, {:.3} M events/s per core, peak memory (RSS) {peak}",
            self.query,
            self.parallelism,
            self.events,
            self.output_records,
            self.wall_time_s,
            self.events_per_sec() / 1e6,
            self.cpu_time_s,
            self.events_per_sec_per_core() / 1e6,
        )
    }

    /// The figures as one JSON object.
    pub fn json(&self) -> serde_json::Result<String> {
        corestream_bench::json::to_line(&NexmarkJson {
            query: self.query,
            parallelism: self.parallelism,
            events: self.events,
            seed: self.seed,
            output_records: self.output_records,
            wall_time_s: self.wall_time_s,
            cpu_time_s: self.cpu_time_s,
            events_per_sec: self.events_per_sec(),
            events_per_sec_per_core: self.events_per_sec_per_core(),
            peak_rss_bytes: self.peak_rss_bytes,
        })
    }
}

/// The JSON report of `bench nexmark`.
#[derive(Debug, serde::Serialize)]
struct NexmarkJson {
    query: &'static str,
    parallelism: u32,
    events: u64,
    seed: u64,
    output_records: u64,
    wall_time_s: f64,
    cpu_time_s: f64,
    events_per_sec: f64,
    events_per_sec_per_core: f64,
    /// Null when the operating system does not report it.
    peak_rss_bytes: Option<u64>,
}

/// The JSON report of `bench network`.
#[derive(Debug, serde::Serialize)]
struct NetworkJson {
    events: u64,
    keys: u64,
    record_bytes: usize,
    parallelism: u32,
    processes: u32,
    wall_s: f64,
    events_per_s: f64,
    raw_gbps: f64,
    session_gbps: f64,
    session_ratio: f64,
    session_credit_stalls: u64,
    crossing_bytes: u64,
    exchange_gbps: f64,
    busier_direction_gbps: f64,
    ratio: f64,
}

fn run_nexmark(
    query: NexmarkQuery,
    events: u64,
    seed: u64,
    json: Option<&std::path::Path>,
    checksum: bool,
    common: &Common,
) -> anyhow::Result<()> {
    let cluster = common.cluster()?;
    let p = common.parallelism.unwrap_or(cluster.num_slots());
    let mut env = common.environment(&cluster);
    env.set_parallelism(p);
    let label = format!("nexmark {}", query.name());
    let cpu_before = process_cpu_time()?;
    let (handle, totals) = start_nexmark(env, query, events, seed, checksum)?;
    let result = join_with_progress(handle, &label, Some(events))?;
    let cpu_time = process_cpu_time()?.saturating_sub(cpu_before);
    let produced: u64 = result.operators.iter().filter(|o| o.name.starts_with("Source")).map(|o| o.records_out).sum();
    let r = report(&label, p, events, result);
    print_warnings(&r.result);
    let figures = NexmarkFigures {
        query: query.name(),
        parallelism: p,
        events,
        seed,
        output_records: r.count,
        wall_time_s: r.wall_time.as_secs_f64(),
        cpu_time_s: cpu_time.as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
    };
    println!("{}", figures.line());
    if let Some(t) = totals {
        println!("output: {} records, checksum {:016x}", t.count(), t.checksum());
    }
    if produced != events {
        anyhow::bail!("the source produced {produced} events, expected {events}");
    }
    if let Some(path) = json {
        crate::outputs::commit_all(vec![(path.to_path_buf(), figures.json()?.into_bytes())])?;
    }
    Ok(())
}

/// A window of `bench window`: the assigner, and the spec as the user wrote it, which is how
/// the reports name it.
#[derive(Debug, Clone)]
pub struct WindowArg {
    pub spec: String,
    pub assigner: corestream::WindowAssigner,
}

/// An event-time window assigner from a window spec. Every length takes the duration syntax
/// of the other options ([`parse_duration`]: a number needs its unit).
pub fn parse_window_assigner(s: &str) -> Result<WindowArg, String> {
    let spec = s.trim();
    if let Some((_, lengths)) = spec.split_once(':') {
        for length in lengths.split(['/', '@']) {
            parse_duration(length).map_err(|e| format!("window spec '{spec}': {e}"))?;
        }
    }
    let assigner = event_time_assigner(parse_window_spec(spec).map_err(|e| e.to_string())?);
    assigner.validate().map_err(|e| format!("window spec '{spec}': {e}"))?;
    Ok(WindowArg { spec: spec.to_string(), assigner })
}

/// Prints the job's warnings, once each (the engine's own log of them is filtered out).
fn print_warnings(result: &corestream::JobResult) {
    for w in &result.warnings {
        eprintln!("warning: {} (operator {}, subtask {})", w.message, w.operator, w.subtask);
    }
}

pub fn print_report(r: &BenchReport) {
    print_warnings(&r.result);
    let rate = r.events_per_sec();
    println!(
        "{}: parallelism {}, {} events, count {}, wall {:.3} s, {:.2} M events/s ({:.2} M events/s per slot)",
        r.name,
        r.parallelism,
        r.events,
        r.count,
        r.wall_time.as_secs_f64(),
        rate / 1e6,
        rate / 1e6 / r.parallelism as f64
    );
    let buffers: u64 = r.result.tasks.iter().map(|t| t.buffers_out).sum();
    if buffers > 0 {
        let bytes: u64 = r.result.tasks.iter().map(|t| t.bytes_out).sum();
        let waits: u64 = r.result.tasks.iter().map(|t| t.backpressure_waits).sum();
        println!(
            "  exchange: {buffers} buffers, {:.1} MB ({:.2} GB/s), {:.1} KB per buffer, backpressure waits {waits}",
            bytes as f64 / 1e6,
            bytes as f64 / 1e9 / r.wall_time.as_secs_f64(),
            bytes as f64 / buffers as f64 / 1e3
        );
    }
}

fn run_transport(bytes: u64, rounds: u32, json: Option<&std::path::Path>) -> anyhow::Result<()> {
    use corestream_bench::transport::{run, TransportSettings};
    let report = run(&TransportSettings { bytes, rounds }, |round, variant, result| match result {
        Ok(gbps) => eprintln!("round {round}/{rounds} {:<36} {gbps:.2} GB/s", variant.label()),
        Err(e) => eprintln!("round {round}/{rounds} {:<36} {e}", variant.label()),
    })?;
    print!("{}", report.table());
    if let Some(path) = json {
        crate::outputs::commit_all(vec![(path.to_path_buf(), report.json()?.into_bytes())])?;
    }
    Ok(())
}

/// `bench network`: the raw baseline in TaskManager 0 before any other process starts, then the
/// exchange across the processes.
fn run_network(
    events: u64,
    keys: u64,
    record_bytes: usize,
    raw_bytes: u64,
    json: Option<&std::path::Path>,
    common: &Common,
) -> anyhow::Result<()> {
    let baselines = if common.processes > 1 {
        eprintln!("raw loopback pair: moving {} MiB ...", raw_bytes >> 20);
        let raw = corestream_bench::transport::plain_gbps(raw_bytes)?;
        eprintln!("session pair: moving {} MiB ...", raw_bytes >> 20);
        let session = corestream_bench::session::session_gbps(raw_bytes, record_bytes, common.credit())?;
        Some((raw, session))
    } else {
        None
    };
    let (wall, counted, out, inn, p, network_lines) = if common.processes > 1 {
        let args = vec![
            "--events".to_string(),
            events.to_string(),
            "--keys".to_string(),
            keys.to_string(),
            "--record-bytes".to_string(),
            record_bytes.to_string(),
        ];
        let outcome = crate::cluster_run::run(common, "bench-network", args)?;
        let wall = outcome.parts.iter().map(|p| p.wall_time_ns).max().unwrap_or(0) as f64 / 1e9;
        let counted = outcome.operators.iter().find(|o| o.name.starts_with("Count")).map_or(0, |o| o.records_in);
        let first = outcome.parts.first();
        let out: u64 = first.iter().flat_map(|p| &p.connections).map(|c| c.bytes_out).sum();
        let inn: u64 = first.iter().flat_map(|p| &p.connections).map(|c| c.bytes_in).sum();
        let p = outcome.operators.iter().map(|o| o.parallelism).max().unwrap_or(1);
        let mut lines: Vec<String> = outcome.network.iter().map(|l| format!("network: {l}")).collect();
        let peaks: Vec<String> =
            outcome.parts.iter().enumerate().map(|(i, p)| format!("TaskManager {i} {}", p.pool_peak_in_use)).collect();
        lines.push(format!("network: pool peak in use (buffers): {}", peaks.join(", ")));
        (wall, counted, out, inn, p, lines)
    } else {
        let cluster = common.cluster()?;
        let mut env = common.environment(&cluster);
        corestream_bench::network::exchange_job(&mut env, events, keys, record_bytes);
        let result = join_with_progress(env.execute_async("network")?, "network", Some(events))?;
        let p = result.operators.iter().map(|o| o.parallelism).max().unwrap_or(1);
        (result.wall_time.as_secs_f64(), result.records_in("Count"), 0, 0, p, Vec::new())
    };
    if counted != events {
        anyhow::bail!("the counters saw {counted} records, {events} were generated");
    }
    let crossing = out + inn;
    let exchange_gbps = crossing as f64 / wall / 1e9;
    let per_direction_gbps = out.max(inn) as f64 / wall / 1e9;
    println!(
        "network: {events} records of ~{record_bytes} B over {keys} keys, -p {p} across {} processes",
        common.processes
    );
    let Some((raw_gbps, session)) = baselines else {
        println!(
            "  one process: {:.2} M events/s, wall {wall:.3} s; the exchange stays in memory (the baseline for \
             --processes 2)",
            events as f64 / wall / 1e6
        );
        return Ok(());
    };
    println!("  raw loopback pair (one direction, 32 KB buffers): {raw_gbps:.2} GB/s");
    println!(
        "  session pair (the engine's transport, no job: credit, framing, validation; one direction): {:.2} GB/s = \
         {:.2} of raw, {} credit stalls in {} buffers",
        session.gbps,
        session.gbps / raw_gbps,
        session.credit_stalls,
        session.buffers
    );
    println!(
        "  exchange: {:.2} M events/s, wall {wall:.3} s; crossed {:.1} MB out + {:.1} MB in of TaskManager 0 = \
         {exchange_gbps:.2} GB/s ({per_direction_gbps:.2} GB/s in the busier direction)",
        events as f64 / wall / 1e6,
        out as f64 / 1e6,
        inn as f64 / 1e6,
    );
    println!(
        "  ratio to raw: {:.2} both directions, {:.2} busier direction",
        exchange_gbps / raw_gbps,
        per_direction_gbps / raw_gbps
    );
    network_lines.iter().for_each(|l| println!("{l}"));
    if let Some(path) = json {
        let report = NetworkJson {
            events,
            keys,
            record_bytes,
            parallelism: p,
            processes: common.processes,
            wall_s: wall,
            events_per_s: events as f64 / wall,
            raw_gbps,
            session_gbps: session.gbps,
            session_ratio: session.gbps / raw_gbps,
            session_credit_stalls: session.credit_stalls,
            crossing_bytes: crossing,
            exchange_gbps,
            busier_direction_gbps: per_direction_gbps,
            ratio: exchange_gbps / raw_gbps,
        };
        crate::outputs::commit_all(vec![(path.to_path_buf(), corestream_bench::json::to_line(&report)?.into_bytes())])?;
    }
    Ok(())
}

/// The files `cmd` writes, by option, checked before it runs ([`crate::outputs::check`]).
pub fn outputs_of(cmd: &BenchCommand) -> Vec<(&'static str, &std::path::Path)> {
    let mut outputs = Vec::new();
    match cmd {
        BenchCommand::Nexmark { json, .. }
        | BenchCommand::Transport { json, .. }
        | BenchCommand::Network { json, .. } => {
            outputs.extend(json.as_deref().map(|p| ("--json", p)));
        }
        BenchCommand::Latency { json, hdr_log, plot, .. } => {
            outputs.extend(json.as_deref().map(|p| ("--json", p)));
            outputs.extend(hdr_log.as_deref().map(|p| ("--hdr-log", p)));
            outputs.extend(plot.as_deref().map(|p| ("--plot", p)));
        }
        BenchCommand::Passthrough { .. }
        | BenchCommand::KeyedSum { .. }
        | BenchCommand::Window { .. }
        | BenchCommand::Checkpoints(_) => {}
    }
    outputs
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    crate::outputs::check(&outputs_of(&cmd));
    let (report, ok) = match cmd {
        BenchCommand::Checkpoints(args) => return crate::checkpoint_bench::run(args),
        BenchCommand::Nexmark { query, events, seed, json, checksum, common } => {
            return run_nexmark(query, events, seed, json.as_deref(), checksum, &common);
        }
        BenchCommand::Latency { query, rate, duration, seed, json, hdr_log, plot, baseline, feeder, common } => {
            let settings = LatencySettings { query, rate, duration, seed, baseline, feeder };
            return crate::latency::run(&settings, json.as_deref(), hdr_log.as_deref(), plot.as_deref(), &common);
        }
        BenchCommand::Transport { bytes, rounds, json } => return run_transport(bytes, rounds, json.as_deref()),
        BenchCommand::Network { events, keys, record_bytes, raw_bytes, json, common } => {
            return run_network(events, keys, record_bytes, raw_bytes, json.as_deref(), &common);
        }
        BenchCommand::Passthrough { events, common } => {
            let cluster = common.cluster()?;
            let p = common.parallelism.unwrap_or(cluster.num_slots());
            let env = common.environment(&cluster);
            let handle = start_passthrough(env, events)?;
            let r = report("passthrough", p, events, join_with_progress(handle, "passthrough", Some(events))?);
            let ok = r.count == events;
            (r, ok)
        }
        BenchCommand::KeyedSum { events, keys, common } => {
            let cluster = common.cluster()?;
            let p = common.parallelism.unwrap_or(cluster.num_slots());
            let env = common.environment(&cluster);
            let handle = start_keyed_sum(env, events, keys)?;
            let r = report("keyed-sum", p, events, join_with_progress(handle, "keyed-sum", Some(events))?);
            let ok = r.count == events;
            (r, ok)
        }
        BenchCommand::Window { events, keys, window, contiguous, common } => {
            let cluster = common.cluster()?;
            let p = common.parallelism.unwrap_or(cluster.num_slots());
            let split = if contiguous { SequenceSplit::Contiguous } else { SequenceSplit::Interleaved };
            let env = common.environment(&cluster);
            let (handle, total) = start_window(env, events, keys, window.assigner, split)?;
            let mut r = report("window", p, events, join_with_progress(handle, "window", Some(events))?);
            r.count = total.load(std::sync::atomic::Ordering::Relaxed);
            let expected = window_expected_total(events, window.assigner);
            let peak = peak_rss_bytes().map_or("unknown".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6));
            let windows = r.result.operator("Window Count").map_or(0, |o| o.records_out);
            println!("window: {}, {keys} keys, {windows} window results, peak memory (RSS) {peak}", window.spec);
            println!("check: sum of window counts {} (expected {expected})", r.count);
            let ok = r.count == expected;
            if !ok {
                print_report(&r);
                anyhow::bail!("the window counts sum to {}, expected {expected}", r.count);
            }
            (r, ok)
        }
    };
    print_report(&report);
    if !ok {
        anyhow::bail!("the sink counted {} records, expected {}", report.count, report.events);
    }
    Ok(())
}
