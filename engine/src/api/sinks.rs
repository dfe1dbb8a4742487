//! Built-in sinks: collect into the host application (a bounded channel it reads, with
//! backpressure back into the job), print, discard, and text files. A sink is the end of a
//! chain; a sink that cannot take more right now reports it through `poll_ready`, and the task
//! stops feeding it until it can. The sink link also ends latency markers: it records each
//! marker's age in its operator's histogram of the marker's source subtask.
//!
//! In a job with checkpoints the sink link passes the checkpoint hooks to its sink: the
//! snapshot (bytes the sink keeps as its subtask's state, the part `SINK_STATE_PART` with the
//! layout `Subtask`), the restore before any input, and the completion or abortion of a
//! checkpoint. Two-phase-commit sinks ([`crate::api::two_phase`]) are built on these.

use std::collections::VecDeque;
use std::fmt::{Debug, Display};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corestream_netstack::record::deserialize;
use corestream_netstack::{Data, Doorbell, Event, RecordIter};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::checkpoint::{
    CheckpointId, CheckpointNotice, OperatorStateParts, PartLayout, PendingSnapshot, TaskSnapshot,
};
use crate::error::TaskError;
use crate::fs::{AtomicFile, OutputError};
use crate::operators::{enter_node, monotonic_ns, Control, Emit, OperatorMetrics, Readiness};
use crate::runtime::job::JobShared;

/// Error a sink reports; it fails the job, naming the sink.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Wakes a sink's task from any thread. A sink whose `poll_ready` returned `false` calls
/// [`SinkWaker::wake`] once it can take more; sinks that never do are polled again after at
/// most 10 ms.
#[derive(Clone)]
pub struct SinkWaker {
    pub(crate) bell: Arc<Doorbell>,
}

impl std::fmt::Debug for SinkWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkWaker").finish_non_exhaustive()
    }
}

impl SinkWaker {
    pub fn wake(&self) {
        self.bell.ring();
    }
}

/// What a sink subtask knows about itself.
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub subtask: u32,
    pub parallelism: u32,
    /// Wakes the sink's task after `poll_ready` returned `false`.
    pub waker: SinkWaker,
    /// Output staged here is committed only when the whole job has succeeded.
    pub commits: JobCommits,
}

/// A sink: the end of a stream.
pub trait Sink<T: Data>: 'static {
    /// Takes a batch; leaves it empty.
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError>;

    /// Records of one exchange buffer, read in place. The default deserializes them.
    fn write_archived(&mut self, records: RecordIter<'_, T>, scratch: &mut Vec<T>) -> Result<(), SinkError> {
        scratch.extend(records.map(deserialize::<T>));
        self.write_batch(scratch)
    }

    /// Whether the sink can take another batch now. After returning `false`, call the
    /// context's [`SinkWaker`] when that changes.
    fn poll_ready(&mut self) -> bool {
        true
    }

    /// The input has ended: write out anything buffered.
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// The synchronous part of checkpoint `checkpoint`, between two batches: what this subtask
    /// must get back if the job is restored from it (`None`: nothing). A failure fails the
    /// checkpoint.
    fn snapshot_state(&mut self, _checkpoint: CheckpointId) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(None)
    }

    /// Before any input of a job restored from a checkpoint: the bytes this subtask's
    /// `snapshot_state` returned for it (not called when it returned `None`).
    fn restore_state(&mut self, _state: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }

    /// A checkpoint completed (its state is durable and will be restored after a failure) or
    /// was aborted.
    fn notify_checkpoint(&mut self, _notice: CheckpointNotice) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The name of a sink's state among its node's state parts.
pub(crate) const SINK_STATE_PART: &str = "sink";

/// A sink as the last link of a chain.
pub(crate) struct SinkLink<T: Data, S: Sink<T>> {
    pub(crate) sink: S,
    pub(crate) scratch: Vec<T>,
    pub(crate) metrics: Arc<OperatorMetrics>,
    pub(crate) node: usize,
}

impl<T: Data, S: Sink<T>> SinkLink<T, S> {
    fn fail(&self, e: SinkError) -> TaskError {
        TaskError::User { node: self.node, message: e.to_string() }
    }

    fn checkpoint_error(&self, what: &str, e: SinkError) -> TaskError {
        TaskError::Checkpoint { node: Some(self.node), message: format!("{what}: {e}") }
    }
}

impl<T: Data, S: Sink<T>> Control for SinkLink<T, S> {
    fn emit_event(&mut self, event: &Event) -> Result<(), TaskError> {
        if let Event::LatencyMarker { marked_time_ns, source_subtask } = *event {
            self.metrics.latency.record(source_subtask, monotonic_ns().saturating_sub(marked_time_ns));
        }
        Ok(())
    }

    fn finish_step(&mut self, _max_records: usize) -> Result<bool, TaskError> {
        enter_node(self.node);
        if !self.sink.poll_ready() {
            // Records of the last batch still wait for room; the task waits for readiness.
            return Ok(false);
        }
        self.sink.finish().map_err(|e| self.fail(e))?;
        Ok(true)
    }

    fn poll_ready(&mut self) -> Result<Readiness, TaskError> {
        enter_node(self.node);
        Ok(if self.sink.poll_ready() { Readiness::Ready } else { Readiness::Blocked })
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingSnapshot) -> Result<(), TaskError> {
        enter_node(self.node);
        let state = self.sink.snapshot_state(checkpoint).map_err(|e| {
            self.checkpoint_error(&format!("the sink could not take its part of checkpoint {checkpoint}"), e)
        })?;
        if let Some(bytes) = state {
            let mut parts = OperatorStateParts::default();
            parts.push(SINK_STATE_PART, PartLayout::Subtask, bytes);
            into.put_node(self.node, parts);
        }
        Ok(())
    }

    fn restore_state(&mut self, from: &TaskSnapshot) -> Result<(), TaskError> {
        enter_node(self.node);
        let Some(part) = from.node(self.node).and_then(|parts| parts.get(SINK_STATE_PART)) else { return Ok(()) };
        if part.layout != PartLayout::Subtask {
            return Err(TaskError::Checkpoint {
                node: Some(self.node),
                message: format!("the checkpoint's sink state has the layout {:?}, not Subtask", part.layout),
            });
        }
        self.sink
            .restore_state(&part.bytes)
            .map_err(|e| self.checkpoint_error("the sink could not restore its state", e))
    }

    fn notify_checkpoint(&mut self, notice: CheckpointNotice) -> Result<(), TaskError> {
        enter_node(self.node);
        self.sink.notify_checkpoint(notice).map_err(|e| match notice {
            CheckpointNotice::Complete(id) => {
                self.checkpoint_error(&format!("the sink could not commit checkpoint {id}"), e)
            }
            CheckpointNotice::Aborted(id) => {
                self.checkpoint_error(&format!("the sink could not abort checkpoint {id}"), e)
            }
        })
    }
}

impl<T: Data, S: Sink<T>> Emit<T> for SinkLink<T, S> {
    #[inline]
    fn emit_batch(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError> {
        self.metrics.add(batch.len(), 0);
        enter_node(self.node);
        self.sink.write_batch(batch).map_err(|e| self.fail(e))?;
        batch.clear();
        Ok(())
    }

    fn emit_archived(&mut self, bytes: &[u8]) -> Result<(), TaskError> {
        self.metrics.add(corestream_netstack::record_count(bytes), 0);
        enter_node(self.node);
        let mut scratch = std::mem::take(&mut self.scratch);
        // SAFETY: `bytes` is a buffer of this sink's input exchange, filled by the upstream
        // task's `NetworkOutput` with records of type `T` (edges connect equal record types).
        let records = unsafe { RecordIter::new(bytes) };
        let result = self.sink.write_archived(records, &mut scratch);
        scratch.clear();
        self.scratch = scratch;
        result.map_err(|e| self.fail(e))
    }
}

/// Drops records (they are counted in the job result).
pub(crate) struct DiscardSink;

impl<T: Data> Sink<T> for DiscardSink {
    #[inline]
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        batch.clear();
        Ok(())
    }

    fn write_archived(&mut self, _records: RecordIter<'_, T>, _scratch: &mut Vec<T>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Prints records to standard output, prefixed with `subtask>` when parallel (as Flink does).
pub(crate) struct PrintSink {
    pub(crate) prefix: Option<u32>,
}

impl<T: Data + Debug> Sink<T> for PrintSink {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for r in batch.drain(..) {
            match self.prefix {
                Some(p) => writeln!(out, "{p}> {r:?}")?,
                None => writeln!(out, "{r:?}")?,
            }
        }
        Ok(())
    }
}

/// Output a sink has staged: made visible only once every task of the job has finished
/// successfully (the second phase of a two-phase commit), discarded when dropped uncommitted
/// (the job failed or was cancelled).
pub trait PendingCommit: Send + 'static {
    /// Makes the staged output visible. A failure fails the job.
    fn commit(self: Box<Self>) -> Result<(), SinkError>;
}

impl PendingCommit for AtomicFile {
    fn commit(self: Box<Self>) -> Result<(), SinkError> {
        AtomicFile::commit(*self).map_err(Into::into)
    }
}

/// Where a sink hands the output it staged, to be committed when the whole job has
/// succeeded ([`JobHandle::join`](crate::JobHandle::join)).
#[derive(Clone)]
pub struct JobCommits {
    pub(crate) job: Arc<JobShared>,
}

impl std::fmt::Debug for JobCommits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCommits").finish_non_exhaustive()
    }
}

impl JobCommits {
    /// Commits `output` when the job succeeds; drops it when the job fails or is cancelled.
    pub fn stage(&self, output: Box<dyn PendingCommit>) {
        self.job.stage_commit(output);
    }
}

/// Writes one line per record (`Display`) to a file; with parallelism above one, `path` is a
/// directory holding one `part-<subtask>` file per subtask. Each file is staged beside its
/// destination and renamed into place only when the whole job has succeeded, so a failed or
/// cancelled job leaves an earlier output as it was.
pub(crate) struct TextFileSink {
    out: Option<BufWriter<AtomicFile>>,
    commits: JobCommits,
}

impl TextFileSink {
    pub(crate) fn create(path: &Path, ctx: SinkContext) -> Result<Self, SinkError> {
        let (dir, file_path) = if ctx.parallelism == 1 {
            (path.parent().filter(|p| !p.as_os_str().is_empty()), path.to_path_buf())
        } else {
            (Some(path), path.join(format!("part-{}", ctx.subtask)))
        };
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| OutputError::Io {
                what: "cannot create the directory of output",
                path: file_path.clone(),
                source: e,
            })?;
        }
        let file = AtomicFile::create(file_path)?;
        Ok(Self { out: Some(BufWriter::with_capacity(256 * 1024, file)), commits: ctx.commits })
    }
}

impl<T: Data + Display> Sink<T> for TextFileSink {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        let out = self.out.as_mut().ok_or("the text file sink was written after it finished")?;
        for r in batch.drain(..) {
            writeln!(out, "{r}")?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| e.into_error())?;
            self.commits.stage(Box::new(file));
        }
        Ok(())
    }
}

/// Shared by the collect-sink subtasks and the host's [`CollectStream`]: the sinks' doorbells,
/// rung when the host has made room (only while a sink waits) or dropped the stream.
pub(crate) struct CollectShared {
    pub(crate) bells: Mutex<Vec<Arc<Doorbell>>>,
    waiting: AtomicBool,
    capacity: usize,
}

impl CollectShared {
    fn ring_all(&self) {
        for b in self.bells.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            b.ring();
        }
    }

    /// After the host took a record: wake waiting sinks once half the channel is free.
    fn after_receive(&self, queued: usize) {
        // SeqCst pairs with the sink's store of `waiting` and its retry: either the sink sees
        // the room made by this receive, or this load sees that it waits.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst)
            && queued <= self.capacity / 2
            && self.waiting.swap(false, Ordering::SeqCst)
        {
            self.ring_all();
        }
    }
}

pub(crate) struct CollectSink<T> {
    pub(crate) tx: Sender<T>,
    pub(crate) pending: VecDeque<T>,
    pub(crate) shared: Arc<CollectShared>,
    pub(crate) disconnected: bool,
}

const DISCONNECTED: &str =
    "the host application dropped the collect stream of this job; its records can no longer be delivered";

impl<T> CollectSink<T> {
    fn push_pending(&mut self) {
        while let Some(r) = self.pending.pop_front() {
            match self.tx.try_send(r) {
                Ok(()) => {}
                Err(TrySendError::Full(r)) => {
                    self.pending.push_front(r);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.disconnected = true;
                    self.pending.clear();
                    return;
                }
            }
        }
    }
}

impl<T: Data> Sink<T> for CollectSink<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        if self.disconnected {
            return Err(DISCONNECTED.into());
        }
        self.pending.extend(batch.drain(..));
        self.push_pending();
        if self.disconnected {
            return Err(DISCONNECTED.into());
        }
        Ok(())
    }

    fn poll_ready(&mut self) -> bool {
        self.push_pending();
        if self.pending.is_empty() || self.disconnected {
            // A disconnected stream is reported by the next write or by `finish`.
            return true;
        }
        // Announce the wait, then look again: a host that drained the channel in between
        // would otherwise not know it has to ring.
        self.shared.waiting.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.push_pending();
        self.pending.is_empty() || self.disconnected
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        // `finish` runs only once `poll_ready` held, so nothing should be pending.
        self.push_pending();
        if self.disconnected {
            return Err(DISCONNECTED.into());
        }
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err("collect sink finished with undelivered records".into())
        }
    }
}

/// The host application's end of a collect sink: an iterator over the job's output that ends
/// when the job has ended. Reading slowly slows the job down (backpressure), never buffers
/// without bound. Dropping it while the job runs fails the job (its output has nowhere to go).
pub struct CollectStream<T> {
    pub(crate) rx: Receiver<T>,
    pub(crate) shared: Arc<CollectShared>,
}

impl<T> std::fmt::Debug for CollectStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectStream").field("queued", &self.rx.len()).finish()
    }
}

impl<T> CollectStream<T> {
    pub(crate) fn new(capacity: usize) -> (Sender<T>, Self) {
        let capacity = capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let shared =
            Arc::new(CollectShared { bells: Mutex::new(Vec::new()), waiting: AtomicBool::new(false), capacity });
        (tx, Self { rx, shared })
    }

    /// The next record, waiting at most `timeout`; `Ok(None)` when the job has ended.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<T>, RecvTimeoutError> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => {
                self.shared.after_receive(self.rx.len());
                Ok(Some(r))
            }
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records waiting to be read.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

impl<T> Iterator for CollectStream<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let r = self.rx.recv().ok()?;
        self.shared.after_receive(self.rx.len());
        Some(r)
    }
}

impl<T> Drop for CollectStream<T> {
    fn drop(&mut self) {
        // Sinks waiting for room must learn that nobody reads any more.
        self.shared.ring_all();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    /// Keeps the number of records it took as its state, and records what it was told.
    #[derive(Default)]
    struct Counting {
        records: u64,
        fail_snapshot: bool,
        heard: Rc<RefCell<Vec<String>>>,
    }

    impl Sink<u64> for Counting {
        fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), SinkError> {
            self.records += batch.len() as u64;
            batch.clear();
            Ok(())
        }

        fn snapshot_state(&mut self, checkpoint: CheckpointId) -> Result<Option<Vec<u8>>, SinkError> {
            if self.fail_snapshot {
                return Err("disk full".into());
            }
            self.heard.borrow_mut().push(format!("snapshot {checkpoint}"));
            Ok((self.records > 0).then(|| self.records.to_le_bytes().to_vec()))
        }

        fn restore_state(&mut self, state: &[u8]) -> Result<(), SinkError> {
            self.records = u64::from_le_bytes(state.try_into().map_err(|_| "not a count")?);
            self.heard.borrow_mut().push(format!("restore {}", self.records));
            Ok(())
        }

        fn notify_checkpoint(&mut self, notice: CheckpointNotice) -> Result<(), SinkError> {
            self.heard.borrow_mut().push(format!("{notice:?}"));
            Ok(())
        }
    }

    fn link(sink: Counting) -> SinkLink<u64, Counting> {
        SinkLink { sink, scratch: Vec::new(), metrics: Arc::new(OperatorMetrics::default()), node: 3 }
    }

    #[test]
    fn the_sink_link_passes_the_checkpoint_hooks_to_its_sink() {
        let heard = Rc::new(RefCell::new(Vec::new()));
        let mut first = link(Counting { heard: heard.clone(), ..Default::default() });
        let mut empty = PendingSnapshot::default();
        first.snapshot_state(1, &mut empty).unwrap();
        assert!(empty.is_empty(), "a sink without state adds nothing");
        first.emit_batch(&mut vec![1, 2, 3]).unwrap();
        let mut snapshot = PendingSnapshot::default();
        first.snapshot_state(2, &mut snapshot).unwrap();
        let part = snapshot.node(3).and_then(|p| p.get(SINK_STATE_PART)).expect("the sink's part");
        assert_eq!(part.layout, PartLayout::Subtask);
        first.notify_checkpoint(CheckpointNotice::Complete(2)).unwrap();
        first.notify_checkpoint(CheckpointNotice::Aborted(3)).unwrap();

        let mut second = link(Counting { heard: heard.clone(), ..Default::default() });
        second.restore_state(&snapshot).unwrap();
        assert_eq!(second.sink.records, 3);
        second.restore_state(&TaskSnapshot::default()).unwrap();
        assert_eq!(*heard.borrow(), ["snapshot 1", "snapshot 2", "Complete(2)", "Aborted(3)", "restore 3"]);
    }

    #[test]
    fn a_failed_sink_snapshot_is_a_checkpoint_error_naming_the_node() {
        let mut failing = link(Counting { fail_snapshot: true, ..Default::default() });
        match failing.snapshot_state(5, &mut PendingSnapshot::default()) {
            Err(TaskError::Checkpoint { node: Some(3), message }) => {
                assert!(message.contains("checkpoint 5") && message.contains("disk full"), "{message}")
            }
            other => panic!("expected a checkpoint error, got {other:?}"),
        }
    }
}
