//! The stream environment: where a job is declared (sources, then operators on the streams they
//! return) and executed on a [`LocalCluster`]. An environment builds exactly one job; build the
//! next job in a new environment (`cluster.environment()`).

use std::any::Any;
use std::cell::RefCell;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use corestream_netstack::{Data, Doorbell};

use super::sources::{
    ChannelSource, FileLinesSource, GeneratorSource, InvalidUtf8, IterSource, Rewind, SourceSender, TextFileOptions,
    TextSplit,
};
use super::stream::DataStream;
use crate::config::{ExecutionConfig, RuntimeMode};
use crate::error::{JobError, TaskError};
use crate::graph::stream_graph::{ChainingStrategy, NodeKind, StreamEdge, StreamGraph, StreamNode};
use crate::graph::Partitioning;
use crate::runtime::build::{
    LatencyInterval, NodeRuntime, SourceFactory, SourceNodeRt, SourceSettings, SourceSettingsCell,
};
use crate::runtime::cluster::LocalCluster;
use crate::runtime::job::JobHandle;
use crate::runtime::metrics::JobResult;

/// Declares and runs one job.
pub struct StreamEnvironment {
    cluster: LocalCluster,
    pub(crate) graph: Rc<RefCell<StreamGraph>>,
    config: ExecutionConfig,
    /// Given to every source node; set from `config` when the job is submitted.
    latency_interval: LatencyInterval,
    /// The source rate and the acceptance of sources that cannot rewind.
    sources: SourceSettings,
    /// Given to every source node; set from `sources` when the job is submitted.
    source_settings: SourceSettingsCell,
}

impl std::fmt::Debug for StreamEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEnvironment").field("config", &self.config).finish_non_exhaustive()
    }
}

impl StreamEnvironment {
    pub(crate) fn new(cluster: LocalCluster) -> Self {
        Self {
            cluster,
            graph: Rc::new(RefCell::new(StreamGraph::default())),
            config: ExecutionConfig::default(),
            latency_interval: LatencyInterval::default(),
            sources: SourceSettings::default(),
            source_settings: SourceSettingsCell::default(),
        }
    }

    /// Default parallelism of operators (default: the number of slots).
    pub fn set_parallelism(&mut self, parallelism: u32) -> &mut Self {
        self.config.parallelism = Some(parallelism);
        self
    }

    /// Number of key groups of keyed operators (default 128).
    pub fn set_max_parallelism(&mut self, max_parallelism: u32) -> &mut Self {
        self.config.max_parallelism = max_parallelism;
        self
    }

    /// Longest time a record waits in a partly filled buffer while its producer is busy.
    pub fn set_buffer_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.config.buffer_timeout = timeout;
        self
    }

    /// Records per source step and per chain batch.
    pub fn set_batch_size(&mut self, batch_size: usize) -> &mut Self {
        self.config.batch_size = batch_size.max(1);
        self
    }

    /// How often periodic watermark generators emit (default 200 ms, as in Flink).
    pub fn set_auto_watermark_interval(&mut self, interval: std::time::Duration) -> &mut Self {
        self.config.auto_watermark_interval = interval;
        self
    }

    /// How far in event time an input channel may run ahead of the slowest channel of its task
    /// before the task reads it last, so its producer waits (default 60 s; `None` never holds a
    /// channel back). See [`ExecutionConfig::max_watermark_skew`].
    pub fn set_max_watermark_skew(&mut self, skew: Option<Duration>) -> &mut Self {
        self.config.max_watermark_skew = skew;
        self
    }

    /// Where the job's keyed operators keep their state (default: the heap).
    pub fn set_state_backend(&mut self, backend: corestream_state::StateBackendKind) -> &mut Self {
        self.config.state_backend = backend;
        self
    }

    /// The LSM state backend's local directory and memory per slot (see
    /// [`ExecutionConfig::lsm`]).
    pub fn set_lsm_config(&mut self, lsm: corestream_state::LsmConfig) -> &mut Self {
        self.config.lsm = lsm;
        self
    }

    /// How often each source subtask emits a latency marker (default: never). Markers pass
    /// operators unchanged, take one channel of each exchange (round-robin), and each sink
    /// records their age per source subtask; the job result reports the percentiles
    /// ([`JobResult::latency`]). Sources emit them while idle too. A zero interval is refused
    /// when the job is submitted.
    pub fn set_latency_tracking_interval(&mut self, interval: Duration) -> &mut Self {
        self.config.latency_tracking_interval = Some(interval);
        self
    }

    /// Throttles every source subtask of this job to `rate` records per second (`None`: no
    /// limit, the default), for tests and demos that need a job to run for a while. A subtask
    /// over its rate waits on a timer (a token bucket holding a twentieth of a second's
    /// records), never on its slot's thread. A rate of 0 is refused when the job is submitted.
    pub fn set_source_rate(&mut self, rate: Option<u64>) -> &mut Self {
        self.sources.rate = rate;
        self
    }

    /// Whether sources that cannot rewind to a checkpoint's position (the host channel, a
    /// stream that is not a regular file, an application source without
    /// [`SourceFunction::snapshot_state`](super::sources::SourceFunction::snapshot_state)) may
    /// run in a job with checkpoints (default: no, the job is refused). Accepting it means at
    /// most once for their records: those they emitted after the restored checkpoint are not
    /// emitted again.
    pub fn allow_at_most_once_sources(&mut self, allow: bool) -> &mut Self {
        self.sources.allow_at_most_once = allow;
        self
    }

    /// Refuses a job with checkpoints whose sources cannot all rewind, unless
    /// [`allow_at_most_once_sources`](Self::allow_at_most_once_sources) accepted it; names
    /// every such source and the guarantee it would give.
    pub(crate) fn check_sources_rewind(&self) -> Result<(), JobError> {
        let graph = self.graph.borrow();
        let sources = graph.nodes.iter().filter_map(|n| Some((n.name.as_str(), n.runtime.source_rewind()?)));
        sources_rewind_problem(sources, self.sources.allow_at_most_once)
            .map_or(Ok(()), |m| Err(JobError::InvalidJob(m)))
    }

    /// Checks the source settings and hands them to the source nodes.
    fn fix_source_settings(&self) -> Result<(), JobError> {
        if self.sources.rate == Some(0) {
            return Err(JobError::InvalidJob(
                "a source rate of 0 records per second would never emit; give at least 1, or no rate".into(),
            ));
        }
        // An environment submits one job, so the cell is still empty.
        let _ = self.source_settings.set(self.sources);
        Ok(())
    }

    pub fn set_runtime_mode(&mut self, mode: RuntimeMode) -> &mut Self {
        self.config.runtime_mode = mode;
        self
    }

    pub fn config(&self) -> &ExecutionConfig {
        &self.config
    }

    pub fn cluster(&self) -> &LocalCluster {
        &self.cluster
    }

    pub(crate) fn add_source<T: Data>(
        &self,
        name: &str,
        fixed_parallelism: Option<u32>,
        rewind: Rewind,
        factory: Arc<SourceFactory<T>>,
    ) -> DataStream<T> {
        let id = add_node(
            &self.graph,
            name,
            NodeKind::Source,
            fixed_parallelism,
            Arc::new(SourceNodeRt {
                factory,
                latency_interval: self.latency_interval.clone(),
                settings: self.source_settings.clone(),
                rewind,
            }),
        );
        DataStream::from_node(self.graph.clone(), id)
    }

    /// The numbers in `range`, split into contiguous parts over the source's subtasks.
    pub fn from_sequence(&self, range: Range<u64>) -> DataStream<u64> {
        let start = range.start;
        self.generator_source("Source: sequence", range.end.saturating_sub(range.start), move |i| start + i)
    }

    /// The numbers in `range`, interleaved over the source's subtasks: subtask i of p emits
    /// `start + i`, `start + i + p`, … so all subtasks advance through the sequence (and through
    /// event time derived from it) together, as the partitions of a real stream do.
    pub fn from_sequence_interleaved(&self, range: Range<u64>) -> DataStream<u64> {
        let start = range.start;
        let count = range.end.saturating_sub(range.start);
        let f = Arc::new(move |i: u64| start + i);
        self.add_source(
            "Source: sequence",
            None,
            Rewind::Yes,
            Arc::new(move |ctx| {
                Ok(Box::new(GeneratorSource::strided(f.clone(), count, ctx.subtask, ctx.parallelism)) as _)
            }),
        )
    }

    /// `f(0) .. f(count - 1)`, split into contiguous index ranges over the source's subtasks.
    pub fn from_generator<T, F>(&self, count: u64, f: F) -> DataStream<T>
    where
        T: Data,
        F: Fn(u64) -> T + Send + Sync + 'static,
    {
        self.generator_source("Source: generator", count, f)
    }

    fn generator_source<T, F>(&self, name: &str, count: u64, f: F) -> DataStream<T>
    where
        T: Data,
        F: Fn(u64) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.add_source(
            name,
            None,
            Rewind::Yes,
            Arc::new(move |ctx| {
                Ok(Box::new(GeneratorSource::split(f.clone(), count, ctx.subtask, ctx.parallelism)) as _)
            }),
        )
    }

    /// An unbounded generator: subtask i of p emits `f(i), f(i + p), f(i + 2p), …` until the
    /// job is cancelled.
    pub fn generate_unbounded<T, F>(&self, f: F) -> DataStream<T>
    where
        T: Data,
        F: Fn(u64) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.add_source(
            "Source: unbounded generator",
            None,
            Rewind::Yes,
            Arc::new(move |ctx| Ok(Box::new(GeneratorSource::unbounded(f.clone(), ctx.subtask, ctx.parallelism)) as _)),
        )
    }

    /// The items of an iterator, by one source subtask (not parallel). In a job restored from
    /// a checkpoint, the source skips the items it had emitted before the checkpoint (as
    /// Flink's collection source does): the iterator must yield the same items whenever the
    /// job is built.
    pub fn from_iter<I>(&self, iter: I) -> DataStream<I::Item>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Data,
    {
        let slot = Mutex::new(Some(iter.into_iter()));
        self.add_source(
            "Source: iterator",
            Some(1),
            Rewind::Yes,
            Arc::new(move |ctx| {
                let iter = slot.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| TaskError::User {
                    node: ctx.node,
                    message: "the iterator of this source was consumed by an earlier run".into(),
                })?;
                Ok(Box::new(IterSource { iter, emitted: 0 }) as _)
            }),
        )
    }

    /// The lines of a text file, split by byte ranges over the source's subtasks. A line ends
    /// at `\n` (a trailing `\r` is removed). Lines that are not valid UTF-8 are skipped, counted,
    /// and reported as a job warning with the byte offset of the first one; they are never
    /// passed on or dropped silently. So are lines longer than
    /// [`TextFileOptions::DEFAULT_MAX_LINE_BYTES`], which are never buffered whole.
    ///
    /// Any readable path works: a path that is not a regular file (a pipe, a FIFO, a device,
    /// `/dev/stdin`, a process substitution's `/dev/fd/N`) is read front to back by one source
    /// subtask, and its lines are rebalanced over the next operator's subtasks; see
    /// [`read_text_file_with_options`](Self::read_text_file_with_options).
    pub fn read_text_file(&self, path: impl Into<PathBuf>) -> DataStream<String> {
        self.read_text_file_with_options(path, TextFileOptions::default())
    }

    /// [`read_text_file`](Self::read_text_file) with a chosen treatment of lines that are not
    /// valid UTF-8 (skip and report, or fail the job).
    pub fn read_text_file_with(&self, path: impl Into<PathBuf>, invalid_utf8: InvalidUtf8) -> DataStream<String> {
        self.read_text_file_with_options(path, TextFileOptions::default().invalid_utf8(invalid_utf8))
    }

    /// [`read_text_file`](Self::read_text_file) with chosen options: the treatment of lines
    /// that are not valid UTF-8 and the longest line held in memory (longer lines are skipped
    /// and reported as a job warning with the byte offset of the first one).
    ///
    /// How the file is read is decided here, when the job is declared, from the path: a
    /// regular file is split by byte ranges over the source's subtasks (the job's
    /// parallelism), unless its length is 0 (files of /proc say so and are read whole);
    /// anything else, and every path naming one of this process's file descriptors (`/dev/stdin`, `/dev/fd/N`, `/proc/self/fd/N`, whatever they point at), is
    /// read by a source of parallelism 1 followed by a rebalance, so that the work after the
    /// source is still spread. The decision depends only on the path and the file it names,
    /// so processes of one job on one host (each building the plan) make the same one; subtask
    /// 0 of the source reads the stream, and no other process opens it. Such lines cross an
    /// exchange, so each must fit in one record: the line limit is at most
    /// `MAX_RECORD_BYTES - 64` bytes (32 688) for them. A stream is opened and read by a thread
    /// of its own that hands the source at most 256 finished lines at a time, so a writer that
    /// goes quiet never stops the other tasks of the slot, and the job can be cancelled while
    /// it waits.
    pub fn read_text_file_with_options(
        &self,
        path: impl Into<PathBuf>,
        options: TextFileOptions,
    ) -> DataStream<String> {
        let path: PathBuf = path.into();
        let split = text_split_of(&path);
        let parallelism = match split {
            TextSplit::ByteRange => None,
            TextSplit::Whole => Some(1),
        };
        let stream = self.add_source(
            "Source: text file",
            parallelism,
            Rewind::of_text(split),
            Arc::new(move |ctx| Ok(Box::new(FileLinesSource::open(&path, options, split, ctx)?) as _)),
        );
        match split {
            TextSplit::ByteRange => stream,
            TextSplit::Whole => stream.rebalance(),
        }
    }

    /// A source fed by the host application through the returned sender, which blocks (or
    /// refuses, with `try_send`) when `capacity` records are waiting: backpressure reaches the
    /// host. The source ends when every sender has been dropped. Not parallel. It cannot
    /// rewind: see [`SourceSender`] for the guarantee it gives in a job with checkpoints.
    pub fn from_channel<T: Data>(&self, capacity: usize) -> (SourceSender<T>, DataStream<T>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let bell: Arc<OnceLock<Arc<Doorbell>>> = Arc::new(OnceLock::new());
        let sender = SourceSender::new(tx, bell.clone());
        let rx = Mutex::new(Some(rx));
        let stream = self.add_source(
            "Source: channel",
            Some(1),
            Rewind::CHANNEL,
            Arc::new(move |ctx| {
                let rx = rx.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| TaskError::User {
                    node: ctx.node,
                    message: "a channel source can be run only once".into(),
                })?;
                let _ = bell.set(ctx.bell.clone());
                Ok(Box::new(ChannelSource { rx }) as _)
            }),
        );
        (sender, stream)
    }

    /// The plan this job would run with: chains, parallelism, partitioning, buffers.
    pub fn explain(&self) -> Result<String, JobError> {
        self.config.validate().map_err(JobError::InvalidJob)?;
        self.cluster.explain(&self.graph.borrow(), &self.config)
    }

    /// Starts the job and returns at once.
    pub fn execute_async(self, name: &str) -> Result<JobHandle, JobError> {
        self.config.validate().map_err(JobError::InvalidJob)?;
        // An environment submits one job, so the cell is still empty.
        let _ = self.latency_interval.set(self.config.latency_tracking_interval);
        self.fix_source_settings()?;
        let graph = std::mem::take(&mut *self.graph.borrow_mut());
        self.cluster.submit(graph, self.config, name)
    }

    /// This job's plan when it runs as `name` over `split` (see [`crate::registry`]).
    pub(crate) fn plan_summary(
        &self,
        name: &str,
        split: &crate::graph::execution::SlotSplit,
    ) -> Result<crate::runtime::cluster::PlanSummary, JobError> {
        self.config.validate().map_err(JobError::InvalidJob)?;
        self.cluster.plan_summary(&self.graph.borrow(), &self.config, name, split)
    }

    /// Starts this TaskManager's share of the job (see [`LocalCluster::submit_part`]).
    pub(crate) fn execute_part(
        self,
        name: &str,
        placement: crate::runtime::cluster::PartPlacement<'_>,
    ) -> Result<JobHandle, JobError> {
        self.config.validate().map_err(JobError::InvalidJob)?;
        let _ = self.latency_interval.set(self.config.latency_tracking_interval);
        self.fix_source_settings()?;
        let graph = std::mem::take(&mut *self.graph.borrow_mut());
        self.cluster.submit_part(graph, self.config, name, placement)
    }

    /// Runs the job to its end (all sources finished) and returns its result. A job with a
    /// `collect()` sink must use [`execute_async`](Self::execute_async): its output has to be
    /// read while it runs, or the job would wait for a reader forever.
    pub fn execute(self, name: &str) -> Result<JobResult, JobError> {
        if self.graph.borrow().has_collect {
            return Err(JobError::InvalidJob(
                "this job collects its output: start it with execute_async() and read the CollectStream while it runs"
                    .into(),
            ));
        }
        self.execute_async(name)?.join()
    }
}

pub(crate) fn add_node(
    graph: &Rc<RefCell<StreamGraph>>,
    name: &str,
    kind: NodeKind,
    fixed_parallelism: Option<u32>,
    runtime: Arc<dyn NodeRuntime>,
) -> usize {
    let mut g = graph.borrow_mut();
    let id = g.nodes.len();
    g.nodes.push(StreamNode {
        id,
        name: name.to_string(),
        kind,
        parallelism: None,
        fixed_parallelism,
        max_parallelism: None,
        chaining: ChainingStrategy::Always,
        uid: None,
        runtime,
    });
    id
}

pub(crate) fn add_edge(
    graph: &Rc<RefCell<StreamGraph>>,
    from: usize,
    to: usize,
    partitioning: Option<Partitioning>,
    key_hash: Option<Arc<dyn Any + Send + Sync>>,
) {
    graph.borrow_mut().edges.push(StreamEdge { from, to, partitioning, key_hash, side_tag: None });
}

/// Why a job with checkpoints cannot run with these sources ((name, rewind) of each source
/// node), or `None` when every source rewinds or `allow_at_most_once` accepts those that do not.
pub(crate) fn sources_rewind_problem<'a>(
    sources: impl IntoIterator<Item = (&'a str, Rewind)>,
    allow_at_most_once: bool,
) -> Option<String> {
    if allow_at_most_once {
        return None;
    }
    let problems: Vec<String> = sources
        .into_iter()
        .filter_map(|(name, rewind)| match rewind {
            Rewind::Yes => None,
            Rewind::No { guarantee } => Some(format!("'{name}' ({guarantee})")),
        })
        .collect();
    if problems.is_empty() {
        return None;
    }
    Some(format!(
        "this job takes checkpoints, but {} cannot rewind to a checkpoint's position: {}; use sources that can \
         (an application source implements SourceFunction::snapshot_state and restore_state and sets REWINDABLE), \
         or accept at most once for them with StreamEnvironment::allow_at_most_once_sources(true)",
        if problems.len() == 1 { "this source" } else { "these sources" },
        problems.join("; ")
    ))
}

/// Whether `path` names one of this process's file descriptors rather than a file: what it
/// points at differs between processes.
fn names_a_descriptor(path: &Path) -> bool {
    path == Path::new("/dev/stdin")
        || path.starts_with("/dev/fd")
        || path.starts_with("/proc/self/fd")
        || path.starts_with("/proc/thread-self/fd")
}

/// How a text source reads `path`: a regular file by byte ranges, anything else whole (see
/// [`StreamEnvironment::read_text_file_with_options`]). A path that cannot be examined is taken
/// as a regular file; opening it then fails the job with the reason.
pub(crate) fn text_split_of(path: &Path) -> TextSplit {
    if names_a_descriptor(path) {
        return TextSplit::Whole;
    }
    match std::fs::metadata(path) {
        // A regular file of length 0 may be empty or may be generated as it is read (/proc):
        // read to its end rather than trust the length.
        Ok(meta) if !meta.is_file() || meta.len() == 0 => TextSplit::Whole,
        _ => TextSplit::ByteRange,
    }
}
