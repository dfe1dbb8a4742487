//! The logical graph recorded by the DataStream API: one node per operator, one edge per
//! connection. Node ids grow in creation order and edges always point from an older node to a
//! newer one, so id order is a topological order.

use std::any::Any;
use std::sync::Arc;

use super::partition::Partitioning;
use crate::runtime::build::NodeRuntime;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Source,
    Operator,
    Sink,
}

/// How a node may be chained with its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChainingStrategy {
    /// Chain with the predecessor and successor where the edge allows it.
    #[default]
    Always,
    /// Start a new chain at this node; successors may chain to it.
    HeadNewChain,
    /// Never chain this node.
    Never,
}

pub(crate) struct StreamNode {
    pub id: usize,
    pub name: String,
    pub kind: NodeKind,
    pub parallelism: Option<u32>,
    /// Set for sources that cannot run in parallel (iterator, channel).
    pub fixed_parallelism: Option<u32>,
    pub max_parallelism: Option<u32>,
    pub chaining: ChainingStrategy,
    /// The operator's stable id (`.uid(...)`), which matches its state in a savepoint or
    /// checkpoint to it when the job changed.
    pub uid: Option<String>,
    pub runtime: Arc<dyn NodeRuntime>,
}

pub(crate) struct StreamEdge {
    pub from: usize,
    pub to: usize,
    /// `None`: forward between equal parallelisms, rebalance otherwise.
    pub partitioning: Option<Partitioning>,
    /// For hash edges: `Arc<KeyHashFn<T>>` of the producer's record type.
    pub key_hash: Option<Arc<dyn Any + Send + Sync>>,
    /// Set for a side-output edge: the output tag whose records it carries. Side edges are
    /// never chained and leave their producer wherever it sits in its chain.
    pub side_tag: Option<String>,
}

/// The graph under construction.
#[derive(Default)]
pub(crate) struct StreamGraph {
    pub nodes: Vec<StreamNode>,
    pub edges: Vec<StreamEdge>,
    /// Misuses of the builder API, reported when the job is executed.
    pub errors: Vec<String>,
    /// A collect sink exists: its output must be read while the job runs.
    pub has_collect: bool,
    /// Output tags in use and their record types.
    pub side_tags: Vec<(String, std::any::TypeId)>,
}
