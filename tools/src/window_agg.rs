//! `corestream run window-agg`: event-time window aggregation of a CSV file, as a streaming job.
//!
//! The job: a one-subtask source streams the input's lines with their line numbers; a process
//! function parses each row ([`corestream_bench::window_agg::parse_row`]) and sends rows it
//! cannot use to a side output; timestamps and per-record bounded-out-of-orderness watermarks
//! are assigned (per-record emission makes the firings deterministic and equal to the reference
//! model, [`corestream_bench::window_model`]); the rows are keyed by the key column and cut
//! into tumbling, sliding or session windows aggregated incrementally, with allowed lateness and
//! a side output for late rows. Only the window operator runs at `--parallelism`; everything
//! else runs at parallelism 1, so rejected rows reach the host in line order.
//!
//! I/O stays at the edge: the header is read and the columns resolved before the job starts
//! (an unknown column is a usage error, exit status 2), and the output, late and rejected-row
//! files are written only after the job has succeeded, so a failed run leaves none behind.
//! The output is sorted stably by (key, window start, window end): the firings of one window
//! come from one subtask in emission order (on-time, then late re-firings), so the sorted file
//! does not depend on the parallelism. Late rows are written in input order.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use corestream::{OutputTag, ProcessContext, WatermarkStrategy, WindowContext};
use corestream_bench::window_agg::{
    event_time_assigner, format_late, format_rejected, format_result, late_header, parse_agg, parse_duration_ms,
    parse_row, parse_trigger, parse_window_spec, resolve_columns, AggSpec, CsvSchema, Rejected, SpecError,
    OUTPUT_HEADER, REJECTED_HEADER,
};
use corestream_bench::window_model::{Event, WindowResult, WindowSpec};

use crate::args::Common;

/// The arguments of `corestream run window-agg`.
#[derive(Args, Debug)]
pub struct WindowAggArgs {
    /// CSV input with a header row.
    #[arg(long)]
    pub input: PathBuf,
    /// Column holding the key.
    #[arg(long)]
    pub key: String,
    /// Column holding the event time, in epoch milliseconds.
    #[arg(long)]
    pub time: String,
    /// tumbling:SIZE[@OFFSET], sliding:SIZE/SLIDE[@OFFSET] or session:GAP, e.g. tumbling:10s.
    #[arg(long, value_parser = parse_window_spec)]
    pub window: WindowSpec,
    /// Largest delay of a row behind the latest timestamp seen before it, e.g. 2s.
    #[arg(long, value_parser = parse_duration_ms)]
    pub out_of_orderness: i64,
    /// How long after its end a window still accepts late rows (each fires it again).
    #[arg(long, value_parser = parse_duration_ms, default_value = "0")]
    pub allowed_lateness: i64,
    /// count, sum:COL, min:COL, max:COL or avg:COL.
    #[arg(long, value_parser = parse_agg)]
    pub agg: AggSpec,
    /// When windows fire: event-time (default), count:N or continuous:DUR, optionally
    /// prefixed by purging: (clear the window at each firing).
    #[arg(long, value_parser = parse_trigger, default_value = "event-time")]
    pub trigger: corestream::Trigger,
    /// Output CSV: key,window_start,window_end,value, sorted by key, start and end.
    #[arg(long)]
    pub output: PathBuf,
    /// Where to write rows later than the allowed lateness (default: counted, not written).
    #[arg(long)]
    pub late_output: Option<PathBuf>,
    /// Where to write rows that cannot be used, with line numbers and reasons
    /// (default: OUTPUT.rejected.csv).
    #[arg(long)]
    pub rejected_output: Option<PathBuf>,
    /// Fail the run (exit status 1, no output) at the first row that cannot be used.
    #[arg(long)]
    pub fail_on_malformed: bool,
    #[command(flatten)]
    pub common: Common,
}

use corestream_bench::window_agg::{Rec, ValueAgg};
/// A window result: (key, start, end, value).
type Out = (String, i64, i64, f64);
/// A rejected row: (line number, reason, row text).
type Bad = (u64, String, String);
/// A line of the input: (line number, text, whether it was valid UTF-8).
type Line = (u64, String, bool);

/// Exits with status 2 and clap's formatting, like an argument clap itself refused. Used for
/// arguments that can only be checked against the input (the column names).
fn usage_error(message: impl std::fmt::Display) -> ! {
    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{message}\n")).exit()
}

/// Removes a line's `\n` and up to two `\r` before it, as `str::lines` followed by
/// [`corestream_bench::window_agg::parse_input`] does.
fn trim_line_end(mut line: &[u8]) -> &[u8] {
    line = line.strip_suffix(b"\n").unwrap_or(line);
    line = line.strip_suffix(b"\r").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What the source saw, shared between its slot thread and the host.
#[derive(Default)]
struct SourceStats {
    rows: AtomicU64,
    blank: AtomicU64,
    error: Mutex<Option<(u64, std::io::Error)>>,
}

/// The data lines of the input after its header, numbered from 2; blank lines are skipped
/// and counted. A read error ends the lines and is kept for the host to report.
struct Lines {
    reader: BufReader<File>,
    next_line: u64,
    buf: Vec<u8>,
    stats: Arc<SourceStats>,
}

impl Iterator for Lines {
    type Item = Line;

    fn next(&mut self) -> Option<Line> {
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    *self.stats.error.lock().unwrap_or_else(|e| e.into_inner()) = Some((self.next_line, e));
                    return None;
                }
            }
            let line_no = self.next_line;
            self.next_line += 1;
            let text = trim_line_end(&self.buf);
            if text.is_empty() {
                self.stats.blank.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.stats.rows.fetch_add(1, Ordering::Relaxed);
            return Some(match std::str::from_utf8(text) {
                Ok(s) => (line_no, s.to_string(), true),
                Err(_) => (line_no, String::from_utf8_lossy(text).into_owned(), false),
            });
        }
    }
}

/// Opens the input and resolves the columns from its header; returns the reader positioned
/// at line 2.
fn open_input(args: &WindowAggArgs) -> anyhow::Result<(BufReader<File>, CsvSchema)> {
    let input = &args.input;
    let meta = std::fs::metadata(input).with_context(|| format!("cannot read input file '{}'", input.display()))?;
    if meta.is_dir() {
        bail!("cannot read input file '{}': Is a directory; give the path of a CSV file", input.display());
    }
    let file = File::open(input).with_context(|| format!("cannot read input file '{}'", input.display()))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut header = Vec::new();
    let n = reader
        .read_until(b'\n', &mut header)
        .with_context(|| format!("cannot read input file '{}'", input.display()))?;
    if n == 0 {
        bail!("input file '{}' is empty; a header row is required", input.display());
    }
    // As `str::lines`: the header keeps all but one `\r` (the CSV splitter removes one more).
    let header = header.strip_suffix(b"\n").unwrap_or(&header);
    let header = header.strip_suffix(b"\r").unwrap_or(header);
    let header = std::str::from_utf8(header)
        .map_err(|_| anyhow::anyhow!("'{}' line 1: the header is not valid UTF-8", input.display()))?;
    match resolve_columns(header, &args.key, &args.time, args.agg.column()) {
        Ok(schema) => Ok((reader, schema)),
        Err(ref e @ (SpecError::UnknownColumn { ref column, .. } | SpecError::DuplicateColumn { ref column, .. })) => {
            let flag = if *column == args.key {
                "--key"
            } else if *column == args.time {
                "--time"
            } else {
                "--agg"
            };
            usage_error(format_args!("{flag}: {e} (input '{}')", input.display()))
        }
        Err(e) => bail!("'{}' line 1: {e}", input.display()),
    }
}

/// Timestamps, window lengths and durations must stay below this in magnitude (2^62 ms, about
/// 146 million years), so that no window or watermark arithmetic overflows (the reference
/// model's range). Rows outside it are rejected; arguments outside it are usage errors.
const TIME_LIMIT_MS: i64 = 1 << 62;

/// Exits with status 2 when a window length, offset or duration is outside [`TIME_LIMIT_MS`].
fn check_ranges(args: &WindowAggArgs) {
    let (lengths, offset): (&[(&str, i64)], i64) = match args.window {
        WindowSpec::Tumbling { size, offset } => (&[("size", size)], offset),
        WindowSpec::Sliding { size, slide, offset } => (&[("size", size), ("slide", slide)], offset),
        WindowSpec::Session { gap } => (&[("gap", gap)], 0),
    };
    for (what, ms) in lengths.iter().copied().chain([("offset", offset)]) {
        if ms >= TIME_LIMIT_MS {
            usage_error(format_args!("--window: the {what} {ms} ms is too large (at most {} ms)", TIME_LIMIT_MS - 1));
        }
    }
    for (flag, ms) in [("--out-of-orderness", args.out_of_orderness), ("--allowed-lateness", args.allowed_lateness)] {
        if ms >= TIME_LIMIT_MS {
            usage_error(format_args!("{flag}: {ms} ms is too large (at most {} ms)", TIME_LIMIT_MS - 1));
        }
    }
}

fn rejected_path(args: &WindowAggArgs) -> PathBuf {
    args.rejected_output.clone().unwrap_or_else(|| {
        let mut p = args.output.clone().into_os_string();
        p.push(".rejected.csv");
        PathBuf::from(p)
    })
}

/// Checks that the files written are distinct from each other and from the input.
fn check_paths(args: &WindowAggArgs, rejected: &Path) {
    let mut named: Vec<(&str, &Path)> = vec![("--input", &args.input), ("--output", &args.output)];
    if let Some(late) = &args.late_output {
        named.push(("--late-output", late));
    }
    named.push(("--rejected-output", rejected));
    for (i, (a, pa)) in named.iter().enumerate() {
        for (b, pb) in &named[..i] {
            if pa == pb {
                usage_error(format_args!("{a} and {b} are the same file '{}'; give different paths", pa.display()));
            }
        }
    }
    for (flag, path) in &named[1..] {
        if path.is_dir() {
            usage_error(format_args!("{flag} '{}' is a directory; give a file path", path.display()));
        }
    }
}

fn write_file(path: &Path, header: &str, lines: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let context = || format!("cannot write '{}'", path.display());
    let mut out = BufWriter::new(File::create(path).with_context(context)?);
    writeln!(out, "{header}").with_context(context)?;
    for line in lines {
        writeln!(out, "{line}").with_context(context)?;
    }
    out.into_inner().map_err(|e| e.into_error()).with_context(context)?.sync_data().with_context(context)?;
    Ok(())
}

fn collect_in_thread<T: Send + 'static>(stream: corestream::CollectStream<T>) -> std::thread::JoinHandle<Vec<T>> {
    std::thread::spawn(move || stream.collect())
}

pub fn run(args: WindowAggArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let rejected_out = rejected_path(&args);
    check_paths(&args, &rejected_out);
    check_ranges(&args);
    let (reader, schema) = open_input(&args)?;

    let cluster = args.common.cluster()?;
    let parallelism = args.common.parallelism.unwrap_or(cluster.num_slots());
    let mut env = args.common.environment(&cluster);
    // Everything but the window operator runs in one subtask (see the module documentation).
    env.set_parallelism(1);

    let stats = Arc::new(SourceStats::default());
    let lines = Lines { reader, next_line: 2, buf: Vec::with_capacity(256), stats: stats.clone() };
    let rejected_tag: OutputTag<Bad> = OutputTag::new("rejected");
    let late_tag: OutputTag<Rec> = OutputTag::new("late");

    let parse_schema = schema.clone();
    let parse_tag = rejected_tag.clone();
    let rows = env
        .from_iter(lines)
        .name("Source: CSV lines")
        .process(move || {
            let schema = parse_schema.clone();
            let tag = parse_tag.clone();
            move |(line_no, text, utf8): Line, ctx: &mut ProcessContext<'_, Rec>| {
                if !utf8 {
                    ctx.output(&tag, (line_no, "the line is not valid UTF-8".to_string(), text));
                    return;
                }
                match parse_row(&text, line_no, &schema) {
                    Ok(row) if row.ts.unsigned_abs() >= TIME_LIMIT_MS as u64 => {
                        let reason = format!(
                            "field '{}': {} is outside the supported range (±{} ms)",
                            schema.columns[schema.time],
                            row.ts,
                            TIME_LIMIT_MS - 1
                        );
                        ctx.output(&tag, (line_no, reason, text));
                    }
                    Ok(row) => ctx.collect((line_no, row.key, row.ts, row.value)),
                    Err(Rejected { line, reason }) => ctx.output(&tag, (line, reason, text)),
                }
            }
        })
        .name("Parse CSV");
    let rejected = rows.side_output(&rejected_tag).collect();

    let windowed = rows
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(args.out_of_orderness as u64))
                .with_timestamp_assigner(|r: &Rec| r.2)
                .with_per_record_emission(),
        )
        .key_by(|r: &Rec| r.1.clone())
        .window(event_time_assigner(args.window))
        .trigger(args.trigger.clone())
        .allowed_lateness(Duration::from_millis(args.allowed_lateness as u64))
        .side_output_late_data(&late_tag)
        .aggregate_process(
            ValueAgg(args.agg.agg()),
            |ctx: &WindowContext<'_, String>, value: f64, out: &mut Vec<Out>| {
                out.push((ctx.key.clone(), ctx.window.start, ctx.window.end, value))
            },
        )
        .set_parallelism(parallelism);
    let late = windowed.side_output(&late_tag).collect();
    let results = windowed.collect();

    let handle = env.execute_async("window-agg")?;
    let results = collect_in_thread(results);
    let late = collect_in_thread(late);
    // Rejected rows arrive in line order; with --fail-on-malformed the first one ends the run.
    let mut bad_rows: Vec<Bad> = Vec::new();
    for bad in rejected {
        if args.fail_on_malformed && bad_rows.is_empty() {
            handle.cancel();
        }
        bad_rows.push(bad);
    }
    let outcome = handle.join();
    let results = results.join().map_err(|_| anyhow::anyhow!("the result reader panicked"))?;
    let mut late = late.join().map_err(|_| anyhow::anyhow!("the late-row reader panicked"))?;
    let result = outcome?;
    if let Some((line, e)) = stats.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        bail!("cannot read input file '{}' at line {line}: {e}", args.input.display());
    }
    if let Some((line, reason, _)) = bad_rows.first().filter(|_| args.fail_on_malformed) {
        bail!(
            "'{}' line {line}: {reason} (--fail-on-malformed; without it such rows go to the rejected-rows file)",
            args.input.display()
        );
    }

    let mut results: Vec<WindowResult> =
        results.into_iter().map(|(key, start, end, value)| WindowResult { key, start, end, value }).collect();
    results.sort_by(|a, b| (&a.key, a.start, a.end).cmp(&(&b.key, b.start, b.end)));
    write_file(&args.output, OUTPUT_HEADER, results.iter().map(format_result))?;
    late.sort_by_key(|r| r.0);
    if let Some(path) = &args.late_output {
        let lines = late
            .iter()
            .map(|(_, key, ts, value)| format_late(&Event { key: key.clone(), ts: *ts, value: *value }, &schema));
        write_file(path, &late_header(&schema), lines)?;
    }
    write_file(
        &rejected_out,
        REJECTED_HEADER,
        bad_rows
            .iter()
            .map(|(line, reason, row)| format_rejected(&Rejected { line: *line, reason: reason.clone() }, row)),
    )?;

    let rows_read = stats.rows.load(Ordering::Relaxed);
    let blank = stats.blank.load(Ordering::Relaxed);
    println!(
        "window-agg: {rows_read} rows read, {} rejected, {} late, {} window results in {:.3} s \
         (job {:.3} s) -> {}",
        bad_rows.len(),
        late.len(),
        results.len(),
        started.elapsed().as_secs_f64(),
        result.wall_time.as_secs_f64(),
        args.output.display()
    );
    if blank > 0 {
        println!("  {blank} blank line(s) skipped");
    }
    if let Some((line, reason, _)) = bad_rows.first() {
        eprintln!(
            "warning: {} row(s) could not be used and were written to '{}' (first: line {line}: {reason})",
            bad_rows.len(),
            rejected_out.display()
        );
    }
    match &args.late_output {
        Some(path) if !late.is_empty() => println!("  late rows -> {}", path.display()),
        None if !late.is_empty() => {
            eprintln!(
                "warning: {} row(s) arrived after the allowed lateness; give --late-output to keep them",
                late.len()
            )
        }
        _ => {}
    }
    for w in &result.warnings {
        eprintln!("warning: {}", w.message);
    }
    Ok(())
}
