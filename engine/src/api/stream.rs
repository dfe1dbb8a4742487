//! Typed streams. A [`DataStream`] is the output of one operator (or the union of several);
//! transformations add an operator fed by it and return that operator's stream, and the
//! `set_parallelism`/`name`/chaining methods configure the operator that produced the stream.
//! [`KeyedStream`] routes records by key group to the subtask that owns their key.

use std::any::Any;
use std::cell::RefCell;
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use corestream_netstack::Data;
use corestream_state::stable_hash;

use super::env::{add_edge, add_node};
use super::sinks::{
    CollectSink, CollectStream, DiscardSink, JobCommits, PrintSink, Sink, SinkContext, SinkLink, SinkWaker,
    TextFileSink,
};
use crate::error::TaskError;
use crate::graph::stream_graph::{ChainingStrategy, NodeKind, StreamGraph};
use crate::graph::Partitioning;
use crate::operators::filter::FilterOp;
use crate::operators::flat_map::FlatMapOp;
use crate::operators::map::MapOp;
use crate::operators::reduce::ReduceOp;
use crate::operators::{Emit, OpNode};
use crate::runtime::build::{BuildCtx, KeyHashFn, LinkFactory, OperatorNodeRt};
use crate::time::Timestamps;

/// Capacity of the channel behind `collect()`.
const COLLECT_CAPACITY: usize = 4096;

/// A stream of records of type `T`.
pub struct DataStream<T: Data> {
    pub(crate) graph: Rc<RefCell<StreamGraph>>,
    pub(crate) inputs: Vec<usize>,
    pub(crate) partitioning: Option<Partitioning>,
    pub(crate) key_hash: Option<Arc<dyn Any + Send + Sync>>,
    /// How records of this stream carry their event time, once declared.
    pub(crate) timestamps: Option<Timestamps<T>>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Data> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        Self {
            graph: self.graph.clone(),
            inputs: self.inputs.clone(),
            partitioning: self.partitioning,
            key_hash: self.key_hash.clone(),
            timestamps: self.timestamps.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: Data> std::fmt::Debug for DataStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStream").field("inputs", &self.inputs).field("partitioning", &self.partitioning).finish()
    }
}

impl<T: Data> DataStream<T> {
    pub(crate) fn from_node(graph: Rc<RefCell<StreamGraph>>, node: usize) -> Self {
        Self { graph, inputs: vec![node], partitioning: None, key_hash: None, timestamps: None, _type: PhantomData }
    }

    pub(crate) fn error(&self, message: String) {
        self.graph.borrow_mut().errors.push(message);
    }

    /// Applies `f` to the node that produced this stream (not to a union, not after a
    /// partitioning call, which belongs to the next operator).
    fn configure(self, what: &str, f: impl FnOnce(&mut crate::graph::stream_graph::StreamNode)) -> Self {
        if let Some(p) = self.partitioning {
            self.error(format!(
                "{what} after a partitioning call ({}) would configure the operator before it; \
                 call {what} before partitioning, or on the operator that follows",
                p.name().to_lowercase()
            ));
            return self;
        }
        match self.inputs.as_slice() {
            [node] => f(&mut self.graph.borrow_mut().nodes[*node]),
            _ => self.error(format!("{what} applies to one operator, not to a union of streams")),
        }
        self
    }

    /// Sets the parallelism of the operator that produced this stream.
    pub fn set_parallelism(self, parallelism: u32) -> Self {
        self.configure("set_parallelism", |n| n.parallelism = Some(parallelism))
    }

    /// Sets the number of key groups of the operator that produced this stream.
    pub fn set_max_parallelism(self, max_parallelism: u32) -> Self {
        self.configure("set_max_parallelism", |n| n.max_parallelism = Some(max_parallelism))
    }

    /// Names the operator that produced this stream (shown in plans, results and errors).
    pub fn name(self, name: &str) -> Self {
        self.configure("name", |n| n.name = name.to_string())
    }

    /// Gives the operator that produced this stream a stable id, unique in the job: a savepoint
    /// or checkpoint restores its state into the operator with the same id, whatever else of
    /// the job changed (operators added, removed, rechained, rescaled). Without one the
    /// operator's id is its name (`name#2` for the second of that name, in creation order),
    /// which changes when operators are renamed or added before it.
    pub fn uid(self, uid: &str) -> Self {
        if uid.is_empty() || uid.starts_with(crate::graph::job_graph::AUTO_UID_MARK) {
            self.error(format!("uid {uid:?}: an operator id must be non-empty and not start with '#'"));
            return self;
        }
        self.configure("uid", |n| n.uid = Some(uid.to_string()))
    }

    /// Starts a new chain at the operator that produced this stream.
    pub fn start_new_chain(self) -> Self {
        self.configure("start_new_chain", |n| n.chaining = ChainingStrategy::HeadNewChain)
    }

    /// Never chains the operator that produced this stream.
    pub fn disable_chaining(self) -> Self {
        self.configure("disable_chaining", |n| n.chaining = ChainingStrategy::Never)
    }

    fn partitioned(mut self, partitioning: Partitioning) -> Self {
        self.partitioning = Some(partitioning);
        self.key_hash = None;
        self
    }

    /// Subtask i feeds subtask i of the next operator (equal parallelism required).
    pub fn forward(self) -> Self {
        self.partitioned(Partitioning::Forward)
    }

    /// Round-robin over all subtasks of the next operator.
    pub fn rebalance(self) -> Self {
        self.partitioned(Partitioning::Rebalance)
    }

    /// Round-robin over a local subset of the next operator's subtasks.
    pub fn rescale(self) -> Self {
        self.partitioned(Partitioning::Rescale)
    }

    /// Every record to every subtask of the next operator.
    pub fn broadcast(self) -> Self {
        self.partitioned(Partitioning::Broadcast)
    }

    /// Merges streams of the same type. The union keeps the inputs' timestamp function only
    /// when they all share one (the same assigner upstream); otherwise declare it on the union
    /// with `with_timestamps`.
    pub fn union(mut self, others: impl IntoIterator<Item = DataStream<T>>) -> Self {
        for o in others {
            if !Rc::ptr_eq(&self.graph, &o.graph) {
                self.error(
                    "union of streams from different environments: build the whole job in one environment".into(),
                );
                continue;
            }
            if o.partitioning.is_some() || self.partitioning.is_some() {
                self.error(
                    "union of streams with explicit partitioning is not supported; partition after the union".into(),
                );
            }
            // One timestamp function must read every input's records: keep it only when all
            // inputs share it (declare it on the union with `with_timestamps` otherwise).
            let same = match (&self.timestamps, &o.timestamps) {
                (Some(a), Some(b)) => Arc::ptr_eq(&a.one, &b.one),
                (None, None) => true,
                _ => false,
            };
            if !same {
                self.timestamps = None;
            }
            self.inputs.extend(o.inputs);
        }
        self
    }

    pub(crate) fn add_operator<O: Data>(
        self,
        name: &str,
        kind: NodeKind,
        factory: Arc<LinkFactory<T, O>>,
    ) -> DataStream<O> {
        let id = add_node(&self.graph, name, kind, None, Arc::new(OperatorNodeRt { factory }));
        for input in &self.inputs {
            add_edge(&self.graph, *input, id, self.partitioning, self.key_hash.clone());
        }
        DataStream::from_node(self.graph, id)
    }

    /// One output record per input record.
    pub fn map<U: Data, F: Fn(T) -> U + Send + Sync + 'static>(self, f: F) -> DataStream<U> {
        let f = Arc::new(f);
        self.add_operator(
            "Map",
            NodeKind::Operator,
            Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<U>>| {
                Ok(Box::new(OpNode::new(MapOp { f: f.clone() }, next, ctx.metrics.clone(), ctx.node))
                    as Box<dyn Emit<T>>)
            }),
        )
    }

    /// Keeps the records for which `f` holds.
    pub fn filter<F: Fn(&T) -> bool + Send + Sync + 'static>(self, f: F) -> DataStream<T> {
        let f = Arc::new(f);
        let timestamps = self.timestamps.clone();
        let mut filtered = self.add_operator(
            "Filter",
            NodeKind::Operator,
            Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<T>>| {
                Ok(Box::new(OpNode::new(FilterOp { f: f.clone() }, next, ctx.metrics.clone(), ctx.node))
                    as Box<dyn Emit<T>>)
            }),
        );
        filtered.timestamps = timestamps;
        filtered
    }

    /// Zero or more output records per input record.
    pub fn flat_map<U, R, F>(self, f: F) -> DataStream<U>
    where
        U: Data,
        R: IntoIterator<Item = U> + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.add_operator(
            "FlatMap",
            NodeKind::Operator,
            Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<U>>| {
                Ok(Box::new(OpNode::new(FlatMapOp { f: f.clone() }, next, ctx.metrics.clone(), ctx.node))
                    as Box<dyn Emit<T>>)
            }),
        )
    }

    /// Partitions the stream by key: each key's records go to the subtask owning its key group.
    pub fn key_by<K, KF>(self, key: KF) -> KeyedStream<T, K, KF>
    where
        K: Hash + Eq + Send + 'static,
        KF: Fn(&T) -> K + Send + Sync + 'static,
    {
        let key = Arc::new(key);
        let k = key.clone();
        let hash: Arc<KeyHashFn<T>> =
            Arc::new(move |records: &[T], out: &mut Vec<u64>| out.extend(records.iter().map(|r| stable_hash(&k(r)))));
        let mut stream = self.partitioned(Partitioning::Hash);
        stream.key_hash = Some(Arc::new(hash));
        KeyedStream { stream, key, _key: PhantomData }
    }

    /// Ends the stream in a custom sink built per subtask by `factory`.
    pub fn add_sink<S, F>(self, name: &str, factory: F) -> DataStreamSink
    where
        S: Sink<T>,
        F: Fn(SinkContext) -> Result<S, crate::api::sinks::SinkError> + Send + Sync + 'static,
    {
        let factory = Arc::new(factory);
        let sink = self.add_operator(
            name,
            NodeKind::Sink,
            Arc::new(move |ctx: &BuildCtx<'_>, _next: Box<dyn Emit<()>>| {
                let sctx = SinkContext {
                    subtask: ctx.subtask,
                    parallelism: ctx.parallelism,
                    waker: SinkWaker { bell: ctx.bell.clone() },
                    commits: JobCommits { job: ctx.job.clone() },
                };
                let sink = factory(sctx).map_err(|e| TaskError::User { node: ctx.node, message: e.to_string() })?;
                Ok(Box::new(SinkLink { sink, scratch: Vec::new(), metrics: ctx.metrics.clone(), node: ctx.node })
                    as Box<dyn Emit<T>>)
            }),
        );
        DataStreamSink { stream: sink }
    }

    /// Drops every record (they are still counted in the job result).
    pub fn discard(self) -> DataStreamSink {
        self.add_sink("Sink: discard", |_| Ok(DiscardSink))
    }

    /// Prints every record to standard output.
    pub fn print(self) -> DataStreamSink
    where
        T: Debug,
    {
        self.add_sink("Sink: print", |ctx: SinkContext| {
            Ok(PrintSink { prefix: (ctx.parallelism > 1).then_some(ctx.subtask + 1) })
        })
    }

    /// Writes one line per record; a directory of `part-<subtask>` files when parallel.
    pub fn write_as_text(self, path: impl Into<PathBuf>) -> DataStreamSink
    where
        T: Display,
    {
        let path: PathBuf = path.into();
        self.add_sink("Sink: text file", move |ctx| TextFileSink::create(&path, ctx))
    }

    /// Delivers the records to the host application, which reads them from the returned
    /// stream while the job runs (started with `execute_async`).
    pub fn collect(self) -> CollectStream<T> {
        let (tx, stream) = CollectStream::new(COLLECT_CAPACITY);
        let shared = stream.shared.clone();
        let tx = std::sync::Mutex::new(Some(tx));
        let factory: Arc<LinkFactory<T, ()>> = Arc::new(move |ctx: &BuildCtx<'_>, _next: Box<dyn Emit<()>>| {
            shared.bells.lock().unwrap_or_else(|e| e.into_inner()).push(ctx.bell.clone());
            let tx = tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .cloned()
                .ok_or_else(|| TaskError::User { node: ctx.node, message: "collect sink already closed".into() })?;
            let sink = CollectSink { tx, pending: Default::default(), shared: shared.clone(), disconnected: false };
            Ok(Box::new(SinkLink { sink, scratch: Vec::new(), metrics: ctx.metrics.clone(), node: ctx.node })
                as Box<dyn Emit<T>>)
        });
        self.graph.borrow_mut().has_collect = true;
        self.add_operator("Sink: collect", NodeKind::Sink, factory);
        stream
    }
}

/// The end of a stream: a sink, which can be configured but not continued.
#[derive(Debug)]
pub struct DataStreamSink {
    stream: DataStream<()>,
}

impl DataStreamSink {
    /// Sets the parallelism of the sink.
    pub fn set_parallelism(self, parallelism: u32) -> Self {
        Self { stream: self.stream.set_parallelism(parallelism) }
    }

    /// Names the sink (shown in plans, results and errors).
    pub fn name(self, name: &str) -> Self {
        Self { stream: self.stream.name(name) }
    }

    /// Gives the sink a stable id (see [`DataStream::uid`]).
    pub fn uid(self, uid: &str) -> Self {
        Self { stream: self.stream.uid(uid) }
    }

    /// Runs the sink in its own task rather than chained to its input.
    pub fn disable_chaining(self) -> Self {
        Self { stream: self.stream.disable_chaining() }
    }
}

/// A stream partitioned by key.
pub struct KeyedStream<T: Data, K, KF> {
    pub(crate) stream: DataStream<T>,
    pub(crate) key: Arc<KF>,
    _key: PhantomData<fn() -> K>,
}

impl<T: Data, K, KF> std::fmt::Debug for KeyedStream<T, K, KF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream").field("stream", &self.stream).finish()
    }
}

impl<T, K, KF> KeyedStream<T, K, KF>
where
    T: Data,
    K: Hash + Eq + Send + 'static,
    KF: Fn(&T) -> K + Send + Sync + 'static,
{
    /// Running reduce per key: in streaming mode every record emits its key's new value; in
    /// batch mode each key's final value is emitted when the input ends.
    pub fn reduce<F: Fn(T, T) -> T + Send + Sync + 'static>(self, f: F) -> DataStream<T>
    where
        T: Clone,
        K: corestream_state::StateKey,
    {
        let (key, f) = (self.key, Arc::new(f));
        self.stream.add_operator(
            "Keyed Reduce",
            NodeKind::Operator,
            Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<T>>| {
                let op = ReduceOp::new(key.clone(), f.clone(), ctx.mode, ctx.max_parallelism, ctx.key_groups());
                Ok(Box::new(OpNode::new(op, next, ctx.metrics.clone(), ctx.node)) as Box<dyn Emit<T>>)
            }),
        )
    }

    /// The underlying (hash-partitioned) stream, for operators that are not keyed.
    pub fn into_stream(self) -> DataStream<T> {
        self.stream
    }
}
