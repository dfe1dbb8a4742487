//! The `window-agg` job type of a cluster: the graph of `run window-agg` ([`super::declare`])
//! ending in the job's own sinks instead of the host's collect streams, so that a JobManager
//! and TaskManager processes can run it by name.
//!
//! The three sinks run at parallelism 1, in the TaskManager of job slot 0 (with the source and
//! the parser); the window operator runs at the job's parallelism, spread over the
//! TaskManagers. The results are held by their sink until the input has ended and then written
//! sorted as `run` sorts them; the late rows likewise, in input order (line number); the
//! rejected rows arrive in line order and are streamed to their file. Held rows take the
//! memory `run` takes for them in its host. Every file is staged ([`AtomicFile`]) and handed to
//! the job's commits, which the TaskManager commits only when the JobMaster says every part of
//! the job has finished, so a failed or cancelled job leaves earlier files as they were. The
//! figures of `run`'s summary line become accumulators, summed by the JobMaster over the
//! TaskManagers. `--fail-on-malformed` fails the job at the first rejected row, naming it.
//!
//! Refused on a cluster, because a TaskManager process cannot honour them: `--output -` (the
//! results would go to a TaskManager's standard output) and an input that is not a regular
//! file (the JobManager reads the header to check the columns and the source's TaskManager
//! reads the file again, which a pipe or `/dev/stdin` cannot give twice).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corestream::fs::AtomicFile;
use corestream::registry::JobParts;
use corestream::rpc::messages::{Accumulator, Accumulators};
use corestream::{Data, JobCommits, Sink, SinkContext, SinkError, StreamEnvironment};
use corestream_bench::window_agg::{format_rejected, format_result, late_header, Rec, Rejected};
use corestream_bench::window_agg::{OUTPUT_HEADER, REJECTED_HEADER};
use corestream_bench::window_model::WindowResult;

use super::{
    check_paths, check_ranges, declare, fail_on_malformed_message, late_line, open_input, rejected_path, sort_results,
    to_stdout, Bad, Out, SourceStats, WindowAggOptions,
};

/// Accumulator: the input's data rows (blank lines not counted), as `run`'s "rows read".
pub const ROWS_READ: &str = "rows-read";
/// Accumulator: rows that could not be used.
pub const ROWS_REJECTED: &str = "rows-rejected";
/// Accumulator: rows later than the allowed lateness.
pub const ROWS_LATE: &str = "rows-late";
/// Accumulator: lines of results (window firings).
pub const WINDOW_RESULTS: &str = "window-results";
/// Accumulator: blank lines skipped.
pub const BLANK_LINES: &str = "blank-lines";
/// Accumulator: lines longer than `--max-line-bytes` (rejected).
pub const LONG_LINES: &str = "long-lines";

/// What the sinks of one process counted, for its part's accumulators.
#[derive(Default)]
struct SinkCounts {
    results: Arc<AtomicU64>,
    late: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
}

/// Writes what a [`HoldingSink`] held, header included, once its input has ended.
type Render<T> = dyn Fn(Vec<T>, &mut dyn Write) -> std::io::Result<()> + Send + Sync;

/// A file a [`HoldingSink`] writes at the end of its input.
struct HeldFile<T> {
    path: PathBuf,
    render: Arc<Render<T>>,
}

/// Counts its records and holds them until the end of the input, then writes them to a
/// staged file (none: counted only).
struct HoldingSink<T> {
    rows: Vec<T>,
    count: Arc<AtomicU64>,
    file: Option<HeldFile<T>>,
    commits: JobCommits,
}

impl<T: Data> Sink<T> for HoldingSink<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if self.file.is_some() {
            self.rows.append(batch);
        } else {
            batch.clear();
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let Some(file) = self.file.take() else { return Ok(()) };
        let cannot = |e: std::io::Error| format!("cannot write '{}': {e}", file.path.display());
        let mut out = BufWriter::with_capacity(256 * 1024, AtomicFile::create(&file.path)?);
        (file.render)(std::mem::take(&mut self.rows), &mut out).map_err(cannot)?;
        let staged = out.into_inner().map_err(|e| cannot(e.into_error()))?;
        self.commits.stage(Box::new(staged));
        Ok(())
    }
}

/// Streams the rejected rows (which arrive in line order) to their staged file; with
/// `--fail-on-malformed` fails the job at the first one instead.
struct RejectedSink {
    out: Option<BufWriter<AtomicFile>>,
    path: PathBuf,
    count: Arc<AtomicU64>,
    /// The input, when `--fail-on-malformed` was given.
    fail: Option<PathBuf>,
    commits: JobCommits,
}

impl RejectedSink {
    fn create(
        path: Option<&Path>,
        fail: Option<&Path>,
        count: Arc<AtomicU64>,
        ctx: SinkContext,
    ) -> Result<Self, SinkError> {
        let out = match (path, fail) {
            (Some(path), None) => {
                let mut out = BufWriter::with_capacity(64 * 1024, AtomicFile::create(path)?);
                writeln!(out, "{REJECTED_HEADER}").map_err(|e| format!("cannot write '{}': {e}", path.display()))?;
                Some(out)
            }
            _ => None,
        };
        Ok(Self {
            out,
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            count,
            fail: fail.map(Path::to_path_buf),
            commits: ctx.commits,
        })
    }
}

impl Sink<Bad> for RejectedSink {
    fn write_batch(&mut self, batch: &mut Vec<Bad>) -> Result<(), SinkError> {
        for (line, reason, row) in batch.drain(..) {
            self.count.fetch_add(1, Ordering::Relaxed);
            if let Some(input) = &self.fail {
                return Err(fail_on_malformed_message(input, line, &reason).into());
            }
            if let Some(out) = self.out.as_mut() {
                writeln!(out, "{}", format_rejected(&Rejected { line, reason }, &row))
                    .map_err(|e| format!("cannot write the rejected rows to '{}': {e}", self.path.display()))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Some(out) = self.out.take() {
            let staged =
                out.into_inner().map_err(|e| format!("cannot write '{}': {}", self.path.display(), e.into_error()))?;
            self.commits.stage(Box::new(staged));
        }
        Ok(())
    }
}

/// Why the options cannot run on a cluster (see the module documentation), if they cannot.
fn refuse_on_cluster(args: &WindowAggOptions) -> Result<(), String> {
    if to_stdout(args) {
        return Err("--output -: on a cluster the results are written by a TaskManager process, whose standard \
                    output is not yours; give a file path (or use `corestream run window-agg`)"
            .to_string());
    }
    let input = &args.input;
    let meta = std::fs::metadata(input).map_err(|e| format!("cannot read input file '{}': {e}", input.display()))?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(format!(
            "--input '{}' is not a regular file: on a cluster the JobManager reads its header and a TaskManager \
             reads it again, which a pipe, a device or standard input cannot give twice; give a file (or use \
             `corestream run window-agg`)",
            input.display()
        ));
    }
    Ok(())
}

/// Declares the `window-agg` job on `env` (whose parallelism is the job's): the checks of
/// `run window-agg` that do not exit, the graph of [`declare`] and the job's sinks. Only the
/// JobManager (`planning`) checks the output paths; every process reads the header.
pub fn build(
    env: &mut StreamEnvironment,
    args: &WindowAggOptions,
    planning: bool,
    checkpoints: bool,
) -> Result<JobParts, String> {
    refuse_on_cluster(args)?;
    if checkpoints {
        return build_to_parts(env, args, planning);
    }
    let rejected = rejected_path(args);
    if planning {
        check_paths(args, rejected.as_deref())?;
    }
    check_ranges(args)?;
    let (_, schema) = open_input(args).map_err(|e| e.to_string())?;
    let parallelism = env.config().parallelism.unwrap_or_else(|| env.cluster().num_slots()).max(1);
    env.set_parallelism(1);
    let stats = Arc::new(SourceStats::default());
    let streams = declare(env, args, &schema, None, stats.clone(), parallelism);
    let counts = SinkCounts::default();

    let count = counts.results.clone();
    let path = args.output.clone();
    let render: Arc<Render<Out>> = Arc::new(|rows, out| {
        writeln!(out, "{OUTPUT_HEADER}")?;
        for r in sort_results(rows) {
            writeln!(out, "{}", format_result(&r))?;
        }
        Ok(())
    });
    streams
        .results
        .add_sink("Sink: window results", move |ctx| {
            let file = Some(HeldFile { path: path.clone(), render: render.clone() });
            Ok(HoldingSink { rows: Vec::new(), count: count.clone(), file, commits: ctx.commits })
        })
        .set_parallelism(1);

    let count = counts.late.clone();
    let late_path = args.late_output.clone();
    let late_schema = schema.clone();
    let render: Arc<Render<Rec>> = Arc::new(move |mut rows, out| {
        writeln!(out, "{}", late_header(&late_schema))?;
        rows.sort_by_key(|r| r.0);
        for r in &rows {
            writeln!(out, "{}", late_line(r, &late_schema))?;
        }
        Ok(())
    });
    streams
        .late
        .add_sink("Sink: late rows", move |ctx| {
            let file = late_path.clone().map(|path| HeldFile { path, render: render.clone() });
            Ok(HoldingSink { rows: Vec::new(), count: count.clone(), file, commits: ctx.commits })
        })
        .set_parallelism(1);

    let count = counts.rejected.clone();
    let fail = args.fail_on_malformed.then(|| args.input.clone());
    streams
        .rejected
        .add_sink("Sink: rejected rows", move |ctx| {
            RejectedSink::create(rejected.as_deref(), fail.as_deref(), count.clone(), ctx)
        })
        .set_parallelism(1);

    if planning {
        return Ok(JobParts::none());
    }
    Ok(JobParts::with_accumulators(move || {
        let load = |n: &AtomicU64| Accumulator::Count(n.load(Ordering::Relaxed));
        Ok(Accumulators::from([
            (ROWS_READ.to_string(), load(&stats.rows)),
            (ROWS_REJECTED.to_string(), load(&counts.rejected)),
            (ROWS_LATE.to_string(), load(&counts.late)),
            (WINDOW_RESULTS.to_string(), load(&counts.results)),
            (BLANK_LINES.to_string(), load(&stats.blank)),
            (LONG_LINES.to_string(), load(&stats.too_long)),
        ]))
    }))
}

/// Where the rejected rows go in a job with checkpoints: `--rejected-output`, or the directory
/// `OUTPUT.rejected` beside the output directory.
pub fn rejected_dir(args: &WindowAggOptions) -> PathBuf {
    args.rejected_output.clone().unwrap_or_else(|| {
        let mut name = args.output.as_os_str().to_os_string();
        name.push(".rejected");
        PathBuf::from(name)
    })
}

/// The job with checkpoints: every output is a directory of part files written through the
/// exactly-once file sink (the results as `key,window_start,window_end,value` lines from the
/// window's subtasks, the late rows beside them, the rejected rows from the parser's subtask),
/// so what a restored job writes again replaces what the failed attempt left uncommitted, and
/// nothing is held in memory until the end. The lines are those of `run`'s files without their
/// header and order: sorted, the results are `run`'s output. The figures come from the
/// source's checkpointed counts and from the committed files.
fn build_to_parts(env: &mut StreamEnvironment, args: &WindowAggOptions, planning: bool) -> Result<JobParts, String> {
    let rejected = (!args.fail_on_malformed).then(|| rejected_dir(args));
    if planning {
        let inputs = [args.input.as_path()];
        let mut dirs: Vec<(&str, &Path)> = vec![("--output", args.output.as_path())];
        dirs.extend(args.late_output.as_deref().map(|p| ("--late-output", p)));
        dirs.extend(rejected.as_deref().map(|p| ("--rejected-output", p)));
        for (i, (flag, dir)) in dirs.iter().enumerate() {
            crate::outputs::check_output_dir(dir, &inputs).map_err(|e| format!("{flag}: {e}"))?;
            if let Some((other, _)) = dirs[..i].iter().find(|(_, d)| d == dir) {
                return Err(format!("{flag} and {other} are the same directory '{}'", dir.display()));
            }
        }
    }
    check_ranges(args)?;
    let (_, schema) = open_input(args).map_err(|e| e.to_string())?;
    let parallelism = env.config().parallelism.unwrap_or_else(|| env.cluster().num_slots()).max(1);
    env.set_parallelism(1);
    let stats = Arc::new(SourceStats::default());
    let streams = declare(env, args, &schema, None, stats.clone(), parallelism);
    let options = corestream::FileSinkOptions::default();
    streams
        .results
        .map(|(key, start, end, value): Out| format_result(&WindowResult { key, start, end, value }))
        .name("Format results")
        .set_parallelism(parallelism)
        .sink_to_files(args.output.clone(), options)
        .name("Sink: window results")
        .set_parallelism(parallelism);
    match &args.late_output {
        Some(dir) => {
            let late_schema = schema.clone();
            streams
                .late
                .map(move |row: Rec| late_line(&row, &late_schema))
                .name("Format late rows")
                .set_parallelism(parallelism)
                .sink_to_files(dir.clone(), options)
                .name("Sink: late rows")
                .set_parallelism(parallelism);
        }
        None => {
            streams.late.add_sink("Sink: late rows", |_| Ok(Discard)).set_parallelism(parallelism);
        }
    }
    match rejected {
        Some(dir) => {
            streams
                .rejected
                .map(|(line, reason, row): Bad| format_rejected(&Rejected { line, reason }, &row))
                .name("Format rejected rows")
                .sink_to_files(dir, options)
                .name("Sink: rejected rows");
        }
        None => {
            let input = args.input.clone();
            streams.rejected.add_sink("Sink: rejected rows", move |ctx| {
                RejectedSink::create(None, Some(&input), Arc::new(AtomicU64::new(0)), ctx)
            });
        }
    }
    if planning {
        return Ok(JobParts::none());
    }
    Ok(JobParts::with_accumulators(move || {
        let load = |n: &AtomicU64| Accumulator::Count(n.load(Ordering::Relaxed));
        Ok(Accumulators::from([
            (ROWS_READ.to_string(), load(&stats.rows)),
            (BLANK_LINES.to_string(), load(&stats.blank)),
            (LONG_LINES.to_string(), load(&stats.too_long)),
        ]))
    }))
}

/// Drops what it is given (late rows nobody asked to keep).
struct Discard;

impl<T: Data> Sink<T> for Discard {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        batch.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;
    use corestream::{ClusterConfig, LocalCluster};

    use super::*;

    #[derive(Parser, Debug)]
    #[command(no_binary_name = true)]
    struct Cli {
        #[command(flatten)]
        job: WindowAggOptions,
    }

    fn golden(case: &str, suffix: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/window-agg/{case}.{suffix}"))
    }

    /// The options of golden case `case` with its outputs in `dir`, plus `extra`.
    fn options(case: &str, dir: &Path, extra: &[&str]) -> WindowAggOptions {
        let line = std::fs::read_to_string(golden(case, "args")).unwrap();
        let mut args: Vec<String> = line
            .split_whitespace()
            .map(|w| match w {
                "{input}" => golden(case, "input.csv").display().to_string(),
                "{output}" | "{late}" | "{rejected}" => dir.join(w.trim_matches(['{', '}'])).display().to_string(),
                other => other.to_string(),
            })
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Cli::try_parse_from(args).unwrap().job
    }

    fn plan(args: &WindowAggOptions) -> Result<String, String> {
        let cluster = LocalCluster::planner(ClusterConfig::default(), 3);
        let mut env = cluster.environment();
        env.set_parallelism(3);
        build(&mut env, args, true, false)?;
        env.explain().map_err(|e| e.to_string())
    }

    #[test]
    fn the_job_plans_the_window_at_the_job_parallelism_and_the_rest_at_one() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(&options("lateness", dir.path(), &[])).unwrap();
        for part in [
            "[parallelism 1, max parallelism 128]: Source: CSV lines -> Parse CSV -> Timestamps/Watermarks",
            "[parallelism 3, max parallelism 128]: Window(Aggregate)",
            "Sink: window results",
            "Sink: late rows",
            "Sink: rejected rows",
        ] {
            assert!(plan.contains(part), "{part:?} not in:\n{plan}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "planning writes no file");
    }

    #[test]
    fn what_a_cluster_cannot_do_is_refused_when_planned() {
        let dir = tempfile::tempdir().unwrap();
        let base = options("malformed", dir.path(), &[]);
        let input = base.input.clone();
        type Change<'a> = &'a dyn Fn(&mut WindowAggOptions);
        let cases: [(Change<'_>, &str); 5] = [
            (&|a| a.output = "-".into(), "--output -: on a cluster the results are written by a TaskManager process"),
            (&|a| a.input = "/dev/null".into(), "--input '/dev/null' is not a regular file"),
            (&|a| a.input = "/nonexistent/in.csv".into(), "cannot read input file '/nonexistent/in.csv'"),
            (&|a| a.key = "nope".into(), "--key: "),
            (&|a| a.rejected_output = Some(input.clone()), "--rejected-output: "),
        ];
        for (change, message) in cases {
            let mut args = base.clone();
            change(&mut args);
            let e = plan(&args).unwrap_err();
            assert!(e.contains(message), "{message:?} not in {e:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "planning writes no file");
    }

    /// The job on a local cluster of two slots, built as a TaskManager builds it: the files
    /// are the golden ones once the job has committed them, and the accumulators count them.
    #[test]
    fn the_job_writes_the_golden_files_through_its_own_sinks() {
        for (case, late, rejected) in [("lateness", true, false), ("malformed", false, true)] {
            let dir = tempfile::tempdir().unwrap();
            let args = options(case, dir.path(), &[]);
            let cluster = LocalCluster::start(ClusterConfig { slots: Some(2), ..ClusterConfig::default() }).unwrap();
            let mut env = cluster.environment();
            env.set_parallelism(2);
            let parts = build(&mut env, &args, false, false).unwrap();
            env.execute("window-agg").unwrap();
            let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert_eq!(read("output"), std::fs::read_to_string(golden(case, "expected.csv")).unwrap(), "{case}");
            if late {
                assert_eq!(read("late"), std::fs::read_to_string(golden(case, "expected-late.csv")).unwrap());
            }
            let rejected_written = if rejected { read("rejected") } else { read("output.rejected.csv") };
            if rejected {
                assert_eq!(rejected_written, std::fs::read_to_string(golden(case, "expected-rejected.csv")).unwrap());
            } else {
                assert_eq!(rejected_written, format!("{REJECTED_HEADER}\n"));
            }
            let acc = parts.finish().unwrap();
            let count = |name: &str| match acc.get(name) {
                Some(Accumulator::Count(n)) => *n,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(count(WINDOW_RESULTS) as usize, read("output").lines().count() - 1, "{case}");
            assert_eq!(count(ROWS_REJECTED) as usize, rejected_written.lines().count() - 1, "{case}");
            if late {
                assert_eq!(count(ROWS_LATE) as usize, read("late").lines().count() - 1, "{case}");
            }
            let data_rows = std::fs::read_to_string(golden(case, "input.csv")).unwrap().lines().skip(1).count();
            assert_eq!((count(ROWS_READ) + count(BLANK_LINES)) as usize, data_rows, "{case}");
        }
    }

    /// `--fail-on-malformed` fails the job at the first rejected row, and nothing is committed.
    #[test]
    fn fail_on_malformed_fails_the_job_naming_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let args = options("malformed", dir.path(), &["--fail-on-malformed"]);
        let cluster = LocalCluster::start(ClusterConfig { slots: Some(2), ..ClusterConfig::default() }).unwrap();
        let mut env = cluster.environment();
        env.set_parallelism(2);
        build(&mut env, &args, false, false).unwrap();
        let e = env.execute("window-agg").unwrap_err().to_string();
        assert!(e.contains("line 3: missing field 'amount'") && e.contains("--fail-on-malformed"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing committed");
    }
}
