//! From the user's program to what runs: the [`stream_graph`] the DataStream API records, the
//! [`job_graph`] where forward-connected operators of equal parallelism are chained into tasks,
//! and the [`execution`] plan that lays out subtasks on slots, the channels between them and
//! the buffers they need. Everything here is a pure function of the graph, tested without an
//! executor; the runtime only reads the plan.

pub mod execution;
pub mod explain;
pub mod job_graph;
pub mod partition;
pub mod stream_graph;

pub use execution::{ExecutionPlan, TaskSpec};
pub use job_graph::{JobEdge, JobGraph, JobVertex};
pub use partition::Partitioning;
pub use stream_graph::{ChainingStrategy, NodeKind};
