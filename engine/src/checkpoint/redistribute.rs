//! Which state each subtask of a restored operator gets, from the parts its subtasks wrote to a
//! checkpoint: pure functions over [`OperatorStateParts`], one rule per [`PartLayout`] (Flink's
//! `StateAssignmentOperation` with its round-robin operator-state repartitioner):
//!
//! - `KeyGroups`: a new subtask gets the part of every old subtask whose key-group range
//!   overlaps its own (in old subtask order); it keeps only its key groups when it restores.
//! - `OperatorList`: unchanged at the same parallelism; otherwise the elements of all old
//!   subtasks, in old subtask order, are dealt round-robin, one part per new subtask.
//! - `UnionList`: every new subtask gets one part with the elements of all old subtasks.
//! - `Broadcast`: every old subtask wrote the same state; new subtask `j` gets the copy of old
//!   subtask `j mod old parallelism` (or the next one that wrote the part).
//! - `Subtask`: only at the same parallelism (each subtask gets its own); otherwise an error
//!   naming the part.
//!
//! Parts keep the order in which their names first appear. At the same parallelism every
//! subtask gets back exactly what it wrote, except union list state, which is always the union.

use super::{OperatorStateParts, PartLayout, StatePart};
use crate::operators::operator_state::ListStateBytes;
use crate::operators::state_parts::PartError;

/// Why an operator's state cannot be dealt to the new subtasks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedistributeError {
    #[error(
        "cannot restore at parallelism {parallelism}: it must be between 1 and the max parallelism {max_parallelism}"
    )]
    Parallelism { parallelism: u32, max_parallelism: u32 },
    #[error(
        "the checkpoint holds {old} subtasks of the operator, more than the max parallelism {max_parallelism}; \
         it was taken with another max parallelism"
    )]
    OldParallelism { old: usize, max_parallelism: u32 },
    #[error(
        "state part '{part}' belongs to the subtask that wrote it and can be restored only at the parallelism it was \
         written with ({old}), not at {new}"
    )]
    SubtaskState { part: String, old: usize, new: u32 },
    #[error("state part '{part}' was written with layout {first:?} by one subtask and {second:?} by another")]
    MixedLayouts { part: String, first: PartLayout, second: PartLayout },
    #[error("state part '{part}' holds elements of {first} in one subtask and of {second} in another")]
    MixedTypes { part: String, first: String, second: String },
    #[error("state part of subtask {subtask}: {cause}")]
    Unreadable { subtask: usize, cause: PartError },
    #[error("{cause}")]
    Encode { cause: PartError },
}

/// What each of `new_parallelism` subtasks restores, given what each old subtask of the
/// operator wrote (`old[i]`: subtask `i`'s parts, empty when it wrote none) and the job's max
/// parallelism (which fixes the key groups).
pub fn redistribute(
    old: &[OperatorStateParts],
    new_parallelism: u32,
    max_parallelism: u32,
) -> Result<Vec<OperatorStateParts>, RedistributeError> {
    if new_parallelism == 0 || new_parallelism > max_parallelism {
        return Err(RedistributeError::Parallelism { parallelism: new_parallelism, max_parallelism });
    }
    if old.len() > max_parallelism as usize {
        return Err(RedistributeError::OldParallelism { old: old.len(), max_parallelism });
    }
    let mut new = vec![OperatorStateParts::default(); new_parallelism as usize];
    for (name, layout) in part_names(old)? {
        let occurrences = |i: usize| old[i].parts.iter().filter(|p| p.name == name);
        match layout {
            PartLayout::KeyGroups => {
                let old_p = old.len() as u32;
                for (j, parts) in new.iter_mut().enumerate() {
                    let range = corestream_state::key_group_range(max_parallelism, new_parallelism, j as u32);
                    for i in 0..old.len() {
                        let from = corestream_state::key_group_range(max_parallelism, old_p, i as u32);
                        if from.start < range.end && range.start < from.end {
                            parts.parts.extend(occurrences(i).cloned());
                        }
                    }
                }
            }
            PartLayout::Subtask | PartLayout::OperatorList if old.len() == new.len() => {
                for (i, parts) in new.iter_mut().enumerate() {
                    parts.parts.extend(occurrences(i).cloned());
                }
            }
            PartLayout::Subtask => {
                return Err(RedistributeError::SubtaskState { part: name, old: old.len(), new: new_parallelism });
            }
            PartLayout::OperatorList | PartLayout::UnionList => {
                let all = all_elements(old, &name)?;
                let dealt: Vec<ListStateBytes> = if layout == PartLayout::UnionList {
                    vec![all; new.len()]
                } else {
                    let mut dealt =
                        vec![ListStateBytes { value_type: all.value_type, elements: Vec::new() }; new.len()];
                    for (e, element) in all.elements.into_iter().enumerate() {
                        dealt[e % new.len()].elements.push(element);
                    }
                    dealt
                };
                for (parts, list) in new.iter_mut().zip(dealt) {
                    let bytes = list.encode(&name).map_err(|cause| RedistributeError::Encode { cause })?;
                    parts.parts.push(StatePart { name: name.clone(), layout, bytes });
                }
            }
            PartLayout::Broadcast => {
                for (j, parts) in new.iter_mut().enumerate() {
                    let copy = (0..old.len()).map(|k| (j + k) % old.len()).find(|&i| occurrences(i).next().is_some());
                    if let Some(i) = copy {
                        parts.parts.extend(occurrences(i).cloned());
                    }
                }
            }
        }
    }
    let root = old.iter().find_map(|o| o.shared_root.clone());
    for parts in &mut new {
        parts.shared_root = root.clone();
    }
    Ok(new)
}

/// Every part name with its layout, in order of first appearance; one layout per name.
fn part_names(old: &[OperatorStateParts]) -> Result<Vec<(String, PartLayout)>, RedistributeError> {
    let mut names: Vec<(String, PartLayout)> = Vec::new();
    for part in old.iter().flat_map(|s| &s.parts) {
        match names.iter().find(|(n, _)| *n == part.name) {
            None => names.push((part.name.clone(), part.layout)),
            Some((_, first)) if *first != part.layout => {
                let (first, second) = (*first, part.layout);
                return Err(RedistributeError::MixedLayouts { part: part.name.clone(), first, second });
            }
            Some(_) => {}
        }
    }
    Ok(names)
}

/// The elements of list part `name` of every old subtask, in subtask order.
fn all_elements(old: &[OperatorStateParts], name: &str) -> Result<ListStateBytes, RedistributeError> {
    let mut all: Option<ListStateBytes> = None;
    for (subtask, parts) in old.iter().enumerate() {
        for part in parts.parts.iter().filter(|p| p.name == name) {
            let list = ListStateBytes::decode(name, &part.bytes)
                .map_err(|cause| RedistributeError::Unreadable { subtask, cause })?;
            match &mut all {
                None => all = Some(list),
                Some(all) if all.value_type != list.value_type => {
                    let (first, second) = (all.value_type.clone(), list.value_type);
                    return Err(RedistributeError::MixedTypes { part: name.to_owned(), first, second });
                }
                Some(all) => all.elements.extend(list.elements),
            }
        }
    }
    Ok(all.unwrap_or(ListStateBytes { value_type: String::new(), elements: Vec::new() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corestream_netstack::record::to_bytes;
    use proptest::prelude::*;

    const MAX_P: u32 = 128;

    fn list(name: &str, layout: PartLayout, values: &[u64]) -> StatePart {
        let elements = values.iter().map(|v| to_bytes(v).unwrap()).collect();
        let bytes = ListStateBytes { value_type: "u64".into(), elements }.encode(name).unwrap();
        StatePart { name: name.into(), layout, bytes }
    }

    fn values(parts: &OperatorStateParts, name: &str) -> Vec<u64> {
        let part = parts.get(name).expect("part present");
        let list = ListStateBytes::decode(name, &part.bytes).unwrap();
        list.elements.iter().map(|e| corestream_state::part::decode_archive::<u64>(e).unwrap()).collect()
    }

    fn raw(name: &str, layout: PartLayout, tag: u8) -> StatePart {
        StatePart { name: name.into(), layout, bytes: vec![tag] }
    }

    fn subtasks(parts: Vec<Vec<StatePart>>) -> Vec<OperatorStateParts> {
        parts.into_iter().map(|parts| OperatorStateParts { parts, shared_root: None }).collect()
    }

    /// The tags of the parts named `name` each new subtask got.
    fn tags(new: &[OperatorStateParts], name: &str) -> Vec<Vec<u8>> {
        new.iter().map(|s| s.parts.iter().filter(|p| p.name == name).map(|p| p.bytes[0]).collect()).collect()
    }

    #[test]
    fn key_group_parts_go_to_every_new_subtask_whose_range_overlaps() {
        let old = subtasks((0..2).map(|i| vec![raw("keyed-state", PartLayout::KeyGroups, i)]).collect());
        // Old ranges 0..64, 64..128; new 0..43, 43..86, 86..128.
        let new = redistribute(&old, 3, MAX_P).unwrap();
        assert_eq!(tags(&new, "keyed-state"), vec![vec![0], vec![0, 1], vec![1]]);
        let back = redistribute(&new, 2, MAX_P).unwrap();
        assert_eq!(tags(&back, "keyed-state"), vec![vec![0, 0, 1], vec![0, 1, 1]]);
    }

    #[test]
    fn list_state_is_dealt_round_robin_and_unchanged_at_the_same_parallelism() {
        let old = subtasks(vec![
            vec![list("list/a", PartLayout::OperatorList, &[1, 2, 3])],
            vec![list("list/a", PartLayout::OperatorList, &[4])],
        ]);
        let new = redistribute(&old, 3, MAX_P).unwrap();
        let got: Vec<Vec<u64>> = new.iter().map(|s| values(s, "list/a")).collect();
        assert_eq!(got, vec![vec![1, 4], vec![2], vec![3]]);
        let one = redistribute(&old, 1, MAX_P).unwrap();
        assert_eq!(values(&one[0], "list/a"), vec![1, 2, 3, 4]);
        assert_eq!(redistribute(&old, 2, MAX_P).unwrap(), old, "same parallelism: as written");
    }

    #[test]
    fn union_state_gives_every_subtask_all_elements() {
        let old = subtasks(vec![
            vec![list("list/u", PartLayout::UnionList, &[1])],
            vec![],
            vec![list("list/u", PartLayout::UnionList, &[2, 3])],
        ]);
        for p in [1, 3, 5] {
            let new = redistribute(&old, p, MAX_P).unwrap();
            assert!(new.iter().all(|s| values(s, "list/u") == vec![1, 2, 3]), "p={p}");
        }
    }

    #[test]
    fn broadcast_state_gives_each_subtask_one_copy() {
        let old = subtasks((0..2).map(|i| vec![raw("broadcast-state", PartLayout::Broadcast, i)]).collect());
        assert_eq!(tags(&redistribute(&old, 3, MAX_P).unwrap(), "broadcast-state"), vec![vec![0], vec![1], vec![0]]);
        assert_eq!(tags(&redistribute(&old, 2, MAX_P).unwrap(), "broadcast-state"), vec![vec![0], vec![1]]);
        let gap = subtasks(vec![vec![], vec![raw("broadcast-state", PartLayout::Broadcast, 7)]]);
        assert_eq!(tags(&redistribute(&gap, 2, MAX_P).unwrap(), "broadcast-state"), vec![vec![7], vec![7]]);
    }

    #[test]
    fn subtask_state_restores_only_at_the_same_parallelism() {
        let old = subtasks((0..2).map(|i| vec![raw("source-position", PartLayout::Subtask, i)]).collect());
        assert_eq!(redistribute(&old, 2, MAX_P).unwrap(), old);
        let err = redistribute(&old, 3, MAX_P).unwrap_err();
        assert!(matches!(&err, RedistributeError::SubtaskState { part, old: 2, new: 3 } if part == "source-position"));
        assert!(err.to_string().contains("'source-position'"), "{err}");
    }

    #[test]
    fn inconsistent_or_unreadable_parts_and_bad_parallelism_are_errors() {
        let mixed = subtasks(vec![vec![raw("x", PartLayout::KeyGroups, 0)], vec![raw("x", PartLayout::Broadcast, 1)]]);
        assert!(matches!(redistribute(&mixed, 2, MAX_P), Err(RedistributeError::MixedLayouts { .. })));
        let mut damaged = list("list/a", PartLayout::OperatorList, &[1, 2]);
        damaged.bytes[30] ^= 1;
        let old = subtasks(vec![vec![], vec![damaged]]);
        let err = redistribute(&old, 3, MAX_P).unwrap_err();
        assert!(matches!(err, RedistributeError::Unreadable { subtask: 1, .. }), "{err}");
        assert!(err.to_string().contains("'list/a'"), "{err}");
        assert!(matches!(redistribute(&[], 0, MAX_P), Err(RedistributeError::Parallelism { .. })));
        assert!(matches!(redistribute(&[], MAX_P + 1, MAX_P), Err(RedistributeError::Parallelism { .. })));
        let too_many = vec![OperatorStateParts::default(); 3];
        assert!(matches!(redistribute(&too_many, 1, 2), Err(RedistributeError::OldParallelism { .. })));
        assert_eq!(redistribute(&[], 2, MAX_P).unwrap(), vec![OperatorStateParts::default(); 2]);
    }

    proptest! {
        /// Every key group of a new subtask is covered by the parts it gets, and it gets no part
        /// of an old subtask without a key group of its own.
        #[test]
        fn key_group_coverage(old_p in 1u32..=12, new_p in 1u32..=12, max_p in 12u32..=200) {
            let old = subtasks((0..old_p).map(|i| vec![raw("k", PartLayout::KeyGroups, i as u8)]).collect());
            let new = redistribute(&old, new_p, max_p).unwrap();
            for (j, got) in tags(&new, "k").into_iter().enumerate() {
                let range = corestream_state::key_group_range(max_p, new_p, j as u32);
                let owners: Vec<u8> = range
                    .as_range()
                    .map(|kg| corestream_state::operator_index_for_key_group(max_p, old_p, kg) as u8)
                    .collect::<std::collections::BTreeSet<u8>>()
                    .into_iter()
                    .collect();
                prop_assert_eq!(got, owners);
            }
        }

        /// Round-robin keeps every element once and balances the subtasks within one element.
        #[test]
        fn list_dealing_keeps_every_element(sizes in proptest::collection::vec(0usize..20, 1..6), new_p in 1u32..8) {
            let mut next = 0u64;
            let old = subtasks(sizes.iter().map(|&n| {
                let vals: Vec<u64> = (next..next + n as u64).collect();
                next += n as u64;
                vec![list("list/l", PartLayout::OperatorList, &vals)]
            }).collect());
            let new = redistribute(&old, new_p, MAX_P).unwrap();
            let dealt: Vec<Vec<u64>> = new.iter().map(|s| values(s, "list/l")).collect();
            let mut all: Vec<u64> = dealt.iter().flatten().copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..next).collect::<Vec<u64>>());
            let (lo, hi) = (dealt.iter().map(Vec::len).min().unwrap(), dealt.iter().map(Vec::len).max().unwrap());
            prop_assert!(hi - lo <= 1 || new_p as usize == sizes.len());
        }
    }
}
