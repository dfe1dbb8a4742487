//! `corestream run <example>` and `corestream plan <example>`; `run window-agg` is in
//! [`crate::window_agg`]. `run wordcount` and `run sum-by-key` with `--processes N` run as jobs of a JobManager
//! and N TaskManager processes ([`crate::cluster_run`]) and print the same lines as one process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use corestream::rpc::messages::Accumulator;
use corestream::{StreamEnvironment, TextFileOptions};
use corestream_bench::examples::{self, checksum, reference_sum_by_key, EXAMPLES};
use corestream_bench::throughput::{keyed_sum_job, passthrough_job};

use crate::args::{parse_keys, parse_positive_count, Common};
use crate::checkpointing::{CheckpointArgs, Paths};
use crate::progress::join_with_progress;
use crate::window_agg::{self, WindowAggArgs};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InvalidUtf8 {
    /// Skip such lines, count them and report them (exit status 0).
    Skip,
    /// Fail the run at the first line that is not valid UTF-8 (exit status 1; an earlier output
    /// is left as it was).
    Fail,
}

#[derive(Subcommand, Debug)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum RunCommand {
    /// Count words of a text file; writes `word<TAB>count` lines.
    Wordcount {
        /// The text to read: a file, or anything readable (a pipe, FIFO, `/dev/stdin`).
        #[arg(long)]
        input: PathBuf,
        /// Where the counts go: a file, replaced only when the job has succeeded, or `-` for
        /// standard output (the summary then goes to standard error).
        #[arg(long)]
        output: PathBuf,
        /// What to do with lines that are not valid UTF-8.
        #[arg(long, value_enum, default_value_t = InvalidUtf8::Skip)]
        on_invalid_utf8: InvalidUtf8,
        /// Longest line held in memory (e.g. 64K, 1M; at most 1G): a longer line is skipped,
        /// counted and reported with the byte offset of the first one.
        #[arg(long, value_parser = examples::parse_max_line_bytes, default_value = "1M")]
        max_line_bytes: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Sum generated values per key; prints a checksum of the per-key totals and events/s.
    ///
    /// With `--output DIR` the totals go to part files of DIR (`key,total` lines) through the
    /// exactly-once file sink, which checkpoints need: with `--checkpoint-interval` the job runs
    /// on the JobManager of the local cluster, restarts from its latest checkpoint after a
    /// failure, and a later run with `--resume` goes on from where a killed one stopped.
    SumByKey {
        #[arg(long, value_parser = parse_positive_count)]
        records: u64,
        #[arg(long, value_parser = parse_keys)]
        keys: u64,
        /// Directory for the totals' part files (required with checkpoints).
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        #[command(flatten)]
        checkpoints: CheckpointArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Aggregate a CSV file per key and event-time window (tumbling, sliding or session);
    /// writes `key,window_start,window_end,value` rows, and the late and rejected rows.
    ///
    /// `--parallelism` applies to the window operator; the source and the parser run in one
    /// subtask, so watermarks are emitted per record in file order.
    WindowAgg(WindowAggArgs),
}

pub fn run(cmd: RunCommand) -> anyhow::Result<()> {
    match cmd {
        RunCommand::WindowAgg(args) => window_agg::run(args),
        RunCommand::Wordcount { input, output, on_invalid_utf8, max_line_bytes, common } => {
            wordcount(&input, &output, on_invalid_utf8, max_line_bytes, &common)
        }
        RunCommand::SumByKey { records, keys, output, checkpoints, common } => {
            sum_by_key(records, keys, output.as_deref(), &checkpoints, &common)
        }
    }
}

/// `run sum-by-key`: inline on a local cluster, or by name (on the local cluster's JobManager,
/// or with `--processes` on TaskManager processes) when it writes part files, checkpoints or
/// restores.
fn sum_by_key(
    records: u64,
    keys: u64,
    output: Option<&Path>,
    checkpoints: &CheckpointArgs,
    common: &Common,
) -> anyhow::Result<()> {
    let here = std::env::current_dir().context("cannot read the current directory")?;
    let recovery = checkpoints.require_recovery(Paths::From(&here));
    if (recovery.checkpoints() || recovery.restore.is_some()) && output.is_none() {
        usage_error(
            "checkpoints and restores need --output DIR: the totals then go to part files through the exactly-once \
             file sink, which the checkpoints cover",
        );
    }
    let output = output.map(|dir| here.join(dir));
    if let Some(dir) = &output {
        crate::outputs::check_output_dir(dir, &[]).unwrap_or_else(|m| usage_error(format!("--output: {m}")));
    }
    let (result, got, found, network) = if common.processes > 1 || output.is_some() || checkpoints.any() {
        let mut args = vec!["--records".to_string(), records.to_string(), "--keys".to_string(), keys.to_string()];
        if let Some(dir) = &output {
            args.extend(["--output".to_string(), dir.display().to_string()]);
        }
        if let Some(rate) = common.source_rate {
            args.extend(["--source-rate".to_string(), rate.to_string()]);
        }
        let (outcome, recovered) = if common.processes > 1 {
            (crate::cluster_run::run_with(common, "sum-by-key", args, &recovery)?, Vec::new())
        } else {
            let run = crate::local_run::run(common, crate::jobs::registry(), "sum-by-key", args, &recovery)?;
            (run.outcome, run.recovered)
        };
        for (attempt, message) in &recovered {
            eprintln!("corestream: recovered from a failure of attempt {attempt}: {message}");
        }
        let (got, found) = match &output {
            Some(dir) => {
                let totals = examples::read_totals(dir).map_err(|e| anyhow::anyhow!(e))?;
                (checksum(totals.iter().copied()), totals.len())
            }
            None => {
                let got = match outcome.accumulators.get("checksum") {
                    Some(Accumulator::Checksum(c)) => *c,
                    other => bail!("the job reported no checksum ({other:?})"),
                };
                let found = match outcome.accumulators.get("keys") {
                    Some(Accumulator::Count(n)) => *n as usize,
                    other => bail!("the job reported no key count ({other:?})"),
                };
                (got, found)
            }
        };
        (Figures::from_outcome(&outcome), got, found, outcome.network.iter().map(|l| format!("network: {l}")).collect())
    } else {
        let cluster = common.cluster()?;
        let mut env = common.environment(&cluster);
        let totals = examples::sum_by_key(&mut env, records, keys);
        let handle = env.execute_async("sum-by-key")?;
        let collector = std::thread::spawn(move || totals.collect::<Vec<(u64, u64)>>());
        let result = join_with_progress(handle, "sum-by-key", Some(records))?;
        let collected = collector.join().map_err(|_| anyhow::anyhow!("the result reader panicked"))?;
        (Figures::from_result(&result), checksum(collected.iter().copied()), collected.len(), Vec::<String>::new())
    };
    let started = Instant::now();
    let expected = reference_sum_by_key(records, keys);
    let reference_time = started.elapsed();
    let expected_sum = checksum(expected.iter().copied());
    println!("sum-by-key: {records} records, {found} keys");
    println!(
        "checksum {got:016x} (reference {expected_sum:016x}: {})",
        if got == expected_sum && found == expected.len() { "match" } else { "MISMATCH" }
    );
    println!(
        "{:.0} events/s, wall {:.3} s (single-threaded reference: {:.3} s)",
        records as f64 / result.wall_time.as_secs_f64(),
        result.wall_time.as_secs_f64(),
        reference_time.as_secs_f64()
    );
    if let Some(dir) = &output {
        println!("totals -> {}", dir.display());
    }
    result.latency.iter().for_each(|line| println!("{line}"));
    network.iter().for_each(|line| println!("{line}"));
    if got != expected_sum || found != expected.len() {
        bail!("per-key totals differ from the reference");
    }
    Ok(())
}

/// `run wordcount`: the counts go to `output`, a file committed only when the job has
/// succeeded, or to standard output for `-` (the summary then goes to standard error).
fn wordcount(
    input: &Path,
    output: &Path,
    on_invalid_utf8: InvalidUtf8,
    max_line_bytes: usize,
    common: &Common,
) -> anyhow::Result<()> {
    let meta = std::fs::metadata(input).with_context(|| format!("cannot read input file '{}'", input.display()))?;
    if meta.is_dir() {
        bail!("cannot read input file '{}': Is a directory; give the path of a text file", input.display());
    }
    // `/dev/stdout` or a path to the file standard output is redirected to is standard output
    // too: replacing that file would lose what is printed to it.
    let to_stdout = output == Path::new("-") || corestream::fs::same_file(output, Path::new("/dev/stdout"));
    if !to_stdout {
        if let Err(e) = corestream::fs::check_output(output, &[input]) {
            usage_error(format_args!("--output: {e}"));
        }
    }
    let policy = match on_invalid_utf8 {
        InvalidUtf8::Skip => corestream::InvalidUtf8::Skip,
        InvalidUtf8::Fail => corestream::InvalidUtf8::Fail,
    };
    let options = TextFileOptions::default().invalid_utf8(policy).max_line_bytes(max_line_bytes);
    // The lines go to standard output in the host, as the job produces them.
    let build = |env: &mut StreamEnvironment| -> Option<std::thread::JoinHandle<std::io::Result<()>>> {
        if to_stdout {
            let lines = examples::wordcount_lines(env, input, options).collect();
            Some(std::thread::spawn(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                lines.into_iter().try_for_each(|line| writeln!(out, "{line}"))?;
                out.flush()
            }))
        } else {
            examples::wordcount_with(env, input, output, options);
            None
        }
    };
    let finish_printer = |printer: Option<std::thread::JoinHandle<std::io::Result<()>>>| -> anyhow::Result<()> {
        match printer.map(|p| p.join()) {
            None => Ok(()),
            Some(Ok(written)) => written.context("cannot write the counts to standard output"),
            Some(Err(_)) => bail!("the thread writing the counts to standard output panicked"),
        }
    };
    let (result, network) = if common.processes > 1 {
        if to_stdout {
            usage_error("--output -: with --processes the counts are written by a TaskManager process; give a file");
        }
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
        let args = vec![
            "--input".to_string(),
            absolute(input),
            "--output".to_string(),
            absolute(output),
            "--max-line-bytes".to_string(),
            max_line_bytes.to_string(),
            "--on-invalid-utf8".to_string(),
            match on_invalid_utf8 {
                InvalidUtf8::Skip => "skip",
                InvalidUtf8::Fail => "fail",
            }
            .to_string(),
        ];
        let outcome = crate::cluster_run::run(common, "wordcount", args)?;
        let network = outcome.network.iter().map(|l| format!("network: {l}")).collect();
        (Figures::from_outcome(&outcome), network)
    } else {
        let cluster = common.cluster()?;
        let mut env = common.environment(&cluster);
        let printer = build(&mut env);
        let result = env.execute_async("wordcount").and_then(|h| join_with_progress(h, "wordcount", None))?;
        finish_printer(printer)?;
        let result = Figures::from_result(&result);
        (result, Vec::new())
    };
    let mut report: Box<dyn Write> =
        if to_stdout { Box::new(std::io::stderr().lock()) } else { Box::new(std::io::stdout().lock()) };
    let lines = result.records_in("Tokenize");
    let words = result.records_in("Count");
    let distinct = result.records_in("Format");
    writeln!(
        report,
        "wordcount: {lines} lines, {words} words, {distinct} distinct words in {:.3} s ({:.0} lines/s) -> {}",
        result.wall_time.as_secs_f64(),
        lines as f64 / result.wall_time.as_secs_f64(),
        if to_stdout { "standard output".to_string() } else { output.display().to_string() }
    )?;
    for w in &result.warnings {
        eprintln!("warning: {w}");
    }
    result.latency.iter().try_for_each(|line| writeln!(report, "{line}"))?;
    network.iter().try_for_each(|line| writeln!(report, "{line}"))?;
    Ok(())
}

/// What `run` prints of a job, from a local result or a cluster's outcome.
struct Figures {
    wall_time: std::time::Duration,
    /// Records into operators, by name prefix.
    records_in: Vec<(String, u64)>,
    latency: Vec<String>,
    warnings: Vec<String>,
}

impl Figures {
    fn from_result(result: &corestream::JobResult) -> Self {
        let mut latency = Vec::new();
        let _ = write_latency(&mut latency, result);
        Self {
            wall_time: result.wall_time,
            records_in: result.operators.iter().map(|o| (o.name.clone(), o.records_in)).collect(),
            latency: String::from_utf8_lossy(&latency).lines().map(str::to_string).collect(),
            warnings: result.warnings.iter().map(|w| w.message.clone()).collect(),
        }
    }

    fn from_outcome(outcome: &corestream::jobmanager::api::JobOutcome) -> Self {
        Self {
            wall_time: std::time::Duration::from_millis(outcome.duration_ms),
            records_in: outcome.operators.iter().map(|o| (o.name.clone(), o.records_in)).collect(),
            latency: Vec::new(),
            warnings: outcome.warnings.clone(),
        }
    }

    fn records_in(&self, prefix: &str) -> u64 {
        self.records_in.iter().find(|(n, _)| n.starts_with(prefix)).map_or(0, |(_, r)| *r)
    }
}

/// Exits with status 2 and clap's formatting, like an argument clap itself refused: for
/// arguments that can only be checked against the file system.
fn usage_error(message: impl std::fmt::Display) -> ! {
    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{message}\n")).exit()
}

fn write_latency(out: &mut dyn Write, result: &corestream::JobResult) -> std::io::Result<()> {
    for l in &result.latency {
        writeln!(
            out,
            "latency {} <- source subtask {}: {} markers, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            l.sink,
            l.source_subtask,
            l.count,
            l.p50.as_secs_f64() * 1e3,
            l.p99.as_secs_f64() * 1e3,
            l.p99_9.as_secs_f64() * 1e3,
            l.max.as_secs_f64() * 1e3
        )?;
    }
    Ok(())
}

pub fn plan(example: &str, common: &Common) -> anyhow::Result<()> {
    let cluster = common.cluster()?;
    let mut env = common.environment(&cluster);
    match example {
        "wordcount" => {
            examples::wordcount(&mut env, "INPUT".as_ref(), "OUTPUT".as_ref(), corestream::InvalidUtf8::Skip)
        }
        "sum-by-key" => drop(examples::sum_by_key(&mut env, 1000, 10)),
        "passthrough" => passthrough_job(&env, 1000),
        "keyed-sum" => keyed_sum_job(&env, 1000, 10),
        other => {
            let known: Vec<&str> = EXAMPLES.iter().map(|(n, _)| *n).collect();
            bail!("unknown example '{other}'; known examples: {}", known.join(", "));
        }
    }
    print!("{}", env.explain()?);
    Ok(())
}
