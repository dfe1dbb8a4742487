//! Operators and the chain that connects them. Operators of one chain run in one task and pass
//! records by method call in batches: each link is an [`OpNode`] that runs its operator over a
//! whole batch (a monomorphized loop) and hands the output batch to the next link through one
//! dynamic call. Dynamic dispatch, metrics and bookkeeping are therefore paid per batch, not per
//! record. The first link of a task fed by an exchange reads records in place from the network
//! buffer ([`Operator::process_archived`]); an owned record is deserialized only when the user
//! function takes one.
//!
//! A chain ends in a sink or in the task's network output; both report readiness, which is how
//! backpressure reaches the task loop: the loop feeds the next batch only when the chain is ready.

pub mod filter;
pub mod flat_map;
pub mod map;
pub mod reduce;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corestream_netstack::record::deserialize;
use corestream_netstack::{Data, Event, RecordIter};

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
}

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

/// One link of a chain: an operator, its output batch and the next link.
pub(crate) struct OpNode<I: Data, O: Data, Op: Operator<I, O>> {
    pub(crate) op: Op,
    pub(crate) out: Vec<O>,
    pub(crate) next: Box<dyn Emit<O>>,
    pub(crate) metrics: Arc<OperatorMetrics>,
    pub(crate) node: usize,
    pub(crate) finished: bool,
    pub(crate) _in: std::marker::PhantomData<fn(I)>,
}

impl<I: Data, O: Data, Op: Operator<I, O>> OpNode<I, O, Op> {
    pub(crate) fn new(op: Op, next: Box<dyn Emit<O>>, metrics: Arc<OperatorMetrics>, node: usize) -> Self {
        Self { op, out: Vec::new(), next, metrics, node, finished: false, _in: std::marker::PhantomData }
    }

    #[inline]
    fn push_out(&mut self, records_in: usize) -> Result<(), TaskError> {
        self.metrics.add(records_in, self.out.len());
        if self.out.is_empty() {
            return Ok(());
        }
        self.next.emit_batch(&mut self.out)
    }
}

impl<I: Data, O: Data, Op: Operator<I, O>> Control for OpNode<I, O, Op> {
    fn emit_event(&mut self, event: &Event) -> Result<(), TaskError> {
        self.next.emit_event(event)
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
        self.next.finish_step(max_records)
    }

    fn poll_ready(&mut self) -> Result<Readiness, TaskError> {
        self.next.poll_ready()
    }

    fn flush(&mut self, reason: FlushReason) -> Result<bool, TaskError> {
        self.next.flush(reason)
    }

    fn has_unflushed(&self) -> bool {
        self.next.has_unflushed()
    }

    fn close(&mut self) -> Result<(), TaskError> {
        self.next.close()
    }

    fn drain(&mut self) -> Result<bool, TaskError> {
        self.next.drain()
    }
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
