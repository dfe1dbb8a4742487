//! Built-in sources: generators (bounded and unbounded), iterators, text files split by byte
//! range, and a channel fed by the host application. A source fills one batch per step and
//! says whether it has more now, is idle (its task then waits on its doorbell, or until a time
//! it names), or has finished. Applications write their own sources as [`SourceFunction`]s,
//! added with [`StreamEnvironment::from_source`].
//!
//! **Positions.** In a job with checkpoints, each source subtask records its position (the
//! next record it would emit) between two batches, and a job restored from a checkpoint
//! resumes every source subtask there, so it emits exactly the records an uninterrupted run
//! would have emitted after that point. Generators and sequences record their next index,
//! iterators how many items they yielded (a restored iterator skips as many, so it must yield
//! the same items whenever the job is built), regular text files a byte offset. Sources that
//! cannot rewind are declared so (`Rewind::No`) with the guarantee they give: the host
//! channel, streams that are not regular files, and application sources that do not
//! implement [`SourceFunction::snapshot_state`]. A job with such a source and checkpoints is
//! refused unless the application accepts at-most-once for them
//! ([`StreamEnvironment::allow_at_most_once_sources`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use corestream_netstack::{Data, Doorbell};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
pub use crossbeam_channel::{SendError, TrySendError};

use crate::api::env::StreamEnvironment;
use crate::api::lines::LineReader;
use crate::api::stream::DataStream;
use crate::api::stream_lines::{Next, StreamLines};
use crate::error::TaskError;
use crate::runtime::job::JobShared;

/// Why a source could not record its position or go back to one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PositionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} '{path}': {cause}")]
    Io { what: &'static str, path: PathBuf, cause: std::io::Error },
    #[error("{0}")]
    User(SourceError),
}

/// Whether a source can go back to a position it recorded in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewind {
    Yes,
    /// It cannot; `guarantee` says what a job restored from a checkpoint gets from it.
    No {
        guarantee: &'static str,
    },
}

const CHANNEL_GUARANTEE: &str = "at most once: the records the host sent that the source took after the restored \
     checkpoint are lost, and the restored job reads only what the host sends to its new channel";
const STREAM_GUARANTEE: &str = "at most once: a stream that is not a regular file cannot be read again, so the \
     lines read after the restored checkpoint are lost";
const FUNCTION_GUARANTEE: &str = "at most once: the source does not implement SourceFunction::snapshot_state and \
     restore_state, so what it produced after the restored checkpoint is not produced again";

/// A source position: a four-byte tag naming the kind of source, then little-endian `u64`s.
fn encode_position(tag: &[u8; 4], fields: &[u64]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + 8 * fields.len());
    bytes.extend_from_slice(tag);
    for f in fields {
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    bytes
}

fn decode_position<const N: usize>(bytes: &[u8], tag: &[u8; 4], kind: &str) -> Result<[u64; N], PositionError> {
    if bytes.len() != 4 + 8 * N || &bytes[..4] != tag {
        return Err(PositionError::Invalid(format!(
            "the checkpoint's position ({} bytes) was not written by a {kind} source",
            bytes.len()
        )));
    }
    let mut fields = [0u64; N];
    for (i, f) in fields.iter_mut().enumerate() {
        let at = 4 + 8 * i;
        *f = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    }
    Ok(fields)
}

/// What a text source does with a line that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidUtf8 {
    /// Skip the line, count it, and report the count and the first byte offset as a job warning.
    #[default]
    Skip,
    /// Fail the job at the first such line, naming its byte offset.
    Fail,
}

/// What a source step produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// More records are available now.
    More,
    /// Nothing more right now; the task waits until its doorbell rings.
    Idle,
    /// Nothing more right now; the task waits until its doorbell rings or this time comes,
    /// whichever is first (it may call the source earlier); a time already past: at once.
    IdleUntil(Instant),
    /// The source has ended.
    Finished,
}

/// What a source subtask knows about itself.
pub struct SourceContext {
    pub subtask: u32,
    pub parallelism: u32,
    pub(crate) bell: Arc<Doorbell>,
    pub(crate) node: usize,
    pub(crate) job: Arc<JobShared>,
}

impl std::fmt::Debug for SourceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceContext").field("subtask", &self.subtask).field("parallelism", &self.parallelism).finish()
    }
}

pub(crate) trait Source<T>: 'static {
    fn next_batch(&mut self, out: &mut Vec<T>, max_records: usize) -> Result<SourceStatus, TaskError>;
    /// The position of the next record this subtask would emit, in bytes only this kind of
    /// source reads. Called between batches, only for sources declared [`Rewind::Yes`].
    fn snapshot_position(&mut self) -> Result<Vec<u8>, PositionError>;
    /// Moves to a position [`snapshot_position`](Self::snapshot_position) returned, before the
    /// first batch.
    fn restore_position(&mut self, position: &[u8]) -> Result<(), PositionError>;
}

/// Why an application's source failed.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// An application's source: one instance per subtask, run on the subtask's slot executor, so
/// `next_batch` must never block its thread (return [`SourceStatus::Idle`] or
/// [`SourceStatus::IdleUntil`] instead).
///
/// In a job with checkpoints a source must be able to go back to a recorded position, or the
/// records it emitted after the restored checkpoint would be lost. A source that can sets
/// [`REWINDABLE`](Self::REWINDABLE) and implements [`snapshot_state`](Self::snapshot_state)
/// and [`restore_state`](Self::restore_state). One that cannot (the default) makes a job with
/// checkpoints fail at submission, unless the application accepts at most once for it with
/// [`StreamEnvironment::allow_at_most_once_sources`].
pub trait SourceFunction<T>: 'static {
    /// Whether this source records its position and goes back to it (decided when the job is
    /// declared, before any instance exists).
    const REWINDABLE: bool = false;

    /// Appends at most `max_records` records to `out` and says what comes next.
    fn next_batch(&mut self, out: &mut Vec<T>, max_records: usize) -> Result<SourceStatus, SourceError>;

    /// The position of the next record this subtask would emit, called between two calls of
    /// `next_batch` when a checkpoint is taken; the bytes come back to `restore_state` of the
    /// same subtask when the job is restored from that checkpoint.
    fn snapshot_state(&mut self) -> Result<Vec<u8>, SourceError> {
        Err("this source cannot record its position (SourceFunction::snapshot_state is not implemented)".into())
    }

    /// Moves to a position `snapshot_state` returned, before the first call of `next_batch`.
    fn restore_state(&mut self, _position: &[u8]) -> Result<(), SourceError> {
        Err("this source cannot rewind (SourceFunction::restore_state is not implemented)".into())
    }
}

struct FunctionSource<S> {
    source: S,
    node: usize,
}

impl<T: Data, S: SourceFunction<T>> Source<T> for FunctionSource<S> {
    fn next_batch(&mut self, out: &mut Vec<T>, max_records: usize) -> Result<SourceStatus, TaskError> {
        self.source
            .next_batch(out, max_records)
            .map_err(|e| TaskError::User { node: self.node, message: e.to_string() })
    }

    fn snapshot_position(&mut self) -> Result<Vec<u8>, PositionError> {
        self.source.snapshot_state().map_err(PositionError::User)
    }

    fn restore_position(&mut self, position: &[u8]) -> Result<(), PositionError> {
        self.source.restore_state(position).map_err(PositionError::User)
    }
}

impl StreamEnvironment {
    /// A source written by the application: `factory` builds one [`SourceFunction`] per
    /// subtask; `parallelism` fixes the number of subtasks (`None`: the job's parallelism).
    pub fn from_source<T, S, F>(&self, name: &str, parallelism: Option<u32>, factory: F) -> DataStream<T>
    where
        T: Data,
        S: SourceFunction<T>,
        F: Fn(&SourceContext) -> Result<S, SourceError> + Send + Sync + 'static,
    {
        let rewind = if S::REWINDABLE { Rewind::Yes } else { Rewind::No { guarantee: FUNCTION_GUARANTEE } };
        self.add_source(
            name,
            parallelism,
            rewind,
            Arc::new(move |ctx| {
                let source = factory(ctx).map_err(|e| TaskError::User { node: ctx.node, message: e.to_string() })?;
                Ok(Box::new(FunctionSource { source, node: ctx.node }) as _)
            }),
        )
    }
}

/// `f(i)` for the indices of this subtask. Its position is the next index.
pub(crate) struct GeneratorSource<F> {
    f: Arc<F>,
    /// The subtask's first index: positions are `first + k·step`.
    first: u64,
    next: u64,
    end: u64,
    step: u64,
}

impl<F> GeneratorSource<F> {
    fn new(f: Arc<F>, first: u64, end: u64, step: u64) -> Self {
        Self { f, first, next: first, end, step }
    }

    /// Contiguous share `[i·n/p, (i+1)·n/p)` of `0..count`.
    pub(crate) fn split(f: Arc<F>, count: u64, subtask: u32, parallelism: u32) -> Self {
        let share = |i: u64| (i as u128 * count as u128 / parallelism as u128) as u64;
        Self::new(f, share(subtask as u64), share(subtask as u64 + 1), 1)
    }

    /// Every p-th element of `0..count`, starting at the subtask's index: the subtasks advance
    /// through the sequence together.
    pub(crate) fn strided(f: Arc<F>, count: u64, subtask: u32, parallelism: u32) -> Self {
        Self::new(f, subtask as u64, count, parallelism as u64)
    }

    pub(crate) fn unbounded(f: Arc<F>, subtask: u32, parallelism: u32) -> Self {
        Self::new(f, subtask as u64, u64::MAX, parallelism as u64)
    }
}

const GENERATOR_TAG: &[u8; 4] = b"GEN1";

impl<T: Data, F: Fn(u64) -> T + 'static> Source<T> for GeneratorSource<F> {
    #[inline]
    fn next_batch(&mut self, out: &mut Vec<T>, max_records: usize) -> Result<SourceStatus, TaskError> {
        let f = &*self.f;
        if self.step == 1 {
            let n = (self.end - self.next).min(max_records as u64);
            out.reserve(n as usize);
            out.extend((self.next..self.next + n).map(f));
            self.next += n;
        } else {
            for _ in 0..max_records {
                if self.next >= self.end {
                    break;
                }
                out.push(f(self.next));
                self.next = self.next.saturating_add(self.step);
            }
        }
        Ok(if self.next >= self.end { SourceStatus::Finished } else { SourceStatus::More })
    }

    fn snapshot_position(&mut self) -> Result<Vec<u8>, PositionError> {
        Ok(encode_position(GENERATOR_TAG, &[self.next, self.end, self.step]))
    }

    fn restore_position(&mut self, position: &[u8]) -> Result<(), PositionError> {
        let [next, end, step] = decode_position(position, GENERATOR_TAG, "generator")?;
        if end != self.end || step != self.step || next < self.first || !(next - self.first).is_multiple_of(step) {
            return Err(PositionError::Invalid(format!(
                "the checkpoint's position (index {next} of a split ending at {end}, step {step}) is not in this \
                 subtask's split (from {} to {}, step {}): the sequence or the parallelism changed",
                self.first, self.end, self.step
            )));
        }
        self.next = next;
        Ok(())
    }
}

/// The items of an iterator. Its position is the number of items it yielded; a restored
/// source skips as many items of its (new) iterator, as Flink's collection source does.
pub(crate) struct IterSource<I> {
    pub(crate) iter: I,
    pub(crate) emitted: u64,
}

const ITER_TAG: &[u8; 4] = b"ITR1";

impl<T: Data, I: Iterator<Item = T> + 'static> Source<T> for IterSource<I> {
    fn next_batch(&mut self, out: &mut Vec<T>, max_records: usize) -> Result<SourceStatus, TaskError> {
        let before = out.len();
        out.extend(self.iter.by_ref().take(max_records));
        let taken = out.len() - before;
        self.emitted += taken as u64;
        Ok(if taken < max_records { SourceStatus::Finished } else { SourceStatus::More })
    }

    fn snapshot_position(&mut self) -> Result<Vec<u8>, PositionError> {
        Ok(encode_position(ITER_TAG, &[self.emitted]))
    }

    fn restore_position(&mut self, position: &[u8]) -> Result<(), PositionError> {
        let [emitted] = decode_position(position, ITER_TAG, "iterator")?;
        while self.emitted < emitted {
            if self.iter.next().is_none() {
                return Err(PositionError::Invalid(format!(
                    "the iterator ended after {} items, before the checkpoint's position ({emitted} items): a \
                     restored iterator source must yield the same items as the run that took the checkpoint",
                    self.emitted
                )));
            }
            self.emitted += 1;
        }
        Ok(())
    }
}

/// How a text source reads its file: what it does with lines that are not valid UTF-8, and
/// the longest line it holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextFileOptions {
    pub invalid_utf8: InvalidUtf8,
    /// A line with more bytes than this (its line break not counted) is never buffered whole:
    /// it is skipped, counted and reported as a job warning with the byte offset of the first
    /// one. At least 1.
    pub max_line_bytes: usize,
}

impl TextFileOptions {
    /// The default line limit: 1 MiB.
    pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

    pub fn invalid_utf8(mut self, invalid_utf8: InvalidUtf8) -> Self {
        self.invalid_utf8 = invalid_utf8;
        self
    }

    pub fn max_line_bytes(mut self, max_line_bytes: usize) -> Self {
        self.max_line_bytes = max_line_bytes;
        self
    }
}

impl Default for TextFileOptions {
    fn default() -> Self {
        Self { invalid_utf8: InvalidUtf8::Skip, max_line_bytes: Self::DEFAULT_MAX_LINE_BYTES }
    }
}

/// Lines the largest record can carry across an exchange, with room for the record's own
/// framing: a line read by one subtask and rebalanced must fit in one network buffer.
pub(crate) const EXCHANGED_LINE_BYTES_MAX: usize = corestream_netstack::record::MAX_RECORD_BYTES - 64;

/// Which part of its file a text source subtask reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextSplit {
    /// The lines that start in this subtask's byte range of a regular file.
    ByteRange,
    /// The whole stream, read front to back by the only subtask (pipes, FIFOs, devices,
    /// `/dev/stdin`); its lines are rebalanced, so each must fit in one record.
    Whole,
}

/// What was skipped, for the job warning sent when the source ends.
#[derive(Default)]
struct Skipped {
    count: u64,
    first_offset: Option<u64>,
}

impl Skipped {
    fn add(&mut self, offset: u64) {
        self.count += 1;
        self.first_offset.get_or_insert(offset);
    }

    /// As two position fields: the count and the first offset plus one (0: none).
    fn fields(&self) -> [u64; 2] {
        [self.count, self.first_offset.map_or(0, |o| o.saturating_add(1))]
    }

    fn from_fields(count: u64, first: u64) -> Self {
        Self { count, first_offset: first.checked_sub(1) }
    }
}

/// Where a text source's lines come from: a byte range of a regular file, read on the slot
/// (file reads do not wait on a writer), or a stream read by a thread of its own.
enum Lines {
    File(LineReader<BufReader<File>>),
    Stream(StreamLines),
}

impl Lines {
    fn offset(&self) -> u64 {
        match self {
            Lines::File(r) => r.offset(),
            Lines::Stream(s) => s.offset(),
        }
    }

    fn max_line_bytes(&self) -> usize {
        match self {
            Lines::File(r) => r.max_line_bytes(),
            Lines::Stream(s) => s.max_line_bytes(),
        }
    }
}

/// Lines of one byte range of a file (the lines that start inside the range), or of a whole
/// stream, each held to at most the line limit.
pub(crate) struct FileLinesSource {
    policy: InvalidUtf8,
    node: usize,
    lines: Lines,
    path: PathBuf,
    end: u64,
    line: Vec<u8>,
    invalid: Skipped,
    too_long: Skipped,
    ctx_warn: Option<Box<dyn Fn(u64, String)>>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> TaskError {
    TaskError::Io { what: what.to_string(), path: path.display().to_string(), cause: Arc::new(e) }
}

impl FileLinesSource {
    pub(crate) fn open(
        path: &Path,
        options: TextFileOptions,
        split: TextSplit,
        ctx: &SourceContext,
    ) -> Result<Self, TaskError> {
        let max_line_bytes = options.max_line_bytes.max(1);
        let (lines, end) = match split {
            TextSplit::Whole => {
                let max_line_bytes = max_line_bytes.min(EXCHANGED_LINE_BYTES_MAX);
                let stream = StreamLines::start(path, max_line_bytes, ctx.bell.clone())
                    .map_err(|e| io_error("cannot start a thread to read input", path, e))?;
                (Lines::Stream(stream), u64::MAX)
            }
            TextSplit::ByteRange => {
                let file = File::open(path).map_err(|e| io_error("cannot open input file", path, e))?;
                let len = file.metadata().map_err(|e| io_error("cannot read metadata of input file", path, e))?.len();
                let share = |i: u64| (i as u128 * len as u128 / ctx.parallelism as u128) as u64;
                let (start, end) = (share(ctx.subtask as u64), share(ctx.subtask as u64 + 1));
                let mut reader = BufReader::with_capacity(256 * 1024, file);
                let mut pos = start;
                if start > 0 {
                    // The line that straddles `start` belongs to the previous range: skip past
                    // its end (buffering none of it).
                    reader
                        .seek(SeekFrom::Start(start - 1))
                        .map_err(|e| io_error("cannot seek in input file", path, e))?;
                    let n = reader.skip_until(b'\n').map_err(|e| io_error("cannot read input file", path, e))?;
                    pos = start - 1 + n as u64;
                }
                (Lines::File(LineReader::new(reader, max_line_bytes, pos)), end)
            }
        };
        Ok(Self {
            policy: options.invalid_utf8,
            node: ctx.node,
            lines,
            path: path.to_path_buf(),
            end,
            line: Vec::with_capacity(256),
            invalid: Skipped::default(),
            too_long: Skipped::default(),
            ctx_warn: Some(ctx.job.warner(ctx.node, ctx.subtask)),
        })
    }

    fn report(&mut self) {
        let Some(warn) = self.ctx_warn.take() else { return };
        let path = self.path.display();
        if self.invalid.count > 0 {
            warn(
                self.invalid.count,
                format!(
                    "{} line(s) of '{path}' are not valid UTF-8 and were skipped (first at byte offset {})",
                    self.invalid.count,
                    self.invalid.first_offset.unwrap_or(0)
                ),
            );
        }
        if self.too_long.count > 0 {
            let limit = self.lines.max_line_bytes();
            warn(
                self.too_long.count,
                format!(
                    "{} line(s) of '{path}' are longer than {limit} bytes and were skipped (first at byte offset {}){}",
                    self.too_long.count,
                    self.too_long.first_offset.unwrap_or(0),
                    if matches!(self.lines, Lines::Stream(_)) && limit == EXCHANGED_LINE_BYTES_MAX {
                        "; lines of a stream that is not a regular file are read by one subtask and passed on as \
                         records, so they are limited to what one record holds"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
}

const TEXT_FILE_TAG: &[u8; 4] = b"TXT1";

impl Source<String> for FileLinesSource {
    fn next_batch(&mut self, out: &mut Vec<String>, max_records: usize) -> Result<SourceStatus, TaskError> {
        for _ in 0..max_records {
            if self.lines.offset() >= self.end {
                self.report();
                return Ok(SourceStatus::Finished);
            }
            let next = match &mut self.lines {
                Lines::File(reader) => match reader.read_line(&mut self.line) {
                    Ok(Some(info)) => Next::Line(info),
                    Ok(None) => Next::End,
                    Err(e) => return Err(io_error("cannot read input file", &self.path, e)),
                },
                Lines::Stream(stream) => {
                    stream.next_line(&mut self.line).map_err(|(what, e)| io_error(what, &self.path, e))?
                }
            };
            let info = match next {
                Next::Line(info) => info,
                Next::Pending => return Ok(if out.is_empty() { SourceStatus::Idle } else { SourceStatus::More }),
                Next::End => {
                    self.report();
                    return Ok(SourceStatus::Finished);
                }
            };
            if info.too_long {
                self.too_long.add(info.offset);
                continue;
            }
            match std::str::from_utf8(&self.line) {
                Ok(s) => out.push(s.to_owned()),
                Err(e) if self.policy == InvalidUtf8::Fail => {
                    return Err(TaskError::User {
                        node: self.node,
                        message: format!(
                            "the line at byte offset {} of '{}' is not valid UTF-8 ({e})",
                            info.offset,
                            self.path.display()
                        ),
                    });
                }
                Err(_) => self.invalid.add(info.offset),
            }
        }
        Ok(SourceStatus::More)
    }

    /// The byte offset of the next line, the end of this subtask's range and what was skipped
    /// so far (so the warnings of a restored job count every skipped line).
    fn snapshot_position(&mut self) -> Result<Vec<u8>, PositionError> {
        let Lines::File(reader) = &self.lines else {
            return Err(PositionError::Invalid(format!(
                "'{}' is not a regular file: {STREAM_GUARANTEE}",
                self.path.display()
            )));
        };
        let [ic, if1] = self.invalid.fields();
        let [tc, tf1] = self.too_long.fields();
        Ok(encode_position(TEXT_FILE_TAG, &[reader.offset(), self.end, ic, if1, tc, tf1]))
    }

    /// Seeks the freshly opened file to the recorded offset; a file now shorter than that is
    /// an error naming it (the input changed since the checkpoint).
    fn restore_position(&mut self, position: &[u8]) -> Result<(), PositionError> {
        let [offset, end, ic, if1, tc, tf1] = decode_position(position, TEXT_FILE_TAG, "text file")?;
        let path = &self.path;
        let Lines::File(reader) = &mut self.lines else {
            return Err(PositionError::Invalid(format!(
                "'{}' is not a regular file: {STREAM_GUARANTEE}",
                path.display()
            )));
        };
        let len = reader
            .get_ref()
            .get_ref()
            .metadata()
            .map_err(|cause| PositionError::Io {
                what: "cannot read metadata of input file",
                path: path.clone(),
                cause,
            })?
            .len();
        if len < offset {
            return Err(PositionError::Invalid(format!(
                "input file '{}' has {len} bytes, fewer than the checkpoint's position (byte offset {offset}): the \
                 file changed since the checkpoint",
                path.display()
            )));
        }
        reader.seek(offset).map_err(|cause| PositionError::Io {
            what: "cannot seek in input file",
            path: path.clone(),
            cause,
        })?;
        self.end = end;
        self.invalid = Skipped::from_fields(ic, if1);
        self.too_long = Skipped::from_fields(tc, tf1);
        Ok(())
    }
}

/// Records pushed by the host application. It cannot rewind: the records it took are gone
/// from the channel. In a job with checkpoints (allowed only with
/// [`StreamEnvironment::allow_at_most_once_sources`]) it gives at most once: the restored
/// state reflects the records taken before the checkpoint's barrier, and the records taken
/// after it and before the failure are lost unless the host sends them again to the restored
/// job's channel.
pub(crate) struct ChannelSource<T> {
    pub(crate) rx: Receiver<T>,
}

impl<T: Data> Source<T> for ChannelSource<T> {
    fn next_batch(&mut self, out: &mut Vec<T>, max_records: usize) -> Result<SourceStatus, TaskError> {
        for _ in 0..max_records {
            match self.rx.try_recv() {
                Ok(r) => out.push(r),
                Err(TryRecvError::Empty) => return Ok(SourceStatus::Idle),
                Err(TryRecvError::Disconnected) => return Ok(SourceStatus::Finished),
            }
        }
        Ok(SourceStatus::More)
    }

    fn snapshot_position(&mut self) -> Result<Vec<u8>, PositionError> {
        Err(PositionError::Invalid(format!("a channel source cannot rewind; it gives {CHANNEL_GUARANTEE}")))
    }

    fn restore_position(&mut self, _position: &[u8]) -> Result<(), PositionError> {
        Err(PositionError::Invalid(format!("a channel source cannot rewind; it gives {CHANNEL_GUARANTEE}")))
    }
}

impl Rewind {
    /// A host channel's.
    pub(crate) const CHANNEL: Rewind = Rewind::No { guarantee: CHANNEL_GUARANTEE };

    /// A text source's: a regular file split by byte range rewinds, a stream does not.
    pub(crate) fn of_text(split: TextSplit) -> Rewind {
        match split {
            TextSplit::ByteRange => Rewind::Yes,
            TextSplit::Whole => Rewind::No { guarantee: STREAM_GUARANTEE },
        }
    }
}

/// The host application's end of a channel source. Cloneable; the source ends when every
/// clone has been dropped.
///
/// A channel source cannot rewind to a checkpoint's position: in a job with checkpoints
/// (which must accept it with [`StreamEnvironment::allow_at_most_once_sources`]) it gives at
/// most once. After a restore, the state reflects the records the source took before the
/// checkpoint; the records it took after that and before the failure are lost unless the host
/// sends them again.
pub struct SourceSender<T> {
    tx: Option<Sender<T>>,
    bell: Arc<OnceLock<Arc<Doorbell>>>,
}

impl<T> std::fmt::Debug for SourceSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSender").finish_non_exhaustive()
    }
}

impl<T> Clone for SourceSender<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), bell: self.bell.clone() }
    }
}

impl<T> SourceSender<T> {
    pub(crate) fn new(tx: Sender<T>, bell: Arc<OnceLock<Arc<Doorbell>>>) -> Self {
        Self { tx: Some(tx), bell }
    }

    fn ring(&self) {
        if let Some(bell) = self.bell.get() {
            bell.ring();
        }
    }

    /// Sends a record, blocking while the channel is full. Fails (handing the record back)
    /// when the job is no longer reading.
    pub fn send(&self, record: T) -> Result<(), SendError<T>> {
        let tx = self.tx.as_ref().expect("sender present until drop");
        tx.send(record)?;
        self.ring();
        Ok(())
    }

    /// Sends the records in order and wakes the source once for all of them rather than once
    /// per record (it is woken early whenever the channel fills, so a full channel never waits
    /// on a source that was not told). Blocks while the channel is full; fails, handing back
    /// the record that could not be sent, when the job is no longer reading. Returns the number
    /// sent.
    pub fn send_all<I: IntoIterator<Item = T>>(&self, records: I) -> Result<usize, SendError<T>> {
        let tx = self.tx.as_ref().expect("sender present until drop");
        let mut sent = 0;
        for record in records {
            match tx.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(record)) => {
                    self.ring();
                    tx.send(record)?;
                }
                Err(TrySendError::Disconnected(record)) => return Err(SendError(record)),
            }
            sent += 1;
        }
        if sent > 0 {
            self.ring();
        }
        Ok(sent)
    }

    /// Sends a record if there is room now; hands it back otherwise.
    pub fn try_send(&self, record: T) -> Result<(), TrySendError<T>> {
        let tx = self.tx.as_ref().expect("sender present until drop");
        tx.try_send(record)?;
        self.ring();
        Ok(())
    }
}

impl<T> Drop for SourceSender<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.ring();
    }
}

#[cfg(test)]
mod tests;
