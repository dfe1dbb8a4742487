//! Event time on the DataStream API: assigning timestamps and watermarks, declaring how a
//! derived stream reads its timestamps, ingestion time, and side outputs ([`OutputTag`]).
//!
//! A record's event time is read from the record by the stream's timestamp function (as a
//! rowtime attribute in Flink SQL), so it costs no bytes on the wire; `filter`, `union`,
//! partitioning and `key_by` keep it, while operators that change the record type end it — the
//! derived stream declares it again with [`DataStream::with_timestamps`] (watermarks keep
//! flowing regardless). Window results carry their window, so their timestamp is
//! `window_end - 1` when a later window needs one, as in Flink.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Arc;

use corestream_netstack::Data;

use super::stream::DataStream;
use crate::graph::stream_graph::NodeKind;
use crate::operators::watermarks::WatermarkLink;
use crate::operators::{now_ms, Emit, OpNode, Operator};
use crate::runtime::build::{BuildCtx, LinkFactory};
use crate::time::strategy::WatermarkStrategy;

/// Names a side output of records of type `X` (Flink's `OutputTag`).
pub struct OutputTag<X> {
    pub(crate) id: String,
    _type: PhantomData<fn() -> X>,
}

impl<X> OutputTag<X> {
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into(), _type: PhantomData }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<X> Clone for OutputTag<X> {
    fn clone(&self) -> Self {
        Self::new(self.id.clone())
    }
}

impl<X> std::fmt::Debug for OutputTag<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OutputTag").field(&self.id).finish()
    }
}

/// A record with the time it entered the job (ingestion time).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Timestamped<T> {
    pub timestamp: i64,
    pub value: T,
}

struct IngestOp;

impl<T: Data> Operator<T, Timestamped<T>> for IngestOp {
    fn process(&mut self, record: T, out: &mut Vec<Timestamped<T>>) {
        out.push(Timestamped { timestamp: now_ms(), value: record });
    }

    fn process_batch(&mut self, input: &mut Vec<T>, out: &mut Vec<Timestamped<T>>) {
        let timestamp = now_ms();
        out.extend(input.drain(..).map(|value| Timestamped { timestamp, value }));
    }
}

struct PassThrough;

impl<T: Data> Operator<T, T> for PassThrough {
    #[inline]
    fn process(&mut self, record: T, out: &mut Vec<T>) {
        out.push(record);
    }

    fn process_batch(&mut self, input: &mut Vec<T>, out: &mut Vec<T>) {
        out.append(input);
    }
}

impl<T: Data> DataStream<T> {
    /// Assigns event timestamps and generates watermarks for this stream (Flink's
    /// `assignTimestampsAndWatermarks`); downstream event-time operators use both.
    pub fn assign_timestamps_and_watermarks(self, strategy: WatermarkStrategy<T>) -> DataStream<T> {
        let Some(timestamps) = strategy.timestamps.clone() else {
            self.error(
                "assign_timestamps_and_watermarks: the watermark strategy has no timestamp assigner; \
                 add one with with_timestamp_assigner"
                    .into(),
            );
            return self;
        };
        let ts = timestamps.clone();
        let factory: Arc<LinkFactory<T, T>> = Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<T>>| {
            Ok(Box::new(WatermarkLink::new(
                ts.clone(),
                (strategy.generator)(),
                strategy.emission,
                ctx.auto_watermark_interval,
                strategy.idleness,
                next,
                ctx.metrics.clone(),
                ctx.node,
            )) as Box<dyn Emit<T>>)
        });
        let mut stream = self.add_operator("Timestamps/Watermarks", NodeKind::Operator, factory);
        stream.timestamps = Some(timestamps);
        stream
    }

    /// Declares how this stream's records carry their event time, without generating
    /// watermarks (those of the upstream assigner keep flowing).
    pub fn with_timestamps<F: Fn(&T) -> i64 + Send + Sync + 'static>(mut self, f: F) -> DataStream<T> {
        self.timestamps = Some(crate::time::Timestamps::new(f));
        self
    }

    /// Stamps every record with the processing time at which it entered the job (ingestion
    /// time) and generates monotonic watermarks from it.
    pub fn assign_ingestion_timestamps(self) -> DataStream<Timestamped<T>>
    where
        Timestamped<T>: Data,
    {
        let factory: Arc<LinkFactory<T, Timestamped<T>>> =
            Arc::new(|ctx: &BuildCtx<'_>, next: Box<dyn Emit<Timestamped<T>>>| {
                Ok(Box::new(OpNode::new(IngestOp, next, ctx.metrics.clone(), ctx.node)) as Box<dyn Emit<T>>)
            });
        self.add_operator("Ingestion Time", NodeKind::Operator, factory).assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &Timestamped<T>| r.timestamp),
        )
    }

    /// The records the operator that produced this stream sent to `tag`.
    pub fn side_output<X: Data>(&self, tag: &OutputTag<X>) -> DataStream<X> {
        let [producer] = self.inputs.as_slice() else {
            self.error(format!("side_output('{}') applies to one operator, not to a union", tag.id));
            return DataStream::from_node(self.graph.clone(), self.inputs[0]);
        };
        let producer = *producer;
        {
            let mut g = self.graph.borrow_mut();
            let ty = TypeId::of::<X>();
            match g.side_tags.iter().find(|(id, _)| *id == tag.id) {
                Some((_, t)) if *t != ty => {
                    let msg = format!("output tag '{}' is used with two different record types", tag.id);
                    drop(g);
                    self.error(msg);
                }
                Some(_) => {}
                None => g.side_tags.push((tag.id.clone(), ty)),
            }
        }
        let parallelism = self.graph.borrow().nodes[producer].parallelism;
        let factory: Arc<LinkFactory<X, X>> = Arc::new(|ctx: &BuildCtx<'_>, next: Box<dyn Emit<X>>| {
            Ok(Box::new(OpNode::new(PassThrough, next, ctx.metrics.clone(), ctx.node)) as Box<dyn Emit<X>>)
        });
        let name = format!("Side Output: {}", tag.id);
        let id = super::env::add_node(
            &self.graph,
            &name,
            NodeKind::Operator,
            None,
            Arc::new(crate::runtime::build::OperatorNodeRt { factory }),
        );
        {
            let mut g = self.graph.borrow_mut();
            g.nodes[id].parallelism = parallelism;
            g.edges.push(crate::graph::stream_graph::StreamEdge {
                from: producer,
                to: id,
                partitioning: None,
                key_hash: None,
                side_tag: Some(tag.id.clone()),
            });
        }
        DataStream::from_node(self.graph.clone(), id)
    }
}
