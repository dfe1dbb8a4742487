//! The checkpoint side of a task: its control mailbox (triggers at sources, notifications
//! everywhere), the barrier handler of its input gate ([`BarrierAligner`]), the snapshot it is
//! taking and what it captures as channel state, and the restore before its first input.
//!
//! A source task snapshots its position and chain between two batches and emits the barrier;
//! an input task snapshots its chain and its watermark valve when its barrier handler says so,
//! forwards the barrier and, for an unaligned checkpoint, keeps recording input buffers and the
//! watermarks and statuses between them until every channel has delivered the barrier. The snapshot is reported once the input recording is complete and every network
//! output has sent its barrier (one whose records were parked sends it once they are written).
//! Everything here runs between batches, at points where no firing is pending; the checks made
//! there are one atomic load (the mailbox), one `Cell` (the aligned timeout) and one `Option`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corestream_netstack::{BarrierKind, Doorbell, Event, InFlightCopy, InputGate};
use tracing::debug;

use crate::checkpoint::channel_state::{check_channels, AlignedBuffer, Direction, InputCapture, Replay};
use crate::checkpoint::{
    source_barrier_kind, thread_cpu_time, AlignmentAction, BarrierAligner, BarrierHandling, BarrierOptions,
    CheckpointId, CheckpointNotice, ControlMessage, PendingSnapshot, TaskCheckpointMetrics, TaskCheckpointing,
    TaskSnapshot,
};
use crate::error::TaskError;
use crate::operators::Control;
use crate::runtime::build::{TaskInput, TaskSource};
use crate::runtime::output::{capturing, CaptureSink, OutputCapture};
use crate::time::WatermarkValve;

/// The body of a task, as the checkpoint side sees it: a source, or an input task with its
/// gate and the gate's watermark valve (read when it snapshots).
pub(super) enum Side<'a> {
    Source(&'a mut dyn TaskSource),
    Input(&'a mut dyn TaskInput, &'a mut InputGate, &'a WatermarkValve),
}

impl Side<'_> {
    pub(super) fn chain(&mut self) -> &mut dyn Control {
        match self {
            Side::Source(source) => source.chain(),
            Side::Input(input, _, _) => input.chain(),
        }
    }
}

/// What a task restored from: the snapshot (its input channel state still to replay) and, for
/// an input task whose snapshot has one, its watermark valve.
pub(super) struct Restored {
    pub snapshot: Arc<TaskSnapshot>,
    pub valve: Option<WatermarkValve>,
}

/// The checkpoint this task is taking, from its snapshot until it is reported.
struct Taking {
    checkpoint_id: CheckpointId,
    snapshot: PendingSnapshot,
    /// Unaligned input tasks: the input channel state being recorded.
    input: Option<InputCapture>,
    output: CaptureSink,
    /// Every input channel has delivered the barrier (always, at a source).
    input_done: bool,
    alignment_ms: Option<u64>,
    sync_ms: u64,
    /// CPU time on the task's thread: the synchronous part and, unaligned, copying the input
    /// buffers recorded as channel state.
    task_cpu: Duration,
    unaligned: bool,
}

pub(super) struct Checkpoints {
    config: TaskCheckpointing,
    bell: Arc<Doorbell>,
    messages: Vec<ControlMessage>,
    taking: Option<Taking>,
    /// Input tasks only.
    aligner: Option<BarrierAligner>,
    alignment_started: Option<Instant>,
    /// Set by the aligned-timeout timer when it fires.
    timed_out: Rc<Cell<Option<CheckpointId>>>,
}

/// Why a snapshot failed, for the coordinator (the task's error is reported as the job's).
fn describe(e: &TaskError) -> String {
    match e {
        TaskError::Checkpoint { node: Some(node), message } => format!("node {node}: {message}"),
        TaskError::Checkpoint { node: None, message } => message.clone(),
        TaskError::User { node, message } => format!("node {node}: {message}"),
        other => format!("{other:?}"),
    }
}

fn failed(message: impl Into<String>) -> TaskError {
    TaskError::Checkpoint { node: None, message: message.into() }
}

impl Checkpoints {
    pub(super) fn new(config: TaskCheckpointing, bell: Arc<Doorbell>, input_channels: Option<usize>) -> Self {
        let aligner = input_channels.map(|n| BarrierAligner::new(n, BarrierHandling::of(&config.options)));
        Self {
            config,
            bell,
            messages: Vec::new(),
            taking: None,
            aligner,
            alignment_started: None,
            timed_out: Rc::new(Cell::new(None)),
        }
    }

    /// Restores the task before its first input: the chain's (or the source's) state and, for
    /// an input task, its watermark valve (returned: the task's valve is replaced by it). The
    /// input channel state is checked here and replayed by the task ([`Checkpoints::replay_order`],
    /// [`Checkpoints::replay_buffer`]) through the restored valve. Output channel state is
    /// restored by the network outputs, which send it before any new output.
    pub(super) fn restore(&self, side: &mut Side<'_>) -> Result<Option<Restored>, TaskError> {
        let Some(snapshot) = self.config.restore.clone() else {
            return Ok(None);
        };
        let task = self.config.task;
        let valve = match side {
            Side::Source(source) => {
                source.restore_state(&snapshot)?;
                if !snapshot.input_channels.is_empty() || snapshot.input_watermarks.is_some() {
                    return Err(failed(format!(
                        "{task}: the restored state has input channel state or input watermarks but the task is a source"
                    )));
                }
                None
            }
            Side::Input(input, gate, _) => {
                input.chain().restore_state(&snapshot)?;
                check_channels(&snapshot.input_channels, gate.num_channels(), Direction::Input)
                    .map_err(|e| failed(format!("{task}: {e}")))?;
                snapshot
                    .input_watermarks
                    .as_ref()
                    .map(|state| WatermarkValve::restore(state, gate.num_channels()))
                    .transpose()
                    .map_err(|e| failed(format!("{task}: {e}")))?
            }
        };
        debug!(%task, "restored from a checkpoint");
        Ok(Some(Restored { snapshot, valve }))
    }

    /// Restored input channel state in replay order: channel by channel (in channel order),
    /// each channel's buffers and events in the order they were sent.
    pub(super) fn replay_order(snapshot: &TaskSnapshot) -> Vec<(u32, Replay)> {
        let mut channels: Vec<&crate::checkpoint::ChannelState> = snapshot.input_channels.iter().collect();
        channels.sort_by_key(|c| c.channel);
        channels.iter().flat_map(|c| c.replay().into_iter().map(move |step| (c.channel, step))).collect()
    }

    /// Feeds one restored input buffer to the chain, validated in an aligned copy.
    pub(super) fn replay_buffer(
        &self,
        input: &mut dyn TaskInput,
        snapshot: &TaskSnapshot,
        (channel, index): (u32, usize),
        aligned: &mut AlignedBuffer,
    ) -> Result<(), TaskError> {
        let state = snapshot.input_channels.iter().find(|c| c.channel == channel).expect("a restored channel");
        let bytes = aligned
            .load_valid(&state.buffers[index], input.validator(), Direction::Input, channel, index)
            .map_err(|e| failed(format!("{}: {e}", self.config.task)))?;
        input.on_buffer(bytes)
    }

    /// Whether buffers read from `channel` are in-flight data of the checkpoint being taken.
    #[inline]
    pub(super) fn recording(&self, channel: usize) -> bool {
        self.aligner.as_ref().is_some_and(|a| a.is_recording(channel))
    }

    /// Copies a buffer read from a recorded channel.
    pub(super) fn record(&mut self, channel: usize, bytes: &[u8]) {
        let Some(taking) = self.taking.as_mut() else {
            return;
        };
        let Some(capture) = taking.input.as_mut() else {
            return;
        };
        let started = thread_cpu_time();
        let pushed = capture.push(channel, bytes);
        taking.task_cpu += thread_cpu_time().saturating_sub(started);
        if let Err(e) = pushed {
            self.give_up(e.to_string());
        }
    }

    /// Keeps an event read from a recorded channel (watermarks and statuses; others are not
    /// channel state).
    pub(super) fn record_event(&mut self, channel: usize, event: &Event) {
        let Some(capture) = self.taking.as_mut().and_then(|t| t.input.as_mut()) else {
            return;
        };
        if let Err(e) = capture.push_event(channel, event) {
            self.give_up(e.to_string());
        }
    }

    /// Work at a batch boundary: the mailbox, the aligned timeout, and reporting a snapshot
    /// whose last output barrier has gone out.
    pub(super) fn at_boundary(&mut self, side: &mut Side<'_>) -> Result<(), TaskError> {
        if self.config.mailbox.has_mail() {
            self.config.mailbox.drain(&mut self.messages);
            for message in std::mem::take(&mut self.messages) {
                self.on_message(message, side)?;
            }
        }
        if let Some(checkpoint_id) = self.timed_out.take() {
            if let (Some(aligner), Side::Input(input, gate, valve)) = (self.aligner.as_mut(), &mut *side) {
                let actions = aligner.on_timeout(checkpoint_id);
                self.apply(actions, &mut **input, gate, valve, false)?;
            }
        }
        self.maybe_report();
        Ok(())
    }

    /// After a wake-up while the task waits for room in its output: everything of
    /// [`Checkpoints::at_boundary`], and the unaligned barriers waiting at the head of the
    /// input channels, which must not wait for the output.
    pub(super) fn while_blocked(&mut self, side: &mut Side<'_>) -> Result<(), TaskError> {
        self.at_boundary(side)?;
        if let Side::Input(input, gate, valve) = side {
            while let Some((channel, event)) = gate.poll_priority() {
                self.on_event(channel, event, &mut **input, gate, valve)?;
            }
        }
        self.maybe_report();
        Ok(())
    }

    fn on_message(&mut self, message: ControlMessage, side: &mut Side<'_>) -> Result<(), TaskError> {
        match message {
            ControlMessage::Trigger { checkpoint_id, timestamp_ms, options } => match side {
                Side::Source(source) => self.trigger(&mut **source, checkpoint_id, timestamp_ms, &options)?,
                Side::Input(..) => {
                    let reason = format!("{} is not a source: its barriers come through its inputs", self.config.task);
                    self.config.reporter.declined(self.config.task, checkpoint_id, reason);
                }
            },
            ControlMessage::Notify(notice) => {
                side.chain().notify_checkpoint(notice)?;
                if let CheckpointNotice::Aborted(checkpoint_id) = notice {
                    match side {
                        Side::Input(input, gate, valve) => {
                            if let Some(aligner) = self.aligner.as_mut() {
                                let actions = aligner.on_aborted(checkpoint_id);
                                self.apply(actions, &mut **input, gate, valve, false)?;
                            }
                        }
                        Side::Source(_) => {
                            if self.taking.as_ref().is_some_and(|t| t.checkpoint_id <= checkpoint_id) {
                                self.taking = None;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A source's part of a checkpoint: snapshot the position and the chain, emit the barrier.
    fn trigger(
        &mut self,
        source: &mut dyn TaskSource,
        checkpoint_id: CheckpointId,
        timestamp_ms: i64,
        options: &BarrierOptions,
    ) -> Result<(), TaskError> {
        if let Some(older) = self.taking.take() {
            self.decline(older.checkpoint_id, format!("subsumed by checkpoint {checkpoint_id}"));
        }
        let kind = source_barrier_kind(options);
        let (started, started_cpu) = (Instant::now(), thread_cpu_time());
        let mut snapshot = PendingSnapshot::of_barrier(kind);
        if let Err(e) = source.snapshot_state(checkpoint_id, &mut snapshot) {
            self.decline(checkpoint_id, format!("the snapshot failed: {}", describe(&e)));
            return Err(e);
        }
        let barrier = Event::CheckpointBarrier { checkpoint_id, timestamp_ms, kind };
        let output = Rc::new(RefCell::new(OutputCapture::default()));
        capturing(&output, || source.chain().emit_event(&barrier))?;
        self.taking = Some(Taking {
            checkpoint_id,
            snapshot,
            input: None,
            output,
            input_done: true,
            alignment_ms: Some(0),
            sync_ms: started.elapsed().as_millis() as u64,
            task_cpu: thread_cpu_time().saturating_sub(started_cpu),
            unaligned: kind == BarrierKind::Unaligned,
        });
        self.maybe_report();
        Ok(())
    }

    /// A barrier taken from input channel `channel`.
    pub(super) fn on_event(
        &mut self,
        channel: usize,
        event: Event,
        input: &mut dyn TaskInput,
        gate: &mut InputGate,
        valve: &WatermarkValve,
    ) -> Result<(), TaskError> {
        let Event::CheckpointBarrier { checkpoint_id, timestamp_ms, kind } = event else {
            unreachable!("only checkpoint barriers are handled here, not {event:?}");
        };
        let aligner = self.aligner.as_mut().expect("an input task");
        let before = aligner.pending();
        let actions = aligner.on_barrier(channel, checkpoint_id, timestamp_ms, kind);
        // The first barrier of a checkpoint starts its alignment (also when it completes at
        // once: one channel, or unaligned).
        let first = actions
            .iter()
            .any(|a| matches!(a, AlignmentAction::Snapshot { checkpoint_id: id, .. } if before != Some(*id)))
            || aligner.pending().is_some_and(|id| before != Some(id));
        if first {
            self.alignment_started = Some(Instant::now());
        }
        self.apply(actions, input, gate, valve, first)
    }

    /// End of partition on `channel`.
    pub(super) fn on_end(
        &mut self,
        channel: usize,
        input: &mut dyn TaskInput,
        gate: &mut InputGate,
        valve: &WatermarkValve,
    ) -> Result<(), TaskError> {
        let actions = self.aligner.as_mut().expect("an input task").on_end(channel);
        self.apply(actions, input, gate, valve, false)
    }

    /// Carries out the handler's actions; `first`: they answer the checkpoint's first barrier.
    fn apply(
        &mut self,
        actions: Vec<AlignmentAction>,
        input: &mut dyn TaskInput,
        gate: &mut InputGate,
        valve: &WatermarkValve,
        first: bool,
    ) -> Result<(), TaskError> {
        for action in actions {
            match action {
                AlignmentAction::Block(c) => gate.set_blocked(c, true),
                AlignmentAction::Unblock(channels) => channels.into_iter().for_each(|c| gate.set_blocked(c, false)),
                AlignmentAction::StartTimer { checkpoint_id } => self.start_timer(checkpoint_id),
                AlignmentAction::Snapshot { checkpoint_id, timestamp_ms, kind } => {
                    // Aligning ends with the snapshot, except for a checkpoint unaligned from
                    // its first barrier, whose alignment lasts until its last one.
                    let aligning_ends = kind.is_aligned() || !first;
                    self.snapshot(input, valve, checkpoint_id, timestamp_ms, kind, aligning_ends)?
                }
                AlignmentAction::CopyOvertaken(c) => {
                    let mut copy = InFlightCopy::default();
                    gate.copy_overtaken(c, &mut copy);
                    if let Some(capture) = self.taking.as_mut().and_then(|t| t.input.as_mut()) {
                        if let Err(e) = capture.extend(c, copy) {
                            self.give_up(e.to_string());
                        }
                    }
                }
                AlignmentAction::Promote { channel, checkpoint_id } => {
                    gate.promote_barrier(channel, checkpoint_id);
                }
                AlignmentAction::Complete { checkpoint_id } => {
                    if let Some(taking) = self.taking.as_mut().filter(|t| t.checkpoint_id == checkpoint_id) {
                        taking.input_done = true;
                        if taking.alignment_ms.is_none() {
                            taking.alignment_ms =
                                Some(self.alignment_started.map_or(0, |s| s.elapsed().as_millis() as u64));
                        }
                    }
                    self.maybe_report();
                }
                AlignmentAction::Decline { checkpoint_id, subsumed_by } => {
                    if self.taking.as_ref().is_some_and(|t| t.checkpoint_id == checkpoint_id) {
                        self.taking = None;
                    }
                    let reason = format!("a barrier of checkpoint {subsumed_by} arrived before checkpoint {checkpoint_id} completed here");
                    self.decline(checkpoint_id, reason);
                }
                AlignmentAction::Discard { checkpoint_id } => {
                    if self.taking.as_ref().is_some_and(|t| t.checkpoint_id == checkpoint_id) {
                        self.taking = None;
                    }
                }
            }
        }
        Ok(())
    }

    /// Snapshots the chain and the watermark valve and forwards the barrier (an input task).
    fn snapshot(
        &mut self,
        input: &mut dyn TaskInput,
        valve: &WatermarkValve,
        checkpoint_id: CheckpointId,
        timestamp_ms: i64,
        kind: BarrierKind,
        aligning_ends: bool,
    ) -> Result<(), TaskError> {
        let (started, started_cpu) = (Instant::now(), thread_cpu_time());
        let mut snapshot = PendingSnapshot::of_barrier(kind);
        if let Err(e) = input.chain().snapshot_state(checkpoint_id, &mut snapshot) {
            self.decline(checkpoint_id, format!("the snapshot failed: {}", describe(&e)));
            return Err(e);
        }
        let watermarks = valve.snapshot();
        let channels = watermarks.channels.len();
        snapshot.input_watermarks = Some(watermarks);
        let barrier = Event::CheckpointBarrier { checkpoint_id, timestamp_ms, kind };
        let output = Rc::new(RefCell::new(OutputCapture::default()));
        let unaligned = kind == BarrierKind::Unaligned;
        if unaligned {
            capturing(&output, || input.chain().emit_event(&barrier))?;
        } else {
            input.chain().emit_event(&barrier)?;
        }
        let alignment_ms =
            aligning_ends.then(|| self.alignment_started.map_or(0, |s| started.duration_since(s).as_millis() as u64));
        self.taking = Some(Taking {
            checkpoint_id,
            snapshot,
            input: unaligned.then(|| InputCapture::new(checkpoint_id, channels)),
            output,
            input_done: false,
            alignment_ms,
            sync_ms: started.elapsed().as_millis() as u64,
            task_cpu: thread_cpu_time().saturating_sub(started_cpu),
            unaligned,
        });
        Ok(())
    }

    fn start_timer(&self, checkpoint_id: CheckpointId) {
        let Some(timeout) = self.config.options.aligned_timeout else {
            return;
        };
        let (fired, bell) = (self.timed_out.clone(), self.bell.clone());
        glommio::spawn_local(async move {
            glommio::timer::sleep(timeout).await;
            fired.set(Some(checkpoint_id));
            bell.ring();
        })
        .detach();
    }

    /// The capture outgrew its bound: decline the checkpoint and stop recording for it.
    fn give_up(&mut self, reason: String) {
        let Some(taking) = self.taking.take() else {
            return;
        };
        if let Some(aligner) = self.aligner.as_mut() {
            aligner.on_aborted(taking.checkpoint_id);
        }
        self.decline(taking.checkpoint_id, reason);
    }

    fn decline(&self, checkpoint_id: CheckpointId, reason: String) {
        debug!(task = %self.config.task, checkpoint_id, %reason, "checkpoint declined");
        self.config.reporter.declined(self.config.task, checkpoint_id, reason);
    }

    /// Reports the snapshot being taken once its input recording is complete (its outputs sent
    /// their barriers when it was taken).
    fn maybe_report(&mut self) {
        let ready = self.taking.as_ref().is_some_and(|t| t.input_done);
        if !ready {
            return;
        }
        let mut taking = self.taking.take().expect("a snapshot being taken");
        let mut output = taking.output.borrow_mut();
        let mut channel_bytes = output.bytes;
        output.put_into(&mut taking.snapshot);
        drop(output);
        if let Some(input) = taking.input.take() {
            channel_bytes += input.bytes();
            taking.snapshot.input_channels = input.into_states();
        }
        let metrics = TaskCheckpointMetrics {
            alignment_ms: taking.alignment_ms.unwrap_or(0),
            sync_ms: taking.sync_ms,
            cpu_us: taking.task_cpu.as_micros() as u64,
            channel_bytes,
            unaligned: taking.unaligned,
            ..TaskCheckpointMetrics::default()
        };
        debug!(task = %self.config.task, checkpoint_id = taking.checkpoint_id, ?metrics, "snapshot taken");
        self.config.reporter.snapshot_taken(self.config.task, taking.checkpoint_id, taking.snapshot, metrics);
    }

    /// The task has finished: a snapshot it was still taking is declined. Triggers left in its
    /// mailbox are dropped, not declined: the coordinator aborts those checkpoints when the
    /// task's state reaches it, as a task that finished (which is no failed checkpoint), while
    /// a decline would count against the tolerable failures and could fail a job whose bounded
    /// sources merely ended between a trigger and its delivery.
    pub(super) fn finished(&mut self) {
        self.maybe_report();
        if let Some(taking) = self.taking.take() {
            self.decline(taking.checkpoint_id, "the task finished before its snapshot was complete".into());
        }
        self.config.mailbox.drain(&mut self.messages);
        for message in std::mem::take(&mut self.messages) {
            if let ControlMessage::Trigger { checkpoint_id, .. } = message {
                debug!(task = %self.config.task, checkpoint_id, "a trigger reached a finished task; dropped");
            }
        }
    }
}
