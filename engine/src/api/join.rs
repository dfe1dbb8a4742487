//! Joins and multi-input streams: `connect` with co-process functions (keyed or not), window
//! joins and co-groups over any window assigner, interval joins, and the broadcast-state
//! pattern. Every one of them tags the two inputs as [`Either`] records with chained maps and
//! feeds both to one operator (see `operators::join`).

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use corestream_netstack::Data;
use corestream_state::{StateKey, StateValue};

use super::env::{add_edge, add_node};
use super::stream::{DataStream, KeyedStream};
use super::time::OutputTag;
use crate::graph::stream_graph::NodeKind;
use crate::graph::Partitioning;
use crate::operators::join::{
    BroadcastOp, CoAdapter, CoProcessFunction, Either, IntervalJoinOp, JoinedTimestamps, KeyedBroadcastProcessFunction,
    KeyedCoAdapter, KeyedCoProcessFunction,
};
use crate::operators::{Emit, OpNode};
use crate::runtime::build::{BuildCtx, KeyHashFn, LinkFactory, OperatorNodeRt};
use crate::time::TimestampFn;
use crate::windows::{Trigger, WindowAssigner};
use crate::WindowContext;

impl<T: Data> DataStream<T> {
    /// The stream without its pending partitioning (the tagged stream is partitioned again).
    fn unpartitioned(mut self) -> Self {
        self.partitioning = None;
        self.key_hash = None;
        self
    }

    /// Tags the records with a map that runs at the producer's parallelism, so it chains to
    /// the producer and each producing subtask's records keep their order.
    fn tagged<X: Data, F: Fn(T) -> X + Send + Sync + 'static>(self, name: &str, f: F) -> DataStream<X> {
        let parallelism = match self.inputs.as_slice() {
            [node] => {
                let g = self.graph.borrow();
                g.nodes[*node].parallelism.or(g.nodes[*node].fixed_parallelism)
            }
            _ => None,
        };
        let tagged = self.unpartitioned().map(f).name(name);
        match parallelism {
            Some(p) => tagged.set_parallelism(p),
            None => tagged,
        }
    }
}

/// Tags both inputs and unions them; the union reads timestamps through both inputs' functions.
fn tag_pair<A: Data, B: Data>(a: DataStream<A>, b: DataStream<B>) -> DataStream<Either<A, B>>
where
    Either<A, B>: Data,
{
    let (ta, tb) = (a.timestamps.clone(), b.timestamps.clone());
    let left = a.tagged("Tag: first input", Either::Left);
    let right = b.tagged("Tag: second input", Either::Right);
    let union = left.union([right]);
    match (ta, tb) {
        (Some(ta), Some(tb)) => {
            let (ta, tb) = (ta.one, tb.one);
            union.with_timestamps(move |e: &Either<A, B>| match e {
                Either::Left(a) => ta(a),
                Either::Right(b) => tb(b),
            })
        }
        _ => union,
    }
}

/// Two streams connected for a co-process function.
pub struct ConnectedStreams<A: Data, B: Data> {
    first: DataStream<A>,
    second: DataStream<B>,
}

impl<A: Data, B: Data> std::fmt::Debug for ConnectedStreams<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectedStreams").finish_non_exhaustive()
    }
}

impl<T: Data> DataStream<T> {
    /// Connects two streams (of possibly different types) for a co-process function.
    pub fn connect<B: Data>(self, other: DataStream<B>) -> ConnectedStreams<T, B> {
        ConnectedStreams { first: self, second: other }
    }

    /// Starts a window join with `other`: pairs of records with equal keys in the same window.
    pub fn join<B: Data>(self, other: DataStream<B>) -> JoinBuilder<T, B> {
        JoinBuilder { first: self, second: other }
    }
}

impl<A: Data, B: Data> ConnectedStreams<A, B>
where
    Either<A, B>: Data,
{
    /// Runs a co-process function built per subtask by `factory`.
    pub fn process<O, P, F>(self, factory: F) -> DataStream<O>
    where
        O: Data,
        P: CoProcessFunction<A, B, O>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        tag_pair(self.first, self.second).process(move || CoAdapter(factory()))
    }

    /// Keys both inputs (with equal key types), so a keyed co-process function sees the
    /// records of both with the same key on one subtask, with shared state and timers.
    #[allow(clippy::type_complexity)]
    pub fn key_by<K, KA, KB>(
        self,
        key_a: KA,
        key_b: KB,
    ) -> KeyedConnectedStreams<A, B, K, impl Fn(&Either<A, B>) -> K + Send + Sync + 'static>
    where
        K: StateKey + Send + Hash,
        KA: Fn(&A) -> K + Send + Sync + 'static,
        KB: Fn(&B) -> K + Send + Sync + 'static,
    {
        let keyed = tag_pair(self.first, self.second).key_by(move |e: &Either<A, B>| match e {
            Either::Left(a) => key_a(a),
            Either::Right(b) => key_b(b),
        });
        KeyedConnectedStreams { keyed }
    }
}

/// Two connected streams keyed alike.
pub struct KeyedConnectedStreams<A: Data, B: Data, K, KF> {
    keyed: KeyedStream<Either<A, B>, K, KF>,
}

impl<A: Data, B: Data, K, KF> std::fmt::Debug for KeyedConnectedStreams<A, B, K, KF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedConnectedStreams").finish_non_exhaustive()
    }
}

impl<A, B, K, KF> KeyedConnectedStreams<A, B, K, KF>
where
    A: Data,
    B: Data,
    Either<A, B>: Data,
    K: StateKey + Send + Hash,
    KF: Fn(&Either<A, B>) -> K + Send + Sync + 'static,
{
    /// Runs a keyed co-process function built per subtask by `factory`.
    pub fn process<O, P, F>(self, factory: F) -> DataStream<O>
    where
        O: Data,
        P: KeyedCoProcessFunction<K, A, B, O>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        self.keyed.process(move || KeyedCoAdapter(factory()))
    }
}

/// A window join or co-group being declared: `a.join(b).where_key(ka).equal_to(kb).window(w)`.
pub struct JoinBuilder<A: Data, B: Data> {
    first: DataStream<A>,
    second: DataStream<B>,
}

impl<A: Data, B: Data> std::fmt::Debug for JoinBuilder<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinBuilder").finish_non_exhaustive()
    }
}

/// The first input's key is chosen.
pub struct JoinWhere<A: Data, B: Data, K, KA> {
    first: DataStream<A>,
    second: DataStream<B>,
    key_a: KA,
    _k: PhantomData<fn() -> K>,
}

impl<A: Data, B: Data, K, KA> std::fmt::Debug for JoinWhere<A, B, K, KA> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinWhere").finish_non_exhaustive()
    }
}

impl<A: Data, B: Data> JoinBuilder<A, B> {
    /// The key of the first input.
    pub fn where_key<K, KA: Fn(&A) -> K + Send + Sync + 'static>(self, key_a: KA) -> JoinWhere<A, B, K, KA> {
        JoinWhere { first: self.first, second: self.second, key_a, _k: PhantomData }
    }
}

/// Both keys chosen; waiting for the window.
pub struct JoinEqual<A: Data, B: Data, K, KA, KB> {
    first: DataStream<A>,
    second: DataStream<B>,
    key_a: KA,
    key_b: KB,
    _k: PhantomData<fn() -> K>,
}

impl<A: Data, B: Data, K, KA, KB> std::fmt::Debug for JoinEqual<A, B, K, KA, KB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinEqual").finish_non_exhaustive()
    }
}

impl<A: Data, B: Data, K, KA> JoinWhere<A, B, K, KA> {
    /// The key of the second input (equal keys join).
    pub fn equal_to<KB: Fn(&B) -> K + Send + Sync + 'static>(self, key_b: KB) -> JoinEqual<A, B, K, KA, KB> {
        JoinEqual { first: self.first, second: self.second, key_a: self.key_a, key_b, _k: PhantomData }
    }
}

/// A window join or co-group with its window.
pub struct JoinedWindows<A: Data, B: Data, K, KA, KB> {
    join: JoinEqual<A, B, K, KA, KB>,
    assigner: WindowAssigner,
    trigger: Option<Trigger>,
    lateness: std::time::Duration,
}

impl<A: Data, B: Data, K, KA, KB> std::fmt::Debug for JoinedWindows<A, B, K, KA, KB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinedWindows").field("assigner", &self.assigner).finish_non_exhaustive()
    }
}

impl<A: Data, B: Data, K, KA, KB> JoinEqual<A, B, K, KA, KB> {
    /// Joins within the windows of `assigner` (tumbling, sliding or session).
    pub fn window(self, assigner: WindowAssigner) -> JoinedWindows<A, B, K, KA, KB> {
        JoinedWindows { join: self, assigner, trigger: None, lateness: std::time::Duration::ZERO }
    }
}

impl<A, B, K, KA, KB> JoinedWindows<A, B, K, KA, KB>
where
    A: StateValue,
    B: StateValue,
    Either<A, B>: Data + Clone,
    K: StateKey + Send + Hash,
    KA: Fn(&A) -> K + Send + Sync + 'static,
    KB: Fn(&B) -> K + Send + Sync + 'static,
{
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = Some(trigger);
        self
    }

    pub fn allowed_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.lateness = lateness;
        self
    }

    /// Co-group: for each key and window that fired, every record of each input.
    pub fn co_group<O, F>(self, f: F) -> DataStream<O>
    where
        O: Data,
        F: Fn(&WindowContext<'_, K>, Vec<A>, Vec<B>, &mut Vec<O>) + Send + Sync + 'static,
    {
        let JoinEqual { first, second, key_a, key_b, .. } = self.join;
        let keyed = tag_pair(first, second).key_by(move |e: &Either<A, B>| match e {
            Either::Left(a) => key_a(a),
            Either::Right(b) => key_b(b),
        });
        let mut windowed = keyed.window(self.assigner).allowed_lateness(self.lateness);
        if let Some(t) = self.trigger {
            windowed = windowed.trigger(t);
        }
        let stream =
            windowed.process(move |ctx: &WindowContext<'_, K>, records: Vec<Either<A, B>>, out: &mut Vec<O>| {
                let (mut lefts, mut rights) = (Vec::new(), Vec::new());
                for r in records {
                    match r {
                        Either::Left(a) => lefts.push(a),
                        Either::Right(b) => rights.push(b),
                    }
                }
                f(ctx, lefts, rights, out);
            });
        stream.name("Window(CoGroup)")
    }

    /// Inner join: `f` for every pair of records with equal keys in the same window.
    pub fn apply<O, F>(self, f: F) -> DataStream<O>
    where
        O: Data,
        F: Fn(&A, &B) -> O + Send + Sync + 'static,
    {
        self.co_group(move |_, lefts: Vec<A>, rights: Vec<B>, out: &mut Vec<O>| {
            for a in &lefts {
                for b in &rights {
                    out.push(f(a, b));
                }
            }
        })
        .name("Window(Join)")
    }
}

/// An interval join being declared: `a.key_by(ka).interval_join(b.key_by(kb))`.
pub struct IntervalJoin<A: Data, B: Data, K, KA, KB> {
    left: KeyedStream<A, K, KA>,
    right: KeyedStream<B, K, KB>,
    lower: i64,
    upper: i64,
    late_left: Option<String>,
    late_right: Option<String>,
}

impl<A: Data, B: Data, K, KA, KB> std::fmt::Debug for IntervalJoin<A, B, K, KA, KB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalJoin").field("lower", &self.lower).field("upper", &self.upper).finish_non_exhaustive()
    }
}

impl<A, K, KA> KeyedStream<A, K, KA>
where
    A: Data,
    K: StateKey + Send + Hash,
    KA: Fn(&A) -> K + Send + Sync + 'static,
{
    /// Joins each record of this stream with the records of `other` with the same key whose
    /// timestamps lie within the bounds set by [`IntervalJoin::between_ms`].
    pub fn interval_join<B: Data, KB>(self, other: KeyedStream<B, K, KB>) -> IntervalJoin<A, B, K, KA, KB> {
        IntervalJoin { left: self, right: other, lower: 0, upper: 0, late_left: None, late_right: None }
    }

    /// Connects a broadcast stream of rules (every subtask sees every rule) to this keyed
    /// stream, for a [`KeyedBroadcastProcessFunction`].
    pub fn connect_broadcast<R: Data>(self, rules: DataStream<R>) -> BroadcastConnectedStream<A, R, K, KA> {
        BroadcastConnectedStream { keyed: self, rules }
    }
}

impl<A, B, K, KA, KB> IntervalJoin<A, B, K, KA, KB>
where
    A: StateValue,
    B: StateValue,
    Either<A, B>: Data,
    K: StateKey + Send + Hash,
    KA: Fn(&A) -> K + Send + Sync + 'static,
    KB: Fn(&B) -> K + Send + Sync + 'static,
{
    /// Left `a` at `ta` matches right `b` at `tb` when `ta + lower <= tb <= ta + upper`
    /// (milliseconds, inclusive; `lower <= upper`).
    pub fn between_ms(mut self, lower: i64, upper: i64) -> Self {
        self.lower = lower;
        self.upper = upper;
        self
    }

    /// Left records that arrive behind the watermark go to `tag` instead of being dropped.
    pub fn side_output_left_late_data(mut self, tag: &OutputTag<A>) -> Self {
        self.late_left = Some(tag.id().to_string());
        self
    }

    /// Right records that arrive behind the watermark go to `tag` instead of being dropped.
    pub fn side_output_right_late_data(mut self, tag: &OutputTag<B>) -> Self {
        self.late_right = Some(tag.id().to_string());
        self
    }

    /// Calls `f` for every matching pair.
    pub fn process<O, F>(self, f: F) -> DataStream<O>
    where
        O: Data,
        F: Fn(&A, &B, JoinedTimestamps, &mut Vec<O>) + Send + Sync + 'static,
    {
        let (key_a, key_b) = (self.left.key.clone(), self.right.key.clone());
        let tagged = tag_pair(self.left.stream, self.right.stream);
        if self.lower > self.upper {
            tagged.error(format!(
                "interval join: lower bound {} ms is above the upper bound {} ms",
                self.lower, self.upper
            ));
        }
        let Some(timestamps) = tagged.timestamps.clone().map(|t| t.one) else {
            tagged.error(
                "interval join needs timestamps on both inputs: call assign_timestamps_and_watermarks on each".into(),
            );
            return tagged.map(|_| unreachable!("invalid job is refused before it runs"));
        };
        let keyed = tagged.key_by(move |e: &Either<A, B>| match e {
            Either::Left(a) => key_a(a),
            Either::Right(b) => key_b(b),
        });
        let key = keyed.key.clone();
        let (lower, upper, f) = (self.lower, self.upper, Arc::new(f));
        let late = (self.late_left, self.late_right);
        let factory: Arc<LinkFactory<Either<A, B>, O>> = Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<O>>| {
            let (sides, sinks) = ctx.take_sides();
            let backend = ctx.keyed_backend();
            let op = IntervalJoinOp::new(
                key.clone(),
                timestamps.clone(),
                lower,
                upper,
                f.clone(),
                backend,
                &sides,
                late.clone(),
                ctx.metrics.clone(),
            );
            Ok(Box::new(OpNode::with_sides(op, next, sinks, ctx.metrics.clone(), ctx.node))
                as Box<dyn Emit<Either<A, B>>>)
        });
        keyed.stream.add_operator("Interval Join", NodeKind::Operator, factory)
    }
}

/// A keyed stream connected to a broadcast stream of rules.
pub struct BroadcastConnectedStream<A: Data, R: Data, K, KA> {
    keyed: KeyedStream<A, K, KA>,
    rules: DataStream<R>,
}

impl<A: Data, R: Data, K, KA> std::fmt::Debug for BroadcastConnectedStream<A, R, K, KA> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastConnectedStream").finish_non_exhaustive()
    }
}

impl<A, R, K, KA> BroadcastConnectedStream<A, R, K, KA>
where
    A: Data,
    R: Data,
    Either<A, R>: Data,
    K: StateKey + Send + Hash,
    KA: Fn(&A) -> K + Send + Sync + 'static,
{
    /// Runs a keyed broadcast process function built per subtask by `factory`.
    pub fn process<O, P, F>(self, factory: F) -> DataStream<O>
    where
        O: Data,
        P: KeyedBroadcastProcessFunction<K, A, R, O>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let graph = self.keyed.stream.graph.clone();
        let key = self.keyed.key.clone();
        let timestamps: Option<Arc<TimestampFn<A>>> = self.keyed.stream.timestamps.clone().map(|t| t.one);
        let left = self.keyed.stream.tagged("Tag: keyed input", Either::<A, R>::Left);
        let right = self.rules.tagged("Tag: broadcast input", Either::<A, R>::Right);
        let k = key.clone();
        let hash: Arc<KeyHashFn<Either<A, R>>> = Arc::new(move |records: &[Either<A, R>], out: &mut Vec<u64>| {
            out.extend(records.iter().map(|r| match r {
                Either::Left(a) => corestream_state::stable_hash(&k(a)),
                Either::Right(_) => 0,
            }))
        });
        let link: Arc<LinkFactory<Either<A, R>, O>> = Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<O>>| {
            let (sides, sinks) = ctx.take_sides();
            let backend = ctx.keyed_backend();
            let op = BroadcastOp::new(
                factory(),
                key.clone(),
                timestamps.clone(),
                backend,
                sides,
                (ctx.subtask, ctx.parallelism),
            );
            Ok(Box::new(OpNode::with_sides(op, next, sinks, ctx.metrics.clone(), ctx.node))
                as Box<dyn Emit<Either<A, R>>>)
        });
        let id =
            add_node(&graph, "Broadcast Process", NodeKind::Operator, None, Arc::new(OperatorNodeRt { factory: link }));
        for input in &left.inputs {
            add_edge(&graph, *input, id, Some(Partitioning::Hash), Some(Arc::new(hash.clone())));
        }
        for input in &right.inputs {
            add_edge(&graph, *input, id, Some(Partitioning::Broadcast), None);
        }
        DataStream::from_node(graph, id)
    }
}
