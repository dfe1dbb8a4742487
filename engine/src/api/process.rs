//! `process` on streams and keyed streams: the process-function operators with their state,
//! timers and side outputs. Functions are built once per subtask by a factory, because they
//! hold per-subtask state handles.

use std::sync::Arc;

use corestream_netstack::Data;
use corestream_state::StateKey;

use super::stream::{DataStream, KeyedStream};
use crate::graph::stream_graph::NodeKind;
use crate::operators::process::{KeyedProcessFunction, KeyedProcessOp, ProcessFunction, ProcessOp};
use crate::operators::{Emit, OpNode};
use crate::runtime::build::{BuildCtx, LinkFactory};

impl<T: Data> DataStream<T> {
    /// Runs a process function built per subtask by `factory` over every record.
    pub fn process<O, P, F>(self, factory: F) -> DataStream<O>
    where
        O: Data,
        P: ProcessFunction<T, O>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let timestamps = self.timestamps.clone();
        let link: Arc<LinkFactory<T, O>> = Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<O>>| {
            let (sides, sinks) = ctx.take_sides();
            let op = ProcessOp::new(factory(), timestamps.clone(), sides, ctx.subtask, ctx.parallelism);
            Ok(Box::new(OpNode::with_sides(op, next, sinks, ctx.metrics.clone(), ctx.node)) as Box<dyn Emit<T>>)
        });
        self.add_operator("Process", NodeKind::Operator, link)
    }
}

impl<T, K, KF> KeyedStream<T, K, KF>
where
    T: Data,
    K: StateKey + Send,
    KF: Fn(&T) -> K + Send + Sync + 'static,
{
    /// Runs a keyed process function built per subtask by `factory`, with keyed state and
    /// timers scoped to each record's key.
    pub fn process<O, P, F>(self, factory: F) -> DataStream<O>
    where
        O: Data,
        P: KeyedProcessFunction<K, T, O>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let timestamps = self.stream.timestamps.clone();
        let key = self.key.clone();
        let link: Arc<LinkFactory<T, O>> = Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<O>>| {
            let (sides, sinks) = ctx.take_sides();
            let backend = ctx.keyed_backend();
            let op = KeyedProcessOp::new::<O>(
                factory(),
                key.clone(),
                timestamps.clone(),
                backend,
                sides,
                ctx.subtask,
                ctx.parallelism,
            );
            Ok(Box::new(OpNode::with_sides(op, next, sinks, ctx.metrics.clone(), ctx.node)) as Box<dyn Emit<T>>)
        });
        self.stream.add_operator("Keyed Process", NodeKind::Operator, link)
    }
}
