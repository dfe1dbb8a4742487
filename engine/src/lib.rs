//! corestream: a thread-per-core, zero-copy stream processor with Flink's semantics.
//!
//! A job is written against the DataStream API ([`StreamEnvironment`], [`DataStream`]),
//! turned into a job graph of chained operators ([`graph`]), and run by a [`LocalCluster`]
//! whose slots are glommio executors pinned to cores ([`runtime`]). Records cross task
//! boundaries as rkyv archives in pooled 32 KB buffers under credit-based flow control
//! (`corestream-netstack`); inside a chain they pass by method call, in batches.

pub mod api;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod graph;
pub mod operators;
pub mod runtime;
pub mod time;

pub use api::env::StreamEnvironment;
pub use api::sinks::{CollectStream, Sink, SinkContext};
pub use api::sources::{SourceContext, SourceSender};
pub use api::stream::{DataStream, KeyedStream};
pub use config::{ClusterConfig, ExecutionConfig, RuntimeMode};
pub use corestream_netstack::{rkyv, BarrierKind, Data, Event};
pub use error::{JobError, StartupError};
pub use runtime::cluster::LocalCluster;
pub use runtime::job::JobHandle;
pub use runtime::metrics::{JobResult, JobWarning, OperatorSummary, TaskSummary};
