//! `corestream run window-agg`: event-time window aggregation of a CSV file, as a streaming job.
//!
//! The job: a one-subtask source streams the input's lines with their line numbers; a process
//! function parses each row ([`corestream_bench::window_agg::parse_row`]) and sends rows it
//! cannot use to a side output; timestamps and per-record bounded-out-of-orderness watermarks
//! are assigned (per-record emission makes the firings deterministic and equal to the reference
//! model, [`corestream_bench::window_model`]); the rows are keyed by the key column and cut
//! into tumbling, sliding or session windows aggregated incrementally and exactly
//! ([`corestream_bench::exact`]), with allowed lateness and a side output for late rows. Only
//! the window operator runs at `--parallelism`; everything else runs at parallelism 1, so
//! rejected rows reach the host in line order.
//!
//! Memory is bounded on any input: lines are read with [`LineReader`], which holds at most
//! `--max-line-bytes` of a line (a longer data row is rejected with its line number, byte
//! offset and a bounded prefix; a longer header fails the run), and keys and rejected-row texts
//! are capped so that every record fits in one network buffer.
//!
//! I/O stays at the edge: the output paths are validated ([`check_output`]: not a directory or
//! device, not the input, not each other) and the header is read and the columns resolved
//! before the job starts (a problem there is a usage error, exit status 2); the output, late
//! and rejected-row files are staged ([`AtomicFile`]) and committed only after the job has
//! succeeded, so a failed run leaves earlier files byte for byte as they were and nothing
//! staged behind. `--output -` writes the results to standard output and every summary line to
//! standard error; the rejected rows then need `--rejected-output` (or `--fail-on-malformed`).
//! The output is sorted stably by (key, window start, window end): the firings of one window
//! come from one subtask in emission order (on-time, then late re-firings), so the sorted file
//! does not depend on the parallelism. Late rows are written in input order.
//!
//! The same graph ([`declare`]) is the `window-agg` job type of a cluster ([`job`]): there the
//! job's own sinks, at parallelism 1 in the TaskManager of job slot 0, write the three files,
//! staged and committed when the JobMaster says every part has finished.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use corestream::api::lines::LineReader;
use corestream::fs::AtomicFile;
use corestream::{OutputTag, ProcessContext, WatermarkStrategy, WindowContext};
use corestream_bench::exact::Num;
use corestream_bench::examples::parse_max_line_bytes;
use corestream_bench::window_agg::{
    event_time_assigner, format_late, format_rejected, format_result, late_header, parse_agg, parse_duration_ms,
    parse_row, parse_trigger, parse_window_spec, resolve_columns, AggSpec, CsvSchema, Rejected, SpecError,
    OUTPUT_HEADER, REJECTED_HEADER,
};
use corestream_bench::window_model::{Event, WindowResult, WindowSpec};

use crate::args::Common;

pub mod job;

/// The options of a window aggregation, shared by `corestream run window-agg` and the
/// `window-agg` job type of a cluster.
#[derive(Args, Debug, Clone)]
pub struct WindowAggOptions {
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
    /// Output CSV: key,window_start,window_end,value, sorted by key, start and end; `-` for
    /// standard output (summary lines then go to standard error, and the rejected rows need
    /// --rejected-output).
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
    /// Longest line held in memory (e.g. 64K, 1M; at most 1G). A longer data row is rejected
    /// with its line number and byte offset (its first bytes shown); a longer header fails.
    #[arg(long, value_parser = parse_line_limit, default_value = "1M")]
    pub max_line_bytes: u32,
}

/// The arguments of `corestream run window-agg`.
#[derive(Args, Debug)]
pub struct WindowAggArgs {
    #[command(flatten)]
    pub job: WindowAggOptions,
    #[command(flatten)]
    pub checkpoints: crate::checkpointing::CheckpointArgs,
    #[command(flatten)]
    pub common: Common,
}

use corestream_bench::window_agg::{Rec, ValueAgg};
/// A window result: (key, start, end, value).
type Out = (String, i64, i64, Num);
/// A rejected row: (line number, reason, row text, at most [`ROW_TEXT_BYTES_MAX`] bytes).
type Bad = (u64, String, String);
/// A line of the input: (line number, text, why the source already rejects it).
type Line = (u64, String, Option<String>);

/// Longest key, in bytes: a row and a window result must fit in one record (32 KB buffers).
const KEY_BYTES_MAX: usize = 16 * 1024;
/// Longest row text written to the rejected rows; a longer one is cut (and the reason says so).
const ROW_TEXT_BYTES_MAX: usize = 4096;
const _: () = assert!(KEY_BYTES_MAX + ROW_TEXT_BYTES_MAX + 1024 <= corestream_netstack::record::MAX_RECORD_BYTES);

/// At most `max` bytes of `text`, cut at a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A rejected row whose text is cut to [`ROW_TEXT_BYTES_MAX`] bytes, saying so in the reason.
fn bad_row(line: u64, mut reason: String, text: &str) -> Bad {
    let shown = prefix(text, ROW_TEXT_BYTES_MAX);
    if shown.len() < text.len() {
        reason.push_str(&format!(" (row of {} bytes; its first {} bytes shown)", text.len(), shown.len()));
    }
    (line, reason, shown.to_string())
}

/// Exits with status 2 and clap's formatting, like an argument clap itself refused. Used for
/// arguments that can only be checked against the input (the column names).
fn usage_error(message: impl std::fmt::Display) -> ! {
    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{message}\n")).exit()
}

/// Why a window aggregation cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An argument that cannot be used (`run` exits with status 2).
    Usage(String),
    /// The input cannot be read or its header cannot be used (`run` exits with status 1).
    Input(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Usage(m) | Refusal::Input(m) => f.write_str(m),
        }
    }
}

/// What the source saw, shared between its slot thread and whoever reports the counts.
#[derive(Default)]
struct SourceStats {
    rows: AtomicU64,
    blank: AtomicU64,
    too_long: AtomicU64,
}

/// The source of the data lines of the input after its header, numbered from 2; blank lines
/// are skipped and counted. A read error fails the job naming the line. At most
/// `max_line_bytes` of a line are held (see the module documentation).
struct LinesSource {
    input: PathBuf,
    reader: LineReader<BufReader<File>>,
    next_line: u64,
    buf: Vec<u8>,
    stats: Arc<SourceStats>,
}

impl LinesSource {
    fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let Some(info) = self.reader.read_line(&mut self.buf)? else { return Ok(None) };
            let line_no = self.next_line;
            self.next_line += 1;
            // As `str::lines` followed by `parse_input`: up to two `\r` before the `\n` go.
            let text = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
            if text.is_empty() && !info.too_long {
                self.stats.blank.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.stats.rows.fetch_add(1, Ordering::Relaxed);
            if info.too_long {
                self.stats.too_long.fetch_add(1, Ordering::Relaxed);
                let shown = String::from_utf8_lossy(&text[..text.len().min(ROW_TEXT_BYTES_MAX)]).into_owned();
                let reason = format!(
                    "the line is longer than --max-line-bytes {} ({} bytes at byte offset {}); its first bytes are \
                     shown",
                    self.reader.max_line_bytes(),
                    info.stream_bytes,
                    info.offset
                );
                return Ok(Some((line_no, prefix(&shown, ROW_TEXT_BYTES_MAX).to_string(), Some(reason))));
            }
            return Ok(Some(match std::str::from_utf8(text) {
                Ok(s) => (line_no, s.to_string(), None),
                Err(_) => {
                    (line_no, String::from_utf8_lossy(text).into_owned(), Some("the line is not valid UTF-8".into()))
                }
            }));
        }
    }
}

/// Where a [`LinesSource`] is, as its checkpoints record it: the byte offset and number of the
/// next line, and what it has counted so far (so a restored run reports the whole input).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LinesPosition {
    offset: u64,
    next_line: u64,
    rows: u64,
    blank: u64,
    too_long: u64,
}

impl corestream::SourceFunction<Line> for LinesSource {
    const REWINDABLE: bool = true;

    fn snapshot_state(&mut self) -> Result<Vec<u8>, corestream::SourceError> {
        let position = LinesPosition {
            offset: self.reader.offset(),
            next_line: self.next_line,
            rows: self.stats.rows.load(Ordering::Relaxed),
            blank: self.stats.blank.load(Ordering::Relaxed),
            too_long: self.stats.too_long.load(Ordering::Relaxed),
        };
        serde_json::to_vec(&position).map_err(|e| format!("cannot record the CSV source's position: {e}").into())
    }

    fn restore_state(&mut self, position: &[u8]) -> Result<(), corestream::SourceError> {
        let p: LinesPosition = serde_json::from_slice(position)
            .map_err(|e| format!("the checkpoint's position of the CSV source is not valid: {e}"))?;
        let len = std::fs::metadata(&self.input).map(|m| m.len()).unwrap_or(u64::MAX);
        if p.offset > len {
            return Err(format!(
                "the checkpoint's position in '{}' (byte {}) is past its end ({len} bytes): the input changed",
                self.input.display(),
                p.offset
            )
            .into());
        }
        self.reader
            .seek(p.offset)
            .map_err(|e| format!("cannot seek '{}' to byte {}: {e}", self.input.display(), p.offset))?;
        self.next_line = p.next_line;
        self.stats.rows.store(p.rows, Ordering::Relaxed);
        self.stats.blank.store(p.blank, Ordering::Relaxed);
        self.stats.too_long.store(p.too_long, Ordering::Relaxed);
        Ok(())
    }

    fn next_batch(
        &mut self,
        out: &mut Vec<Line>,
        max_records: usize,
    ) -> Result<corestream::SourceStatus, corestream::SourceError> {
        for _ in 0..max_records {
            match self.next_line() {
                Ok(Some(line)) => out.push(line),
                Ok(None) => return Ok(corestream::SourceStatus::Finished),
                Err(e) => {
                    return Err(format!(
                        "cannot read input file '{}' at line {}: {e}",
                        self.input.display(),
                        self.next_line
                    )
                    .into())
                }
            }
        }
        Ok(corestream::SourceStatus::More)
    }
}

/// Opens the input and resolves the columns from its header; returns the reader positioned
/// at line 2.
fn open_input(args: &WindowAggOptions) -> Result<(LineReader<BufReader<File>>, CsvSchema), Refusal> {
    let input = &args.input;
    let cannot_read = |e: std::io::Error| Refusal::Input(format!("cannot read input file '{}': {e}", input.display()));
    let meta = std::fs::metadata(input).map_err(cannot_read)?;
    if meta.is_dir() {
        return Err(Refusal::Input(format!(
            "cannot read input file '{}': Is a directory; give the path of a CSV file",
            input.display()
        )));
    }
    let file = File::open(input).map_err(cannot_read)?;
    let mut reader = LineReader::new(BufReader::with_capacity(256 * 1024, file), args.max_line_bytes as usize, 0);
    let mut header = Vec::new();
    let info = reader.read_line(&mut header).map_err(cannot_read)?.ok_or_else(|| {
        Refusal::Input(format!("input file '{}' is empty; a header row is required", input.display()))
    })?;
    if info.too_long {
        return Err(Refusal::Input(format!(
            "'{}' line 1: the header is longer than --max-line-bytes {} ({} bytes); give a larger --max-line-bytes",
            input.display(),
            args.max_line_bytes,
            info.stream_bytes
        )));
    }
    let header = std::str::from_utf8(&header)
        .map_err(|_| Refusal::Input(format!("'{}' line 1: the header is not valid UTF-8", input.display())))?;
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
            Err(Refusal::Usage(format!("{flag}: {e} (input '{}')", input.display())))
        }
        Err(e) => Err(Refusal::Input(format!("'{}' line 1: {e}", input.display()))),
    }
}

/// Timestamps, window lengths and durations must stay below this in magnitude (2^62 ms, about
/// 146 million years), so that no window or watermark arithmetic overflows (the reference
/// model's range). Rows outside it are rejected; arguments outside it are usage errors.
const TIME_LIMIT_MS: i64 = 1 << 62;

/// Refuses a window length, offset or duration outside [`TIME_LIMIT_MS`].
fn check_ranges(args: &WindowAggOptions) -> Result<(), String> {
    let (lengths, offset): (&[(&str, i64)], i64) = match args.window {
        WindowSpec::Tumbling { size, offset } => (&[("size", size)], offset),
        WindowSpec::Sliding { size, slide, offset } => (&[("size", size), ("slide", slide)], offset),
        WindowSpec::Session { gap } => (&[("gap", gap)], 0),
    };
    for (what, ms) in lengths.iter().copied().chain([("offset", offset)]) {
        if ms >= TIME_LIMIT_MS {
            return Err(format!("--window: the {what} {ms} ms is too large (at most {} ms)", TIME_LIMIT_MS - 1));
        }
    }
    for (flag, ms) in [("--out-of-orderness", args.out_of_orderness), ("--allowed-lateness", args.allowed_lateness)] {
        if ms >= TIME_LIMIT_MS {
            return Err(format!("{flag}: {ms} ms is too large (at most {} ms)", TIME_LIMIT_MS - 1));
        }
    }
    Ok(())
}

/// `--max-line-bytes` (at most 1 GiB, so a `u32`: the arguments stay small).
fn parse_line_limit(s: &str) -> Result<u32, String> {
    parse_max_line_bytes(s).and_then(|n| u32::try_from(n).map_err(|_| format!("'{s}' is too large")))
}

/// Whether `--output -` asks for standard output.
fn to_stdout(args: &WindowAggOptions) -> bool {
    args.output.as_os_str() == "-"
}

/// Where the rejected rows go: `--rejected-output`, or `OUTPUT.rejected.csv`. With `--output -`
/// there is no default (a file named `-.rejected.csv` would surprise): `None` then, which is
/// allowed only with `--fail-on-malformed` (no row is ever rejected into a file).
fn rejected_path(args: &WindowAggOptions) -> Option<PathBuf> {
    if let Some(path) = &args.rejected_output {
        return Some(path.clone());
    }
    if to_stdout(args) {
        return None;
    }
    let mut p = args.output.clone().into_os_string();
    p.push(".rejected.csv");
    Some(PathBuf::from(p))
}

/// Checks every file the run writes before it starts: each can be written
/// ([`check_output`]), none is the input (path, symbolic or hard link), and no two are the
/// same file.
///
/// [`check_output`]: corestream::fs::check_output
fn check_paths(args: &WindowAggOptions, rejected: Option<&Path>) -> Result<(), String> {
    if to_stdout(args) && rejected.is_none() && !args.fail_on_malformed {
        return Err("--output -: give --rejected-output FILE for the rows that cannot be used (or \
                    --fail-on-malformed), so they are not mixed into the results"
            .to_string());
    }
    let mut named: Vec<(&str, &Path)> = Vec::new();
    if !to_stdout(args) {
        named.push(("--output", &args.output));
    }
    if let Some(late) = &args.late_output {
        named.push(("--late-output", late));
    }
    if let Some(rejected) = rejected {
        named.push(("--rejected-output", rejected));
    }
    if let Some((flag, _)) = named.iter().find(|(_, path)| path.as_os_str() == "-") {
        return Err(format!("{flag} -: only --output can be standard output; give a file path"));
    }
    crate::outputs::validate(&named, &[&args.input])
}

/// The streams of a declared window aggregation: the window results, the rows later than the
/// allowed lateness, and the rows that cannot be used (in line order, from one subtask).
struct Streams {
    results: corestream::DataStream<Out>,
    late: corestream::DataStream<Rec>,
    rejected: corestream::DataStream<Bad>,
}

/// Declares the job on `env`, whose default parallelism must be 1: a one-subtask source of
/// the input's data lines (`reader`, positioned after the header, or the input opened again by
/// the subtask when `None`, its header then checked against `schema`), the parser, timestamps
/// and per-record watermarks, and the window operator at `parallelism`.
fn declare(
    env: &corestream::StreamEnvironment,
    args: &WindowAggOptions,
    schema: &CsvSchema,
    reader: Option<LineReader<BufReader<File>>>,
    stats: Arc<SourceStats>,
    parallelism: u32,
) -> Streams {
    let reader = Mutex::new(reader);
    let source_args = args.clone();
    let columns = schema.columns.clone();
    let lines = env
        .from_source("Source: CSV lines", Some(1), move |_ctx| {
            let taken = reader.lock().unwrap_or_else(|e| e.into_inner()).take();
            let reader = match taken {
                Some(reader) => reader,
                None => {
                    let (reader, schema) = open_input(&source_args).map_err(|e| e.to_string())?;
                    if schema.columns != columns {
                        return Err(format!(
                            "the header of '{}' changed after the job was declared",
                            source_args.input.display()
                        )
                        .into());
                    }
                    reader
                }
            };
            Ok(LinesSource {
                input: source_args.input.clone(),
                reader,
                next_line: 2,
                buf: Vec::with_capacity(256),
                stats: stats.clone(),
            })
        })
        .name("Source: CSV lines");
    let rejected_tag: OutputTag<Bad> = OutputTag::new("rejected");
    let late_tag: OutputTag<Rec> = OutputTag::new("late");

    let parse_schema = schema.clone();
    let parse_tag = rejected_tag.clone();
    let rows = lines
        .process(move || {
            let schema = parse_schema.clone();
            let tag = parse_tag.clone();
            move |(line_no, text, problem): Line, ctx: &mut ProcessContext<'_, Rec>| {
                if let Some(reason) = problem {
                    ctx.output(&tag, bad_row(line_no, reason, &text));
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
                        ctx.output(&tag, bad_row(line_no, reason, &text));
                    }
                    Ok(row) if row.key.len() > KEY_BYTES_MAX => {
                        let reason = format!(
                            "field '{}': the key has {} bytes, more than the {KEY_BYTES_MAX} a key may have",
                            schema.columns[schema.key],
                            row.key.len()
                        );
                        ctx.output(&tag, bad_row(line_no, reason, &text));
                    }
                    Ok(row) => ctx.collect((line_no, row.key, row.ts, row.value)),
                    Err(Rejected { line, reason }) => ctx.output(&tag, bad_row(line, reason, &text)),
                }
            }
        })
        .name("Parse CSV");
    let rejected = rows.side_output(&rejected_tag);

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
            |ctx: &WindowContext<'_, String>, value: Num, out: &mut Vec<Out>| {
                out.push((ctx.key.clone(), ctx.window.start, ctx.window.end, value))
            },
        )
        .set_parallelism(parallelism);
    let late = windowed.side_output(&late_tag);
    Streams { results: windowed, late, rejected }
}

/// Window results sorted stably by (key, window start, window end): the firings of one window
/// come from one subtask in emission order, so the order does not depend on the parallelism.
fn sort_results(results: Vec<Out>) -> Vec<WindowResult> {
    let mut results: Vec<WindowResult> =
        results.into_iter().map(|(key, start, end, value)| WindowResult { key, start, end, value }).collect();
    results.sort_by(|a, b| (&a.key, a.start, a.end).cmp(&(&b.key, b.start, b.end)));
    results
}

/// A late row's line in the late-row file.
fn late_line(row: &Rec, schema: &CsvSchema) -> String {
    let (_, key, ts, value) = row;
    format_late(&Event { key: key.clone(), ts: *ts, value: *value }, schema)
}

/// A staged output file: a header, then one line per item; nothing is visible at `path` until
/// [`AtomicFile::commit`].
fn stage_file(path: &Path, header: &str, lines: impl IntoIterator<Item = String>) -> anyhow::Result<AtomicFile> {
    let context = || format!("cannot write '{}'", path.display());
    let mut out = BufWriter::new(AtomicFile::create(path).with_context(context)?);
    writeln!(out, "{header}").with_context(context)?;
    for line in lines {
        writeln!(out, "{line}").with_context(context)?;
    }
    out.into_inner().map_err(|e| e.into_error()).with_context(context)
}

fn rejected_out_display(path: &Option<PathBuf>) -> String {
    path.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
}

fn collect_in_thread<T: Send + 'static>(stream: corestream::CollectStream<T>) -> std::thread::JoinHandle<Vec<T>> {
    std::thread::spawn(move || stream.collect())
}

pub fn run(run_args: WindowAggArgs) -> anyhow::Result<()> {
    if run_args.checkpoints.any() {
        return run_with_checkpoints(run_args);
    }
    let started = Instant::now();
    let args = &run_args.job;
    let rejected_out = rejected_path(args);
    check_paths(args, rejected_out.as_deref()).unwrap_or_else(|m| usage_error(m));
    check_ranges(args).unwrap_or_else(|m| usage_error(m));
    let (reader, schema) = match open_input(args) {
        Ok(opened) => opened,
        Err(Refusal::Usage(m)) => usage_error(m),
        Err(Refusal::Input(m)) => bail!("{m}"),
    };

    let cluster = run_args.common.cluster()?;
    let parallelism = run_args.common.parallelism.unwrap_or(cluster.num_slots());
    let mut env = run_args.common.environment(&cluster);
    // Everything but the window operator runs in one subtask (see the module documentation).
    env.set_parallelism(1);

    let stats = Arc::new(SourceStats::default());
    let streams = declare(&env, args, &schema, Some(reader), stats.clone(), parallelism);
    let rejected = streams.rejected.collect();
    let late = streams.late.collect();
    let results = streams.results.collect();

    let handle = env.execute_async("window-agg")?;
    let results = collect_in_thread(results);
    let late = collect_in_thread(late);
    // Rejected rows arrive in line order and go straight to their staged file, so memory does
    // not grow with them; with --fail-on-malformed the first one ends the run.
    let mut rejected_file = match (&rejected_out, args.fail_on_malformed) {
        (Some(path), false) => {
            let context = || format!("cannot write '{}'", path.display());
            let mut out = BufWriter::new(AtomicFile::create(path).with_context(context)?);
            writeln!(out, "{REJECTED_HEADER}").with_context(context)?;
            Some(out)
        }
        _ => None,
    };
    let mut first_bad: Option<(u64, String)> = None;
    let mut bad_count = 0u64;
    for (line, reason, row) in rejected {
        if args.fail_on_malformed && first_bad.is_none() {
            handle.cancel();
        }
        if let Some(out) = rejected_file.as_mut() {
            writeln!(out, "{}", format_rejected(&Rejected { line, reason: reason.clone() }, &row)).with_context(
                || format!("cannot write the rejected rows to '{}'", rejected_out_display(&rejected_out)),
            )?;
        }
        first_bad.get_or_insert((line, reason));
        bad_count += 1;
    }
    let outcome = handle.join();
    let results = results.join().map_err(|_| anyhow::anyhow!("the result reader panicked"))?;
    let mut late = late.join().map_err(|_| anyhow::anyhow!("the late-row reader panicked"))?;
    if let Some((line, reason)) = first_bad.as_ref().filter(|_| args.fail_on_malformed) {
        bail!("{}", fail_on_malformed_message(&args.input, *line, reason));
    }
    let result = outcome?;

    // The job succeeded: stage every file, then commit them; a failure before the commits
    // leaves every earlier file as it was.
    let results = sort_results(results);
    late.sort_by_key(|r| r.0);
    let mut staged = Vec::new();
    if let Some(out) = rejected_file.take() {
        let path = rejected_out_display(&rejected_out);
        staged.push(out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("cannot write '{path}'"))?);
    }
    if let Some(path) = &args.late_output {
        staged.push(stage_file(path, &late_header(&schema), late.iter().map(|r| late_line(r, &schema)))?);
    }
    if to_stdout(args) {
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        writeln!(out, "{OUTPUT_HEADER}").context("cannot write the results to standard output")?;
        for r in &results {
            writeln!(out, "{}", format_result(r)).context("cannot write the results to standard output")?;
        }
        out.flush().context("cannot write the results to standard output")?;
    } else {
        staged.push(stage_file(&args.output, OUTPUT_HEADER, results.iter().map(format_result))?);
    }
    for file in staged {
        file.commit()?;
    }

    // Summary lines: standard output, or standard error when the results went there.
    let say = |line: String| {
        if to_stdout(args) {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let rows_read = stats.rows.load(Ordering::Relaxed);
    let blank = stats.blank.load(Ordering::Relaxed);
    let too_long = stats.too_long.load(Ordering::Relaxed);
    say(format!(
        "window-agg: {rows_read} rows read, {} rejected, {} late, {} window results in {:.3} s \
         (job {:.3} s) -> {}",
        bad_count,
        late.len(),
        results.len(),
        started.elapsed().as_secs_f64(),
        result.wall_time.as_secs_f64(),
        if to_stdout(args) { "standard output".to_string() } else { args.output.display().to_string() }
    ));
    if blank > 0 {
        say(format!("  {blank} blank line(s) skipped"));
    }
    if too_long > 0 {
        say(format!("  {too_long} line(s) longer than --max-line-bytes {} rejected", args.max_line_bytes));
    }
    if let (Some((line, reason)), Some(path)) = (first_bad.as_ref(), &rejected_out) {
        eprintln!(
            "warning: {} row(s) could not be used and were written to '{}' (first: line {line}: {reason})",
            bad_count,
            path.display()
        );
    }
    match &args.late_output {
        Some(path) if !late.is_empty() => say(format!("  late rows -> {}", path.display())),
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

/// `run window-agg` with checkpoint or restore options: the `window-agg` job type by name on
/// the JobManager of a local cluster, which restarts it from its latest checkpoint after a
/// failure; every output is a directory of part files (see [`job`]). The summary counts the
/// committed lines.
fn run_with_checkpoints(run_args: WindowAggArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let here = std::env::current_dir().context("cannot read the current directory")?;
    let recovery = run_args.checkpoints.require_recovery(crate::checkpointing::Paths::From(&here));
    if run_args.common.processes > 1 {
        usage_error("--processes: `run window-agg` runs in one process; use `corestream submit` on a cluster");
    }
    let mut args = run_args.job.clone();
    if to_stdout(&args) {
        usage_error("--output -: with checkpoints the results go to a directory of part files; give its path");
    }
    args.input = here.join(&args.input);
    args.output = here.join(&args.output);
    args.late_output = args.late_output.map(|p| here.join(p));
    args.rejected_output = args.rejected_output.map(|p| here.join(p));
    check_ranges(&args).unwrap_or_else(|m| usage_error(m));
    match open_input(&args) {
        Ok(_) => {}
        Err(Refusal::Usage(m)) => usage_error(m),
        Err(Refusal::Input(m)) => bail!("{m}"),
    }
    let mut registry = corestream::registry::JobRegistry::new();
    let options = args.clone();
    let rate = run_args.common.source_rate;
    registry.register(corestream::registry::JobType::new(
        "window-agg",
        "event-time window aggregation of a CSV file",
        "(the options of run window-agg)",
        move |env, ctx| {
            env.set_source_rate(rate);
            job::build(env, &options, ctx.planning, ctx.checkpoints)
        },
    ));
    let run = crate::local_run::run(&run_args.common, registry, "window-agg", Vec::new(), &recovery)
        .map_err(|e| anyhow::anyhow!("window-agg: {e}"))?;
    for (attempt, message) in &run.recovered {
        eprintln!("corestream: recovered from a failure of attempt {attempt}: {message}");
    }
    let count = |name: &str| match run.outcome.accumulators.get(name) {
        Some(corestream::rpc::messages::Accumulator::Count(n)) => *n,
        _ => 0,
    };
    let lines = |dir: &Path| -> anyhow::Result<u64> {
        let mut n = 0u64;
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list '{}'", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list '{}'", dir.display()))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let text =
                std::fs::read(entry.path()).with_context(|| format!("cannot read '{}'", entry.path().display()))?;
            n += text.iter().filter(|b| **b == b'\n').count() as u64;
        }
        Ok(n)
    };
    let results = lines(&args.output)?;
    let rejected = if args.fail_on_malformed { 0 } else { lines(&job::rejected_dir(&args))? };
    let late = args.late_output.as_deref().map(lines).transpose()?;
    println!(
        "window-agg: {} rows read, {rejected} rejected, {} late, {results} window results in {:.3} s -> {} (part \
         files; sorted, their lines are the output of a run without checkpoints)",
        count(job::ROWS_READ),
        late.map_or_else(|| "uncounted".to_string(), |n| n.to_string()),
        started.elapsed().as_secs_f64(),
        args.output.display()
    );
    if count(job::BLANK_LINES) > 0 {
        println!("  {} blank line(s) skipped", count(job::BLANK_LINES));
    }
    if rejected > 0 {
        eprintln!(
            "warning: {rejected} row(s) could not be used and were written to '{}'",
            job::rejected_dir(&args).display()
        );
    }
    Ok(())
}

/// The error of a run that `--fail-on-malformed` ended at `line`.
fn fail_on_malformed_message(input: &Path, line: u64, reason: &str) -> String {
    format!(
        "'{}' line {line}: {reason} (--fail-on-malformed; without it such rows go to the rejected-rows file)",
        input.display()
    )
}
