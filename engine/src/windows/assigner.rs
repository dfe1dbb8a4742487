//! Time windows and the assigners that map a timestamp to its windows. Window starts follow
//! Flink's `TimeWindow.getWindowStartWithOffset`: `start = ts - (ts - offset) mod size` with a
//! non-negative remainder, so negative timestamps and offsets work.

use std::time::Duration;

/// A window `[start, end)` of event or processing time, in milliseconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct TimeWindow {
    pub start: i64,
    pub end: i64,
}

impl TimeWindow {
    pub fn new(start: i64, end: i64) -> Self {
        Self { start, end }
    }

    /// The last timestamp that belongs to the window (`end - 1`): it fires when the clock
    /// reaches this.
    #[inline]
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }

    /// Flink's `TimeWindow.intersects`: overlapping or touching windows (session merging).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && self.end >= other.start
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

/// Start of the window of `size` (with `offset`) containing `ts`, clamped to `i64::MIN` for
/// the first window of the time line (which then starts at the earliest representable time).
#[inline]
pub fn window_start(ts: i64, offset: i64, size: i64) -> i64 {
    match ts.checked_sub(offset) {
        Some(d) => ts.saturating_sub(d.rem_euclid(size)),
        None => {
            let start = ts as i128 - (ts as i128 - offset as i128).rem_euclid(size as i128);
            start.max(i64::MIN as i128) as i64
        }
    }
}

/// Which windows a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    Tumbling { size: i64, offset: i64, event_time: bool },
    Sliding { size: i64, slide: i64, offset: i64, event_time: bool },
    Session { gap: i64, event_time: bool },
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl WindowAssigner {
    /// Tumbling event-time windows of `size`.
    pub fn tumbling_event_time(size: Duration) -> Self {
        Self::Tumbling { size: ms(size), offset: 0, event_time: true }
    }
    /// Tumbling processing-time windows of `size`.
    pub fn tumbling_processing_time(size: Duration) -> Self {
        Self::Tumbling { size: ms(size), offset: 0, event_time: false }
    }
    /// Sliding event-time windows of `size`, one starting every `slide`.
    pub fn sliding_event_time(size: Duration, slide: Duration) -> Self {
        Self::Sliding { size: ms(size), slide: ms(slide), offset: 0, event_time: true }
    }
    /// Sliding processing-time windows.
    pub fn sliding_processing_time(size: Duration, slide: Duration) -> Self {
        Self::Sliding { size: ms(size), slide: ms(slide), offset: 0, event_time: false }
    }
    /// Event-time sessions closed by a gap of inactivity.
    pub fn event_time_session(gap: Duration) -> Self {
        Self::Session { gap: ms(gap), event_time: true }
    }
    /// Processing-time sessions.
    pub fn processing_time_session(gap: Duration) -> Self {
        Self::Session { gap: ms(gap), event_time: false }
    }

    /// Shifts window starts by `offset` (e.g. time zones: `tumbling 1 day` with offset −8 h).
    /// Sessions have no offset.
    pub fn with_offset(self, offset: Duration) -> Self {
        self.with_offset_ms(ms(offset))
    }

    /// Same, with a signed offset in milliseconds.
    pub fn with_offset_ms(self, offset: i64) -> Self {
        match self {
            Self::Tumbling { size, event_time, .. } => Self::Tumbling { size, offset, event_time },
            Self::Sliding { size, slide, event_time, .. } => Self::Sliding { size, slide, offset, event_time },
            s @ Self::Session { .. } => s,
        }
    }

    pub fn is_event_time(&self) -> bool {
        match *self {
            Self::Tumbling { event_time, .. } | Self::Sliding { event_time, .. } | Self::Session { event_time, .. } => {
                event_time
            }
        }
    }

    pub fn is_merging(&self) -> bool {
        matches!(self, Self::Session { .. })
    }

    /// Checks the parameters; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::Tumbling { size, offset, .. } => {
                if size <= 0 {
                    return Err(format!("tumbling window size must be positive, got {size} ms"));
                }
                if offset.abs() >= size {
                    return Err(format!("window offset {offset} ms must be smaller than the size {size} ms"));
                }
            }
            Self::Sliding { size, slide, offset, .. } => {
                if size <= 0 || slide <= 0 {
                    return Err(format!("sliding window size and slide must be positive, got {size} ms / {slide} ms"));
                }
                if offset.abs() >= slide {
                    return Err(format!("window offset {offset} ms must be smaller than the slide {slide} ms"));
                }
            }
            Self::Session { gap, .. } => {
                if gap <= 0 {
                    return Err(format!("session gap must be positive, got {gap} ms"));
                }
            }
        }
        Ok(())
    }

    /// The windows `ts` belongs to, appended to `out` (for sessions: `[ts, ts + gap)`, to be
    /// merged).
    #[inline]
    pub fn assign(&self, ts: i64, out: &mut Vec<TimeWindow>) {
        match *self {
            Self::Tumbling { size, offset, .. } => {
                let start = window_start(ts, offset, size);
                out.push(TimeWindow { start, end: start.saturating_add(size) });
            }
            Self::Sliding { size, slide, offset, .. }
                if ts > i64::MIN / 2 && ts < i64::MAX / 2 && size < i64::MAX / 4 && slide < i64::MAX / 4 =>
            {
                let mut start = ts - (ts - offset).rem_euclid(slide);
                while start > ts - size {
                    out.push(TimeWindow { start, end: start + size });
                    start -= slide;
                }
            }
            Self::Sliding { size, slide, offset, .. } => {
                // In i128: near the ends of the time line the starts leave the i64 range; such
                // windows are clamped to it (and at most ⌈size / slide⌉ are produced).
                let (ts, size, slide) = (ts as i128, size as i128, slide as i128);
                let mut start = ts - (ts - offset as i128).rem_euclid(slide);
                while start > ts - size {
                    let clamp = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
                    out.push(TimeWindow { start: clamp(start), end: clamp(start + size) });
                    if start <= i64::MIN as i128 {
                        break;
                    }
                    start -= slide;
                }
            }
            Self::Session { gap, .. } => out.push(TimeWindow { start: ts, end: ts.saturating_add(gap) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(a: WindowAssigner, ts: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        a.assign(ts, &mut out);
        out.into_iter().map(|w| (w.start, w.end)).collect()
    }

    #[test]
    fn tumbling_with_offsets_and_negative_timestamps() {
        let t = WindowAssigner::tumbling_event_time(Duration::from_secs(10));
        assert_eq!(assign(t, 0), vec![(0, 10_000)]);
        assert_eq!(assign(t, 9_999), vec![(0, 10_000)]);
        assert_eq!(assign(t, 10_000), vec![(10_000, 20_000)]);
        assert_eq!(assign(t, -1), vec![(-10_000, 0)]);
        let o = t.with_offset(Duration::from_secs(2));
        assert_eq!(assign(o, 1_999), vec![(-8_000, 2_000)]);
        assert_eq!(assign(o, 2_000), vec![(2_000, 12_000)]);
    }

    #[test]
    fn sliding_assigns_size_over_slide_windows_latest_first() {
        let s = WindowAssigner::sliding_event_time(Duration::from_secs(10), Duration::from_secs(2));
        let w = assign(s, 5_000);
        assert_eq!(w, vec![(4_000, 14_000), (2_000, 12_000), (0, 10_000), (-2_000, 8_000), (-4_000, 6_000)]);
        assert!(w.iter().all(|(s, e)| *s <= 5_000 && 5_000 < *e));
        let uneven = WindowAssigner::sliding_event_time(Duration::from_millis(10), Duration::from_millis(3));
        for ts in -20..20 {
            let got = assign(uneven, ts);
            let expected: Vec<_> = (-40..40)
                .filter(|s: &i64| s.rem_euclid(3) == 0 && *s <= ts && ts < s + 10)
                .rev()
                .map(|s| (s, s + 10))
                .collect();
            assert_eq!(got, expected, "ts {ts}");
        }
    }

    #[test]
    fn windows_at_the_ends_of_the_time_line_contain_their_timestamp() {
        let t = WindowAssigner::tumbling_event_time(Duration::from_secs(10));
        let s = WindowAssigner::sliding_event_time(Duration::from_secs(10), Duration::from_secs(3));
        for ts in [i64::MIN, i64::MIN + 1, i64::MIN + 9_999, i64::MAX - 1, i64::MAX] {
            for a in [t, s, t.with_offset_ms(7), s.with_offset_ms(-2)] {
                let mut out = Vec::new();
                a.assign(ts, &mut out);
                assert!(!out.is_empty() && out.len() <= 4, "{a:?} at {ts}: {out:?}");
                for w in out {
                    assert!(w.start <= ts && (ts < w.end || w.end == i64::MAX), "{a:?} at {ts}: {w:?}");
                }
            }
        }
    }

    #[test]
    fn touching_windows_intersect() {
        let a = TimeWindow::new(0, 10);
        assert!(a.intersects(&TimeWindow::new(10, 20)));
        assert!(!a.intersects(&TimeWindow::new(11, 20)));
        assert_eq!(a.cover(&TimeWindow::new(5, 30)), TimeWindow::new(0, 30));
    }

    #[test]
    fn invalid_parameters_are_explained() {
        assert!(WindowAssigner::tumbling_event_time(Duration::ZERO).validate().unwrap_err().contains("positive"));
        let s =
            WindowAssigner::sliding_event_time(Duration::from_secs(1), Duration::from_secs(2)).with_offset_ms(5_000);
        assert!(s.validate().unwrap_err().contains("offset"));
    }
}
