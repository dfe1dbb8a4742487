//! Watermark strategies (Flink's `WatermarkStrategy`): how a stream's records carry their event
//! time (a timestamp assigner reading a field, as a rowtime attribute in Flink SQL) and how
//! watermarks are generated from them. Built-in generators: monotonic timestamps and bounded
//! out-of-orderness (watermark = highest timestamp seen − bound − 1 ms); custom generators
//! implement [`WatermarkGenerator`]. Watermarks are emitted periodically (the job's
//! `auto_watermark_interval`) or after every record, and a source that sends nothing for the
//! idleness timeout is marked idle so it does not hold back event time downstream.

use std::sync::Arc;
use std::time::Duration;

/// Reads a record's event timestamp (milliseconds since the epoch).
pub type TimestampFn<T> = dyn Fn(&T) -> i64 + Send + Sync;

/// Reads the timestamps of a batch of records (appended to the vector): one dynamic call per
/// batch, a monomorphized loop inside.
pub type BatchTimestampFn<T> = dyn Fn(&[T], &mut Vec<i64>) + Send + Sync;

/// How a stream's records carry their event time: the user's function, per record and per
/// batch.
pub struct Timestamps<T> {
    pub(crate) one: Arc<TimestampFn<T>>,
    pub(crate) batch: Arc<BatchTimestampFn<T>>,
}

impl<T> Clone for Timestamps<T> {
    fn clone(&self) -> Self {
        Self { one: self.one.clone(), batch: self.batch.clone() }
    }
}

impl<T: 'static> Timestamps<T> {
    pub(crate) fn new<F: Fn(&T) -> i64 + Send + Sync + 'static>(f: F) -> Self {
        let f = Arc::new(f);
        let g = f.clone();
        Self {
            one: f,
            batch: Arc::new(move |records: &[T], out: &mut Vec<i64>| out.extend(records.iter().map(|r| g(r)))),
        }
    }
}

/// Where a generator puts the watermarks it decides to emit.
#[derive(Debug, Default)]
pub struct WatermarkOutput {
    pending: Option<i64>,
    idle: bool,
}

impl WatermarkOutput {
    /// Emits a watermark; watermarks that do not advance are dropped.
    pub fn emit_watermark(&mut self, timestamp: i64) {
        self.pending = Some(self.pending.map_or(timestamp, |p| p.max(timestamp)));
        self.idle = false;
    }

    /// Marks this stream idle until the next watermark.
    pub fn mark_idle(&mut self) {
        self.idle = true;
    }

    pub(crate) fn pending(&self) -> Option<i64> {
        self.pending
    }

    pub(crate) fn take(&mut self) -> Option<i64> {
        self.pending.take()
    }

    pub(crate) fn take_idle(&mut self) -> bool {
        std::mem::take(&mut self.idle)
    }
}

/// Generates watermarks from the records of one source subtask (Flink's `WatermarkGenerator`).
pub trait WatermarkGenerator<T>: 'static {
    /// Called for every record with its timestamp; may emit (punctuated watermarks).
    fn on_event(&mut self, record: &T, timestamp: i64, output: &mut WatermarkOutput);
    /// Called for a batch of records with their timestamps (one dynamic call per batch; the
    /// default calls `on_event` for each, monomorphized per generator).
    fn on_batch(&mut self, records: &[T], timestamps: &[i64], output: &mut WatermarkOutput) {
        for (r, ts) in records.iter().zip(timestamps) {
            self.on_event(r, *ts, output);
        }
    }
    /// Called periodically (every `auto_watermark_interval`, or after every record when the
    /// strategy emits per record); may emit.
    fn on_periodic_emit(&mut self, output: &mut WatermarkOutput);
}

/// Watermark = highest timestamp seen − `bound` − 1 ms (monotonic timestamps: `bound` = 0).
#[derive(Debug, Clone)]
pub struct BoundedOutOfOrderness {
    max_timestamp: i64,
    bound_ms: i64,
}

impl BoundedOutOfOrderness {
    pub fn new(bound: Duration) -> Self {
        let bound_ms = bound.as_millis().min(i64::MAX as u128 / 2) as i64;
        Self { max_timestamp: i64::MIN + bound_ms + 1, bound_ms }
    }
}

impl<T> WatermarkGenerator<T> for BoundedOutOfOrderness {
    #[inline]
    fn on_event(&mut self, _record: &T, timestamp: i64, _output: &mut WatermarkOutput) {
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    fn on_batch(&mut self, _records: &[T], timestamps: &[i64], _output: &mut WatermarkOutput) {
        if let Some(max) = timestamps.iter().copied().max() {
            self.max_timestamp = self.max_timestamp.max(max);
        }
    }

    fn on_periodic_emit(&mut self, output: &mut WatermarkOutput) {
        output.emit_watermark(self.max_timestamp - self.bound_ms - 1);
    }
}

/// Never emits a watermark (event time does not advance until the final watermark).
#[derive(Debug, Clone, Default)]
pub struct NoWatermarks;

impl<T> WatermarkGenerator<T> for NoWatermarks {
    fn on_event(&mut self, _record: &T, _timestamp: i64, _output: &mut WatermarkOutput) {}
    fn on_periodic_emit(&mut self, _output: &mut WatermarkOutput) {}
}

pub(crate) type GeneratorFactory<T> = dyn Fn() -> Box<dyn WatermarkGenerator<T>> + Send + Sync;

/// When watermarks leave the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Emission {
    /// Every `auto_watermark_interval` of processing time (and when the input ends).
    Periodic,
    /// After every record whose watermark advances (deterministic, costs an event each).
    PerRecord,
}

/// How a stream gets event timestamps and watermarks.
pub struct WatermarkStrategy<T> {
    pub(crate) generator: Arc<GeneratorFactory<T>>,
    pub(crate) timestamps: Option<Timestamps<T>>,
    pub(crate) idleness: Option<Duration>,
    pub(crate) emission: Emission,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        Self {
            generator: self.generator.clone(),
            timestamps: self.timestamps.clone(),
            idleness: self.idleness,
            emission: self.emission,
        }
    }
}

impl<T> std::fmt::Debug for WatermarkStrategy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatermarkStrategy")
            .field("has_timestamps", &self.timestamps.is_some())
            .field("idleness", &self.idleness)
            .field("emission", &self.emission)
            .finish()
    }
}

impl<T: 'static> WatermarkStrategy<T> {
    fn with_factory(generator: Arc<GeneratorFactory<T>>) -> Self {
        Self { generator, timestamps: None, idleness: None, emission: Emission::Periodic }
    }

    /// Timestamps never decrease: watermark = highest timestamp − 1 ms.
    pub fn for_monotonous_timestamps() -> Self {
        Self::for_bounded_out_of_orderness(Duration::ZERO)
    }

    /// Records are at most `bound` out of order: watermark = highest timestamp − bound − 1 ms.
    pub fn for_bounded_out_of_orderness(bound: Duration) -> Self {
        Self::with_factory(Arc::new(move || Box::new(BoundedOutOfOrderness::new(bound))))
    }

    /// A custom generator, built once per subtask.
    pub fn for_generator<G, F>(factory: F) -> Self
    where
        G: WatermarkGenerator<T>,
        F: Fn() -> G + Send + Sync + 'static,
    {
        Self::with_factory(Arc::new(move || Box::new(factory())))
    }

    /// Timestamps without watermarks.
    pub fn no_watermarks() -> Self {
        Self::with_factory(Arc::new(|| Box::new(NoWatermarks)))
    }

    /// How to read a record's timestamp (milliseconds since the epoch). Required.
    pub fn with_timestamp_assigner<F: Fn(&T) -> i64 + Send + Sync + 'static>(mut self, f: F) -> Self {
        self.timestamps = Some(Timestamps::new(f));
        self
    }

    /// Marks a subtask idle after `timeout` without records, so it does not hold back event
    /// time downstream; it becomes active again with its next record.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }

    /// Emits a watermark after every record that advances it, instead of periodically: exact
    /// and deterministic (results do not depend on timing), at the cost of one event per
    /// advancing record.
    pub fn with_per_record_emission(mut self) -> Self {
        self.emission = Emission::PerRecord;
        self
    }
}
