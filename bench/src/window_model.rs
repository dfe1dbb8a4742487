//! A single-threaded reference model of Flink's event-time windows (tumbling, sliding and
//! session windows with a bounded-out-of-orderness watermark, allowed lateness and the default
//! `EventTimeTrigger`), against which property tests and the golden files of
//! `corestream run window-agg` (`tools/tests/golden/window-agg/`) are checked. It sits outside
//! the data path: it keeps every window's values in a sorted map and recomputes the aggregate
//! at each firing, trading speed for being easy to check line by line against Flink's
//! `WindowOperator`.
//!
//! The rules, as in Flink:
//! - The watermark starts at `i64::MIN`; after each event it becomes
//!   `max(wm, max_ts_seen - out_of_orderness - 1)`, and `i64::MAX` at the end of the input.
//! - A window's max timestamp is `end - 1`, its cleanup time `end - 1 + allowed_lateness`
//!   (saturating). A window whose cleanup time is `<= wm` is late: an event is not added to it.
//!   An event added to no window whose `ts + allowed_lateness <= wm` is dropped as late.
//! - An event added to a window whose max timestamp is `<= wm` fires that window at once (a
//!   late firing). Otherwise the window fires when the watermark first reaches its max
//!   timestamp (on-time firing); windows due at the same watermark fire in order of max
//!   timestamp, key, start (Flink orders timers by timestamp only; the tie order is the
//!   model's). Firing does not purge: every firing aggregates all values so far. Windows are
//!   removed once the watermark reaches their cleanup time.
//! - Session windows: an event opens `[ts, ts + gap)`, which merges transitively with every
//!   window of its key that it intersects by Flink's `TimeWindow.intersects`
//!   (`a.start <= b.end && a.end >= b.start`, so touching windows merge too). A merge never
//!   yields a late window: the watermark is below every stored window's cleanup time, and the
//!   merged window ends no earlier. As in Flink's `EventTimeTrigger.onMerge`, the merged window
//!   registers a timer only if its max timestamp is still ahead of the watermark; otherwise the
//!   event's `onElement` fires it at once. So for every stored window, "its timer is pending"
//!   equals "its max timestamp is ahead of the watermark", which is what the model checks
//!   instead of keeping timers.
//!
//! Timestamps, window bounds and offsets must stay within `±2^62` (asserted), so that no window
//! arithmetic overflows.

use std::collections::BTreeMap;

pub use crate::exact::Num;

/// The window assigner; all lengths in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Tumbling { size: i64, offset: i64 },
    Sliding { size: i64, slide: i64, offset: i64 },
    Session { gap: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agg {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub key: String,
    pub ts: i64,
    pub value: Num,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub key: String,
    pub start: i64,
    pub end: i64,
    pub value: Num,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub window: WindowSpec,
    pub agg: Agg,
    pub out_of_orderness: i64,
    pub allowed_lateness: i64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelOutput {
    /// Every firing in emission order, including late re-firings.
    pub firings: Vec<WindowResult>,
    /// Dropped late records, in arrival order.
    pub late: Vec<Event>,
}

/// The half-open time range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

const LIMIT: i64 = 1 << 62;

impl Window {
    pub fn max_timestamp(self) -> i64 {
        self.end - 1
    }

    /// Flink's `TimeWindow.intersects`: overlapping or touching.
    pub fn intersects(self, other: Window) -> bool {
        self.start <= other.end && self.end >= other.start
    }

    pub fn cover(self, other: Window) -> Window {
        Window { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

impl WindowSpec {
    /// The windows an event at `ts` belongs to before any merging, in the order Flink's
    /// assigners return them (sliding: latest start first).
    pub fn assign(self, ts: i64) -> Vec<Window> {
        match self {
            WindowSpec::Tumbling { size, offset } => {
                let start = ts - (ts - offset).rem_euclid(size);
                vec![Window { start, end: start + size }]
            }
            WindowSpec::Sliding { size, slide, offset } => {
                let last_start = ts - (ts - offset).rem_euclid(slide);
                let mut windows = Vec::new();
                let mut start = last_start;
                while start > ts - size {
                    windows.push(Window { start, end: start + size });
                    start -= slide;
                }
                windows
            }
            WindowSpec::Session { gap } => vec![Window { start: ts, end: ts + gap }],
        }
    }

    fn assert_valid(self) {
        let (lengths, offset): (&[i64], i64) = match self {
            WindowSpec::Tumbling { size, offset } => (&[size], offset),
            WindowSpec::Sliding { size, slide, offset } => (&[size, slide], offset),
            WindowSpec::Session { gap } => (&[gap], 0),
        };
        assert!(lengths.iter().all(|&l| l > 0 && l < LIMIT), "window lengths must be in (0, 2^62): {self:?}");
        assert!(offset.abs() < LIMIT, "window offset out of range: {self:?}");
    }
}

impl Agg {
    /// The aggregate of a window's values (never empty: a window exists once it has a value),
    /// by the exact rules of [`crate::exact`].
    pub fn apply(self, values: &[Num]) -> Num {
        assert!(!values.is_empty(), "a window always holds at least one value");
        let ints: i128 = values.iter().filter_map(|v| if let Num::Int(i) = v { Some(*i) } else { None }).sum();
        let floats: Vec<f64> =
            values.iter().filter_map(|v| if let Num::Float(x) = v { Some(*x) } else { None }).collect();
        let sum =
            || if floats.is_empty() { Num::Int(ints) } else { Num::Float(ints as f64 + floats.iter().sum::<f64>()) };
        let n = values.len() as i128;
        let mut min = values[0];
        let mut max = values[0];
        for v in &values[1..] {
            if v.cmp_exact(min).is_lt() {
                min = *v;
            }
            if v.cmp_exact(max).is_gt() {
                max = *v;
            }
        }
        match self {
            Agg::Count => Num::Int(n),
            Agg::Sum => sum(),
            Agg::Min => min,
            Agg::Max => max,
            Agg::Avg if floats.is_empty() && ints % n == 0 => Num::Int(ints / n),
            Agg::Avg => Num::Float(sum().to_f64() / n as f64),
        }
    }
}

struct Model<'a> {
    cfg: &'a ModelConfig,
    wm: i64,
    /// Values of every live window, in the order they were added (merged sessions: the
    /// merged windows' values by start, then the new event's).
    windows: BTreeMap<(String, Window), Vec<Num>>,
    out: ModelOutput,
}

impl Model<'_> {
    fn cleanup_time(&self, w: Window) -> i64 {
        w.max_timestamp().saturating_add(self.cfg.allowed_lateness)
    }

    fn is_late(&self, w: Window) -> bool {
        self.cleanup_time(w) <= self.wm
    }

    fn fire(&mut self, key: &str, w: Window) {
        let values = &self.windows[&(key.to_string(), w)];
        let value = self.cfg.agg.apply(values);
        self.out.firings.push(WindowResult { key: key.to_string(), start: w.start, end: w.end, value });
    }

    /// Merges `new` with every stored window of `key` it reaches, transitively, moves their
    /// values to the merged window, and returns it. Stores nothing when nothing merges.
    fn merge_session(&mut self, key: &str, new: Window) -> Window {
        let mut cover = new;
        let mut merged: Vec<Window> = Vec::new();
        loop {
            let reached: Vec<Window> = self
                .windows
                .keys()
                .filter(|(k, w)| k == key && !merged.contains(w) && w.intersects(cover))
                .map(|&(_, w)| w)
                .collect();
            if reached.is_empty() {
                break;
            }
            for w in reached {
                cover = cover.cover(w);
                merged.push(w);
            }
        }
        if !merged.is_empty() {
            assert!(!self.is_late(cover), "a merge produced a late window {cover:?}; stored windows are never late");
            merged.sort();
            let mut values = Vec::new();
            for w in merged {
                values.extend(self.windows.remove(&(key.to_string(), w)).expect("merged window is stored"));
            }
            self.windows.insert((key.to_string(), cover), values);
        }
        cover
    }

    fn process(&mut self, e: &Event) {
        let windows = match self.cfg.window {
            WindowSpec::Session { .. } => {
                let new = self.cfg.window.assign(e.ts)[0];
                vec![self.merge_session(&e.key, new)]
            }
            spec => spec.assign(e.ts),
        };
        let mut skipped = true;
        for w in windows {
            if self.is_late(w) {
                continue;
            }
            skipped = false;
            self.windows.entry((e.key.clone(), w)).or_default().push(e.value);
            if w.max_timestamp() <= self.wm {
                self.fire(&e.key, w);
            }
        }
        if skipped && e.ts.saturating_add(self.cfg.allowed_lateness) <= self.wm {
            self.out.late.push(e.clone());
        }
    }

    fn advance_watermark(&mut self, wm: i64) {
        if wm <= self.wm {
            return;
        }
        let old = self.wm;
        self.wm = wm;
        let mut due: Vec<(i64, String, Window)> = self
            .windows
            .keys()
            .filter(|(_, w)| old < w.max_timestamp() && w.max_timestamp() <= wm)
            .map(|(k, w)| (w.max_timestamp(), k.clone(), *w))
            .collect();
        due.sort();
        for (_, key, w) in due {
            self.fire(&key, w);
        }
        let cfg = self.cfg;
        self.windows.retain(|(_, w), _| w.max_timestamp().saturating_add(cfg.allowed_lateness) > wm);
    }
}

/// Runs the model over `events` in arrival order, with a per-record watermark and a final
/// watermark of `i64::MAX` at the end.
pub fn run_model(cfg: &ModelConfig, events: &[Event]) -> ModelOutput {
    cfg.window.assert_valid();
    assert!(cfg.out_of_orderness >= 0 && cfg.allowed_lateness >= 0, "durations must not be negative");
    let mut model = Model { cfg, wm: i64::MIN, windows: BTreeMap::new(), out: ModelOutput::default() };
    let mut max_ts = i64::MIN;
    for e in events {
        assert!(e.ts.abs() < LIMIT, "timestamp {} is outside the model's range ±2^62", e.ts);
        model.process(e);
        max_ts = max_ts.max(e.ts);
        model.advance_watermark(max_ts.saturating_sub(cfg.out_of_orderness).saturating_sub(1));
    }
    model.advance_watermark(i64::MAX);
    assert!(model.windows.is_empty(), "the final watermark cleans up every window");
    model.out
}

/// The last firing of each (key, start, end), sorted by (key, start, end).
pub fn final_results(out: &ModelOutput) -> Vec<WindowResult> {
    let mut last: BTreeMap<(&str, i64, i64), &WindowResult> = BTreeMap::new();
    for r in &out.firings {
        last.insert((&r.key, r.start, r.end), r);
    }
    last.into_values().cloned().collect()
}

/// Every firing sorted by (key, start, end), firings of the same window in emission order:
/// the order of the golden files, which does not depend on how parallel subtasks interleave.
pub fn sorted_firings(out: &ModelOutput) -> Vec<WindowResult> {
    let mut firings = out.firings.clone();
    firings.sort_by(|a, b| (&a.key, a.start, a.end).cmp(&(&b.key, b.start, b.end)));
    firings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, ts: i64, value: f64) -> Event {
        Event { key: key.to_string(), ts, value: Num::Float(value) }
    }

    fn res(key: &str, start: i64, end: i64, value: f64) -> WindowResult {
        WindowResult { key: key.to_string(), start, end, value: Num::Float(value) }
    }

    fn cfg(window: WindowSpec, agg: Agg, out_of_orderness: i64, allowed_lateness: i64) -> ModelConfig {
        ModelConfig { window, agg, out_of_orderness, allowed_lateness }
    }

    #[test]
    fn tumbling_assignment_with_offset_and_negative_timestamps() {
        let spec = WindowSpec::Tumbling { size: 10, offset: 3 };
        assert_eq!(spec.assign(3), vec![Window { start: 3, end: 13 }]);
        assert_eq!(spec.assign(12), vec![Window { start: 3, end: 13 }]);
        assert_eq!(spec.assign(2), vec![Window { start: -7, end: 3 }]);
        assert_eq!(spec.assign(-7), vec![Window { start: -7, end: 3 }]);
        assert_eq!(spec.assign(-8), vec![Window { start: -17, end: -7 }]);
        let plain = WindowSpec::Tumbling { size: 10, offset: 0 };
        assert_eq!(plain.assign(-1), vec![Window { start: -10, end: 0 }]);
        assert_eq!(plain.assign(-10), vec![Window { start: -10, end: 0 }]);
        assert_eq!(plain.assign(0), vec![Window { start: 0, end: 10 }]);
    }

    #[test]
    fn tumbling_run_with_offset_and_negative_timestamps() {
        let c = cfg(WindowSpec::Tumbling { size: 10, offset: 3 }, Agg::Sum, 0, 0);
        let events = [ev("a", -8, 1.0), ev("a", -7, 2.0), ev("a", 2, 4.0), ev("a", 3, 8.0), ev("b", 12, 16.0)];
        // wm after each: -9, -8, 1, 2, 11. The window [-17,-7) (max -8) fires at wm -8;
        // [-7,3) (max 2) at wm 2; [3,13) at the final watermark, before b's (same window, key order).
        let out = run_model(&c, &events);
        assert_eq!(
            out.firings,
            vec![res("a", -17, -7, 1.0), res("a", -7, 3, 6.0), res("a", 3, 13, 8.0), res("b", 3, 13, 16.0)]
        );
        assert!(out.late.is_empty());
    }

    #[test]
    fn sliding_assigns_each_event_to_size_over_slide_windows() {
        let spec = WindowSpec::Sliding { size: 10, slide: 5, offset: 0 };
        assert_eq!(spec.assign(7), vec![Window { start: 5, end: 15 }, Window { start: 0, end: 10 }]);
        assert_eq!(spec.assign(-1), vec![Window { start: -5, end: 5 }, Window { start: -10, end: 0 }]);
        assert_eq!(spec.assign(5), vec![Window { start: 5, end: 15 }, Window { start: 0, end: 10 }]);
        let offset = WindowSpec::Sliding { size: 6, slide: 2, offset: 1 };
        assert_eq!(
            offset.assign(0),
            vec![Window { start: -1, end: 5 }, Window { start: -3, end: 3 }, Window { start: -5, end: 1 }]
        );
        let uneven = WindowSpec::Sliding { size: 5, slide: 2, offset: 0 };
        assert_eq!(
            uneven.assign(4),
            vec![Window { start: 4, end: 9 }, Window { start: 2, end: 7 }, Window { start: 0, end: 5 }]
        );
        assert_eq!(uneven.assign(5), vec![Window { start: 4, end: 9 }, Window { start: 2, end: 7 }]);
    }

    #[test]
    fn sliding_run_counts_each_event_in_every_window() {
        let c = cfg(WindowSpec::Sliding { size: 10, slide: 5, offset: 0 }, Agg::Count, 100, 0);
        let out = run_model(&c, &[ev("k", 7, 0.0), ev("k", 12, 0.0), ev("k", 3, 0.0)]);
        // 3 also falls in [-5,5). Nothing fires before the final watermark.
        assert_eq!(
            out.firings,
            vec![res("k", -5, 5, 1.0), res("k", 0, 10, 2.0), res("k", 5, 15, 2.0), res("k", 10, 20, 1.0)]
        );
    }

    #[test]
    fn session_windows_merge_overlapping_and_touching() {
        let c = cfg(WindowSpec::Session { gap: 5 }, Agg::Count, 100, 0);
        // [0,5) and [5,10) touch and merge; [11,16) is 1 ms apart from [0,10) and stays apart.
        let out = run_model(&c, &[ev("k", 0, 0.0), ev("k", 5, 0.0), ev("k", 11, 0.0), ev("j", 3, 0.0)]);
        assert_eq!(out.firings, vec![res("j", 3, 8, 1.0), res("k", 0, 10, 2.0), res("k", 11, 16, 1.0)]);
    }

    #[test]
    fn session_bridging_event_merges_two_sessions_transitively() {
        let c = cfg(WindowSpec::Session { gap: 5 }, Agg::Max, 100, 0);
        // [0,5), [12,17), [20,25) are apart; 7 opens [7,12), touching [0,5)? no (7 > 5) but
        // reaching [12,17) by touch; 4 opens [4,9), which overlaps [0,5) and [7,17): all merge.
        let events = [ev("k", 0, 1.0), ev("k", 12, 2.0), ev("k", 20, 3.0), ev("k", 7, 5.0), ev("k", 4, 4.0)];
        let out = run_model(&c, &events);
        assert_eq!(out.firings, vec![res("k", 0, 17, 5.0), res("k", 20, 25, 3.0)]);
    }

    #[test]
    fn session_merge_after_watermark_fires_at_once() {
        // gap 10, lateness 20. 0 -> [0,10); 25 -> wm 24 fires [0,10) (max 9); then 8 opens
        // [8,18) which merges into [0,18), max 17 <= 24: it fires at once with both values.
        let c = cfg(WindowSpec::Session { gap: 10 }, Agg::Sum, 0, 20);
        let out = run_model(&c, &[ev("k", 0, 1.0), ev("k", 25, 2.0), ev("k", 8, 4.0)]);
        assert_eq!(out.firings, vec![res("k", 0, 10, 1.0), res("k", 0, 18, 5.0), res("k", 25, 35, 2.0)]);
        assert!(out.late.is_empty());
    }

    #[test]
    fn session_merge_that_extends_past_watermark_waits_for_it() {
        // [0,10) fires at wm 14 (ts 15); 9 opens [9,19) -> [0,19), max 18 > 14: on-time again
        // at wm 19 (ts 20), and [15,25)+[20,30) -> [15,30) at the end.
        let c = cfg(WindowSpec::Session { gap: 10 }, Agg::Count, 0, 100);
        let out = run_model(&c, &[ev("k", 0, 0.0), ev("j", 15, 0.0), ev("k", 9, 0.0), ev("j", 20, 0.0)]);
        assert_eq!(out.firings, vec![res("k", 0, 10, 1.0), res("k", 0, 19, 2.0), res("j", 15, 30, 2.0)]);
    }

    #[test]
    fn allowed_lateness_refires_and_drops_beyond_it() {
        let c = cfg(WindowSpec::Tumbling { size: 10, offset: 0 }, Agg::Sum, 0, 5);
        let events = [
            ev("k", 1, 1.0),   // wm 0
            ev("k", 12, 2.0),  // wm 11: [0,10) fires 1
            ev("k", 5, 4.0),   // cleanup 14 > 11: added, late firing 5
            ev("k", 14, 8.0),  // wm 13
            ev("k", 9, 16.0),  // cleanup 14 > 13: late firing 21
            ev("k", 15, 0.5),  // wm 14: [0,10) is cleaned up
            ev("k", 3, 32.0),  // late: dropped
            ev("k", 10, 64.0), // [10,20) is on time
        ];
        let out = run_model(&c, &events);
        assert_eq!(
            out.firings,
            vec![res("k", 0, 10, 1.0), res("k", 0, 10, 5.0), res("k", 0, 10, 21.0), res("k", 10, 20, 74.5)]
        );
        assert_eq!(out.late, vec![ev("k", 3, 32.0)]);
        assert_eq!(final_results(&out), vec![res("k", 0, 10, 21.0), res("k", 10, 20, 74.5)]);
    }

    #[test]
    fn without_lateness_an_event_behind_the_watermark_is_late() {
        let c = cfg(WindowSpec::Tumbling { size: 10, offset: 0 }, Agg::Count, 2, 0);
        // 13 -> wm 10: [0,10) fires and is cleaned up, so 9 is late; 11 and 10 join [10,20).
        let out =
            run_model(&c, &[ev("k", 0, 0.0), ev("k", 13, 0.0), ev("k", 9, 0.0), ev("k", 11, 0.0), ev("k", 10, 0.0)]);
        assert_eq!(out.firings, vec![res("k", 0, 10, 1.0), res("k", 10, 20, 3.0)]);
        assert_eq!(out.late, vec![ev("k", 9, 0.0)]);
    }

    #[test]
    fn sliding_event_skips_only_its_late_windows() {
        // size 10, slide 5. 22 -> wm 21: [5,15) and [10,20) fired and cleaned up. 16 belongs to
        // [15,25) (on time) and [10,20) (gone): counted once, not late.
        let c = cfg(WindowSpec::Sliding { size: 10, slide: 5, offset: 0 }, Agg::Count, 0, 0);
        let out = run_model(&c, &[ev("k", 12, 0.0), ev("k", 22, 0.0), ev("k", 16, 0.0)]);
        assert_eq!(
            out.firings,
            vec![res("k", 5, 15, 1.0), res("k", 10, 20, 1.0), res("k", 15, 25, 2.0), res("k", 20, 30, 1.0)]
        );
        assert!(out.late.is_empty());
    }

    #[test]
    fn final_watermark_fires_everything_in_max_timestamp_key_start_order() {
        let c = cfg(WindowSpec::Tumbling { size: 10, offset: 0 }, Agg::Avg, i64::MAX / 4, 1000);
        let out =
            run_model(&c, &[ev("b", 25, 1.0), ev("a", 21, 2.0), ev("b", 3, 3.0), ev("a", 9, 4.0), ev("a", 8, 1.0)]);
        assert_eq!(
            out.firings,
            vec![res("a", 0, 10, 2.5), res("b", 0, 10, 3.0), res("a", 20, 30, 2.0), res("b", 20, 30, 1.0)]
        );
    }

    #[test]
    fn aggregates() {
        let v = [Num::Int(3), Num::Float(-1.5), Num::Int(4)];
        assert_eq!(Agg::Count.apply(&v).to_string(), "3");
        assert_eq!(Agg::Sum.apply(&v).to_string(), "5.5");
        assert_eq!(Agg::Min.apply(&v).to_string(), "-1.5");
        assert_eq!(Agg::Max.apply(&v).to_string(), "4");
        assert_eq!(Agg::Avg.apply(&v).to_f64(), 5.5 / 3.0);
        let ints = [Num::Int(i128::from(i64::MAX)), Num::Int(i128::from(i64::MAX)), Num::Int(2)];
        assert_eq!(Agg::Sum.apply(&ints).to_string(), "18446744073709551616");
        assert_eq!(Agg::Avg.apply(&ints[..2]).to_string(), "9223372036854775807");
    }

    #[test]
    fn final_results_keeps_the_last_firing_sorted() {
        let out = ModelOutput {
            firings: vec![res("b", 0, 10, 1.0), res("a", 10, 20, 2.0), res("b", 0, 10, 3.0), res("a", 0, 10, 4.0)],
            late: vec![],
        };
        assert_eq!(final_results(&out), vec![res("a", 0, 10, 4.0), res("a", 10, 20, 2.0), res("b", 0, 10, 3.0)]);
        assert_eq!(
            sorted_firings(&out),
            vec![res("a", 0, 10, 4.0), res("a", 10, 20, 2.0), res("b", 0, 10, 1.0), res("b", 0, 10, 3.0)]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn spec() -> impl Strategy<Value = WindowSpec> {
            prop_oneof![
                (1i64..40)
                    .prop_flat_map(|size| (Just(size), 0..size))
                    .prop_map(|(size, offset)| WindowSpec::Tumbling { size, offset }),
                (1i64..40, 1i64..40)
                    .prop_flat_map(|(a, b)| (Just(a.max(b)), Just(a.min(b)), 0..a.min(b)))
                    .prop_map(|(size, slide, offset)| WindowSpec::Sliding { size, slide, offset }),
                (1i64..40).prop_map(|gap| WindowSpec::Session { gap }),
            ]
        }

        fn agg() -> impl Strategy<Value = Agg> {
            prop_oneof![Just(Agg::Count), Just(Agg::Sum), Just(Agg::Min), Just(Agg::Max), Just(Agg::Avg)]
        }

        fn event() -> impl Strategy<Value = Event> {
            (prop::sample::select(vec!["a", "b", "c"]), -500i64..500, -5i32..6)
                .prop_map(|(key, ts, value)| ev(key, ts, f64::from(value)))
        }

        /// Events whose timestamps trail the largest one seen before by at most `disorder`.
        fn bounded(disorder: i64) -> impl Strategy<Value = Vec<Event>> {
            prop::collection::vec((event(), 0i64..20, 0..=disorder), 0..60).prop_map(|steps| {
                let mut base = -300;
                steps
                    .into_iter()
                    .map(|(mut e, step, lag)| {
                        base += step;
                        e.ts = base - lag;
                        e
                    })
                    .collect()
            })
        }

        /// The windows of all events computed in one pass over the whole input, sorted.
        fn batch(spec: WindowSpec, agg: Agg, events: &[Event]) -> Vec<WindowResult> {
            let mut windows: BTreeMap<(String, i64, i64), Vec<Num>> = BTreeMap::new();
            if let WindowSpec::Session { gap } = spec {
                let mut sorted = events.to_vec();
                sorted.sort_by(|a, b| (&a.key, a.ts).cmp(&(&b.key, b.ts)));
                let mut current: Option<(String, i64, i64, Vec<Num>)> = None;
                for e in sorted {
                    match &mut current {
                        Some((key, _, end, values)) if *key == e.key && e.ts <= *end => {
                            *end = (*end).max(e.ts + gap);
                            values.push(e.value);
                        }
                        _ => {
                            if let Some((key, start, end, values)) = current.take() {
                                windows.insert((key, start, end), values);
                            }
                            current = Some((e.key.clone(), e.ts, e.ts + gap, vec![e.value]));
                        }
                    }
                }
                if let Some((key, start, end, values)) = current {
                    windows.insert((key, start, end), values);
                }
            } else {
                for e in events {
                    for w in spec.assign(e.ts) {
                        windows.entry((e.key.clone(), w.start, w.end)).or_default().push(e.value);
                    }
                }
            }
            windows
                .into_iter()
                .map(|((key, start, end), values)| WindowResult { key, start, end, value: agg.apply(&values) })
                .collect()
        }

        proptest! {
            #[test]
            fn assignment_matches_brute_force(spec in spec(), ts in -500i64..500) {
                let (size, slide, offset) = match spec {
                    WindowSpec::Tumbling { size, offset } => (size, size, offset),
                    WindowSpec::Sliding { size, slide, offset } => (size, slide, offset),
                    WindowSpec::Session { gap } => (gap, 1, ts),
                };
                let mut expected: Vec<Window> = (ts - size + 1..=ts)
                    .filter(|s| (s - offset).rem_euclid(slide) == 0)
                    .map(|start| Window { start, end: start + size })
                    .collect();
                if let WindowSpec::Session { gap } = spec {
                    expected = vec![Window { start: ts, end: ts + gap }];
                }
                expected.reverse();
                prop_assert_eq!(spec.assign(ts), expected);
            }

            #[test]
            fn bounded_disorder_fires_every_window_once_with_the_batch_result(
                spec in spec(), agg in agg(), extra in 1i64..10, events in (0i64..30).prop_flat_map(bounded),
            ) {
                let max_lag = events.iter().scan(i64::MIN, |max, e| {
                    let lag = (*max - e.ts).max(0);
                    *max = (*max).max(e.ts);
                    Some(lag)
                }).max().unwrap_or(0);
                let cfg = ModelConfig { window: spec, agg, out_of_orderness: max_lag + extra, allowed_lateness: 0 };
                let out = run_model(&cfg, &events);
                prop_assert!(out.late.is_empty());
                prop_assert_eq!(sorted_firings(&out), batch(spec, agg, &events));
            }

            #[test]
            fn with_lateness_covering_the_input_nothing_is_lost(
                spec in spec(), agg in agg(), ooo in 0i64..50, events in prop::collection::vec(event(), 0..60),
            ) {
                let cfg = ModelConfig { window: spec, agg, out_of_orderness: ooo, allowed_lateness: 1000 };
                let out = run_model(&cfg, &events);
                prop_assert!(out.late.is_empty());
                let last = final_results(&out);
                let expected = batch(spec, agg, &events);
                if let WindowSpec::Session { .. } = spec {
                    for r in &expected {
                        prop_assert!(last.contains(r), "session {:?} missing from {:?}", r, last);
                    }
                    for r in &last {
                        prop_assert!(expected.iter().any(|s| s.key == r.key && s.start <= r.start && r.end <= s.end));
                    }
                } else {
                    prop_assert_eq!(last, expected);
                }
            }

            #[test]
            fn tumbling_counts_every_event_once_or_as_late(
                size in 1i64..40, ooo in 0i64..30, lateness in 0i64..30,
                events in prop::collection::vec(event(), 0..60),
            ) {
                let cfg = ModelConfig {
                    window: WindowSpec::Tumbling { size, offset: 0 }, agg: Agg::Count,
                    out_of_orderness: ooo, allowed_lateness: lateness,
                };
                let out = run_model(&cfg, &events);
                let counted: f64 = final_results(&out).iter().map(|r| r.value.to_f64()).sum();
                prop_assert_eq!(counted as usize + out.late.len(), events.len());
                if lateness == 0 {
                    prop_assert_eq!(out.firings.len(), final_results(&out).len());
                }
            }
        }
    }

    /// Checks the golden files of `corestream run window-agg` against the model: each case's
    /// `.args` is parsed with the CLI's parsers, its input run through [`run_model`], and the
    /// output, late and rejected files compared line by line.
    mod golden {
        use std::collections::BTreeMap;
        use std::path::{Path, PathBuf};

        use super::*;
        use crate::window_agg::{self, OUTPUT_HEADER, REJECTED_HEADER};

        const CASES: &[&str] = &[
            "tumbling-count",
            "tumbling-sum-offset",
            "sliding-avg",
            "session-max",
            "session-bridging",
            "lateness",
            "min-with-negatives",
            "malformed",
        ];

        const FLAGS: &[&str] = &[
            "input",
            "key",
            "time",
            "window",
            "out-of-orderness",
            "allowed-lateness",
            "agg",
            "output",
            "late-output",
            "rejected-output",
        ];

        fn dir() -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/tests/golden/window-agg")
        }

        fn read(name: &str) -> Option<String> {
            std::fs::read_to_string(dir().join(name)).ok()
        }

        fn parse_args(case: &str, line: &str) -> BTreeMap<String, String> {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(words.len().is_multiple_of(2), "{case}.args: expected --flag value pairs");
            let mut args = BTreeMap::new();
            for pair in words.chunks(2) {
                let flag =
                    pair[0].strip_prefix("--").unwrap_or_else(|| panic!("{case}.args: '{}' is not a flag", pair[0]));
                assert!(FLAGS.contains(&flag), "{case}.args: unknown flag --{flag}");
                assert!(args.insert(flag.to_string(), pair[1].to_string()).is_none(), "{case}.args: --{flag} twice");
            }
            args
        }

        fn expect_file(case: &str, suffix: &str, header: &str, lines: Vec<String>) {
            let name = format!("{case}.{suffix}");
            let expected = read(&name).unwrap_or_else(|| panic!("{name} is missing"));
            let actual: String = std::iter::once(header.to_string()).chain(lines).map(|l| l + "\n").collect();
            assert_eq!(actual, expected, "{name} differs from the model");
        }

        #[test]
        fn every_case_is_listed() {
            let mut found: Vec<String> = std::fs::read_dir(dir())
                .expect("golden directory")
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter_map(|f| f.strip_suffix(".args").map(str::to_string))
                .collect();
            found.sort();
            let mut listed: Vec<&str> = CASES.to_vec();
            listed.sort();
            assert_eq!(found, listed);
        }

        #[test]
        fn golden_files_match_the_model() {
            for &case in CASES {
                let args = parse_args(case, read(&format!("{case}.args")).expect("args file").trim());
                let arg = |flag: &str| args.get(flag).map(String::as_str);
                assert_eq!(arg("input"), Some("{input}"), "{case}");
                assert_eq!(arg("output"), Some("{output}"), "{case}");
                let late_path = arg("late-output");
                let rejected_path = arg("rejected-output");
                assert_eq!(
                    late_path.is_some(),
                    read(&format!("{case}.expected-late.csv")).is_some(),
                    "{case}: --late-output"
                );
                assert_eq!(rejected_path.is_some(), read(&format!("{case}.expected-rejected.csv")).is_some(), "{case}");
                assert!(late_path.is_none_or(|p| p == "{late}") && rejected_path.is_none_or(|p| p == "{rejected}"));

                let window = window_agg::parse_window_spec(arg("window").expect("--window")).unwrap();
                let agg = window_agg::parse_agg(arg("agg").expect("--agg")).unwrap();
                let out_of_orderness =
                    window_agg::parse_duration_ms(arg("out-of-orderness").expect("--out-of-orderness")).unwrap();
                let allowed_lateness = arg("allowed-lateness").map_or(Ok(0), window_agg::parse_duration_ms).unwrap();
                let text = read(&format!("{case}.input.csv")).expect("input file");
                let input =
                    window_agg::parse_input(&text, arg("key").unwrap(), arg("time").unwrap(), agg.column()).unwrap();

                if late_path.is_some() {
                    let lines: Vec<&str> = text.lines().collect();
                    assert_eq!(
                        window_agg::late_header(&input.schema),
                        lines[0],
                        "{case}: the late file's header is the input's"
                    );
                    for (line_no, row) in &input.rows {
                        let canonical = window_agg::format_late(&row.clone().into(), &input.schema);
                        assert_eq!(
                            lines[*line_no as usize - 1],
                            canonical,
                            "{case}: late rows are written as they were read"
                        );
                    }
                }

                let events: Vec<Event> = input.rows.iter().map(|(_, row)| row.clone().into()).collect();
                let cfg = ModelConfig { window, agg: agg.agg(), out_of_orderness, allowed_lateness };
                let out = run_model(&cfg, &events);

                let firings = sorted_firings(&out).iter().map(window_agg::format_result).collect();
                expect_file(case, "expected.csv", OUTPUT_HEADER, firings);
                if late_path.is_some() {
                    let late = out.late.iter().map(|e| window_agg::format_late(e, &input.schema)).collect();
                    expect_file(case, "expected-late.csv", &window_agg::late_header(&input.schema), late);
                }
                if rejected_path.is_some() {
                    let rejected = input.rejected.iter().map(|(r, row)| window_agg::format_rejected(r, row)).collect();
                    expect_file(case, "expected-rejected.csv", REJECTED_HEADER, rejected);
                } else {
                    assert!(input.rejected.is_empty(), "{case}: rejected rows {:?}", input.rejected);
                }
            }
        }
    }
}
