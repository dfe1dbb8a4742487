//! Two-input operators. Both inputs travel as one stream of [`Either`] records: each input is
//! tagged by a chained map, the two tagged streams feed one operator (each edge with its own
//! partitioning), and the operator dispatches on the tag. The operator's event-time clock is
//! the minimum over the channels of both inputs, as for Flink's two-input operators.
//!
//! Here: the co-process adapters, the interval join (each side buffered per key and timestamp
//! in keyed state until the watermark passes the last time a match could arrive) and the
//! broadcast-state operator (rules broadcast to every subtask, kept in each subtask's
//! [`BroadcastState`], applied to a keyed stream). The keyed ones are built on the shared
//! `KeyedCore`, which snapshots and restores their keyed state and timers.

use std::sync::Arc;

use corestream_netstack::Data;
use corestream_state::{KeyedStateBackend, MapState, MapStateDescriptor, StateKey, StateValue};

use super::keyed_core::KeyedCore;
pub use super::operator_state::BroadcastState;
use super::operator_state::RuntimeContext;
use super::process::{KeyedContext, KeyedProcessFunction, KeyedRuntimeContext, ProcessContext, ProcessFunction};
use super::{Operator, SideOutput};
use crate::checkpoint::{CheckpointId, OperatorStateParts, PendingParts, StateHookError};
use crate::runtime::build::SideOutputs;
use crate::time::TimestampFn;

/// A record of the first (`Left`) or second (`Right`) input of a two-input operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// A function over two connected, non-keyed streams (Flink's `CoProcessFunction`); it may keep
/// operator state as a [`ProcessFunction`] does.
pub trait CoProcessFunction<A, B, O>: 'static {
    /// Declares operator state (see [`ProcessFunction::open`]).
    fn open(&mut self, _ctx: &mut RuntimeContext<'_>) {}
    fn process_element1(&mut self, value: A, ctx: &mut ProcessContext<'_, O>);
    fn process_element2(&mut self, value: B, ctx: &mut ProcessContext<'_, O>);
    /// See [`ProcessFunction::snapshot_state`].
    fn snapshot_state(&mut self, _checkpoint: CheckpointId) {}
}

/// A function over two connected streams keyed alike, with keyed state and timers shared by
/// both inputs (Flink's `KeyedCoProcessFunction`).
pub trait KeyedCoProcessFunction<K: StateKey, A, B, O>: 'static {
    fn open(&mut self, _ctx: &mut KeyedRuntimeContext<'_, K>) {}
    fn process_element1(&mut self, value: A, ctx: &mut KeyedContext<'_, K, O>);
    fn process_element2(&mut self, value: B, ctx: &mut KeyedContext<'_, K, O>);
    fn on_timer(&mut self, _timestamp: i64, _ctx: &mut KeyedContext<'_, K, O>) {}
}

pub(crate) struct CoAdapter<P>(pub(crate) P);

impl<A, B, O, P: CoProcessFunction<A, B, O>> ProcessFunction<Either<A, B>, O> for CoAdapter<P> {
    fn open(&mut self, ctx: &mut RuntimeContext<'_>) {
        self.0.open(ctx);
    }
    fn snapshot_state(&mut self, checkpoint: CheckpointId) {
        self.0.snapshot_state(checkpoint);
    }
    fn process_element(&mut self, value: Either<A, B>, ctx: &mut ProcessContext<'_, O>) {
        match value {
            Either::Left(a) => self.0.process_element1(a, ctx),
            Either::Right(b) => self.0.process_element2(b, ctx),
        }
    }
}

pub(crate) struct KeyedCoAdapter<P>(pub(crate) P);

impl<K: StateKey, A, B, O, P: KeyedCoProcessFunction<K, A, B, O>> KeyedProcessFunction<K, Either<A, B>, O>
    for KeyedCoAdapter<P>
{
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, K>) {
        self.0.open(ctx);
    }
    fn process_element(&mut self, value: Either<A, B>, ctx: &mut KeyedContext<'_, K, O>) {
        match value {
            Either::Left(a) => self.0.process_element1(a, ctx),
            Either::Right(b) => self.0.process_element2(b, ctx),
        }
    }
    fn on_timer(&mut self, timestamp: i64, ctx: &mut KeyedContext<'_, K, O>) {
        self.0.on_timer(timestamp, ctx);
    }
}

/// The timestamps of a matched pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinedTimestamps {
    pub left: i64,
    pub right: i64,
}

const LEFT: u8 = 0;
const RIGHT: u8 = 1;

/// Interval join: left `a` (at `ta`) matches right `b` (at `tb`) of the same key when
/// `ta + lower <= tb <= ta + upper`.
pub(crate) struct IntervalJoinOp<K: StateKey, A, B, KF, F> {
    pub(crate) key_fn: Arc<KF>,
    pub(crate) timestamps: Arc<TimestampFn<Either<A, B>>>,
    pub(crate) lower: i64,
    pub(crate) upper: i64,
    pub(crate) f: Arc<F>,
    /// Keyed state: the buffered records of each side; timers: their cleanup, namespace
    /// `LEFT` or `RIGHT`. Only the clock's watermark is used.
    pub(crate) core: KeyedCore<K, u8>,
    pub(crate) left: MapState<K, (), i64, Vec<A>>,
    pub(crate) right: MapState<K, (), i64, Vec<B>>,
    pub(crate) late_left: Option<SideOutput<A>>,
    pub(crate) late_right: Option<SideOutput<B>>,
    pub(crate) metrics: Arc<super::OperatorMetrics>,
}

impl<K, A, B, KF, F> IntervalJoinOp<K, A, B, KF, F>
where
    K: StateKey,
    A: StateValue,
    B: StateValue,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        key_fn: Arc<KF>,
        timestamps: Arc<TimestampFn<Either<A, B>>>,
        lower: i64,
        upper: i64,
        f: Arc<F>,
        mut backend: KeyedStateBackend<K>,
        sides: &SideOutputs,
        late_tags: (Option<String>, Option<String>),
        metrics: Arc<super::OperatorMetrics>,
    ) -> Self {
        let left = backend.map_state(&MapStateDescriptor::new("interval-join-left")).expect("fresh backend");
        let right = backend.map_state(&MapStateDescriptor::new("interval-join-right")).expect("fresh backend");
        Self {
            key_fn,
            timestamps,
            lower,
            upper,
            f,
            core: KeyedCore::new(backend),
            left,
            right,
            late_left: late_tags.0.and_then(|t| sides.get::<A>(&t).cloned()),
            late_right: late_tags.1.and_then(|t| sides.get::<B>(&t).cloned()),
            metrics,
        }
    }
}

impl<K, A, B, O, KF, F> Operator<Either<A, B>, O> for IntervalJoinOp<K, A, B, KF, F>
where
    K: StateKey,
    A: StateValue,
    B: StateValue,
    O: Data,
    KF: Fn(&Either<A, B>) -> K + 'static,
    F: Fn(&A, &B, JoinedTimestamps, &mut Vec<O>) + 'static,
{
    fn process(&mut self, record: Either<A, B>, out: &mut Vec<O>) {
        let key = (self.key_fn)(&record);
        let ts = (self.timestamps)(&record);
        if ts < self.core.clock.watermark {
            let sent = match record {
                Either::Left(a) => self.late_left.as_ref().map(|s| s.emit(a)),
                Either::Right(b) => self.late_right.as_ref().map(|s| s.emit(b)),
            };
            if sent.is_none() {
                self.metrics.late_records_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
        self.core.backend.set_current_key(key.clone());
        match record {
            Either::Left(a) => {
                for (tb, bs) in self.right.entries() {
                    if tb < ts.saturating_add(self.lower) || tb > ts.saturating_add(self.upper) {
                        continue;
                    }
                    for b in &bs {
                        (self.f)(&a, b, JoinedTimestamps { left: ts, right: tb }, out);
                    }
                }
                let mut bucket = self.left.get(&ts).unwrap_or_default();
                bucket.push(a);
                self.left.put(ts, bucket);
                let cleanup = if self.upper > 0 { ts.saturating_add(self.upper) } else { ts };
                self.core.timers.register_event_time_timer(key, LEFT, cleanup);
            }
            Either::Right(b) => {
                for (ta, as_) in self.left.entries() {
                    if ta < ts.saturating_sub(self.upper) || ta > ts.saturating_sub(self.lower) {
                        continue;
                    }
                    for a in &as_ {
                        (self.f)(a, &b, JoinedTimestamps { left: ta, right: ts }, out);
                    }
                }
                let mut bucket = self.right.get(&ts).unwrap_or_default();
                bucket.push(b);
                self.right.put(ts, bucket);
                let cleanup = if self.lower <= 0 { ts.saturating_sub(self.lower) } else { ts };
                self.core.timers.register_event_time_timer(key, RIGHT, cleanup);
            }
        }
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Vec<O>) -> Option<i64> {
        // Cleanup emits nothing, so it runs at once rather than in steps. Event time never goes
        // back (a restored one holds until the inputs catch up).
        if watermark < self.core.clock.watermark {
            return None;
        }
        self.core.clock.watermark = watermark;
        while let Some(timer) = self.core.timers.pop_event_timer(watermark) {
            self.core.backend.set_current_key(timer.key);
            if timer.namespace == LEFT {
                let ts = if self.upper > 0 { timer.timestamp - self.upper } else { timer.timestamp };
                self.left.remove(&ts);
            } else {
                let ts = if self.lower <= 0 { timer.timestamp + self.lower } else { timer.timestamp };
                self.right.remove(&ts);
            }
        }
        Some(watermark)
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingParts) -> Result<(), StateHookError> {
        Ok(self.core.snapshot(checkpoint, into)?)
    }

    fn restore_state(&mut self, from: &OperatorStateParts) -> Result<(), StateHookError> {
        Ok(self.core.restore(from)?)
    }

    fn notify_checkpoint(&mut self, notice: crate::checkpoint::CheckpointNotice) -> Result<(), StateHookError> {
        self.core.notify(notice);
        Ok(())
    }
}

/// A function applying broadcast rules to a keyed stream (Flink's
/// `KeyedBroadcastProcessFunction`). Every subtask sees every rule, in the same order per
/// producing subtask, and keeps them in its broadcast state.
pub trait KeyedBroadcastProcessFunction<K: StateKey, I, R, O>: 'static {
    /// The broadcast state's key: a record type (it is snapshotted) that hashes.
    type StateKey: StateKey;
    /// The broadcast state's value: a record type (it is snapshotted).
    type StateValue: StateValue;
    fn open(&mut self, _ctx: &mut KeyedRuntimeContext<'_, K>) {}
    /// A record of the keyed stream; the broadcast state is read-only here.
    fn process_element(
        &mut self,
        value: I,
        state: &BroadcastState<Self::StateKey, Self::StateValue>,
        ctx: &mut KeyedContext<'_, K, O>,
    );
    /// A broadcast record: update the broadcast state (identically on every subtask).
    fn process_broadcast_element(
        &mut self,
        value: R,
        state: &mut BroadcastState<Self::StateKey, Self::StateValue>,
        ctx: &mut ProcessContext<'_, O>,
    );
    fn on_timer(
        &mut self,
        _timestamp: i64,
        _state: &BroadcastState<Self::StateKey, Self::StateValue>,
        _ctx: &mut KeyedContext<'_, K, O>,
    ) {
    }
}

pub(crate) struct BroadcastOp<K: StateKey, I, R, KF, P: KeyedBroadcastProcessFunction<K, I, R, O>, O> {
    pub(crate) f: P,
    pub(crate) key_fn: Arc<KF>,
    pub(crate) timestamps: Option<Arc<TimestampFn<I>>>,
    pub(crate) core: KeyedCore<K, ()>,
    pub(crate) state: BroadcastState<P::StateKey, P::StateValue>,
    pub(crate) sides: SideOutputs,
    pub(crate) scratch: Vec<Either<I, R>>,
    pub(crate) _types: std::marker::PhantomData<fn(I, R) -> O>,
}

impl<K, I, R, KF, P, O> BroadcastOp<K, I, R, KF, P, O>
where
    K: StateKey,
    P: KeyedBroadcastProcessFunction<K, I, R, O>,
{
    pub(crate) fn new(
        mut f: P,
        key_fn: Arc<KF>,
        timestamps: Option<Arc<TimestampFn<I>>>,
        mut backend: KeyedStateBackend<K>,
        sides: SideOutputs,
        (subtask, parallelism): (u32, u32),
    ) -> Self {
        f.open(&mut KeyedRuntimeContext::new(&mut backend, subtask, parallelism));
        Self {
            f,
            key_fn,
            timestamps,
            core: KeyedCore::new(backend),
            state: BroadcastState::new(),
            sides,
            scratch: Vec::new(),
            _types: std::marker::PhantomData,
        }
    }
}

impl<K, I, R, KF, P, O> Operator<Either<I, R>, O> for BroadcastOp<K, I, R, KF, P, O>
where
    K: StateKey,
    I: Data,
    R: Data,
    O: Data,
    KF: Fn(&I) -> K + 'static,
    P: KeyedBroadcastProcessFunction<K, I, R, O>,
{
    fn process(&mut self, record: Either<I, R>, out: &mut Vec<O>) {
        let clock = (self.core.clock.watermark, self.core.clock.processing_time);
        match record {
            Either::Left(value) => {
                let key = (self.key_fn)(&value);
                let timestamp = self.timestamps.as_ref().map(|f| f(&value));
                self.core.backend.set_current_key(key.clone());
                let mut ctx = KeyedContext::new(&key, timestamp, &mut self.core.timers, clock, out, &self.sides, None);
                self.f.process_element(value, &self.state, &mut ctx);
            }
            Either::Right(rule) => {
                let mut ctx = ProcessContext::new(None, clock.0, clock.1, out, &self.sides);
                self.f.process_broadcast_element(rule, &mut self.state, &mut ctx);
            }
        }
    }

    fn process_archived(&mut self, input: corestream_netstack::RecordIter<'_, Either<I, R>>, out: &mut Vec<O>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        super::archived_as_batch(self, input, &mut scratch, out);
        self.scratch = scratch;
    }

    fn process_batch(&mut self, input: &mut Vec<Either<I, R>>, out: &mut Vec<O>) {
        self.core.refresh();
        for record in input.drain(..) {
            self.process(record, out);
        }
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Vec<O>) -> Option<i64> {
        self.core.on_watermark(watermark).then_some(watermark)
    }

    fn next_deadline(&self) -> Option<i64> {
        self.core.next_deadline()
    }

    fn on_processing_time(&mut self, now: i64, _out: &mut Vec<O>) {
        self.core.on_processing_time(now);
    }

    fn fire_step(&mut self, out: &mut Vec<O>, max_records: usize) -> bool {
        let (f, state, sides) = (&mut self.f, &self.state, &self.sides);
        self.core.fire_step(out, max_records, |core, timer, domain, out| {
            core.backend.set_current_key(timer.key.clone());
            let clock = (core.clock.watermark, core.clock.processing_time);
            let mut ctx =
                KeyedContext::new(&timer.key, Some(timer.timestamp), &mut core.timers, clock, out, sides, Some(domain));
            f.on_timer(timer.timestamp, state, &mut ctx);
        })
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingParts) -> Result<(), StateHookError> {
        self.core.snapshot(checkpoint, into)?;
        Ok(self.state.snapshot(into)?)
    }

    fn restore_state(&mut self, from: &OperatorStateParts) -> Result<(), StateHookError> {
        self.core.restore(from)?;
        Ok(self.state.restore(from)?)
    }

    fn notify_checkpoint(&mut self, notice: crate::checkpoint::CheckpointNotice) -> Result<(), StateHookError> {
        self.core.notify(notice);
        Ok(())
    }
}
