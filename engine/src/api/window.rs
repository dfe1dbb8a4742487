//! Windowed streams (Flink's `WindowedStream`): `keyed.window(assigner)`, optionally with a
//! trigger, allowed lateness and a side output for late records, ended by a window function —
//! `reduce` and `aggregate` (incremental: one value per window), `process` (the whole window
//! with its metadata), or `aggregate_process` (incremental, then the result with the window's
//! metadata).

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use corestream_netstack::Data;
use corestream_state::{
    AggregateFunction, AggregatingStateDescriptor, KeyedStateBackend, ListStateDescriptor, ReducingStateDescriptor,
    StateKey, StateValue,
};

use super::stream::{DataStream, KeyedStream};
use super::time::OutputTag;
use crate::graph::stream_graph::NodeKind;
use crate::operators::{Emit, OpNode};
use crate::runtime::build::{BuildCtx, LinkFactory};
use crate::windows::operator::{
    AggregateContents, ListContents, ReduceContents, WindowContents, WindowContext, WindowOperator, WindowSpec,
};
use crate::windows::{TimeWindow, Trigger, WindowAssigner};

/// A keyed stream cut into windows, waiting for its window function.
pub struct WindowedStream<T: Data, K, KF> {
    keyed: KeyedStream<T, K, KF>,
    assigner: WindowAssigner,
    trigger: Option<Trigger>,
    allowed_lateness: i64,
    late: Option<String>,
}

impl<T: Data, K, KF> std::fmt::Debug for WindowedStream<T, K, KF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedStream")
            .field("assigner", &self.assigner)
            .field("trigger", &self.trigger)
            .field("allowed_lateness", &self.allowed_lateness)
            .finish()
    }
}

impl<T, K, KF> KeyedStream<T, K, KF>
where
    T: Data,
    K: StateKey + Send,
    KF: Fn(&T) -> K + Send + Sync + 'static,
{
    /// Cuts each key's records into windows.
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<T, K, KF> {
        WindowedStream { keyed: self, assigner, trigger: None, allowed_lateness: 0, late: None }
    }
}

impl<T, K, KF> WindowedStream<T, K, KF>
where
    T: Data,
    K: StateKey + Send + Hash,
    KF: Fn(&T) -> K + Send + Sync + 'static,
{
    /// Replaces the default trigger (event time for event-time windows, processing time for
    /// processing-time windows).
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = Some(trigger);
        self
    }

    /// Keeps event-time windows after they fire for `lateness` more event time: a late record
    /// within it updates the window and fires it again.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// Sends records later than the allowed lateness to `tag` instead of dropping them.
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late = Some(tag.id().to_string());
        self
    }

    fn spec(&self) -> Result<WindowSpec<T>, String> {
        self.assigner.validate()?;
        let trigger = self.trigger.clone().unwrap_or(if self.assigner.is_event_time() {
            Trigger::EventTime
        } else {
            Trigger::ProcessingTime
        });
        trigger.validate()?;
        let timestamps = self.keyed.stream.timestamps.clone();
        if self.assigner.is_event_time() && timestamps.is_none() {
            return Err("event-time windows on a stream without timestamps: call assign_timestamps_and_watermarks \
                        before key_by (or with_timestamps on a derived stream, or on a union of streams whose \
                        timestamp assigners differ)"
                .into());
        }
        Ok(WindowSpec { assigner: self.assigner, trigger, allowed_lateness: self.allowed_lateness, timestamps })
    }

    fn build<O, C, CF>(self, name: &str, contents: CF) -> DataStream<O>
    where
        O: Data,
        C: WindowContents<K, T, O>,
        CF: Fn(&mut KeyedStateBackend<K>) -> C + Send + Sync + 'static,
    {
        let spec = match self.spec() {
            Ok(spec) => spec,
            Err(message) => {
                self.keyed.stream.error(format!("{name}: {message}"));
                WindowSpec {
                    assigner: self.assigner,
                    trigger: Trigger::EventTime,
                    allowed_lateness: 0,
                    timestamps: None,
                }
            }
        };
        let key = self.keyed.key.clone();
        let late = self.late.clone();
        let contents = Arc::new(contents);
        // The spec travels to the slots; only its `Send + Sync` parts are shared.
        let assigner = spec.assigner;
        let trigger = spec.trigger.clone();
        let lateness = spec.allowed_lateness;
        let timestamps = spec.timestamps.clone();
        let factory: Arc<LinkFactory<T, O>> = Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<O>>| {
            let (sides, sinks) = ctx.take_sides();
            let late_output = late.as_deref().and_then(|tag| sides.get::<T>(tag).cloned());
            let backend = ctx.keyed_backend();
            let spec = WindowSpec {
                assigner,
                trigger: trigger.clone(),
                allowed_lateness: lateness,
                timestamps: timestamps.clone(),
            };
            let contents = contents.clone();
            let op = WindowOperator::new(key.clone(), spec, backend, |b| contents(b), late_output, ctx.metrics.clone());
            Ok(Box::new(OpNode::with_sides(op, next, sinks, ctx.metrics.clone(), ctx.node)) as Box<dyn Emit<T>>)
        });
        self.keyed.stream.add_operator(name, NodeKind::Operator, factory)
    }

    /// Reduces each window's records incrementally; emits the reduced value when it fires.
    pub fn reduce<F>(self, f: F) -> DataStream<T>
    where
        T: StateValue,
        F: Fn(&T, &T) -> T + Send + Sync + 'static,
    {
        self.reduce_process(f, |_: &WindowContext<'_, K>, v: T, out: &mut Vec<T>| out.push(v))
    }

    /// Reduces incrementally, then hands the result with the window's metadata to `process`.
    pub fn reduce_process<O, F, P>(self, f: F, process: P) -> DataStream<O>
    where
        T: StateValue,
        O: Data,
        F: Fn(&T, &T) -> T + Send + Sync + 'static,
        P: Fn(&WindowContext<'_, K>, T, &mut Vec<O>) + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let post = Arc::new(process);
        self.build("Window(Reduce)", move |backend: &mut KeyedStateBackend<K>| {
            let f = f.clone();
            let desc = ReducingStateDescriptor::new("window-contents", move |a: &T, b: &T| f(a, b));
            ReduceContents { state: backend.reducing_state(&desc).expect("fresh backend"), post: post.clone() }
        })
    }

    /// Aggregates each window's records incrementally with `agg`; emits its result when the
    /// window fires.
    pub fn aggregate<ACC, R, A>(self, agg: A) -> DataStream<R>
    where
        ACC: StateValue,
        R: Data,
        A: AggregateFunction<T, ACC, R> + Clone + Send + Sync,
    {
        self.aggregate_process(agg, |_: &WindowContext<'_, K>, r: R, out: &mut Vec<R>| out.push(r))
    }

    /// Aggregates incrementally, then hands the result with the window's metadata to `process`.
    pub fn aggregate_process<ACC, R, O, A, P>(self, agg: A, process: P) -> DataStream<O>
    where
        ACC: StateValue,
        R: 'static,
        O: Data,
        A: AggregateFunction<T, ACC, R> + Clone + Send + Sync,
        P: Fn(&WindowContext<'_, K>, R, &mut Vec<O>) + Send + Sync + 'static,
    {
        let post = Arc::new(process);
        self.build("Window(Aggregate)", move |backend: &mut KeyedStateBackend<K>| {
            let desc = AggregatingStateDescriptor::new("window-contents", agg.clone());
            AggregateContents { state: backend.aggregating_state(&desc).expect("fresh backend"), post: post.clone() }
        })
    }

    /// Keeps every record of a window and hands them, with the window's metadata, to
    /// `process` when it fires.
    pub fn process<O, P>(self, process: P) -> DataStream<O>
    where
        T: StateValue,
        O: Data,
        P: Fn(&WindowContext<'_, K>, Vec<T>, &mut Vec<O>) + Send + Sync + 'static,
    {
        let post = Arc::new(process);
        self.build("Window(Process)", move |backend: &mut KeyedStateBackend<K>| ListContents {
            state: backend.list_state(&ListStateDescriptor::new("window-contents")).expect("fresh backend"),
            post: post.clone(),
        })
    }
}

/// A window result with its key and window, for jobs that only count or sum.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WindowResult<K, V> {
    pub key: K,
    pub window: TimeWindow,
    pub value: V,
}
