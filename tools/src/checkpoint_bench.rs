//! What checkpoints cost, measured side by side in one run (`corestream bench checkpoints`):
//!
//! - `overhead`: a workload (the keyed tumbling-window benchmark, Nexmark q5 or q7) run by name
//!   on the JobManager of a local cluster without checkpoints and with checkpoints every
//!   `--interval`, alternately (the order flips every round, so drift on a shared machine falls
//!   on both), after `--warmup` runs that are not counted, reported as events per second and per
//!   CPU-second of each and the ratios per pair, with their spread, and the CPU time the
//!   checkpoints themselves took (synchronous parts, encoding, writing) as a share of each run's;
//! - `backpressure`: a job whose sink takes `--sink-delay` per record (so every buffer between
//!   source and sink is full), with aligned and then unaligned checkpoints: the end-to-end
//!   duration of the checkpoints of each (p50, p99, max over the completed ones) and the
//!   in-flight bytes the unaligned ones persisted. The sink waits without holding its slot's
//!   thread (a client of a slow external system); `--blocking-sink` sleeps on it instead;
//! - `state-size`: keyed state of K keys (a running sum per key) with checkpoints, for each K
//!   given: the size and duration of the checkpoints;
//! - `incremental`: the same sums in keyed value state, for each K, on the heap backend, on the
//!   LSM backend with full checkpoints and on the LSM backend with incremental ones, one after
//!   the other in each of `--rounds` rounds: bytes written per checkpoint (for incremental ones
//!   the new files) against the state's size, and durations;
//! - `recovery`: small keyed state with checkpoints every 100 ms, restarted at once
//!   (fixed-delay, no delay), from the failure to the first record the restored job processes
//!   after its keyed exchange: a task that fails in a local cluster (one process), and a
//!   TaskManager process killed with SIGKILL on a JobManager with three TaskManagers of one slot
//!   (the job, at parallelism 2, is restored on the two left). The job notes the moments in a
//!   file (`bench-recovery --marks`).
//!
//! Jobs run by name ([`crate::jobs`]) because only those take checkpoints; the figures come
//! from the job's duration and the JobManager's checkpoint statistics.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use corestream::checkpoint::request::CheckpointRequest;
use corestream::jobmanager::api::{CheckpointingStatistics, ClusterApi, JobState, SubmitRequest};
use corestream::LocalCluster;

use crate::args::{parse_keys, parse_positive_count, parse_positive_duration, Common};

/// What `bench checkpoints` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Throughput with checkpoints against without.
    Overhead,
    /// Checkpoint duration, aligned against unaligned, behind a slow sink.
    Backpressure,
    /// Checkpoint size and duration against the number of keys.
    StateSize,
    /// Full against incremental checkpoints of keyed state on the LSM backend (and the heap
    /// backend), against the number of keys.
    Incremental,
    /// Time from a failure to the first record processed after the restore: a task failure in
    /// one process, and a TaskManager process killed.
    Recovery,
}

/// The workload of `--scenario overhead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// `bench window --window tumbling:10s` (keyed count per 10 s window).
    Window,
    Q5,
    Q7,
}

#[derive(Args, Debug)]
pub struct CheckpointBenchArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// overhead: the workload.
    #[arg(long, value_enum, default_value = "window")]
    pub workload: Workload,
    /// overhead: events per run; backpressure: records per run; state-size: records per run per
    /// key count (at least the keys).
    #[arg(long, value_parser = parse_positive_count, default_value = "20M")]
    pub events: u64,
    /// overhead (window): keys.
    #[arg(long, value_parser = parse_keys, default_value = "10000")]
    pub keys: u64,
    /// state-size: the key counts to measure, e.g. 10k,100k,1M,10M.
    #[arg(long, value_delimiter = ',', value_parser = parse_keys, default_value = "10k,100k,1M")]
    pub key_counts: Vec<u64>,
    /// Time between checkpoints.
    #[arg(long, value_parser = parse_positive_duration, default_value = "1s")]
    pub interval: Duration,
    /// overhead: pairs of runs (off, on); incremental: rounds of the three backends.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50), default_value_t = 3)]
    pub rounds: u32,
    /// overhead: runs with checkpoints before the measured pairs, not counted. The first
    /// checkpoints of a process fault in the memory their buffers use (the allocator keeps it
    /// for the next ones); a job that runs for hours pays that once, so the pairs measure a
    /// process past it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10), default_value_t = 1)]
    pub warmup: u32,
    /// overhead: unaligned checkpoints.
    #[arg(long)]
    pub unaligned: bool,
    /// backpressure: bytes of each record.
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..=16384), default_value_t = 1024)]
    pub record_bytes: u32,
    /// backpressure: time the sink takes per record.
    #[arg(long, value_parser = parse_positive_duration, default_value = "10ms")]
    pub sink_delay: Duration,
    /// backpressure: the sink sleeps on its slot's thread, stalling the source subtask that
    /// shares the slot (by default it waits without holding the thread, as a client of a slow
    /// external system does).
    #[arg(long)]
    pub blocking_sink: bool,
    /// Where the runs' checkpoints go: a directory made inside DIR for this benchmark and
    /// removed at its end (default: the system's temporary directory). Put it on the disk
    /// whose cost you want to measure.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_parent: Option<std::path::PathBuf>,
    /// Keep the runs' checkpoint directories (named on standard output) instead of removing
    /// them, to inspect them with `corestream checkpoints list`.
    #[arg(long)]
    pub keep_checkpoints: bool,
    #[command(flatten)]
    pub common: Common,
}

/// A local cluster that runs the binary's job types by name, and a checkpoint directory of its
/// own (removed at the end).
struct Bench {
    _cluster: LocalCluster,
    api: std::sync::Arc<dyn ClusterApi>,
    dir: tempfile::TempDir,
    parallelism: u32,
}

/// One run: how long it took and what its checkpoints were.
struct RunFigures {
    wall: Duration,
    /// CPU time of this process (every slot and the snapshot writer) during the run.
    cpu: Duration,
    stats: Option<CheckpointingStatistics>,
}

impl RunFigures {
    /// CPU time the completed checkpoints took, over every task, and its share of the run's.
    fn checkpoint_cpu(&self) -> (Duration, f64) {
        let cpu = self.stats.as_ref().map_or(Duration::ZERO, |s| {
            Duration::from_micros(s.summary.cpu_time_us.avg.saturating_mul(s.summary.completed))
        });
        (cpu, cpu.as_secs_f64() / self.cpu.as_secs_f64().max(1e-9))
    }
}

impl Bench {
    fn start(a: &CheckpointBenchArgs) -> anyhow::Result<Self> {
        let common = &a.common;
        let cluster = LocalCluster::start_with_jobs(common.cluster_config()?, crate::jobs::registry())
            .context("cannot start the local cluster")?;
        let api = cluster.api().ok_or_else(|| anyhow!("the local cluster has no JobManager"))?;
        let parallelism = common.parallelism.unwrap_or(cluster.num_slots());
        let parent = a.checkpoint_parent.clone().unwrap_or_else(std::env::temp_dir);
        let mut dir = tempfile::Builder::new()
            .prefix("corestream-bench-ck-")
            .tempdir_in(&parent)
            .with_context(|| format!("cannot create a directory in '{}'", parent.display()))?;
        if a.keep_checkpoints {
            dir.disable_cleanup(true);
            println!("checkpoints kept in {}", dir.path().display());
        }
        Ok(Self { _cluster: cluster, api, dir, parallelism })
    }

    /// Runs `job args` to its end (with checkpoints into a fresh directory when `checkpoints`).
    fn run(&self, job: &str, args: Vec<String>, checkpoints: Option<CheckpointRequest>) -> anyhow::Result<RunFigures> {
        let checkpoints = checkpoints.map(|mut c| {
            let dir = self.dir.path().join(format!("run-{}", corestream::rpc::ids::JobId::random()));
            c.dir = Some(dir.display().to_string());
            c
        });
        let request = SubmitRequest {
            job: job.into(),
            args,
            parallelism: Some(self.parallelism),
            checkpoints,
            restart_strategy: Some("none".into()),
            ..Default::default()
        };
        let started = Instant::now();
        let cpu_before = crate::bench::process_cpu_time()?;
        let (id, result) = crate::progress::run_by_name(self.api.as_ref(), request, job)?;
        let wall = started.elapsed();
        let cpu = crate::bench::process_cpu_time()?.saturating_sub(cpu_before);
        if result.state != JobState::Finished {
            let why = result.result.and_then(|o| o.failure).unwrap_or_else(|| format!("{:?}", result.state));
            bail!("{job} did not finish: {why}");
        }
        let stats = self.api.checkpoints(&id.to_string()).ok().filter(|s| s.counts.total > 0);
        Ok(RunFigures { wall, cpu, stats })
    }
}

fn every(interval: Duration, unaligned: bool) -> CheckpointRequest {
    CheckpointRequest {
        interval_ms: Some(interval.as_millis() as u64),
        unaligned: unaligned.then_some(true),
        ..Default::default()
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// The `q`-quantile (0..=1) of `xs`, nearest rank.
fn quantile(mut xs: Vec<u64>, q: f64) -> u64 {
    xs.sort_unstable();
    if xs.is_empty() {
        return 0;
    }
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn run(args: CheckpointBenchArgs) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Overhead => overhead(&args),
        Scenario::Backpressure => backpressure(&args),
        Scenario::StateSize => state_size(&args),
        Scenario::Incremental => incremental(&args),
        Scenario::Recovery => recovery(&args),
    }
}

fn overhead(a: &CheckpointBenchArgs) -> anyhow::Result<()> {
    let bench = Bench::start(a)?;
    let events = a.events.to_string();
    let (job, args): (&str, Vec<String>) = match a.workload {
        Workload::Window => (
            "bench-window",
            ["--events", &events, "--keys", &a.keys.to_string(), "--window", "tumbling:10s"].map(String::from).to_vec(),
        ),
        Workload::Q5 => ("nexmark", ["--query", "q5", "--events", &events].map(String::from).to_vec()),
        Workload::Q7 => ("nexmark", ["--query", "q7", "--events", &events].map(String::from).to_vec()),
    };
    println!(
        "checkpoint overhead: {job} {}, p={}, checkpoints every {:?} ({}), {} warm-up run(s), {} round(s), order \
         flipped each round",
        args.join(" "),
        bench.parallelism,
        a.interval,
        if a.unaligned { "unaligned" } else { "aligned" },
        a.warmup,
        a.rounds
    );
    for run in 0..a.warmup {
        let figures = bench.run(job, args.clone(), Some(every(a.interval, a.unaligned)))?;
        let (_, share) = figures.checkpoint_cpu();
        println!(
            "  warm-up {}: {:.0} events/s, checkpoints' CPU {:.2} % of the run's (not counted)",
            run + 1,
            a.events as f64 / figures.wall.as_secs_f64(),
            share * 100.0
        );
    }
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    let (mut offs, mut ons, mut cpu_shares) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        let (mut pair, mut cpu_pair) = ([0.0f64; 2], [0.0f64; 2]);
        for with in order {
            let figures = bench.run(job, args.clone(), with.then(|| every(a.interval, a.unaligned)))?;
            let rate = a.events as f64 / figures.wall.as_secs_f64();
            let cpu_rate = a.events as f64 / figures.cpu.as_secs_f64().max(1e-9);
            pair[usize::from(with)] = rate;
            cpu_pair[usize::from(with)] = cpu_rate;
            let checkpoints = figures.stats.as_ref().map_or(0, |s| s.counts.completed);
            println!(
                "  round {}: {:<16} {:>12.0} events/s  wall {:>7.3} s  {:>12.0} events/CPU-s  {checkpoints} checkpoint(s)",
                round + 1,
                if with { "checkpoints" } else { "no checkpoints" },
                rate,
                figures.wall.as_secs_f64(),
                cpu_rate
            );
            if let Some(s) = figures.stats.as_ref().filter(|_| with) {
                let (cpu, share) = figures.checkpoint_cpu();
                cpu_shares.push(share);
                println!(
                    "           checkpoint duration min/avg/max {}/{}/{} ms, size avg {}; CPU {:.1} ms, {:.2} % of the \
                     run's; {}",
                    s.summary.end_to_end_duration_ms.min,
                    s.summary.end_to_end_duration_ms.avg,
                    s.summary.end_to_end_duration_ms.max,
                    mib(s.summary.checkpointed_size_bytes.avg),
                    cpu.as_secs_f64() * 1e3,
                    share * 100.0,
                    phases(s)
                );
            }
        }
        offs.push(pair[0]);
        ons.push(pair[1]);
        ratios.push(pair[1] / pair[0]);
        cpu_ratios.push(cpu_pair[1] / cpu_pair[0]);
    }
    let spread = |xs: &[f64]| xs.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
    let ((lo, hi), (cpu_lo, cpu_hi)) = (spread(&ratios), spread(&cpu_ratios));
    println!(
        "result: without {:.0} events/s, with {:.0} events/s (medians); with/without {:.3} (median of {} pairs, \
         {lo:.3}..{hi:.3}), overhead {:.1} %",
        median(offs),
        median(ons),
        median(ratios.clone()),
        ratios.len(),
        (1.0 - median(ratios)) * 100.0
    );
    println!(
        "        per CPU-second: with/without {:.3} ({cpu_lo:.3}..{cpu_hi:.3}), overhead {:.1} % (CPU time is less \
         sensitive to other load on the machine than wall time)",
        median(cpu_ratios.clone()),
        (1.0 - median(cpu_ratios)) * 100.0
    );
    if !cpu_shares.is_empty() {
        let (lo, hi) = spread(&cpu_shares);
        println!(
            "        checkpoints' own CPU time (synchronous parts, encoding, writing): {:.2} % of the runs' CPU \
             (median of {}, {:.2}..{:.2} %)",
            median(cpu_shares.clone()) * 100.0,
            cpu_shares.len(),
            lo * 100.0,
            hi * 100.0
        );
    }
    Ok(())
}

fn backpressure(a: &CheckpointBenchArgs) -> anyhow::Result<()> {
    let bench = Bench::start(a)?;
    let mut args: Vec<String> = [
        "--records".to_string(),
        a.events.to_string(),
        "--record-bytes".into(),
        a.record_bytes.to_string(),
        "--sink-delay-us".into(),
        a.sink_delay.as_micros().to_string(),
    ]
    .to_vec();
    if let Some(rate) = a.common.source_rate {
        args.extend(["--source-rate".to_string(), rate.to_string()]);
    }
    if a.blocking_sink {
        args.push("--blocking".into());
    }
    let pacing = a.common.source_rate.map_or("unpaced".to_string(), |r| format!("paced at {r}/s each"));
    println!(
        "checkpoints behind a slow sink: {} records of {} bytes, {:?} per record at the sink ({}), sources {pacing}, p={}, \
         every {:?}",
        a.events,
        a.record_bytes,
        a.sink_delay,
        if a.blocking_sink { "sleeping on the slot's thread" } else { "waiting without holding its slot" },
        bench.parallelism,
        a.interval
    );
    for unaligned in [false, true] {
        let figures = bench.run("bench-slow-sink", args.clone(), Some(every(a.interval, unaligned)))?;
        let label = if unaligned { "unaligned" } else { "aligned" };
        let Some(stats) = figures.stats else {
            println!("  {label:<9}: no checkpoint completed in {:.1} s", figures.wall.as_secs_f64());
            continue;
        };
        let completed: Vec<_> = stats
            .history
            .iter()
            .filter(|c| matches!(c.status, corestream::jobmanager::api::CheckpointStatusInfo::Completed))
            .collect();
        let durations: Vec<u64> = completed.iter().map(|c| c.end_to_end_duration_ms).collect();
        let persisted: u64 = completed.iter().map(|c| c.persisted_data_bytes).max().unwrap_or(0);
        println!(
            "  {label:<9}: {} completed, {} failed in {:.1} s; duration p50 {} ms, p99 {} ms, max {} ms; in-flight data \
             persisted up to {}",
            stats.counts.completed,
            stats.counts.failed,
            figures.wall.as_secs_f64(),
            quantile(durations.clone(), 0.5),
            quantile(durations.clone(), 0.99),
            durations.iter().max().copied().unwrap_or(0),
            mib(persisted)
        );
    }
    Ok(())
}

/// The synchronous (slot thread) and asynchronous (snapshot writer) parts of the completed
/// checkpoints in the REST history: the slowest subtask's of each, averaged and at most.
fn phases(stats: &CheckpointingStatistics) -> String {
    let completed: Vec<_> = stats
        .history
        .iter()
        .filter(|c| matches!(c.status, corestream::jobmanager::api::CheckpointStatusInfo::Completed))
        .collect();
    let avg_max = |values: Vec<u64>| {
        let avg = values.iter().sum::<u64>() / values.len().max(1) as u64;
        format!("{avg}/{}", values.iter().max().copied().unwrap_or(0))
    };
    let cpu: Vec<String> = completed.iter().rev().map(|c| format!("{:.0}", c.cpu_time_us as f64 / 1e3)).collect();
    format!(
        "sync avg/max {} ms, async avg/max {} ms, CPU per checkpoint {} ms (last {}, oldest first)",
        avg_max(completed.iter().map(|c| c.sync_duration_ms).collect()),
        avg_max(completed.iter().map(|c| c.async_duration_ms).collect()),
        cpu.join("/"),
        completed.len()
    )
}

fn state_size(a: &CheckpointBenchArgs) -> anyhow::Result<()> {
    let bench = Bench::start(a)?;
    println!("checkpoints of keyed state (heap backend), p={}, every {:?}", bench.parallelism, a.interval);
    for &keys in &a.key_counts {
        let records = a.events.max(keys * 2);
        let args = ["--records", &records.to_string(), "--keys", &keys.to_string()].map(String::from).to_vec();
        let figures = bench.run("bench-state", args, Some(every(a.interval, false)))?;
        match figures.stats {
            Some(s) => println!(
                "  {keys:>10} keys: {} checkpoint(s) in {:.1} s; size avg {} max {}; duration avg {} ms max {} ms; {}",
                s.counts.completed,
                figures.wall.as_secs_f64(),
                mib(s.summary.checkpointed_size_bytes.avg),
                mib(s.summary.checkpointed_size_bytes.max),
                s.summary.end_to_end_duration_ms.avg,
                s.summary.end_to_end_duration_ms.max,
                phases(&s)
            ),
            None => println!("  {keys:>10} keys: no checkpoint completed in {:.1} s", figures.wall.as_secs_f64()),
        }
    }
    Ok(())
}

/// The backends `--scenario incremental` compares: (label, job arguments).
const STATE_MODES: [(&str, &[&str]); 3] = [
    ("heap", &["--state-backend", "heap"]),
    ("lsm full", &["--state-backend", "lsm", "--incremental-checkpoints", "false"]),
    ("lsm incremental", &["--state-backend", "lsm", "--incremental-checkpoints", "true"]),
];

fn incremental(a: &CheckpointBenchArgs) -> anyhow::Result<()> {
    let bench = Bench::start(a)?;
    println!(
        "checkpoints of keyed value state, p={}, every {:?}, {} round(s); sizes per checkpoint (avg, max): \
         written = task files + uploaded files, state = task files + every file used",
        bench.parallelism, a.interval, a.rounds
    );
    for &keys in &a.key_counts {
        let records = a.events.max(keys * 2);
        for round in 0..a.rounds {
            for (label, extra) in STATE_MODES {
                let mut args =
                    ["--records", &records.to_string(), "--keys", &keys.to_string()].map(String::from).to_vec();
                args.extend(extra.iter().map(|s| s.to_string()));
                let figures = bench.run("bench-state", args, Some(every(a.interval, false)))?;
                let events = records as f64 / figures.wall.as_secs_f64();
                match figures.stats {
                    Some(s) => println!(
                        "  {keys:>10} keys  round {}  {label:<16} {:>3} checkpoint(s), run {:.1} s ({:.2} M records/s); \
                         written avg {} max {}; state avg {} max {}; duration avg {} ms max {} ms",
                        round + 1,
                        s.counts.completed,
                        figures.wall.as_secs_f64(),
                        events / 1e6,
                        mib(s.summary.checkpointed_size_bytes.avg),
                        mib(s.summary.checkpointed_size_bytes.max),
                        mib(s.summary.state_size_bytes.avg),
                        mib(s.summary.state_size_bytes.max),
                        s.summary.end_to_end_duration_ms.avg,
                        s.summary.end_to_end_duration_ms.max,
                    ),
                    None => println!(
                        "  {keys:>10} keys  round {}  {label:<16} no checkpoint completed in {:.1} s",
                        round + 1,
                        figures.wall.as_secs_f64()
                    ),
                }
            }
        }
    }
    Ok(())
}

/// Restarts at once and often: the recovery figures are then the engine's own (detection,
/// cancelling, redeploying, restoring, the first record); a configured delay adds to them
/// (Flink's default, exponential-delay, waits 1 s before the first restart).
fn immediate_restarts() -> corestream::conf::RestartSettings {
    corestream::conf::RestartSettings {
        strategy: Some(corestream::conf::RestartStrategyType::FixedDelay),
        fixed_delay: corestream::conf::FixedDelaySettings { attempts: 100, delay: Duration::ZERO },
        ..Default::default()
    }
}

/// (`failed` moment, `first` moments) in Unix milliseconds, from a marks file.
fn read_marks(path: &std::path::Path) -> (Option<u128>, Vec<u128>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut failed, mut firsts) = (None, Vec::new());
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("failed", ms)) => failed = ms.parse().ok(),
            Some(("first", ms)) => firsts.extend(ms.parse::<u128>().ok()),
            _ => {}
        }
    }
    (failed, firsts)
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// The first `first` mark at or after `failed`: the recovery time in ms.
fn recovered_after(failed: u128, firsts: &[u128]) -> Option<u128> {
    firsts.iter().filter(|&&t| t >= failed).min().map(|t| t - failed)
}

fn recovery_args(records: u64, rate: u64, marks: &std::path::Path) -> Vec<String> {
    let mut args: Vec<String> =
        ["--records", &records.to_string(), "--keys", "1000", "--source-rate", &rate.to_string()]
            .map(String::from)
            .to_vec();
    args.extend(["--marks".to_string(), marks.display().to_string()]);
    args
}

fn recovery_request(args: Vec<String>, parallelism: u32, dir: &std::path::Path) -> SubmitRequest {
    let checkpoints =
        CheckpointRequest { interval_ms: Some(100), dir: Some(dir.display().to_string()), ..Default::default() };
    SubmitRequest {
        job: "bench-recovery".into(),
        args,
        parallelism: Some(parallelism),
        checkpoints: Some(checkpoints),
        restart_strategy: Some("fixed-delay".into()),
        ..Default::default()
    }
}

/// Waits for job `id` to end; an error unless it finished.
fn wait_finished(api: &dyn ClusterApi, id: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let result = api.execution_result(id).map_err(|e| anyhow!("{}", e.message))?;
        if result.state.is_terminal() {
            if result.state != JobState::Finished {
                let why = result.result.and_then(|o| o.failure).unwrap_or_else(|| format!("{:?}", result.state));
                bail!("bench-recovery did not finish: {why}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = api.cancel(id);
            bail!("bench-recovery did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn recovery(a: &CheckpointBenchArgs) -> anyhow::Result<()> {
    let parallelism = a.common.parallelism.unwrap_or(2);
    let rate = a.common.source_rate.unwrap_or(20_000);
    // About four seconds of input per run.
    let records = rate * u64::from(parallelism) * 4;
    let parent = a.checkpoint_parent.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("corestream-bench-recovery-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a directory in '{}'", parent.display()))?;
    println!(
        "recovery: a running sum over 1000 keys, {rate} records/s per source subtask, p={parallelism}, checkpoints \
         every 100 ms, restarted at once (fixed-delay without delay), {} round(s) each",
        a.rounds
    );

    let mut local = Vec::new();
    let cluster = LocalCluster::start_with_jobs_restarting(
        a.common.cluster_config()?,
        crate::jobs::registry(),
        immediate_restarts(),
    )
    .context("cannot start the local cluster")?;
    let api = cluster.api().ok_or_else(|| anyhow!("the local cluster has no JobManager"))?;
    for round in 0..a.rounds {
        let marks = dir.path().join(format!("local-{round}.marks"));
        let mut args = recovery_args(records, rate, &marks);
        // About a second and a half in, after several checkpoints.
        let fail_after = (rate * u64::from(parallelism) * 3 / 2).to_string();
        args.extend(["--fail-after".to_string(), fail_after]);
        let request = recovery_request(args, parallelism, &dir.path().join(format!("local-{round}")));
        let id = api.submit(request).map_err(|e| anyhow!("{}", e.message))?.jobid.to_string();
        wait_finished(api.as_ref(), &id, Duration::from_secs(120))?;
        let (failed, firsts) = read_marks(&marks);
        let failed = failed.ok_or_else(|| anyhow!("round {}: the task did not fail", round + 1))?;
        let took = recovered_after(failed, &firsts)
            .ok_or_else(|| anyhow!("round {}: no record was processed after the failure", round + 1))?;
        println!("  one process, round {}: a task failed; first record after the restore {took} ms later", round + 1);
        local.push(took as u64);
    }
    drop(cluster);

    let mut remote = Vec::new();
    for round in 0..a.rounds {
        let settings = corestream::processes::ProcessClusterSettings {
            binary: std::env::current_exe().context("cannot find this program's executable to start TaskManagers")?,
            taskmanagers: parallelism + 1,
            slots_per_taskmanager: 1,
            jobmanager: corestream::jobmanager::JobManagerConfig {
                rpc_bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_timeout: Duration::from_secs(10),
                slot_request_timeout: Duration::from_secs(30),
                restarts: corestream::jobmanager::restart::RestartStrategy::factory(&immediate_restarts()),
                cluster: corestream::ClusterConfig { credit: a.common.credit(), ..Default::default() },
                ..Default::default()
            },
            ..Default::default()
        };
        let cluster = corestream::processes::ProcessCluster::start(settings, crate::jobs::registry(), |_| {})
            .map_err(|e| anyhow!("cannot start the TaskManager processes: {e}"))?;
        let api = cluster.api();
        let marks = dir.path().join(format!("processes-{round}.marks"));
        let request = recovery_request(
            recovery_args(records, rate, &marks),
            parallelism,
            &dir.path().join(format!("processes-{round}")),
        );
        let id = api.submit(request).map_err(|e| anyhow!("{}", e.message))?.jobid.to_string();
        // Running, with a complete checkpoint to restore.
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.checkpoints(&id).map_or(0, |s| s.counts.completed) < 3 || read_marks(&marks).1.is_empty() {
            if Instant::now() >= deadline {
                bail!("round {}: no checkpoint completed within 30 s", round + 1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let busy: Vec<u32> =
            api.task_managers().into_iter().filter(|t| t.slots_free < t.slots_total).map(|t| t.pid).collect();
        let victim = cluster
            .children()
            .into_iter()
            .find(|c| busy.contains(&c.pid))
            .ok_or_else(|| anyhow!("round {}: no TaskManager process runs the job", round + 1))?;
        let killed = unix_ms();
        // SAFETY: signalling a TaskManager process this benchmark started (it has not been reaped).
        if unsafe { libc::kill(victim.pid as libc::pid_t, libc::SIGKILL) } != 0 {
            bail!("cannot kill TaskManager {} (pid {}): {}", victim.index, victim.pid, std::io::Error::last_os_error());
        }
        wait_finished(api.as_ref(), &id, Duration::from_secs(120))?;
        let (_, firsts) = read_marks(&marks);
        let took = recovered_after(killed, &firsts)
            .ok_or_else(|| anyhow!("round {}: no record was processed after the kill", round + 1))?;
        println!(
            "  TaskManagers, round {}: TaskManager {} (pid {}) killed; first record after the restore {took} ms later",
            round + 1,
            victim.index,
            victim.pid
        );
        remote.push(took as u64);
        drop(cluster);
    }
    let summary =
        |xs: &[u64]| format!("p50 {} ms, max {} ms", quantile(xs.to_vec(), 0.5), xs.iter().max().copied().unwrap_or(0));
    println!("result: one process {}; across TaskManagers {}", summary(&local), summary(&remote));
    Ok(())
}
