//! The execution plan: subtasks placed on slots (slot sharing: subtask i of every chain runs in
//! slot i), the channels of every exchange, and the number of network buffers the job can hold
//! at most, which is reserved from the pool before the job starts.
//!
//! When one job runs across several TaskManager processes (application mode), every process
//! computes this same plan and keeps its own share: the job slots are split into contiguous
//! ranges ([`owner_of_slot`]), each channel is classified by where its ends run
//! ([`channel_routes`]), and each process reserves only what its tasks and its outbound remote
//! channels can hold ([`buffers_needed_for`]). A [`fingerprint`] of the plan lets the processes
//! check that they built the same job. Everything here is pure: no I/O, no executor.

use std::ops::Range;

use corestream_netstack::CreditConfig;
use xxhash_rust::xxh3::Xxh3;

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
    /// Network buffers this task can hold at most: its output channels' share plus overdraft,
    /// and its input gate's exclusive and floating credit.
    pub buffers: u32,
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
            let mut buffers = 0u32;
            if out_count > 0 {
                // One overdraft for the tail's output and one per side-output edge (each side
                // output writes through its own network output).
                let main = outputs.iter().any(|o| !graph.edges[o.edge].side);
                let sides = outputs.iter().filter(|o| graph.edges[o.edge].side).count() as u32;
                buffers += out_count * (1 + credit.max_backlog_per_channel)
                    + OVERDRAFT_BUFFERS_PER_TASK * (u32::from(main) + sides);
            }
            if !inputs.is_empty() {
                buffers += inputs.len() as u32 * credit.exclusive_per_channel + credit.floating_per_gate;
            }
            buffers_needed += buffers;
            tasks.push(TaskSpec { vertex: v.id, subtask: i, slot: i, outputs, inputs, buffers });
        }
    }
    let slots_needed = graph.vertices.iter().map(|v| v.parallelism).max().unwrap_or(0);
    ExecutionPlan { channels, tasks, slots_needed, buffers_needed }
}

/// The TaskManager that owns job slot `slot` when `total_slots` slots are split into `count`
/// contiguous ranges: `slot · count / total_slots`. With 2 TaskManagers, 3 slots split
/// {0, 1} {2}; slot 0, which hosts every parallelism-1 task, is always TaskManager 0's.
pub fn owner_of_slot(slot: u32, total_slots: u32, count: u32) -> u32 {
    assert!(slot < total_slots, "job slot {slot} is outside the job's {total_slots} slot(s)");
    (u64::from(slot) * u64::from(count) / u64::from(total_slots)) as u32
}

/// The job slots TaskManager `tm` owns under [`owner_of_slot`]; empty when `count` exceeds
/// `total_slots` and `tm` gets none.
pub fn local_slots(tm: u32, total_slots: u32, count: u32) -> Range<u32> {
    assert!(tm < count, "TaskManager {tm} is outside 0..{count}");
    let first = |k: u32| (u64::from(k) * u64::from(total_slots)).div_ceil(u64::from(count)) as u32;
    first(tm)..first(tm + 1)
}

/// How a job's slots are split over the TaskManagers that run it: TaskManager `i` runs the
/// contiguous job slots `ranges[i]`, and the ranges cover `0..total` in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSplit {
    ranges: Vec<Range<u32>>,
}

impl SlotSplit {
    /// `total` slots over `count` TaskManagers as [`owner_of_slot`] splits them.
    pub fn even(total: u32, count: u32) -> Self {
        Self { ranges: (0..count).map(|tm| local_slots(tm, total, count)).collect() }
    }

    /// TaskManager `i` runs the next `counts[i]` slots.
    pub fn from_counts(counts: &[u32]) -> Self {
        let mut start = 0;
        let ranges = counts
            .iter()
            .map(|&k| {
                let r = start..start + k;
                start += k;
                r
            })
            .collect();
        Self { ranges }
    }

    /// TaskManagers in the split.
    pub fn count(&self) -> u32 {
        self.ranges.len() as u32
    }

    /// Job slots over all TaskManagers.
    pub fn total(&self) -> u32 {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// The job slots TaskManager `tm` runs.
    pub fn local(&self, tm: u32) -> Range<u32> {
        self.ranges[tm as usize].clone()
    }

    /// The TaskManager that runs job slot `slot`.
    pub fn owner(&self, slot: u32) -> u32 {
        assert!(slot < self.total(), "job slot {slot} is outside the job's {} slot(s)", self.total());
        self.ranges.partition_point(|r| r.end <= slot) as u32
    }
}

/// Where the two ends of a channel run, seen from one TaskManager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelRoute {
    /// Producer and consumer both run here: an in-process channel.
    Local,
    /// The producer runs here and the consumer on TaskManager `peer`.
    Outbound { peer: u32 },
    /// The consumer runs here and the producer on TaskManager `peer`.
    Inbound { peer: u32 },
    /// Neither end runs here.
    Elsewhere,
}

/// Producer and consumer task (indices into `plan.tasks`) of every channel.
fn channel_ends(plan: &ExecutionPlan) -> Vec<(usize, usize)> {
    let mut ends = vec![(usize::MAX, usize::MAX); plan.channels.len()];
    for (t, task) in plan.tasks.iter().enumerate() {
        for &ch in task.outputs.iter().flat_map(|o| &o.channels) {
            ends[ch].0 = t;
        }
        for &ch in &task.inputs {
            ends[ch].1 = t;
        }
    }
    assert!(
        ends.iter().all(|&(p, c)| p != usize::MAX && c != usize::MAX),
        "every channel of a plan has a producer and a consumer task"
    );
    ends
}

/// The route of every channel of `plan` (by channel index) for TaskManager `tm` of `split`.
pub fn channel_routes(plan: &ExecutionPlan, tm: u32, split: &SlotSplit) -> Vec<ChannelRoute> {
    let owner = |t: usize| split.owner(plan.tasks[t].slot);
    channel_ends(plan)
        .into_iter()
        .map(|(p, c)| match (owner(p), owner(c)) {
            (p, c) if p == tm && c == tm => ChannelRoute::Local,
            (p, c) if p == tm => ChannelRoute::Outbound { peer: c },
            (p, c) if c == tm => ChannelRoute::Inbound { peer: p },
            _ => ChannelRoute::Elsewhere,
        })
        .collect()
}

/// Network buffers TaskManager `tm` of `split` must reserve for its share of `plan`: the buffers of its
/// own tasks, plus, for each task on another TaskManager fed by `k` channels from this one,
/// `k · exclusive + floating_per_gate`, the credit that task's gate can grant this
/// TaskManager's producers, whose granted buffers queue here rather than at the consumer. With
/// `count == 1` this is `plan.buffers_needed`.
pub fn buffers_needed_for(plan: &ExecutionPlan, credit: &CreditConfig, tm: u32, split: &SlotSplit) -> u32 {
    let local = |t: usize| split.owner(plan.tasks[t].slot) == tm;
    let own: u32 = (0..plan.tasks.len()).filter(|&t| local(t)).map(|t| plan.tasks[t].buffers).sum();
    let mut fed_from_here = vec![0u32; plan.tasks.len()];
    for (p, c) in channel_ends(plan) {
        if local(p) && !local(c) {
            fed_from_here[c] += 1;
        }
    }
    let remote: u32 = fed_from_here
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| k * credit.exclusive_per_channel + credit.floating_per_gate)
        .sum();
    own + remote
}

/// A hash of everything the processes running one job must agree on: the job's name, its plan
/// as [`explain::render`](super::explain::render) shows it (`explain`), the `(edge, producer, consumer)` of
/// every channel in order, the credit settings, the number of TaskManagers and the job slots.
/// Two processes that built the same job from the same arguments get the same value; it cannot
/// see closures that behave differently, so job builders must be deterministic.
pub fn fingerprint(
    explain: &str,
    plan: &ExecutionPlan,
    job_name: &str,
    credit: &CreditConfig,
    count: u32,
    total_slots: u32,
) -> u64 {
    let mut h = Xxh3::new();
    let mut put = |v: u64| h.update(&v.to_le_bytes());
    put(job_name.len() as u64);
    put(explain.len() as u64);
    put(plan.channels.len() as u64);
    for c in &plan.channels {
        put(c.edge as u64);
        put(u64::from(c.producer));
        put(u64::from(c.consumer));
    }
    for v in
        [credit.exclusive_per_channel, credit.floating_per_gate, credit.max_backlog_per_channel, count, total_slots]
    {
        put(u64::from(v));
    }
    h.update(job_name.as_bytes());
    h.update(explain.as_bytes());
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_splits_find_owners() {
        let even = SlotSplit::even(3, 2);
        assert_eq!((even.local(0), even.local(1)), (0..2, 2..3));
        assert_eq!((0..3).map(|s| even.owner(s)).collect::<Vec<_>>(), vec![0, 0, 1]);
        let uneven = SlotSplit::from_counts(&[1, 0, 3]);
        assert_eq!(uneven.total(), 4);
        assert_eq!(uneven.local(1), 1..1);
        assert_eq!((0..4).map(|s| uneven.owner(s)).collect::<Vec<_>>(), vec![0, 2, 2, 2]);
        for total in 1..6 {
            for count in 1..5 {
                let split = SlotSplit::even(total, count);
                for slot in 0..total {
                    assert_eq!(split.owner(slot), owner_of_slot(slot, total, count));
                }
            }
        }
    }
    use crate::graph::explain::render;
    use crate::graph::job_graph::{build, EdgeDesc, NodeDesc};
    use crate::graph::stream_graph::{ChainingStrategy, NodeKind};
    use crate::graph::Partitioning;

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
                uid: format!("#n{id}"),
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
        let per_producer = 2 * (1 + credit.max_backlog_per_channel) + OVERDRAFT_BUFFERS_PER_TASK;
        let per_consumer = 2 * credit.exclusive_per_channel + credit.floating_per_gate;
        let expected = 2 * per_producer + 2 * per_consumer;
        assert_eq!(p.buffers_needed, expected);
    }

    /// Source → map (chained) → hash → reduce → rebalance → sink at parallelism 1: a keyed job
    /// like sum-by-key.
    fn keyed_job(p: u32, reduce_name: &str) -> (JobGraph, ExecutionPlan) {
        let node = |id: usize, name: &str, kind: NodeKind, parallelism: u32| NodeDesc {
            id,
            name: name.to_string(),
            kind,
            parallelism,
            max_parallelism: 128,
            chaining: ChainingStrategy::Always,
            uid: format!("#{name}{id}"),
        };
        let nodes = vec![
            node(0, "Source", NodeKind::Source, p),
            node(1, "Map", NodeKind::Operator, p),
            node(2, reduce_name, NodeKind::Operator, p),
            node(3, "Sink", NodeKind::Sink, 1),
        ];
        let edges = vec![
            EdgeDesc { index: 0, from: 0, to: 1, partitioning: Partitioning::Forward, side: false },
            EdgeDesc { index: 1, from: 1, to: 2, partitioning: Partitioning::Hash, side: false },
            EdgeDesc { index: 2, from: 2, to: 3, partitioning: Partitioning::Rebalance, side: false },
        ];
        let g = build(&nodes, &edges);
        let p = plan(&g, &CreditConfig::default());
        (g, p)
    }

    fn route_counts(routes: &[ChannelRoute]) -> [usize; 4] {
        let mut counts = [0; 4];
        for r in routes {
            counts[match r {
                ChannelRoute::Local => 0,
                ChannelRoute::Outbound { .. } => 1,
                ChannelRoute::Inbound { .. } => 2,
                ChannelRoute::Elsewhere => 3,
            }] += 1;
        }
        counts
    }

    #[test]
    fn slots_split_into_contiguous_ranges() {
        let split = |total: u32| -> Vec<Vec<u32>> {
            (0..2).map(|tm| (0..total).filter(|&s| owner_of_slot(s, total, 2) == tm).collect()).collect()
        };
        assert_eq!(split(2), vec![vec![0], vec![1]]);
        assert_eq!(split(3), vec![vec![0, 1], vec![2]]);
        assert_eq!(split(4), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(local_slots(0, 3, 2), 0..2);
        assert_eq!(local_slots(1, 3, 2), 2..3);
        assert!(local_slots(2, 2, 3).is_empty(), "3 TaskManagers over 2 slots: the last owns none");
    }

    #[test]
    fn channels_of_a_keyed_job_across_two_task_managers() {
        let (_, p) = keyed_job(2, "Reduce");
        assert_eq!(p.channels.len(), 4 + 2, "hash 2×2, rebalance 2×1");
        let tm0 = channel_routes(&p, 0, &SlotSplit::even(2, 2));
        let tm1 = channel_routes(&p, 1, &SlotSplit::even(2, 2));
        // The sink (parallelism 1) runs in slot 0, on TaskManager 0.
        assert_eq!(route_counts(&tm0), [2, 1, 2, 1]);
        assert_eq!(route_counts(&tm1), [1, 2, 1, 2]);
        for (ch, (a, b)) in tm0.iter().zip(&tm1).enumerate() {
            let pair = matches!(
                (a, b),
                (ChannelRoute::Local, ChannelRoute::Elsewhere)
                    | (ChannelRoute::Elsewhere, ChannelRoute::Local)
                    | (ChannelRoute::Outbound { peer: 1 }, ChannelRoute::Inbound { peer: 0 })
                    | (ChannelRoute::Inbound { peer: 1 }, ChannelRoute::Outbound { peer: 0 })
            );
            assert!(pair, "channel {ch}: {a:?} on TaskManager 0 and {b:?} on TaskManager 1 do not match");
        }
    }

    #[test]
    fn one_task_manager_runs_everything_locally() {
        let credit = CreditConfig::default();
        for par in 1..=4 {
            let (_, p) = keyed_job(par, "Reduce");
            assert!(channel_routes(&p, 0, &SlotSplit::even(par, 1)).iter().all(|r| *r == ChannelRoute::Local));
            assert_eq!(buffers_needed_for(&p, &credit, 0, &SlotSplit::even(par, 1)), p.buffers_needed);
            assert_eq!(p.tasks.iter().map(|t| t.buffers).sum::<u32>(), p.buffers_needed);
        }
    }

    #[test]
    fn remote_consumers_add_their_credit_to_the_producer_side() {
        let credit = CreditConfig::default();
        let (_, p) = keyed_job(2, "Reduce");
        let own =
            |tm: u32| p.tasks.iter().filter(|t| owner_of_slot(t.slot, 2, 2) == tm).map(|t| t.buffers).sum::<u32>();
        let gate = |k: u32| k * credit.exclusive_per_channel + credit.floating_per_gate;
        // TaskManager 0 feeds Reduce 1 over one channel; TaskManager 1 feeds Reduce 0 and the sink.
        assert_eq!(buffers_needed_for(&p, &credit, 0, &SlotSplit::even(2, 2)), own(0) + gate(1));
        assert_eq!(buffers_needed_for(&p, &credit, 1, &SlotSplit::even(2, 2)), own(1) + 2 * gate(1));
        assert_eq!(own(0) + own(1), p.buffers_needed);
        // A TaskManager without slots has nothing to reserve.
        let (_, single) = keyed_job(1, "Reduce");
        assert_eq!(buffers_needed_for(&single, &credit, 1, &SlotSplit::even(1, 2)), 0);
        assert!(channel_routes(&single, 1, &SlotSplit::even(1, 2)).iter().all(|r| *r == ChannelRoute::Elsewhere));
    }

    #[test]
    fn fingerprint_changes_with_the_job() {
        let credit = CreditConfig::default();
        let fp = |par: u32, name: &str, job: &str, count: u32| {
            let (g, p) = keyed_job(par, name);
            fingerprint(&render(&g, &p), &p, job, &credit, count, 4)
        };
        let base = fp(2, "Reduce", "sum-by-key", 2);
        assert_eq!(base, fp(2, "Reduce", "sum-by-key", 2), "the same job built twice");
        assert_ne!(base, fp(3, "Reduce", "sum-by-key", 2), "parallelism");
        assert_ne!(base, fp(2, "Keyed Reduce", "sum-by-key", 2), "operator name");
        assert_ne!(base, fp(2, "Reduce", "word-count", 2), "job name");
        assert_ne!(base, fp(2, "Reduce", "sum-by-key", 3), "TaskManager count");
        let (g, p) = keyed_job(2, "Reduce");
        let tighter = CreditConfig { floating_per_gate: 4, ..credit };
        assert_ne!(base, fingerprint(&render(&g, &p), &p, "sum-by-key", &tighter, 2, 4), "credit settings");
        assert_ne!(base, fingerprint(&render(&g, &p), &p, "sum-by-key", &credit, 2, 5), "total slots");
    }

    proptest::proptest! {
        #[test]
        fn every_slot_has_exactly_one_owner(total in 1u32..64, count in 1u32..8) {
            let mut next = 0;
            for tm in 0..count {
                let range = local_slots(tm, total, count);
                proptest::prop_assert_eq!(range.start, next);
                for s in range.clone() {
                    proptest::prop_assert_eq!(owner_of_slot(s, total, count), tm);
                }
                next = range.end;
            }
            proptest::prop_assert_eq!(next, total);
        }
    }
}
