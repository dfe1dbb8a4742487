//! The common API in one import: `use corestream::prelude::*;`.
//!
//! Brings in what a job needs to be declared, run and checked — the cluster and its
//! configuration, the environment, streams and their operators' types, time and windows,
//! sinks, process functions, the `Data` trait with `rkyv` (for deriving records), and the job's
//! result and errors. Everything here is also at the crate root; rarer items (keyed-state
//! descriptors, join builders, wire configuration) are imported from there.

pub use crate::config::{ClusterConfig, ExecutionConfig, RuntimeMode};
pub use crate::error::{JobError, StartupError};
pub use crate::runtime::cluster::LocalCluster;
pub use crate::runtime::job::JobHandle;
pub use crate::runtime::metrics::{JobResult, JobStatus, JobWarning};

pub use crate::api::env::StreamEnvironment;
pub use crate::api::file_sink::{FileSinkMode, FileSinkOptions};
pub use crate::api::sinks::{CollectStream, PendingCommit, Sink, SinkContext, SinkError, SinkWaker};
pub use crate::api::sources::{SourceContext, SourceError, SourceFunction, SourceSender, SourceStatus};
pub use crate::api::stream::{DataStream, DataStreamSink, KeyedStream};
pub use crate::api::time::{OutputTag, Timestamped};
pub use crate::api::window::{WindowResult, WindowedStream};

pub use crate::operators::join::Either;
pub use crate::operators::process::{KeyedContext, KeyedProcessFunction, ProcessContext, ProcessFunction, TimeDomain};
pub use crate::time::{WatermarkGenerator, WatermarkOutput, WatermarkStrategy};
pub use crate::windows::operator::WindowContext;
pub use crate::windows::{TimeWindow, Trigger, WindowAssigner};

pub use corestream_netstack::{rkyv, Data};
