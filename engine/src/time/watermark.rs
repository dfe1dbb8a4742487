//! The watermark valve of an input gate (Flink's `StatusWatermarkValve`): each channel's
//! watermark only moves forward; the task's event-time clock is the minimum over the channels
//! that are active, aligned and not ended, and it only moves forward; a watermark is forwarded
//! only when that minimum advances. An idle channel is left out of the minimum; when it resumes
//! it rejoins only once its watermark has caught up with the clock (it is "aligned" again), so
//! the clock never moves backwards. When every live channel is idle the task itself reports
//! idle downstream. A pure structure, tested without a runtime.
//!
//! A checkpoint keeps the valve of an input task ([`WatermarkValve::snapshot`]); a restored
//! task starts from it ([`WatermarkValve::restore`], which checks the valve's invariants on
//! what it reads), so that the in-flight data replayed after a restore meets the combined
//! watermark it met in the original run.
//!
//! The valve also says which channels run too far ahead in event time
//! ([`WatermarkValve::skew_holds`]): the task reads them last, so that one fast producer cannot
//! fill the operators' state with windows that the slowest one keeps open (see
//! `ExecutionConfig::max_watermark_skew`).

use corestream_netstack::WatermarkStatus;

use crate::checkpoint::{ChannelWatermark, InputWatermarks};

/// What the valve tells the task to forward downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValveOutput {
    Watermark(i64),
    Status(WatermarkStatus),
}

#[derive(Debug, Clone, Copy)]
struct ChannelState {
    watermark: i64,
    idle: bool,
    /// Takes part in the minimum: active and caught up with the clock.
    aligned: bool,
    ended: bool,
}

/// Why a valve's snapshot cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValveRestoreError {
    #[error("the restored watermarks are of {stored} input channels, but the task has {channels}")]
    Channels { stored: usize, channels: usize },
    #[error(
        "restored input channel {channel} takes part in event time with watermark {watermark}, \
         behind the task's clock {clock}"
    )]
    BehindClock { channel: usize, watermark: i64, clock: i64 },
    #[error("restored input channel {channel} is idle and yet marked as taking part in event time")]
    IdleAligned { channel: usize },
}

/// Per-channel watermarks and statuses of one input gate.
#[derive(Debug, Clone)]
pub struct WatermarkValve {
    channels: Vec<ChannelState>,
    current: i64,
    idle: bool,
}

impl WatermarkValve {
    pub fn new(channels: usize) -> Self {
        let fresh = ChannelState { watermark: i64::MIN, idle: false, aligned: true, ended: false };
        Self { channels: vec![fresh; channels], current: i64::MIN, idle: false }
    }

    /// The valve as a checkpoint keeps it (a channel that ended as it was, apart from having
    /// ended: its producer runs again after a restore; it rejoins the minimum once caught up).
    pub fn snapshot(&self) -> InputWatermarks {
        let channels = self
            .channels
            .iter()
            .map(|c| ChannelWatermark { watermark: c.watermark, idle: c.idle, aligned: c.aligned })
            .collect();
        InputWatermarks { clock: self.current, idle: self.idle, channels }
    }

    /// The valve of a task with `channels` input channels restored from `state`, after checking
    /// that it is one a valve can be in.
    pub fn restore(state: &InputWatermarks, channels: usize) -> Result<Self, ValveRestoreError> {
        if state.channels.len() != channels {
            return Err(ValveRestoreError::Channels { stored: state.channels.len(), channels });
        }
        for (channel, c) in state.channels.iter().enumerate() {
            if c.idle && c.aligned {
                return Err(ValveRestoreError::IdleAligned { channel });
            }
            if c.aligned && c.watermark < state.clock {
                return Err(ValveRestoreError::BehindClock { channel, watermark: c.watermark, clock: state.clock });
            }
        }
        let channels = state
            .channels
            .iter()
            .map(|c| ChannelState { watermark: c.watermark, idle: c.idle, aligned: c.aligned, ended: false })
            .collect();
        Ok(Self { channels, current: state.clock, idle: state.idle })
    }

    /// The task's current event-time clock.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Whether every live channel is idle (the task reports idle downstream).
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    /// Records a watermark from `channel`; returns the new clock when it advanced. Watermarks
    /// from a channel marked idle are ignored, as in Flink (an idle producer sends none).
    pub fn on_watermark(&mut self, channel: usize, timestamp: i64) -> Option<i64> {
        let ch = &mut self.channels[channel];
        if ch.idle || ch.ended || timestamp <= ch.watermark {
            return None;
        }
        ch.watermark = timestamp;
        if !ch.aligned && timestamp >= self.current {
            ch.aligned = true;
        }
        self.advance()
    }

    /// Records a status change of `channel`; returns what to forward, in order.
    pub fn on_status(&mut self, channel: usize, status: WatermarkStatus) -> Vec<ValveOutput> {
        let mut out = Vec::new();
        let ch = &mut self.channels[channel];
        if ch.ended {
            return out;
        }
        match status {
            WatermarkStatus::Idle if !ch.idle => {
                ch.idle = true;
                ch.aligned = false;
                if let Some(w) = self.advance() {
                    out.push(ValveOutput::Watermark(w));
                }
                if !self.idle && self.live().all(|c| c.idle) {
                    // As Flink: when every channel is idle, event time advances to the highest
                    // watermark any of them reached, whichever went idle last.
                    let max = self.live().map(|c| c.watermark).max().unwrap_or(i64::MIN);
                    if max > self.current {
                        self.current = max;
                        out.push(ValveOutput::Watermark(max));
                    }
                    self.idle = true;
                    out.push(ValveOutput::Status(WatermarkStatus::Idle));
                }
            }
            WatermarkStatus::Active if ch.idle => {
                ch.idle = false;
                ch.aligned = ch.watermark >= self.current;
                if self.idle {
                    self.idle = false;
                    out.push(ValveOutput::Status(WatermarkStatus::Active));
                }
            }
            _ => {}
        }
        out
    }

    /// A channel that ended no longer holds the clock back.
    pub fn on_end(&mut self, channel: usize) -> Option<i64> {
        let ch = &mut self.channels[channel];
        ch.ended = true;
        ch.aligned = false;
        self.advance()
    }

    /// Marks in `holds` (one entry per channel) the channels whose watermark is more than
    /// `max_skew` ahead of the slowest channel that holds the clock back (active, aligned, not
    /// ended); true when any is marked. Nothing is held while such a channel has sent no
    /// watermark yet, and idle, ended or not-yet-aligned channels are never held (they are not
    /// ahead of the clock, or send nothing to read).
    pub fn skew_holds(&self, max_skew: i64, holds: &mut [bool]) -> bool {
        let min = self.live().filter(|c| c.aligned && !c.idle).map(|c| c.watermark).min();
        let limit = match min {
            Some(min) if min > i64::MIN => min.saturating_add(max_skew.max(0)),
            _ => i64::MAX,
        };
        let mut any = false;
        for (hold, c) in holds.iter_mut().zip(&self.channels) {
            *hold = !c.ended && c.aligned && !c.idle && c.watermark > limit;
            any |= *hold;
        }
        any
    }

    fn live(&self) -> impl Iterator<Item = &ChannelState> {
        self.channels.iter().filter(|c| !c.ended)
    }

    fn advance(&mut self) -> Option<i64> {
        let min = self.live().filter(|c| c.aligned && !c.idle).map(|c| c.watermark).min()?;
        (min > self.current).then(|| {
            self.current = min;
            min
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use WatermarkStatus::{Active, Idle};

    #[test]
    fn clock_is_the_minimum_and_never_goes_back() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_watermark(0, 10), None, "channel 1 has no watermark yet");
        assert_eq!(v.on_watermark(1, 5), Some(5));
        assert_eq!(v.on_watermark(1, 3), None, "a channel's watermark never goes back");
        assert_eq!(v.on_watermark(1, 20), Some(10));
        assert_eq!(v.current(), 10);
    }

    #[test]
    fn channels_far_ahead_of_the_slowest_are_held() {
        let mut v = WatermarkValve::new(3);
        let mut holds = [false; 3];
        v.on_watermark(0, 1_000);
        v.on_watermark(1, 500);
        assert!(!v.skew_holds(100, &mut holds), "channel 2 has no watermark yet: nothing is held");
        v.on_watermark(2, 450);
        assert!(v.skew_holds(100, &mut holds));
        assert_eq!(holds, [true, false, false], "only channel 0 is more than 100 ahead of 450");
        assert!(!v.skew_holds(550, &mut holds), "exactly at the limit is not held");
        v.on_watermark(2, 950);
        assert!(v.skew_holds(100, &mut holds));
        assert_eq!(holds, [true, false, true], "channel 1 (500) is now the slowest");
        v.on_watermark(1, 990);
        assert!(!v.skew_holds(100, &mut holds), "all within 100 of 950");
    }

    #[test]
    fn idle_and_ended_channels_neither_hold_nor_are_held() {
        let mut v = WatermarkValve::new(3);
        let mut holds = [false; 3];
        v.on_watermark(0, 10_000);
        v.on_watermark(1, 100);
        v.on_watermark(2, 5_000);
        assert!(v.skew_holds(1_000, &mut holds));
        assert_eq!(holds, [true, false, true]);
        v.on_status(1, WatermarkStatus::Idle);
        assert!(v.skew_holds(1_000, &mut holds), "the slowest live channel is now channel 2");
        assert_eq!(holds, [true, false, false]);
        v.on_end(2);
        assert!(!v.skew_holds(1_000, &mut holds), "channel 0 alone is the minimum");
        assert_eq!(holds, [false; 3]);
    }

    #[test]
    fn ended_channels_release_the_clock() {
        let mut v = WatermarkValve::new(2);
        v.on_watermark(0, 7);
        assert_eq!(v.on_end(1), Some(7));
    }

    #[test]
    fn an_idle_channel_holds_the_clock_until_it_is_marked_idle() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_watermark(0, 100), None, "channel 1 sends nothing: the clock stays");
        assert_eq!(v.on_watermark(0, 200), None);
        assert_eq!(v.on_status(1, Idle), vec![ValveOutput::Watermark(200)], "idle channel released");
        assert_eq!(v.on_watermark(0, 300), Some(300));
        assert!(!v.is_idle());
    }

    #[test]
    fn a_resumed_channel_rejoins_only_when_caught_up() {
        let mut v = WatermarkValve::new(2);
        v.on_status(1, Idle);
        assert_eq!(v.on_watermark(0, 100), Some(100));
        assert!(v.on_status(1, Active).is_empty());
        assert_eq!(v.on_watermark(1, 50), None, "behind the clock: not aligned, the clock stays");
        assert_eq!(v.on_watermark(0, 150), Some(150), "channel 1 is not yet part of the minimum");
        assert_eq!(v.on_watermark(1, 160), None, "aligned now; minimum is 150");
        assert_eq!(v.on_watermark(0, 400), Some(160));
    }

    #[test]
    fn when_every_channel_is_idle_the_clock_takes_the_highest_watermark() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_watermark(0, 3949), None);
        assert_eq!(v.on_watermark(1, 99), Some(99));
        assert_eq!(v.on_status(0, Idle), vec![]);
        assert_eq!(v.on_status(1, Idle), vec![ValveOutput::Watermark(3949), ValveOutput::Status(Idle)]);
        assert_eq!(v.on_status(1, Active), vec![ValveOutput::Status(Active)]);
        assert_eq!(v.on_watermark(1, 200), None, "channel 1 is behind the clock: not aligned");
    }

    #[test]
    fn all_idle_makes_the_task_idle_and_any_resume_makes_it_active() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_status(0, Idle), vec![]);
        assert_eq!(v.on_status(1, Idle), vec![ValveOutput::Status(Idle)]);
        assert!(v.is_idle());
        assert_eq!(v.on_status(0, Active), vec![ValveOutput::Status(Active)]);
    }

    #[test]
    fn a_restored_valve_combines_watermarks_as_the_original_does() {
        let mut original = WatermarkValve::new(3);
        original.on_watermark(0, 100);
        original.on_watermark(1, 200);
        original.on_watermark(2, 150);
        original.on_status(2, Idle);
        assert_eq!(original.current(), 100);
        let state = original.snapshot();
        let mut restored = WatermarkValve::restore(&state, 3).unwrap();
        assert_eq!(restored.snapshot(), state);
        for v in [&mut original, &mut restored] {
            assert_eq!(v.on_watermark(0, 180), Some(180), "channel 2 is idle; channel 1 is at 200");
            assert_eq!(v.on_status(2, Active), vec![]);
            assert_eq!(v.on_watermark(0, 250), Some(200), "channel 2 is behind the clock: left out");
        }
        let mut fresh = WatermarkValve::new(3);
        assert_eq!(fresh.on_watermark(0, 180), None, "without the snapshot the clock waits for every channel");
    }

    #[test]
    fn a_valve_snapshot_is_checked_before_it_is_restored() {
        let mut v = WatermarkValve::new(2);
        v.on_watermark(0, 10);
        v.on_watermark(1, 20);
        v.on_status(1, Idle);
        let state = v.snapshot();
        assert_eq!(
            WatermarkValve::restore(&state, 3).unwrap_err(),
            ValveRestoreError::Channels { stored: 2, channels: 3 }
        );
        let mut behind = state.clone();
        behind.clock = 11;
        assert_eq!(
            WatermarkValve::restore(&behind, 2).unwrap_err(),
            ValveRestoreError::BehindClock { channel: 0, watermark: 10, clock: 11 }
        );
        let mut idle_aligned = state.clone();
        idle_aligned.channels[1].aligned = true;
        let err = WatermarkValve::restore(&idle_aligned, 2).unwrap_err();
        assert_eq!(err, ValveRestoreError::IdleAligned { channel: 1 });
        assert!(err.to_string().contains("input channel 1 is idle"), "{err}");
        let mut ended = WatermarkValve::new(2);
        ended.on_watermark(0, 5);
        ended.on_end(1);
        let mut restored = WatermarkValve::restore(&ended.snapshot(), 2).unwrap();
        assert_eq!(restored.on_watermark(1, 7), None, "live again, behind nothing: rejoins at the clock");
        assert_eq!(restored.on_watermark(0, 9), Some(7));
    }

    proptest! {
        /// Whatever the channels send, the clock never moves backwards, never passes a live
        /// active aligned channel, and only advances through returned watermarks.
        #[test]
        fn clock_is_monotonic_and_bounded(ops in proptest::collection::vec((0usize..3, 0u8..4, -50i64..50), 0..200)) {
            let mut v = WatermarkValve::new(3);
            let mut last = i64::MIN;
            for (ch, op, ts) in ops {
                let before = v.current();
                let outs = match op {
                    0 | 1 => v.on_watermark(ch, ts).map(ValveOutput::Watermark).into_iter().collect(),
                    2 => v.on_status(ch, if ts % 2 == 0 { Idle } else { Active }),
                    _ => Vec::new(),
                };
                prop_assert!(v.current() >= before);
                for o in &outs {
                    if let ValveOutput::Watermark(w) = o {
                        prop_assert!(*w > last);
                        last = *w;
                    }
                }
                prop_assert_eq!(v.current(), if last == i64::MIN { before.max(last) } else { last });
                for c in v.channels.iter().filter(|c| !c.ended && !c.idle && c.aligned) {
                    prop_assert!(v.current() <= c.watermark);
                }
            }
        }
    }
}
