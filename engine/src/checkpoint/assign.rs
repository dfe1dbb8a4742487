//! Which operator state of a checkpoint or savepoint each operator of the restoring job gets
//! (Flink's `StateAssignmentOperation`), as a pure decision over the two jobs' layouts:
//! operators are matched by their operator id (`.uid(...)`, or the default derived from the
//! name), wherever they sit in the chains and at whatever parallelism. The data side (reading
//! the old subtasks' parts and dealing them to the new subtasks) is the loader's, with
//! [`super::redistribute`].
//!
//! - The same layout (vertices, parallelism, operators): every task restores its own file.
//! - Otherwise every old operator with state must have an operator of the same id in the new
//!   job, else the restore is refused naming it, unless non-restored state is allowed (then
//!   that state is dropped and listed). New operators without state start empty.
//! - An operator's max parallelism (its key groups) must not change.
//! - In-flight data (an unaligned checkpoint) belongs to the exact channels that carried it:
//!   such a checkpoint restores only into the same layout; a savepoint (always aligned) is how a
//!   job changes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::metadata::{CheckpointMetadata, VertexInfo};

/// One restored operator: its node in the new job takes the state of a node of the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorMapping {
    pub uid: String,
    pub new_vertex: u32,
    pub new_node: u32,
    pub old_vertex: u32,
    pub old_node: u32,
}

/// How a changed job restores: what each of its operators takes, and the parallelism of each
/// vertex of both jobs (which the loader redistributes between).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub operators: Vec<OperatorMapping>,
    /// Per old vertex: parallelism.
    pub old_parallelism: Vec<u32>,
    /// Per new vertex: parallelism and max parallelism.
    pub new_parallelism: Vec<(u32, u32)>,
    /// Operator ids whose state no operator of the new job takes (allowed by the request).
    pub dropped: Vec<String>,
}

/// Why a checkpoint cannot be restored into this job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error(
        "it holds state of operator '{uid}' (in '{vertex}'), which this job does not have; give the operator \
         that should take it that uid, or allow non-restored state (--allow-non-restored-state) to drop it"
    )]
    NotRestored { uid: String, vertex: String },
    #[error(
        "operator '{uid}' has max parallelism {old} in the checkpoint and {new} in this job; its key groups cannot \
         change"
    )]
    MaxParallelism { uid: String, old: u32, new: u32 },
    #[error(
        "it holds in-flight data (it was taken unaligned), which restores only into the same job at the same \
         parallelism ({difference}); take a savepoint (always aligned) to change the job"
    )]
    ChannelState { difference: String },
    #[error("{0}")]
    Layout(String),
}

/// The old operators that hold state: per old vertex, the nodes with state in any of its
/// tasks' files (`None`: the checkpoint does not say, so every operator counts).
pub fn stateful_operators(meta: &CheckpointMetadata) -> BTreeMap<u32, Option<BTreeSet<u32>>> {
    let mut out: BTreeMap<u32, Option<BTreeSet<u32>>> = BTreeMap::new();
    for t in &meta.tasks {
        let entry = out.entry(t.task.vertex).or_insert_with(|| Some(BTreeSet::new()));
        match (&t.handle.nodes, entry.as_mut()) {
            (Some(nodes), Some(set)) => set.extend(nodes.iter().copied()),
            (None, _) => *entry = None,
            (Some(_), None) => {}
        }
    }
    out
}

fn describe(vs: &[VertexInfo]) -> String {
    vs.iter().map(|v| format!("{} ×{}", v.name, v.parallelism)).collect::<Vec<_>>().join(", ")
}

/// What the job with vertices `new` restores from a checkpoint whose vertices are `old`:
/// `Ok(None)` for the same layout (every task its own file), else the assignment.
pub fn assign(
    old: &[VertexInfo],
    stateful: &BTreeMap<u32, Option<BTreeSet<u32>>>,
    channel_state: bool,
    new: &[VertexInfo],
    allow_non_restored: bool,
) -> Result<Option<Assignment>, AssignError> {
    if old == new {
        return Ok(None);
    }
    if old.iter().chain(new).any(|v| v.operators.is_empty()) {
        // A checkpoint of a build that did not record operator ids: its tasks restore their own
        // files into the same vertices, as before.
        return match super::restore::vertex_difference(old, new) {
            None => Ok(None),
            Some(difference) => Err(AssignError::Layout(difference)),
        };
    }
    if channel_state {
        return Err(AssignError::ChannelState {
            difference: format!("the checkpoint has [{}], this job [{}]", describe(old), describe(new)),
        });
    }
    let mut by_uid: BTreeMap<&str, (u32, u32, u32)> = BTreeMap::new();
    for (v, info) in new.iter().enumerate() {
        for op in &info.operators {
            by_uid.insert(op.uid.as_str(), (v as u32, op.node, info.max_parallelism));
        }
    }
    let mut operators = Vec::new();
    let mut dropped = Vec::new();
    for (v, info) in old.iter().enumerate() {
        let with_state = stateful.get(&(v as u32)).cloned().unwrap_or(Some(BTreeSet::new()));
        for op in &info.operators {
            if with_state.as_ref().is_some_and(|nodes| !nodes.contains(&op.node)) {
                continue;
            }
            match by_uid.get(op.uid.as_str()) {
                Some(&(new_vertex, new_node, new_max)) => {
                    if new_max != info.max_parallelism {
                        return Err(AssignError::MaxParallelism {
                            uid: op.uid.clone(),
                            old: info.max_parallelism,
                            new: new_max,
                        });
                    }
                    operators.push(OperatorMapping {
                        uid: op.uid.clone(),
                        new_vertex,
                        new_node,
                        old_vertex: v as u32,
                        old_node: op.node,
                    });
                }
                None if allow_non_restored => dropped.push(op.uid.clone()),
                None => return Err(AssignError::NotRestored { uid: op.uid.clone(), vertex: info.name.clone() }),
            }
        }
    }
    Ok(Some(Assignment {
        operators,
        old_parallelism: old.iter().map(|v| v.parallelism).collect(),
        new_parallelism: new.iter().map(|v| (v.parallelism, v.max_parallelism)).collect(),
        dropped,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::OperatorInfo;

    fn vertex(name: &str, parallelism: u32, ops: &[(u32, &str)]) -> VertexInfo {
        VertexInfo {
            name: name.into(),
            parallelism,
            max_parallelism: 128,
            operators: ops.iter().map(|&(node, uid)| OperatorInfo { node, uid: uid.into() }).collect(),
        }
    }

    fn all_stateful(vs: &[VertexInfo]) -> BTreeMap<u32, Option<BTreeSet<u32>>> {
        (0..vs.len() as u32).map(|v| (v, None)).collect()
    }

    #[test]
    fn the_same_layout_restores_task_by_task() {
        let old = [vertex("src", 2, &[(0, "src")]), vertex("sum -> sink", 2, &[(1, "sum"), (2, "sink")])];
        assert_eq!(assign(&old, &all_stateful(&old), true, &old, false), Ok(None));
    }

    #[test]
    fn operators_are_matched_by_id_across_chains_and_parallelism() {
        let old = [vertex("src", 2, &[(0, "src")]), vertex("sum -> sink", 2, &[(1, "sum"), (2, "sink")])];
        // Rescaled to 3, and a new map chained before the sum (node ids move).
        let new = [
            vertex("src", 2, &[(0, "src")]),
            vertex("map -> sum", 3, &[(1, "map"), (2, "sum")]),
            vertex("sink", 1, &[(3, "sink")]),
        ];
        let a = assign(&old, &all_stateful(&old), false, &new, false).unwrap().unwrap();
        let pairs: Vec<(&str, u32, u32, u32, u32)> =
            a.operators.iter().map(|m| (m.uid.as_str(), m.old_vertex, m.old_node, m.new_vertex, m.new_node)).collect();
        assert_eq!(pairs, [("src", 0, 0, 0, 0), ("sum", 1, 1, 1, 2), ("sink", 1, 2, 2, 3)]);
        assert_eq!(a.old_parallelism, [2, 2]);
        assert_eq!(a.new_parallelism, [(2, 128), (3, 128), (1, 128)]);
        assert!(a.dropped.is_empty());
    }

    #[test]
    fn state_without_its_operator_is_refused_unless_allowed() {
        let old = [vertex("src", 1, &[(0, "src")]), vertex("sum", 1, &[(1, "sum-v1")])];
        let new = [vertex("src", 1, &[(0, "src")]), vertex("sum", 1, &[(1, "sum-v2")])];
        let e = assign(&old, &all_stateful(&old), false, &new, false).unwrap_err();
        assert!(matches!(&e, AssignError::NotRestored { uid, .. } if uid == "sum-v1"), "{e}");
        assert!(e.to_string().contains("--allow-non-restored-state"), "{e}");
        let a = assign(&old, &all_stateful(&old), false, &new, true).unwrap().unwrap();
        assert_eq!(a.dropped, ["sum-v1"]);
        assert_eq!(a.operators.len(), 1);
        // An operator without state in the checkpoint needs no match.
        let stateful = BTreeMap::from([(0, Some(BTreeSet::from([0]))), (1, Some(BTreeSet::new()))]);
        assert_eq!(assign(&old, &stateful, false, &new, false).unwrap().unwrap().operators.len(), 1);
    }

    #[test]
    fn key_groups_and_in_flight_data_cannot_move() {
        let old = [vertex("sum", 2, &[(0, "sum")])];
        let mut new = [vertex("sum", 4, &[(0, "sum")])];
        let e = assign(&old, &all_stateful(&old), true, &new, false).unwrap_err();
        assert!(matches!(e, AssignError::ChannelState { .. }), "{e}");
        new[0].max_parallelism = 256;
        let e = assign(&old, &all_stateful(&old), false, &new, false).unwrap_err();
        assert_eq!(e, AssignError::MaxParallelism { uid: "sum".into(), old: 128, new: 256 });
        let unnamed = [VertexInfo { operators: Vec::new(), ..vertex("sum", 2, &[]) }];
        assert!(matches!(assign(&unnamed, &all_stateful(&unnamed), false, &new, false), Err(AssignError::Layout(_))));
        // An older build's checkpoint (no operator ids) still restores into the same vertices.
        assert_eq!(assign(&unnamed, &all_stateful(&unnamed), true, &old, false), Ok(None));
    }
}
