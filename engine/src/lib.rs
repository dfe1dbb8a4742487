//! corestream: a thread-per-core, zero-copy stream processor with Flink's semantics.
//!
//! A job is written against the DataStream API ([`StreamEnvironment`], [`DataStream`]),
//! turned into a job graph of chained operators ([`graph`]), and run by a [`LocalCluster`]
//! whose slots are glommio executors pinned to cores ([`runtime`]). Records cross task
//! boundaries as rkyv archives in pooled 32 KB buffers under credit-based flow control
//! (`corestream-netstack`); inside a chain they pass by method call, in batches.
//! [`prelude`] brings the common API into scope with one import.
//!
//! # Starting a cluster and running a job
//!
//! [`LocalCluster::start`] (or [`LocalCluster::start_default`], one slot per core) checks that
//! io_uring is enabled and that `RLIMIT_MEMLOCK` is large enough, and fails with a
//! [`StartupError`] that says how to fix it otherwise. Each job gets a
//! [`StreamEnvironment`] from [`LocalCluster::environment`]; [`StreamEnvironment::execute`]
//! runs it to the end, and [`StreamEnvironment::execute_async`] returns a [`JobHandle`] at once,
//! which a job whose results are read while it runs (`collect`) needs.
//! [`JobHandle::join`] returns the [`JobResult`] (its [`JobStatus`], record counts per
//! operator, wall time) or the [`JobError`] that ended the job.
//!
//! The local cluster is a JobManager and one TaskManager in this process (Flink's
//! MiniCluster): its jobs are scheduled, tracked and cancelled by the same code as a cluster's
//! ([`jobmanager`], [`taskmanager`]), and [`LocalCluster::api`] shows them as a cluster's REST
//! API would (TaskManagers and slots, jobs with their vertices and task states, results).
//!
//! ```
//! use corestream::prelude::*;
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
//! assert_eq!(result.status, JobStatus::Finished);
//! assert_eq!(result.records_in("Keyed Reduce"), 100_000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Defining a record
//!
//! A record that crosses an exchange implements [`Data`]: it is archived with rkyv and read in
//! place by the consumer. Any type with rkyv's `Archive`, `Serialize` and `Deserialize` is a
//! record (integers, `String`, `Vec`, tuples and `Option`s of records already are). Derive them
//! through the copy of rkyv this crate re-exports ([`rkyv`]), and tell the derive where that
//! copy is with `#[rkyv(crate = corestream::rkyv)]`: the application then needs no rkyv
//! dependency of its own, and its records are archived with the features the engine was built
//! with. Shared pointers (`Rc`, `Arc`) are not supported inside records, and a record's archive
//! must fit one buffer (32 KB minus 16 bytes).
//!
//! ```
//! use corestream::prelude::*;
//! use corestream::rkyv::{Archive, Deserialize, Serialize};
//!
//! #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
//! #[rkyv(crate = corestream::rkyv)]
//! struct Bid {
//!     auction: u64,
//!     bidder: String,
//!     price: u64,
//! }
//!
//! let cluster = LocalCluster::start(ClusterConfig { slots: Some(1), ..Default::default() })?;
//! let mut env = cluster.environment();
//! let (sender, bids) = env.from_channel::<Bid>(64);
//! let best = bids.key_by(|b: &Bid| b.auction).reduce(|a, b| if b.price > a.price { b } else { a }).collect();
//! let job = env.execute_async("best bids")?;
//! sender.send(Bid { auction: 1, bidder: "ann".into(), price: 5 })?;
//! sender.send(Bid { auction: 1, bidder: "bob".into(), price: 7 })?;
//! drop(sender); // closing the channel ends the source, and with it the job
//! let best: Vec<Bid> = best.collect();
//! assert_eq!(best.last().map(|b| b.bidder.as_str()), Some("bob"));
//! assert_eq!(job.join()?.status, JobStatus::Finished);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A type that is not a record is refused at compile time with a hint to derive the three
//! traits as above.
//!
//! # The glommio fork
//!
//! Slots run on glommio 0.9.0 with two patches, vendored in the repository as
//! `third_party/glommio` under the package name `corestream-glommio` (its library is still
//! `glommio`), and depended on by path, so every build of this crate — inside its workspace or
//! in an application that depends on it by path or git — runs on the patched copy: (1) an idle
//! executor sleeps at most 10 ms, because stock glommio can miss the completion that links its
//! two io_uring rings and then never wakes for its timers and cross-thread wake-ups (jobs stall
//! or hang); (2) a task keeps its executor's id instead of a reference to the executor's
//! notifier, because stock glommio leaks one eventfd per executor whenever a task outlives it,
//! and corestream starts fresh executors for every job. `third_party/glommio/PATCHES.md`
//! describes both patches. An application that also depends on crates.io's `glommio` gets a
//! second, unpatched copy for its own use; the engine never runs on it.

pub mod api;
pub mod app;
pub mod auth;
pub mod checkpoint;
pub mod client;
pub mod conf;
pub mod config;
pub mod deploy;
pub mod error;
pub mod fs;
pub mod graph;
pub mod jobmanager;
pub mod operators;
pub mod prelude;
pub mod processes;
pub mod registry;
pub mod rpc;
pub mod runtime;
pub mod taskmanager;
pub mod time;
pub mod windows;

pub use api::env::StreamEnvironment;
pub use api::file_sink::{FileSinkMode, FileSinkOptions};
pub use api::join::{
    BroadcastConnectedStream, ConnectedStreams, IntervalJoin, JoinBuilder, JoinEqual, JoinWhere, JoinedWindows,
    KeyedConnectedStreams,
};
pub use api::sinks::{CollectStream, JobCommits, PendingCommit, Sink, SinkContext, SinkError, SinkWaker};
pub use api::skips::Skips;
pub use api::sources::{
    InvalidUtf8, SourceContext, SourceError, SourceFunction, SourceSender, SourceStatus, TextFileOptions,
};
pub use api::stream::{DataStream, DataStreamSink, KeyedStream};
pub use api::time::{OutputTag, Timestamped};
pub use api::two_phase::{Committer, TwoPhaseCommit, TwoPhaseCommitSink};
pub use api::window::{WindowResult, WindowedStream};
pub use config::{
    ClusterConfig, Distribution, DistributionError, ExecutionConfig, RuntimeMode, MIN_LSM_MEMORY_PER_SLOT,
};
pub use corestream_netstack::transport::NetConfig;
pub use corestream_netstack::{rkyv, BarrierKind, Data, Event, NetError, SessionStats};
/// Keyed state, as process functions declare and use it (`ctx.state().value_state(..)` in
/// `open`).
pub use corestream_state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, KeyedStateBackend, ListState, ListStateDescriptor,
    LsmConfig, MapState, MapStateDescriptor, Namespace, ReducingState, ReducingStateDescriptor, StateBackendKind,
    StateKey, StateTtlConfig, StateValue, TtlUpdateType, TtlVisibility, ValueState, ValueStateDescriptor,
    VoidNamespace,
};
pub use error::{JobError, StartupError};
pub use graph::execution::ChannelRoute;
pub use operators::join::{
    BroadcastState, CoProcessFunction, Either, JoinedTimestamps, KeyedBroadcastProcessFunction, KeyedCoProcessFunction,
};
pub use operators::operator_state::{OperatorListState, OperatorStateError, RuntimeContext, UnionListState};
pub use operators::process::{
    KeyedContext, KeyedProcessFunction, KeyedRuntimeContext, ProcessContext, ProcessFunction, TimeDomain,
};
pub use runtime::cluster::LocalCluster;
pub use runtime::job::{JobHandle, StagedOutputs};
pub use runtime::metrics::{
    ConnectionSummary, JobResult, JobStatus, JobWarning, LatencySummary, OperatorSummary, TaskPhase, TaskSummary,
};
pub use time::{WatermarkGenerator, WatermarkOutput, WatermarkStrategy};
pub use windows::operator::WindowContext;
pub use windows::{TimeWindow, Trigger, WindowAssigner};
