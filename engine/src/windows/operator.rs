//! The window operator (Flink's `WindowOperator`): per record, the assigner gives its windows
//! (session windows merge through the key's merging window set), each window's contents are
//! updated in keyed state under the window as namespace, and the trigger decides whether to
//! fire; timers (at the window's max timestamp, and the cleanup time = max timestamp + allowed
//! lateness) fire windows when the watermark or processing time passes them. A record whose
//! windows are all past their cleanup time is late: it goes to the late side output if there
//! is one, and is counted and dropped otherwise.
//!
//! State, timers and clocks are the shared `KeyedCore`'s; the window-end and cleanup timers
//! of the common triggers live in time buckets of this operator instead (no deduplication
//! needed), and its snapshot writes them into the core's `timers` part, so a restore brings
//! every window's timers back.

use std::collections::BTreeMap;
use std::sync::Arc;

use corestream_netstack::Data;
use corestream_state::{KeyedStateBackend, StateKey, TimerService, ValueState, ValueStateDescriptor};

use super::assigner::{TimeWindow, WindowAssigner};
use super::merging::{self, WindowMapping};
use super::trigger::{Trigger, TriggerContext, TriggerResult};
use crate::checkpoint::{CheckpointId, OperatorStateParts, PendingParts, StateHookError};
use crate::operators::keyed_core::KeyedCore;
use crate::operators::state_parts::PartError;
use crate::operators::{Operator, SideOutput};
use crate::time::Timestamps;

/// What a window function sees when a window fires.
#[derive(Debug)]
pub struct WindowContext<'a, K> {
    pub key: &'a K,
    pub window: TimeWindow,
    /// The operator's event-time clock when the window fired.
    pub watermark: i64,
}

/// How a window keeps its contents and turns them into output when it fires.
pub(crate) trait WindowContents<K: StateKey, T, O>: 'static {
    fn set_window(&mut self, window: TimeWindow);
    /// Adds a record to the current window; true when this created the window's contents.
    fn add(&mut self, record: &T) -> bool;
    /// Emits the current window's result (nothing when it is empty).
    fn emit(&mut self, ctx: &WindowContext<'_, K>, out: &mut Vec<O>);
    fn clear(&mut self);
    /// Emits the current window's result and clears it.
    fn emit_and_clear(&mut self, ctx: &WindowContext<'_, K>, out: &mut Vec<O>) {
        self.emit(ctx, out);
        self.clear();
    }
    /// Merges the contents of `sources` into `target` (session windows).
    fn merge(&mut self, target: TimeWindow, sources: &[TimeWindow]);
}

/// Settings of one window operator.
pub(crate) struct WindowSpec<T> {
    pub assigner: WindowAssigner,
    pub trigger: Trigger,
    pub allowed_lateness: i64,
    pub timestamps: Option<Timestamps<T>>,
}

impl<T> Clone for WindowSpec<T> {
    fn clone(&self) -> Self {
        Self {
            assigner: self.assigner,
            trigger: self.trigger.clone(),
            allowed_lateness: self.allowed_lateness,
            timestamps: self.timestamps.clone(),
        }
    }
}

pub(crate) struct WindowOperator<K: StateKey, T, O, KF, C> {
    key_fn: Arc<KF>,
    spec: WindowSpec<T>,
    /// Keyed state (contents, trigger state, session sets), the general path's timers and the
    /// clocks, with the limits up to which timers are being fired in steps.
    core: KeyedCore<K, TimeWindow>,
    contents: C,
    trigger_state: Option<ValueState<K, TimeWindow, i64>>,
    sessions: Option<ValueState<K, (), WindowMapping>>,
    late: Option<SideOutput<T>>,
    metrics: Arc<crate::operators::OperatorMetrics>,
    windows: Vec<TimeWindow>,
    ts: Vec<i64>,
    scratch: Vec<T>,
    /// The trigger registers nothing but the window's end, and keeps no state, so a window's
    /// timers need registering only when its contents are created (not for every record).
    timers_follow_contents: bool,
    purging: bool,
    /// In that case the window's timers live here, without deduplication: one entry per window
    /// and time, appended when its contents are created and popped in time order.
    window_timers: WindowTimers<K>,
    /// The bucket being emitted, when firing in steps.
    firing_bucket: Option<FiringBucket<K>>,
    _out: std::marker::PhantomData<fn() -> O>,
}

/// A bucket of window timers being fired: its time, whether it is event time, what is left.
type FiringBucket<K> = (i64, bool, std::vec::IntoIter<(K, TimeWindow)>);

/// Window-end and cleanup timers of the windows of a trigger that registers nothing else,
/// bucketed by time.
struct WindowTimers<K> {
    event: BTreeMap<i64, Vec<(K, TimeWindow)>>,
    processing: BTreeMap<i64, Vec<(K, TimeWindow)>>,
}

impl<K> WindowTimers<K> {
    /// Every timer of `buckets`, as `(time, key, window)`.
    fn all(buckets: &BTreeMap<i64, Vec<(K, TimeWindow)>>) -> impl Iterator<Item = (i64, &K, &TimeWindow)> {
        buckets.iter().flat_map(|(time, due)| due.iter().map(move |(key, window)| (*time, key, window)))
    }

    /// Removes the earliest bucket due at `limit`.
    fn pop_due(buckets: &mut BTreeMap<i64, Vec<(K, TimeWindow)>>, limit: i64) -> Option<(i64, Vec<(K, TimeWindow)>)> {
        let first = buckets.first_entry()?;
        if *first.key() > limit {
            return None;
        }
        Some(first.remove_entry())
    }
}

struct Ctx<'a, K: StateKey> {
    key: &'a K,
    window: TimeWindow,
    watermark: i64,
    processing_time: i64,
    timers: &'a mut TimerService<K, TimeWindow>,
    state: Option<&'a mut ValueState<K, TimeWindow, i64>>,
}

impl<K: StateKey> TriggerContext for Ctx<'_, K> {
    fn window(&self) -> TimeWindow {
        self.window
    }
    fn current_watermark(&self) -> i64 {
        self.watermark
    }
    fn current_processing_time(&self) -> i64 {
        self.processing_time
    }
    fn register_event_time_timer(&mut self, ts: i64) {
        self.timers.register_event_time_timer(self.key.clone(), self.window, ts);
    }
    fn register_processing_time_timer(&mut self, ts: i64) {
        self.timers.register_processing_time_timer(self.key.clone(), self.window, ts);
    }
    fn delete_event_time_timer(&mut self, ts: i64) {
        self.timers.delete_event_time_timer(self.key, &self.window, ts);
    }
    fn delete_processing_time_timer(&mut self, ts: i64) {
        self.timers.delete_processing_time_timer(self.key, &self.window, ts);
    }
    fn state(&mut self) -> Option<i64> {
        let state = self.state.as_mut()?;
        state.set_namespace(self.window);
        state.value()
    }
    fn set_state(&mut self, value: Option<i64>) {
        if let Some(state) = self.state.as_mut() {
            state.set_namespace(self.window);
            match value {
                Some(v) => state.update(v),
                None => state.clear(),
            }
        }
    }
}

impl<K, T, O, KF, C> WindowOperator<K, T, O, KF, C>
where
    K: StateKey,
    T: Data,
    O: Data,
    KF: Fn(&T) -> K + 'static,
    C: WindowContents<K, T, O>,
{
    pub(crate) fn new(
        key_fn: Arc<KF>,
        spec: WindowSpec<T>,
        mut backend: KeyedStateBackend<K>,
        contents: impl FnOnce(&mut KeyedStateBackend<K>) -> C,
        late: Option<SideOutput<T>>,
        metrics: Arc<crate::operators::OperatorMetrics>,
    ) -> Self {
        let contents = contents(&mut backend);
        let trigger_state = spec.trigger.has_state().then(|| {
            backend.value_state::<TimeWindow, i64>(&ValueStateDescriptor::new("window-trigger")).expect("fresh backend")
        });
        let sessions = spec.assigner.is_merging().then(|| {
            backend
                .value_state::<(), WindowMapping>(&ValueStateDescriptor::new("window-sessions"))
                .expect("fresh backend")
        });
        let (inner, purging) = match &spec.trigger {
            Trigger::Purging(inner) => (&**inner, true),
            t => (t, false),
        };
        let timers_follow_contents = !spec.assigner.is_merging()
            && match inner {
                Trigger::EventTime => spec.assigner.is_event_time(),
                Trigger::ProcessingTime => !spec.assigner.is_event_time(),
                _ => false,
            };
        Self {
            key_fn,
            spec,
            core: KeyedCore::new(backend),
            contents,
            trigger_state,
            sessions,
            late,
            metrics,
            windows: Vec::new(),
            ts: Vec::new(),
            scratch: Vec::new(),
            timers_follow_contents,
            purging,
            window_timers: WindowTimers { event: BTreeMap::new(), processing: BTreeMap::new() },
            firing_bucket: None,
            _out: std::marker::PhantomData,
        }
    }

    fn event_time(&self) -> bool {
        self.spec.assigner.is_event_time()
    }

    #[inline]
    fn cleanup_time(&self, w: &TimeWindow) -> i64 {
        if self.event_time() {
            w.max_timestamp().saturating_add(self.spec.allowed_lateness)
        } else {
            w.max_timestamp()
        }
    }

    #[inline]
    fn is_window_late(&self, w: &TimeWindow) -> bool {
        self.event_time() && self.cleanup_time(w) <= self.core.clock.watermark
    }

    fn ctx<'a>(
        key: &'a K,
        window: TimeWindow,
        watermark: i64,
        processing_time: i64,
        timers: &'a mut TimerService<K, TimeWindow>,
        state: &'a mut Option<ValueState<K, TimeWindow, i64>>,
    ) -> Ctx<'a, K> {
        Ctx { key, window, watermark, processing_time, timers, state: state.as_mut() }
    }

    fn register_cleanup_timer(&mut self, key: &K, w: TimeWindow) {
        let t = self.cleanup_time(&w);
        if t == i64::MAX {
            return;
        }
        if self.event_time() {
            self.core.timers.register_event_time_timer(key.clone(), w, t);
        } else {
            self.core.timers.register_processing_time_timer(key.clone(), w, t);
        }
    }

    fn delete_cleanup_timer(&mut self, key: &K, w: &TimeWindow) {
        let t = self.cleanup_time(w);
        if self.event_time() {
            self.core.timers.delete_event_time_timer(key, w, t);
        } else {
            self.core.timers.delete_processing_time_timer(key, w, t);
        }
    }

    fn fire(&mut self, key: &K, window: TimeWindow, state_window: TimeWindow, out: &mut Vec<O>) {
        self.contents.set_window(state_window);
        let ctx = WindowContext { key, window, watermark: self.core.clock.watermark };
        self.contents.emit(&ctx, out);
    }

    fn process_record(&mut self, record: T, ts: i64, out: &mut Vec<O>) {
        let key = (self.key_fn)(&record);
        self.core.backend.set_current_key(key.clone());
        let mut windows = std::mem::take(&mut self.windows);
        windows.clear();
        self.spec.assigner.assign(ts, &mut windows);
        let mut skipped = true;
        for &w in &windows {
            let (window, state_window) = if self.sessions.is_some() {
                match self.add_session_window(&key, w) {
                    Some(pair) => pair,
                    None => continue,
                }
            } else {
                if self.is_window_late(&w) {
                    continue;
                }
                (w, w)
            };
            skipped = false;
            self.contents.set_window(state_window);
            let created = self.contents.add(&record);
            if !created && self.timers_follow_contents {
                // The window's timers were registered with its contents; only a late firing
                // can be due.
                if self.event_time() && window.max_timestamp() <= self.core.clock.watermark {
                    let result = if self.purging { TriggerResult::FireAndPurge } else { TriggerResult::Fire };
                    self.apply(&key, window, state_window, result, out);
                }
                continue;
            }
            if self.timers_follow_contents {
                self.on_new_contents(&key, window, out);
                continue;
            }
            let result = {
                let mut ctx = Self::ctx(
                    &key,
                    window,
                    self.core.clock.watermark,
                    self.core.clock.processing_time,
                    &mut self.core.timers,
                    &mut self.trigger_state,
                );
                self.spec.trigger.on_element(ts, &mut ctx)
            };
            self.apply(&key, window, state_window, result, out);
            self.register_cleanup_timer(&key, window);
        }
        self.windows = windows;
        if skipped && self.event_time() && ts.saturating_add(self.spec.allowed_lateness) <= self.core.clock.watermark {
            match &self.late {
                Some(side) => side.emit(record),
                None => {
                    self.metrics.late_records_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// A window's contents were just created, with an event-time or processing-time trigger:
    /// what `Trigger::on_element` and the cleanup registration do, with the timers appended to
    /// the window timer buckets.
    fn on_new_contents(&mut self, key: &K, window: TimeWindow, out: &mut Vec<O>) {
        let end = window.max_timestamp();
        let cleanup = self.cleanup_time(&window);
        if self.event_time() {
            if end <= self.core.clock.watermark {
                let result = if self.purging { TriggerResult::FireAndPurge } else { TriggerResult::Fire };
                self.apply(key, window, window, result, out);
            } else {
                self.window_timers.event.entry(end).or_default().push((key.clone(), window));
            }
            if cleanup != end && cleanup != i64::MAX {
                self.window_timers.event.entry(cleanup).or_default().push((key.clone(), window));
            }
        } else {
            self.window_timers.processing.entry(end).or_default().push((key.clone(), window));
        }
    }

    fn apply(
        &mut self,
        key: &K,
        window: TimeWindow,
        state_window: TimeWindow,
        result: TriggerResult,
        out: &mut Vec<O>,
    ) {
        if result.is_fire() {
            self.fire(key, window, state_window, out);
        }
        if result.is_purge() {
            self.contents.set_window(state_window);
            self.contents.clear();
        }
    }

    /// Adds a session window for the current key, merging; returns (window, state window), or
    /// `None` when the resulting window is already late.
    fn add_session_window(&mut self, key: &K, w: TimeWindow) -> Option<(TimeWindow, TimeWindow)> {
        let sessions = self.sessions.as_mut().expect("merging assigner");
        // In place: one lookup, no copy of the key's window set.
        let (added, state_window) = sessions.update_with(|mapping| {
            let mapping = mapping.get_or_insert_with(Vec::new);
            let added = merging::add_window(mapping, w);
            let state_window = merging::state_window(mapping, &added.window).expect("added window is in flight");
            (added, state_window)
        });
        if let Some(merge) = &added.merge {
            // Flink refuses a merge that would move an event-time window's end behind the
            // watermark; with gap-based sessions the merged window only grows, so it cannot.
            let mut merged_states = Vec::new();
            for m in &merge.merged_windows {
                let mut ctx = Self::ctx(
                    key,
                    *m,
                    self.core.clock.watermark,
                    self.core.clock.processing_time,
                    &mut self.core.timers,
                    &mut self.trigger_state,
                );
                if let Some(s) = ctx.state() {
                    merged_states.push(s);
                }
                self.spec.trigger.clear(&mut ctx);
                self.delete_cleanup_timer(key, m);
            }
            let mut ctx = Self::ctx(
                key,
                merge.result,
                self.core.clock.watermark,
                self.core.clock.processing_time,
                &mut self.core.timers,
                &mut self.trigger_state,
            );
            self.spec.trigger.on_merge(&merged_states, &mut ctx);
            if !merge.merged_state_windows.is_empty() {
                self.contents.merge(merge.state_window, &merge.merged_state_windows);
            }
        }
        let window = added.window;
        if self.is_window_late(&window) {
            let sessions = self.sessions.as_mut().expect("merging assigner");
            sessions.update_with(|mapping| {
                if let Some(m) = mapping.as_mut() {
                    merging::retire(m, &window);
                    if m.is_empty() {
                        *mapping = None;
                    }
                }
            });
            return None;
        }
        Some((window, state_window))
    }

    /// Adds keyed state and every timer: those of the timer service, those kept in time
    /// buckets, and the rest of a bucket being fired (the task snapshots only when no firing is
    /// pending, so that is empty there). The operator itself is left as it was.
    fn snapshot(&self, checkpoint: CheckpointId, into: &mut PendingParts) -> Result<(), PartError> {
        let firing = |event_time: bool| {
            self.firing_bucket
                .iter()
                .filter(move |(_, e, _)| *e == event_time)
                .flat_map(|(time, _, rest)| rest.as_slice().iter().map(move |(key, window)| (*time, key, window)))
        };
        let event = firing(true).chain(WindowTimers::all(&self.window_timers.event));
        let processing = firing(false).chain(WindowTimers::all(&self.window_timers.processing));
        self.core.snapshot_with(checkpoint, into, event, processing)
    }

    /// Restores keyed state and timers (a restore comes before any input). When window timers
    /// live in time buckets, the restored ones are moved there, so the operator fires exactly as
    /// one that never stopped would (windows due at the same time may fire in another order
    /// across keys).
    fn restore(&mut self, from: &OperatorStateParts) -> Result<(), PartError> {
        self.core.restore(from)?;
        self.window_timers.event.clear();
        self.window_timers.processing.clear();
        self.firing_bucket = None;
        if self.timers_follow_contents {
            while let Some(t) = self.core.timers.pop_event_timer(i64::MAX) {
                self.window_timers.event.entry(t.timestamp).or_default().push((t.key, t.namespace));
            }
            while let Some(t) = self.core.timers.pop_processing_timer(i64::MAX) {
                self.window_timers.processing.entry(t.timestamp).or_default().push((t.key, t.namespace));
            }
        }
        Ok(())
    }

    fn store_sessions(&mut self, mapping: WindowMapping) {
        let sessions = self.sessions.as_mut().expect("merging assigner");
        if mapping.is_empty() {
            sessions.clear();
        } else {
            sessions.update(mapping);
        }
    }

    /// The state window of `window` for the current key (itself unless sessions merged).
    fn state_window_of(&mut self, window: &TimeWindow) -> Option<TimeWindow> {
        match self.sessions.as_mut() {
            None => Some(*window),
            Some(s) => s.value().and_then(|m| merging::state_window(&m, window)),
        }
    }

    fn on_timer(&mut self, key: K, window: TimeWindow, time: i64, event_time: bool, out: &mut Vec<O>) {
        self.core.backend.set_current_key(key.clone());
        let Some(state_window) = self.state_window_of(&window) else {
            return;
        };
        let result = {
            let mut ctx = Self::ctx(
                &key,
                window,
                self.core.clock.watermark,
                self.core.clock.processing_time,
                &mut self.core.timers,
                &mut self.trigger_state,
            );
            if event_time {
                self.spec.trigger.on_event_time(time, &mut ctx)
            } else {
                self.spec.trigger.on_processing_time(time, &mut ctx)
            }
        };
        let cleanup_now = event_time == self.event_time() && time == self.cleanup_time(&window);
        if cleanup_now && result.is_fire() {
            // The last firing: emit and drop the contents in one access.
            self.contents.set_window(state_window);
            let ctx = WindowContext { key: &key, window, watermark: self.core.clock.watermark };
            self.contents.emit_and_clear(&ctx, out);
        } else {
            self.apply(&key, window, state_window, result, out);
            if cleanup_now {
                self.contents.set_window(state_window);
                self.contents.clear();
            }
        }
        if cleanup_now {
            let mut ctx = Self::ctx(
                &key,
                window,
                self.core.clock.watermark,
                self.core.clock.processing_time,
                &mut self.core.timers,
                &mut self.trigger_state,
            );
            self.spec.trigger.clear(&mut ctx);
            if let Some(sessions) = self.sessions.as_mut() {
                let mut mapping = sessions.value().unwrap_or_default();
                merging::retire(&mut mapping, &window);
                self.store_sessions(mapping);
            }
        }
    }
}

impl<K, T, O, KF, C> Operator<T, O> for WindowOperator<K, T, O, KF, C>
where
    K: StateKey,
    T: Data,
    O: Data,
    KF: Fn(&T) -> K + 'static,
    C: WindowContents<K, T, O>,
{
    fn process(&mut self, record: T, out: &mut Vec<O>) {
        let ts = match &self.spec.timestamps {
            Some(f) if self.event_time() => (f.one)(&record),
            _ => self.core.clock.processing_time,
        };
        self.process_record(record, ts, out);
    }

    fn process_archived(&mut self, input: corestream_netstack::RecordIter<'_, T>, out: &mut Vec<O>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        crate::operators::archived_as_batch(self, input, &mut scratch, out);
        self.scratch = scratch;
    }

    fn process_batch(&mut self, input: &mut Vec<T>, out: &mut Vec<O>) {
        self.core.refresh();
        let mut ts = std::mem::take(&mut self.ts);
        ts.clear();
        match &self.spec.timestamps {
            Some(f) if self.event_time() => (f.batch)(input, &mut ts),
            _ => ts.resize(input.len(), self.core.clock.processing_time),
        }
        for (record, t) in input.drain(..).zip(ts.iter().copied()) {
            self.process_record(record, t, out);
        }
        self.ts = ts;
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Vec<O>) -> Option<i64> {
        self.core.on_watermark(watermark).then_some(watermark)
    }

    fn next_deadline(&self) -> Option<i64> {
        let buckets = self.window_timers.processing.keys().next().copied();
        match (self.core.timers.next_processing_time(), buckets) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_processing_time(&mut self, now: i64, _out: &mut Vec<O>) {
        self.core.on_processing_time(now);
    }

    fn fire_step(&mut self, out: &mut Vec<O>, max_records: usize) -> bool {
        let start = out.len();
        while out.len() - start < max_records.max(1) {
            if let Some((time, event_time, mut due)) = self.firing_bucket.take() {
                if let Some((key, window)) = due.next() {
                    self.firing_bucket = Some((time, event_time, due));
                    self.on_timer(key, window, time, event_time, out);
                }
                continue;
            }
            if let Some(watermark) = self.core.clock.event_until {
                if let Some(timer) = self.core.timers.pop_event_timer(watermark) {
                    self.on_timer(timer.key, timer.namespace, timer.timestamp, true, out);
                    continue;
                }
                if let Some((time, due)) = WindowTimers::pop_due(&mut self.window_timers.event, watermark) {
                    self.firing_bucket = Some((time, true, due.into_iter()));
                    continue;
                }
                self.core.clock.event_until = None;
            }
            if let Some(now) = self.core.clock.processing_until {
                if let Some(timer) = self.core.timers.pop_processing_timer(now) {
                    self.core.clock.processing_time = self.core.clock.processing_time.max(timer.timestamp);
                    self.on_timer(timer.key, timer.namespace, timer.timestamp, false, out);
                    continue;
                }
                if let Some((time, due)) = WindowTimers::pop_due(&mut self.window_timers.processing, now) {
                    self.core.clock.processing_time = self.core.clock.processing_time.max(time);
                    self.firing_bucket = Some((time, false, due.into_iter()));
                    continue;
                }
                self.core.clock.processing_until = None;
            }
            return true;
        }
        false
    }

    fn finish(&mut self, out: &mut Vec<O>, max_records: usize) -> bool {
        // Processing-time windows still open at the end of a bounded input fire now, so a
        // bounded job loses no result.
        if !self.event_time() {
            self.core.clock.processing_until = Some(i64::MAX);
        }
        self.fire_step(out, max_records)
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingParts) -> Result<(), StateHookError> {
        Ok(self.snapshot(checkpoint, into)?)
    }

    fn restore_state(&mut self, from: &OperatorStateParts) -> Result<(), StateHookError> {
        Ok(self.restore(from)?)
    }

    fn notify_checkpoint(&mut self, notice: crate::checkpoint::CheckpointNotice) -> Result<(), StateHookError> {
        self.core.notify(notice);
        Ok(())
    }
}

/// Incremental aggregation: one accumulator per window.
pub(crate) struct AggregateContents<K: StateKey, T, ACC, R, P> {
    pub(crate) state: corestream_state::AggregatingState<K, TimeWindow, T, ACC, R>,
    pub(crate) post: Arc<P>,
}

impl<K, T, ACC, R, O, P> WindowContents<K, T, O> for AggregateContents<K, T, ACC, R, P>
where
    K: StateKey,
    T: 'static,
    ACC: corestream_state::StateValue,
    R: 'static,
    P: Fn(&WindowContext<'_, K>, R, &mut Vec<O>) + 'static,
{
    fn set_window(&mut self, window: TimeWindow) {
        self.state.set_namespace(window);
    }
    #[inline]
    fn add(&mut self, record: &T) -> bool {
        self.state.add(record)
    }
    fn emit(&mut self, ctx: &WindowContext<'_, K>, out: &mut Vec<O>) {
        if let Some(result) = self.state.get() {
            (self.post)(ctx, result, out);
        }
    }
    fn clear(&mut self) {
        self.state.clear();
    }
    fn emit_and_clear(&mut self, ctx: &WindowContext<'_, K>, out: &mut Vec<O>) {
        if let Some(result) = self.state.take() {
            (self.post)(ctx, result, out);
        }
    }
    fn merge(&mut self, target: TimeWindow, sources: &[TimeWindow]) {
        self.state.merge_namespaces(&target, sources);
    }
}

/// Incremental reduction: one value per window.
pub(crate) struct ReduceContents<K: StateKey, T, P> {
    pub(crate) state: corestream_state::ReducingState<K, TimeWindow, T>,
    pub(crate) post: Arc<P>,
}

impl<K, T, O, P> WindowContents<K, T, O> for ReduceContents<K, T, P>
where
    K: StateKey,
    T: corestream_state::StateValue,
    P: Fn(&WindowContext<'_, K>, T, &mut Vec<O>) + 'static,
{
    fn set_window(&mut self, window: TimeWindow) {
        self.state.set_namespace(window);
    }
    #[inline]
    fn add(&mut self, record: &T) -> bool {
        self.state.add(record.clone())
    }
    fn emit(&mut self, ctx: &WindowContext<'_, K>, out: &mut Vec<O>) {
        if let Some(result) = self.state.get() {
            (self.post)(ctx, result, out);
        }
    }
    fn clear(&mut self) {
        self.state.clear();
    }
    fn merge(&mut self, target: TimeWindow, sources: &[TimeWindow]) {
        self.state.merge_namespaces(&target, sources);
    }
}

/// Whole-window processing: every record of the window is kept until it fires.
pub(crate) struct ListContents<K: StateKey, T, P> {
    pub(crate) state: corestream_state::ListState<K, TimeWindow, T>,
    pub(crate) post: Arc<P>,
}

impl<K, T, O, P> WindowContents<K, T, O> for ListContents<K, T, P>
where
    K: StateKey,
    T: corestream_state::StateValue,
    P: Fn(&WindowContext<'_, K>, Vec<T>, &mut Vec<O>) + 'static,
{
    fn set_window(&mut self, window: TimeWindow) {
        self.state.set_namespace(window);
    }
    #[inline]
    fn add(&mut self, record: &T) -> bool {
        self.state.add(record.clone())
    }
    fn emit(&mut self, ctx: &WindowContext<'_, K>, out: &mut Vec<O>) {
        let records = self.state.get();
        if !records.is_empty() {
            (self.post)(ctx, records, out);
        }
    }
    fn clear(&mut self) {
        self.state.clear();
    }
    fn merge(&mut self, target: TimeWindow, sources: &[TimeWindow]) {
        self.state.merge_namespaces(&target, sources);
    }
}
