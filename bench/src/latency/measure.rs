//! What the sink subtasks measure and how it travels: the latency sink (an HDR histogram per
//! interval of arrival, the records and warm-up records received), and the accumulators one
//! process's part reports — named after the side of the job it is on (`local`: beside the
//! source subtask; `crossing`: in another TaskManager, so its records crossed TCP) — which the
//! JobMaster merges by name and the report reads back ([`Measured::from_accumulators`]).
//!
//! Bounds: at most [`INTERVALS_MAX`] intervals (records arriving later count in the last one),
//! and at most [`PART_HISTOGRAM_BYTES_MAX`] bytes of histograms per part, so a part's report
//! fits a control message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corestream::operators::monotonic_ns;
use corestream::registry::{decode_histogram, JobSignals};
use corestream::rpc::messages::{Accumulator, Accumulators};
use corestream::{Sink, SinkError};
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use super::job::Shared;
use super::{LatencyError, SINKS_READY};

/// The most intervals of arrival a run keeps (about 100 for a run of any length, plus the
/// drain): a record arriving later is counted in the last.
pub const INTERVALS_MAX: usize = 512;

/// The most bytes of serialized histograms one part reports (compressed; the control message
/// carries them as JSON, about 3.5 characters a byte, under its limit of 16 MiB).
pub const PART_HISTOGRAM_BYTES_MAX: usize = 3 << 20;

/// The side of the job a part's sinks are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Beside the source subtask: records stayed in memory.
    Local,
    /// In another TaskManager: records crossed the TCP data plane.
    Crossing,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Crossing => "crossing",
        }
    }
}

/// An auto-resizing histogram with 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("3 significant digits is valid");
    h.auto(true);
    h
}

/// Records `value`, growing the histogram as needed (`saturating_record` alone clamps to the
/// current range instead of growing it).
pub(crate) fn record_value(h: &mut Histogram<u64>, value: u64) {
    if h.record(value).is_err() {
        h.saturating_record(value);
    }
}

/// A histogram as an accumulator: V2 with deflate (the JobMaster decodes either form).
pub(crate) fn histogram_accumulator(h: &Histogram<u64>) -> Result<Accumulator, LatencyError> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| LatencyError::Histogram(format!("serialize a histogram: {e:?}")))?;
    Ok(Accumulator::Histogram(bytes))
}

/// What some sink subtasks measured: the whole run, one histogram per interval of arrival,
/// the records received (warm-up records apart) and the warm-up records received.
#[derive(Debug, Clone)]
pub struct Measured {
    pub total: Histogram<u64>,
    pub intervals: Vec<Histogram<u64>>,
    pub received: u64,
    pub warm_up: u64,
}

impl Default for Measured {
    fn default() -> Self {
        Self { total: new_histogram(), intervals: Vec::new(), received: 0, warm_up: 0 }
    }
}

impl Measured {
    /// Adds `other`'s measurements to these.
    pub fn add(&mut self, other: &Measured) -> Result<(), LatencyError> {
        self.received += other.received;
        self.warm_up += other.warm_up;
        self.total.add(&other.total).map_err(|e| LatencyError::Histogram(format!("merge histograms: {e:?}")))?;
        for (i, h) in other.intervals.iter().enumerate() {
            self.add_interval(i, h)?;
        }
        Ok(())
    }

    fn add_interval(&mut self, i: usize, h: &Histogram<u64>) -> Result<(), LatencyError> {
        while self.intervals.len() <= i {
            self.intervals.push(new_histogram());
        }
        self.intervals[i].add(h).map_err(|e| LatencyError::Histogram(format!("merge histograms: {e:?}")))
    }

    fn received_name(side: Side) -> String {
        format!("latency.{}.received", side.name())
    }

    fn warm_up_name(side: Side) -> String {
        format!("latency.{}.warm-up", side.name())
    }

    fn interval_prefix(side: Side) -> String {
        format!("latency.{}.interval.", side.name())
    }

    /// Adds these measurements to `into` as `side`'s accumulators: the counts, and each
    /// non-empty interval (the whole run is their sum).
    pub(crate) fn to_accumulators(&self, side: Side, into: &mut Accumulators) -> Result<(), LatencyError> {
        into.insert(Self::received_name(side), Accumulator::Count(self.received));
        into.insert(Self::warm_up_name(side), Accumulator::Count(self.warm_up));
        let prefix = Self::interval_prefix(side);
        for (i, h) in self.intervals.iter().enumerate().filter(|(_, h)| !h.is_empty()) {
            into.insert(format!("{prefix}{i:05}"), histogram_accumulator(h)?);
        }
        Ok(())
    }

    /// What `side`'s sink subtasks measured, from the merged accumulators (nothing if no part
    /// was on that side).
    pub(crate) fn from_accumulators(side: Side, from: &Accumulators) -> Result<Measured, LatencyError> {
        let mut m = Measured::default();
        let problem = |name: &str, problem: String| LatencyError::Result { name: name.to_string(), problem };
        let count = |name: String| match from.get(&name) {
            None => Ok(0),
            Some(Accumulator::Count(n)) => Ok(*n),
            Some(other) => Err(problem(&name, format!("expected a count, got {other:?}"))),
        };
        m.received = count(Self::received_name(side))?;
        m.warm_up = count(Self::warm_up_name(side))?;
        let prefix = Self::interval_prefix(side);
        for (name, value) in from.range(prefix.clone()..).take_while(|(name, _)| name.starts_with(&prefix)) {
            let i: usize = name[prefix.len()..]
                .parse()
                .ok()
                .filter(|i| *i < INTERVALS_MAX)
                .ok_or_else(|| problem(name, format!("not an interval below {INTERVALS_MAX}")))?;
            let Accumulator::Histogram(bytes) = value else {
                return Err(problem(name, "expected a histogram".into()));
            };
            let h = decode_histogram(bytes).map_err(|e| problem(name, e))?;
            m.add_interval(i, &h)?;
            m.total.add(&h).map_err(|e| LatencyError::Histogram(format!("merge histograms: {e:?}")))?;
        }
        Ok(m)
    }
}

/// Keeps a part's accumulators within [`PART_HISTOGRAM_BYTES_MAX`].
pub(crate) fn check_size(accumulators: &Accumulators) -> Result<(), LatencyError> {
    let bytes: usize = accumulators
        .values()
        .map(|a| match a {
            Accumulator::Histogram(b) => b.len(),
            _ => 0,
        })
        .sum();
    if bytes > PART_HISTOGRAM_BYTES_MAX {
        return Err(LatencyError::Histogram(format!(
            "report {bytes} bytes of latency histograms from one TaskManager, over the limit of \
             {PART_HISTOGRAM_BYTES_MAX}: give a shorter --duration"
        )));
    }
    Ok(())
}

/// When a sink record's latency is measured from.
pub(crate) enum Start {
    /// Nanoseconds on `CLOCK_MONOTONIC`.
    At(u64),
    /// A record that has no such time (a q5 window closed by the end of the input, not by
    /// time): received, not measured.
    Unmeasured,
    /// A warm-up record: neither measured nor counted as received.
    WarmUp,
}

pub(crate) type StartOf<T> = Arc<dyn Fn(&T) -> Start + Send + Sync>;

/// The interval of arrival a record received at `now` belongs to.
fn interval_index(now: u64, origin: u64, interval_ns: u64) -> usize {
    let i = now.saturating_sub(origin) / interval_ns.max(1);
    usize::try_from(i).unwrap_or(usize::MAX).min(INTERVALS_MAX - 1)
}

pub(crate) struct LatencySink<T> {
    /// The schedule's origin; set by the feeder beside the source, and by the first measured
    /// record in another TaskManager.
    pub(crate) origin_ns: Arc<AtomicU64>,
    pub(crate) interval_ns: u64,
    pub(crate) start_of: StartOf<T>,
    /// Where to announce the first warm-up record (q0); taken when announced.
    pub(crate) ready: Option<JobSignals>,
    pub(crate) measured: Measured,
    pub(crate) shared: Arc<Shared>,
}

impl<T: corestream::Data> Sink<T> for LatencySink<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        let now = monotonic_ns();
        let mut interval: Option<usize> = None;
        let m = &mut self.measured;
        for record in batch.drain(..) {
            let start = match (self.start_of)(&record) {
                Start::At(start) => start,
                Start::Unmeasured => {
                    m.received += 1;
                    continue;
                }
                Start::WarmUp => {
                    m.warm_up += 1;
                    if let Some(signals) = self.ready.take() {
                        signals.add(SINKS_READY, 1);
                    }
                    continue;
                }
            };
            m.received += 1;
            let idx = *interval.get_or_insert_with(|| {
                let origin = match self.origin_ns.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => start,
                    Err(origin) => origin,
                };
                let idx = interval_index(now, origin, self.interval_ns);
                while m.intervals.len() <= idx {
                    m.intervals.push(new_histogram());
                }
                idx
            });
            let latency = now.saturating_sub(start).max(1);
            record_value(&mut m.intervals[idx], latency);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let mut measured = std::mem::take(&mut self.measured);
        for interval in &measured.intervals {
            measured.total.add(interval).map_err(|e| format!("cannot merge latency histograms: {e:?}"))?;
        }
        self.shared.out.lock().unwrap_or_else(|e| e.into_inner()).push(measured);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(values: &[(usize, u64)], received: u64, warm_up: u64) -> Measured {
        let mut m = Measured { received, warm_up, ..Measured::default() };
        for &(i, v) in values {
            let mut h = new_histogram();
            record_value(&mut h, v);
            m.add_interval(i, &h).unwrap();
            m.total.add(&h).unwrap();
        }
        m
    }

    #[test]
    fn sides_round_trip_through_merged_accumulators() {
        let local = measured(&[(0, 1_000), (2, 5_000)], 2, 3);
        let crossing_a = measured(&[(0, 20_000)], 1, 1);
        let crossing_b = measured(&[(1, 40_000), (0, 30_000)], 2, 1);
        let mut merged = Accumulators::new();
        for (side, m) in [(Side::Local, &local), (Side::Crossing, &crossing_a), (Side::Crossing, &crossing_b)] {
            let mut part = Accumulators::new();
            m.to_accumulators(side, &mut part).unwrap();
            check_size(&part).unwrap();
            corestream::registry::merge_accumulators(&mut merged, &part).unwrap();
        }
        let l = Measured::from_accumulators(Side::Local, &merged).unwrap();
        assert_eq!((l.received, l.warm_up, l.total.len(), l.intervals.len()), (2, 3, 2, 3));
        assert!(l.intervals[1].is_empty());
        let c = Measured::from_accumulators(Side::Crossing, &merged).unwrap();
        assert_eq!((c.received, c.warm_up, c.total.len()), (3, 2, 3));
        assert_eq!(c.intervals[0].len(), 2);
        assert_eq!(c.total.max(), c.total.highest_equivalent(40_000));
        let none = Measured::from_accumulators(Side::Crossing, &Accumulators::new()).unwrap();
        assert_eq!((none.received, none.total.len()), (0, 0));
    }

    #[test]
    fn malformed_results_name_the_accumulator() {
        let bad = Accumulators::from([("latency.local.received".to_string(), Accumulator::Max(1))]);
        let e = Measured::from_accumulators(Side::Local, &bad).unwrap_err().to_string();
        assert!(e.contains("latency.local.received") && e.contains("expected a count"), "{e}");
        let far = Accumulators::from([(format!("latency.local.interval.{INTERVALS_MAX:05}"), Accumulator::Count(1))]);
        assert!(Measured::from_accumulators(Side::Local, &far).unwrap_err().to_string().contains("not an interval"));
        let garbage =
            Accumulators::from([("latency.local.interval.00001".to_string(), Accumulator::Histogram(vec![1]))]);
        assert!(Measured::from_accumulators(Side::Local, &garbage).unwrap_err().to_string().contains("malformed"));
    }

    #[test]
    fn late_arrivals_count_in_the_last_interval() {
        assert_eq!(interval_index(5, 10, 1_000), 0);
        assert_eq!(interval_index(2_500, 0, 1_000), 2);
        assert_eq!(interval_index(u64::MAX, 0, 1), INTERVALS_MAX - 1);
        assert_eq!(interval_index(7, 0, 0), 7);
    }

    #[test]
    fn oversized_parts_are_refused() {
        let big = Accumulators::from([(
            "latency.local.interval.00000".to_string(),
            Accumulator::Histogram(vec![0; PART_HISTOGRAM_BYTES_MAX + 1]),
        )]);
        assert!(check_size(&big).unwrap_err().to_string().contains("over the limit"));
    }
}
