//! Built-in sources: generators (bounded and unbounded), iterators, text files split by byte
//! range, and a channel fed by the host application. A source fills one batch per step and
//! says whether it has more now, is idle (its task then waits on its doorbell, or until a time
//! it names), or has finished. Applications write their own sources as [`SourceFunction`]s,
//! added with [`StreamEnvironment::from_source`].

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use corestream_netstack::{Data, Doorbell};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
pub use crossbeam_channel::{SendError, TrySendError};

use crate::api::env::StreamEnvironment;
use crate::api::stream::DataStream;
use crate::error::TaskError;
use crate::runtime::job::JobShared;
use crate::runtime::metrics::JobWarning;

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
}

/// Why an application's source failed.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// An application's source: one instance per subtask, run on the subtask's slot executor, so
/// `next_batch` must never block its thread (return [`SourceStatus::Idle`] or
/// [`SourceStatus::IdleUntil`] instead).
pub trait SourceFunction<T>: 'static {
    /// Appends at most `max_records` records to `out` and says what comes next.
    fn next_batch(&mut self, out: &mut Vec<T>, max_records: usize) -> Result<SourceStatus, SourceError>;
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
        self.add_source(
            name,
            parallelism,
            Arc::new(move |ctx| {
                let source = factory(ctx).map_err(|e| TaskError::User { node: ctx.node, message: e.to_string() })?;
                Ok(Box::new(FunctionSource { source, node: ctx.node }) as _)
            }),
        )
    }
}

/// `f(i)` for the indices of this subtask.
pub(crate) struct GeneratorSource<F> {
    f: Arc<F>,
    next: u64,
    end: u64,
    step: u64,
}

impl<F> GeneratorSource<F> {
    /// Contiguous share `[i·n/p, (i+1)·n/p)` of `0..count`.
    pub(crate) fn split(f: Arc<F>, count: u64, subtask: u32, parallelism: u32) -> Self {
        let share = |i: u64| (i as u128 * count as u128 / parallelism as u128) as u64;
        Self { f, next: share(subtask as u64), end: share(subtask as u64 + 1), step: 1 }
    }

    /// Every p-th element of `0..count`, starting at the subtask's index: the subtasks advance
    /// through the sequence together.
    pub(crate) fn strided(f: Arc<F>, count: u64, subtask: u32, parallelism: u32) -> Self {
        Self { f, next: subtask as u64, end: count, step: parallelism as u64 }
    }

    pub(crate) fn unbounded(f: Arc<F>, subtask: u32, parallelism: u32) -> Self {
        Self { f, next: subtask as u64, end: u64::MAX, step: parallelism as u64 }
    }
}

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
}

pub(crate) struct IterSource<I> {
    pub(crate) iter: I,
}

impl<T: Data, I: Iterator<Item = T> + 'static> Source<T> for IterSource<I> {
    fn next_batch(&mut self, out: &mut Vec<T>, max_records: usize) -> Result<SourceStatus, TaskError> {
        let before = out.len();
        out.extend(self.iter.by_ref().take(max_records));
        Ok(if out.len() - before < max_records { SourceStatus::Finished } else { SourceStatus::More })
    }
}

/// Lines of one byte range of a file: the lines that start inside the range.
pub(crate) struct FileLinesSource {
    policy: InvalidUtf8,
    node: usize,
    reader: BufReader<File>,
    path: PathBuf,
    pos: u64,
    end: u64,
    line: Vec<u8>,
    invalid_lines: u64,
    first_invalid_offset: Option<u64>,
    ctx_warn: Option<Box<dyn Fn(u64, String)>>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> TaskError {
    TaskError::Io { what: what.to_string(), path: path.display().to_string(), cause: Arc::new(e) }
}

impl FileLinesSource {
    pub(crate) fn open(path: &Path, policy: InvalidUtf8, ctx: &SourceContext) -> Result<Self, TaskError> {
        let file = File::open(path).map_err(|e| io_error("cannot open input file", path, e))?;
        let len = file.metadata().map_err(|e| io_error("cannot read metadata of input file", path, e))?.len();
        let share = |i: u64| (i as u128 * len as u128 / ctx.parallelism as u128) as u64;
        let (start, end) = (share(ctx.subtask as u64), share(ctx.subtask as u64 + 1));
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut pos = start;
        if start > 0 {
            // The line that straddles `start` belongs to the previous range: skip past its end.
            reader.seek(SeekFrom::Start(start - 1)).map_err(|e| io_error("cannot seek in input file", path, e))?;
            let mut skipped = Vec::new();
            let n = reader.read_until(b'\n', &mut skipped).map_err(|e| io_error("cannot read input file", path, e))?;
            pos = start - 1 + n as u64;
        }
        let job = ctx.job.clone();
        let (node, subtask) = (ctx.node, ctx.subtask);
        let warn = move |count: u64, message: String| {
            let operator = job.node_names.get(node).cloned().unwrap_or_default();
            job.warn(JobWarning { operator, subtask, count, message });
        };
        Ok(Self {
            policy,
            node,
            reader,
            path: path.to_path_buf(),
            pos,
            end,
            line: Vec::with_capacity(256),
            invalid_lines: 0,
            first_invalid_offset: None,
            ctx_warn: Some(Box::new(warn)),
        })
    }

    fn report(&mut self) {
        if self.invalid_lines > 0 {
            if let Some(warn) = self.ctx_warn.take() {
                warn(
                    self.invalid_lines,
                    format!(
                        "{} line(s) of '{}' are not valid UTF-8 and were skipped (first at byte offset {})",
                        self.invalid_lines,
                        self.path.display(),
                        self.first_invalid_offset.unwrap_or(0)
                    ),
                );
            }
        }
    }
}

impl Source<String> for FileLinesSource {
    fn next_batch(&mut self, out: &mut Vec<String>, max_records: usize) -> Result<SourceStatus, TaskError> {
        for _ in 0..max_records {
            if self.pos >= self.end {
                self.report();
                return Ok(SourceStatus::Finished);
            }
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|e| io_error("cannot read input file", &self.path, e))?;
            if n == 0 {
                self.report();
                return Ok(SourceStatus::Finished);
            }
            let offset = self.pos;
            self.pos += n as u64;
            if self.line.last() == Some(&b'\n') {
                self.line.pop();
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
            }
            match std::str::from_utf8(&self.line) {
                Ok(s) => out.push(s.to_owned()),
                Err(e) if self.policy == InvalidUtf8::Fail => {
                    return Err(TaskError::User {
                        node: self.node,
                        message: format!(
                            "the line at byte offset {offset} of '{}' is not valid UTF-8 ({e})",
                            self.path.display()
                        ),
                    });
                }
                Err(_) => {
                    self.invalid_lines += 1;
                    self.first_invalid_offset.get_or_insert(offset);
                }
            }
        }
        Ok(SourceStatus::More)
    }
}

/// Records pushed by the host application.
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
}

/// The host application's end of a channel source. Cloneable; the source ends when every
/// clone has been dropped.
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
