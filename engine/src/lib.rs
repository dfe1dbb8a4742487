//! corestream: a thread-per-core, zero-copy stream processor with Flink's semantics.
//!
//! A job is written against the DataStream API ([`StreamEnvironment`], [`DataStream`]),
//! turned into a job graph of chained operators ([`graph`]), and run by a [`LocalCluster`]
//! whose slots are glommio executors pinned to cores ([`runtime`]). Records cross task
//! boundaries as rkyv archives in pooled 32 KB buffers under credit-based flow control
//! (`corestream-netstack`); inside a chain they pass by method call, in batches.
//!
//! ```
//! use corestream::{ClusterConfig, LocalCluster, RuntimeMode};
//!
//! let cluster = LocalCluster::start(ClusterConfig { slots: Some(2), ..Default::default() })?;
//! let mut env = cluster.environment();
//! env.set_parallelism(2).set_runtime_mode(RuntimeMode::Batch);
//! let totals = env
//!     .from_sequence(0..100_000)
//!     .map(|v| (v % 10, v))
//!     .key_by(|r: &(u64, u64)| r.0)
//!     .reduce(|a, b| (a.0, a.1 + b.1))
//!     .collect();
//! let job = env.execute_async("sums")?;
//! let mut sums: Vec<(u64, u64)> = totals.collect();
//! let result = job.join()?;
//! sums.sort();
//! assert_eq!(sums.len(), 10);
//! assert_eq!(sums.iter().map(|s| s.1).sum::<u64>(), (0..100_000u64).sum::<u64>());
//! assert_eq!(result.records_in("Keyed Reduce"), 100_000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod api;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod fs;
pub mod graph;
pub mod operators;
pub mod runtime;
pub mod time;
pub mod windows;

pub use api::env::StreamEnvironment;
pub use api::join::{ConnectedStreams, IntervalJoin, JoinBuilder, JoinedWindows, KeyedConnectedStreams};
pub use api::sinks::{CollectStream, JobCommits, PendingCommit, Sink, SinkContext, SinkError, SinkWaker};
pub use api::sources::{InvalidUtf8, SourceContext, SourceError, SourceFunction, SourceSender, SourceStatus};
pub use api::stream::{DataStream, DataStreamSink, KeyedStream};
pub use api::time::{OutputTag, Timestamped};
pub use api::window::{WindowResult, WindowedStream};
pub use config::{ClusterConfig, Distribution, DistributionError, ExecutionConfig, RuntimeMode};
pub use corestream_netstack::transport::NetConfig;
pub use corestream_netstack::{rkyv, BarrierKind, Data, Event, NetError, SessionStats};
/// Keyed state, as process functions declare and use it (`ctx.state().value_state(..)` in
/// `open`).
pub use corestream_state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, KeyedStateBackend, ListState, ListStateDescriptor,
    MapState, MapStateDescriptor, Namespace, ReducingState, ReducingStateDescriptor, StateKey, StateTtlConfig,
    StateValue, TtlUpdateType, TtlVisibility, ValueState, ValueStateDescriptor, VoidNamespace,
};
pub use error::{JobError, StartupError};
pub use graph::execution::ChannelRoute;
pub use operators::join::{
    BroadcastState, CoProcessFunction, Either, JoinedTimestamps, KeyedBroadcastProcessFunction, KeyedCoProcessFunction,
};
pub use operators::process::{
    KeyedContext, KeyedProcessFunction, KeyedRuntimeContext, ProcessContext, ProcessFunction, TimeDomain,
};
pub use runtime::cluster::LocalCluster;
pub use runtime::job::{JobHandle, StagedOutputs};
pub use runtime::metrics::{ConnectionSummary, JobResult, JobWarning, LatencySummary, OperatorSummary, TaskSummary};
pub use time::{WatermarkGenerator, WatermarkOutput, WatermarkStrategy};
pub use windows::operator::WindowContext;
pub use windows::{TimeWindow, Trigger, WindowAssigner};
