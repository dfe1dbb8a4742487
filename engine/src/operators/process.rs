//! Process functions, the lowest-level operators (Flink's `ProcessFunction` and
//! `KeyedProcessFunction`): a user function sees each record with its timestamp, the clocks and
//! side outputs; on a keyed stream it also has keyed state (created in `open`) and event- and
//! processing-time timers per key, fired in timestamp order once the clock passes them (the
//! keyed operator is built on the shared `KeyedCore`); on a non-keyed stream it may keep
//! operator state (list and union list state, declared in `open`).

use std::sync::Arc;

use corestream_netstack::Data;
use corestream_state::{KeyedStateBackend, StateKey, TimerService};

use super::keyed_core::KeyedCore;
use super::operator_state::{OperatorStateStore, RuntimeContext};
use super::{now_ms, Operator};
use crate::api::time::OutputTag;
use crate::checkpoint::{CheckpointId, OperatorStateParts, PendingParts, StateHookError};
use crate::runtime::build::SideOutputs;
use crate::time::Timestamps;

/// Which clock fired a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    EventTime,
    ProcessingTime,
}

/// What a [`ProcessFunction`] sees for one record.
pub struct ProcessContext<'a, O> {
    timestamp: Option<i64>,
    watermark: i64,
    processing_time: i64,
    out: &'a mut Vec<O>,
    sides: &'a SideOutputs,
}

impl<'a, O> ProcessContext<'a, O> {
    pub(crate) fn new(
        timestamp: Option<i64>,
        watermark: i64,
        processing_time: i64,
        out: &'a mut Vec<O>,
        sides: &'a SideOutputs,
    ) -> Self {
        Self { timestamp, watermark, processing_time, out, sides }
    }

    /// Emits a record downstream.
    pub fn collect(&mut self, record: O) {
        self.out.push(record);
    }
    /// Emits a record to a side output (dropped when nobody consumes the tag).
    pub fn output<X: 'static>(&mut self, tag: &OutputTag<X>, record: X) {
        if let Some(side) = self.sides.get::<X>(tag.id()) {
            side.emit(record);
        }
    }
    /// The record's event timestamp, when the stream has timestamps.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }
    pub fn current_processing_time(&self) -> i64 {
        self.processing_time
    }
}

/// A function over each record of a non-keyed stream. It may keep operator state that survives
/// failures (Flink's `CheckpointedFunction`): declare list or union list state by name in
/// [`open`](Self::open), which runs before the first record and after a restore, so it sees what
/// was restored; keep it current, or bring it up to date in
/// [`snapshot_state`](Self::snapshot_state).
///
/// ```
/// use corestream::{OperatorListState, ProcessContext, ProcessFunction, RuntimeContext};
///
/// /// Numbers its records per subtask; the count survives a restore.
/// struct Numbered {
///     count: u64,
///     state: Option<OperatorListState<u64>>,
/// }
///
/// impl ProcessFunction<String, (u64, String)> for Numbered {
///     fn open(&mut self, ctx: &mut RuntimeContext<'_>) {
///         let state = ctx.list_state::<u64>("count").expect("declared once, as a list of u64");
///         // After a rescale a subtask may get several old counts (or none).
///         self.count = state.get().into_iter().max().unwrap_or(0);
///         self.state = Some(state);
///     }
///     fn process_element(&mut self, line: String, ctx: &mut ProcessContext<'_, (u64, String)>) {
///         self.count += 1;
///         ctx.collect((self.count, line));
///     }
///     fn snapshot_state(&mut self, _checkpoint: u64) {
///         if let Some(state) = &self.state {
///             state.update(vec![self.count]);
///         }
///     }
/// }
/// ```
pub trait ProcessFunction<I, O>: 'static {
    /// Declares operator state and reads what was restored into it; called once per subtask,
    /// before the first record (and after the restore when the job starts from a checkpoint).
    fn open(&mut self, _ctx: &mut RuntimeContext<'_>) {}
    fn process_element(&mut self, value: I, ctx: &mut ProcessContext<'_, O>);
    /// A checkpoint is being taken (between two records): bring the operator state declared in
    /// `open` up to date.
    fn snapshot_state(&mut self, _checkpoint: CheckpointId) {}
}

impl<I, O, F: FnMut(I, &mut ProcessContext<'_, O>) + 'static> ProcessFunction<I, O> for F {
    fn process_element(&mut self, value: I, ctx: &mut ProcessContext<'_, O>) {
        self(value, ctx)
    }
}

/// Set-up of a keyed process function on its subtask: where it declares its keyed state.
pub struct KeyedRuntimeContext<'a, K: StateKey> {
    backend: &'a mut KeyedStateBackend<K>,
    subtask: u32,
    parallelism: u32,
}

impl<'a, K: StateKey> KeyedRuntimeContext<'a, K> {
    pub(crate) fn new(backend: &'a mut KeyedStateBackend<K>, subtask: u32, parallelism: u32) -> Self {
        Self { backend, subtask, parallelism }
    }

    /// The keyed state backend; state handles created here are scoped to the current key.
    pub fn state(&mut self) -> &mut KeyedStateBackend<K> {
        self.backend
    }
    pub fn subtask(&self) -> u32 {
        self.subtask
    }
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }
}

/// What a [`KeyedProcessFunction`] sees for one record or timer.
pub struct KeyedContext<'a, K: StateKey, O> {
    key: &'a K,
    timestamp: Option<i64>,
    timers: &'a mut TimerService<K, ()>,
    watermark: i64,
    processing_time: i64,
    out: &'a mut Vec<O>,
    sides: &'a SideOutputs,
    domain: Option<TimeDomain>,
}

impl<'a, K: StateKey, O> KeyedContext<'a, K, O> {
    pub(crate) fn new(
        key: &'a K,
        timestamp: Option<i64>,
        timers: &'a mut TimerService<K, ()>,
        (watermark, processing_time): (i64, i64),
        out: &'a mut Vec<O>,
        sides: &'a SideOutputs,
        domain: Option<TimeDomain>,
    ) -> Self {
        Self { key, timestamp, timers, watermark, processing_time, out, sides, domain }
    }

    pub fn collect(&mut self, record: O) {
        self.out.push(record);
    }
    pub fn output<X: 'static>(&mut self, tag: &OutputTag<X>, record: X) {
        if let Some(side) = self.sides.get::<X>(tag.id()) {
            side.emit(record);
        }
    }
    /// The current key.
    pub fn key(&self) -> &K {
        self.key
    }
    /// The record's event timestamp, or the timer's time in `on_timer`.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
    /// In `on_timer`: which clock fired it.
    pub fn time_domain(&self) -> Option<TimeDomain> {
        self.domain
    }
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }
    pub fn current_processing_time(&self) -> i64 {
        self.processing_time
    }
    /// Registers an event-time timer for the current key (registering the same time twice
    /// fires once).
    pub fn register_event_time_timer(&mut self, time: i64) {
        self.timers.register_event_time_timer(self.key.clone(), (), time);
    }
    pub fn register_processing_time_timer(&mut self, time: i64) {
        self.timers.register_processing_time_timer(self.key.clone(), (), time);
    }
    pub fn delete_event_time_timer(&mut self, time: i64) {
        self.timers.delete_event_time_timer(self.key, &(), time);
    }
    pub fn delete_processing_time_timer(&mut self, time: i64) {
        self.timers.delete_processing_time_timer(self.key, &(), time);
    }
}

/// A function over each record of a keyed stream, with keyed state and timers.
pub trait KeyedProcessFunction<K: StateKey, I, O>: 'static {
    /// Declares keyed state; called once per subtask before any record.
    fn open(&mut self, _ctx: &mut KeyedRuntimeContext<'_, K>) {}
    fn process_element(&mut self, value: I, ctx: &mut KeyedContext<'_, K, O>);
    /// A timer registered for `ctx.key()` fired at `timestamp`.
    fn on_timer(&mut self, _timestamp: i64, _ctx: &mut KeyedContext<'_, K, O>) {}
}

pub(crate) struct ProcessOp<I, P> {
    pub(crate) f: P,
    pub(crate) timestamps: Option<Timestamps<I>>,
    pub(crate) ts: Vec<i64>,
    pub(crate) scratch: Vec<I>,
    pub(crate) sides: SideOutputs,
    pub(crate) watermark: i64,
    pub(crate) store: OperatorStateStore,
    /// `open` has run (it runs lazily, so that a restore before the first record comes first).
    pub(crate) opened: bool,
    pub(crate) subtask: u32,
    pub(crate) parallelism: u32,
}

impl<I, P> ProcessOp<I, P> {
    pub(crate) fn new(
        f: P,
        timestamps: Option<Timestamps<I>>,
        sides: SideOutputs,
        subtask: u32,
        parallelism: u32,
    ) -> Self {
        Self {
            f,
            timestamps,
            ts: Vec::new(),
            scratch: Vec::new(),
            sides,
            watermark: i64::MIN,
            store: OperatorStateStore::default(),
            opened: false,
            subtask,
            parallelism,
        }
    }

    #[inline]
    fn ensure_open<O>(&mut self)
    where
        P: ProcessFunction<I, O>,
    {
        if !self.opened {
            self.opened = true;
            self.f.open(&mut RuntimeContext::new(&mut self.store, self.subtask, self.parallelism));
        }
    }
}

impl<I: Data, O: Data, P: ProcessFunction<I, O>> Operator<I, O> for ProcessOp<I, P> {
    fn process(&mut self, record: I, out: &mut Vec<O>) {
        self.ensure_open();
        let timestamp = self.timestamps.as_ref().map(|f| (f.one)(&record));
        let mut ctx =
            ProcessContext { timestamp, watermark: self.watermark, processing_time: now_ms(), out, sides: &self.sides };
        self.f.process_element(record, &mut ctx);
    }

    fn process_archived(&mut self, input: corestream_netstack::RecordIter<'_, I>, out: &mut Vec<O>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        super::archived_as_batch(self, input, &mut scratch, out);
        self.scratch = scratch;
    }

    fn process_batch(&mut self, input: &mut Vec<I>, out: &mut Vec<O>) {
        self.ensure_open();
        let processing_time = now_ms();
        self.ts.clear();
        if let Some(t) = &self.timestamps {
            (t.batch)(input, &mut self.ts);
        }
        for (i, record) in input.drain(..).enumerate() {
            let timestamp = self.ts.get(i).copied();
            let mut ctx =
                ProcessContext { timestamp, watermark: self.watermark, processing_time, out, sides: &self.sides };
            self.f.process_element(record, &mut ctx);
        }
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Vec<O>) -> Option<i64> {
        self.watermark = watermark;
        Some(watermark)
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingParts) -> Result<(), StateHookError> {
        self.ensure_open();
        self.f.snapshot_state(checkpoint);
        Ok(self.store.snapshot(into)?)
    }

    fn restore_state(&mut self, from: &OperatorStateParts) -> Result<(), StateHookError> {
        Ok(self.store.restore(from)?)
    }
}

pub(crate) struct KeyedProcessOp<K: StateKey, I, KF, P> {
    pub(crate) f: P,
    pub(crate) key_fn: Arc<KF>,
    pub(crate) timestamps: Option<Timestamps<I>>,
    pub(crate) core: KeyedCore<K, ()>,
    pub(crate) sides: SideOutputs,
    pub(crate) ts: Vec<i64>,
    pub(crate) scratch: Vec<I>,
}

impl<K: StateKey, I, KF, P> KeyedProcessOp<K, I, KF, P> {
    pub(crate) fn new<O>(
        mut f: P,
        key_fn: Arc<KF>,
        timestamps: Option<Timestamps<I>>,
        mut backend: KeyedStateBackend<K>,
        sides: SideOutputs,
        subtask: u32,
        parallelism: u32,
    ) -> Self
    where
        P: KeyedProcessFunction<K, I, O>,
    {
        f.open(&mut KeyedRuntimeContext { backend: &mut backend, subtask, parallelism });
        Self { f, key_fn, timestamps, core: KeyedCore::new(backend), sides, ts: Vec::new(), scratch: Vec::new() }
    }
}

impl<K, I, O, KF, P> Operator<I, O> for KeyedProcessOp<K, I, KF, P>
where
    K: StateKey,
    I: Data,
    O: Data,
    KF: Fn(&I) -> K + 'static,
    P: KeyedProcessFunction<K, I, O>,
{
    fn process(&mut self, record: I, out: &mut Vec<O>) {
        let timestamp = self.timestamps.as_ref().map(|f| (f.one)(&record));
        self.process_at(record, timestamp, out);
    }

    fn process_archived(&mut self, input: corestream_netstack::RecordIter<'_, I>, out: &mut Vec<O>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        super::archived_as_batch(self, input, &mut scratch, out);
        self.scratch = scratch;
    }

    fn process_batch(&mut self, input: &mut Vec<I>, out: &mut Vec<O>) {
        self.core.refresh();
        let mut ts = std::mem::take(&mut self.ts);
        ts.clear();
        if let Some(t) = &self.timestamps {
            (t.batch)(input, &mut ts);
        }
        for (i, record) in input.drain(..).enumerate() {
            self.process_at(record, ts.get(i).copied(), out);
        }
        self.ts = ts;
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
        let (f, sides) = (&mut self.f, &self.sides);
        self.core.fire_step(out, max_records, |core, timer, domain, out| {
            core.backend.set_current_key(timer.key.clone());
            let mut ctx = KeyedContext {
                key: &timer.key,
                timestamp: Some(timer.timestamp),
                timers: &mut core.timers,
                watermark: core.clock.watermark,
                processing_time: core.clock.processing_time,
                out,
                sides,
                domain: Some(domain),
            };
            f.on_timer(timer.timestamp, &mut ctx);
        })
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

impl<K, I, KF, P> KeyedProcessOp<K, I, KF, P>
where
    K: StateKey,
    I: Data,
    KF: Fn(&I) -> K + 'static,
{
    #[inline]
    fn process_at<O>(&mut self, record: I, timestamp: Option<i64>, out: &mut Vec<O>)
    where
        P: KeyedProcessFunction<K, I, O>,
    {
        let key = (self.key_fn)(&record);
        self.core.backend.set_current_key(key.clone());
        let mut ctx = KeyedContext {
            key: &key,
            timestamp,
            timers: &mut self.core.timers,
            watermark: self.core.clock.watermark,
            processing_time: self.core.clock.processing_time,
            out,
            sides: &self.sides,
            domain: None,
        };
        self.f.process_element(record, &mut ctx);
    }
}
