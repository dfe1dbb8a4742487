//! Building a task's chain on its slot thread from the type-erased nodes of the graph. Each
//! node knows its own record types; the chain is assembled tail first, each node wrapping the
//! `Box<dyn Emit<Out>>` of its successor into the `Box<dyn Emit<In>>` it exposes. The boxes
//! travel between nodes as `Box<dyn Any>` and are downcast by the node that knows the type, so
//! a mismatch is impossible for graphs built through the typed DataStream API.

use std::any::Any;
use std::sync::Arc;

use corestream_netstack::record::{validate_buffer, BufferValidator};
use corestream_netstack::{Data, Doorbell, OutputChannel};

use super::job::JobShared;
use super::metrics::TaskCounters;
use super::output::NetworkOutput;
use crate::api::source_rate::{Grant, TokenBucket};
use crate::api::sources::{Rewind, Source, SourceContext, SourceStatus};
use crate::checkpoint::{CheckpointId, OperatorStateParts, PartLayout, PendingSnapshot, TaskSnapshot};
use crate::config::RuntimeMode;
use crate::error::TaskError;
use crate::graph::Partitioning;
use crate::operators::{enter_node, side_output, Control, Emit, NullEmit, OperatorMetrics, SideOutput, SideSink};

/// The side outputs of one operator subtask, by tag; tags nobody consumes are absent, and
/// records sent to them are dropped (as in Flink).
#[derive(Default)]
pub struct SideOutputs {
    outputs: Vec<(String, AnyBox)>,
}

impl SideOutputs {
    /// The side output of `tag`, if consumed.
    pub fn get<X: 'static>(&self, tag: &str) -> Option<&SideOutput<X>> {
        self.outputs.iter().find(|(t, _)| t == tag).and_then(|(_, o)| o.downcast_ref::<SideOutput<X>>())
    }
}

pub(crate) type AnyBox = Box<dyn Any>;

/// Stable key hashes of a batch of records (appended to the vector), for hash-partitioned
/// exchanges: one dynamic call per batch, a monomorphized loop inside.
pub(crate) type KeyHashFn<T> = dyn Fn(&[T], &mut Vec<u64>) + Send + Sync;

/// A side output built for a node: its tag, the `SideOutput<X>` (as `Any`) and its sink.
pub(crate) type SideLink = (String, AnyBox, Box<dyn SideSink>);

/// What a node needs to build its part of one subtask.
pub(crate) struct BuildCtx<'a> {
    pub node: usize,
    pub subtask: u32,
    pub parallelism: u32,
    pub mode: RuntimeMode,
    /// Key groups of keyed operators in this chain.
    pub max_parallelism: u32,
    pub auto_watermark_interval: std::time::Duration,
    /// Where keyed operators keep their state ([`keyed_backend`](Self::keyed_backend)).
    pub state_backend: corestream_state::StateBackendKind,
    pub lsm: corestream_state::LsmConfig,
    pub metrics: Arc<OperatorMetrics>,
    pub bell: Arc<Doorbell>,
    pub job: &'a Arc<JobShared>,
    /// Side outputs of this node: (tag, `SideOutput<X>` as `Any`, its sink).
    pub sides: std::cell::RefCell<Vec<SideLink>>,
}

impl BuildCtx<'_> {
    /// The side outputs some operator consumes, by tag, and the sinks that carry them (for the
    /// node's chain link).
    pub(crate) fn take_sides(&self) -> (SideOutputs, Vec<Box<dyn SideSink>>) {
        let mut outputs = Vec::new();
        let mut sinks = Vec::new();
        for (tag, output, sink) in self.sides.borrow_mut().drain(..) {
            outputs.push((tag, output));
            sinks.push(sink);
        }
        (SideOutputs { outputs }, sinks)
    }

    /// The key groups this subtask owns.
    pub(crate) fn key_groups(&self) -> corestream_state::KeyGroupRange {
        corestream_state::key_group_range(self.max_parallelism, self.parallelism, self.subtask)
    }

    /// A keyed state backend for this subtask's key groups, of the kind the job chose. An LSM
    /// store that cannot be created (the disk; the directory was checked when the job was
    /// submitted) fails the task with the store's error.
    pub(crate) fn keyed_backend<K: corestream_state::StateKey>(&self) -> corestream_state::KeyedStateBackend<K> {
        let (kind, max_p, groups) = (self.state_backend, self.max_parallelism, self.key_groups());
        corestream_state::KeyedStateBackend::with_config(kind, max_p, groups, &self.lsm)
            .unwrap_or_else(|e| panic!("subtask {} cannot create its keyed state backend: {e}", self.subtask))
    }
}

/// One exchange leaving a task, ready to be written to.
pub(crate) struct OutputEdgeRt {
    pub partitioning: Partitioning,
    pub channels: Vec<OutputChannel>,
    pub key_hash: Option<Arc<dyn Any + Send + Sync>>,
    /// The operator the exchange feeds (a key selector's panic is attributed to it).
    pub consumer_node: usize,
    pub consumer_parallelism: u32,
    pub max_parallelism: u32,
    /// Set for side-output edges.
    pub side: Option<SideEdgeRt>,
}

/// Where a side-output edge starts, and the runtime of the node it feeds (which builds the
/// output for the side records' type).
pub(crate) struct SideEdgeRt {
    pub producer: usize,
    pub tag: String,
    pub consumer_rt: Arc<dyn NodeRuntime>,
}

/// Settings of a task's network output.
pub(crate) struct OutputCtx {
    pub pool: corestream_netstack::BufferPool,
    pub counters: Arc<TaskCounters>,
    pub node: usize,
    pub max_backlog: u32,
    pub subtask: u32,
}

/// The input side of a task fed by an exchange.
pub(crate) trait TaskInput {
    fn on_buffer(&mut self, bytes: &[u8]) -> Result<(), TaskError>;
    fn chain(&mut self) -> &mut dyn Control;
    /// The check a buffer of this input must pass before it is read in place when it does not
    /// come from a producer of this process (restored channel state).
    fn validator(&self) -> BufferValidator;
}

/// The source side of a task.
pub(crate) trait TaskSource {
    fn step(&mut self, max_records: usize) -> Result<SourceStatus, TaskError>;
    fn chain(&mut self) -> &mut dyn Control;
    /// How often this subtask emits latency markers, and its subtask index (the markers'
    /// origin); `None` when latency tracking is off.
    fn latency_markers(&self) -> Option<(std::time::Duration, u32)>;
    /// Adds the source's position (and its chain's state) to a checkpoint.
    fn snapshot_state(&mut self, _checkpoint: CheckpointId, _into: &mut PendingSnapshot) -> Result<(), TaskError> {
        Ok(())
    }
    /// Restores the source's position (and its chain's state) before the first batch.
    fn restore_state(&mut self, _from: &TaskSnapshot) -> Result<(), TaskError> {
        Ok(())
    }
}

/// The latency-marker interval of an environment's sources, shared by its source nodes and set
/// when the job is submitted (sources are declared before the environment's settings are final).
pub(crate) type LatencyInterval = Arc<std::sync::OnceLock<Option<std::time::Duration>>>;

/// Settings of an environment's sources, fixed when the job is submitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SourceSettings {
    /// Records per second per source subtask (`None`: as fast as the job takes them).
    pub rate: Option<u64>,
    /// Sources that cannot rewind may take part in checkpoints, giving at most once.
    pub allow_at_most_once: bool,
}

/// The [`SourceSettings`] of an environment, shared by its source nodes and set when the job
/// is submitted.
pub(crate) type SourceSettingsCell = Arc<std::sync::OnceLock<SourceSettings>>;

/// The name of a source's position among its node's state parts.
pub(crate) const POSITION_PART: &str = "position";

/// A graph node, type-erased.
pub(crate) trait NodeRuntime: Send + Sync {
    /// Wraps the successor (`Box<dyn Emit<Out>>`) and returns `Box<dyn Emit<In>>`.
    fn link(&self, ctx: &BuildCtx<'_>, next: AnyBox) -> Result<AnyBox, TaskError>;
    /// The network output for this node's records (`Box<dyn Emit<Out>>`).
    fn output(&self, edges: Vec<OutputEdgeRt>, ctx: OutputCtx) -> AnyBox;
    /// The task input feeding this node's chain (`chain` is `Box<dyn Emit<In>>`).
    fn head(&self, chain: AnyBox) -> Box<dyn TaskInput>;
    /// The output of a side edge fed by another node, for this node's record type: the
    /// `SideOutput<Out>` (as `Any`) and its sink.
    fn side_link(&self, edges: Vec<OutputEdgeRt>, ctx: OutputCtx) -> (AnyBox, Box<dyn SideSink>);
    /// The source runner of a source node (`chain` is `Box<dyn Emit<Out>>`).
    fn source(&self, ctx: &BuildCtx<'_>, chain: AnyBox) -> Result<Box<dyn TaskSource>, TaskError>;
    /// The check every buffer for this node's input must pass when it arrives from another
    /// process (the node heads a task fed by an exchange).
    fn validator(&self) -> BufferValidator;
    /// For a source node, whether it can rewind to a checkpoint's position; `None` for other
    /// nodes.
    fn source_rewind(&self) -> Option<Rewind> {
        None
    }
}

fn downcast<T: 'static>(b: AnyBox, what: &str) -> T {
    match b.downcast::<T>() {
        Ok(v) => *v,
        Err(_) => panic!("internal error: chain link type mismatch building {what}"),
    }
}

fn output_for<O: Data>(edges: Vec<OutputEdgeRt>, ctx: OutputCtx) -> AnyBox {
    let emit: Box<dyn Emit<O>> =
        if edges.is_empty() { Box::new(NullEmit) } else { Box::new(NetworkOutput::<O>::new(edges, ctx)) };
    Box::new(emit)
}

struct HeadAdapter<I: Data> {
    chain: Box<dyn Emit<I>>,
}

impl<I: Data> TaskInput for HeadAdapter<I> {
    fn on_buffer(&mut self, bytes: &[u8]) -> Result<(), TaskError> {
        self.chain.emit_archived(bytes)
    }

    fn chain(&mut self) -> &mut dyn Control {
        &mut *self.chain
    }

    fn validator(&self) -> BufferValidator {
        validate_buffer::<I>
    }
}

/// Builds a source for one subtask.
pub(crate) type SourceFactory<T> = dyn Fn(&SourceContext) -> Result<Box<dyn Source<T>>, TaskError> + Send + Sync;

pub(crate) struct SourceNodeRt<T: Data> {
    pub factory: Arc<SourceFactory<T>>,
    pub latency_interval: LatencyInterval,
    pub settings: SourceSettingsCell,
    pub rewind: Rewind,
}

/// Runs a source subtask: its steps (throttled by a token bucket when the environment set a
/// source rate: one clock read per step) and its part of checkpoints (its position, as the
/// part [`POSITION_PART`] of its node with the layout `Subtask`, then its chain's state).
struct SourceRunner<T: Data> {
    source: Box<dyn Source<T>>,
    batch: Vec<T>,
    chain: Box<dyn Emit<T>>,
    metrics: Arc<OperatorMetrics>,
    node: usize,
    latency_markers: Option<(std::time::Duration, u32)>,
    rate: Option<TokenBucket>,
    rewind: Rewind,
    allow_at_most_once: bool,
}

impl<T: Data> SourceRunner<T> {
    fn checkpoint_error(&self, message: String) -> TaskError {
        TaskError::Checkpoint { node: Some(self.node), message }
    }
}

impl<T: Data> TaskSource for SourceRunner<T> {
    fn step(&mut self, max_records: usize) -> Result<SourceStatus, TaskError> {
        enter_node(self.node);
        let max_records = match &mut self.rate {
            None => max_records,
            Some(bucket) => match bucket.grant(std::time::Instant::now(), max_records) {
                Grant::Take(n) => n,
                Grant::WaitUntil(at) => return Ok(SourceStatus::IdleUntil(at)),
            },
        };
        let status = self.source.next_batch(&mut self.batch, max_records)?;
        if let Some(bucket) = &mut self.rate {
            bucket.spend(self.batch.len());
        }
        self.metrics.add(0, self.batch.len());
        if !self.batch.is_empty() {
            self.chain.emit_batch(&mut self.batch)?;
        }
        Ok(status)
    }

    fn chain(&mut self) -> &mut dyn Control {
        &mut *self.chain
    }

    fn latency_markers(&self) -> Option<(std::time::Duration, u32)> {
        self.latency_markers
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId, into: &mut PendingSnapshot) -> Result<(), TaskError> {
        enter_node(self.node);
        match self.rewind {
            Rewind::Yes => {
                let position = self
                    .source
                    .snapshot_position()
                    .map_err(|e| self.checkpoint_error(format!("cannot record the source's position: {e}")))?;
                let mut parts = OperatorStateParts::default();
                parts.push(POSITION_PART, PartLayout::Subtask, position);
                into.put_node(self.node, parts);
            }
            Rewind::No { .. } if self.allow_at_most_once => {}
            Rewind::No { guarantee } => {
                return Err(self.checkpoint_error(format!(
                    "this source cannot rewind to a checkpoint's position ({guarantee}); a job with checkpoints \
                     needs sources that can, or StreamEnvironment::allow_at_most_once_sources to accept that"
                )))
            }
        }
        self.chain.snapshot_state(checkpoint, into)
    }

    fn restore_state(&mut self, from: &TaskSnapshot) -> Result<(), TaskError> {
        enter_node(self.node);
        let part = from.node(self.node).and_then(|parts| parts.get(POSITION_PART));
        match (self.rewind, part) {
            (Rewind::Yes, Some(part)) if part.layout == PartLayout::Subtask => {
                self.source
                    .restore_position(&part.bytes)
                    .map_err(|e| self.checkpoint_error(format!("cannot go back to the checkpoint's position: {e}")))?;
            }
            (Rewind::Yes, Some(part)) => {
                return Err(self.checkpoint_error(format!(
                    "the checkpoint's source position has the layout {:?}, not Subtask",
                    part.layout
                )))
            }
            (Rewind::Yes, None) => {
                return Err(
                    self.checkpoint_error("the checkpoint holds no position for this source subtask".to_string())
                )
            }
            (Rewind::No { guarantee }, Some(_)) => {
                // The run that took the checkpoint could rewind this source (a regular file that
                // is now a stream, say); reading it from its start would repeat records.
                return Err(self.checkpoint_error(format!(
                    "the checkpoint holds a position for this source, but it can no longer rewind ({guarantee})"
                )));
            }
            (Rewind::No { .. }, None) => {}
        }
        self.chain.restore_state(from)
    }
}

impl<T: Data> NodeRuntime for SourceNodeRt<T> {
    fn link(&self, ctx: &BuildCtx<'_>, _next: AnyBox) -> Result<AnyBox, TaskError> {
        panic!("internal error: source node {} placed inside a chain", ctx.node)
    }

    fn output(&self, edges: Vec<OutputEdgeRt>, ctx: OutputCtx) -> AnyBox {
        output_for::<T>(edges, ctx)
    }

    fn head(&self, _chain: AnyBox) -> Box<dyn TaskInput> {
        panic!("internal error: a source has no exchange input")
    }

    fn side_link(&self, _edges: Vec<OutputEdgeRt>, _ctx: OutputCtx) -> (AnyBox, Box<dyn SideSink>) {
        panic!("internal error: a source cannot consume a side output")
    }

    fn source(&self, ctx: &BuildCtx<'_>, chain: AnyBox) -> Result<Box<dyn TaskSource>, TaskError> {
        let chain: Box<dyn Emit<T>> = downcast(chain, "source output");
        let sctx = SourceContext {
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            bell: ctx.bell.clone(),
            node: ctx.node,
            job: ctx.job.clone(),
        };
        enter_node(ctx.node);
        let source = (self.factory)(&sctx)?;
        let latency_markers = self.latency_interval.get().copied().flatten().map(|interval| (interval, ctx.subtask));
        let settings = self.settings.get().copied().unwrap_or_default();
        Ok(Box::new(SourceRunner {
            source,
            batch: Vec::new(),
            chain,
            metrics: ctx.metrics.clone(),
            node: ctx.node,
            latency_markers,
            rate: settings.rate.map(|rate| TokenBucket::new(rate, std::time::Instant::now())),
            rewind: self.rewind,
            allow_at_most_once: settings.allow_at_most_once,
        }))
    }

    fn validator(&self) -> BufferValidator {
        panic!("internal error: a source has no exchange input to validate")
    }

    fn source_rewind(&self) -> Option<Rewind> {
        Some(self.rewind)
    }
}

/// Builds the chain link of an operator (or sink) for one subtask, given its successor.
pub(crate) type LinkFactory<I, O> =
    dyn Fn(&BuildCtx<'_>, Box<dyn Emit<O>>) -> Result<Box<dyn Emit<I>>, TaskError> + Send + Sync;

pub(crate) struct OperatorNodeRt<I: Data, O: Data> {
    pub factory: Arc<LinkFactory<I, O>>,
}

impl<I: Data, O: Data> NodeRuntime for OperatorNodeRt<I, O> {
    fn link(&self, ctx: &BuildCtx<'_>, next: AnyBox) -> Result<AnyBox, TaskError> {
        let next: Box<dyn Emit<O>> = downcast(next, "operator output");
        enter_node(ctx.node);
        let link = (self.factory)(ctx, next)?;
        Ok(Box::new(link))
    }

    fn output(&self, edges: Vec<OutputEdgeRt>, ctx: OutputCtx) -> AnyBox {
        output_for::<O>(edges, ctx)
    }

    fn head(&self, chain: AnyBox) -> Box<dyn TaskInput> {
        let chain: Box<dyn Emit<I>> = downcast(chain, "task input");
        Box::new(HeadAdapter { chain })
    }

    fn side_link(&self, edges: Vec<OutputEdgeRt>, ctx: OutputCtx) -> (AnyBox, Box<dyn SideSink>) {
        let emit: Box<dyn Emit<O>> = Box::new(NetworkOutput::<O>::new(edges, ctx));
        let (output, sink) = side_output(emit);
        (Box::new(output), sink)
    }

    fn source(&self, ctx: &BuildCtx<'_>, _chain: AnyBox) -> Result<Box<dyn TaskSource>, TaskError> {
        panic!("internal error: operator node {} used as a source", ctx.node)
    }

    fn validator(&self) -> BufferValidator {
        validate_buffer::<I>
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::api::sources::{ChannelSource, GeneratorSource};
    use crate::operators::NullEmit;

    fn runner(source: Box<dyn Source<u64>>, rewind: Rewind, allow_at_most_once: bool) -> SourceRunner<u64> {
        SourceRunner {
            source,
            batch: Vec::new(),
            chain: Box::new(NullEmit),
            metrics: Arc::new(OperatorMetrics::default()),
            node: 4,
            latency_markers: None,
            rate: None,
            rewind,
            allow_at_most_once,
        }
    }

    fn sequence() -> Box<dyn Source<u64>> {
        Box::new(GeneratorSource::split(Arc::new(|i: u64| i), 100, 0, 1))
    }

    fn emitted(r: &SourceRunner<u64>) -> u64 {
        r.metrics.records_out.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn checkpoint_message(e: TaskError) -> String {
        match e {
            TaskError::Checkpoint { node: Some(4), message } => message,
            other => panic!("expected a checkpoint error of node 4, got {other:?}"),
        }
    }

    #[test]
    fn the_position_is_the_source_nodes_subtask_part_and_restores_where_it_was() {
        let mut first = runner(sequence(), Rewind::Yes, false);
        first.step(30).unwrap();
        let mut snapshot = PendingSnapshot::default();
        first.snapshot_state(7, &mut snapshot).unwrap();
        let part = snapshot.node(4).and_then(|p| p.get(POSITION_PART)).expect("position part");
        assert_eq!(part.layout, PartLayout::Subtask);

        let mut second = runner(sequence(), Rewind::Yes, false);
        second.restore_state(&snapshot).unwrap();
        while second.step(1000).unwrap() != SourceStatus::Finished {}
        assert_eq!(emitted(&second), 70, "the records after the position, once");
    }

    #[test]
    fn a_rewindable_source_without_a_position_in_the_checkpoint_fails_its_restore() {
        let mut r = runner(sequence(), Rewind::Yes, false);
        let message = checkpoint_message(r.restore_state(&TaskSnapshot::default()).unwrap_err());
        assert!(message.contains("no position"), "{message}");
    }

    #[test]
    fn a_source_that_cannot_rewind_fails_the_checkpoint_unless_at_most_once_is_accepted() {
        let (_tx, rx) = crossbeam_channel::bounded::<u64>(1);
        let mut refused = runner(Box::new(ChannelSource { rx }), Rewind::CHANNEL, false);
        let message = checkpoint_message(refused.snapshot_state(1, &mut PendingSnapshot::default()).unwrap_err());
        assert!(message.contains("cannot rewind") && message.contains("at most once"), "{message}");

        let (_tx, rx) = crossbeam_channel::bounded::<u64>(1);
        let mut accepted = runner(Box::new(ChannelSource { rx }), Rewind::CHANNEL, true);
        let mut snapshot = PendingSnapshot::default();
        accepted.snapshot_state(1, &mut snapshot).unwrap();
        assert!(snapshot.node(4).is_none(), "no position is written");
        accepted.restore_state(&snapshot).unwrap();

        let mut with_position = PendingSnapshot::default();
        runner(sequence(), Rewind::Yes, false).snapshot_state(1, &mut with_position).unwrap();
        let (_tx, rx) = crossbeam_channel::bounded::<u64>(1);
        let mut changed = runner(Box::new(ChannelSource { rx }), Rewind::CHANNEL, true);
        let message = checkpoint_message(changed.restore_state(&with_position).unwrap_err());
        assert!(message.contains("can no longer rewind"), "{message}");
    }

    #[test]
    fn a_throttled_source_emits_what_its_bucket_grants_and_otherwise_names_when_to_call_again() {
        let mut r = runner(sequence(), Rewind::Yes, false);
        // A bucket of 1 record per second whose only token is spent, with its clock ahead of
        // now: no token accrues during the test, whatever the machine's speed.
        let mut bucket = TokenBucket::new(1, Instant::now() + Duration::from_secs(3600));
        bucket.spend(1);
        r.rate = Some(bucket);
        assert!(matches!(r.step(1024).unwrap(), SourceStatus::IdleUntil(_)));
        assert_eq!(emitted(&r), 0);

        let mut r = runner(sequence(), Rewind::Yes, false);
        r.rate = Some(TokenBucket::new(200, Instant::now() + Duration::from_secs(3600)));
        assert_eq!(r.step(1024).unwrap(), SourceStatus::More);
        assert_eq!(emitted(&r), 10, "a full bucket holds a twentieth of a second's records");
        assert!(matches!(r.step(1024).unwrap(), SourceStatus::IdleUntil(_)));
        assert_eq!(emitted(&r), 10);
    }
}
