//! The execution plan: subtasks placed on slots (slot sharing: subtask i of every chain runs in
//! slot i), the channels of every exchange, and the number of network buffers the job can hold
//! at most, which is reserved from the pool before the job starts.

use corestream_netstack::CreditConfig;

use super::job_graph::JobGraph;
use super::partition::targets;

/// Buffers a producer task may hold beyond its per-channel share while it finishes one input
/// batch (Flink's overdraft buffers).
pub const OVERDRAFT_BUFFERS_PER_TASK: u32 = 32;

/// One channel: producer subtask → consumer subtask of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSpec {
    pub edge: usize,
    pub producer: u32,
    pub consumer: u32,
}

/// Output of a task on one exchange: its channels in channel order.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub edge: usize,
    pub channels: Vec<usize>,
}

/// One subtask of one chain.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub vertex: usize,
    pub subtask: u32,
    pub slot: u32,
    pub outputs: Vec<OutputSpec>,
    /// Channels of the task's one input gate (all input exchanges, unioned), in order.
    pub inputs: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct ExecutionPlan {
    pub channels: Vec<ChannelSpec>,
    pub tasks: Vec<TaskSpec>,
    pub slots_needed: u32,
    pub buffers_needed: u32,
}

/// Lays out subtasks, channels and buffers.
pub fn plan(graph: &JobGraph, credit: &CreditConfig) -> ExecutionPlan {
    let mut channels = Vec::new();
    // channel ids per (edge, producer) in target order
    let mut out_channels: Vec<Vec<Vec<usize>>> = Vec::new();
    for edge in &graph.edges {
        let (p, c) = (graph.vertices[edge.source].parallelism, graph.vertices[edge.target].parallelism);
        let mut per_producer = Vec::new();
        for i in 0..p {
            let ids = targets(edge.partitioning, p, c, i)
                .into_iter()
                .map(|j| {
                    channels.push(ChannelSpec { edge: edge.id, producer: i, consumer: j });
                    channels.len() - 1
                })
                .collect();
            per_producer.push(ids);
        }
        out_channels.push(per_producer);
    }
    let mut tasks = Vec::new();
    let mut buffers_needed = 0u32;
    for v in &graph.vertices {
        for i in 0..v.parallelism {
            let outputs: Vec<OutputSpec> = graph
                .edges
                .iter()
                .filter(|e| e.source == v.id)
                .map(|e| OutputSpec { edge: e.id, channels: out_channels[e.id][i as usize].clone() })
                .collect();
            let inputs: Vec<usize> = (0..channels.len())
                .filter(|&ch| graph.edges[channels[ch].edge].target == v.id && channels[ch].consumer == i)
                .collect();
            let out_count: u32 = outputs.iter().map(|o| o.channels.len() as u32).sum();
            if out_count > 0 {
                // One overdraft for the tail's output and one per side-output edge (each side
                // output writes through its own network output).
                let main = outputs.iter().any(|o| !graph.edges[o.edge].side);
                let sides = outputs.iter().filter(|o| graph.edges[o.edge].side).count() as u32;
                buffers_needed += out_count * (1 + credit.max_backlog_per_channel)
                    + OVERDRAFT_BUFFERS_PER_TASK * (u32::from(main) + sides);
            }
            if !inputs.is_empty() {
                buffers_needed += inputs.len() as u32 * credit.exclusive_per_channel + credit.floating_per_gate;
            }
            tasks.push(TaskSpec { vertex: v.id, subtask: i, slot: i, outputs, inputs });
        }
    }
    let slots_needed = graph.vertices.iter().map(|v| v.parallelism).max().unwrap_or(0);
    ExecutionPlan { channels, tasks, slots_needed, buffers_needed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::job_graph::{build, EdgeDesc, NodeDesc};
    use crate::graph::Partitioning;
    use crate::graph::stream_graph::{ChainingStrategy, NodeKind};

    #[test]
    fn keyed_exchange_is_all_to_all_and_sized() {
        let nodes: Vec<NodeDesc> = (0..3)
            .map(|id| NodeDesc {
                id,
                name: format!("n{id}"),
                kind: if id == 0 { NodeKind::Source } else { NodeKind::Operator },
                parallelism: 2,
                max_parallelism: 128,
                chaining: ChainingStrategy::Always,
            })
            .collect();
        let edges = vec![
            EdgeDesc { index: 0, from: 0, to: 1, partitioning: Partitioning::Forward, side: false },
            EdgeDesc { index: 1, from: 1, to: 2, partitioning: Partitioning::Hash, side: false },
        ];
        let g = build(&nodes, &edges);
        let credit = CreditConfig::default();
        let p = plan(&g, &credit);
        assert_eq!(p.channels.len(), 4);
        assert_eq!(p.slots_needed, 2);
        assert_eq!(p.tasks.len(), 4);
        let consumer = p.tasks.iter().find(|t| t.vertex == 1 && t.subtask == 1).unwrap();
        assert_eq!(consumer.inputs.len(), 2);
        assert!(consumer.inputs.iter().all(|c| p.channels[*c].consumer == 1));
        let producer = p.tasks.iter().find(|t| t.vertex == 0 && t.subtask == 0).unwrap();
        let targets: Vec<u32> = producer.outputs[0].channels.iter().map(|c| p.channels[*c].consumer).collect();
        assert_eq!(targets, vec![0, 1], "hash channels are indexed by consumer subtask");
        let expected = 2 * (2 * 3 + OVERDRAFT_BUFFERS_PER_TASK) + 2 * (2 * 2 + 8);
        assert_eq!(p.buffers_needed, expected);
    }
}
