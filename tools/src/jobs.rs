//! The job types this binary registers (see `corestream::registry`): what `corestream submit`
//! runs on a cluster and what `--processes` runs on its own JobManager. Each parses its
//! arguments with clap, so `submit JOB --help`-style mistakes get the same messages as the
//! `run` commands, and declares the same graph as its `run` counterpart.

use std::path::PathBuf;

use clap::Parser;
use corestream::registry::{JobContext, JobParts, JobRegistry, JobType};
use corestream::rpc::messages::{Accumulator, Accumulators};
use corestream::{InvalidUtf8, StreamEnvironment};
use corestream_bench::examples::{self, checksum};

/// The arguments of `run wordcount` that a cluster job takes (the output must be a file).
#[derive(Parser, Debug)]
#[command(name = "wordcount", no_binary_name = true)]
pub struct WordcountArgs {
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_parser = examples::parse_max_line_bytes, default_value = "1M")]
    pub max_line_bytes: usize,
    #[arg(long, value_enum, default_value_t = crate::run::InvalidUtf8::Skip)]
    pub on_invalid_utf8: crate::run::InvalidUtf8,
}

/// The arguments of `run sum-by-key`.
#[derive(Parser, Debug)]
#[command(name = "sum-by-key", no_binary_name = true)]
pub struct SumByKeyArgs {
    #[arg(long, value_parser = crate::args::parse_positive_count)]
    pub records: u64,
    #[arg(long, value_parser = crate::args::parse_keys)]
    pub keys: u64,
    /// Write each key's total as a `key,total` line into part files of this directory through
    /// the exactly-once file sink (required with checkpoints); without it the result is a
    /// checksum of the totals.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[arg(long, value_parser = crate::args::parse_source_rate, value_name = "N")]
    pub source_rate: Option<u64>,
}

/// The arguments of `run window-agg` (without the options of the local cluster: the job's
/// parallelism is `submit -p`).
#[derive(Parser, Debug)]
#[command(name = "window-agg", no_binary_name = true)]
pub struct WindowAggJobArgs {
    #[command(flatten)]
    pub job: crate::window_agg::WindowAggOptions,
    #[arg(long, value_parser = crate::args::parse_source_rate, value_name = "N")]
    pub source_rate: Option<u64>,
}

/// The arguments of `bench network`'s job.
#[derive(Parser, Debug)]
#[command(name = "bench-network", no_binary_name = true)]
pub struct NetworkArgs {
    #[arg(long, value_parser = crate::args::parse_positive_count)]
    pub events: u64,
    #[arg(long, value_parser = crate::args::parse_keys)]
    pub keys: u64,
    #[arg(long, value_parser = crate::bench::parse_record_bytes)]
    pub record_bytes: usize,
}

/// The arguments of `bench window`'s job.
#[derive(Parser, Debug)]
#[command(name = "bench-window", no_binary_name = true)]
pub struct BenchWindowArgs {
    #[arg(long, value_parser = crate::args::parse_positive_count)]
    pub events: u64,
    #[arg(long, value_parser = crate::args::parse_keys)]
    pub keys: u64,
    #[arg(long, value_parser = crate::bench::parse_window_assigner)]
    pub window: crate::bench::WindowArg,
}

/// The arguments of the job `bench checkpoints --scenario backpressure` runs.
#[derive(Parser, Debug)]
#[command(name = "bench-slow-sink", no_binary_name = true)]
pub struct SlowSinkArgs {
    #[arg(long, value_parser = crate::args::parse_positive_count)]
    pub records: u64,
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..=16384))]
    pub record_bytes: u32,
    /// Microseconds the sink takes per record (at most 1 s).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub sink_delay_us: u64,
    /// Records per second each source subtask emits at most.
    #[arg(long, value_parser = crate::args::parse_source_rate, value_name = "N")]
    pub source_rate: Option<u64>,
    /// The sink sleeps on its slot's thread (stalling the slot's other tasks) instead of
    /// waiting without holding it.
    #[arg(long)]
    pub blocking: bool,
}

/// The arguments of the job `bench checkpoints --scenario state-size` runs.
#[derive(Parser, Debug)]
#[command(name = "bench-state", no_binary_name = true)]
pub struct BenchStateArgs {
    #[arg(long, value_parser = crate::args::parse_positive_count)]
    pub records: u64,
    #[arg(long, value_parser = crate::args::parse_keys)]
    pub keys: u64,
    /// Keep the sums in keyed value state on this backend (a keyed process function) instead
    /// of the running reduce's own table.
    #[arg(long, value_name = "heap|lsm")]
    pub state_backend: Option<corestream::StateBackendKind>,
    /// With `--state-backend lsm`: checkpoints upload only new files (default true).
    #[arg(long, value_name = "true|false")]
    pub incremental_checkpoints: Option<bool>,
}

/// A running sum per key in keyed value state.
#[derive(Default)]
struct SumInState {
    sum: Option<corestream::ValueState<u64, (), u64>>,
}

impl corestream::KeyedProcessFunction<u64, (u64, u64), (u64, u64)> for SumInState {
    fn open(&mut self, ctx: &mut corestream::KeyedRuntimeContext<'_, u64>) {
        let desc = corestream::ValueStateDescriptor::new("sum");
        self.sum = Some(ctx.state().value_state(&desc).expect("a value state 'sum' of u64"));
    }

    fn process_element(&mut self, (_, x): (u64, u64), _: &mut corestream::KeyedContext<'_, u64, (u64, u64)>) {
        let sum = self.sum.as_mut().expect("opened");
        let next = sum.value().unwrap_or(0).wrapping_add(x);
        sum.update(next);
    }
}

/// The arguments of the job `bench checkpoints --scenario recovery` runs.
#[derive(Parser, Debug)]
#[command(name = "bench-recovery", no_binary_name = true)]
pub struct BenchRecoveryArgs {
    #[arg(long, value_parser = crate::args::parse_positive_count)]
    pub records: u64,
    #[arg(long, value_parser = crate::args::parse_keys)]
    pub keys: u64,
    /// Records per second each source subtask emits at most.
    #[arg(long, value_parser = crate::args::parse_source_rate, value_name = "N")]
    pub source_rate: Option<u64>,
    /// File the job appends `first <unix ms>` to when an attempt processes its first record
    /// after the keyed exchange (once per attempt and process), and `failed <unix ms>` when it
    /// fails on purpose.
    #[arg(long)]
    pub marks: std::path::PathBuf,
    /// Fail the task once per process, when it has processed this many records.
    #[arg(long, value_parser = crate::args::parse_positive_count)]
    pub fail_after: Option<u64>,
}

/// The arguments of the `nexmark` job type.
#[derive(Parser, Debug)]
#[command(name = "nexmark", no_binary_name = true)]
pub struct NexmarkArgs {
    #[arg(long, value_enum)]
    pub query: crate::bench::NexmarkQuery,
    #[arg(long, value_parser = crate::args::parse_positive_count)]
    pub events: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

fn parse<T: Parser>(args: &[String]) -> Result<T, String> {
    T::try_parse_from(args).map_err(|e| e.render().to_string().trim_end().to_string())
}

fn wordcount(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a: WordcountArgs = parse(ctx.args)?;
    if ctx.planning {
        corestream::fs::check_output(&a.output, &[a.input.as_path()]).map_err(|e| e.to_string())?;
    }
    let invalid = match a.on_invalid_utf8 {
        crate::run::InvalidUtf8::Skip => InvalidUtf8::Skip,
        crate::run::InvalidUtf8::Fail => InvalidUtf8::Fail,
    };
    let options = corestream::TextFileOptions::default().invalid_utf8(invalid).max_line_bytes(a.max_line_bytes);
    examples::wordcount_with(env, &a.input, &a.output, options);
    Ok(JobParts::none())
}

fn sum_by_key(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a: SumByKeyArgs = parse(ctx.args)?;
    env.set_source_rate(a.source_rate);
    if let Some(dir) = &a.output {
        if ctx.planning {
            crate::outputs::check_output_dir(dir, &[])?;
        }
        examples::sum_by_key_to_files(env, a.records, a.keys, dir);
        return Ok(JobParts::none());
    }
    if ctx.checkpoints {
        return Err(
            "with checkpoints the totals must go to --output DIR (part files written through the exactly-once \
                    file sink): collected totals are not kept in the checkpoints"
                .into(),
        );
    }
    let totals = examples::sum_by_key(env, a.records, a.keys);
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
}

fn window_agg(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a: WindowAggJobArgs = parse(ctx.args)?;
    env.set_source_rate(a.source_rate);
    crate::window_agg::job::build(env, &a.job, ctx.planning, ctx.checkpoints)
}

fn bench_network(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a: NetworkArgs = parse(ctx.args)?;
    corestream_bench::network::exchange_job(env, a.events, a.keys, a.record_bytes);
    Ok(JobParts::none())
}

fn bench_window(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a: BenchWindowArgs = parse(ctx.args)?;
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    corestream_bench::throughput::window_job(
        env,
        a.events,
        a.keys,
        a.window.assigner,
        corestream_bench::throughput::SequenceSplit::Interleaved,
        total,
    );
    Ok(JobParts::none())
}

/// Takes a fixed time per record: a sink slower than everything before it, so every buffer
/// between them fills (backpressure). By default it behaves like a client of a slow external
/// system: a batch keeps it busy for `delay` per record, during which it is not ready and its
/// slot runs other tasks. `blocking` sleeps on the slot's thread instead, as Flink's benchmark
/// sink does on a thread of its own; here that stalls every task of the slot.
struct SlowSink {
    delay: std::time::Duration,
    blocking: bool,
    busy_until: std::time::Instant,
}

impl corestream::Sink<(u64, Vec<u8>)> for SlowSink {
    fn write_batch(&mut self, batch: &mut Vec<(u64, Vec<u8>)>) -> Result<(), corestream::SinkError> {
        let records = batch.len() as u32;
        batch.clear();
        if self.blocking {
            std::thread::sleep(self.delay * records);
        } else {
            self.busy_until = self.busy_until.max(std::time::Instant::now()) + self.delay * records;
        }
        Ok(())
    }

    fn poll_ready(&mut self) -> bool {
        std::time::Instant::now() >= self.busy_until
    }

    fn finish(&mut self) -> Result<(), corestream::SinkError> {
        std::thread::sleep(self.busy_until.saturating_duration_since(std::time::Instant::now()));
        Ok(())
    }
}

fn bench_slow_sink(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a: SlowSinkArgs = parse(ctx.args)?;
    let bytes = a.record_bytes as usize;
    let delay = std::time::Duration::from_micros(a.sink_delay_us);
    let blocking = a.blocking;
    env.set_source_rate(a.source_rate);
    env.from_generator(a.records, move |i| (i, vec![(i % 251) as u8; bytes]))
        .rebalance()
        .map(|r: (u64, Vec<u8>)| r)
        .name("Pass")
        .add_sink("Sink: slow", move |_| Ok(SlowSink { delay, blocking, busy_until: std::time::Instant::now() }));
    Ok(JobParts::none())
}

/// The marks files of the `bench-recovery` runs whose task this process has failed on purpose
/// (each run fails once).
static RECOVERY_FAILED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Whether the run noting its marks in `marks` is to fail now (true once per run and process).
fn fail_once(marks: &std::path::Path) -> bool {
    let mut failed = RECOVERY_FAILED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if failed.iter().any(|p| p == marks) {
        return false;
    }
    failed.push(marks.to_path_buf());
    true
}

/// Appends `line` to `path` in one write (lines of several processes do not interleave).
fn append_mark(path: &std::path::Path, line: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write a recovery mark");
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// A running sum per key whose results pass a map that notes when each attempt processes its
/// first record: from the failure (a kill, or `--fail-after` records) to that mark is the
/// recovery time.
fn bench_recovery(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let a: BenchRecoveryArgs = parse(ctx.args)?;
    let keys = a.keys;
    env.set_source_rate(a.source_rate);
    let marks = a.marks.clone();
    let first = AtomicBool::new(false);
    let seen = AtomicU64::new(0);
    let fail_after = a.fail_after;
    env.from_generator(a.records, move |i| (i % keys, i))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|x, y| (x.0, x.1.wrapping_add(y.1)))
        .name("Sum per key")
        .map(move |r: (u64, u64)| {
            if !first.load(Ordering::Relaxed) && !first.swap(true, Ordering::Relaxed) {
                append_mark(&marks, &format!("first {}", unix_ms()));
            }
            let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
            if fail_after == Some(n) && fail_once(&marks) {
                append_mark(&marks, &format!("failed {}", unix_ms()));
                panic!("bench-recovery: the failure asked for by --fail-after {n}");
            }
            r
        })
        .name("Mark")
        .discard();
    Ok(JobParts::none())
}

fn bench_state(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a: BenchStateArgs = parse(ctx.args)?;
    let keys = a.keys;
    let keyed = env.from_generator(a.records, move |i| (i % keys, i)).key_by(|r: &(u64, u64)| r.0);
    match a.state_backend {
        None => keyed.reduce(|x, y| (x.0, x.1.wrapping_add(y.1))).name("Sum per key").discard(),
        Some(backend) => {
            env.set_state_backend(backend);
            if let Some(incremental) = a.incremental_checkpoints {
                env.set_lsm_config(corestream::LsmConfig { incremental, ..env.config().lsm.clone() });
            }
            keyed.process(SumInState::default).name("Sum per key in state").discard()
        }
    };
    Ok(JobParts::none())
}

fn nexmark(env: &mut StreamEnvironment, ctx: &JobContext<'_>) -> Result<JobParts, String> {
    let a: NexmarkArgs = parse(ctx.args)?;
    let totals = crate::bench::declare_nexmark(env, a.query, a.events, a.seed, true)
        .ok_or("the nexmark job ends in a checksum sink")?;
    if ctx.planning {
        return Ok(JobParts::none());
    }
    Ok(JobParts::with_accumulators(move || {
        Ok(Accumulators::from([
            ("output-records".to_string(), Accumulator::Count(totals.count())),
            ("output-checksum".to_string(), Accumulator::Checksum(totals.checksum())),
        ]))
    }))
}

/// Every job type of the `corestream` binary.
pub fn registry() -> JobRegistry {
    let mut r = JobRegistry::new();
    r.register(JobType::new(
        "wordcount",
        "count the words of a text file into a file of `word<TAB>count` lines",
        "--input FILE --output FILE [--max-line-bytes SIZE] [--on-invalid-utf8 skip|fail]",
        wordcount,
    ));
    r.register(JobType::new(
        "sum-by-key",
        "sum generated values per key; the result is a checksum of the totals and the number of keys",
        "--records N --keys K [--output DIR] [--source-rate N]",
        sum_by_key,
    ));
    r.register(JobType::new(
        "window-agg",
        "event-time window aggregation of a CSV file into a file sorted as `run window-agg` writes it, with its late \
         and rejected rows; the result is the summary's counts",
        "--input FILE --key COL --time COL --window SPEC --out-of-orderness DUR --agg AGG --output FILE \
         [--allowed-lateness DUR] [--trigger T] [--late-output FILE] [--rejected-output FILE] [--fail-on-malformed] \
         [--max-line-bytes SIZE] [--source-rate N]; with checkpoints every output is a directory of part files",
        window_agg,
    ));
    r.register(JobType::new(
        "nexmark",
        "a Nexmark query over the generator's first N events; the result is the output's record count and \
         order-independent checksum (as `bench nexmark --checksum` prints them)",
        "--query q0|q1|q2|q3|q4|q5|q7|q8|q11|q12 --events N [--seed S]",
        nexmark,
    ));
    r.register(JobType::new(
        "bench-network",
        "keyed exchange of generated records of a given size (the job of `bench network`)",
        "--events N --keys K --record-bytes B",
        bench_network,
    ));
    r.register(JobType::new(
        "bench-window",
        "the keyed event-time window count of `bench window`",
        "--events N --keys K --window SPEC",
        bench_window,
    ));
    r.register(JobType::new(
        "bench-slow-sink",
        "generated records of a given size, keyed, into a sink that takes a fixed time per record (backpressure)",
        "--records N --record-bytes B --sink-delay-us US",
        bench_slow_sink,
    ));
    r.register(JobType::new(
        "bench-recovery",
        "a running sum per key whose attempts note their first record in a file (recovery time)",
        "--records N --keys K --marks FILE [--source-rate N] [--fail-after N]",
        bench_recovery,
    ));
    r.register(JobType::new(
        "bench-state",
        "a running sum per key over K keys (keyed state of K entries)",
        "--records N --keys K",
        bench_state,
    ));
    crate::latency::register(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn window_agg_takes_the_options_of_run_but_not_those_of_the_local_cluster() {
        let base = "--input in.csv --key user --time ts --window sliding:10s/5s --out-of-orderness 1s --agg avg:x \
                    --output out.csv";
        let a: WindowAggJobArgs = parse(&args(&format!("{base} --allowed-lateness 2s --late-output l.csv"))).unwrap();
        assert_eq!((a.job.allowed_lateness, a.job.late_output.as_deref()), (2000, Some(std::path::Path::new("l.csv"))));
        for (extra, message) in [
            ("-p 2", "unexpected argument '-p'"),
            ("--slots 2", "unexpected argument '--slots'"),
            ("--window hopping:1s", "--window"),
        ] {
            let e = parse::<WindowAggJobArgs>(&args(&format!("{base} {extra}"))).unwrap_err();
            assert!(e.contains(message), "{extra}: {e}");
        }
        assert!(registry().lookup("window-agg").is_ok());
    }
}
