//! The timestamps-and-watermarks link (Flink's `TimestampsAndWatermarksOperator`): runs a
//! [`WatermarkGenerator`] over the records that pass, emits the watermarks it produces
//! (periodically, or between records when the strategy emits per record), marks the subtask
//! idle after the idleness timeout without records and active again with the next one. Upstream
//! watermarks and statuses are swallowed — this link defines event time from here on — except
//! the final watermark of a bounded input, which is forwarded.
//!
//! A checkpoint keeps the last watermark the link emitted (part `watermark`,
//! [`PartLayout::OperatorList`](crate::checkpoint::PartLayout::OperatorList); after a rescale the lowest a subtask receives). A restored link
//! emits it again before anything else, so the operators downstream have their event time
//! back at once, and afterwards emits only watermarks above it — the generator restarts empty
//! (as in Flink), but the watermarks that leave the link are those of a run without the
//! failure.

use std::sync::Arc;

use corestream_netstack::{Data, Event, WatermarkStatus};

use super::state_parts;
use super::{enter_node, now_ms, Control, Emit, FlushReason, OperatorMetrics, Readiness};
use crate::checkpoint::{CheckpointId, CheckpointNotice, PendingParts, PendingSnapshot, TaskSnapshot};
use crate::error::TaskError;
use crate::time::strategy::{Emission, Timestamps, WatermarkGenerator, WatermarkOutput};

pub(crate) struct WatermarkLink<T: Data> {
    pub(crate) timestamps: Timestamps<T>,
    pub(crate) generator: Box<dyn WatermarkGenerator<T>>,
    pub(crate) emission: Emission,
    pub(crate) interval_ms: i64,
    pub(crate) idleness_ms: Option<i64>,
    pub(crate) next: Box<dyn Emit<T>>,
    pub(crate) metrics: Arc<OperatorMetrics>,
    pub(crate) node: usize,
    pub(crate) output: WatermarkOutput,
    pub(crate) current: i64,
    pub(crate) next_periodic: i64,
    pub(crate) last_record_ms: i64,
    pub(crate) idle: bool,
    pub(crate) scratch: Vec<T>,
    pub(crate) ts: Vec<i64>,
    /// A restored watermark not yet emitted again.
    pub(crate) restored: Option<i64>,
}

/// Name of the part holding the link's last emitted watermark.
const WATERMARK_PART: &str = "watermark";

impl<T: Data> WatermarkLink<T> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        timestamps: Timestamps<T>,
        generator: Box<dyn WatermarkGenerator<T>>,
        emission: Emission,
        interval: std::time::Duration,
        idleness: Option<std::time::Duration>,
        next: Box<dyn Emit<T>>,
        metrics: Arc<OperatorMetrics>,
        node: usize,
    ) -> Self {
        let now = now_ms();
        let interval_ms = (interval.as_millis() as i64).max(1);
        Self {
            timestamps,
            generator,
            emission,
            interval_ms,
            idleness_ms: idleness.map(|d| d.as_millis() as i64),
            next,
            metrics,
            node,
            output: WatermarkOutput::default(),
            current: i64::MIN,
            next_periodic: now + interval_ms,
            last_record_ms: now,
            idle: false,
            scratch: Vec::new(),
            ts: Vec::new(),
            restored: None,
        }
    }

    /// Emits the restored watermark, once, before anything else leaves the link.
    fn emit_restored(&mut self) -> Result<(), TaskError> {
        match self.restored.take() {
            Some(w) => self.next.emit_event(&Event::Watermark(w)),
            None => Ok(()),
        }
    }

    /// Sends the generator's pending watermark if it advances event time, then the idle status
    /// if the subtask has just gone idle (so its last watermark is out before it goes quiet).
    fn emit_pending(&mut self) -> Result<(), TaskError> {
        let go_idle = self.output.take_idle();
        if let Some(w) = self.output.take() {
            if w > self.current {
                self.current = w;
                self.mark_active()?;
                self.next.emit_event(&Event::Watermark(w))?;
            }
        }
        if go_idle && !self.idle {
            self.idle = true;
            self.next.emit_event(&Event::WatermarkStatus(WatermarkStatus::Idle))?;
        }
        Ok(())
    }

    fn mark_active(&mut self) -> Result<(), TaskError> {
        if self.idle {
            self.idle = false;
            self.next.emit_event(&Event::WatermarkStatus(WatermarkStatus::Active))?;
        }
        Ok(())
    }
}

impl<T: Data> Control for WatermarkLink<T> {
    fn emit_event(&mut self, event: &Event) -> Result<(), TaskError> {
        self.emit_restored()?;
        match *event {
            Event::Watermark(i64::MAX) => {
                self.current = i64::MAX;
                self.mark_active()?;
                self.next.emit_event(event)
            }
            Event::Watermark(_) | Event::WatermarkStatus(_) => Ok(()),
            _ => self.next.emit_event(event),
        }
    }
    fn finish_step(&mut self, max_records: usize) -> Result<bool, TaskError> {
        self.next.finish_step(max_records)
    }
    fn poll_ready(&mut self) -> Result<Readiness, TaskError> {
        self.next.poll_ready()
    }
    fn flush(&mut self, reason: FlushReason) -> Result<bool, TaskError> {
        self.next.flush(reason)
    }
    fn has_unflushed(&self) -> bool {
        self.next.has_unflushed()
    }
    fn close(&mut self) -> Result<(), TaskError> {
        self.next.close()
    }
    fn drain(&mut self) -> Result<bool, TaskError> {
        self.next.drain()
    }
    fn resume(&mut self, max_records: usize) -> Result<bool, TaskError> {
        self.next.resume(max_records)
    }
    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingSnapshot) -> Result<(), TaskError> {
        let mut parts = PendingParts::default();
        let last = self.restored.unwrap_or(self.current);
        state_parts::put_watermarks(&mut parts, WATERMARK_PART, &[last]).map_err(|e| TaskError::Checkpoint {
            node: Some(self.node),
            message: format!("snapshotting state: {e}"),
        })?;
        into.put_node_pending(self.node, parts);
        self.next.snapshot_state(checkpoint, into)
    }
    fn restore_state(&mut self, from: &TaskSnapshot) -> Result<(), TaskError> {
        if let Some(parts) = from.node(self.node) {
            let watermark = state_parts::get_min_watermark(parts, WATERMARK_PART).map_err(|e| {
                TaskError::Checkpoint { node: Some(self.node), message: format!("restoring state: {e}") }
            })?;
            if let Some(w) = watermark.filter(|w| *w > i64::MIN) {
                self.current = w;
                self.restored = Some(w);
            }
        }
        self.next.restore_state(from)
    }
    fn notify_checkpoint(&mut self, notice: CheckpointNotice) -> Result<(), TaskError> {
        self.next.notify_checkpoint(notice)
    }

    fn next_deadline(&self) -> Option<i64> {
        let mut deadline = match self.emission {
            Emission::Periodic => self.next_periodic,
            Emission::PerRecord => i64::MAX,
        };
        if let (Some(idle_ms), false) = (self.idleness_ms, self.idle) {
            deadline = deadline.min(self.last_record_ms.saturating_add(idle_ms));
        }
        let next = self.next.next_deadline();
        Some(next.map_or(deadline, |n| n.min(deadline))).filter(|d| *d != i64::MAX)
    }

    fn on_processing_time(&mut self, now_ms: i64) -> Result<(), TaskError> {
        enter_node(self.node);
        self.emit_restored()?;
        if self.emission == Emission::Periodic && now_ms >= self.next_periodic {
            self.generator.on_periodic_emit(&mut self.output);
            self.next_periodic = now_ms + self.interval_ms;
        }
        if let (Some(idle_ms), false) = (self.idleness_ms, self.idle) {
            if now_ms - self.last_record_ms >= idle_ms {
                self.output.mark_idle();
            }
        }
        self.emit_pending()?;
        self.next.on_processing_time(now_ms)
    }
}

impl<T: Data> Emit<T> for WatermarkLink<T> {
    fn emit_batch(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        enter_node(self.node);
        self.emit_restored()?;
        let n = batch.len();
        self.metrics.add(n, n);
        if self.idleness_ms.is_some() {
            self.last_record_ms = now_ms();
        }
        self.mark_active()?;
        match self.emission {
            Emission::Periodic => {
                self.ts.clear();
                (self.timestamps.batch)(batch, &mut self.ts);
                self.generator.on_batch(batch, &self.ts, &mut self.output);
                self.next.emit_batch(batch)?;
                // Punctuated watermarks emitted by `on_event` follow their batch.
                self.emit_pending()
            }
            Emission::PerRecord => {
                let mut records = std::mem::take(batch);
                let mut out = std::mem::take(&mut self.scratch);
                let mut stamps = std::mem::take(&mut self.ts);
                stamps.clear();
                (self.timestamps.batch)(&records, &mut stamps);
                for (r, ts) in records.drain(..).zip(stamps.iter().copied()) {
                    self.generator.on_event(&r, ts, &mut self.output);
                    self.generator.on_periodic_emit(&mut self.output);
                    out.push(r);
                    if self.output.pending().is_some_and(|w| w > self.current) {
                        self.next.emit_batch(&mut out)?;
                        out.clear();
                        enter_node(self.node);
                        self.emit_pending()?;
                    }
                }
                if !out.is_empty() {
                    self.next.emit_batch(&mut out)?;
                }
                out.clear();
                self.scratch = out;
                self.ts = stamps;
                *batch = records;
                Ok(())
            }
        }
    }

    fn emit_archived(&mut self, bytes: &[u8]) -> Result<(), TaskError> {
        let mut batch = Vec::with_capacity(corestream_netstack::record_count(bytes));
        // SAFETY: `bytes` is a buffer of this node's input exchange, written by the upstream
        // task's network output with records of type `T` (edges connect equal record types).
        let records = unsafe { corestream_netstack::RecordIter::<T>::new(bytes) };
        batch.extend(records.map(corestream_netstack::record::deserialize::<T>));
        self.emit_batch(&mut batch)
    }
}
