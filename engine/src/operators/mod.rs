//! Operators and the chain that connects them. Operators of one chain run in one task and pass
//! records by method call in batches: each link is an `OpNode` that runs its operator over a
//! whole batch (a monomorphized loop) and hands the output batch to the next link through one
//! dynamic call. Dynamic dispatch, metrics and bookkeeping are therefore paid per batch, not per
//! record. The first link of a task fed by an exchange reads records in place from the network
//! buffer ([`Operator::process_archived`]); an owned record is deserialized only when the user
//! function takes one.
//!
//! A chain ends in a sink or in the task's network output; both report readiness, which is how
//! backpressure reaches the task loop: the loop feeds the next batch only when the chain is ready.
//!
//! Checkpoints go down the chain the same way: `Control::snapshot_state` asks every link for
//! its operator's state (keyed operators through their shared `keyed_core`, operator state
//! through `operator_state`), `Control::restore_state` gives it back before any input, and
//! `Control::notify_checkpoint` tells every link when a checkpoint completed or was aborted.

#[cfg(test)]
mod checkpoint_tests;
pub mod filter;
pub mod flat_map;
pub mod join;
pub(crate) mod keyed_core;
pub mod map;
pub mod operator_state;
pub mod process;
pub mod reduce;
pub(crate) mod state_parts;
pub mod watermarks;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corestream_netstack::record::deserialize;
use corestream_netstack::{Data, Event, RecordIter};

use crate::checkpoint::{
    CheckpointId, CheckpointNotice, OperatorStateParts, PendingParts, PendingSnapshot, StateHookError, TaskSnapshot,
};
use crate::error::TaskError;

/// Whether a chain can take more input now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The chain's output has no room; wait for credit (or the host to read).
    Blocked,
}

/// Why partly filled buffers are being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// The producer has no more input for now.
    Idle,
    /// The buffer timeout elapsed while the producer was busy.
    Timeout,
    /// End of input or an event that must follow the records before it.
    Final,
}

/// Control of a chain from the task loop, independent of the record type. The defaults are
/// those of a chain end without network output (a sink); links in the middle of a chain
/// delegate every method to their successor.
pub(crate) trait Control {
    /// Passes an in-band event down the chain.
    fn emit_event(&mut self, _event: &Event) -> Result<(), TaskError> {
        Ok(())
    }
    /// Runs end-of-input logic in steps of at most `max_records` output records; returns true
    /// when every link has finished.
    fn finish_step(&mut self, _max_records: usize) -> Result<bool, TaskError> {
        Ok(true)
    }
    fn poll_ready(&mut self) -> Result<Readiness, TaskError> {
        Ok(Readiness::Ready)
    }
    /// Sends partly filled buffers; returns whether anything was sent.
    fn flush(&mut self, _reason: FlushReason) -> Result<bool, TaskError> {
        Ok(false)
    }
    /// Whether records wait in partly filled buffers.
    fn has_unflushed(&self) -> bool {
        false
    }
    /// Signals end of partition downstream (after a final flush).
    fn close(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
    /// Ships what credit allows; returns true when nothing is left waiting for credit.
    fn drain(&mut self) -> Result<bool, TaskError> {
        Ok(true)
    }
    /// The earliest processing time (ms since the epoch) at which some link wants
    /// [`Control::on_processing_time`].
    fn next_deadline(&self) -> Option<i64> {
        None
    }
    /// Fires what is due at processing time `now_ms`.
    fn on_processing_time(&mut self, _now_ms: i64) -> Result<(), TaskError> {
        Ok(())
    }
    /// Continues work a watermark or processing time left pending (window firings are emitted
    /// in steps, so output stays under backpressure), emitting about `max_records` per link;
    /// returns true when nothing is pending. The task loop calls it, waiting for readiness
    /// between steps, before it takes more input.
    fn resume(&mut self, _max_records: usize) -> Result<bool, TaskError> {
        Ok(true)
    }
    /// Synchronous part of a checkpoint: every link adds the state of its node (and of its
    /// side outputs' links) to `into`. The task loop calls it only between batches and when no
    /// firing is pending (`resume` returned true): a link with firings or held events would have
    /// emitted part of a watermark's output, and a snapshot then would split it.
    fn snapshot_state(&mut self, _checkpoint: CheckpointId, _into: &mut PendingSnapshot) -> Result<(), TaskError> {
        Ok(())
    }
    /// Before any input: every link takes back the state its node wrote, if any.
    fn restore_state(&mut self, _from: &TaskSnapshot) -> Result<(), TaskError> {
        Ok(())
    }
    /// A checkpoint completed or was aborted; every link hears of it.
    fn notify_checkpoint(&mut self, _notice: CheckpointNotice) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Records an operator emits per firing step (its output then waits for readiness).
pub(crate) const FIRE_STEP_RECORDS: usize = 1024;

/// The input side of a chain link.
pub(crate) trait Emit<T: Data>: Control {
    /// Processes a batch; leaves `batch` empty.
    fn emit_batch(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError>;
    /// Processes the records of one network buffer, read in place.
    fn emit_archived(&mut self, bytes: &[u8]) -> Result<(), TaskError>;
}

/// A record-at-a-time operator with one input and one output. Implementations override the
/// batch methods only when they can do better than the per-record loop.
pub trait Operator<I: Data, O: Data>: 'static {
    fn process(&mut self, record: I, out: &mut Vec<O>);

    fn process_batch(&mut self, input: &mut Vec<I>, out: &mut Vec<O>) {
        for record in input.drain(..) {
            self.process(record, out);
        }
    }

    /// Records of one exchange buffer, read in place.
    fn process_archived(&mut self, input: RecordIter<'_, I>, out: &mut Vec<O>) {
        for archived in input {
            self.process(deserialize::<I>(archived), out);
        }
    }

    /// Called once the input has ended; may emit in steps of at most `max_records` (return
    /// false while more remains).
    fn finish(&mut self, _out: &mut Vec<O>, _max_records: usize) -> bool {
        true
    }

    /// The task's event-time clock advanced to `watermark`: fire what is due. Returns the
    /// watermark to forward downstream (`None` swallows it).
    fn on_watermark(&mut self, watermark: i64, _out: &mut Vec<O>) -> Option<i64> {
        Some(watermark)
    }

    /// The earliest processing time (ms since the epoch) at which this operator wants
    /// [`Operator::on_processing_time`].
    fn next_deadline(&self) -> Option<i64> {
        None
    }

    /// Processing time reached `now_ms`: fire what is due (or note it for `fire_step`).
    fn on_processing_time(&mut self, _now_ms: i64, _out: &mut Vec<O>) {}

    /// Emits pending firings, at most about `max_records`; true when none is left. Operators
    /// that fire many timers at once note them in `on_watermark`/`on_processing_time` and emit
    /// them here, so the chain can wait for the output between steps.
    fn fire_step(&mut self, _out: &mut Vec<O>, _max_records: usize) -> bool {
        true
    }

    /// Adds this operator subtask's state to `into` (synchronous part of a checkpoint: copy
    /// or version what is needed; writing happens elsewhere).
    fn snapshot_state(&mut self, _checkpoint: CheckpointId, _into: &mut PendingParts) -> Result<(), StateHookError> {
        Ok(())
    }

    /// Takes back the state this operator subtask wrote to a checkpoint, before any input.
    fn restore_state(&mut self, _from: &OperatorStateParts) -> Result<(), StateHookError> {
        Ok(())
    }

    /// A checkpoint completed or was aborted.
    fn notify_checkpoint(&mut self, _notice: CheckpointNotice) -> Result<(), StateHookError> {
        Ok(())
    }
}

/// Deserializes a buffer's records into `scratch` and runs them as one batch: for operators
/// whose batch method does per-batch work (reading the clock, computing timestamps).
#[inline]
pub(crate) fn archived_as_batch<I: Data, O: Data, Op: Operator<I, O> + ?Sized>(
    op: &mut Op,
    input: RecordIter<'_, I>,
    scratch: &mut Vec<I>,
    out: &mut Vec<O>,
) {
    scratch.clear();
    scratch.extend(input.map(deserialize::<I>));
    op.process_batch(scratch, out);
}

/// Milliseconds since the Unix epoch: the processing-time clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Nanoseconds on the host's `CLOCK_MONOTONIC`: the clock of latency markers. Every process on
/// one host reads the same clock (unlike `Instant`, whose origin is not exposed), so a marker's
/// age is meaningful wherever on the host it is received; across hosts it is not (Flink uses
/// wall-clock time there and accepts the skew).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC is supported on every
    // Linux; clock_gettime writes only through the pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

thread_local! {
    static CURRENT_NODE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Records which operator is about to run user code on this thread, so a panic can name it.
#[inline]
pub(crate) fn enter_node(node: usize) {
    CURRENT_NODE.with(|c| c.set(node));
}

/// The operator that last entered user code on this thread.
pub(crate) fn current_node() -> Option<usize> {
    CURRENT_NODE.with(|c| {
        let v = c.get();
        (v != usize::MAX).then_some(v)
    })
}

/// Record counters of one operator subtask, readable while the job runs.
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub late_records_dropped: AtomicU64,
    /// Ages of the latency markers a sink received, per source subtask.
    pub(crate) latency: crate::runtime::metrics::LatencyHistograms,
}

impl OperatorMetrics {
    #[inline]
    pub(crate) fn add(&self, records_in: usize, records_out: usize) {
        if records_in > 0 {
            self.records_in.fetch_add(records_in as u64, Ordering::Relaxed);
        }
        if records_out > 0 {
            self.records_out.fetch_add(records_out as u64, Ordering::Relaxed);
        }
    }
}

/// One link of a chain: an operator, its output batch, its side outputs and the next link.
pub(crate) struct OpNode<I: Data, O: Data, Op: Operator<I, O>> {
    pub(crate) op: Op,
    pub(crate) out: Vec<O>,
    pub(crate) next: Box<dyn Emit<O>>,
    pub(crate) sides: Vec<Box<dyn SideSink>>,
    pub(crate) metrics: Arc<OperatorMetrics>,
    pub(crate) node: usize,
    pub(crate) finished: bool,
    /// Firings are pending (emitted in steps by `resume`).
    pub(crate) firing: bool,
    /// Events waiting behind the pending firings, in order.
    pub(crate) held: std::collections::VecDeque<Held>,
    pub(crate) _in: std::marker::PhantomData<fn(I)>,
}

impl<I: Data, O: Data, Op: Operator<I, O>> OpNode<I, O, Op> {
    pub(crate) fn new(op: Op, next: Box<dyn Emit<O>>, metrics: Arc<OperatorMetrics>, node: usize) -> Self {
        Self::with_sides(op, next, Vec::new(), metrics, node)
    }

    pub(crate) fn with_sides(
        op: Op,
        next: Box<dyn Emit<O>>,
        sides: Vec<Box<dyn SideSink>>,
        metrics: Arc<OperatorMetrics>,
        node: usize,
    ) -> Self {
        Self {
            op,
            out: Vec::new(),
            next,
            sides,
            metrics,
            node,
            finished: false,
            firing: false,
            held: std::collections::VecDeque::new(),
            _in: std::marker::PhantomData,
        }
    }

    #[inline]
    fn push_out(&mut self, records_in: usize) -> Result<(), TaskError> {
        self.metrics.add(records_in, self.out.len());
        for side in &mut self.sides {
            side.push_pending()?;
        }
        if self.out.is_empty() {
            return Ok(());
        }
        self.next.emit_batch(&mut self.out)
    }
}

impl<I: Data, O: Data, Op: Operator<I, O>> Control for OpNode<I, O, Op> {
    fn emit_event(&mut self, event: &Event) -> Result<(), TaskError> {
        if self.firing || !self.held.is_empty() {
            self.held.push_back(Held::Process(*event));
            return Ok(());
        }
        self.handle_event(event)
    }

    fn finish_step(&mut self, max_records: usize) -> Result<bool, TaskError> {
        if !self.finished {
            enter_node(self.node);
            self.finished = self.op.finish(&mut self.out, max_records);
            self.push_out(0)?;
            if !self.finished {
                return Ok(false);
            }
        }
        for side in &mut self.sides {
            if !side.control().finish_step(max_records)? {
                return Ok(false);
            }
        }
        self.next.finish_step(max_records)
    }

    fn poll_ready(&mut self) -> Result<Readiness, TaskError> {
        let mut ready = Readiness::Ready;
        for side in &mut self.sides {
            if side.control().poll_ready()? == Readiness::Blocked {
                ready = Readiness::Blocked;
            }
        }
        if self.next.poll_ready()? == Readiness::Blocked {
            ready = Readiness::Blocked;
        }
        Ok(ready)
    }

    fn flush(&mut self, reason: FlushReason) -> Result<bool, TaskError> {
        let mut sent = false;
        for side in &mut self.sides {
            sent |= side.control().flush(reason)?;
        }
        Ok(self.next.flush(reason)? | sent)
    }

    fn has_unflushed(&self) -> bool {
        self.sides.iter().any(|s| s.control_ref().has_unflushed()) || self.next.has_unflushed()
    }

    fn close(&mut self) -> Result<(), TaskError> {
        for side in &mut self.sides {
            side.control().close()?;
        }
        self.next.close()
    }

    fn drain(&mut self) -> Result<bool, TaskError> {
        let mut done = true;
        for side in &mut self.sides {
            done &= side.control().drain()?;
        }
        Ok(self.next.drain()? & done)
    }

    fn next_deadline(&self) -> Option<i64> {
        let next = self.next.next_deadline();
        match (self.op.next_deadline(), next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_processing_time(&mut self, now_ms: i64) -> Result<(), TaskError> {
        if self.firing || !self.held.is_empty() {
            return Ok(());
        }
        if self.op.next_deadline().is_some_and(|d| d <= now_ms) {
            enter_node(self.node);
            self.op.on_processing_time(now_ms, &mut self.out);
            let done = self.op.fire_step(&mut self.out, FIRE_STEP_RECORDS);
            self.push_out(0)?;
            if !done {
                self.firing = true;
                return Ok(());
            }
        }
        self.next.on_processing_time(now_ms)
    }

    fn resume(&mut self, max_records: usize) -> Result<bool, TaskError> {
        if self.firing {
            enter_node(self.node);
            let done = self.op.fire_step(&mut self.out, max_records);
            self.push_out(0)?;
            if !done {
                return Ok(false);
            }
            self.firing = false;
        }
        while let Some(held) = self.held.pop_front() {
            match held {
                Held::Forward(event) => self.forward_event(&event)?,
                Held::Process(event) => {
                    self.handle_event(&event)?;
                    if self.firing {
                        return Ok(false);
                    }
                }
            }
        }
        self.next.resume(max_records)
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingSnapshot) -> Result<(), TaskError> {
        debug_assert!(
            !self.firing && self.held.is_empty(),
            "node {}: snapshot with firings pending (the task loop snapshots only after `resume` returned true)",
            self.node
        );
        let mut parts = PendingParts::for_snapshot(into);
        enter_node(self.node);
        self.op.snapshot_state(checkpoint, &mut parts).map_err(|e| self.hook_error("snapshotting", e))?;
        into.put_node_pending(self.node, parts);
        for side in &mut self.sides {
            side.control().snapshot_state(checkpoint, into)?;
        }
        self.next.snapshot_state(checkpoint, into)
    }

    fn restore_state(&mut self, from: &TaskSnapshot) -> Result<(), TaskError> {
        if let Some(parts) = from.node(self.node) {
            enter_node(self.node);
            self.op.restore_state(parts).map_err(|e| self.hook_error("restoring", e))?;
        }
        for side in &mut self.sides {
            side.control().restore_state(from)?;
        }
        self.next.restore_state(from)
    }

    fn notify_checkpoint(&mut self, notice: CheckpointNotice) -> Result<(), TaskError> {
        enter_node(self.node);
        self.op.notify_checkpoint(notice).map_err(|e| self.hook_error("handling a checkpoint notice", e))?;
        for side in &mut self.sides {
            side.control().notify_checkpoint(notice)?;
        }
        self.next.notify_checkpoint(notice)
    }
}

impl<I: Data, O: Data, Op: Operator<I, O>> OpNode<I, O, Op> {
    fn hook_error(&self, doing: &str, error: StateHookError) -> TaskError {
        TaskError::Checkpoint { node: Some(self.node), message: format!("{doing} state: {error}") }
    }
}

/// An event held by a link while its firings are emitted in steps.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Held {
    /// The operator has handled it; pass it on.
    Forward(Event),
    /// The operator has yet to handle it.
    Process(Event),
}

impl<I: Data, O: Data, Op: Operator<I, O>> OpNode<I, O, Op> {
    /// Runs an event through the operator: a watermark fires what is due (the first step now,
    /// the rest in `resume`, the watermark held until then); the event then goes downstream.
    fn handle_event(&mut self, event: &Event) -> Result<(), TaskError> {
        let event = match *event {
            Event::Watermark(w) => {
                enter_node(self.node);
                let forward = self.op.on_watermark(w, &mut self.out);
                let done = self.op.fire_step(&mut self.out, FIRE_STEP_RECORDS);
                self.push_out(0)?;
                if !done {
                    self.firing = true;
                    if let Some(w) = forward {
                        self.held.push_front(Held::Forward(Event::Watermark(w)));
                    }
                    return Ok(());
                }
                match forward {
                    Some(w) => Event::Watermark(w),
                    None => return Ok(()),
                }
            }
            other => other,
        };
        self.forward_event(&event)
    }

    /// Passes an event on; a latency marker takes the main output only (it measures one path,
    /// so it is never duplicated).
    fn forward_event(&mut self, event: &Event) -> Result<(), TaskError> {
        if let Event::LatencyMarker { .. } = event {
            return self.next.emit_event(event);
        }
        for side in &mut self.sides {
            side.control().emit_event(event)?;
        }
        self.next.emit_event(event)
    }
}

/// Records an operator sends to a side output (an [`crate::OutputTag`]), queued until the end of
/// the batch that produced them. Shared between the operator and its chain link, on one thread.
pub struct SideOutput<X> {
    pending: std::rc::Rc<std::cell::RefCell<Vec<X>>>,
}

impl<X> SideOutput<X> {
    /// Emits `record` to the side output.
    pub fn emit(&self, record: X) {
        self.pending.borrow_mut().push(record);
    }
}

impl<X> Clone for SideOutput<X> {
    fn clone(&self) -> Self {
        Self { pending: self.pending.clone() }
    }
}

/// The chain-link side of a side output: pushes queued records into the side edge's output.
pub(crate) trait SideSink {
    fn push_pending(&mut self) -> Result<(), TaskError>;
    fn control(&mut self) -> &mut dyn Control;
    fn control_ref(&self) -> &dyn Control;
}

struct SideSinkImpl<X: Data> {
    pending: std::rc::Rc<std::cell::RefCell<Vec<X>>>,
    batch: Vec<X>,
    emit: Box<dyn Emit<X>>,
}

impl<X: Data> SideSink for SideSinkImpl<X> {
    fn push_pending(&mut self) -> Result<(), TaskError> {
        std::mem::swap(&mut *self.pending.borrow_mut(), &mut self.batch);
        if self.batch.is_empty() {
            return Ok(());
        }
        self.emit.emit_batch(&mut self.batch)?;
        self.batch.clear();
        Ok(())
    }
    fn control(&mut self) -> &mut dyn Control {
        &mut *self.emit
    }
    fn control_ref(&self) -> &dyn Control {
        &*self.emit
    }
}

/// A side output and the sink that carries its records to the side edge's output.
pub(crate) fn side_output<X: Data>(emit: Box<dyn Emit<X>>) -> (SideOutput<X>, Box<dyn SideSink>) {
    let pending = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    (SideOutput { pending: pending.clone() }, Box::new(SideSinkImpl { pending, batch: Vec::new(), emit }))
}

impl<I: Data, O: Data, Op: Operator<I, O>> Emit<I> for OpNode<I, O, Op> {
    #[inline]
    fn emit_batch(&mut self, batch: &mut Vec<I>) -> Result<(), TaskError> {
        let n = batch.len();
        enter_node(self.node);
        self.op.process_batch(batch, &mut self.out);
        debug_assert!(batch.is_empty(), "operators drain their input batch");
        batch.clear();
        self.push_out(n)
    }

    fn emit_archived(&mut self, bytes: &[u8]) -> Result<(), TaskError> {
        let n = corestream_netstack::record_count(bytes);
        enter_node(self.node);
        // SAFETY: `bytes` is a buffer of this node's input exchange, filled by the upstream
        // task's `NetworkOutput` with records of type `I` (the graph connects an edge only
        // between a producer of `I` and a consumer of `I`, within one environment).
        let records = unsafe { RecordIter::new(bytes) };
        self.op.process_archived(records, &mut self.out);
        self.push_out(n)
    }
}

/// The end of a chain that has no output (a sink's output side).
pub(crate) struct NullEmit;

impl Control for NullEmit {}

impl<T: Data> Emit<T> for NullEmit {
    fn emit_batch(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError> {
        batch.clear();
        Ok(())
    }
    fn emit_archived(&mut self, _bytes: &[u8]) -> Result<(), TaskError> {
        Ok(())
    }
}
