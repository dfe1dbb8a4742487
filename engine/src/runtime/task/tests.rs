//! Task loops with checkpoints on a glommio executor, over real in-process channels: the test
//! plays the upstream producers and the downstream consumer; the chain records what it read and
//! snapshots it; a reporter collects the snapshots.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corestream_netstack::record::{deserialize, validate_buffer, BufferValidator, RecordIter, RecordWriter};
use corestream_netstack::{
    BarrierKind, Buffer, BufferPool, ChannelItem, CreditConfig, Doorbell, Event, InFlightCopy, InputGate, LocalChannel,
    OutputChannel,
};
use glommio::{LocalExecutorBuilder, Placement};

use super::{run, TaskBody, TaskEnv};
use crate::api::sources::SourceStatus;
use crate::checkpoint::channel_state::Replay;
use crate::checkpoint::{
    BarrierOptions, ChannelState, CheckpointId, CheckpointMode, CheckpointNotice, ControlMailbox, ControlMessage,
    OperatorStateParts, PartLayout, PendingSnapshot, SnapshotReporter, TaskCheckpointMetrics, TaskCheckpointing,
    TaskId, TaskSnapshot,
};
use crate::error::TaskError;
use crate::graph::Partitioning;
use crate::operators::{Control, Emit, FlushReason, Readiness};
use crate::runtime::build::{OutputCtx, OutputEdgeRt, TaskInput, TaskSource};
use crate::runtime::job::JobShared;
use crate::runtime::output::{capturing, CaptureSink, NetworkOutput};

const TASK: TaskId = TaskId { vertex: 1, subtask: 0 };
const NODE: usize = 1;

#[derive(Default)]
struct Reports {
    taken: Mutex<Vec<(CheckpointId, TaskSnapshot, TaskCheckpointMetrics)>>,
    declined: Mutex<Vec<(CheckpointId, String)>>,
}

impl SnapshotReporter for Reports {
    fn snapshot_taken(
        &self,
        task: TaskId,
        checkpoint: CheckpointId,
        snapshot: PendingSnapshot,
        m: TaskCheckpointMetrics,
    ) {
        assert_eq!(task, TASK);
        self.taken.lock().unwrap().push((checkpoint, snapshot.complete().unwrap(), m));
    }

    fn declined(&self, task: TaskId, checkpoint: CheckpointId, reason: String) {
        assert_eq!(task, TASK);
        self.declined.lock().unwrap().push((checkpoint, reason));
    }
}

impl Reports {
    fn taken(&self) -> Vec<(CheckpointId, TaskSnapshot, TaskCheckpointMetrics)> {
        self.taken.lock().unwrap().clone()
    }

    fn declined(&self) -> Vec<(CheckpointId, String)> {
        self.declined.lock().unwrap().clone()
    }
}

fn encode(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Values of a buffer of `u64` records (validated: the bytes may come from a snapshot).
fn values_of(bytes: &[u8]) -> Vec<u64> {
    let pool = BufferPool::new(1);
    let mut buf = pool.take().unwrap();
    buf.spare_mut()[..bytes.len()].copy_from_slice(bytes);
    buf.advance(bytes.len());
    let buf = buf.freeze();
    validate_buffer::<u64>(buf.as_slice()).expect("a buffer of u64 records");
    // SAFETY: validated just above; pool buffers are 16-byte aligned.
    unsafe { RecordIter::<u64>::new(buf.as_slice()) }.map(deserialize::<u64>).collect()
}

fn buffer_of(pool: &BufferPool, values: &[u64]) -> Buffer {
    let mut buf = pool.take().unwrap();
    let mut writer = RecordWriter::new();
    for v in values {
        writer.write(&mut buf, v).unwrap();
    }
    buf.freeze()
}

/// A watermark or status as the traces write it; other events are not traced.
fn traced_event(event: &Event) -> Option<String> {
    match event {
        Event::Watermark(w) => Some(format!("W{w}")),
        Event::WatermarkStatus(status) => Some(format!("{status:?}")),
        _ => None,
    }
}

fn barrier(checkpoint_id: CheckpointId, kind: BarrierKind) -> Event {
    Event::CheckpointBarrier { checkpoint_id, timestamp_ms: 0, kind }
}

/// What the chain saw, shared with the test on the executor's thread.
#[derive(Default)]
struct Seen {
    values: Vec<u64>,
    /// Values and the watermarks and statuses the chain got, in order ("7", "W70", "Idle").
    trace: Vec<String>,
    restored: Option<Vec<u64>>,
    notices: Vec<CheckpointNotice>,
}

/// A chain head and tail in one: records every value it reads, snapshots them (node `NODE`,
/// part "seen"), and passes them to its network output if it has one.
struct Recorder {
    seen: Rc<RefCell<Seen>>,
    out: Option<NetworkOutput<u64>>,
    batch: Vec<u64>,
}

impl Control for Recorder {
    fn emit_event(&mut self, event: &Event) -> Result<(), TaskError> {
        if let Some(traced) = traced_event(event) {
            self.seen.borrow_mut().trace.push(traced);
        }
        self.out.as_mut().map_or(Ok(()), |o| o.emit_event(event))
    }
    fn finish_step(&mut self, max_records: usize) -> Result<bool, TaskError> {
        self.out.as_mut().map_or(Ok(true), |o| o.finish_step(max_records))
    }
    fn poll_ready(&mut self) -> Result<Readiness, TaskError> {
        self.out.as_mut().map_or(Ok(Readiness::Ready), |o| o.poll_ready())
    }
    fn flush(&mut self, reason: FlushReason) -> Result<bool, TaskError> {
        self.out.as_mut().map_or(Ok(false), |o| o.flush(reason))
    }
    fn has_unflushed(&self) -> bool {
        self.out.as_ref().is_some_and(|o| o.has_unflushed())
    }
    fn close(&mut self) -> Result<(), TaskError> {
        self.out.as_mut().map_or(Ok(()), |o| o.close())
    }
    fn drain(&mut self) -> Result<bool, TaskError> {
        self.out.as_mut().map_or(Ok(true), |o| o.drain())
    }
    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingSnapshot) -> Result<(), TaskError> {
        let mut parts = OperatorStateParts::default();
        parts.push("seen", PartLayout::Subtask, encode(&self.seen.borrow().values));
        into.put_node(NODE, parts);
        self.out.as_mut().map_or(Ok(()), |o| o.snapshot_state(checkpoint, into))
    }
    fn restore_state(&mut self, from: &TaskSnapshot) -> Result<(), TaskError> {
        if let Some(part) = from.node(NODE).and_then(|p| p.get("seen")) {
            self.seen.borrow_mut().restored = Some(decode(&part.bytes));
        }
        self.out.as_mut().map_or(Ok(()), |o| o.restore_state(from))
    }
    fn notify_checkpoint(&mut self, notice: CheckpointNotice) -> Result<(), TaskError> {
        self.seen.borrow_mut().notices.push(notice);
        Ok(())
    }
}

impl TaskInput for Recorder {
    fn on_buffer(&mut self, bytes: &[u8]) -> Result<(), TaskError> {
        // SAFETY: the test's producers write buffers of `u64` records; restored buffers are
        // validated by the task before they get here.
        let values: Vec<u64> = unsafe { RecordIter::<u64>::new(bytes) }.map(deserialize::<u64>).collect();
        let mut seen = self.seen.borrow_mut();
        seen.values.extend(&values);
        seen.trace.extend(values.iter().map(u64::to_string));
        drop(seen);
        if let Some(out) = self.out.as_mut() {
            self.batch.extend(values);
            out.emit_batch(&mut self.batch)?;
        }
        Ok(())
    }
    fn chain(&mut self) -> &mut dyn Control {
        self
    }
    fn validator(&self) -> BufferValidator {
        validate_buffer::<u64>
    }
}

/// A source of 0, 1, 2, … in batches, whose position is its snapshot.
struct Counter {
    next: u64,
    end: u64,
    out: NetworkOutput<u64>,
    batch: Vec<u64>,
}

impl TaskSource for Counter {
    fn step(&mut self, max_records: usize) -> Result<SourceStatus, TaskError> {
        if self.next == self.end {
            return Ok(SourceStatus::Finished);
        }
        let until = self.end.min(self.next + max_records as u64);
        self.batch.extend(self.next..until);
        self.next = until;
        self.out.emit_batch(&mut self.batch)?;
        Ok(SourceStatus::More)
    }
    fn chain(&mut self) -> &mut dyn Control {
        &mut self.out
    }
    fn latency_markers(&self) -> Option<(Duration, u32)> {
        None
    }
    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingSnapshot) -> Result<(), TaskError> {
        let mut parts = OperatorStateParts::default();
        parts.push("position", PartLayout::Subtask, encode(&[self.next]));
        into.put_node(NODE, parts);
        self.out.snapshot_state(checkpoint, into)
    }
}

fn output(pool: &BufferPool, channel: Arc<LocalChannel>, max_backlog: u32) -> NetworkOutput<u64> {
    let config = CreditConfig { exclusive_per_channel: 0, floating_per_gate: 0, max_backlog_per_channel: max_backlog };
    let edge = OutputEdgeRt {
        partitioning: Partitioning::Forward,
        channels: vec![OutputChannel::new(channel, &config)],
        key_hash: None,
        consumer_node: NODE + 1,
        consumer_parallelism: 1,
        max_parallelism: 128,
        side: None,
    };
    let ctx = OutputCtx { pool: pool.clone(), counters: Arc::default(), node: NODE, max_backlog, subtask: 0 };
    NetworkOutput::new(vec![edge], ctx)
}

struct Harness {
    pool: BufferPool,
    bell: Arc<Doorbell>,
    mailbox: Arc<ControlMailbox>,
    reports: Arc<Reports>,
    options: BarrierOptions,
    restore: Option<Arc<TaskSnapshot>>,
}

impl Harness {
    fn new(options: BarrierOptions) -> Self {
        let bell = Arc::new(Doorbell::new());
        let mailbox = Arc::new(ControlMailbox::new(bell.clone(), ControlMailbox::DEFAULT_CAPACITY));
        Self { pool: BufferPool::new(64), bell, mailbox, reports: Arc::default(), options, restore: None }
    }

    fn env(&self) -> TaskEnv {
        TaskEnv {
            bell: self.bell.clone(),
            job: Arc::new(JobShared::new("checkpoints".into(), vec!["recorder".into(); 3], vec![1; 3])),
            counters: Arc::default(),
            buffer_timeout: Duration::ZERO,
            max_watermark_skew: None,
            batch_size: 4,
            checkpointing: Some(TaskCheckpointing {
                task: TASK,
                mailbox: self.mailbox.clone(),
                options: self.options,
                reporter: self.reports.clone(),
                restore: self.restore.clone(),
            }),
        }
    }

    /// `n` input channels fed by the test (exclusive credit `credit`), as (producers, gate).
    fn inputs(&self, n: usize, credit: u32) -> (Vec<OutputChannel>, InputGate) {
        let config = CreditConfig { exclusive_per_channel: credit, floating_per_gate: 0, max_backlog_per_channel: 64 };
        let producer_bell = Arc::new(Doorbell::new());
        let channels: Vec<_> =
            (0..n).map(|_| LocalChannel::new(credit, producer_bell.clone(), self.bell.clone())).collect();
        let outs = channels.iter().map(|c| OutputChannel::new(c.clone(), &config)).collect();
        (outs, InputGate::new(channels, &config))
    }

    /// The task's output channel, consumed by the test, with `credit` to start with.
    fn downstream(&self, credit: u32) -> (Arc<LocalChannel>, InputGate) {
        let config = CreditConfig { exclusive_per_channel: credit, floating_per_gate: 0, max_backlog_per_channel: 1 };
        let channel = LocalChannel::new(credit, self.bell.clone(), Arc::new(Doorbell::new()));
        (channel.clone(), InputGate::new(vec![channel], &config))
    }
}

fn on_executor<T>(f: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(512 << 10).make().expect("an executor").run(f)
}

fn options(mode: CheckpointMode, unaligned: bool, aligned_timeout: Option<Duration>) -> BarrierOptions {
    BarrierOptions { mode, unaligned, aligned_timeout, savepoint: false }
}

/// Values of the "seen" part of a snapshot.
fn seen_in(snapshot: &TaskSnapshot) -> Vec<u64> {
    decode(&snapshot.node(NODE).and_then(|p| p.get("seen")).expect("the recorder's state").bytes)
}

/// Two channels: 0 delivers [1], the barrier, [100]; 1 delivers [3], [4], [5], the barrier,
/// [200]; both end. The gate reads them round-robin.
fn two_channels_with_barriers(h: &Harness, kind: BarrierKind) -> (Vec<OutputChannel>, InputGate) {
    let (mut outs, gate) = h.inputs(2, 16);
    outs[0].send_buffer(buffer_of(&h.pool, &[1]));
    outs[0].send_event(barrier(1, kind));
    outs[0].send_buffer(buffer_of(&h.pool, &[100]));
    outs[0].send_event(Event::EndOfPartition);
    for v in [3, 4, 5] {
        outs[1].send_buffer(buffer_of(&h.pool, &[v]));
    }
    outs[1].send_event(barrier(1, kind));
    outs[1].send_buffer(buffer_of(&h.pool, &[200]));
    outs[1].send_event(Event::EndOfPartition);
    (outs, gate)
}

fn run_recorder(h: &Harness, gate: InputGate, out: Option<NetworkOutput<u64>>) -> (Result<(), TaskError>, Seen) {
    let env = h.env();
    on_executor(async move {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let input = Box::new(Recorder { seen: seen.clone(), out, batch: Vec::new() });
        let result = run(TaskBody::Input { input, gate }, env).await;
        let seen = std::mem::take(&mut *seen.borrow_mut());
        (result, seen)
    })
}

#[test]
fn aligned_snapshot_holds_exactly_the_records_before_every_barrier() {
    let h = Harness::new(options(CheckpointMode::ExactlyOnce, false, None));
    let (_outs, gate) = two_channels_with_barriers(&h, BarrierKind::Aligned);
    let trigger = BarrierOptions::default();
    h.mailbox.send(ControlMessage::Trigger { checkpoint_id: 9, timestamp_ms: 0, options: trigger }).unwrap();
    h.mailbox.send(ControlMessage::Notify(CheckpointNotice::Complete(8))).unwrap();
    let (result, seen) = run_recorder(&h, gate, None);
    result.unwrap();
    let taken = h.reports.taken();
    assert_eq!(taken.len(), 1);
    let (checkpoint, snapshot, metrics) = &taken[0];
    assert_eq!(*checkpoint, 1);
    assert_eq!(seen_in(snapshot), [1, 3, 4, 5], "channel 0 is blocked after its barrier: 100 comes later");
    assert!(snapshot.input_channels.is_empty() && snapshot.output_channels.is_empty());
    assert!(!metrics.unaligned);
    assert_eq!(seen.values, [1, 3, 4, 5, 100, 200]);
    assert_eq!(seen.notices, [CheckpointNotice::Complete(8)]);
    let declined = h.reports.declined();
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0].0, 9);
    assert!(declined[0].1.contains("not a source"), "{}", declined[0].1);
    assert_eq!(h.pool.in_use(), 0);
}

#[test]
fn at_least_once_never_blocks_a_channel() {
    let h = Harness::new(options(CheckpointMode::AtLeastOnce, false, None));
    let (_outs, gate) = two_channels_with_barriers(&h, BarrierKind::Aligned);
    let (result, seen) = run_recorder(&h, gate, None);
    result.unwrap();
    let taken = h.reports.taken();
    assert_eq!(taken.len(), 1);
    // Channel 0 keeps being read after its barrier (100 and its end) until channel 1's arrives.
    assert_eq!(seen_in(&taken[0].1), [1, 3, 4, 100, 5]);
    assert!(!taken[0].2.unaligned);
    assert_eq!(seen.values, [1, 3, 4, 100, 5, 200]);
}

#[test]
fn an_unaligned_barrier_passes_a_backpressured_task_at_once_with_the_overtaken_buffers() {
    let h = Harness::new(options(CheckpointMode::ExactlyOnce, true, None));
    let (mut ins, gate) = h.inputs(1, 8);
    let (down, mut down_gate) = h.downstream(0);
    let out = output(&h.pool, down.clone(), 1);
    let env = h.env();
    let reports = h.reports.clone();
    let pool = h.pool.clone();
    on_executor(async move {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let input = Box::new(Recorder { seen: seen.clone(), out: Some(out), batch: Vec::new() });
        let task = glommio::spawn_local(run(TaskBody::Input { input, gate }, env));
        let settle = || glommio::timer::sleep(Duration::from_millis(20));
        ins[0].send_buffer(buffer_of(&pool, &[1]));
        settle().await;
        // [1] went out into a buffer that waits for credit: the task is blocked.
        assert_eq!(seen.borrow().values, [1]);
        ins[0].send_buffer(buffer_of(&pool, &[2]));
        ins[0].send_buffer(buffer_of(&pool, &[3]));
        settle().await;
        assert_eq!(seen.borrow().values, [1], "no room downstream: nothing more is read");
        ins[0].send_event(barrier(1, BarrierKind::Unaligned));
        settle().await;
        let taken = reports.taken();
        assert_eq!(taken.len(), 1, "the checkpoint completed while the task was blocked");
        let (checkpoint, snapshot, metrics) = &taken[0];
        assert_eq!(*checkpoint, 1);
        assert_eq!(seen_in(snapshot), [1]);
        let input_state: Vec<Vec<u64>> = snapshot.input_channels[0].buffers.iter().map(|b| values_of(b)).collect();
        assert_eq!((snapshot.input_channels[0].channel, input_state), (0, vec![vec![2], vec![3]]));
        assert_eq!(snapshot.output_channels.len(), 1);
        let output_state: Vec<Vec<u64>> = snapshot.output_channels[0].buffers.iter().map(|b| values_of(b)).collect();
        assert_eq!((snapshot.output_channels[0].channel, output_state), (0, vec![vec![1]]));
        let layout = snapshot.node(NODE).and_then(|p| p.get("network-output")).expect("the output's channel range");
        assert_eq!(layout.bytes, [0, 0, 0, 0, 1, 0, 0, 0]);
        assert!(metrics.unaligned);
        let bytes: u64 = [&snapshot.input_channels, &snapshot.output_channels]
            .iter()
            .flat_map(|c| c.iter().flat_map(|s| &s.buffers))
            .map(|b| b.len() as u64)
            .sum();
        assert_eq!(metrics.channel_bytes, bytes);
        // Downstream, the barrier comes first, then everything in order.
        ins[0].send_event(Event::EndOfPartition);
        let mut items = Vec::new();
        loop {
            match down_gate.poll_next() {
                Some((_, ChannelItem::Event(Event::EndOfPartition))) => break,
                Some((c, ChannelItem::Buffer(b))) => {
                    items.push(format!("{:?}", values_of(b.as_slice())));
                    drop(b);
                    down_gate.release(c);
                }
                Some((_, ChannelItem::Event(e))) => items.push(format!("{e:?}")),
                None => {
                    down_gate.release(0);
                    settle().await;
                }
            }
        }
        assert_eq!(items[0], format!("{:?}", barrier(1, BarrierKind::Unaligned)));
        assert_eq!(items[1..], ["[1]", "[2]", "[3]"]);
        task.await.unwrap();
        assert_eq!(seen.borrow().values, [1, 2, 3]);
    });
    assert_eq!(h.pool.in_use(), 0);
}

#[test]
fn aligned_with_a_timeout_switches_to_unaligned_and_records_the_late_channel() {
    let h = Harness::new(options(CheckpointMode::ExactlyOnce, true, Some(Duration::from_millis(30))));
    let (mut ins, gate) = h.inputs(2, 8);
    let env = h.env();
    let reports = h.reports.clone();
    let pool = h.pool.clone();
    on_executor(async move {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let input = Box::new(Recorder { seen: seen.clone(), out: None, batch: Vec::new() });
        let task = glommio::spawn_local(run(TaskBody::Input { input, gate }, env));
        ins[0].send_buffer(buffer_of(&pool, &[1]));
        ins[0].send_event(barrier(1, BarrierKind::Aligned));
        ins[0].send_buffer(buffer_of(&pool, &[100]));
        ins[1].send_buffer(buffer_of(&pool, &[2]));
        glommio::timer::sleep(Duration::from_millis(10)).await;
        assert_eq!(seen.borrow().values, [1, 2], "channel 0 is blocked while aligning");
        glommio::timer::sleep(Duration::from_millis(60)).await;
        assert_eq!(seen.borrow().values, [1, 2, 100], "after the timeout channel 0 is read again");
        assert!(reports.taken().is_empty(), "channel 1's in-flight data is still being recorded");
        ins[1].send_buffer(buffer_of(&pool, &[3]));
        ins[1].send_event(barrier(1, BarrierKind::Aligned));
        ins[1].send_buffer(buffer_of(&pool, &[4]));
        ins[0].send_event(Event::EndOfPartition);
        ins[1].send_event(Event::EndOfPartition);
        task.await.unwrap();
        assert_eq!(seen.borrow().values, [1, 2, 100, 3, 4]);
    });
    let taken = h.reports.taken();
    assert_eq!(taken.len(), 1);
    let (_, snapshot, metrics) = &taken[0];
    assert_eq!(seen_in(snapshot), [1, 2]);
    assert_eq!(snapshot.input_channels.len(), 1);
    assert_eq!(snapshot.input_channels[0].channel, 1);
    assert_eq!(snapshot.input_channels[0].buffers.iter().map(|b| values_of(b)).collect::<Vec<_>>(), [vec![3]]);
    assert!(metrics.unaligned);
    assert!(metrics.alignment_ms >= 30, "aligning lasted until the switch: {metrics:?}");
}

#[test]
fn a_newer_barrier_declines_the_unfinished_alignment() {
    let h = Harness::new(options(CheckpointMode::ExactlyOnce, false, None));
    let (mut outs, gate) = h.inputs(2, 16);
    outs[0].send_event(barrier(1, BarrierKind::Aligned));
    outs[1].send_event(barrier(2, BarrierKind::Aligned));
    outs[0].send_event(barrier(2, BarrierKind::Aligned));
    outs[0].send_event(Event::EndOfPartition);
    outs[1].send_event(Event::EndOfPartition);
    let (result, _) = run_recorder(&h, gate, None);
    result.unwrap();
    assert_eq!(h.reports.taken().iter().map(|t| t.0).collect::<Vec<_>>(), [2]);
    let declined = h.reports.declined();
    assert_eq!(declined.iter().map(|d| d.0).collect::<Vec<_>>(), [1]);
    assert!(declined[0].1.contains("checkpoint 2"), "{}", declined[0].1);
}

fn restored_snapshot(input: Vec<Vec<u8>>, output: Vec<Vec<u8>>) -> TaskSnapshot {
    let mut parts = OperatorStateParts::default();
    parts.push("seen", PartLayout::Subtask, encode(&[5, 6]));
    parts.push("network-output", PartLayout::Subtask, [0u32.to_le_bytes(), 1u32.to_le_bytes()].concat());
    TaskSnapshot {
        nodes: vec![(NODE as u32, parts)],
        input_channels: vec![ChannelState::of_buffers(0, input)],
        output_channels: vec![ChannelState::of_buffers(0, output)],
        input_watermarks: None,
    }
}

#[test]
fn restored_channel_state_comes_out_before_new_data() {
    let mut h = Harness::new(BarrierOptions::default());
    let bytes = |values: &[u64]| buffer_of(&h.pool, values).as_slice().to_vec();
    let snapshot = restored_snapshot(vec![bytes(&[7]), bytes(&[8])], vec![bytes(&[42])]);
    h.restore = Some(Arc::new(snapshot));
    let (mut ins, gate) = h.inputs(1, 8);
    ins[0].send_buffer(buffer_of(&h.pool, &[9]));
    ins[0].send_event(Event::EndOfPartition);
    let (down, mut down_gate) = h.downstream(16);
    let out = output(&h.pool, down, 4);
    let (result, seen) = run_recorder(&h, gate, Some(out));
    result.unwrap();
    assert_eq!(seen.restored.as_deref(), Some(&[5, 6][..]));
    assert_eq!(seen.values, [7, 8, 9], "the in-flight data first, then the gate");
    let mut delivered = Vec::new();
    while let Some((c, item)) = down_gate.poll_next() {
        if let ChannelItem::Buffer(b) = item {
            delivered.push(values_of(b.as_slice()));
            drop(b);
            down_gate.release(c);
        }
    }
    assert_eq!(delivered, [vec![42], vec![7], vec![8], vec![9]], "restored output before any new output");
    assert_eq!(h.pool.in_use(), 0);
}

#[test]
fn corrupt_restored_channel_state_fails_the_task_naming_the_channel() {
    let mut h = Harness::new(BarrierOptions::default());
    let good = buffer_of(&h.pool, &[1]).as_slice().to_vec();
    let mut bad = good.clone();
    bad[0] = 0xee;
    for (input, output, named, read) in [
        (vec![good.clone(), bad.clone()], vec![good.clone()], "buffer 1 of restored input channel 0", vec![1]),
        (vec![good.clone()], vec![bad.clone()], "buffer 0 of restored output channel 0", vec![]),
    ] {
        h.restore = Some(Arc::new(restored_snapshot(input, output)));
        let (_ins, gate) = h.inputs(1, 8);
        let (down, _down_gate) = h.downstream(16);
        let (result, seen) = run_recorder(&h, gate, Some(output_for(&h, down)));
        match result {
            Err(TaskError::Checkpoint { message, .. }) => assert!(message.contains(named), "{message}"),
            other => panic!("expected a checkpoint error, got {other:?}"),
        }
        assert_eq!(seen.values, read, "the invalid buffer is not read");
    }

    fn output_for(h: &Harness, down: Arc<LocalChannel>) -> NetworkOutput<u64> {
        output(&h.pool, down, 4)
    }
}

#[test]
fn a_source_snapshots_its_position_and_its_barrier_overtakes_blocked_output() {
    let h = Harness::new(options(CheckpointMode::ExactlyOnce, true, None));
    let (down, mut down_gate) = h.downstream(0);
    let out = output(&h.pool, down, 1);
    let env = h.env();
    let mailbox = h.mailbox.clone();
    let reports = h.reports.clone();
    on_executor(async move {
        let source = Box::new(Counter { next: 0, end: 12, out, batch: Vec::new() });
        let task = glommio::spawn_local(run(TaskBody::Source(source), env));
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let options = options(CheckpointMode::ExactlyOnce, true, None);
        mailbox.send(ControlMessage::Trigger { checkpoint_id: 3, timestamp_ms: 77, options }).unwrap();
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let taken = reports.taken();
        assert_eq!(taken.len(), 1, "the trigger is taken while the output is blocked");
        let (checkpoint, snapshot, metrics) = &taken[0];
        assert_eq!(*checkpoint, 3);
        let position = decode(&snapshot.node(NODE).and_then(|p| p.get("position")).unwrap().bytes);
        assert_eq!(position, [4], "one batch of 4 went out before the output filled up");
        let overtaken: Vec<Vec<u64>> = snapshot.output_channels[0].buffers.iter().map(|b| values_of(b)).collect();
        assert_eq!(overtaken, [vec![0, 1, 2, 3]]);
        assert!(metrics.unaligned && metrics.alignment_ms == 0);
        let first = down_gate.poll_next().map(|(_, item)| format!("{item:?}"));
        assert_eq!(first, Some(format!("{:?}", ChannelItem::Event(barrier_at(3, 77)))));
        let mut values = Vec::new();
        loop {
            match down_gate.poll_next() {
                Some((_, ChannelItem::Event(Event::EndOfPartition))) => break,
                Some((c, ChannelItem::Buffer(b))) => {
                    values.extend(values_of(b.as_slice()));
                    drop(b);
                    down_gate.release(c);
                }
                Some((_, ChannelItem::Event(_))) => {}
                None => {
                    down_gate.release(0);
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        assert_eq!(values, (0..12).collect::<Vec<_>>());
        task.await.unwrap();
    });
    assert_eq!(h.pool.in_use(), 0);

    fn barrier_at(checkpoint_id: CheckpointId, timestamp_ms: i64) -> Event {
        Event::CheckpointBarrier { checkpoint_id, timestamp_ms, kind: BarrierKind::Unaligned }
    }
}

/// A source whose batch parks records in its output (no credit downstream) is triggered
/// unaligned: the barrier overtakes the parked records at once, however many there are, and the
/// snapshot is reported at once. The records before the barrier downstream plus the output
/// channel state are exactly the records before the snapshot's position, and the records after
/// the barrier are the channel state, then the rest. (The channel state is the producer's copy
/// of what it still held, queued buffers and parked records, and the consumer's copy of what
/// waited in its queue.)
#[test]
fn records_parked_ahead_of_an_unaligned_barrier_are_channel_state() {
    for batch in [50_000u64, 100_000] {
        let h = Harness::new(options(CheckpointMode::ExactlyOnce, true, None));
        let (down, mut down_gate) = h.downstream(0);
        let out = output(&h.pool, down, 1);
        let mut env = h.env();
        env.batch_size = batch as usize;
        let mailbox = h.mailbox.clone();
        let reports = h.reports.clone();
        let end = 2 * batch;
        let (before, consumer_copy, after) = on_executor(async move {
            let source = Box::new(Counter { next: 0, end, out, batch: Vec::new() });
            let task = glommio::spawn_local(run(TaskBody::Source(source), env));
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let options = options(CheckpointMode::ExactlyOnce, true, None);
            mailbox.send(ControlMessage::Trigger { checkpoint_id: 1, timestamp_ms: 0, options }).unwrap();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert_eq!(reports.taken().len(), 1, "batch {batch}: the snapshot is reported at once");
            let (mut before, mut after, mut barrier_seen) = (Vec::new(), Vec::new(), false);
            let mut consumer_copy = Vec::new();
            loop {
                match down_gate.poll_next() {
                    Some((_, ChannelItem::Event(Event::EndOfPartition))) => break,
                    Some((c, ChannelItem::Event(Event::CheckpointBarrier { .. }))) => {
                        // What waited in the consumer's queue is the consumer's to copy.
                        let mut copied = InFlightCopy::default();
                        down_gate.copy_overtaken(c, &mut copied);
                        consumer_copy = copied.buffers.iter().flat_map(|b| values_of(b)).collect();
                        barrier_seen = true;
                    }
                    Some((c, ChannelItem::Buffer(b))) => {
                        let values = values_of(b.as_slice());
                        if barrier_seen {
                            after.extend(values)
                        } else {
                            before.extend(values)
                        }
                        drop(b);
                        down_gate.release(c);
                    }
                    Some((_, ChannelItem::Event(_))) => {}
                    None => {
                        down_gate.release(0);
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            task.await.unwrap();
            (before, consumer_copy, after)
        });
        let taken = h.reports.taken();
        assert_eq!(taken.len(), 1, "batch {batch}");
        let snapshot = &taken[0].1;
        let position = decode(&snapshot.node(NODE).and_then(|p| p.get("position")).unwrap().bytes)[0];
        assert_eq!(position, batch, "the trigger came after the first batch");
        let state: Vec<u64> =
            snapshot.output_channels.iter().flat_map(|c| c.buffers.iter().flat_map(|b| values_of(b))).collect();
        assert!(!state.is_empty());
        let in_flight: Vec<u64> = consumer_copy.iter().chain(&state).copied().collect();
        let mut upto: Vec<u64> = before.clone();
        upto.extend(&in_flight);
        let summary = format!(
            "batch {batch}: {} before the barrier, {} copied by the consumer, {} by the producer, {} after",
            before.len(),
            consumer_copy.len(),
            state.len(),
            after.len()
        );
        assert_eq!(
            first_difference(&upto, &(0..position).collect::<Vec<_>>()),
            None,
            "before the barrier or in the state; {summary}"
        );
        let mut rest = in_flight;
        rest.extend(position..end);
        assert_eq!(first_difference(&after, &rest), None, "after the barrier, the state first; {summary}");
        assert_eq!(h.pool.in_use(), 0);
    }
}

/// Where two sequences first differ (index and the values there), without printing them whole.
/// An unaligned barrier overtakes the records parked in an output of two edges (round-robin
/// and broadcast, four channels without credit) at once, and captures them in the channels
/// their selectors pick: each channel's state, replayed, is exactly what the channel delivers
/// after the barrier and before the records emitted after it, its watermark in its place.
#[test]
fn records_parked_on_several_edges_are_captured_in_their_channels() {
    let pool = BufferPool::new(128);
    let config = CreditConfig { exclusive_per_channel: 0, floating_per_gate: 0, max_backlog_per_channel: 1 };
    let bell = Arc::new(Doorbell::new());
    let channels: Vec<_> = (0..4).map(|_| LocalChannel::new(0, bell.clone(), Arc::new(Doorbell::new()))).collect();
    let edge = |partitioning, channels: &[Arc<LocalChannel>]| OutputEdgeRt {
        partitioning,
        channels: channels.iter().map(|c| OutputChannel::new(c.clone(), &config)).collect(),
        key_hash: None,
        consumer_node: NODE + 1,
        consumer_parallelism: 2,
        max_parallelism: 128,
        side: None,
    };
    let edges = vec![edge(Partitioning::Rebalance, &channels[..2]), edge(Partitioning::Broadcast, &channels[2..])];
    let ctx = OutputCtx { pool: pool.clone(), counters: Arc::default(), node: NODE, max_backlog: 1, subtask: 0 };
    let mut out = NetworkOutput::<u64>::new(edges, ctx);
    let mut gate = InputGate::new(channels, &config);
    let (before, after) = (60_000u64, 1_000u64);
    let mut batch: Vec<u64> = (0..before).collect();
    out.emit_batch(&mut batch).unwrap();
    out.emit_event(&Event::Watermark(70)).unwrap();
    batch.extend(before..2 * before);
    out.emit_batch(&mut batch).unwrap();
    let sink = CaptureSink::default();
    capturing(&sink, || out.emit_event(&barrier(1, BarrierKind::Unaligned))).unwrap();
    let mut snapshot = TaskSnapshot::default();
    sink.borrow_mut().put_into(&mut snapshot);
    batch.extend(2 * before..2 * before + after);
    out.emit_batch(&mut batch).unwrap();
    out.close().unwrap();

    let mut delivered: Vec<Vec<String>> = vec![Vec::new(); 4];
    let mut ended = 0;
    while ended < 4 {
        out.poll_ready().unwrap();
        out.drain().unwrap();
        match gate.poll_next() {
            Some((c, ChannelItem::Event(Event::CheckpointBarrier { .. }))) => {
                assert!(delivered[c].is_empty(), "channel {c}: nothing overtakes the barrier");
                delivered[c].push("B".into());
            }
            Some((c, ChannelItem::Buffer(b))) => {
                delivered[c].extend(values_of(b.as_slice()).iter().map(u64::to_string));
                drop(b);
                gate.release(c);
            }
            Some((_, ChannelItem::Event(Event::EndOfPartition))) => ended += 1,
            Some((c, ChannelItem::Event(e))) => delivered[c].extend(traced_event(&e)),
            None => (0..4).for_each(|c| gate.release(c)),
        }
    }
    let total = 2 * before + after;
    for (c, delivered) in delivered.iter().enumerate() {
        let share = |range: std::ops::Range<u64>| -> Vec<String> {
            range.filter(|v| c >= 2 || v % 2 == c as u64).map(|v| v.to_string()).collect()
        };
        let mut expected = vec!["B".to_string()];
        expected.extend(share(0..before));
        expected.push("W70".into());
        expected.extend(share(before..total));
        assert_eq!(first_difference(delivered, &expected), None, "channel {c} delivers its share in order");

        let state = snapshot.output_channels.iter().find(|s| s.channel == c as u32).expect("state of every channel");
        let replayed: Vec<String> = state
            .replay()
            .into_iter()
            .flat_map(|step| match step {
                Replay::Buffer(i) => values_of(&state.buffers[i]).iter().map(u64::to_string).collect(),
                Replay::Event(e) => traced_event(&e).into_iter().collect::<Vec<_>>(),
            })
            .collect();
        let upto = expected.len() - share(2 * before..total).len();
        assert_eq!(
            first_difference(&replayed, &expected[1..upto]),
            None,
            "channel {c}: the state is what the barrier overtook"
        );
    }
    drop(out);
    assert_eq!(pool.in_use(), 0);
}

fn first_difference<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Option<(usize, Option<T>, Option<T>)> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)).map(|i| (i, a.get(i).cloned(), b.get(i).cloned()))
}

/// Everything the test's consumer of `gate` (one channel) reads until end of partition, traced
/// (buffers by their values, e.g. "[1, 2]"; barriers as "barrier"), returning credit as it goes.
async fn read_all(gate: &mut InputGate) -> Vec<String> {
    let mut items = Vec::new();
    loop {
        match gate.poll_next() {
            Some((_, ChannelItem::Event(Event::EndOfPartition))) => return items,
            Some((c, ChannelItem::Buffer(b))) => {
                items.push(format!("{:?}", values_of(b.as_slice())));
                drop(b);
                gate.release(c);
            }
            Some((_, ChannelItem::Event(Event::CheckpointBarrier { .. }))) => items.push("barrier".into()),
            Some((_, ChannelItem::Event(e))) => items.extend(traced_event(&e)),
            None => {
                gate.release(0);
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

/// The snapshot as the task's files hold it (encoded, validated, decoded).
fn through_bytes(snapshot: &TaskSnapshot) -> TaskSnapshot {
    corestream_state::part::decode(&corestream_state::part::encode(snapshot).unwrap()).unwrap()
}

/// An unaligned checkpoint of a backpressured task with watermarks between the buffers on both
/// sides: the output's barrier overtakes [1], W5, [2] waiting for credit, the input's overtakes
/// W10, [3], W20, [4] waiting in the gate. Both are channel state with their watermarks in place,
/// next to the valve at W5. A task restored from that snapshot (through its encoding) sends
/// downstream exactly what the original sent after its barrier, and its chain gets the records
/// and watermarks exactly as the original's did after its snapshot.
#[test]
fn watermarks_in_channel_state_are_replayed_in_their_original_order() {
    use crate::checkpoint::{ChannelEvent, TimeEvent};

    let h = Harness::new(options(CheckpointMode::ExactlyOnce, true, None));
    let (mut ins, gate) = h.inputs(1, 8);
    let (down, mut down_gate) = h.downstream(0);
    let out = output(&h.pool, down, 2);
    let env = h.env();
    let reports = h.reports.clone();
    let pool = h.pool.clone();
    let (original_trace, original_down) = on_executor(async move {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let input = Box::new(Recorder { seen: seen.clone(), out: Some(out), batch: Vec::new() });
        let task = glommio::spawn_local(run(TaskBody::Input { input, gate }, env));
        let settle = || glommio::timer::sleep(Duration::from_millis(20));
        ins[0].send_buffer(buffer_of(&pool, &[1]));
        ins[0].send_event(Event::Watermark(5));
        ins[0].send_buffer(buffer_of(&pool, &[2]));
        settle().await;
        assert_eq!(seen.borrow().trace, ["1", "W5", "2"], "two buffers wait for credit: the task is blocked");
        ins[0].send_event(Event::Watermark(10));
        ins[0].send_buffer(buffer_of(&pool, &[3]));
        ins[0].send_event(Event::Watermark(20));
        ins[0].send_buffer(buffer_of(&pool, &[4]));
        ins[0].send_event(barrier(1, BarrierKind::Unaligned));
        settle().await;
        assert_eq!(reports.taken().len(), 1, "the checkpoint completed while the task was blocked");
        ins[0].send_event(Event::EndOfPartition);
        let down = read_all(&mut down_gate).await;
        task.await.unwrap();
        let trace = std::mem::take(&mut seen.borrow_mut().trace);
        (trace, down)
    });
    assert_eq!(original_trace, ["1", "W5", "2", "W10", "3", "W20", "4"]);
    assert_eq!(original_down, ["barrier", "[1]", "W5", "[2]", "W10", "[3]", "W20", "[4]"]);
    let (_, snapshot, _) = h.reports.taken().remove(0);
    assert_eq!(seen_in(&snapshot), [1, 2]);
    let at = |after, w| ChannelEvent { after, event: TimeEvent::Watermark(w) };
    let in_state = &snapshot.input_channels[0];
    assert_eq!(in_state.buffers.iter().map(|b| values_of(b)).collect::<Vec<_>>(), [vec![3], vec![4]]);
    assert_eq!(in_state.events, [at(0, 10), at(1, 20)]);
    let out_state = &snapshot.output_channels[0];
    assert_eq!(out_state.buffers.iter().map(|b| values_of(b)).collect::<Vec<_>>(), [vec![1], vec![2]]);
    assert_eq!(out_state.events, [at(1, 5)]);
    let valve = snapshot.input_watermarks.as_ref().expect("the valve");
    assert_eq!((valve.clock, valve.channels[0].watermark), (5, 5));

    let mut h = Harness::new(BarrierOptions::default());
    h.restore = Some(Arc::new(through_bytes(&snapshot)));
    let (mut ins, gate) = h.inputs(1, 8);
    ins[0].send_event(Event::EndOfPartition);
    let (down, mut down_gate) = h.downstream(16);
    let out = output(&h.pool, down, 2);
    let (result, seen) = run_recorder(&h, gate, Some(out));
    result.unwrap();
    assert_eq!(seen.trace, original_trace[3..], "after the restored state, as the original after its snapshot");
    let restored_down = on_executor(async move { read_all(&mut down_gate).await });
    assert_eq!(restored_down, original_down[1..], "downstream gets what it got after the original's barrier");
    assert_eq!(h.pool.in_use(), 0);
}

/// A restored task with two input channels starts from the checkpoint's watermark valve: the
/// replayed W55 is behind channel 0's restored watermark (ignored), W70 and W80 advance the
/// combined watermark at once because channel 1 stood at 200 (with a fresh valve, channel 1
/// would hold it back until it sent a watermark again, and records 7 and 8 would meet an older
/// event time than in the original run), and an idle status in the in-flight data takes effect
/// in its place.
#[test]
fn a_restored_task_combines_replayed_watermarks_with_the_restored_valve() {
    use crate::checkpoint::{ChannelEvent, ChannelWatermark, InputWatermarks, TimeEvent};

    let mut h = Harness::new(BarrierOptions::default());
    let bytes = |values: &[u64]| buffer_of(&h.pool, values).as_slice().to_vec();
    let mut snapshot = restored_snapshot(vec![bytes(&[7]), bytes(&[8])], vec![bytes(&[42]), bytes(&[43])]);
    let at = |after, event| ChannelEvent { after, event };
    snapshot.input_channels[0].events = vec![
        at(0, TimeEvent::Watermark(55)),
        at(0, TimeEvent::Watermark(70)),
        at(1, TimeEvent::Watermark(80)),
        at(2, TimeEvent::Idle),
    ];
    snapshot.output_channels[0].events = vec![at(1, TimeEvent::Watermark(40))];
    let channel = |watermark| ChannelWatermark { watermark, idle: false, aligned: true };
    snapshot.input_watermarks =
        Some(InputWatermarks { clock: 60, idle: false, channels: vec![channel(60), channel(200)] });
    h.restore = Some(Arc::new(through_bytes(&snapshot)));
    let (mut ins, gate) = h.inputs(2, 8);
    ins[1].send_buffer(buffer_of(&h.pool, &[9]));
    ins[1].send_event(Event::Watermark(250));
    ins[0].send_event(Event::EndOfPartition);
    ins[1].send_event(Event::EndOfPartition);
    let (down, mut down_gate) = h.downstream(16);
    let out = output(&h.pool, down, 4);
    let (result, seen) = run_recorder(&h, gate, Some(out));
    result.unwrap();
    assert_eq!(
        seen.trace,
        ["W70", "7", "W80", "8", "W200", "9", "W250"],
        "channel 0 going idle releases the clock to channel 1's 200"
    );
    let down = on_executor(async move { read_all(&mut down_gate).await });
    assert_eq!(down, ["[42]", "W40", "[43]", "W70", "[7]", "W80", "[8]", "W200", "[9]", "W250"]);

    let mut wrong = snapshot.clone();
    wrong.input_watermarks.as_mut().unwrap().channels.pop();
    h.restore = Some(Arc::new(wrong));
    let (_ins, gate) = h.inputs(2, 8);
    let (result, seen) = run_recorder(&h, gate, None);
    match result {
        Err(TaskError::Checkpoint { message, .. }) => {
            assert!(message.contains("watermarks are of 1 input channels, but the task has 2"), "{message}")
        }
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
    assert!(seen.trace.is_empty(), "nothing is replayed from a refused state");

    let mut misplaced = snapshot;
    misplaced.input_channels[0].events.push(at(3, TimeEvent::Active));
    h.restore = Some(Arc::new(misplaced));
    let (_ins, gate) = h.inputs(2, 8);
    let (result, _) = run_recorder(&h, gate, None);
    match result {
        Err(TaskError::Checkpoint { message, .. }) => {
            assert!(message.contains("event 4 of restored input channel 0 is placed after buffer 3"), "{message}")
        }
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

/// A [`Counter`] that reports `Finished` with its last batch rather than on the next step.
struct FinishingCounter(Counter);

impl TaskSource for FinishingCounter {
    fn step(&mut self, max_records: usize) -> Result<SourceStatus, TaskError> {
        let status = self.0.step(max_records)?;
        Ok(if self.0.next == self.0.end { SourceStatus::Finished } else { status })
    }
    fn chain(&mut self) -> &mut dyn Control {
        self.0.chain()
    }
    fn latency_markers(&self) -> Option<(Duration, u32)> {
        None
    }
    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingSnapshot) -> Result<(), TaskError> {
        self.0.snapshot_state(checkpoint, into)
    }
}

/// A source whose input has ended while its last batch is still parked behind a channel
/// without credit takes a trigger while that batch drains: the snapshot (at the end position)
/// is reported, where the trigger used to wait in the mailbox until the task ended and was
/// then dropped.
#[test]
fn a_source_finishing_behind_a_full_channel_takes_triggers() {
    let batch = 100_000u64;
    let h = Harness::new(options(CheckpointMode::ExactlyOnce, true, None));
    let (down, mut down_gate) = h.downstream(0);
    let out = output(&h.pool, down, 1);
    let mut env = h.env();
    env.batch_size = batch as usize;
    let mailbox = h.mailbox.clone();
    let received = on_executor(async move {
        let source = Box::new(FinishingCounter(Counter { next: 0, end: batch, out, batch: Vec::new() }));
        let task = glommio::spawn_local(run(TaskBody::Source(source), env));
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let options = options(CheckpointMode::ExactlyOnce, true, None);
        mailbox.send(ControlMessage::Trigger { checkpoint_id: 1, timestamp_ms: 0, options }).unwrap();
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let mut received = Vec::new();
        loop {
            match down_gate.poll_next() {
                Some((_, ChannelItem::Event(Event::EndOfPartition))) => break,
                Some((c, ChannelItem::Buffer(b))) => {
                    received.extend(values_of(b.as_slice()));
                    drop(b);
                    down_gate.release(c);
                }
                Some((_, ChannelItem::Event(_))) => {}
                None => {
                    down_gate.release(0);
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        task.await.unwrap();
        received
    });
    let taken = h.reports.taken();
    assert_eq!(taken.len(), 1, "the trigger taken while the last batch drained");
    let position = decode(&taken[0].1.node(NODE).and_then(|p| p.get("position")).unwrap().bytes)[0];
    assert_eq!(position, batch);
    assert_eq!(first_difference(&received, &(0..batch).collect::<Vec<_>>()), None);
    assert_eq!(h.pool.in_use(), 0);
}

/// Runs the recorder on `gate` with `max_watermark_skew` milliseconds, feeding nothing more.
fn run_recorder_with_skew(h: &Harness, gate: InputGate, skew: Option<u64>) -> Seen {
    let mut env = h.env();
    env.max_watermark_skew = skew.map(Duration::from_millis);
    on_executor(async move {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let input = Box::new(Recorder { seen: seen.clone(), out: None, batch: Vec::new() });
        run(TaskBody::Input { input, gate }, env).await.unwrap();
        let seen = std::mem::take(&mut *seen.borrow_mut());
        seen
    })
}

/// Channel 0 is far ahead in event time (1000); channel 1 starts at 50 and catches up to 950
/// after three buffers.
fn one_channel_far_ahead(h: &Harness) -> InputGate {
    let (mut outs, gate) = h.inputs(2, 16);
    outs[0].send_event(Event::Watermark(1000));
    for v in [10, 11] {
        outs[0].send_buffer(buffer_of(&h.pool, &[v]));
    }
    outs[0].send_event(Event::EndOfPartition);
    outs[1].send_event(Event::Watermark(50));
    for v in [20, 21, 22] {
        outs[1].send_buffer(buffer_of(&h.pool, &[v]));
    }
    outs[1].send_event(Event::Watermark(950));
    outs[1].send_buffer(buffer_of(&h.pool, &[23]));
    outs[1].send_event(Event::EndOfPartition);
    gate
}

#[test]
fn a_channel_far_ahead_in_event_time_is_read_after_the_others_catch_up() {
    let h = Harness::new(options(CheckpointMode::ExactlyOnce, false, None));
    let seen = run_recorder_with_skew(&h, one_channel_far_ahead(&h), Some(100));
    assert_eq!(seen.values, [20, 21, 22, 10, 23, 11], "channel 0 waits until channel 1 is within 100 of it");
    let seen = run_recorder_with_skew(&h, one_channel_far_ahead(&h), None);
    assert_eq!(seen.values, [10, 20, 11, 21, 22, 23], "without a bound the channels are read in turn");
    let seen = run_recorder_with_skew(&h, one_channel_far_ahead(&h), Some(2000));
    assert_eq!(seen.values, [10, 20, 11, 21, 22, 23], "within the bound nothing is held");
    assert_eq!(h.pool.in_use(), 0);
}

#[test]
fn a_held_channel_is_read_when_the_slow_one_stays_silent() {
    let h = Harness::new(options(CheckpointMode::ExactlyOnce, false, None));
    let (mut ins, gate) = h.inputs(2, 16);
    let mut env = h.env();
    env.max_watermark_skew = Some(Duration::from_millis(100));
    let pool = h.pool.clone();
    on_executor(async move {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let input = Box::new(Recorder { seen: seen.clone(), out: None, batch: Vec::new() });
        let task = glommio::spawn_local(run(TaskBody::Input { input, gate }, env));
        let read = |n: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..10_000 {
                    if seen.borrow().values.len() >= n {
                        return seen.borrow().values.clone();
                    }
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                panic!("the task read {:?}, not {n} values", seen.borrow().values);
            }
        };
        ins[1].send_event(Event::Watermark(50));
        ins[0].send_event(Event::Watermark(1000));
        ins[0].send_buffer(buffer_of(&pool, &[10]));
        let started = std::time::Instant::now();
        assert_eq!(read(1).await, [10]);
        assert!(started.elapsed() >= super::HOLD_PATIENCE, "channel 0 was held while channel 1 might still send");
        ins[0].send_buffer(buffer_of(&pool, &[11]));
        assert_eq!(read(2).await, [10, 11], "lifted until event time advances");
        ins[1].send_buffer(buffer_of(&pool, &[20]));
        ins[1].send_event(Event::Watermark(60));
        assert_eq!(read(3).await, [10, 11, 20]);
        glommio::timer::sleep(Duration::from_millis(1)).await;
        ins[0].send_buffer(buffer_of(&pool, &[12]));
        for _ in 0..100 {
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
        }
        assert_eq!(seen.borrow().values, [10, 11, 20], "event time moved: channel 0 is held again");
        for channel in &mut ins {
            channel.send_event(Event::EndOfPartition);
        }
        task.await.unwrap();
        assert_eq!(seen.borrow().values, [10, 11, 20, 12]);
    });
    assert_eq!(h.pool.in_use(), 0);
}
