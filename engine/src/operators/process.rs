//! Process functions, the lowest-level operators (Flink's `ProcessFunction` and
//! `KeyedProcessFunction`): a user function sees each record with its timestamp, the clocks and
//! side outputs; on a keyed stream it also has keyed state (created in `open`) and event- and
//! processing-time timers per key, fired in timestamp order once the clock passes them.

use std::sync::Arc;

use corestream_netstack::Data;
use corestream_state::{KeyedStateBackend, StateKey, TimerService};

use super::{now_ms, Operator};
use crate::api::time::OutputTag;
use crate::runtime::build::SideOutputs;
use crate::time::Timestamps;

/// The clocks of a keyed operator with timers: its event time, the processing time of the batch
/// or firing being handled (also the TTL clock of its keyed state), and the limits up to which
/// due timers are fired in steps (`Operator::fire_step`).
pub(crate) struct KeyedClock {
    pub(crate) watermark: i64,
    pub(crate) processing_time: i64,
    fire_until: (Option<i64>, Option<i64>),
}

impl KeyedClock {
    pub(crate) fn new() -> Self {
        Self { watermark: i64::MIN, processing_time: now_ms(), fire_until: (None, None) }
    }

    /// Event time advanced: timers up to `watermark` are due.
    pub(crate) fn on_watermark<K: StateKey>(&mut self, watermark: i64, backend: &KeyedStateBackend<K>) {
        self.watermark = watermark;
        self.processing_time = now_ms();
        backend.set_current_time(self.processing_time);
        self.fire_until.0 = Some(watermark);
    }

    /// Processing time reached `now`: processing-time timers up to it are due.
    pub(crate) fn on_processing_time<K: StateKey>(&mut self, now: i64, backend: &KeyedStateBackend<K>) {
        self.processing_time = now;
        backend.set_current_time(now);
        self.fire_until.1 = Some(now);
    }

    /// A new batch: reads the processing-time clock.
    pub(crate) fn refresh<K: StateKey>(&mut self, backend: &KeyedStateBackend<K>) {
        self.processing_time = now_ms();
        backend.set_current_time(self.processing_time);
    }

    /// The next due timer, event time first; a limit is cleared once nothing more is due
    /// under it.
    pub(crate) fn next_due<K: StateKey, N: corestream_state::Namespace>(
        &mut self,
        timers: &mut TimerService<K, N>,
    ) -> Option<(corestream_state::Timer<K, N>, TimeDomain)> {
        if let Some(watermark) = self.fire_until.0 {
            match timers.pop_event_timer(watermark) {
                Some(t) => return Some((t, TimeDomain::EventTime)),
                None => self.fire_until.0 = None,
            }
        }
        if let Some(now) = self.fire_until.1 {
            match timers.pop_processing_timer(now) {
                Some(t) => return Some((t, TimeDomain::ProcessingTime)),
                None => self.fire_until.1 = None,
            }
        }
        None
    }
}

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

/// A function over each record of a non-keyed stream.
pub trait ProcessFunction<I, O>: 'static {
    fn process_element(&mut self, value: I, ctx: &mut ProcessContext<'_, O>);
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
}

impl<I: Data, O: Data, P: ProcessFunction<I, O>> Operator<I, O> for ProcessOp<I, P> {
    fn process(&mut self, record: I, out: &mut Vec<O>) {
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
}

pub(crate) struct KeyedProcessOp<K: StateKey, I, KF, P> {
    pub(crate) f: P,
    pub(crate) key_fn: Arc<KF>,
    pub(crate) timestamps: Option<Timestamps<I>>,
    pub(crate) backend: KeyedStateBackend<K>,
    pub(crate) timers: TimerService<K, ()>,
    pub(crate) sides: SideOutputs,
    pub(crate) clock: KeyedClock,
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
        let timers = TimerService::new(backend.max_parallelism(), backend.key_groups());
        f.open(&mut KeyedRuntimeContext { backend: &mut backend, subtask, parallelism });
        Self {
            f,
            key_fn,
            timestamps,
            backend,
            timers,
            sides,
            clock: KeyedClock::new(),
            ts: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl<K: StateKey, I, KF, P> KeyedProcessOp<K, I, KF, P> {
    fn fire<O>(&mut self, key: K, timestamp: i64, domain: TimeDomain, out: &mut Vec<O>)
    where
        P: KeyedProcessFunction<K, I, O>,
    {
        self.backend.set_current_key(key.clone());
        let mut ctx = KeyedContext {
            key: &key,
            timestamp: Some(timestamp),
            timers: &mut self.timers,
            watermark: self.clock.watermark,
            processing_time: self.clock.processing_time,
            out,
            sides: &self.sides,
            domain: Some(domain),
        };
        self.f.on_timer(timestamp, &mut ctx);
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
        self.clock.refresh(&self.backend);
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
        self.clock.on_watermark(watermark, &self.backend);
        Some(watermark)
    }

    fn next_deadline(&self) -> Option<i64> {
        self.timers.next_processing_time()
    }

    fn on_processing_time(&mut self, now: i64, _out: &mut Vec<O>) {
        self.clock.on_processing_time(now, &self.backend);
    }

    fn fire_step(&mut self, out: &mut Vec<O>, max_records: usize) -> bool {
        let start = out.len();
        while out.len() - start < max_records.max(1) {
            match self.clock.next_due(&mut self.timers) {
                Some((timer, domain)) => self.fire(timer.key, timer.timestamp, domain, out),
                None => return true,
            }
        }
        false
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
        self.backend.set_current_key(key.clone());
        let mut ctx = KeyedContext {
            key: &key,
            timestamp,
            timers: &mut self.timers,
            watermark: self.clock.watermark,
            processing_time: self.clock.processing_time,
            out,
            sides: &self.sides,
            domain: None,
        };
        self.f.process_element(record, &mut ctx);
    }
}
