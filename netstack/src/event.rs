//! In-band events: they travel in the same channels as data buffers, in order, so that an
//! operator sees an event exactly between the records sent before and after it. The exception
//! is a priority event (an unaligned checkpoint barrier), which overtakes the buffers already
//! queued in a channel.

/// How a checkpoint barrier is aligned at the receiving task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarrierKind {
    /// Exactly-once, aligned: a task waits for the barrier on every input channel.
    Aligned,
    /// Exactly-once, unaligned: the barrier overtakes queued buffers, which become channel state.
    Unaligned,
    /// A savepoint: aligned in every checkpointing mode, and every task writes its state in the
    /// canonical, backend-independent format.
    Savepoint,
}

impl BarrierKind {
    /// Whether the barrier waits behind the buffers queued before it (aligned or a savepoint).
    pub fn is_aligned(self) -> bool {
        self != BarrierKind::Unaligned
    }
}

/// Whether a channel currently takes part in event time (Flink's `WatermarkStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatermarkStatus {
    Active,
    Idle,
}

/// An in-band event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The producing subtask has sent its last record on this channel.
    EndOfPartition,
    /// Event time has reached this timestamp (milliseconds) on this channel.
    Watermark(i64),
    /// The channel's producer stopped (`Idle`) or resumed (`Active`) emitting records and
    /// watermarks; an idle channel does not hold back the consumer's event time.
    WatermarkStatus(WatermarkStatus),
    /// A checkpoint barrier (Chandy–Lamport).
    CheckpointBarrier { checkpoint_id: u64, timestamp_ms: i64, kind: BarrierKind },
    /// A latency marker emitted by a source subtask at `marked_time_ns` (monotonic clock).
    LatencyMarker { marked_time_ns: u64, source_subtask: u32 },
}

impl Event {
    /// Priority events are queued ahead of every buffer already waiting in a channel.
    pub fn is_priority(&self) -> bool {
        matches!(self, Event::CheckpointBarrier { kind: BarrierKind::Unaligned, .. })
    }
}
