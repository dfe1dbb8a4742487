//! Human-readable rendering of a job's plan: its chains (tasks), their parallelism, and the
//! partitioning of every exchange.

use std::fmt::Write;

use super::execution::ExecutionPlan;
use super::job_graph::JobGraph;

pub fn render(graph: &JobGraph, plan: &ExecutionPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} task(s) in {} slot(s), {} channel(s), {} network buffer(s) reserved",
        graph.vertices.len(),
        plan.slots_needed,
        plan.channels.len(),
        plan.buffers_needed
    );
    for v in &graph.vertices {
        let _ = writeln!(
            s,
            "Task {} [parallelism {}, max parallelism {}]: {}",
            v.id, v.parallelism, v.max_parallelism, v.name
        );
        for e in graph.edges.iter().filter(|e| e.source == v.id) {
            let _ = writeln!(s, "    --{}--> Task {}", e.partitioning.name(), e.target);
        }
    }
    s
}
