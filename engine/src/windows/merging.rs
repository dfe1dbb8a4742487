//! The merging window set of one key (Flink's `MergingWindowSet`): the session windows in
//! flight, each mapped to the *state window* under which its contents are kept. When a new
//! window touches or overlaps existing ones they merge into their cover; the merged windows'
//! contents are merged into one of their state windows, so merging never copies state it does
//! not have to. A pure structure, stored per key in keyed state.

use super::assigner::TimeWindow;

/// The outcome of adding a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddResult {
    /// The window the new one now belongs to (itself if nothing merged).
    pub window: TimeWindow,
    /// Set when windows merged: what the window operator must do.
    pub merge: Option<Merge>,
}

/// A merge of existing windows (and possibly the new one) into `result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    pub result: TimeWindow,
    /// Existing windows merged away (their timers and trigger state must go).
    pub merged_windows: Vec<TimeWindow>,
    /// The state window that keeps the merged contents.
    pub state_window: TimeWindow,
    /// State windows whose contents merge into `state_window`.
    pub merged_state_windows: Vec<TimeWindow>,
}

/// Windows of one key: (window, state window), sorted by window start.
pub type WindowMapping = Vec<(TimeWindow, TimeWindow)>;

/// The state window of `window`, if it is in flight.
pub fn state_window(mapping: &WindowMapping, window: &TimeWindow) -> Option<TimeWindow> {
    mapping.iter().find(|(w, _)| w == window).map(|(_, s)| *s)
}

/// Removes a window (it was late, or it fired for the last time).
pub fn retire(mapping: &mut WindowMapping, window: &TimeWindow) {
    mapping.retain(|(w, _)| w != window);
}

/// Adds `new` and merges it with every window it touches (transitively).
pub fn add_window(mapping: &mut WindowMapping, new: TimeWindow) -> AddResult {
    // The windows `new` touches form one contiguous group once sorted; existing windows never
    // touch each other (they would have merged when the later of them arrived).
    let mut group: Vec<TimeWindow> = Vec::new();
    let mut cover = new;
    loop {
        let before = group.len();
        for (w, _) in mapping.iter() {
            if !group.contains(w) && w.intersects(&cover) {
                group.push(*w);
                cover = cover.cover(w);
            }
        }
        if group.len() == before {
            break;
        }
    }
    if group.is_empty() {
        mapping.push((new, new));
        mapping.sort_by_key(|(w, _)| (w.start, w.end));
        return AddResult { window: new, merge: None };
    }
    group.sort_by_key(|w| (w.start, w.end));
    let state_window = state_window(mapping, &group[0]).expect("group windows are in flight");
    let mut merged_state_windows = Vec::new();
    for w in &group {
        if let Some(s) = state_window_of_removed(mapping, w) {
            if s != state_window {
                merged_state_windows.push(s);
            }
        }
    }
    mapping.push((cover, state_window));
    mapping.sort_by_key(|(w, _)| (w.start, w.end));
    // A new window inside one existing window changes nothing.
    if group.len() == 1 && group[0] == cover {
        return AddResult { window: cover, merge: None };
    }
    let merged_windows: Vec<TimeWindow> = group.into_iter().filter(|w| *w != cover).collect();
    AddResult {
        window: cover,
        merge: Some(Merge { result: cover, merged_windows, state_window, merged_state_windows }),
    }
}

fn state_window_of_removed(mapping: &mut WindowMapping, window: &TimeWindow) -> Option<TimeWindow> {
    let i = mapping.iter().position(|(w, _)| w == window)?;
    Some(mapping.remove(i).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: i64, e: i64) -> TimeWindow {
        TimeWindow::new(s, e)
    }

    #[test]
    fn separate_windows_stay_separate() {
        let mut m = WindowMapping::new();
        assert_eq!(add_window(&mut m, w(0, 10)), AddResult { window: w(0, 10), merge: None });
        assert_eq!(add_window(&mut m, w(20, 30)).window, w(20, 30));
        assert_eq!(m, vec![(w(0, 10), w(0, 10)), (w(20, 30), w(20, 30))]);
    }

    #[test]
    fn overlapping_window_extends_and_keeps_the_state_window() {
        let mut m = WindowMapping::new();
        add_window(&mut m, w(0, 10));
        let r = add_window(&mut m, w(5, 15));
        assert_eq!(r.window, w(0, 15));
        let merge = r.merge.unwrap();
        assert_eq!(merge.merged_windows, vec![w(0, 10)]);
        assert_eq!(merge.state_window, w(0, 10));
        assert!(merge.merged_state_windows.is_empty());
        assert_eq!(m, vec![(w(0, 15), w(0, 10))]);
    }

    #[test]
    fn a_bridging_window_merges_two_sessions() {
        let mut m = WindowMapping::new();
        add_window(&mut m, w(0, 10));
        add_window(&mut m, w(20, 30));
        let r = add_window(&mut m, w(10, 20));
        assert_eq!(r.window, w(0, 30), "touching windows merge");
        let merge = r.merge.unwrap();
        assert_eq!(merge.merged_windows, vec![w(0, 10), w(20, 30)]);
        assert_eq!(merge.state_window, w(0, 10));
        assert_eq!(merge.merged_state_windows, vec![w(20, 30)]);
        assert_eq!(m, vec![(w(0, 30), w(0, 10))]);
    }

    #[test]
    fn a_contained_window_changes_nothing() {
        let mut m = WindowMapping::new();
        add_window(&mut m, w(0, 10));
        add_window(&mut m, w(5, 15));
        assert_eq!(add_window(&mut m, w(2, 8)), AddResult { window: w(0, 15), merge: None });
        assert_eq!(m, vec![(w(0, 15), w(0, 10))]);
    }
}
