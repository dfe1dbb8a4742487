//! The watermark valve of an input gate: each channel's watermark only moves forward, the
//! task's event-time clock is the minimum over channels that have not ended, and a watermark is
//! forwarded only when that minimum advances. A pure structure, tested without a runtime.

/// Per-channel watermarks of one input gate.
#[derive(Debug, Clone)]
pub struct WatermarkValve {
    channels: Vec<i64>,
    ended: Vec<bool>,
    current: i64,
}

impl WatermarkValve {
    pub fn new(channels: usize) -> Self {
        Self { channels: vec![i64::MIN; channels], ended: vec![false; channels], current: i64::MIN }
    }

    /// The task's current event-time clock.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Records a watermark from `channel`; returns the new clock when it advanced.
    pub fn on_watermark(&mut self, channel: usize, timestamp: i64) -> Option<i64> {
        if timestamp > self.channels[channel] {
            self.channels[channel] = timestamp;
        }
        self.advance()
    }

    /// A channel that ended no longer holds the clock back.
    pub fn on_end(&mut self, channel: usize) -> Option<i64> {
        self.ended[channel] = true;
        self.advance()
    }

    fn advance(&mut self) -> Option<i64> {
        let min = self
            .channels
            .iter()
            .zip(&self.ended)
            .filter(|(_, ended)| !**ended)
            .map(|(w, _)| *w)
            .min()?;
        (min > self.current).then(|| {
            self.current = min;
            min
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ended_channels_release_the_clock() {
        let mut v = WatermarkValve::new(2);
        v.on_watermark(0, 7);
        assert_eq!(v.on_end(1), Some(7));
    }
}
