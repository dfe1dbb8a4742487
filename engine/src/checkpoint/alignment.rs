//! Barrier handling at an input gate, as a pure state machine: it is told what arrived
//! (barriers, end of partition, the aligned timeout, an aborted checkpoint) and answers with what
//! the task must do, in order. It tracks one checkpoint at a time, as Flink's
//! `SingleCheckpointBarrierHandler` and `CheckpointBarrierTracker` do; a barrier of a newer
//! checkpoint abandons an older one that has not completed (which the task declines), and
//! barriers of checkpoints already completed, abandoned or aborted are ignored.
//!
//! - **Exactly-once, aligned**: a channel that delivered the barrier is blocked until every
//!   channel has; then the task snapshots, forwards the barrier and unblocks.
//! - **At-least-once** (the barrier tracker): nothing is blocked; the task snapshots when the
//!   last channel delivered the barrier.
//! - **Unaligned**: the first barrier, which overtook the buffers queued behind it, makes the
//!   task snapshot and forward it at once. The buffers it overtook are copied as input channel
//!   state, and so is every buffer the task reads from a channel whose barrier has not yet
//!   arrived ([`BarrierAligner::is_recording`]), up to that barrier, whose own overtaken buffers
//!   are copied too. The checkpoint is complete when every channel has delivered it.
//! - **Aligned with a timeout**: starts aligned; when aligning has lasted the timeout, or when a
//!   barrier arrives already unaligned, it switches: the blocked channels are released (what
//!   they hold came after the barrier), the task snapshots and forwards an unaligned barrier,
//!   the barriers still queued on the other channels are promoted to their heads, and those
//!   channels record as in unaligned mode.
//!
//! An unaligned barrier is handled as unaligned in every mode: the buffers it overtook must be
//! recorded, or they would be lost. A savepoint's barrier is aligned in every mode (at-least-once
//! and unaligned too, with no timeout), as Flink's: a savepoint holds no in-flight data, so it
//! can be restored into a changed job. End of partition counts as the barrier of its channel.

use corestream_netstack::BarrierKind;

use super::{BarrierOptions, CheckpointId, CheckpointMode};

/// How a task treats aligned barriers, from the job's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierHandling {
    /// Exactly-once: block each channel that delivered the barrier until all have.
    Aligned,
    /// At-least-once: count barriers, never block.
    AtLeastOnce,
    /// Exactly-once: snapshot on the first barrier, record the in-flight data.
    Unaligned,
    /// Exactly-once: aligned until the task has waited the timeout, then unaligned.
    AlignedWithTimeout,
}

impl BarrierHandling {
    pub fn of(options: &BarrierOptions) -> Self {
        match (options.mode, options.unaligned, options.aligned_timeout) {
            (CheckpointMode::AtLeastOnce, ..) => BarrierHandling::AtLeastOnce,
            (CheckpointMode::ExactlyOnce, false, _) => BarrierHandling::Aligned,
            (CheckpointMode::ExactlyOnce, true, Some(t)) if !t.is_zero() => BarrierHandling::AlignedWithTimeout,
            (CheckpointMode::ExactlyOnce, true, _) => BarrierHandling::Unaligned,
        }
    }
}

/// The kind of barrier a source emits for a checkpoint with these options: unaligned only when
/// checkpoints are unaligned from the start (with a timeout they start aligned).
pub fn source_barrier_kind(options: &BarrierOptions) -> BarrierKind {
    if options.savepoint {
        return BarrierKind::Savepoint;
    }
    match BarrierHandling::of(options) {
        BarrierHandling::Unaligned => BarrierKind::Unaligned,
        _ => BarrierKind::Aligned,
    }
}

/// What the task must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlignmentAction {
    /// Stop reading this channel.
    Block(usize),
    /// Read these channels again.
    Unblock(Vec<usize>),
    /// Aligned with a timeout: call [`BarrierAligner::on_timeout`] once aligning has lasted the
    /// timeout (unless the checkpoint completed first).
    StartTimer { checkpoint_id: CheckpointId },
    /// Snapshot the chain and forward a barrier of this kind downstream.
    Snapshot { checkpoint_id: CheckpointId, timestamp_ms: i64, kind: BarrierKind },
    /// Copy, as input channel state, the buffers that the priority barrier just taken from this
    /// channel overtook.
    CopyOvertaken(usize),
    /// Move this checkpoint's barrier to the head of this channel if it is queued there.
    Promote { channel: usize, checkpoint_id: CheckpointId },
    /// The task's part of the checkpoint is done (its channel state too): report it.
    Complete { checkpoint_id: CheckpointId },
    /// A newer checkpoint's barrier arrived first: this one cannot complete here; report it
    /// declined and drop what was captured for it.
    Decline { checkpoint_id: CheckpointId, subsumed_by: CheckpointId },
    /// The checkpoint was aborted by the coordinator: drop what was captured for it.
    Discard { checkpoint_id: CheckpointId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Exactly-once, aligned: channels that delivered the barrier are blocked.
    Aligning,
    /// At-least-once: barriers are counted.
    Tracking,
    /// The snapshot is taken; channels without their barrier yet are recorded.
    Unaligned,
}

#[derive(Debug, Clone)]
struct Pending {
    checkpoint_id: CheckpointId,
    timestamp_ms: i64,
    phase: Phase,
    /// A savepoint: aligned whatever the handling, never switched to unaligned.
    savepoint: bool,
    arrived: Vec<bool>,
    blocked: Vec<bool>,
}

/// The barrier state of one input gate.
#[derive(Debug, Clone)]
pub struct BarrierAligner {
    handling: BarrierHandling,
    ended: Vec<bool>,
    recording: Vec<bool>,
    pending: Option<Pending>,
    /// Barriers of checkpoints up to this one are ignored (completed, abandoned or aborted).
    floor: CheckpointId,
}

impl BarrierAligner {
    pub fn new(channels: usize, handling: BarrierHandling) -> Self {
        Self { handling, ended: vec![false; channels], recording: vec![false; channels], pending: None, floor: 0 }
    }

    /// The checkpoint being aligned or recorded, if any.
    pub fn pending(&self) -> Option<CheckpointId> {
        self.pending.as_ref().map(|p| p.checkpoint_id)
    }

    /// Whether buffers read from `channel` are in-flight data of the pending checkpoint.
    #[inline]
    pub fn is_recording(&self, channel: usize) -> bool {
        self.recording[channel]
    }

    /// A barrier arrived on `channel` (`kind` Unaligned: it overtook the items behind it).
    pub fn on_barrier(
        &mut self,
        channel: usize,
        checkpoint_id: CheckpointId,
        timestamp_ms: i64,
        kind: BarrierKind,
    ) -> Vec<AlignmentAction> {
        let mut out = Vec::new();
        if checkpoint_id <= self.floor {
            return out;
        }
        match self.pending.as_ref().map(|p| p.checkpoint_id) {
            Some(current) if checkpoint_id < current => return out,
            Some(current) if checkpoint_id > current => {
                self.abandon(&mut out);
                out.push(AlignmentAction::Decline { checkpoint_id: current, subsumed_by: checkpoint_id });
            }
            _ => {}
        }
        let Some(pending) = &mut self.pending else {
            self.start(channel, checkpoint_id, timestamp_ms, kind, &mut out);
            return out;
        };
        if pending.arrived[channel] {
            return out;
        }
        pending.arrived[channel] = true;
        match (pending.phase, kind) {
            (Phase::Aligning, BarrierKind::Unaligned) => {
                self.switch(&mut out);
                out.push(AlignmentAction::CopyOvertaken(channel));
            }
            (Phase::Aligning, BarrierKind::Aligned | BarrierKind::Savepoint) => {
                if !self.all_arrived() {
                    self.block(channel, &mut out);
                }
            }
            (Phase::Unaligned, kind) => {
                self.recording[channel] = false;
                if kind == BarrierKind::Unaligned {
                    out.push(AlignmentAction::CopyOvertaken(channel));
                }
            }
            (Phase::Tracking, _) => {}
        }
        self.complete_if_done(&mut out);
        out
    }

    /// End of partition on `channel`: it counts as that channel's barrier from now on.
    pub fn on_end(&mut self, channel: usize) -> Vec<AlignmentAction> {
        let mut out = Vec::new();
        self.ended[channel] = true;
        self.recording[channel] = false;
        self.complete_if_done(&mut out);
        out
    }

    /// Aligning `checkpoint_id` has lasted the aligned timeout.
    pub fn on_timeout(&mut self, checkpoint_id: CheckpointId) -> Vec<AlignmentAction> {
        let mut out = Vec::new();
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.checkpoint_id == checkpoint_id && p.phase == Phase::Aligning && !p.savepoint)
        {
            self.switch(&mut out);
        }
        out
    }

    /// The coordinator aborted `checkpoint_id`: barriers of it (and older) are ignored from now
    /// on, and a pending checkpoint up to it is dropped.
    pub fn on_aborted(&mut self, checkpoint_id: CheckpointId) -> Vec<AlignmentAction> {
        let mut out = Vec::new();
        if let Some(current) = self.pending().filter(|current| *current <= checkpoint_id) {
            self.abandon(&mut out);
            out.push(AlignmentAction::Discard { checkpoint_id: current });
        }
        self.floor = self.floor.max(checkpoint_id);
        out
    }

    fn start(
        &mut self,
        channel: usize,
        checkpoint_id: CheckpointId,
        timestamp_ms: i64,
        kind: BarrierKind,
        out: &mut Vec<AlignmentAction>,
    ) {
        let phase = match (self.handling, kind) {
            (_, BarrierKind::Savepoint) => Phase::Aligning,
            (_, BarrierKind::Unaligned) | (BarrierHandling::Unaligned, _) => Phase::Unaligned,
            (BarrierHandling::AtLeastOnce, BarrierKind::Aligned) => Phase::Tracking,
            (BarrierHandling::Aligned | BarrierHandling::AlignedWithTimeout, BarrierKind::Aligned) => Phase::Aligning,
        };
        let mut arrived = vec![false; self.ended.len()];
        arrived[channel] = true;
        let blocked = vec![false; self.ended.len()];
        let savepoint = kind == BarrierKind::Savepoint;
        self.pending = Some(Pending { checkpoint_id, timestamp_ms, phase, savepoint, arrived, blocked });
        match phase {
            Phase::Unaligned => {
                out.push(AlignmentAction::Snapshot { checkpoint_id, timestamp_ms, kind: BarrierKind::Unaligned });
                if kind == BarrierKind::Unaligned {
                    out.push(AlignmentAction::CopyOvertaken(channel));
                }
                self.record_missing();
            }
            Phase::Aligning if !self.all_arrived() => {
                self.block(channel, out);
                if self.handling == BarrierHandling::AlignedWithTimeout && !savepoint {
                    out.push(AlignmentAction::StartTimer { checkpoint_id });
                }
            }
            Phase::Aligning | Phase::Tracking => {}
        }
        self.complete_if_done(out);
    }

    /// Aligned → unaligned for the pending checkpoint.
    fn switch(&mut self, out: &mut Vec<AlignmentAction>) {
        let pending = self.pending.as_mut().expect("a pending checkpoint");
        pending.phase = Phase::Unaligned;
        let (checkpoint_id, timestamp_ms) = (pending.checkpoint_id, pending.timestamp_ms);
        out.push(AlignmentAction::Snapshot { checkpoint_id, timestamp_ms, kind: BarrierKind::Unaligned });
        self.unblock_all(out);
        self.record_missing();
        for channel in (0..self.recording.len()).filter(|c| self.recording[*c]) {
            out.push(AlignmentAction::Promote { channel, checkpoint_id });
        }
    }

    fn record_missing(&mut self) {
        let pending = self.pending.as_ref().expect("a pending checkpoint");
        for c in 0..self.recording.len() {
            self.recording[c] = !pending.arrived[c] && !self.ended[c];
        }
    }

    fn all_arrived(&self) -> bool {
        let pending = self.pending.as_ref().expect("a pending checkpoint");
        pending.arrived.iter().zip(&self.ended).all(|(a, e)| *a || *e)
    }

    fn block(&mut self, channel: usize, out: &mut Vec<AlignmentAction>) {
        self.pending.as_mut().expect("a pending checkpoint").blocked[channel] = true;
        out.push(AlignmentAction::Block(channel));
    }

    fn unblock_all(&mut self, out: &mut Vec<AlignmentAction>) {
        let Some(pending) = self.pending.as_mut() else { return };
        let blocked: Vec<usize> = (0..pending.blocked.len()).filter(|c| pending.blocked[*c]).collect();
        pending.blocked.iter_mut().for_each(|b| *b = false);
        if !blocked.is_empty() {
            out.push(AlignmentAction::Unblock(blocked));
        }
    }

    fn complete_if_done(&mut self, out: &mut Vec<AlignmentAction>) {
        if self.pending.is_none() || !self.all_arrived() {
            return;
        }
        let pending = self.pending.as_ref().expect("a pending checkpoint");
        let (checkpoint_id, timestamp_ms, phase) = (pending.checkpoint_id, pending.timestamp_ms, pending.phase);
        if phase != Phase::Unaligned {
            let kind = if pending.savepoint { BarrierKind::Savepoint } else { BarrierKind::Aligned };
            out.push(AlignmentAction::Snapshot { checkpoint_id, timestamp_ms, kind });
        }
        self.unblock_all(out);
        self.pending = None;
        self.recording.iter_mut().for_each(|r| *r = false);
        self.floor = checkpoint_id;
        out.push(AlignmentAction::Complete { checkpoint_id });
    }

    /// Drops the pending checkpoint, unblocking what it blocked.
    fn abandon(&mut self, out: &mut Vec<AlignmentAction>) {
        self.unblock_all(out);
        if let Some(p) = self.pending.take() {
            self.floor = self.floor.max(p.checkpoint_id);
        }
        self.recording.iter_mut().for_each(|r| *r = false);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::AlignmentAction::*;
    use super::*;

    const A: BarrierKind = BarrierKind::Aligned;
    const U: BarrierKind = BarrierKind::Unaligned;
    const S: BarrierKind = BarrierKind::Savepoint;

    /// One input of a table: a barrier (channel, checkpoint, kind), end of partition on a
    /// channel, the aligned timeout of a checkpoint, or its abortion.
    #[derive(Debug, Clone, Copy)]
    enum In {
        Bar(usize, CheckpointId, BarrierKind),
        End(usize),
        Timeout(CheckpointId),
        Aborted(CheckpointId),
    }
    use In::*;

    fn snap(checkpoint_id: CheckpointId, kind: BarrierKind) -> AlignmentAction {
        Snapshot { checkpoint_id, timestamp_ms: 10 * checkpoint_id as i64, kind }
    }

    fn done(checkpoint_id: CheckpointId) -> AlignmentAction {
        Complete { checkpoint_id }
    }

    /// Feeds each input and checks the actions it produced and, after it, which channels are
    /// recorded.
    fn table(channels: usize, handling: BarrierHandling, rows: &[(In, Vec<AlignmentAction>, &[usize])]) {
        let mut aligner = BarrierAligner::new(channels, handling);
        for (i, (input, expected, recording)) in rows.iter().enumerate() {
            let actions = match *input {
                Bar(c, id, kind) => aligner.on_barrier(c, id, 10 * id as i64, kind),
                End(c) => aligner.on_end(c),
                Timeout(id) => aligner.on_timeout(id),
                Aborted(id) => aligner.on_aborted(id),
            };
            assert_eq!(&actions, expected, "row {i}: {input:?}");
            let now: Vec<usize> = (0..channels).filter(|c| aligner.is_recording(*c)).collect();
            assert_eq!(&now, recording, "row {i}: {input:?} recording");
        }
    }

    #[test]
    fn aligned_blocks_each_channel_until_all_delivered() {
        table(
            3,
            BarrierHandling::Aligned,
            &[
                (Bar(0, 1, A), vec![Block(0)], &[]),
                (Bar(2, 1, A), vec![Block(2)], &[]),
                (Bar(2, 1, A), vec![], &[]),
                (Bar(1, 1, A), vec![snap(1, A), Unblock(vec![0, 2]), done(1)], &[]),
                (Bar(0, 1, A), vec![], &[]),
                (Bar(1, 2, A), vec![Block(1)], &[]),
            ],
        );
    }

    #[test]
    fn aligned_a_newer_barrier_abandons_the_older_alignment() {
        table(
            2,
            BarrierHandling::Aligned,
            &[
                (Bar(0, 1, A), vec![Block(0)], &[]),
                (Bar(1, 2, A), vec![Unblock(vec![0]), Decline { checkpoint_id: 1, subsumed_by: 2 }, Block(1)], &[]),
                (Bar(1, 1, A), vec![], &[]),
                (Bar(0, 2, A), vec![snap(2, A), Unblock(vec![1]), done(2)], &[]),
            ],
        );
    }

    #[test]
    fn end_of_partition_counts_as_the_barrier() {
        table(
            3,
            BarrierHandling::Aligned,
            &[
                (End(2), vec![], &[]),
                (Bar(0, 1, A), vec![Block(0)], &[]),
                (End(1), vec![snap(1, A), Unblock(vec![0]), done(1)], &[]),
                (Bar(0, 2, A), vec![snap(2, A), done(2)], &[]),
            ],
        );
        table(
            2,
            BarrierHandling::Unaligned,
            &[(Bar(0, 3, U), vec![snap(3, U), CopyOvertaken(0)], &[1]), (End(1), vec![done(3)], &[])],
        );
        table(
            2,
            BarrierHandling::AtLeastOnce,
            &[(Bar(1, 1, A), vec![], &[]), (End(0), vec![snap(1, A), done(1)], &[])],
        );
    }

    #[test]
    fn an_aborted_checkpoint_unblocks_and_its_late_barriers_are_ignored() {
        table(
            2,
            BarrierHandling::Aligned,
            &[
                (Bar(0, 1, A), vec![Block(0)], &[]),
                (Aborted(1), vec![Unblock(vec![0]), Discard { checkpoint_id: 1 }], &[]),
                (Bar(1, 1, A), vec![], &[]),
                (Aborted(1), vec![], &[]),
                (Bar(1, 2, A), vec![Block(1)], &[]),
            ],
        );
        table(
            2,
            BarrierHandling::Unaligned,
            &[
                (Bar(0, 4, U), vec![snap(4, U), CopyOvertaken(0)], &[1]),
                (Aborted(4), vec![Discard { checkpoint_id: 4 }], &[]),
                (Bar(1, 4, U), vec![], &[]),
            ],
        );
    }

    #[test]
    fn at_least_once_never_blocks_and_the_newer_checkpoint_wins() {
        table(
            3,
            BarrierHandling::AtLeastOnce,
            &[
                (Bar(0, 1, A), vec![], &[]),
                (Bar(1, 1, A), vec![], &[]),
                (Bar(2, 1, A), vec![snap(1, A), done(1)], &[]),
                (Bar(0, 2, A), vec![], &[]),
                (Bar(1, 3, A), vec![Decline { checkpoint_id: 2, subsumed_by: 3 }], &[]),
                (Bar(1, 2, A), vec![], &[]),
                (Bar(0, 3, A), vec![], &[]),
                (Bar(2, 3, A), vec![snap(3, A), done(3)], &[]),
            ],
        );
    }

    #[test]
    fn unaligned_snapshots_on_the_first_barrier_and_records_until_the_last() {
        table(
            3,
            BarrierHandling::Unaligned,
            &[
                (Bar(1, 1, U), vec![snap(1, U), CopyOvertaken(1)], &[0, 2]),
                (Bar(1, 1, U), vec![], &[0, 2]),
                (Bar(0, 1, U), vec![CopyOvertaken(0)], &[2]),
                (Bar(2, 1, A), vec![done(1)], &[]),
                // An aligned barrier under unaligned handling starts unaligned; nothing overtaken.
                (Bar(2, 2, A), vec![snap(2, U)], &[0, 1]),
                (
                    Bar(0, 3, U),
                    vec![Decline { checkpoint_id: 2, subsumed_by: 3 }, snap(3, U), CopyOvertaken(0)],
                    &[1, 2],
                ),
            ],
        );
    }

    #[test]
    fn an_unaligned_barrier_is_unaligned_in_every_mode() {
        for handling in [BarrierHandling::Aligned, BarrierHandling::AtLeastOnce, BarrierHandling::AlignedWithTimeout] {
            table(
                2,
                handling,
                &[
                    (Bar(0, 1, U), vec![snap(1, U), CopyOvertaken(0)], &[1]),
                    (Bar(1, 1, U), vec![CopyOvertaken(1), done(1)], &[]),
                ],
            );
        }
    }

    #[test]
    fn a_savepoint_is_aligned_in_every_mode_and_never_times_out() {
        for handling in [
            BarrierHandling::Aligned,
            BarrierHandling::AtLeastOnce,
            BarrierHandling::Unaligned,
            BarrierHandling::AlignedWithTimeout,
        ] {
            table(
                3,
                handling,
                &[
                    (Bar(1, 4, S), vec![Block(1)], &[]),
                    (Timeout(4), vec![], &[]),
                    (Bar(0, 4, S), vec![Block(0)], &[]),
                    (Bar(2, 4, S), vec![snap(4, S), Unblock(vec![0, 1]), done(4)], &[]),
                    (Bar(2, 4, S), vec![], &[]),
                ],
            );
        }
    }

    #[test]
    fn aligned_with_timeout_switches_when_the_timer_fires() {
        table(
            3,
            BarrierHandling::AlignedWithTimeout,
            &[
                (Bar(0, 1, A), vec![Block(0), StartTimer { checkpoint_id: 1 }], &[]),
                (
                    Timeout(1),
                    vec![
                        snap(1, U),
                        Unblock(vec![0]),
                        Promote { channel: 1, checkpoint_id: 1 },
                        Promote { channel: 2, checkpoint_id: 1 },
                    ],
                    &[1, 2],
                ),
                (Timeout(1), vec![], &[1, 2]),
                // Promoted from the queue of channel 1; channel 2's arrives in order.
                (Bar(1, 1, U), vec![CopyOvertaken(1)], &[2]),
                (Bar(2, 1, A), vec![done(1)], &[]),
                (Timeout(1), vec![], &[]),
            ],
        );
    }

    #[test]
    fn aligned_with_timeout_switches_at_once_on_an_unaligned_barrier() {
        table(
            3,
            BarrierHandling::AlignedWithTimeout,
            &[
                (Bar(0, 1, A), vec![Block(0), StartTimer { checkpoint_id: 1 }], &[]),
                (
                    Bar(2, 1, U),
                    vec![snap(1, U), Unblock(vec![0]), Promote { channel: 1, checkpoint_id: 1 }, CopyOvertaken(2)],
                    &[1],
                ),
                (Bar(1, 1, A), vec![done(1)], &[]),
            ],
        );
    }

    #[test]
    fn aligned_with_timeout_completes_aligned_when_in_time() {
        table(
            2,
            BarrierHandling::AlignedWithTimeout,
            &[
                (Bar(1, 1, A), vec![Block(1), StartTimer { checkpoint_id: 1 }], &[]),
                (Bar(0, 1, A), vec![snap(1, A), Unblock(vec![1]), done(1)], &[]),
                (Timeout(1), vec![], &[]),
            ],
        );
        table(1, BarrierHandling::AlignedWithTimeout, &[(Bar(0, 7, A), vec![snap(7, A), done(7)], &[])]);
    }

    #[test]
    fn handling_and_source_barriers_follow_the_options() {
        let options = |mode, unaligned, timeout_ms: Option<u64>| BarrierOptions {
            mode,
            unaligned,
            aligned_timeout: timeout_ms.map(Duration::from_millis),
            savepoint: false,
        };
        let cases = [
            (options(CheckpointMode::ExactlyOnce, false, None), BarrierHandling::Aligned, A),
            (options(CheckpointMode::ExactlyOnce, false, Some(10)), BarrierHandling::Aligned, A),
            (options(CheckpointMode::ExactlyOnce, true, None), BarrierHandling::Unaligned, U),
            (options(CheckpointMode::ExactlyOnce, true, Some(0)), BarrierHandling::Unaligned, U),
            (options(CheckpointMode::ExactlyOnce, true, Some(10)), BarrierHandling::AlignedWithTimeout, A),
            (options(CheckpointMode::AtLeastOnce, true, None), BarrierHandling::AtLeastOnce, A),
        ];
        for (options, handling, kind) in cases {
            assert_eq!(BarrierHandling::of(&options), handling, "{options:?}");
            assert_eq!(source_barrier_kind(&options), kind, "{options:?}");
        }
    }
}
