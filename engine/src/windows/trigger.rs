//! Triggers decide when a window's contents are emitted (Flink's `Trigger`): at the end of the
//! window in event time (the default for event-time windows) or processing time (the default
//! for processing-time windows), every N records, continuously at an event-time interval, and
//! any of these purging the window when it fires. A trigger keeps at most one number of state
//! per key and window (a count, or the next firing time), merged when session windows merge.

use super::assigner::TimeWindow;

/// What a trigger asks the window operator to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerResult {
    Continue,
    Fire,
    Purge,
    FireAndPurge,
}

impl TriggerResult {
    pub fn is_fire(self) -> bool {
        matches!(self, Self::Fire | Self::FireAndPurge)
    }
    pub fn is_purge(self) -> bool {
        matches!(self, Self::Purge | Self::FireAndPurge)
    }
}

/// When a window fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// When the watermark passes the window's max timestamp, and again for every late record
    /// within the allowed lateness.
    EventTime,
    /// When processing time passes the window's max timestamp.
    ProcessingTime,
    /// Every `n` records (the count restarts after each firing).
    Count(u64),
    /// Every `interval_ms` of event time while the window is open, and at its end.
    ContinuousEventTime(i64),
    /// The inner trigger, purging the window whenever it fires.
    Purging(Box<Trigger>),
}

/// What a trigger can do for the current key and window.
pub(crate) trait TriggerContext {
    fn window(&self) -> TimeWindow;
    fn current_watermark(&self) -> i64;
    fn current_processing_time(&self) -> i64;
    fn register_event_time_timer(&mut self, ts: i64);
    fn register_processing_time_timer(&mut self, ts: i64);
    fn delete_event_time_timer(&mut self, ts: i64);
    fn delete_processing_time_timer(&mut self, ts: i64);
    /// The trigger's number for this key and window.
    fn state(&mut self) -> Option<i64>;
    fn set_state(&mut self, value: Option<i64>);
}

impl Trigger {
    /// A trigger that purges whenever this one fires.
    pub fn purging(self) -> Self {
        match self {
            p @ Trigger::Purging(_) => p,
            t => Trigger::Purging(Box::new(t)),
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Trigger::Count(0) => Err("count trigger needs a count of at least 1".into()),
            Trigger::ContinuousEventTime(i) if *i <= 0 => {
                Err(format!("continuous event-time trigger needs a positive interval, got {i} ms"))
            }
            Trigger::Purging(inner) => inner.validate(),
            _ => Ok(()),
        }
    }

    pub(crate) fn on_element(&self, timestamp: i64, ctx: &mut dyn TriggerContext) -> TriggerResult {
        let w = ctx.window();
        match self {
            Trigger::EventTime => {
                if w.max_timestamp() <= ctx.current_watermark() {
                    TriggerResult::Fire
                } else {
                    ctx.register_event_time_timer(w.max_timestamp());
                    TriggerResult::Continue
                }
            }
            Trigger::ProcessingTime => {
                ctx.register_processing_time_timer(w.max_timestamp());
                TriggerResult::Continue
            }
            Trigger::Count(n) => {
                let count = ctx.state().unwrap_or(0) + 1;
                if count as u64 >= *n {
                    ctx.set_state(None);
                    TriggerResult::Fire
                } else {
                    ctx.set_state(Some(count));
                    TriggerResult::Continue
                }
            }
            Trigger::ContinuousEventTime(interval) => {
                if w.max_timestamp() <= ctx.current_watermark() {
                    return TriggerResult::Fire;
                }
                ctx.register_event_time_timer(w.max_timestamp());
                if ctx.state().is_none() {
                    let next = (timestamp - timestamp.rem_euclid(*interval)).saturating_add(*interval);
                    let next = next.min(w.max_timestamp());
                    ctx.set_state(Some(next));
                    ctx.register_event_time_timer(next);
                }
                TriggerResult::Continue
            }
            Trigger::Purging(inner) => purge(inner.on_element(timestamp, ctx)),
        }
    }

    pub(crate) fn on_event_time(&self, time: i64, ctx: &mut dyn TriggerContext) -> TriggerResult {
        let w = ctx.window();
        match self {
            Trigger::EventTime => {
                if time == w.max_timestamp() {
                    TriggerResult::Fire
                } else {
                    TriggerResult::Continue
                }
            }
            Trigger::ProcessingTime | Trigger::Count(_) => TriggerResult::Continue,
            Trigger::ContinuousEventTime(interval) => {
                if time == w.max_timestamp() {
                    return TriggerResult::Fire;
                }
                if ctx.state() == Some(time) {
                    let next = time.saturating_add(*interval).min(w.max_timestamp());
                    ctx.set_state(Some(next));
                    ctx.register_event_time_timer(next);
                    return TriggerResult::Fire;
                }
                TriggerResult::Continue
            }
            Trigger::Purging(inner) => purge(inner.on_event_time(time, ctx)),
        }
    }

    pub(crate) fn on_processing_time(&self, time: i64, ctx: &mut dyn TriggerContext) -> TriggerResult {
        match self {
            Trigger::ProcessingTime => {
                if time == ctx.window().max_timestamp() {
                    TriggerResult::Fire
                } else {
                    TriggerResult::Continue
                }
            }
            Trigger::Purging(inner) => purge(inner.on_processing_time(time, ctx)),
            _ => TriggerResult::Continue,
        }
    }

    /// Session windows merged into `ctx.window()`; `merged_states` are the trigger numbers of
    /// the windows merged away (already removed).
    pub(crate) fn on_merge(&self, merged_states: &[i64], ctx: &mut dyn TriggerContext) {
        let w = ctx.window();
        match self {
            Trigger::EventTime => {
                if w.max_timestamp() > ctx.current_watermark() {
                    ctx.register_event_time_timer(w.max_timestamp());
                }
            }
            Trigger::ProcessingTime => {
                if w.max_timestamp() > ctx.current_processing_time() {
                    ctx.register_processing_time_timer(w.max_timestamp());
                }
            }
            Trigger::Count(_) => {
                let total = ctx.state().unwrap_or(0) + merged_states.iter().sum::<i64>();
                ctx.set_state((total > 0).then_some(total));
            }
            Trigger::ContinuousEventTime(_) => {
                if w.max_timestamp() > ctx.current_watermark() {
                    ctx.register_event_time_timer(w.max_timestamp());
                }
                let next = ctx.state().into_iter().chain(merged_states.iter().copied()).min();
                if let Some(next) = next {
                    ctx.set_state(Some(next));
                    ctx.register_event_time_timer(next);
                }
            }
            Trigger::Purging(inner) => inner.on_merge(merged_states, ctx),
        }
    }

    /// The window is gone: delete its timers and state.
    pub(crate) fn clear(&self, ctx: &mut dyn TriggerContext) {
        let w = ctx.window();
        match self {
            Trigger::EventTime => ctx.delete_event_time_timer(w.max_timestamp()),
            Trigger::ProcessingTime => ctx.delete_processing_time_timer(w.max_timestamp()),
            Trigger::Count(_) => ctx.set_state(None),
            Trigger::ContinuousEventTime(_) => {
                ctx.delete_event_time_timer(w.max_timestamp());
                if let Some(next) = ctx.state() {
                    ctx.delete_event_time_timer(next);
                }
                ctx.set_state(None);
            }
            Trigger::Purging(inner) => inner.clear(ctx),
        }
    }

    /// Whether this trigger keeps a number per window.
    pub(crate) fn has_state(&self) -> bool {
        match self {
            Trigger::Count(_) | Trigger::ContinuousEventTime(_) => true,
            Trigger::Purging(inner) => inner.has_state(),
            _ => false,
        }
    }
}

fn purge(r: TriggerResult) -> TriggerResult {
    if r.is_fire() {
        TriggerResult::FireAndPurge
    } else {
        r
    }
}
