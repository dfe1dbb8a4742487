//! The task loop. A task is one subtask of one chain, run as a cooperative future on its slot's
//! executor. Its loop: wait until the chain's output has room (backpressure), take the next
//! source batch or input buffer, run it through the chain, and keep the flush policy (idle →
//! flush at once; busy → flush after the buffer timeout). In-band events are handled between
//! buffers: end-of-partition, watermarks (through the watermark valve), checkpoint barriers
//! (through the barrier aligner) and latency markers. At end of input the chain finishes in
//! bounded steps, signals end-of-partition and drains what credit allows. A task restored from
//! a checkpoint starts from the checkpoint's watermark valve and replays the in-flight data
//! first: buffers and the watermarks and statuses between them, in their original order.
//!
//! With latency tracking on, a source task emits a latency marker after a batch (or an idle
//! poll) once its interval has passed: one clock read per batch, none per record, nothing when
//! tracking is off. An idle source wakes for its markers (as in Flink, where they come from a
//! timer independent of the data), so a quiet stream still reports its path's latency. Markers
//! follow the records emitted before them; an exchange sends each on one channel, round-robin.
//!
//! An idle source may name the time it wants to be woken ([`SourceStatus::IdleUntil`]): its task
//! then waits on its doorbell until the earlier of that time and its next marker, on a timer
//! even for waits of microseconds. (Spinning through short waits, yielding to the slot's other
//! tasks, keeps the executor's queue busy, so it polls its ring only when preempted: network
//! I/O and credit stall, and records waited milliseconds.)
//!
//! An input task reads last the channels that run too far ahead of the slowest in event time
//! (`SkewHold`), so their producers run out of credit and wait: in a slot that runs a source
//! and a consumer of it on one core, the consumer drains its local channel and then reads the
//! remote producers, so without this one producer can run ahead of the others without bound
//! (measured: thousands of seconds of event time within ten seconds of the window benchmark),
//! and every window it opens stays in state until the slowest catches up. A hold is lifted when
//! nothing else has arrived for `HOLD_PATIENCE` (50 ms), until event time advances again: holds
//! slow a producer down, they never stop the task.
//!
//! Invariant: a task never blocks its thread; every wait is on its doorbell, which producers,
//! consumers, the host application and cancellation ring.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corestream_netstack::{ChannelItem, Doorbell, Event, InputGate};

use super::build::{TaskInput, TaskSource};
use super::job::JobShared;
use super::metrics::TaskCounters;
use crate::api::sources::SourceStatus;
use crate::checkpoint::channel_state::{AlignedBuffer, Replay};
use crate::error::TaskError;
use crate::operators::{monotonic_ns, now_ms, Control, FlushReason, Readiness};
use crate::time::{ValveOutput, WatermarkValve};

mod checkpoints;
#[cfg(test)]
mod tests;

use checkpoints::{Checkpoints, Restored, Side};

pub(crate) enum TaskBody {
    Source(Box<dyn TaskSource>),
    Input { input: Box<dyn TaskInput>, gate: InputGate },
}

/// Longest wait of a blocked task before it polls its output again without a wake-up.
const BLOCKED_REPOLL: Duration = Duration::from_millis(10);

/// How long a task holding channels back waits for the others before it reads the held ones
/// anyway (until its event-time clock next advances).
const HOLD_PATIENCE: Duration = Duration::from_millis(50);

/// Which input channels the task holds back for running too far ahead in event time, decided
/// by [`WatermarkValve::skew_holds`] after each watermark, status or end of a channel.
struct SkewHold {
    /// Milliseconds of event time.
    max_skew: i64,
    holds: Vec<bool>,
    /// The clock when the holds were last lifted for lack of other input: they stay lifted
    /// until it advances.
    lifted_at: Option<i64>,
    waiting_since: Option<Instant>,
}

impl SkewHold {
    fn new(max_skew: Option<Duration>, channels: usize) -> Option<Self> {
        if channels < 2 {
            return None;
        }
        let max_skew = i64::try_from(max_skew?.as_millis()).unwrap_or(i64::MAX);
        Some(Self { max_skew, holds: vec![false; channels], lifted_at: None, waiting_since: None })
    }

    fn after_event(&mut self, gate: &mut InputGate, valve: &WatermarkValve) {
        if self.lifted_at.is_some_and(|clock| clock == valve.current()) {
            return;
        }
        self.lifted_at = None;
        let holding = valve.skew_holds(self.max_skew, &mut self.holds);
        gate.set_held(&self.holds, holding);
    }

    fn on_data(&mut self) {
        self.waiting_since = None;
    }

    /// Nothing to read (but perhaps held channels): whether to wait, and how long at most.
    fn on_idle(&mut self, gate: &mut InputGate, valve: &WatermarkValve) -> IdleHold {
        if !gate.is_holding() {
            return IdleHold::NotHolding;
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        match HOLD_PATIENCE.checked_sub(since.elapsed()) {
            Some(left) if !left.is_zero() => IdleHold::WaitAtMost(left),
            _ => {
                gate.release_held();
                self.lifted_at = Some(valve.current());
                self.waiting_since = None;
                IdleHold::Lifted
            }
        }
    }
}

/// What an idle input task does about its holds.
enum IdleHold {
    NotHolding,
    /// Wait for the other channels, this long at most.
    WaitAtMost(Duration),
    /// The holds were just lifted: read on.
    Lifted,
}

/// What the loop needs besides the chain.
pub(crate) struct TaskEnv {
    pub bell: Arc<Doorbell>,
    pub job: Arc<JobShared>,
    pub counters: Arc<TaskCounters>,
    pub buffer_timeout: Duration,
    /// Event time an input channel may run ahead of the slowest before it is held back
    /// ([`crate::ExecutionConfig::max_watermark_skew`]).
    pub max_watermark_skew: Option<Duration>,
    pub batch_size: usize,
    /// Set when the job takes checkpoints or restores from one.
    pub checkpointing: Option<crate::checkpoint::TaskCheckpointing>,
}

/// The buffer-timeout part of the flush policy.
struct FlushClock {
    timeout: Duration,
    dirty_since: Option<Instant>,
}

impl FlushClock {
    fn after_batch(&mut self, chain: &mut dyn Control) -> Result<(), TaskError> {
        if !chain.has_unflushed() {
            self.dirty_since = None;
            return Ok(());
        }
        if self.timeout.is_zero() {
            chain.flush(FlushReason::Timeout)?;
            return Ok(());
        }
        let now = Instant::now();
        match self.dirty_since {
            None => self.dirty_since = Some(now),
            Some(since) if now.duration_since(since) >= self.timeout => {
                chain.flush(FlushReason::Timeout)?;
                self.dirty_since = None;
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn remaining(&self) -> Option<Duration> {
        self.dirty_since.map(|since| self.timeout.saturating_sub(since.elapsed()))
    }

    fn reset(&mut self) {
        self.dirty_since = None;
    }
}

/// When a source subtask emits its next latency marker.
struct MarkerClock {
    interval_ns: u64,
    next_ns: u64,
    source_subtask: u32,
}

impl MarkerClock {
    fn new((interval, source_subtask): (Duration, u32)) -> Self {
        Self { interval_ns: (interval.as_nanos() as u64).max(1), next_ns: 0, source_subtask }
    }

    /// Emits a marker if one is due; returns the time until the next one.
    fn tick(&mut self, chain: &mut dyn Control) -> Result<Duration, TaskError> {
        let now = monotonic_ns();
        if now >= self.next_ns {
            chain.emit_event(&Event::LatencyMarker { marked_time_ns: now, source_subtask: self.source_subtask })?;
            self.next_ns = now + self.interval_ns;
        }
        Ok(Duration::from_nanos(self.next_ns - now))
    }
}

/// Fires the chain's processing-time work that is due; returns how long until the next.
fn fire_due(chain: &mut dyn Control) -> Result<Option<Duration>, TaskError> {
    let Some(deadline) = chain.next_deadline() else {
        return Ok(None);
    };
    let now = now_ms();
    if deadline > now {
        return Ok(Some(Duration::from_millis((deadline - now) as u64)));
    }
    chain.on_processing_time(now)?;
    Ok(chain.next_deadline().map(|d| Duration::from_millis(d.saturating_sub(now_ms()).max(0) as u64)))
}

/// The sooner of two optional waits.
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Waits on the doorbell, at most until the chain's next processing-time deadline or `until`.
async fn wait_idle(chain: &mut dyn Control, env: &TaskEnv, until: Option<Duration>) -> Result<(), TaskError> {
    let timeout = earliest(fire_due(chain)?, until);
    if timeout == Some(Duration::ZERO) || !chain.resume(env.batch_size)? {
        return Ok(());
    }
    if chain.poll_ready()? == Readiness::Ready {
        wait(&env.bell, timeout).await;
    }
    Ok(())
}

async fn wait(bell: &Doorbell, timeout: Option<Duration>) {
    match timeout {
        None => bell.wait().await,
        Some(d) => futures_lite::future::or(bell.wait(), glommio::timer::sleep(d)).await,
    }
}

fn check_cancelled(env: &TaskEnv) -> Result<(), TaskError> {
    if env.job.is_cancelled() {
        Err(TaskError::Cancelled)
    } else {
        Ok(())
    }
}

/// Waits until the chain can take more input, flushing on the buffer timeout meanwhile. With
/// `checkpoints`, each wake-up also handles the mailbox and the unaligned barriers that must not
/// wait for the output (only where no firing is pending).
async fn wait_ready(
    side: &mut Side<'_>,
    env: &TaskEnv,
    clock: &mut FlushClock,
    mut checkpoints: Option<&mut Checkpoints>,
) -> Result<(), TaskError> {
    if side.chain().poll_ready()? == Readiness::Ready {
        return Ok(());
    }
    TaskCounters::inc(&env.counters.backpressure_waits, 1);
    let started = Instant::now();
    loop {
        check_cancelled(env)?;
        // Credit and hosts ring the doorbell; the bound re-polls outputs (custom sinks) that
        // cannot.
        let timeout = clock.remaining().map_or(BLOCKED_REPOLL, |r| r.min(BLOCKED_REPOLL));
        wait(&env.bell, Some(timeout)).await;
        if clock.remaining() == Some(Duration::ZERO) {
            side.chain().flush(FlushReason::Timeout)?;
            clock.reset();
        }
        if let Some(ck) = checkpoints.as_deref_mut() {
            ck.while_blocked(side)?;
        }
        if side.chain().poll_ready()? == Readiness::Ready {
            break;
        }
    }
    TaskCounters::inc(&env.counters.backpressure_ns, started.elapsed().as_nanos() as u64);
    Ok(())
}

/// Emits what a watermark or processing time left pending, in steps, waiting for the output
/// between them; returns once nothing is pending.
async fn drain_pending(side: &mut Side<'_>, env: &TaskEnv, clock: &mut FlushClock) -> Result<(), TaskError> {
    while !side.chain().resume(env.batch_size)? {
        check_cancelled(env)?;
        clock.after_batch(side.chain())?;
        wait_ready(side, env, clock, None).await?;
        glommio::yield_if_needed().await;
    }
    Ok(())
}

/// End of input: finish every link in bounded steps, signal end of partition, drain.
async fn finish(side: &mut Side<'_>, env: &TaskEnv, clock: &mut FlushClock) -> Result<(), TaskError> {
    drain_pending(side, env, clock).await?;
    loop {
        check_cancelled(env)?;
        wait_ready(side, env, clock, None).await?;
        if side.chain().finish_step(env.batch_size)? {
            break;
        }
        glommio::yield_if_needed().await;
    }
    let chain = side.chain();
    chain.close()?;
    while !chain.drain()? {
        check_cancelled(env)?;
        env.bell.wait().await;
    }
    Ok(())
}

pub(crate) async fn run(body: TaskBody, env: TaskEnv) -> Result<(), TaskError> {
    match body {
        TaskBody::Source(mut source) => run_source(&mut *source, &env).await,
        TaskBody::Input { mut input, mut gate } => run_input(&mut *input, &mut gate, &env).await,
    }
}

async fn run_source(source: &mut dyn TaskSource, env: &TaskEnv) -> Result<(), TaskError> {
    let mut clock = FlushClock { timeout: env.buffer_timeout, dirty_since: None };
    let mut ck = env.checkpointing.clone().map(|c| Checkpoints::new(c, env.bell.clone(), None));
    if let Some(ck) = &ck {
        ck.restore(&mut Side::Source(source))?;
    }
    let mut steps = 0u64;
    let mut markers = source.latency_markers().map(MarkerClock::new);
    loop {
        check_cancelled(env)?;
        drain_pending(&mut Side::Source(source), env, &mut clock).await?;
        if let Some(ck) = ck.as_mut() {
            ck.at_boundary(&mut Side::Source(source))?;
        }
        wait_ready(&mut Side::Source(source), env, &mut clock, ck.as_mut()).await?;
        match source.step(env.batch_size)? {
            SourceStatus::More => {
                if let Some(m) = &mut markers {
                    m.tick(source.chain())?;
                }
                clock.after_batch(source.chain())?;
                if steps.is_multiple_of(8) {
                    fire_due(source.chain())?;
                }
                steps += 1;
                glommio::yield_if_needed().await;
            }
            status @ (SourceStatus::Idle | SourceStatus::IdleUntil(_)) => {
                let next_marker = markers.as_mut().map(|m| m.tick(source.chain())).transpose()?;
                source.chain().flush(FlushReason::Idle)?;
                clock.reset();
                check_cancelled(env)?;
                let wake_in = match status {
                    SourceStatus::IdleUntil(at) => Some(at.saturating_duration_since(Instant::now())),
                    _ => None,
                };
                let until = earliest(next_marker, wake_in);
                // Output still waiting for room (parked records, a full sink) is waited for by
                // `wait_ready`, which re-polls it.
                wait_idle(source.chain(), env, until).await?;
            }
            SourceStatus::Finished => break,
        }
    }
    // Its last records may still be parked behind full channels: triggers are taken while they
    // drain, as during the input. A bounded source then ends event time: every window and timer
    // fires (as in Flink).
    wait_ready(&mut Side::Source(source), env, &mut clock, ck.as_mut()).await?;
    source.chain().emit_event(&Event::Watermark(i64::MAX))?;
    finish(&mut Side::Source(source), env, &mut clock).await?;
    if let Some(ck) = ck.as_mut() {
        ck.finished();
    }
    Ok(())
}

async fn run_input(input: &mut dyn TaskInput, gate: &mut InputGate, env: &TaskEnv) -> Result<(), TaskError> {
    let mut clock = FlushClock { timeout: env.buffer_timeout, dirty_since: None };
    let channels = gate.num_channels();
    let mut ck = env.checkpointing.clone().map(|c| Checkpoints::new(c, env.bell.clone(), Some(channels)));
    let mut valve = WatermarkValve::new(channels);
    if let Some(ck) = &ck {
        if let Some(Restored { snapshot, valve: restored }) = ck.restore(&mut Side::Input(input, gate, &valve))? {
            if let Some(restored) = restored {
                valve = restored;
            }
            // In-flight data of the checkpoint first, before anything of the gate.
            let mut aligned = AlignedBuffer::default();
            for (channel, step) in Checkpoints::replay_order(&snapshot) {
                check_cancelled(env)?;
                drain_pending(&mut Side::Input(input, gate, &valve), env, &mut clock).await?;
                wait_ready(&mut Side::Input(input, gate, &valve), env, &mut clock, None).await?;
                match step {
                    Replay::Buffer(index) => {
                        ck.replay_buffer(input, &snapshot, (channel, index), &mut aligned)?;
                        clock.after_batch(input.chain())?;
                    }
                    Replay::Event(event) => on_time_event(channel as usize, event, input, &mut valve)?,
                }
                glommio::yield_if_needed().await;
            }
        }
    }
    let mut ended = 0;
    let mut buffers = 0u64;
    let mut skew = SkewHold::new(env.max_watermark_skew, channels);
    while ended < channels {
        check_cancelled(env)?;
        drain_pending(&mut Side::Input(input, gate, &valve), env, &mut clock).await?;
        if let Some(ck) = ck.as_mut() {
            ck.at_boundary(&mut Side::Input(input, gate, &valve))?;
        }
        wait_ready(&mut Side::Input(input, gate, &valve), env, &mut clock, ck.as_mut()).await?;
        match gate.poll_next() {
            Some((c, ChannelItem::Buffer(buffer))) => {
                if let Some(ck) = ck.as_mut().filter(|ck| ck.recording(c)) {
                    ck.record(c, buffer.as_slice());
                }
                input.on_buffer(buffer.as_slice())?;
                drop(buffer);
                gate.release(c);
                if let Some(skew) = skew.as_mut() {
                    skew.on_data();
                }
                buffers += 1;
                clock.after_batch(input.chain())?;
                if buffers.is_multiple_of(8) {
                    TaskCounters::inc(&env.counters.buffers_in, 8);
                    fire_due(input.chain())?;
                    glommio::yield_if_needed().await;
                }
            }
            Some((c, ChannelItem::Event(event))) => {
                let moves_time =
                    matches!(event, Event::Watermark(_) | Event::WatermarkStatus(_) | Event::EndOfPartition);
                on_event(c, event, input, gate, &mut valve, ck.as_mut(), &mut ended)?;
                if let Some(skew) = skew.as_mut().filter(|_| moves_time) {
                    skew.after_event(gate, &valve);
                }
            }
            None => {
                let patience = match skew.as_mut().map(|skew| skew.on_idle(gate, &valve)) {
                    Some(IdleHold::Lifted) => continue,
                    Some(IdleHold::WaitAtMost(left)) => Some(left),
                    Some(IdleHold::NotHolding) | None => None,
                };
                input.chain().flush(FlushReason::Idle)?;
                clock.reset();
                check_cancelled(env)?;
                wait_idle(input.chain(), env, patience).await?;
            }
        }
    }
    TaskCounters::inc(&env.counters.buffers_in, buffers % 8);
    finish(&mut Side::Input(input, gate, &valve), env, &mut clock).await?;
    if let Some(ck) = ck.as_mut() {
        ck.finished();
    }
    Ok(())
}

fn on_event(
    channel: usize,
    event: Event,
    input: &mut dyn TaskInput,
    gate: &mut InputGate,
    valve: &mut WatermarkValve,
    checkpoints: Option<&mut Checkpoints>,
    ended: &mut usize,
) -> Result<(), TaskError> {
    match event {
        Event::EndOfPartition => {
            *ended += 1;
            if let Some(ck) = checkpoints {
                ck.on_end(channel, input, gate, valve)?;
            }
            if let Some(w) = valve.on_end(channel) {
                if *ended < gate.num_channels() {
                    input.chain().emit_event(&Event::Watermark(w))?;
                }
            }
        }
        Event::Watermark(_) | Event::WatermarkStatus(_) => {
            // In-flight data of an unaligned checkpoint, as the buffers around it.
            if let Some(ck) = checkpoints.filter(|ck| ck.recording(channel)) {
                ck.record_event(channel, &event);
            }
            on_time_event(channel, event, input, valve)?;
        }
        Event::CheckpointBarrier { .. } => match checkpoints {
            Some(ck) => ck.on_event(channel, event, input, gate, valve)?,
            // Without checkpointing nothing creates barriers; one that arrives is passed on.
            None => input.chain().emit_event(&event)?,
        },
        Event::LatencyMarker { .. } => input.chain().emit_event(&event)?,
    }
    Ok(())
}

/// A watermark or watermark status from `channel` (read or replayed): through the valve, which
/// says what the chain gets.
fn on_time_event(
    channel: usize,
    event: Event,
    input: &mut dyn TaskInput,
    valve: &mut WatermarkValve,
) -> Result<(), TaskError> {
    match event {
        Event::Watermark(ts) => {
            if let Some(w) = valve.on_watermark(channel, ts) {
                input.chain().emit_event(&Event::Watermark(w))?;
            }
        }
        Event::WatermarkStatus(status) => {
            for out in valve.on_status(channel, status) {
                let event = match out {
                    ValveOutput::Watermark(w) => Event::Watermark(w),
                    ValveOutput::Status(s) => Event::WatermarkStatus(s),
                };
                input.chain().emit_event(&event)?;
            }
        }
        // Only watermarks and statuses are handed here; nothing else moves event time.
        Event::EndOfPartition | Event::CheckpointBarrier { .. } | Event::LatencyMarker { .. } => {}
    }
    Ok(())
}
