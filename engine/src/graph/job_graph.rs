//! Chaining: operators joined by a forward edge with equal parallelism, where the upstream has
//! one output and the downstream one input, run as one task (one [`JobVertex`]) and pass
//! records by method call. Everything else becomes a [`JobEdge`] through the exchange.

use super::partition::Partitioning;
use super::stream_graph::{ChainingStrategy, NodeKind};

/// What starts an operator id the job did not set (users' ids may not).
pub const AUTO_UID_MARK: &str = "#";

/// Every node's operator id: its `.uid(...)`, else `#<name>` (`#<name>#2` for the second node
/// of that name, in id order). An explicit id used twice is an error naming it.
pub fn resolve_uids<'a>(nodes: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Result<Vec<String>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut names: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut uids = Vec::new();
    for (name, uid) in nodes {
        let uid = match uid {
            Some(uid) => uid.to_string(),
            None => {
                let k = names.entry(name).or_insert(0);
                *k += 1;
                if *k == 1 {
                    format!("{AUTO_UID_MARK}{name}")
                } else {
                    format!("{AUTO_UID_MARK}{name}#{k}")
                }
            }
        };
        if !seen.insert(uid.clone()) {
            return Err(format!("the operator id (uid) '{uid}' is used by two operators; each must be unique"));
        }
        uids.push(uid);
    }
    Ok(uids)
}

/// A node with its parallelism resolved.
#[derive(Debug, Clone)]
pub struct NodeDesc {
    pub id: usize,
    pub name: String,
    pub kind: NodeKind,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub chaining: ChainingStrategy,
    /// Its operator id (see [`resolve_uids`]).
    pub uid: String,
}

/// An edge with its partitioning resolved.
#[derive(Debug, Clone, Copy)]
pub struct EdgeDesc {
    pub index: usize,
    pub from: usize,
    pub to: usize,
    pub partitioning: Partitioning,
    /// A side-output edge: never chained, and not counted as its producer's output.
    pub side: bool,
}

/// A chain of operators that runs as one task per subtask.
#[derive(Debug, Clone)]
pub struct JobVertex {
    pub id: usize,
    /// Stream node ids, head first.
    pub nodes: Vec<usize>,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub name: String,
}

/// An exchange between two tasks.
#[derive(Debug, Clone)]
pub struct JobEdge {
    pub id: usize,
    pub source: usize,
    pub target: usize,
    /// Tail node of the source chain and head node of the target chain.
    pub from_node: usize,
    pub to_node: usize,
    /// Index of the stream edge this exchange carries.
    pub stream_edge: usize,
    pub partitioning: Partitioning,
    /// Carries a side output: its own network output, with its own overdraft.
    pub side: bool,
}

#[derive(Debug, Clone)]
pub struct JobGraph {
    pub vertices: Vec<JobVertex>,
    pub edges: Vec<JobEdge>,
    /// Vertex of each stream node.
    pub vertex_of_node: Vec<usize>,
}

fn chainable(nodes: &[NodeDesc], edges: &[EdgeDesc], e: &EdgeDesc) -> bool {
    let (up, down) = (&nodes[e.from], &nodes[e.to]);
    let out_degree = edges.iter().filter(|x| x.from == e.from && !x.side).count();
    let in_degree = edges.iter().filter(|x| x.to == e.to).count();
    !e.side
        && e.partitioning == Partitioning::Forward
        && up.parallelism == down.parallelism
        && out_degree == 1
        && in_degree == 1
        && down.kind != NodeKind::Source
        && up.chaining != ChainingStrategy::Never
        && down.chaining == ChainingStrategy::Always
}

/// Groups nodes into chains. `nodes` are indexed by id and in topological order.
pub fn build(nodes: &[NodeDesc], edges: &[EdgeDesc]) -> JobGraph {
    let mut vertex_of_node = vec![usize::MAX; nodes.len()];
    let mut vertices: Vec<JobVertex> = Vec::new();
    for node in nodes {
        let chained_from = edges.iter().find(|e| e.to == node.id && chainable(nodes, edges, e));
        match chained_from {
            Some(e) => {
                let v = vertex_of_node[e.from];
                vertex_of_node[node.id] = v;
                vertices[v].nodes.push(node.id);
            }
            None => {
                vertex_of_node[node.id] = vertices.len();
                vertices.push(JobVertex {
                    id: vertices.len(),
                    nodes: vec![node.id],
                    parallelism: node.parallelism,
                    max_parallelism: node.max_parallelism,
                    name: String::new(),
                });
            }
        }
    }
    for v in &mut vertices {
        v.name = v.nodes.iter().map(|n| nodes[*n].name.as_str()).collect::<Vec<_>>().join(" -> ");
        v.max_parallelism = v.nodes.iter().map(|n| nodes[*n].max_parallelism).max().unwrap_or(v.max_parallelism);
    }
    let job_edges = edges
        .iter()
        .filter(|e| vertex_of_node[e.from] != vertex_of_node[e.to])
        .enumerate()
        .map(|(id, e)| JobEdge {
            id,
            source: vertex_of_node[e.from],
            target: vertex_of_node[e.to],
            from_node: e.from,
            to_node: e.to,
            stream_edge: e.index,
            partitioning: e.partitioning,
            side: e.side,
        })
        .collect();
    JobGraph { vertices, edges: job_edges, vertex_of_node }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: usize, kind: NodeKind, p: u32) -> NodeDesc {
        NodeDesc {
            id,
            name: format!("n{id}"),
            kind,
            parallelism: p,
            max_parallelism: 128,
            chaining: ChainingStrategy::Always,
            uid: format!("#n{id}"),
        }
    }

    fn edge(index: usize, from: usize, to: usize, partitioning: Partitioning) -> EdgeDesc {
        EdgeDesc { index, from, to, partitioning, side: false }
    }

    #[test]
    fn forward_equal_parallelism_chains() {
        let nodes = vec![node(0, NodeKind::Source, 2), node(1, NodeKind::Operator, 2), node(2, NodeKind::Sink, 2)];
        let edges = vec![edge(0, 0, 1, Partitioning::Forward), edge(1, 1, 2, Partitioning::Forward)];
        let g = build(&nodes, &edges);
        assert_eq!(g.vertices.len(), 1);
        assert_eq!(g.vertices[0].nodes, vec![0, 1, 2]);
        assert_eq!(g.vertices[0].name, "n0 -> n1 -> n2");
        assert!(g.edges.is_empty());
    }

    #[test]
    fn hash_edges_and_strategies_break_chains() {
        let mut nodes = vec![
            node(0, NodeKind::Source, 2),
            node(1, NodeKind::Operator, 2),
            node(2, NodeKind::Operator, 2),
            node(3, NodeKind::Sink, 2),
        ];
        nodes[3].chaining = ChainingStrategy::HeadNewChain;
        let edges = vec![
            edge(0, 0, 1, Partitioning::Forward),
            edge(1, 1, 2, Partitioning::Hash),
            edge(2, 2, 3, Partitioning::Forward),
        ];
        let g = build(&nodes, &edges);
        let chains: Vec<_> = g.vertices.iter().map(|v| v.nodes.clone()).collect();
        assert_eq!(chains, vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!(g.edges.len(), 2);
        assert_eq!(g.edges[0].partitioning, Partitioning::Hash);
    }

    #[test]
    fn union_inputs_are_not_chained() {
        let nodes = vec![node(0, NodeKind::Source, 1), node(1, NodeKind::Source, 1), node(2, NodeKind::Operator, 1)];
        let edges = vec![edge(0, 0, 2, Partitioning::Forward), edge(1, 1, 2, Partitioning::Forward)];
        let g = build(&nodes, &edges);
        assert_eq!(g.vertices.len(), 3);
        assert_eq!(g.edges.len(), 2);
    }

    #[test]
    fn operator_ids_are_the_given_ones_or_names_numbered_in_order() {
        let uids = resolve_uids([("Map", None), ("Sum", Some("sum")), ("Map", None), ("Map", Some("last"))]).unwrap();
        assert_eq!(uids, ["#Map", "sum", "#Map#2", "last"]);
        let e = resolve_uids([("a", Some("x")), ("b", Some("x"))]).unwrap_err();
        assert!(e.contains("'x' is used by two operators"), "{e}");
    }
}
